"""What several benchmarks time the same way."""

import time

from stable_baselines3.common.base_class import BaseAlgorithm


def steady_steps_per_second(model: BaseAlgorithm, timesteps: int, warmup: int) -> float:
    """
    Env steps per second of ``model.learn(timesteps)``, after a first ``learn(warmup)``: start-up (the
    processes, the first episodes) is not throughput.
    """
    model.learn(warmup)
    started = time.perf_counter()
    model.learn(timesteps, reset_num_timesteps=False)
    return timesteps / (time.perf_counter() - started)
