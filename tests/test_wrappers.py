import gymnasium as gym
import numpy as np
import pytest

from sb3_async import A3C
from sb3_async.common import wrappers
from sb3_async.common.wrappers import ExploringStarts, RandomLatency


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


def test_exploring_starts_start_episodes_across_the_box_and_they_go_on_from_there():
    high = np.array([2.0, 1.5, 0.15, 1.5])
    env = ExploringStarts(gym.make("CartPole-v1"), high=high)
    starts = []
    for episode in range(300):
        obs, _ = env.reset(seed=episode if episode == 0 else None)
        np.testing.assert_array_equal(obs, np.asarray(env.unwrapped.state, dtype=np.float32))
        starts.append(obs)
    starts_array = np.array(starts)
    assert (np.abs(starts_array) <= high).all()
    # Uniform on [-h, h] has standard deviation h / sqrt(3); CartPole's own starts have 0.029.
    np.testing.assert_allclose(starts_array.std(axis=0), high / np.sqrt(3), rtol=0.2)
    # The physics goes on from the drawn state: a cart starting at x moves on from x.
    obs, _ = env.reset()
    next_obs, *_ = env.step(0)
    assert next_obs[0] == pytest.approx(obs[0] + 0.02 * obs[1], abs=1e-5)
    # Seeding the env seeds the starts.
    assert (env.reset(seed=7)[0] == env.reset(seed=7)[0]).all()


def test_exploring_starts_observe_the_state_as_the_env_does():
    env = ExploringStarts(gym.make("Pendulum-v1"), high=[np.pi, 1.0])
    obs, _ = env.reset(seed=0)
    theta, theta_dot = env.unwrapped.state
    np.testing.assert_allclose(obs, [np.cos(theta), np.sin(theta), theta_dot], rtol=1e-6)
    assert env.observation_space.contains(obs)


def test_exploring_starts_refuse_bounds_that_do_not_fit():
    with pytest.raises(ValueError, match="low <= high"):
        ExploringStarts(gym.make("CartPole-v1"), high=[1.0, 1.0], low=[2.0, 0.0])
    with pytest.raises(ValueError, match="has shape"):
        ExploringStarts(gym.make("CartPole-v1"), high=[1.0, 1.0]).reset()


def test_worker_statistics_merged_at_the_learner_equal_vec_normalize_updating_itself_step_by_step():
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    from sb3_async.common.normalization import NormalizationStatistics, WorkerVecNormalize

    settings = dict(norm_obs=True, norm_reward=True, gamma=0.9)
    reference = VecNormalize(make_vec_env("CartPole-v1", n_envs=4, seed=0), **settings)  # SB3 updates per step
    learner = VecNormalize(make_vec_env("CartPole-v1", n_envs=1), **settings)
    worker = WorkerVecNormalize(make_vec_env("CartPole-v1", n_envs=4, seed=0), settings, NormalizationStatistics.of(learner))
    reference.reset()
    worker.reset()
    actions = np.random.default_rng(0).integers(0, 2, size=(203, 4))
    for step, action in enumerate(actions):
        reference.step(action)
        worker.step(action)
        if step % 5 == 4 or step == len(actions) - 1:  # a report every 5 steps, and the last, partial one
            worker.pop_new_statistics().merge_into(learner)
            worker.load_learner_statistics(NormalizationStatistics.of(learner))
    # Every observation counted once, the 4 first ones of the reset included (each merge adds RunningMeanStd's 1e-4).
    assert learner.obs_rms.count == pytest.approx(reference.obs_rms.count, abs=0.01) and learner.obs_rms.count > 800
    np.testing.assert_allclose(learner.obs_rms.mean, reference.obs_rms.mean, rtol=1e-2, atol=1e-3)
    np.testing.assert_allclose(learner.obs_rms.var, reference.obs_rms.var, rtol=1e-2)
    assert learner.ret_rms.count == pytest.approx(reference.ret_rms.count, abs=0.01)
    returns = [learner.ret_rms.mean, learner.ret_rms.var]
    np.testing.assert_allclose(returns, [reference.ret_rms.mean, reference.ret_rms.var], rtol=1e-3)
