"""AsyncQLearning and AsyncSARSA: the SB3 contract, the target network, per-worker exploration, bad input."""

import functools

import numpy as np
import pytest
import torch as th
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import FakeImageEnv, IdentityEnv, SimpleMultiObsEnv
from stable_baselines3.common.logger import Logger
from stable_baselines3.dqn.policies import CnnPolicy, DQNPolicy, MultiInputPolicy

from sb3_async import AsyncQLearning, AsyncSARSA
from tests.conftest import CountingCallback, RecordingOutput, forkserver_children

FAST = dict(n_workers=2, train_freq=5, seed=0, device="cpu")
both_algorithms = pytest.mark.parametrize("algo", [AsyncQLearning, AsyncSARSA], ids=["async_q", "async_sarsa"])


def q_parameters(module: th.nn.Module) -> list[th.Tensor]:
    return [param.detach().clone() for param in module.parameters()]


def assert_same(left: list[th.Tensor], right: list[th.Tensor], same: bool = True) -> None:
    equal = all(th.equal(a, b) for a, b in zip(left, right, strict=False))
    assert equal == same


@both_algorithms
@pytest.mark.parametrize(
    "env, policy, policy_class",
    [
        ("CartPole-v1", "MlpPolicy", DQNPolicy),
        (lambda: FakeImageEnv(screen_height=36, screen_width=36, n_channels=1, discrete=True), "CnnPolicy", CnnPolicy),
        (SimpleMultiObsEnv, "MultiInputPolicy", MultiInputPolicy),
    ],
    ids=["mlp", "cnn-image", "dict-obs"],
)
def test_dqn_policies(algo, env, policy, policy_class, no_leaks):
    model = algo(policy, env, n_steps=5, **FAST).learn(200)
    assert isinstance(model.policy, policy_class)
    assert model.num_timesteps >= 200
    obs = model.get_env().reset()
    actions, _ = model.predict(obs, deterministic=True)
    assert model.action_space.contains(actions[0])


@both_algorithms
def test_target_network_is_refreshed_by_the_learner_every_target_update_interval(algo, no_leaks):
    # Never within the budget: the target keeps its initial weights while the online network learns.
    model = algo("MlpPolicy", "CartPole-v1", target_update_interval=1_000_000, **FAST)
    initial_online, initial_target = q_parameters(model.q_net), q_parameters(model.q_net_target)
    model.learn(500)
    assert model.target_updates == 0
    assert_same(q_parameters(model.q_net_target), initial_target)
    assert_same(q_parameters(model.q_net), initial_online, same=False)

    # Every 100 env steps: segments are 5 steps of each worker's env, so every 20th gradient.
    model = algo("MlpPolicy", "CartPole-v1", target_update_interval=100, **FAST)
    model.learn(1_000)
    assert model.target_updates == model.num_timesteps // 100
    # A refresh is a copy of the online network as it was then, not now.
    assert_same(q_parameters(model.q_net_target), q_parameters(model.q_net), same=model.num_timesteps % 100 == 0)


def test_each_worker_draws_its_final_epsilon_from_the_set():
    model = AsyncQLearning("MlpPolicy", "CartPole-v1", n_workers=3000, seed=0, device="cpu", _init_setup_model=False)
    finals = np.array([schedule(0.0) for schedule in model.worker_exploration_schedules()])
    assert set(finals) == {0.1, 0.01, 0.5}
    for value, probability in ((0.1, 0.4), (0.01, 0.3), (0.5, 0.3)):
        assert np.mean(finals == value) == pytest.approx(probability, abs=0.03)
    assert all(schedule(1.0) == 1.0 for schedule in model.worker_exploration_schedules())
    # The same seed, the same draws; a scalar gives every worker the same final epsilon.
    again = [schedule(0.0) for schedule in model.worker_exploration_schedules()]
    assert list(finals) == again
    one = AsyncQLearning("MlpPolicy", "CartPole-v1", n_workers=4, exploration_final_eps=0.02, device="cpu")
    assert [schedule(0.0) for schedule in one.worker_exploration_schedules()] == [0.02] * 4


@both_algorithms
def test_logger_keys_and_exploration_rate(algo, no_leaks):
    model = algo("MlpPolicy", "CartPole-v1", exploration_fraction=0.1, **FAST)
    output = RecordingOutput()
    model.set_logger(Logger(folder=None, output_formats=[output]))
    model.learn(3_000, log_interval=20)
    assert output.dumps, "nothing was logged"
    logged = output.dumps[-1]
    for key in (
        "rollout/ep_rew_mean",
        "rollout/exploration_rate",
        "time/fps",
        "train/loss",
        "train/q_mean",
        "train/learning_rate",
        "async/staleness_mean",
        "async/dropped_updates",
    ):
        assert key in logged, key
    # Annealed after 10% of training: each worker is at its own final epsilon, the model reports their mean.
    finals = [schedule(0.0) for schedule in model.worker_exploration_schedules()]
    assert model.exploration_rate == pytest.approx(np.mean(finals))
    # The log averages the window's segments, and workers with more exploration finish episodes faster.
    assert min(finals) <= logged["rollout/exploration_rate"] <= max(finals)


@both_algorithms
def test_callbacks_count_and_stop(algo, no_leaks):
    model = algo("MlpPolicy", "CartPole-v1", envs_per_worker=3, **FAST)
    callback = CountingCallback()
    model.learn(600, callback=callback)
    assert callback.timesteps_seen == list(range(6, model.num_timesteps + 1, 6))
    assert callback.training_starts == 1 and callback.training_ends == 1
    stopper = CountingCallback(stop_after_calls=10)
    model.learn(1_000_000, callback=stopper)
    assert model.num_timesteps == 10 * model.n_envs


@both_algorithms
def test_save_load_round_trip(algo, tmp_path, no_leaks):
    model = algo("MlpPolicy", "CartPole-v1", n_steps=3, target_update_interval=50, exploration_final_eps=(0.2, 0.3), **FAST)
    model.learn(500)
    obs = np.stack([model.observation_space.sample() for _ in range(16)])
    expected, _ = model.predict(obs, deterministic=True)
    model.save(tmp_path / "model")

    loaded = algo.load(tmp_path / "model", env=make_vec_env("CartPole-v1"), n_workers=1, device="cpu")
    assert type(loaded) is algo
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0], expected)
    assert_same(q_parameters(loaded.q_net), q_parameters(model.q_net))
    assert_same(q_parameters(loaded.q_net_target), q_parameters(model.q_net_target))
    assert (loaded.n_steps, loaded.train_freq, loaded.target_update_interval) == (3, 5, 50)
    assert tuple(loaded.exploration_final_eps) == (0.2, 0.3)
    loaded.learn(200, reset_num_timesteps=False)
    assert loaded.num_timesteps >= 700


def test_there_is_no_replay_buffer_to_save_or_load(tmp_path):
    model = AsyncSARSA("MlpPolicy", "CartPole-v1", device="cpu")
    with pytest.raises(NotImplementedError, match="AsyncSARSA has no replay buffer to save"):
        model.save_replay_buffer(tmp_path / "replay.pkl")
    with pytest.raises(NotImplementedError, match="no replay buffer to load into"):
        model.load_replay_buffer(tmp_path / "replay.pkl")


def test_predict_explores_with_the_exploration_rate():
    model = AsyncQLearning("MlpPolicy", functools.partial(IdentityEnv, dim=10), device="cpu")
    obs = np.arange(10)
    model.exploration_rate = 0.0
    greedy, _ = model.predict(obs[0], deterministic=False)
    assert all(model.predict(obs[0], deterministic=False)[0] == greedy for _ in range(20))
    model.exploration_rate = 1.0
    assert len({int(model.predict(obs[0], deterministic=False)[0]) for _ in range(100)}) > 3


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(env="Pendulum-v1"), r"AsyncQLearning: .*action space"),
        (dict(n_steps=6), "n_steps=6 cannot exceed train_freq=5"),
        (dict(train_freq=0), "train_freq must be an integer >= 1"),
        (dict(train_freq=(4, "episode")), "train_freq must be an integer >= 1"),
        (dict(target_update_interval=0), "target_update_interval"),
        (dict(exploration_fraction=0.0), r"exploration_fraction must be in \(0, 1\]"),
        (dict(exploration_final_eps=1.5), r"exploration rates must lie in \[0, 1\]"),
        (dict(exploration_initial_eps=-0.1), r"exploration rates must lie in \[0, 1\]"),
        (dict(exploration_final_eps=(0.1, 0.2), exploration_final_eps_probs=(1.0,)), "one non-negative probability"),
        (dict(exploration_final_eps_probs=(0.5, 0.3, 0.3)), "summing to 1"),
        (dict(exploration_final_eps=0.1, exploration_final_eps_probs=(0.5, 0.5)), "one non-negative probability"),
        (dict(n_steps=0), "n_steps"),
        (dict(n_workers=0), "n_workers"),
    ],
)
def test_bad_arguments_raise_before_any_process_starts(kwargs, message):
    arguments = dict(env="CartPole-v1", device="cpu", n_workers=2) | kwargs
    workers_before = forkserver_children()
    with pytest.raises(ValueError, match=message):
        AsyncQLearning("MlpPolicy", **arguments).learn(100)
    assert forkserver_children() == workers_before
