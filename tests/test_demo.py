"""The demo's stopping rule: the mean of the last 100 training episodes, read from SB3's ``ep_info_buffer``."""

import numpy as np
from stable_baselines3 import A2C
from stable_baselines3.common.env_util import make_vec_env

from sb3_async import A3C
from sb3_async.demo import StopOnTrainingMean


def test_training_stops_once_the_last_100_training_episodes_reach_the_threshold(no_leaks):
    # A random CartPole policy's episodes last about 22 steps: a mean of 15 comes with the 100th episode.
    model = A3C("MlpPolicy", "CartPole-v1", n_workers=1, envs_per_worker=2, seed=0, device="cpu")
    stop = StopOnTrainingMean(threshold=15.0)
    model.learn(50_000, callback=stop)
    assert stop.solved
    assert len(model.ep_info_buffer) == 100
    assert np.mean([episode["r"] for episode in model.ep_info_buffer]) >= 15.0
    assert model.num_timesteps < 10_000  # it stopped, long before the budget


def test_training_goes_on_to_the_budget_when_the_threshold_is_not_reached():
    model = A2C("MlpPolicy", make_vec_env("CartPole-v1", n_envs=8, seed=0), seed=0, device="cpu")
    stop = StopOnTrainingMean(threshold=400.0)
    model.learn(4_000, callback=stop)
    assert not stop.solved
    assert len(model.ep_info_buffer) == 100  # it looked with a full window, and went on
    assert model.num_timesteps >= 4_000
