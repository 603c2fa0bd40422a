"""sb3_async.compare: the harness end to end on a tiny budget, and its refusals."""

import shutil
import subprocess
import sys

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from stable_baselines3.common.vec_env import SubprocVecEnv

from sb3_async.compare import plan_runs, validate
from sb3_async.common.torch_layers import MinAtarCNN
from sb3_async.compare.harness import (
    RunSpec,
    default_algos,
    experiment_manager,
    parse_conf_files,
    parse_variant,
    run_one,
    with_latency_wrapper,
)
from sb3_async.compare.__main__ import main
from sb3_async.compare.measure import ProcessTreeMonitor, first_time_solved
from sb3_async.zoo.time_objective import threshold_for
from sb3_async.compare.report import _algo_with_variant, plot_scaling, read_comparison, summary_table


@pytest.fixture(scope="module")
def tiny_comparison(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    # A threshold even random play reaches, so steps/seconds-to-threshold are filled in.
    main(["--env", "CartPole-v1", "--algos", "a3c", "a2c", "--seeds", "2", "--timesteps", "4000",
          "--eval-episodes", "2", "--threshold", "15", "--window", "5", "--out", str(out)])  # fmt: skip
    return out


def test_harness_writes_csvs_plots_and_table(tiny_comparison):
    out = tiny_comparison
    runs = pd.read_csv(out / "runs.csv")
    curves = pd.read_csv(out / "curves.csv")
    assert sorted(zip(runs["algo"], runs["seed"], strict=False)) == [("a2c", 0), ("a2c", 1), ("a3c", 0), ("a3c", 1)]
    assert (runs["timesteps"] == 4000).all() and (runs["fps"] > 0).all() and (runs["cpu_cores"] > 0).all()
    # A3C's memory includes its worker processes; PSS counts the pages they share with the learner once.
    assert runs.loc[runs["algo"] == "a3c", "peak_pss_mb"].min() > runs.loc[runs["algo"] == "a2c", "peak_pss_mb"].max()
    assert (runs["peak_pss_mb"] > 0).all() and (runs["peak_pss_mb"] <= runs["peak_rss_mb"]).all()
    assert runs["steps_to_threshold"].notna().all() and (runs["steps_to_threshold"] <= 4000).all()
    for (algo, seed), episodes in curves.groupby(["algo", "seed"]):
        assert episodes["step"].is_monotonic_increasing and episodes["step"].iloc[-1] <= 4000 + 8, (algo, seed)
        assert episodes["seconds"].is_monotonic_increasing
    for name in ("curves_steps.png", "curves_time.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"


def test_table_is_computed_from_the_csv(tiny_comparison):
    runs = pd.read_csv(tiny_comparison / "runs.csv")
    table = (tiny_comparison / "results.md").read_text()
    assert summary_table(runs) in table
    for algo, group in runs.groupby("algo"):
        row = next(line for line in table.splitlines() if line.startswith(f"| {algo} |"))
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        scores, fps, steps = group["final_score"], group["fps"], group["steps_to_threshold"]
        assert cells[2] == f"{scores.median():.1f} ({scores.min():.1f}–{scores.max():.1f})"
        assert cells[3] == f"{steps.median():,.0f} ({steps.min():,.0f}–{steps.max():,.0f})"
        assert cells[5] == f"{steps.notna().sum()}/{len(group)}"
        assert cells[6] == f"{fps.median():,.0f} ({fps.min():,.0f}–{fps.max():,.0f})"
        # With 2 seeds the interquartile mean is the plain mean.
        assert cells[1].startswith(f"{scores.mean():.1f} [")


def test_process_tree_monitor_counts_the_cpu_of_grandchildren():
    # Like A3C's workers (children of the forkserver), the busy process is a grandchild.
    burn = "import time; end = time.process_time() + 1.0\nwhile time.process_time() < end: pass"
    with ProcessTreeMonitor(interval=0.05) as monitor:
        subprocess.run(["sh", "-c", f"{sys.executable} -c '{burn}'; sleep 0.3"], check=True)
    assert monitor.cpu_seconds >= 0.8
    assert monitor.peak_rss_bytes > 0


SHARE_128_MB = """
import os, time
import numpy as np
pages = np.ones(2**27 // 8)
children = []
for _ in range(2):
    pid = os.fork()
    if pid == 0:
        time.sleep(1.0)
        os._exit(0)
    children.append(pid)
for pid in children:
    os.waitpid(pid, 0)
"""


def test_memory_is_pss_which_counts_pages_shared_between_processes_once():
    # A process touches 128 MB, then forks two children that share it until they exit.
    with ProcessTreeMonitor(interval=0.05) as monitor:
        own_rss, own_pss = monitor.peak_rss_bytes, monitor.peak_pss_bytes  # this test process alone, so far
        subprocess.run([sys.executable, "-c", SHARE_128_MB], check=True)
    mb = 2**20
    assert monitor.peak_rss_bytes - own_rss > 3 * 120 * mb  # three processes' RSS each count the 128 MB
    assert monitor.peak_pss_bytes - own_pss < 128 * mb + 100 * mb  # PSS counts it once (plus the interpreters)


def test_steps_to_threshold_is_the_first_full_window_reaching_it():
    episodes = [(10 * i, float(i), reward) for i, reward in enumerate([1, 1, 5, 5, 5, 1])]
    assert first_time_solved(episodes, threshold=5, window=3) == (40.0, 4.0)
    assert first_time_solved(episodes, threshold=6, window=3) != first_time_solved(episodes, threshold=6, window=3)  # NaN
    assert np.isnan(first_time_solved(episodes[:2], threshold=0, window=3)[0])  # never a full window


def test_runs_interleave_the_algorithms_seed_by_seed():
    runs = plan_runs(["a3c", "a2c", "offpac"], "CartPole-v1", seeds=3, timesteps=10)
    assert [(run.seed, run.algo) for run in runs] == [
        (0, "a3c"), (0, "a2c"), (0, "offpac"),
        (1, "a2c"), (1, "offpac"), (1, "a3c"),
        (2, "offpac"), (2, "a3c"), (2, "a2c"),
    ]  # fmt: skip
    assert all(run.threshold == 475 for run in runs)


@pytest.mark.parametrize(
    "args, message",
    [
        (dict(algos=["a3c", "a4c"]), r"unknown algo\(s\) \['a4c'\]"),
        (dict(env_id="CartPole-v9"), "unknown env 'CartPole-v9'"),
        (dict(seeds=0), "seeds must be an integer >= 1"),
        (dict(algos=["a2c"], scaling=[1, 2]), "a scaling sweep varies n_workers"),
        (dict(env_latency="gaussian:0.001"), "DISTRIBUTION:MEAN_SECONDS"),
        (dict(env_latency="exponential:-1"), "DISTRIBUTION:MEAN_SECONDS"),
        (dict(algos=["a3c:update_mode"]), "write a variant as ALGO:KEY=VALUE"),
        (dict(algos=["a2c:vec_env=shm"]), "vec_env must be one of"),
        (dict(algos=["a3c:vec_env=subproc"]), "workers make and step their own envs"),
        (dict(algos=["a4c:n_steps=5"]), r"unknown algo\(s\) \['a4c'\]"),
    ],
)
def test_bad_input_is_refused_before_any_training(args, message):
    kwargs = dict(algos=["a3c", "a2c"], env_id="CartPole-v1", seeds=2, timesteps=1000) | args
    with pytest.raises(ValueError, match=message):
        validate(**kwargs)


def test_cli_reports_bad_input_as_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--env", "CartPole-v1", "--algos", "a4c", "--seeds", "1", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "unknown algo(s) ['a4c']" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing ran, nothing written


def test_a_scaling_sweep_runs_each_worker_count_and_plots_against_the_ideal(tmp_path):
    runs = plan_runs(["a3c"], "CartPole-v1", seeds=2, timesteps=10, scaling=[1, 2, 4], envs_per_worker=4)
    assert [(run.seed, run.n_workers) for run in runs] == [(0, 1), (0, 2), (0, 4), (1, 2), (1, 4), (1, 1)]
    assert {run.label for run in runs} == {"a3c x1", "a3c x2", "a3c x4"}
    table = pd.DataFrame(
        [{"algo": "a3c", "n_workers": n, "fps": 1000.0 * n**0.8, "seconds_to_threshold": 60.0 / n**0.7} for n in (1, 2, 4)]
    )
    plot_scaling(table, tmp_path / "scaling.png", "test")
    assert (tmp_path / "scaling.png").read_bytes()[:4] == b"\x89PNG"
    # Two variants of one algo get a line each.
    both = pd.concat([table.assign(variant=""), table.assign(variant="update_mode=hogwild")])
    assert list(_algo_with_variant(both).unique()) == ["a3c", "a3c:update_mode=hogwild"]
    plot_scaling(both, tmp_path / "scaling_variants.png", "test")
    assert (tmp_path / "scaling_variants.png").read_bytes()[:4] == b"\x89PNG"


def test_report_only_redraws_the_same_table_from_the_csvs(tiny_comparison):
    results = tiny_comparison / "results.md"
    before = results.read_text()
    results.unlink()
    (tiny_comparison / "curves_steps.png").unlink()
    main(["--env", "CartPole-v1", "--out", str(tiny_comparison), "--report-only"])
    assert results.read_text() == before  # same command line, same table (the bootstrap is seeded)
    assert (tiny_comparison / "curves_steps.png").exists()


def test_resume_trains_only_the_runs_the_folder_does_not_hold(tiny_comparison, tmp_path, capsys):
    out = tmp_path / "resumed"
    shutil.copytree(tiny_comparison, out)
    before = pd.read_csv(out / "runs.csv")
    first_command = (out / "command.txt").read_text().strip()
    common = ["--env", "CartPole-v1", "--timesteps", "4000", "--eval-episodes", "2", "--threshold", "15", "--window", "5"]
    main([*common, "--algos", "a3c", "a2c", "--seeds", "2", "--out", str(out), "--resume"])
    assert "already holds every planned run" in capsys.readouterr().out
    assert pd.read_csv(out / "runs.csv").equals(before)

    main([*common, "--algos", "a2c", "--seeds", "3", "--out", str(out), "--resume"])  # trains a2c seed 2 only
    runs, curves, _ = read_comparison(out)
    assert runs.iloc[:4].equals(read_comparison(tiny_comparison)[0])  # the earlier rows, to the last bit
    assert list(zip(runs["algo"].iloc[4:], runs["seed"].iloc[4:], strict=True)) == [("a2c", 2)]
    assert set(curves["seed"]) == {0, 1, 2}
    commands = (out / "command.txt").read_text().splitlines()
    assert commands[0] == first_command and "--seeds 3" in commands[1] and len(commands) == 2
    assert all(f"`{command}`" in (out / "results.md").read_text() for command in commands)

    with pytest.raises(SystemExit):  # rows trained for another number of steps would not be comparable
        main([*common[:2], "--timesteps", "5000", "--algos", "a2c", "--seeds", "4", "--out", str(out), "--resume"])
    assert "timesteps [4000]" in capsys.readouterr().err
    assert len(pd.read_csv(out / "runs.csv")) == 5


def test_env_latency_wraps_every_env_after_the_configured_wrappers():
    latency = {"sb3_async.common.wrappers.RandomLatency": dict(mean_seconds=0.002, distribution="constant")}
    assert with_latency_wrapper(None, "constant:0.002") == [latency]
    atari = "stable_baselines3.common.atari_wrappers.AtariWrapper"
    assert with_latency_wrapper(atari, "constant:0.002") == [atari, latency]
    assert with_latency_wrapper([{atari: dict(frame_skip=2)}], "constant:0.002") == [{atari: dict(frame_skip=2)}, latency]


def test_a_run_with_env_latency_steps_its_workers_envs_slowly(no_leaks):
    # 200 steps over 2 workers x 4 envs (the a3c CartPole-v1 entry): 25 steps of 4 envs each, 5 ms per env step.
    spec = RunSpec("a3c", "CartPole-v1", seed=0, timesteps=200, threshold=475, eval_episodes=1, env_latency="constant:0.005")
    assert run_one(spec).wall_seconds >= 25 * 4 * 0.005 * 0.9


def test_variants_set_hyperparameters_and_the_vec_env_of_a_run(tmp_path):
    assert parse_variant("a3c") == ("a3c", {}, "dummy")
    assert parse_variant("a3c:update_mode=hogwild,n_steps=20") == ("a3c", {"update_mode": "hogwild", "n_steps": 20}, "dummy")
    assert parse_variant("a2c:vec_env=subproc") == ("a2c", {}, "subproc")
    runs = plan_runs(["a3c", "a3c:update_mode=hogwild", "a2c:vec_env=subproc"], "CartPole-v1", seeds=1, timesteps=10)
    assert [run.label for run in runs] == ["a3c", "a3c:update_mode=hogwild", "a2c:vec_env=subproc"]

    hogwild = experiment_manager(runs[1], str(tmp_path / "hogwild"))
    model, _ = hogwild.setup_experiment()
    assert model.update_mode == "hogwild"
    # The backend and restarts too (the model is only built: no Ray starts).
    ray_run = plan_runs(["a3c:backend=ray,max_worker_restarts=1"], "CartPole-v1", seeds=1, timesteps=10)[0]
    model, _ = experiment_manager(ray_run, str(tmp_path / "ray")).setup_experiment()
    assert (model.backend, model.max_worker_restarts) == ("ray", 1)
    subproc = experiment_manager(runs[2], str(tmp_path / "subproc"))
    model, _ = subproc.setup_experiment()
    try:
        assert isinstance(model.env, SubprocVecEnv) and model.env.num_envs == 8  # rl-zoo's a2c CartPole-v1 entry
    finally:
        model.env.close()


def test_by_default_a3c_meets_what_a_user_would_otherwise_pick_with_rl_zoos_entries(tmp_path):
    assert default_algos("CartPole-v1") == ["a3c", "a2c", "ppo"]
    assert default_algos("Pendulum-v1") == ["a3c", "a2c", "ppo", "sac"]
    with pytest.raises(ValueError, match="unknown env"):
        default_algos("NoSuchEnv-v0")
    # PPO and SAC train and are measured as A2C is, each with rl-zoo3's own entry.
    for algo, env_id, settings in [("ppo", "CartPole-v1", dict(n_steps=32, n_epochs=20)), ("sac", "Pendulum-v1", {})]:
        spec = RunSpec(algo, env_id, seed=0, timesteps=300, threshold=threshold_for(env_id), eval_episodes=1)
        model, _ = experiment_manager(spec, str(tmp_path / algo)).setup_experiment()
        assert {key: getattr(model, key) for key in settings} == settings
        assert model.lr_schedule(1.0) == pytest.approx(1e-3)  # both entries start at 1e-3; SB3's default is 3e-4
        model.env.close()
        result = run_one(spec)
        assert result.fps > 0 and result.cpu_cores > 0 and np.isfinite(result.final_score), result


def test_a_config_file_for_one_algo_and_one_for_the_others():
    validate(["a2c"], "CartPole-v1", seeds=1, timesteps=10)  # registers sb3_async's algos with rl-zoo3
    assert parse_conf_files(["a2c=x.yml", "y.yml"]) == {"a2c": "x.yml", "": "y.yml"}
    runs = plan_runs(["a3c", "a2c", "ppo"], "CartPole-v1", seeds=1, timesteps=10, conf_files=parse_conf_files(["a2c=x.yml"]))
    assert {run.algo: run.conf_file for run in runs} == {"a3c": None, "a2c": "x.yml", "ppo": None}
    with pytest.raises(ValueError, match="unknown algo 'nope'"):
        parse_conf_files(["nope=x.yml"])
    with pytest.raises(ValueError, match="more than one file for 'a2c'"):
        parse_conf_files(["a2c=x.yml", "a2c=y.yml"])


def test_sb3_a2c_on_minatar_gets_the_same_network_as_a3c(tmp_path):
    # benchmarks/configs/a2c_minatar.yml names MinAtarCNN in its policy_kwargs string.
    validate(["a2c"], "MinAtar/Breakout-v1", seeds=1, timesteps=10)  # registers MinAtar's ids
    config = Path(__file__).parents[1] / "benchmarks" / "configs" / "a2c_minatar.yml"
    spec = plan_runs(["a2c"], "MinAtar/Breakout-v1", seeds=1, timesteps=10, conf_files={"a2c": str(config)})[0]
    model, _ = experiment_manager(spec, str(tmp_path)).setup_experiment()
    try:
        assert isinstance(model.policy.features_extractor, MinAtarCNN)
        assert (model.n_envs, model.n_steps, model.ent_coef) == (16, 5, 0.01)
    finally:
        model.env.close()
