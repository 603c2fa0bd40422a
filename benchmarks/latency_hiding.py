"""
Does A3C hide slow env steps? Its throughput with every env wrapped in RandomLatency, against its
own throughput without, and against SB3 A2C stepping 8 such envs in a SubprocVecEnv, interleaved
over rounds (medians).

    python benchmarks/latency_hiding.py --rounds 3 --timesteps 30000
    python benchmarks/latency_hiding.py --rounds 3 --workers 16

Targets (issue 26): A3C 8 workers x 1 env with an exponential latency of mean 1 ms keeps >= 0.9x of
its throughput without the latency, and A3C (8 or 16 workers x 1 env) >= 2x A2C + SubprocVecEnv x 8.
"""

import argparse
import statistics
import time

import gymnasium as gym
import torch as th
from stable_baselines3 import A2C
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import SubprocVecEnv

from sb3_async import A3C
from sb3_async.common.wrappers import RandomLatency
from timing import steady_steps_per_second


def slow_cartpole() -> gym.Env:
    return RandomLatency(gym.make("CartPole-v1"), mean_seconds=0.001, distribution="exponential")


def steps_per_second(env, n_workers: int, envs_per_worker: int, timesteps: int, seed: int, update_mode: str) -> float:
    model = A3C(
        "MlpPolicy", env, n_workers=n_workers, envs_per_worker=envs_per_worker, seed=seed, device="cpu",
        update_mode=update_mode,
    )  # fmt: skip
    return steady_steps_per_second(model, timesteps, warmup=2_000)


def a2c_subproc_steps_per_second(timesteps: int, seed: int) -> float:
    th.set_num_threads(1)
    env = make_vec_env(slow_cartpole, n_envs=8, seed=seed, vec_env_cls=SubprocVecEnv)
    try:
        model = A2C("MlpPolicy", env, seed=seed, device="cpu")
        started = time.perf_counter()
        model.learn(timesteps)
        return timesteps / (time.perf_counter() - started)
    finally:
        env.close()


MODES = ("locked", "learner", "hogwild")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timesteps", type=int, default=30_000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--envs-per-worker", type=int, default=1)
    args = parser.parse_args()
    results: dict[str, list[float]] = {}
    for seed in range(args.rounds):
        rate = a2c_subproc_steps_per_second(args.timesteps, seed)
        results.setdefault("a2c", []).append(rate)
        print(f"round {seed}: SB3 A2C, SubprocVecEnv x 8, 1 ms latency: {rate:,.0f} steps/s", flush=True)
        for update_mode in MODES:
            for label, env in (("no latency", "CartPole-v1"), ("1 ms latency", slow_cartpole)):
                rate = steps_per_second(env, args.workers, args.envs_per_worker, args.timesteps, seed, update_mode)
                results.setdefault(f"{update_mode}, {label}", []).append(rate)
                print(f"round {seed}: {update_mode}, {label}: {rate:,.0f} steps/s", flush=True)
    median = {key: statistics.median(values) for key, values in results.items()}
    print(f"\nA3C {args.workers} workers x {args.envs_per_worker} env(s), medians over {args.rounds} rounds (env steps/s):")
    a2c = median["a2c"]
    for update_mode in MODES:
        fast, slow = median[f"{update_mode}, no latency"], median[f"{update_mode}, 1 ms latency"]
        kept = slow / fast
        print(
            f"  {update_mode:<8} no latency {fast:>7,.0f}   1 ms latency {slow:>7,.0f}   kept {kept:.2f}x (target >= 0.9)"
            f"   vs A2C + SubprocVecEnv x 8 ({a2c:,.0f}): {slow / a2c:.2f}x (target >= 2)"
        )


if __name__ == "__main__":
    main()
