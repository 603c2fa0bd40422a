import gymnasium as gym
import numpy as np
import pytest

from sb3_async import A3C
from sb3_async.common import wrappers
from sb3_async.common.wrappers import RandomLatency


@pytest.mark.parametrize("distribution", ["exponential", "uniform", "constant"])
def test_random_latency_sleeps_with_the_requested_mean(distribution, monkeypatch):
    slept: list[float] = []
    monkeypatch.setattr(wrappers.time, "sleep", slept.append)
    env = RandomLatency(gym.make("CartPole-v1"), mean_seconds=0.002, distribution=distribution)
    env.reset(seed=0)
    for _ in range(4_000):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            env.reset()
    slept_array = np.array(slept)
    assert len(slept) == 4_000 and (slept_array >= 0).all()
    assert slept_array.mean() == pytest.approx(0.002, rel=0.05)
    if distribution == "uniform":
        assert slept_array.max() <= 0.004
    if distribution == "exponential":  # memoryless: its standard deviation is its mean
        assert slept_array.std() == pytest.approx(0.002, rel=0.1)


def test_random_latency_refuses_a_bad_distribution():
    with pytest.raises(ValueError, match="distribution must be one of"):
        RandomLatency(gym.make("CartPole-v1"), distribution="gaussian")
    with pytest.raises(ValueError, match="mean_seconds must be > 0"):
        RandomLatency(gym.make("CartPole-v1"), mean_seconds=0)


def test_a3c_trains_on_a_slow_env_instance(no_leaks):
    env = RandomLatency(gym.make("CartPole-v1"), mean_seconds=0.0005)
    model = A3C("MlpPolicy", env, n_workers=2, seed=0, device="cpu").learn(200)
    worker_env = model._worker_env_factory().build(0)
    try:
        assert isinstance(worker_env.envs[0].env, RandomLatency)  # the copy keeps the wrapper (under a fresh Monitor)
    finally:
        worker_env.close()
