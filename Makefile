# Each target installs what it needs into its own virtual environment.
# torch is pinned here (a local CPU build on this project's machines); setup.py keeps torch>=2.3.
PYTHON ?= python3
TORCH_PIN ?= torch==2.13.0

.PHONY: demo test lint typecheck bench bench-learner bench-ray bench-chaos bench-offpac bench-async-q results results-defaults results-slow-envs results-minatar clean

.venv-demo/.done: setup.py
	$(PYTHON) -m venv .venv-demo
	.venv-demo/bin/pip install -q --upgrade pip
	.venv-demo/bin/pip install -q "$(TORCH_PIN)"
	.venv-demo/bin/pip install -q -e .
	touch $@

.venv-test/.done: setup.py
	$(PYTHON) -m venv .venv-test
	.venv-test/bin/pip install -q --upgrade pip
	.venv-test/bin/pip install -q "$(TORCH_PIN)"
	.venv-test/bin/pip install -q -e ".[tests]"
	touch $@

demo: .venv-demo/.done
	.venv-demo/bin/python -m sb3_async.demo

test: .venv-test/.done
	.venv-test/bin/python -m pytest -q --durations=25

# ruff with SB3's rule set (ruff.toml): the checks, then the formatting.
lint: .venv-test/.done
	.venv-test/bin/ruff check .
	.venv-test/bin/ruff format --check .

# mypy with SB3's settings (setup.cfg's [mypy]) on the package.
typecheck: .venv-test/.done
	.venv-test/bin/mypy sb3_async

bench: .venv-test/.done
	cd benchmarks && ../.venv-test/bin/python throughput.py && ../.venv-test/bin/python time_to_solve.py

# How many gradients per second the learner applies, and the worker count where learner mode saturates.
bench-learner: .venv-test/.done
	cd benchmarks && ../.venv-test/bin/python learner_capacity.py --rounds 3 --seconds 3

# docs/distributed.md: the Ray backend against the local one (start-up, env steps/s, PSS), and later learn() calls' start-up. Ray runs in a loopback-only namespace.
bench-ray: .venv-test/.done
	cd benchmarks && ../tools/loopback-only ../.venv-test/bin/python ray_vs_local.py --rounds 3
	cd benchmarks && ../tools/loopback-only ../.venv-test/bin/python startup.py --rounds 3

# docs/a3c.md, "Faults": the chaos soak, a random worker SIGKILLed every 2-10 s for 11 minutes per configuration
# (A3C and OffPolicyAC; locked, learner, Hogwild and Ray: about 1.5 hours on 2 cores). Ray runs in a loopback-only namespace.
bench-chaos: .venv-test/.done
	cd benchmarks && ../tools/loopback-only ../.venv-test/bin/python chaos.py --minutes 11

bench-offpac: .venv-test/.done
	cd benchmarks && ../.venv-test/bin/python offpac_vs_a3c.py --seeds 5 --budget 300000 --behaviour-budget 100000
	cd benchmarks && ../.venv-test/bin/python continuous_control.py --seeds 5

# docs/async_q.md: the paper's Table 2 in spirit (time to solve CartPole-v1 with 1 and 2 workers, vs SB3 DQN).
bench-async-q: .venv-test/.done
	cd benchmarks && ../.venv-test/bin/python async_q_speedup.py --seeds 3 --workers 1 2

# docs/results.md: A3C vs SB3 A2C vs OffPolicyAC, 5 seeds, rl-zoo settings, then the slow envs (about 140 minutes on 2 cores).
results: .venv-test/.done
	for env in CartPole-v1 Acrobot-v1 LunarLander-v3; do \
		.venv-test/bin/python -m sb3_async.compare --env $$env --algos a3c a2c offpac --seeds 5 --timesteps 300000 --out docs/results/$$env || exit 1; \
	done
	.venv-test/bin/python -m sb3_async.compare --env Pendulum-v1 --algos a3c a2c offpac --seeds 5 --timesteps 200000 --out docs/results/Pendulum-v1
	.venv-test/bin/python -m sb3_async.compare --env CartPole-v1 --algos a3c a3c:update_mode=hogwild --scaling 1 2 --envs-per-worker 4 --seeds 3 --timesteps 200000 --out docs/results/scaling
	$(MAKE) results-slow-envs

# docs/results.md, "A3C against A2C and PPO": the tool's default contestants (about 25 minutes on 2 cores).
results-defaults: .venv-test/.done
	for env in CartPole-v1 Acrobot-v1; do \
		.venv-test/bin/python -m sb3_async.compare --env $$env --seeds 5 --timesteps 300000 --out docs/results/$$env-defaults || exit 1; \
	done

# docs/results.md, "Envs with slow, variable steps" (about 45 minutes on 2 cores).
results-slow-envs: .venv-test/.done
	.venv-test/bin/python -m sb3_async.compare --env CartPole-v1 --env-latency exponential:0.001 --seeds 5 --timesteps 200000 \
		--algos a3c:n_workers=8,n_envs=32 a3c:n_workers=8,n_envs=32,update_mode=hogwild a2c a2c:vec_env=subproc \
		--out docs/results/slow_envs

# docs/results.md, "MinAtar": A3C vs A3C-LSTM vs SB3 A2C with the same network, 2M steps (a run: 5-14 minutes
# on 2 cores). MINATAR_SEEDS=3 and MINATAR_GAMES as below take about 4 hours; --resume trains only the runs
# docs/results/MinAtar-<game> does not hold yet, so an interrupted target picks up where it stopped.
MINATAR_GAMES ?= Breakout SpaceInvaders Freeway
MINATAR_SEEDS ?= 3
results-minatar: .venv-test/.done
	for game in $(MINATAR_GAMES); do \
		.venv-test/bin/python -m sb3_async.compare --env MinAtar/$$game-v1 --algos a3c a3c_lstm a2c impala \
			--conf-file a2c=benchmarks/configs/a2c_minatar.yml --seeds $(MINATAR_SEEDS) --timesteps 2000000 \
			--out docs/results/MinAtar-$$game --resume || exit 1; \
	done

clean:
	rm -rf .venv-demo .venv-test
