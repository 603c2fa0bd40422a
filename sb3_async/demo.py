"""
``make demo``: swap SB3's A2C for A3C as a user would, on CartPole-v1: both get
``make_vec_env("CartPole-v1", n_envs=8)`` and their defaults (A3C shares the 8 envs among one worker
per core). Each trains with a progress bar until its deterministic policy scores >= 475 over 20
evaluation episodes (evaluated every 10,000 env steps) or the budget ends; the demo then puts the
scores, the wall-clock times and the env steps side by side.

    python -m sb3_async.demo [--timesteps 300000] [--seed 0]
"""

import argparse
import time

import torch as th
from stable_baselines3 import A2C
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import EvalCallback, StopTrainingOnRewardThreshold
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

from sb3_async import A3C

ENV_ID = "CartPole-v1"
THRESHOLD = 475.0


def train_and_evaluate(model: BaseAlgorithm, timesteps: int, seed: int) -> tuple[float, float, float, int]:
    """Train until the deterministic policy scores >= THRESHOLD over 20 episodes (or the budget ends)."""
    stop = EvalCallback(
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
    return mean, std, seconds, model.num_timesteps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timesteps", type=int, default=300_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    a3c = A3C("MlpPolicy", make_vec_env(ENV_ID, n_envs=8, seed=args.seed), seed=args.seed, device="cpu")
    print(f"A3C: {a3c.n_workers} workers x {a3c.envs_per_worker} envs on {ENV_ID} (update_mode={a3c._update_mode()!r})")
    a3c_result = train_and_evaluate(a3c, args.timesteps, args.seed)

    print(f"SB3 A2C: 8 envs on {ENV_ID} (rl-zoo settings: SB3's defaults)")
    th.set_num_threads(1)  # SB3's fastest setting for a small MLP on CPU
    a2c = A2C("MlpPolicy", make_vec_env(ENV_ID, n_envs=8, seed=args.seed), seed=args.seed, device="cpu")
    a2c_result = train_and_evaluate(a2c, args.timesteps, args.seed)

    print(f"\n{'':8} {'score (20 episodes)':>22} {'wall-clock':>11} {'env steps':>10}")
    for name, (mean, std, seconds, steps) in (("A3C", a3c_result), ("SB3 A2C", a2c_result)):
        print(f"{name:8} {mean:>14.1f} +/- {std:<5.1f} {seconds:>10.1f}s {steps:>10,}")
    ratio = a3c_result[2] / a2c_result[2]
    print(
        f"\nA3C took {ratio:.2f}x SB3 A2C's wall-clock time ({'faster' if ratio < 1 else 'slower'}), evaluation "
        f"included, to a 20-episode evaluation mean of {THRESHOLD:g} (or the budget). One run: A3C's workers race, so "
        f"its steps differ from run to run even with a seed; medians over seeds: docs/benchmarks.md."
    )


if __name__ == "__main__":
    main()
