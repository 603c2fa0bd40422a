"""
Throughput in env steps per second on CartPole-v1, all measured in this one run, interleaved over
rounds so that machine drift hits every contestant alike; medians over rounds are reported.

    python benchmarks/throughput.py --rounds 3 --timesteps 100000

Contestants: the bare torch A2C loop (the per-core limit), SB3 A2C, and A3C with 1 and 2 workers,
waiting for their own update (the default) and not (``wait_for_own_update=False``).
Every contestant does the same work per update: ``envs`` envs x n_steps 5, a 64x64 MLP.
"""

import argparse
import statistics
import time

import torch as th
from stable_baselines3 import A2C
from stable_baselines3.common.env_util import make_vec_env

from bare_a2c_loop import bare_a2c_steps_per_second
from sb3_async import A3C


def a3c_steps_per_second(n_workers: int, envs_per_worker: int, timesteps: int, seed: int, wait: bool = True) -> float:
    model = A3C(
        "MlpPolicy", "CartPole-v1", n_workers=n_workers, envs_per_worker=envs_per_worker, seed=seed, device="cpu",
        wait_for_own_update=wait,
    )  # fmt: skip
    model.learn(2_000)  # start-up (processes, first episodes) is not throughput
    started = time.perf_counter()
    model.learn(timesteps, reset_num_timesteps=False)
    return timesteps / (time.perf_counter() - started)


def sb3_a2c_steps_per_second(n_envs: int, timesteps: int, seed: int) -> float:
    th.set_num_threads(1)  # SB3's best setting for a small MLP on CPU
    model = A2C("MlpPolicy", make_vec_env("CartPole-v1", n_envs=n_envs, seed=seed), seed=seed, device="cpu")
    started = time.perf_counter()
    model.learn(timesteps)
    return timesteps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timesteps", type=int, default=100_000)
    parser.add_argument("--envs", type=int, default=8, help="envs per worker (and for A2C / the bare loop)")
    args = parser.parse_args()

    contestants = {
        "bare torch A2C loop": lambda seed: bare_a2c_steps_per_second(n_envs=args.envs, seconds=10.0, seed=seed),
        f"SB3 A2C ({args.envs} envs)": lambda seed: sb3_a2c_steps_per_second(args.envs, args.timesteps, seed),
        f"A3C 1 worker x {args.envs} envs": lambda seed: a3c_steps_per_second(1, args.envs, args.timesteps, seed),
        f"A3C 2 workers x {args.envs} envs": lambda seed: a3c_steps_per_second(2, args.envs, args.timesteps, seed),
        f"A3C 1 worker x {args.envs} envs, no wait": lambda seed: a3c_steps_per_second(
            1, args.envs, args.timesteps, seed, False
        ),
        f"A3C 2 workers x {args.envs} envs, no wait": lambda seed: a3c_steps_per_second(
            2, args.envs, args.timesteps, seed, False
        ),
    }
    results: dict[str, list[float]] = {name: [] for name in contestants}
    for round_index in range(args.rounds):
        for name, run in contestants.items():
            results[name].append(run(round_index))
            print(f"round {round_index}: {name}: {results[name][-1]:,.0f} steps/s", flush=True)

    median = {name: statistics.median(values) for name, values in results.items()}
    bare, one, two, one_no_wait, two_no_wait = (median[name] for name in list(contestants)[:1] + list(contestants)[2:])
    print(f"\nmedians over {args.rounds} rounds (env steps/s):")
    for name, value in median.items():
        print(f"  {name:<28} {value:>8,.0f}   ({value / bare:.2f}x bare loop)")
    print(f"\nA3C 2 workers / 1 worker: {two / one:.2f}x   (target >= 1.8)")
    print(f"A3C 1 worker / bare loop: {one / bare:.2f}x   (target >= 0.85)")
    print(f"no wait for its own update / waiting: 1 worker {one_no_wait / one:.2f}x, 2 workers {two_no_wait / two:.2f}x")


if __name__ == "__main__":
    main()
