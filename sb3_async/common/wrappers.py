"""Env wrappers that sb3_async ships for users to test their own case."""

import time
from typing import Any

import gymnasium as gym
import numpy as np

LATENCY_DISTRIBUTIONS = ("exponential", "uniform", "constant")


class RandomLatency(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """
    An env whose steps take a random wall-clock time, with no CPU used: it sleeps before each step.
    It stands in for a simulator, a game behind a socket or a robot, the envs asynchrony exists for
    (``python -m sb3_async.compare --env-latency exponential:0.001`` wraps every env in it).

    :param env: the env to slow down
    :param mean_seconds: mean sleep per step
    :param distribution: ``"exponential"`` (memoryless, a long tail), ``"uniform"`` (on
        ``[0, 2 * mean_seconds]``) or ``"constant"``
    """

    def __init__(self, env: gym.Env, mean_seconds: float = 0.001, distribution: str = "exponential") -> None:
        if distribution not in LATENCY_DISTRIBUTIONS:
            raise ValueError(f"distribution must be one of {LATENCY_DISTRIBUTIONS}, got {distribution!r}")
        if not mean_seconds > 0:
            raise ValueError(f"mean_seconds must be > 0, got {mean_seconds!r}")
        gym.utils.RecordConstructorArgs.__init__(self, mean_seconds=mean_seconds, distribution=distribution)
        super().__init__(env)
        self.mean_seconds = mean_seconds
        self.distribution = distribution
        self._latency_rng = np.random.default_rng()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        if seed is not None:
            self._latency_rng = np.random.default_rng(seed)
        return super().reset(seed=seed, options=options)

    def step(self, action: Any) -> Any:
        time.sleep(self.sample_latency())
        return super().step(action)

    def sample_latency(self) -> float:
        if self.distribution == "exponential":
            return float(self._latency_rng.exponential(self.mean_seconds))
        if self.distribution == "uniform":
            return float(self._latency_rng.uniform(0.0, 2.0 * self.mean_seconds))
        return self.mean_seconds


def parse_latency(text: str) -> tuple[str, float]:
    """``"exponential:0.001"`` -> ``("exponential", 0.001)``, or a ValueError that says the form."""
    distribution, _, mean = text.partition(":")
    try:
        mean_seconds = float(mean)
    except ValueError:
        mean_seconds = float("nan")
    if distribution not in LATENCY_DISTRIBUTIONS or not mean_seconds > 0:
        raise ValueError(
            f"env latency {text!r}: write DISTRIBUTION:MEAN_SECONDS with a distribution among {LATENCY_DISTRIBUTIONS} "
            "and a mean > 0, e.g. exponential:0.001"
        )
    return distribution, mean_seconds
