"""
What ``n_workers="auto"`` and ``envs_per_worker="auto"`` pick on this machine, and what the pick is
worth: A3C's throughput with the workers "auto" chose against the default (one worker per core),
each in a fresh model, interleaved over rounds (medians).

    python benchmarks/auto_layout.py --rounds 3 --timesteps 20000

Envs: CartPole-v1 and Acrobot-v1 (fast, CPU-bound), CartPole behind a random wait of mean 1 ms per
step (``RandomLatency``: a simulator or a socket), and MinAtar Breakout (pixels, if minatar is installed).
"""

import argparse
import statistics
import time

import gymnasium as gym

from sb3_async import A3C
from sb3_async.zoo.minatar import register_minatar_envs
from sb3_async.common.worker_layout import WorkerLayout
from sb3_async.common.wrappers import RandomLatency
from timing import steady_steps_per_second


def slow_cartpole() -> gym.Env:
    return RandomLatency(gym.make("CartPole-v1"), mean_seconds=0.001, distribution="exponential")


def envs() -> dict[str, tuple]:
    """name -> (env, policy)"""
    chosen = {
        "CartPole-v1": ("CartPole-v1", "MlpPolicy"),
        "Acrobot-v1": ("Acrobot-v1", "MlpPolicy"),
        "CartPole, 1 ms wait": (slow_cartpole, "MlpPolicy"),
    }
    if register_minatar_envs():
        chosen["MinAtar/Breakout-v1"] = ("MinAtar/Breakout-v1", "CnnPolicy")
    return chosen


def steps_per_second(env, policy: str, n_workers, envs_per_worker, timesteps: int, seed: int) -> float:
    model = A3C(policy, env, n_workers=n_workers, envs_per_worker=envs_per_worker, seed=seed, device="cpu")
    return steady_steps_per_second(model, timesteps, warmup=1_000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timesteps", type=int, default=20_000)
    args = parser.parse_args()

    print(f"{'env':22} {'construction':>12}  what 'auto' picked")
    picks = {}
    for name, (env, policy) in envs().items():
        started = time.perf_counter()
        model = A3C(policy, env, n_workers="auto", envs_per_worker="auto", device="cpu")
        seconds = time.perf_counter() - started
        layout = WorkerLayout(**model.auto_layout)
        picks[name] = layout
        print(f"{name:22} {seconds:>11.1f}s  {layout.describe()}")

    print(f"\nthroughput (env steps/s, median of {args.rounds}), envs_per_worker as 'auto' picked it:")
    for name, (env, policy) in envs().items():
        envs_per_worker, n_workers = picks[name].envs_per_worker, picks[name].n_workers
        default, auto = [], []
        for round_ in range(args.rounds):
            contestants = [(default, None), (auto, n_workers)]
            for results, workers in contestants if round_ % 2 == 0 else reversed(contestants):
                results.append(steps_per_second(env, policy, workers, envs_per_worker, args.timesteps, round_))
        ratio = statistics.median(auto) / statistics.median(default)
        print(
            f"{name:22} default {statistics.median(default):>8,.0f}   auto ({n_workers} workers) "
            f"{statistics.median(auto):>8,.0f}   auto / default {ratio:.2f}x"
        )


if __name__ == "__main__":
    main()
