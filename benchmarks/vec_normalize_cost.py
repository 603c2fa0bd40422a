"""
What VecNormalize costs A3C on CartPole-v1, all measured in this one run (medians over rounds that
take turns, so that machine drift hits both alike):

- per vec-step of 4 envs in one process: a bare DummyVecEnv, SB3's VecNormalize (as it steps when not
  training) and a worker's ``WorkerVecNormalize`` (which also records what it sees for the learner);
- A3C 2 workers x 4 envs, env steps per second without and with VecNormalize. The learning rate is 0,
  so that both play the same random policy's episodes: a learning run's episodes lengthen, which
  changes its throughput by itself.

    python benchmarks/vec_normalize_cost.py --rounds 3 --timesteps 60000
"""

import argparse
import statistics
import time

import numpy as np
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from sb3_async import A3C
from sb3_async.common.normalization import NormalizationStatistics, WorkerVecNormalize
from timing import steady_steps_per_second

SETTINGS = dict(norm_obs=True, norm_reward=True, gamma=0.99)


def microseconds_per_step(env: VecEnv, n_steps: int = 20_000) -> float:
    env.reset()
    actions = np.random.default_rng(0).integers(0, 2, size=(n_steps, env.num_envs))
    started = time.perf_counter()
    for action in actions:
        env.step(action)
    return (time.perf_counter() - started) / n_steps * 1e6


def wrappers_per_step() -> dict[str, float]:
    learner = VecNormalize(make_vec_env("CartPole-v1", n_envs=1), **SETTINGS)
    worker = WorkerVecNormalize(make_vec_env("CartPole-v1", n_envs=4, seed=0), SETTINGS, NormalizationStatistics.of(learner))
    return {
        "DummyVecEnv": microseconds_per_step(make_vec_env("CartPole-v1", n_envs=4, seed=0)),
        "VecNormalize": microseconds_per_step(VecNormalize(make_vec_env("CartPole-v1", n_envs=4, seed=0), training=False)),
        "WorkerVecNormalize": microseconds_per_step(worker),
    }


def a3c_steps_per_second(normalize: bool, timesteps: int, seed: int) -> float:
    env = make_vec_env("CartPole-v1", n_envs=8, seed=seed)
    if normalize:
        env = VecNormalize(env, **SETTINGS)
    model = A3C("MlpPolicy", env, learning_rate=0.0, seed=seed, device="cpu")
    return steady_steps_per_second(model, timesteps, warmup=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timesteps", type=int, default=60_000)
    args = parser.parse_args()
    per_step: dict[str, list[float]] = {}
    throughput: dict[str, list[float]] = {"without VecNormalize": [], "with VecNormalize": []}
    for seed in range(args.rounds):
        for name, value in wrappers_per_step().items():
            per_step.setdefault(name, []).append(value)
        for normalize in (False, True) if seed % 2 == 0 else (True, False):
            name = "with VecNormalize" if normalize else "without VecNormalize"
            throughput[name].append(a3c_steps_per_second(normalize, args.timesteps, seed))
    print("per vec-step of 4 CartPole envs, median over rounds:")
    for name, values in per_step.items():
        print(f"  {name:20} {statistics.median(values):7.1f} us")
    print("A3C 2 workers x 4 envs, learning rate 0, median over rounds:")
    medians = {name: statistics.median(values) for name, values in throughput.items()}
    for name, value in medians.items():
        print(f"  {name:20} {value:7,.0f} env steps/s")
    print(f"with / without: {medians['with VecNormalize'] / medians['without VecNormalize']:.2f}x")


if __name__ == "__main__":
    main()
