"""
Where one gradient's time goes, measured with timestamps (no profiler): each step of a worker's
cycle and of the learner's share, run in this process on one core, then the same worker in the real
collector, whose extra time per gradient is what the processes, the pipes and waiting add.

    python benchmarks/gradient_timeline.py --envs 1 8 --seconds 5

A worker's cycle (``_Worker.run_own_updates`` / ``run_learner_mode`` in
``sb3_async/common/collectors/local.py``): copy the shared parameters under the lock; the segment
(``n_steps`` env steps, each with one actor forward pass, then the segment's one forward pass with
the loss: ``LeanA3CWorker.compute_loss``); the backward pass; read the flat gradient and its norm;
in "locked" mode clip it and take the optimizer step under the lock; pickle the report. The
learner's share per report: unpickle it, hand its env steps to the callbacks (SB3's ``on_step``
once per ``n_envs`` of them, the info buffer); in "learner" mode also apply the gradient and publish.

CartPole-v1, n_steps 5, SB3's 64x64 MLP, RMSprop, as A3C's defaults. Medians of the per-gradient
times over all gradients of the run, in microseconds.
"""

import argparse
import multiprocessing as mp
import pickle
import statistics
import time
from collections import defaultdict

import torch as th
from stable_baselines3.common.vec_env import VecEnvWrapper

from bare_a2c_loop import bare_a2c_steps_per_second
from sb3_async import A3C
from sb3_async.common.collectors import GradientReport, clip_gradient_norm_, flat_gradient_view, flat_parameters_view
from sb3_async.common.collectors.base import prepare_worker_process
from sb3_async.common.flat_optimizer import FlatOptimizerState

N_STEPS = 5


class TimedVecEnv(VecEnvWrapper):
    """Adds the time spent in ``step`` to ``clock["env steps"]``."""

    def __init__(self, venv, clock: dict[str, float]) -> None:
        super().__init__(venv)
        self.clock = clock

    def reset(self):
        return self.venv.reset()

    def step_wait(self):
        started = time.perf_counter()
        result = self.venv.step_wait()
        self.clock["env steps"] += time.perf_counter() - started
        return result


def timed_actor(policy, clock: dict[str, float]):
    get_distribution = policy.get_distribution

    def timed(obs):
        started = time.perf_counter()
        distribution = get_distribution(obs)
        sampled = distribution.get_actions()
        clock["actor forwards"] += time.perf_counter() - started
        distribution.get_actions = lambda deterministic=False: sampled  # the draw above is the step's draw
        return distribution

    policy.get_distribution = timed


def in_process_timeline(n_envs: int, seconds: float, seed: int) -> dict[str, float]:
    """Median microseconds per gradient of each part of a worker's cycle and of the learner's share."""
    model = A3C("MlpPolicy", "CartPole-v1", n_workers=1, envs_per_worker=n_envs, n_steps=N_STEPS, seed=seed, device="cpu")
    spec = model._worker_spec()
    clock: dict[str, float] = defaultdict(float)
    env = TimedVecEnv(spec.env_factory.build(0, spec.normalization), clock)
    policy = spec.build_policy()
    params = list(policy.parameters())
    local_params = flat_parameters_view(params)
    local_gradient = flat_gradient_view(params)  # as WorkerCore: backward() accumulates into it
    flat_gradient = th.zeros_like(local_params)
    logic_class, logic_kwargs = model._worker_logic()
    logic = logic_class(env, policy, 0, **logic_kwargs)
    timed_actor(policy, clock)

    # The shared side: parameters and the optimizer state the "locked" workers step, and the lock.
    learner_params = list(model.policy.parameters())
    shared_params = flat_parameters_view(learner_params)
    state = FlatOptimizerState.of(model.policy.optimizer, learner_params)
    optimizer = state.optimizer_over(shared_params)
    state.set_gradient(optimizer, flat_gradient)
    lock = mp.get_context("forkserver").Lock()

    # The learner's callbacks, as learn() sets them up.
    _, callback = model._setup_learn(10**9, None, True, "timeline", False)
    from sb3_async.common.async_algorithm import PendingSteps

    model._steps_for_callbacks = PendingSteps()
    callback.on_training_start(locals(), globals())

    parts: dict[str, list[float]] = defaultdict(list)
    started_at = time.perf_counter()
    n_gradients = 0
    while time.perf_counter() - started_at < seconds:
        clock.clear()
        t0 = time.perf_counter()
        with lock:
            local_params.copy_(shared_params)
        t1 = time.perf_counter()
        loss, segment = logic.compute_loss()
        t2 = time.perf_counter()
        local_gradient.zero_()
        loss.backward()
        t3 = time.perf_counter()
        flat_gradient.copy_(local_gradient)
        gradient_norm = flat_gradient.norm().item()
        t4 = time.perf_counter()
        with lock:
            clip_gradient_norm_(flat_gradient, gradient_norm, model.max_grad_norm)
            optimizer.step()
        t5 = time.perf_counter()
        message = pickle.dumps(GradientReport(0, 0, segment))
        t6 = time.perf_counter()
        report = pickle.loads(message)
        t7 = time.perf_counter()
        model._run_callbacks(callback, report)
        t8 = time.perf_counter()
        n_gradients += 1
        if n_gradients <= 20:  # warm-up
            continue
        segment_seconds = t2 - t1
        for name, value in (
            ("worker: copy parameters (lock)", t1 - t0),
            ("worker: env steps", clock["env steps"]),
            ("worker: actor forwards + sampling", clock["actor forwards"]),
            ("worker: segment forward, returns, loss", segment_seconds - clock["env steps"] - clock["actor forwards"]),
            ("worker: backward", t3 - t2),
            ("worker: read gradient + norm", t4 - t3),
            ("worker: clip + RMSprop step (lock)", t5 - t4),
            ("worker: pickle report", t6 - t5),
            ("learner: unpickle report", t7 - t6),
            ("learner: callbacks, info buffer", t8 - t7),
        ):
            parts[name].append(value * 1e6)
        parts["worker cycle"].append((t6 - t0) * 1e6)
    return {name: statistics.median(values) for name, values in parts.items()}


def collector_microseconds_per_gradient(n_envs: int, update_mode: str, timesteps: int, seed: int) -> float:
    model = A3C(
        "MlpPolicy", "CartPole-v1", n_workers=1, envs_per_worker=n_envs, seed=seed, device="cpu", update_mode=update_mode
    )  # fmt: skip
    model.learn(2_000)
    started = time.perf_counter()
    model.learn(timesteps, reset_num_timesteps=False)
    return (time.perf_counter() - started) / (timesteps / (n_envs * N_STEPS)) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the collector and bare-loop runs (medians)")
    args = parser.parse_args()
    prepare_worker_process()  # one torch thread, no distribution argument checks: as in a worker
    import signal

    signal.signal(signal.SIGINT, signal.default_int_handler)

    for n_envs in args.envs:
        timeline = in_process_timeline(n_envs, args.seconds, seed=0)
        steps_per_gradient = n_envs * N_STEPS
        bare = statistics.median(
            bare_a2c_steps_per_second(n_envs=n_envs, n_steps=N_STEPS, seconds=args.seconds, seed=seed)
            for seed in range(args.rounds)
        )
        bare_us = steps_per_gradient / bare * 1e6
        timesteps = max(20_000, int(bare * args.seconds))
        real = {
            mode: statistics.median(
                collector_microseconds_per_gradient(n_envs, mode, timesteps, seed) for seed in range(args.rounds)
            )
            for mode in ("locked", "learner")
        }
        print(f"\n{n_envs} env{'s' if n_envs > 1 else ''} x n_steps {N_STEPS}: microseconds per gradient (medians)")
        for name, value in timeline.items():
            if name != "worker cycle":
                print(f"  {name:<42} {value:>8.0f}")
        print(f"  {'worker cycle, in-process (sum of worker parts)':<42} {timeline['worker cycle']:>8.0f}")
        print(f"  {'bare torch loop, one update':<42} {bare_us:>8.0f}")
        for mode, value in real.items():
            extra = value - timeline["worker cycle"]
            label = f"1 worker in the collector, {mode}"
            print(f"  {label:<42} {value:>8.0f}   (+{extra:.0f} over in-process: processes, pipes, waiting)")
        print(
            f"  in-process worker / bare loop: {bare_us / timeline['worker cycle']:.2f}x; "
            f"collector, locked / bare loop: {bare_us / real['locked']:.2f}x; learner: {bare_us / real['learner']:.2f}x"
        )


if __name__ == "__main__":
    main()
