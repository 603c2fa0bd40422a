"""Env wrappers that sb3_async ships for users to test their own case."""

import time
from collections.abc import Sequence
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


class ExploringStarts(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """
    Starts every episode of a classic-control env (CartPole, Acrobot, Pendulum, MountainCar: any env
    whose ``unwrapped.state`` is its full state) from a state drawn uniformly in ``[low, high]``
    instead of the env's own narrow start distribution.

    It answers one question about learning from another policy's data: does the data cover the
    states the learned policy will visit? Uniform behaviour on CartPole-v1 ends its episodes after
    about 22 steps and never sees the states a balancing policy reaches after a few hundred; from
    exploring starts, the same behaviour does (docs/offpac.md, "Learning from uniform data").
    Evaluate on the plain env.

    :param env: the env to start elsewhere
    :param high: upper bounds of the state, one per component of ``unwrapped.state``
    :param low: lower bounds; ``-high`` if not given
    """

    def __init__(self, env: gym.Env, high: Sequence[float], low: Sequence[float] | None = None) -> None:
        high_array = np.asarray(high, dtype=np.float64)
        low_array = -high_array if low is None else np.asarray(low, dtype=np.float64)
        if high_array.ndim != 1 or low_array.shape != high_array.shape or not (low_array <= high_array).all():
            raise ValueError(f"low and high must be 1-d, of one length, with low <= high; got low={low!r}, high={high!r}")
        gym.utils.RecordConstructorArgs.__init__(self, high=list(high), low=None if low is None else list(low))
        super().__init__(env)
        self.low, self.high = low_array, high_array

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        _, info = super().reset(seed=seed, options=options)
        unwrapped: Any = self.env.unwrapped  # a classic-control env, whose state is an attribute of its own
        state = np.asarray(getattr(unwrapped, "state", None))
        if state.shape != self.high.shape:
            raise ValueError(
                f"ExploringStarts needs an env whose unwrapped.state has shape {self.high.shape} (the bounds'); "
                f"{type(unwrapped).__name__} has {state.shape}"
            )
        # Drawn from the env's own generator, so that seeding the env seeds the starts.
        unwrapped.state = unwrapped.np_random.uniform(self.low, self.high)
        # Acrobot and Pendulum observe sines and cosines of their state; CartPole and MountainCar observe it as it is.
        observe = getattr(unwrapped, "_get_obs", None) or getattr(unwrapped, "_get_ob", None)
        obs = observe() if observe is not None else unwrapped.state
        return np.asarray(obs, dtype=self.observation_space.dtype), info


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
