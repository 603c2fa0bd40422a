"""
``make demo``: swap SB3's A2C for A3C as a user would, on CartPole-v1: both get
``make_vec_env("CartPole-v1", n_envs=8)`` and their defaults (A3C shares the 8 envs among one worker
per core). Each trains with a progress bar until the mean return of its last 100 training episodes
reaches 475, the measure of the A3C paper, rl-zoo's benchmark and ``python -m sb3_async.compare``
(or until the budget ends), on three seeds, A3C and A2C taking turns so that a slower or faster spell
of the machine falls on both. Each trained policy then plays 20 deterministic evaluation episodes,
outside the timed part. The demo puts the times, env steps, training speeds and evaluation scores side
by side and compares the median times: one run of either says little, since A3C's workers race (its
steps differ from run to run even with a seed) and either can have a lucky or an unlucky seed.

Training episodes, not periodic evaluations, decide when a run is done: an evaluation every N steps
would both cost time (20 episodes of 500 steps on one env, competing with A3C's workers for the cores)
and round every run up to its next evaluation, so that the ratio would mostly say which evaluation
first found the policy solved.

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
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

from sb3_async import A3C

ENV_ID = "CartPole-v1"
THRESHOLD = 475.0


class Run(NamedTuple):
    solved: bool
    seconds: float
    env_steps: int
    score_mean: float
    score_std: float

    @property
    def steps_per_second(self) -> float:
        return self.env_steps / max(self.seconds, 1e-9)


class StopOnTrainingMean(BaseCallback):
    """
    Stops training once the mean return of the model's last ``stats_window_size`` training episodes
    (SB3's ``ep_info_buffer``, which ``rollout/ep_rew_mean`` logs) reaches ``threshold``.

    :param threshold: the mean return that ends training
    """

    def __init__(self, threshold: float):
        super().__init__()
        self.threshold = threshold
        self.solved = False
        self._last_episode: object = None

    def _on_step(self) -> bool:
        episodes = self.model.ep_info_buffer
        if episodes is None or len(episodes) < (episodes.maxlen or 0) or episodes[-1] is self._last_episode:
            return True  # the window is not full yet, or no episode ended since the last look
        self._last_episode = episodes[-1]
        self.solved = statistics.fmean(episode["r"] for episode in episodes) >= self.threshold
        return not self.solved


def make_a3c(seed: int) -> BaseAlgorithm:
    return A3C("MlpPolicy", make_vec_env(ENV_ID, n_envs=8, seed=seed), seed=seed, device="cpu")


def make_a2c(seed: int) -> BaseAlgorithm:
    th.set_num_threads(1)  # SB3's fastest setting for a small MLP on CPU (A3C's workers set it themselves)
    return A2C("MlpPolicy", make_vec_env(ENV_ID, n_envs=8, seed=seed), seed=seed, device="cpu")


def train_and_evaluate(model: BaseAlgorithm, timesteps: int, seed: int) -> Run:
    """Train until the 100-episode training mean reaches THRESHOLD (or the budget ends), then evaluate 20 episodes."""
    stop = StopOnTrainingMean(THRESHOLD)
    started = time.perf_counter()
    model.learn(timesteps, callback=stop, progress_bar=True)
    seconds = time.perf_counter() - started
    mean, std = evaluate_policy(model, make_vec_env(ENV_ID, n_envs=1, seed=2000 + seed), n_eval_episodes=20)
    assert isinstance(mean, float) and isinstance(std, float)  # not return_episode_rewards: the mean and its std
    return Run(stop.solved, seconds, model.num_timesteps, mean, std)


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

    print(f"\n{'':8} {'seed':>4} {'time to 475':>12} {'env steps':>10} {'env steps/s':>12} {'evaluation (20 episodes)':>25}")
    for name, name_runs in runs.items():
        for seed, run in zip(seeds, name_runs, strict=True):
            took = f"{run.seconds:.1f}s" if run.solved else f">{run.seconds:.1f}s"
            score = f"{run.score_mean:.1f} +/- {run.score_std:.1f}"
            print(f"{name:8} {seed:>4} {took:>12} {run.env_steps:>10,} {run.steps_per_second:>12,.0f} {score:>25}")
    a3c_seconds = statistics.median(run.seconds for run in runs["A3C"])
    a2c_seconds = statistics.median(run.seconds for run in runs["SB3 A2C"])
    ratio = a3c_seconds / a2c_seconds
    a3c_faster = sum(a3c.seconds < a2c.seconds for a3c, a2c in zip(runs["A3C"], runs["SB3 A2C"], strict=True))
    unsolved = {name: sum(not run.solved for run in name_runs) for name, name_runs in runs.items()}
    throughput_ratio = statistics.median(run.steps_per_second for run in runs["A3C"]) / statistics.median(
        run.steps_per_second for run in runs["SB3 A2C"]
    )
    print(
        f"\nA3C took {ratio:.2f}x SB3 A2C's wall-clock time ({'faster' if ratio < 1 else 'slower'}) to a 100-episode "
        f"training mean of {THRESHOLD:g}: median over {args.seeds} seed(s), {a3c_seconds:.1f}s against "
        f"{a2c_seconds:.1f}s, start-up included. A3C was faster on {a3c_faster} of {args.seeds} seed(s); runs that "
        f"never got there (counted at the time their budget took): A3C {unsolved['A3C']}, A2C {unsolved['SB3 A2C']}. "
        f"A3C ran {throughput_ratio:.2f}x A2C's env steps per second (medians). More seeds, envs and "
        f"contestants: python -m sb3_async.compare, docs/results.md."
    )


if __name__ == "__main__":
    main()
