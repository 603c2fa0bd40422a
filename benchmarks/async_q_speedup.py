"""
The A3C paper's Table 2, in spirit: how much faster, in wall-clock time, each asynchronous method
reaches a score on CartPole-v1 with 1, 2, ... workers, with SB3's DQN (one process, replay buffer)
as the non-asynchronous reference. Every method takes its hyperparameters from rl-zoo3 configs
(sb3_async's zoo_configs/, rl-zoo3's own for DQN); n-step Q-learning is the async_q entry with
``n_steps = train_freq``. A worker count scales the envs: each worker keeps the configured
envs_per_worker.

"Solved" is judged on the greedy policy: every ``--eval-freq`` env steps, 10 fresh deterministic
episodes; the first evaluation averaging ``--threshold`` stops the run. The clock stops while
evaluating, so the time is training time. (The training-episode mean would not do: a Q-learning
worker whose final epsilon is 0.5 never balances for long, however good its Q-network.)
Each run is its own spawned process; seeds are paired and the order rotates; medians.

    python benchmarks/async_q_speedup.py --seeds 3 --workers 1 2
"""

import argparse
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

from sb3_async.zoo.experiment import AsyncExperimentManager, register

ENV_ID = "CartPole-v1"
# name: (rl-zoo3 algo, hyperparameters over the config's, asynchronous)
METHODS: dict[str, tuple[str, dict[str, Any], bool]] = {
    "1-step Q": ("async_q", {"n_steps": 1}, True),
    "1-step SARSA": ("async_sarsa", {"n_steps": 1}, True),
    "n-step Q": ("async_q", {"n_steps": "train_freq"}, True),
    "A3C": ("a3c", {}, True),
    "DQN (SB3)": ("dqn", {}, False),
}


class StopWhenGreedySolves(BaseCallback):
    """Evaluates the greedy policy every ``eval_freq`` env steps; stops at ``threshold``; excludes evaluation time."""

    def __init__(self, eval_freq: int, threshold: float, seed: int) -> None:
        super().__init__()
        self.eval_freq, self.threshold = eval_freq, threshold
        self.eval_env = make_vec_env(ENV_ID, n_envs=1, seed=1000 + seed)
        self.next_eval = eval_freq
        self.started = self.evaluating = 0.0
        self.solved_at: tuple[int, float] | None = None
        self.best = -np.inf

    def _on_training_start(self) -> None:
        self.started = time.perf_counter()

    def _on_step(self) -> bool:
        if self.num_timesteps < self.next_eval:
            return True
        self.next_eval += self.eval_freq
        eval_started = time.perf_counter()
        training_seconds = eval_started - self.started - self.evaluating
        score, _ = evaluate_policy(self.model, self.eval_env, n_eval_episodes=10, deterministic=True)
        self.evaluating += time.perf_counter() - eval_started
        self.best = max(self.best, score)
        if score >= self.threshold:
            self.solved_at = (self.num_timesteps, training_seconds)
            return False
        return True


def run_one(
    method: str, n_workers: int | None, seed: int, budget: int | None, eval_freq: int, threshold: float
) -> dict[str, Any]:
    register()
    th.set_num_threads(1)
    algo, overrides, _ = METHODS[method]
    overrides = dict(overrides)
    with tempfile.TemporaryDirectory() as log_folder:
        manager = AsyncExperimentManager(
            argparse.Namespace(), algo, ENV_ID, log_folder, n_timesteps=budget or 0, eval_freq=-1,
            seed=seed, hyperparams=overrides, verbose=0, device="cpu",
        )  # fmt: skip
        _, configured = manager.read_hyperparameters()
        if overrides.get("n_steps") == "train_freq":
            overrides["n_steps"] = configured["train_freq"]
        if n_workers is not None:
            envs_per_worker = max(int(configured.get("n_envs", 1)) // int(configured.get("n_workers", 1)), 1)
            overrides.update(n_workers=n_workers, n_envs=n_workers * envs_per_worker)
        model, _ = manager.setup_experiment()  # reads n_timesteps from the config unless a budget is given
        stopper = StopWhenGreedySolves(eval_freq, threshold, seed)
        try:
            model.learn(manager.n_timesteps, callback=stopper)
        finally:
            model.env.close()
    steps, seconds = stopper.solved_at or (np.nan, np.nan)
    return dict(method=method, n_workers=n_workers, seed=seed, steps=steps, seconds=seconds, best=stopper.best)


def median(values: list[float]) -> float:
    """Median over all seeds, an unsolved run counting as slower than any solved one (nan if half fail)."""
    ordered = sorted(values, key=lambda value: np.inf if np.isnan(value) else value)
    middle = (
        ordered[len(ordered) // 2]
        if len(ordered) % 2
        else statistics.mean(ordered[len(ordered) // 2 - 1 : len(ordered) // 2 + 1])
    )
    return float(middle)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--budget",
        type=int,
        default=None,
        help="env steps per run (default: each config's n_timesteps, which its exploration schedule is relative to)",
    )
    parser.add_argument("--eval-freq", type=int, default=5_000)
    parser.add_argument("--threshold", type=float, default=475.0)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    args = parser.parse_args()

    variants = [(method, n) for method in args.methods for n in (args.workers if METHODS[method][2] else [None])]
    results = []
    for seed in range(args.seeds):
        shift = seed % len(variants)
        for method, n_workers in variants[shift:] + variants[:shift]:
            with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
                result = pool.submit(run_one, method, n_workers, seed, args.budget, args.eval_freq, args.threshold).result()
            results.append(result)
            print(
                f"{method:13s} workers={n_workers} seed={seed}: {result['steps']} steps, {result['seconds']:.1f} s (best {result['best']:.0f})",  # noqa: E501
                flush=True,
            )

    reference = (
        median([r["seconds"] for r in results if r["method"] == "DQN (SB3)"]) if "DQN (SB3)" in args.methods else np.nan
    )
    budget = f"{args.budget:,} steps" if args.budget else "each config's n_timesteps"
    print(
        f"\nMedian training seconds to a greedy 10-episode mean >= {args.threshold:g} on {ENV_ID}, {args.seeds} seeds, budget: {budget}"  # noqa: E501
    )
    print(
        f"{'method':13s} {'workers':>7s} {'solved':>6s} {'steps':>9s} {'seconds':>8s} {'speed-up vs 1 worker':>21s} {'DQN time / time':>16s}"  # noqa: E501
    )
    for method in args.methods:
        runs_by_workers = {
            n: [r for r in results if r["method"] == method and r["n_workers"] == n]
            for n in (args.workers if METHODS[method][2] else [None])
        }
        one_worker = median([r["seconds"] for r in runs_by_workers.get(1, [])]) if 1 in runs_by_workers else np.nan
        for n, runs in runs_by_workers.items():
            seconds = median([r["seconds"] for r in runs])
            solved = sum(not np.isnan(r["seconds"]) for r in runs)
            print(
                f"{method:13s} {n or '-'!s:>7s} {solved:>4d}/{len(runs)} {median([r['steps'] for r in runs]):>9.0f} {seconds:>8.1f} "  # noqa: E501
                f"{one_worker / seconds if n else np.nan:>21.2f} {reference / seconds:>16.2f}"
            )


if __name__ == "__main__":
    main()
