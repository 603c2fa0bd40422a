"""
Wall-clock time and env steps until the 100-episode training mean reaches 475 on CartPole-v1:
A3C (2 workers x 4 envs) against SB3 A2C with the rl-zoo settings (8 envs, SB3 defaults otherwise).
Seeds are paired and the two algorithms interleaved, so machine drift hits both alike; medians.

    python benchmarks/time_to_solve.py --seeds 5
    python benchmarks/time_to_solve.py --seeds 3 --no-wait     # A3C waiting for its own update, or not
"""

import argparse
import statistics
import time

import numpy as np
import torch as th
from stable_baselines3 import A2C
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env

from sb3_async import A3C

THRESHOLD = 475.0


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


def run(algo: str, seed: int, budget: int, workers: int = 2, envs_per_worker: int = 4) -> tuple[int, float] | None:
    if algo.startswith("A3C"):
        model = A3C(
            "MlpPolicy", "CartPole-v1", n_workers=workers, envs_per_worker=envs_per_worker, seed=seed, device="cpu",
            wait_for_own_update="no wait" not in algo,
        )  # fmt: skip
    else:
        th.set_num_threads(1)  # SB3's fastest setting for a small MLP on CPU
        model = A2C("MlpPolicy", make_vec_env("CartPole-v1", n_envs=8, seed=seed), seed=seed, device="cpu")
    callback = StopWhenSolved()
    model.learn(budget, callback=callback)
    return callback.solved_at


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--budget", type=int, default=500_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--envs-per-worker", type=int, default=4)
    parser.add_argument(
        "--no-wait", action="store_true", help="also A3C with wait_for_own_update=False, against A3C waiting (no A2C)"
    )
    args = parser.parse_args()

    contestants = ("A3C", "A3C no wait") if args.no_wait else ("A3C", "SB3 A2C")
    results: dict[str, list[tuple[int, float] | None]] = {algo: [] for algo in contestants}
    for seed in range(args.seeds):
        for algo in contestants if seed % 2 == 0 else contestants[::-1]:
            solved = run(algo, seed, args.budget, args.workers, args.envs_per_worker)
            results[algo].append(solved)
            shown = f"{solved[0]:,} steps, {solved[1]:.1f} s" if solved else f"not solved in {args.budget:,} steps"
            print(f"seed {seed}: {algo}: {shown}", flush=True)

    print(f"\nmedians over {args.seeds} seeds (unsolved runs count as the budget / their full time):")
    medians = {}
    for algo, runs in results.items():
        steps = statistics.median(r[0] if r else args.budget for r in runs)
        seconds = statistics.median(r[1] if r else float("inf") for r in runs)
        medians[algo] = (steps, seconds)
        n_solved = sum(r is not None for r in runs)
        print(f"  {algo:<8} {steps:>9,.0f} steps  {seconds:>6.1f} s   solved {n_solved}/{len(runs)}")
    first, second = contestants
    ratios = [a[1] / b[1] for a, b in zip(results[first], results[second], strict=False) if a and b]
    print(
        f"\n{first} / {second} wall-clock to solve: {medians[first][1] / medians[second][1]:.2f}x of medians, "
        f"{statistics.median(ratios):.2f}x median of paired ratios" + ("" if args.no_wait else " (target <= 0.6)")
    )


if __name__ == "__main__":
    main()
