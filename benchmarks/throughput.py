"""
Throughput in env steps per second on CartPole-v1, all measured in this one run, interleaved over
rounds so that machine drift hits every contestant alike; medians over rounds are reported.

    python benchmarks/throughput.py --rounds 3 --timesteps 100000

Contestants: the bare torch A2C loop (the per-core limit), SB3 A2C, and A3C with 1 and 2 workers in
four ways: each worker applies its own gradient under the shared lock (``update_mode="locked"``,
the default), the learner applies and each worker waits for its own update
(``update_mode="learner"``, the default before issue 26), the learner applies and workers do not
wait (``wait_for_own_update=False``), and workers apply their own gradients lock-free
(``update_mode="hogwild"``).
Every contestant does the same work per update: ``envs`` envs x n_steps 5, a 64x64 MLP.
"""

import argparse
import statistics
import time

import torch as th
from stable_baselines3 import A2C
from stable_baselines3.common.env_util import make_vec_env

from bare_a2c_loop import bare_a2c_steps_per_second
from timing import steady_steps_per_second
from sb3_async import A3C


MODES = {
    "": dict(),
    ", learner": dict(update_mode="learner"),
    ", learner, no wait": dict(update_mode="learner", wait_for_own_update=False),
    ", hogwild": dict(update_mode="hogwild"),
}


def a3c_steps_per_second(n_workers: int, envs_per_worker: int, timesteps: int, seed: int, **options) -> float:
    model = A3C(
        "MlpPolicy", "CartPole-v1", n_workers=n_workers, envs_per_worker=envs_per_worker, seed=seed, device="cpu", **options
    )  # fmt: skip
    return steady_steps_per_second(model, timesteps, warmup=2_000)


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
    }
    for mode, options in MODES.items():
        for n_workers in (1, 2):
            name = f"A3C {n_workers} worker{'s' if n_workers > 1 else ''} x {args.envs} envs{mode}"
            contestants[name] = lambda seed, n_workers=n_workers, options=options: a3c_steps_per_second(
                n_workers, args.envs, args.timesteps, seed, **options
            )
    same_envs = f"A3C 2 workers x {args.envs // 2} envs (as many envs as SB3 A2C)"
    contestants[same_envs] = lambda seed: a3c_steps_per_second(2, args.envs // 2, args.timesteps, seed)
    results: dict[str, list[float]] = {name: [] for name in contestants}
    for round_index in range(args.rounds):
        for name, run in contestants.items():
            results[name].append(run(round_index))
            print(f"round {round_index}: {name}: {results[name][-1]:,.0f} steps/s", flush=True)

    median = {name: statistics.median(values) for name, values in results.items()}
    bare = median["bare torch A2C loop"]
    print(f"\nmedians over {args.rounds} rounds (env steps/s):")
    for name, value in median.items():
        print(f"  {name:<36} {value:>8,.0f}   ({value / bare:.2f}x bare loop)")
    a3c = list(median.values())[2 : 2 + 2 * len(MODES)]
    for index, mode in enumerate(MODES):
        one, two = a3c[2 * index], a3c[2 * index + 1]
        label = mode.lstrip(", ") or "locked (default)"
        print(f"{label:<26} 1 worker / bare loop {one / bare:.2f}x (target >= 0.9), 2 workers / 1 worker {two / one:.2f}x")
    a2c = median[f"SB3 A2C ({args.envs} envs)"]
    print(f"{same_envs} / SB3 A2C: {median[same_envs] / a2c:.2f}x (target >= 1.7)")


if __name__ == "__main__":
    main()
