"""
``make demo``: swap SB3's A2C for A3C as a user would, on CartPole-v1: both get
``make_vec_env("CartPole-v1", n_envs=8)`` and their defaults (A3C shares the 8 envs among one worker
per core). Each trains with a progress bar until its deterministic policy scores >= 475 over 20
evaluation episodes (evaluated every 10,000 env steps) or the budget ends, on three seeds, A3C and
A2C taking turns so that a slower or faster spell of the machine falls on both. The demo then puts
the scores, the wall-clock times (and how much of them went to evaluating), the env steps and the
training speed side by side, and compares the median times: one
run of either says little, since A3C's workers race (its steps differ from run to run even with a
seed) and either can find the threshold early or late.

    python -m sb3_async.demo [--timesteps 300000] [--seeds 3] [--first-seed 0]
"""

import argparse
import statistics
import time
from collections.abc import Callable
from typing import NamedTuple

import torch as th
from stable_baselines3 import A2C
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import EvalCallback, StopTrainingOnRewardThreshold
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

from sb3_async import A3C

ENV_ID = "CartPole-v1"
THRESHOLD = 475.0


class Run(NamedTuple):
    score_mean: float
    score_std: float
    seconds: float
    eval_seconds: float
    env_steps: int

    @property
    def training_steps_per_second(self) -> float:
        return self.env_steps / max(self.seconds - self.eval_seconds, 1e-9)


class TimedEvalCallback(EvalCallback):
    """SB3's EvalCallback, counting the seconds it spends evaluating (the rest of learn() is training)."""

    eval_seconds = 0.0

    def _on_step(self) -> bool:
        started = time.perf_counter()
        try:
            return super()._on_step()
        finally:
            self.eval_seconds += time.perf_counter() - started


def make_a3c(seed: int) -> BaseAlgorithm:
    return A3C("MlpPolicy", make_vec_env(ENV_ID, n_envs=8, seed=seed), seed=seed, device="cpu")


def make_a2c(seed: int) -> BaseAlgorithm:
    th.set_num_threads(1)  # SB3's fastest setting for a small MLP on CPU (A3C's workers set it themselves)
    return A2C("MlpPolicy", make_vec_env(ENV_ID, n_envs=8, seed=seed), seed=seed, device="cpu")


def train_and_evaluate(model: BaseAlgorithm, timesteps: int, seed: int) -> Run:
    """Train until the deterministic policy scores >= THRESHOLD over 20 episodes (or the budget ends)."""
    stop = TimedEvalCallback(
        make_vec_env(ENV_ID, n_envs=1, seed=1000 + seed),
        eval_freq=max(10_000 // model.n_envs, 1),
        n_eval_episodes=20,
        callback_on_new_best=StopTrainingOnRewardThreshold(THRESHOLD),
        verbose=0,
    )
    started = time.perf_counter()
    model.learn(timesteps, callback=stop, progress_bar=True)
    seconds = time.perf_counter() - started
    mean, std = evaluate_policy(model, make_vec_env(ENV_ID, n_envs=1, seed=2000 + seed), n_eval_episodes=20)
    assert isinstance(mean, float) and isinstance(std, float)  # not return_episode_rewards: the mean and its std
    return Run(mean, std, seconds, stop.eval_seconds, model.num_timesteps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timesteps", type=int, default=300_000, help="budget of env steps per run")
    parser.add_argument("--seeds", type=int, default=3, help="runs of each algorithm")
    parser.add_argument("--first-seed", type=int, default=0)
    args = parser.parse_args()
    if args.seeds < 1:
        parser.error("--seeds must be >= 1")

    seeds = range(args.first_seed, args.first_seed + args.seeds)
    contestants: dict[str, Callable[[int], BaseAlgorithm]] = {"A3C": make_a3c, "SB3 A2C": make_a2c}
    runs: dict[str, list[Run]] = {name: [] for name in contestants}
    for seed in seeds:
        # Taking turns, with the one that starts alternating: neither always runs on a cold or a warm machine.
        order = list(contestants) if seed % 2 == 0 else list(reversed(contestants))
        for name in order:
            model = contestants[name](seed)
            if isinstance(model, A3C):
                setup = f"{model.n_workers} workers x {model.envs_per_worker} envs, update_mode={model._update_mode()!r}"
            else:
                setup = "8 envs, rl-zoo settings: SB3's defaults"
            print(f"{name}, seed {seed}: {setup}")
            runs[name].append(train_and_evaluate(model, args.timesteps, seed))

    print(
        f"\n{'':8} {'seed':>4} {'score (20 episodes)':>22} {'wall-clock':>11} {'evaluating':>11} {'env steps':>10} "
        f"{'training steps/s':>17}"
    )
    for name, name_runs in runs.items():
        for seed, run in zip(seeds, name_runs, strict=True):
            score = f"{run.score_mean:>14.1f} +/- {run.score_std:<5.1f}"
            print(
                f"{name:8} {seed:>4} {score} {run.seconds:>10.1f}s {run.eval_seconds:>10.1f}s {run.env_steps:>10,} "
                f"{run.training_steps_per_second:>17,.0f}"
            )
    a3c_seconds = statistics.median(run.seconds for run in runs["A3C"])
    a2c_seconds = statistics.median(run.seconds for run in runs["SB3 A2C"])
    ratio = a3c_seconds / a2c_seconds
    a3c_faster = sum(a3c.seconds < a2c.seconds for a3c, a2c in zip(runs["A3C"], runs["SB3 A2C"], strict=True))
    throughput_ratio = statistics.median(run.training_steps_per_second for run in runs["A3C"]) / statistics.median(
        run.training_steps_per_second for run in runs["SB3 A2C"]
    )
    print(
        f"\nA3C took {ratio:.2f}x SB3 A2C's wall-clock time ({'faster' if ratio < 1 else 'slower'}): median over "
        f"{args.seeds} seed(s), {a3c_seconds:.1f}s against {a2c_seconds:.1f}s, evaluation included, to a 20-episode "
        f"evaluation mean of {THRESHOLD:g} (or the budget). A3C was faster on {a3c_faster} of {args.seeds} seed(s). "
        f"Training alone (evaluation left out, start-up in), A3C ran {throughput_ratio:.2f}x A2C's env steps per second. "
        f"CartPole is solved within a few evaluations, so which evaluation first finds it solved, and the "
        f"evaluations themselves, weigh as much as the speed of training: more seeds and envs in docs/benchmarks.md."
    )


if __name__ == "__main__":
    main()
