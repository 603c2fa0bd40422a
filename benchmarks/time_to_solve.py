"""
Wall-clock time and env steps until the 100-episode training mean reaches the env's threshold
(CartPole-v1: 475, Acrobot-v1: -100). Seeds are paired and the contestants interleaved (the order
turns each seed), so machine drift hits all alike; medians, and the median of paired ratios.

    python benchmarks/time_to_solve.py --seeds 5                                    # A3C 2 x 4 against SB3 A2C, 8 envs
    python benchmarks/time_to_solve.py --seeds 5 --contestants a3c:update_mode=locked a3c:update_mode=learner a2c
    python benchmarks/time_to_solve.py --seeds 3 --swap --env Acrobot-v1             # the swap, as a user makes it

A contestant is ``a3c`` or ``a2c``, optionally with settings after a colon (``a3c:update_mode=learner,n_steps=8``).
Without ``--swap`` every A3C runs 2 workers x 4 envs, SB3 A2C 8 envs (the rl-zoo CartPole setting; SB3's
defaults otherwise). With ``--swap``, each gets ``make_vec_env(MyEnv, n_envs=8)`` of an env class
written in this file (no env id, no zoo entry) and every other setting at its default: what a user
who swaps ``A2C`` for ``A3C`` in their own script gets.
"""

import argparse
import ast
import statistics
import time

import numpy as np
import torch as th
from gymnasium.envs.classic_control.acrobot import AcrobotEnv
from gymnasium.envs.classic_control.cartpole import CartPoleEnv
from gymnasium.wrappers import TimeLimit
from stable_baselines3 import A2C
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env

from sb3_async import A3C

THRESHOLDS = {"CartPole-v1": 475.0, "Acrobot-v1": -100.0}
THRESHOLD = THRESHOLDS["CartPole-v1"]


class MyCartPole(TimeLimit):
    """CartPole as a user writes it in their own script: the physics class, their own time limit."""

    def __init__(self) -> None:
        super().__init__(CartPoleEnv(), max_episode_steps=500)


class MyAcrobot(TimeLimit):
    def __init__(self) -> None:
        super().__init__(AcrobotEnv(), max_episode_steps=500)


USER_ENVS = {"CartPole-v1": MyCartPole, "Acrobot-v1": MyAcrobot}


class StopWhenSolved(BaseCallback):
    """Stops training once the last 100 training episodes average >= ``threshold``."""

    def __init__(self, threshold: float = THRESHOLD) -> None:
        super().__init__()
        self.threshold = threshold
        self.started = 0.0
        self.solved_at: tuple[int, float] | None = None

    def _on_training_start(self) -> None:
        self.started = time.perf_counter()

    def _on_step(self) -> bool:
        episodes = self.model.ep_info_buffer
        if len(episodes) == episodes.maxlen and np.mean([episode["r"] for episode in episodes]) >= self.threshold:
            self.solved_at = (self.num_timesteps, time.perf_counter() - self.started)
            return False
        return True


def parse_contestant(text: str) -> tuple[str, dict]:
    algo, _, settings = text.partition(":")
    kwargs = {}
    for item in filter(None, settings.split(",")):
        key, _, value = item.partition("=")
        try:
            kwargs[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            kwargs[key] = value
    if algo not in ("a3c", "a2c"):
        raise SystemExit(f"unknown contestant {text!r}: a3c or a2c, with optional settings")
    return algo, kwargs


def run(contestant: str, env_id: str, seed: int, budget: int, swap: bool) -> tuple[int, float] | None:
    algo, kwargs = parse_contestant(contestant)
    th.set_num_threads(1)  # SB3's fastest setting for a small MLP on CPU; A3C's workers use one thread each anyway
    env = make_vec_env(USER_ENVS[env_id] if swap else env_id, n_envs=8, seed=seed)
    if algo == "a3c":
        if not swap:
            env = env_id
            kwargs = dict(n_workers=2, envs_per_worker=4) | kwargs
        model = A3C("MlpPolicy", env, seed=seed, device="cpu", **kwargs)
    else:
        model = A2C("MlpPolicy", env, seed=seed, device="cpu", **kwargs)
    callback = StopWhenSolved(THRESHOLDS[env_id])
    model.learn(budget, callback=callback)
    return callback.solved_at


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="CartPole-v1", choices=sorted(THRESHOLDS))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--budget", type=int, default=500_000)
    parser.add_argument("--contestants", nargs="+", default=["a3c", "a2c"])
    parser.add_argument("--swap", action="store_true", help="make_vec_env(MyEnv, n_envs=8) and defaults for everyone")
    args = parser.parse_args()

    contestants = args.contestants
    results: dict[str, list[tuple[int, float] | None]] = {name: [] for name in contestants}
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        shift = seed % len(contestants)
        for name in contestants[shift:] + contestants[:shift]:
            solved = run(name, args.env, seed, args.budget, args.swap)
            results[name].append(solved)
            shown = f"{solved[0]:,} steps, {solved[1]:.1f} s" if solved else f"not solved in {args.budget:,} steps"
            print(f"seed {seed}: {name}: {shown}", flush=True)

    title = f"{args.env}{' (the swap)' if args.swap else ''}"
    print(f"\n{title}, medians over {args.seeds} seeds (unsolved: the budget, infinite time):")
    for name, runs in results.items():
        steps = statistics.median(r[0] if r else args.budget for r in runs)
        seconds = statistics.median(r[1] if r else float("inf") for r in runs)
        n_solved = sum(r is not None for r in runs)
        print(f"  {name:<32} {steps:>9,.0f} steps  {seconds:>6.1f} s   solved {n_solved}/{len(runs)}")
    last = contestants[-1]
    for name in contestants[:-1]:
        ratios = [a[1] / b[1] for a, b in zip(results[name], results[last], strict=True) if a and b]
        paired = ", ".join(f"{ratio:.2f}" for ratio in ratios)
        median = f"{statistics.median(ratios):.2f}x" if ratios else "n/a"
        print(f"  {name} / {last} wall-clock, paired by seed: {paired} (median {median})")


if __name__ == "__main__":
    main()
