"""
Train each algorithm for each seed with rl-zoo3's settings, one run at a time, each in a fresh
process, with the order of the algorithms rotating from seed to seed so that machine drift hits
all alike. Every run records its learning curve, throughput, CPU use and peak memory, then a
deterministic evaluation of the final policy.
"""

import argparse
import ast
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from typing import Any

import gymnasium as gym
import pandas as pd
import torch as th
from rl_zoo3.utils import ALGOS
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import sync_envs_normalization
from tqdm.auto import tqdm

from sb3_async.common.wrappers import parse_latency
from sb3_async.compare.measure import EpisodeRecorder, ProcessTreeMonitor, first_time_solved
from sb3_async.zoo.experiment import ASYNC_ALGOS, AsyncExperimentManager, register
from sb3_async.zoo.time_objective import threshold_for


@dataclass
class RunSpec:
    """One training run."""

    algo: str
    env_id: str
    seed: int
    timesteps: int
    threshold: float
    window: int = 100
    eval_episodes: int = 20
    n_workers: int | None = None  # set in a scaling sweep: this many workers ...
    envs_per_worker: int | None = None  # ... each with this many envs (default: as configured)
    conf_file: str | None = None
    num_threads: int = 1
    env_latency: str | None = None  # "DISTRIBUTION:MEAN_SECONDS": every env wrapped in RandomLatency
    variant: str = ""  # "KEY=VALUE,...": hyperparameters over the config's, or vec_env=subproc (see parse_variant)

    @property
    def label(self) -> str:
        label = f"{self.algo}:{self.variant}" if self.variant else self.algo
        return label if self.n_workers is None else f"{label} x{self.n_workers}"


VEC_ENV_TYPES = ("dummy", "subproc")


def parse_variant(algo: str) -> tuple[str, dict[str, Any], str]:
    """
    ``"ALGO[:KEY=VALUE,...]"`` -> (algo, hyperparameters, vec_env type). Values are Python literals
    (else strings): ``a3c:update_mode=hogwild,n_steps=20``. ``vec_env=subproc`` steps a synchronous
    algo's envs in SB3's SubprocVecEnv (rl-zoo3's ``--vec-env``); the async algos' workers make their own.
    """
    name, _, variant = algo.partition(":")
    hyperparams: dict[str, Any] = {}
    for item in filter(None, variant.split(",")):
        key, equals, text = item.partition("=")
        if not equals or not key:
            raise ValueError(f"{algo!r}: write a variant as ALGO:KEY=VALUE[,KEY=VALUE...]")
        try:
            hyperparams[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            hyperparams[key] = text
    vec_env = hyperparams.pop("vec_env", "dummy")
    return name, hyperparams, vec_env


@dataclass
class RunResult:
    spec: RunSpec
    wall_seconds: float
    fps: float
    cpu_cores: float  # CPU seconds of the learner and its workers per wall-clock second
    peak_pss_mb: float  # the memory to read: summed PSS of the learner and its workers
    peak_rss_mb: float  # summed RSS, which counts torch's shared pages once per worker
    final_score: float
    steps_to_threshold: float
    seconds_to_threshold: float
    n_envs: int
    episodes: list[tuple[int, float, float]] = field(repr=False, default_factory=list)

    def row(self) -> dict[str, Any]:
        row = {key: value for key, value in asdict(self).items() if key not in ("spec", "episodes")}
        return {"label": self.spec.label, **asdict(self.spec), **row}


def default_algos(env_id: str) -> list[str]:
    """
    What a user would otherwise pick, beside A3C: SB3's A2C and PPO (what most SB3 users train with),
    and SAC where the actions are continuous; each with rl-zoo3's entry for ``env_id``.
    """
    register()  # MinAtar's ids
    try:
        env = gym.make(env_id)
    except gym.error.Error as error:
        raise ValueError(f"unknown env {env_id!r}: {error}") from error
    try:
        continuous = isinstance(env.action_space, gym.spaces.Box)
    finally:
        env.close()
    return ["a3c", "a2c", "ppo", "sac"] if continuous else ["a3c", "a2c", "ppo"]


def validate(
    algos: list[str], env_id: str, seeds: int, timesteps: int, scaling: list[int] | None = None, env_latency: str | None = None
) -> None:
    """Every check that can fail before a run starts; a ValueError says what is wrong."""
    register()
    if env_latency is not None:
        parse_latency(env_latency)
    variants = [parse_variant(algo) for algo in algos]
    unknown = [name for name, _, _ in variants if name not in ALGOS]
    if unknown:
        raise ValueError(f"unknown algo(s) {unknown}: choose from {sorted(ALGOS)}")
    for algo, (name, _, vec_env) in zip(algos, variants, strict=True):
        if vec_env not in VEC_ENV_TYPES:
            raise ValueError(f"{algo!r}: vec_env must be one of {VEC_ENV_TYPES}")
        if vec_env != "dummy" and name in ASYNC_ALGOS:
            raise ValueError(f"{algo!r}: {name}'s workers make and step their own envs; vec_env is for synchronous algos")
    try:
        gym.spec(env_id)
    except gym.error.Error as error:
        raise ValueError(f"unknown env {env_id!r}: {error}") from error
    if not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds must be an integer >= 1, got {seeds!r}")
    if timesteps < 1:
        raise ValueError(f"timesteps must be >= 1, got {timesteps!r}")
    if scaling:
        if any(n < 1 for n in scaling):
            raise ValueError(f"--scaling takes worker counts >= 1, got {scaling}")
        synchronous = [algo for algo, (name, _, _) in zip(algos, variants, strict=True) if name not in ASYNC_ALGOS]
        if synchronous:
            raise ValueError(f"a scaling sweep varies n_workers, which {synchronous} do not have; use {list(ASYNC_ALGOS)}")


def with_latency_wrapper(configured_wrappers: Any, env_latency: str) -> list[Any]:
    """The ``env_wrapper`` hyperparameter: the configured wrappers (rl-zoo3's forms), then RandomLatency outermost."""
    distribution, mean_seconds = parse_latency(env_latency)
    if configured_wrappers is None:
        wrappers = []
    elif isinstance(configured_wrappers, list):
        wrappers = list(configured_wrappers)
    else:
        wrappers = [configured_wrappers]
    return [*wrappers, {"sb3_async.common.wrappers.RandomLatency": dict(mean_seconds=mean_seconds, distribution=distribution)}]


def parse_conf_files(items: list[str] | None) -> dict[str, str]:
    """``["a2c=a2c.yml", "mine.yml"]`` -> ``{"a2c": "a2c.yml", "": "mine.yml"}``: config files by algo ("": any other)."""
    conf_files: dict[str, str] = {}
    for item in items or []:
        algo, equals, path = item.rpartition("=")
        if algo in conf_files or (not equals and "" in conf_files):
            raise ValueError(f"--conf-file: more than one file for {algo or 'every algo'!r}")
        if algo and algo not in ALGOS:
            raise ValueError(f"--conf-file {item!r}: unknown algo {algo!r}")
        conf_files[algo] = path
    return conf_files


def plan_runs(
    algos: list[str],
    env_id: str,
    seeds: int,
    timesteps: int,
    scaling: list[int] | None = None,
    threshold: float | None = None,
    conf_files: dict[str, str] | None = None,
    **spec_kwargs: Any,
) -> list[RunSpec]:
    """All runs, seed by seed, with the order of the variants rotating from one seed to the next."""
    conf_files = conf_files or {}
    worker_counts: list[int | None] = list(scaling) if scaling else [None]
    variants = [(algo, n) for algo in algos for n in worker_counts]
    threshold = threshold_for(env_id) if threshold is None else threshold
    runs = []
    for seed in range(seeds):
        shift = seed % len(variants)
        for algo, n_workers in variants[shift:] + variants[:shift]:
            name, _, variant = algo.partition(":")
            conf_file = conf_files.get(name, conf_files.get(""))
            runs.append(
                RunSpec(
                    name,
                    env_id,
                    seed,
                    timesteps,
                    threshold,
                    n_workers=n_workers,
                    variant=variant,
                    conf_file=conf_file,
                    **spec_kwargs,
                )
            )
    return runs


def experiment_manager(spec: RunSpec, log_folder: str) -> AsyncExperimentManager:
    """rl-zoo3's experiment manager for ``spec``: the configured hyperparameters, with the run's overrides."""
    _, overrides, vec_env = parse_variant(f"{spec.algo}:{spec.variant}")
    manager = AsyncExperimentManager(
        argparse.Namespace(), spec.algo, spec.env_id, log_folder, n_timesteps=spec.timesteps, eval_freq=-1,
        seed=spec.seed, config=spec.conf_file, hyperparams=overrides, verbose=0, device="cpu", vec_env_type=vec_env,
    )  # fmt: skip
    # The manager reads `overrides` when it sets the experiment up, so what follows still counts.
    if spec.n_workers is not None:
        # Each worker keeps the configured envs_per_worker; the total grows with the workers.
        envs_per_worker = spec.envs_per_worker
        if envs_per_worker is None:
            _, configured = manager.read_hyperparameters()
            envs_per_worker = max(int(configured.get("n_envs", 1)) // int(configured.get("n_workers", 1)), 1)
        overrides.update(n_workers=spec.n_workers, n_envs=spec.n_workers * envs_per_worker)
    if spec.env_latency is not None:
        _, configured = manager.read_hyperparameters()
        overrides["env_wrapper"] = with_latency_wrapper(configured.get("env_wrapper"), spec.env_latency)
    return manager


def run_one(spec: RunSpec) -> RunResult:
    """Train and evaluate one run (in a fresh process: see :func:`run_all`)."""
    register()
    th.set_num_threads(spec.num_threads)
    with tempfile.TemporaryDirectory() as log_folder:
        manager = experiment_manager(spec, log_folder)
        experiment = manager.setup_experiment()
        assert experiment is not None, "setup_experiment returns None only when it runs an Optuna study"
        model, _ = experiment
        recorder = EpisodeRecorder()
        try:
            with ProcessTreeMonitor() as monitor:
                started = time.perf_counter()
                model.learn(spec.timesteps, callback=recorder)
                wall_seconds = time.perf_counter() - started
            eval_env = manager.create_envs(1, eval_env=True)
            train_env = model.get_env()
            assert train_env is not None
            if model.get_vec_normalize_env() is not None:
                sync_envs_normalization(train_env, eval_env)
            final_score, _ = evaluate_policy(
                model, eval_env, n_eval_episodes=spec.eval_episodes, deterministic=manager.deterministic_eval
            )
            assert isinstance(final_score, float)  # not return_episode_rewards: the mean
            eval_env.close()
        finally:
            if model.env is not None:
                model.env.close()
    steps, seconds = first_time_solved(recorder.episodes, spec.threshold, spec.window)
    return RunResult(
        spec=spec,
        wall_seconds=wall_seconds,
        fps=model.num_timesteps / wall_seconds,
        cpu_cores=monitor.cpu_seconds / wall_seconds,
        peak_pss_mb=monitor.peak_pss_bytes / 2**20,
        peak_rss_mb=monitor.peak_rss_bytes / 2**20,
        final_score=float(final_score),
        steps_to_threshold=steps,
        seconds_to_threshold=seconds,
        n_envs=manager.n_envs,
        episodes=recorder.episodes,
    )


def run_all(
    runs: list[RunSpec], progress: bool = True, on_result: Callable[[RunResult], None] | None = None
) -> list[RunResult]:
    """
    Each run in a fresh spawned process, one at a time, under one progress bar over all runs.
    ``on_result`` is called with each result as it comes (the CLI writes the CSVs then, so that
    an interrupted comparison keeps every finished run).
    """
    results = []
    with tqdm(total=len(runs), disable=not progress, unit="run") as bar:
        for spec in runs:
            bar.set_postfix_str(f"{spec.label} seed {spec.seed}")
            # A fresh process per run: no state, thread pool or forkserver carries over to the next run.
            with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
                results.append(pool.submit(run_one, spec).result())
            if on_result is not None:
                on_result(results[-1])
            bar.update()
    return results


def runs_still_to_do(planned: list[RunSpec], done: pd.DataFrame) -> list[RunSpec]:
    """
    The planned runs that ``done`` (an earlier runs.csv) does not hold, matched by label and seed.
    A ValueError if the earlier runs were trained on another env or for another number of steps:
    their rows would not be comparable with the new ones.
    """
    if not planned or done.empty:
        return planned
    for column in ("env_id", "timesteps"):
        theirs, ours = set(done[column]), {getattr(spec, column) for spec in planned}
        if theirs != ours:
            raise ValueError(f"--resume: the runs already there have {column} {sorted(theirs)}, these {sorted(ours)}")
    finished = set(zip(done["label"], done["seed"], strict=True))
    return [spec for spec in planned if (spec.label, spec.seed) not in finished]
