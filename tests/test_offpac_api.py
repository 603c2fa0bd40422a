import functools
import threading

import numpy as np
import pytest
import torch as th
from stable_baselines3 import A2C
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import IdentityEnvMultiBinary, IdentityEnvMultiDiscrete, SimpleMultiObsEnv
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.type_aliases import TrainFreq, TrainFrequencyUnit

from sb3_async import OffPolicyAC
from tests.conftest import CountingCallback, RecordingOutput, forkserver_children

FAST = dict(n_workers=2, n_steps=4, batch_size=8, learning_starts=16, seed=0, device="cpu")


def uniform_over_two_actions(obs):
    """A user behaviour policy: a module-level function, so it pickles to the workers."""
    n = len(obs)
    return np.random.randint(2, size=n), np.full(n, np.log(0.5))


@pytest.fixture(scope="module")
def cartpole_expert():
    """A (barely trained) SB3 agent whose policy serves as the behaviour policy."""
    return A2C("MlpPolicy", "CartPole-v1", seed=0, device="cpu").learn(200)


@pytest.mark.parametrize("behavior", ["target", "uniform", ("epsilon", 0.3), "expert", uniform_over_two_actions])
def test_every_kind_of_behavior_policy_trains(behavior, cartpole_expert, no_leaks):
    if behavior == "expert":
        behavior = cartpole_expert
    model = OffPolicyAC("MlpPolicy", "CartPole-v1", behavior_policy=behavior, **FAST)
    output = RecordingOutput()
    model.set_logger(Logger(folder=None, output_formats=[output]))
    model.learn(400, log_interval=5)
    assert model.num_timesteps >= 400
    logged = output.dumps[-1]
    for key in (
        "offpac/rho_mean",
        "offpac/rho_clipped_fraction",
        "offpac/effective_sample_size",
        "offpac/behaviour_kl",
        "train/value_loss",
    ):
        assert key in logged, key
    # Fresh segments of 4 steps in 2 envs, plus one replayed batch per fresh segment once 8 steps are stored.
    fresh_updates = model.num_timesteps // 4
    assert fresh_updates * 1.5 < model._n_updates <= 2 * fresh_updates + 2
    if behavior == "target":
        assert 0.5 < logged["offpac/rho_mean"] < 1.5  # pi = b up to policy lag
    else:
        assert 0.0 < logged["offpac/effective_sample_size"] <= 1.0
    assert 0.0 <= logged["offpac/behaviour_kl"] < float("inf")  # its value is checked by hand in test_offpac_loss


@pytest.mark.parametrize(
    "env, policy, behavior",
    [
        ("Pendulum-v1", "MlpPolicy", "uniform"),
        ("Pendulum-v1", "MlpPolicy", ("epsilon", 0.5)),
        (functools.partial(IdentityEnvMultiDiscrete, dim=2), "MlpPolicy", "uniform"),
        (functools.partial(IdentityEnvMultiBinary, dim=3), "MlpPolicy", ("epsilon", 0.2)),
        (SimpleMultiObsEnv, "MultiInputPolicy", "target"),
    ],
    ids=["box-uniform", "box-epsilon", "multidiscrete", "multibinary", "dict-obs"],
)
def test_spaces_and_policies(env, policy, behavior, no_leaks):
    model = OffPolicyAC(policy, env, behavior_policy=behavior, **FAST).learn(200)
    assert model.num_timesteps >= 200
    assert model._n_updates > model.num_timesteps // 4  # more than the fresh segments: replays were applied too
    obs = model.get_env().reset()
    actions, _ = model.predict(obs, deterministic=True)
    assert model.action_space.contains(actions[0])


def test_gsde_acts_with_state_dependent_noise_and_records_its_log_probs(tmp_path, no_leaks):
    model = OffPolicyAC("MlpPolicy", "Pendulum-v1", use_sde=True, sde_sample_freq=2, **FAST)
    assert model.policy.use_sde and model.policy.log_std.shape[0] > 1  # gSDE's [latent, action] std matrix
    output = RecordingOutput()
    model.set_logger(Logger(folder=None, output_formats=[output]))
    model.learn(400, log_interval=5)
    logged = output.dumps[-1]
    # b is pi's own gSDE distribution, so the recorded log b matches pi's log-probability up to policy lag.
    assert 0.5 < logged["offpac/rho_mean"] < 1.5
    assert "train/std" in logged
    model.save(tmp_path / "sde.zip")
    loaded = OffPolicyAC.load(tmp_path / "sde.zip", device="cpu")
    obs = np.zeros((1, 3), dtype=np.float32)
    assert loaded.policy.use_sde
    assert np.allclose(loaded.predict(obs, deterministic=True)[0], model.predict(obs, deterministic=True)[0])
    with pytest.raises(ValueError, match="gSDE"):
        OffPolicyAC("MlpPolicy", "CartPole-v1", use_sde=True, device="cpu", n_workers=1)


def test_no_replay_means_one_update_per_segment(no_leaks):
    model = OffPolicyAC("MlpPolicy", "CartPole-v1", replay_ratio=0, **FAST)
    callback = CountingCallback()
    model.learn(400, callback=callback)
    assert model._n_updates == model.num_timesteps // 4
    assert callback.timesteps_seen == list(range(2, model.num_timesteps + 1, 2))


class TrainFreqSeen(BaseCallback):
    def _on_step(self) -> bool:
        self.train_freq = self.locals["train_freq"]
        return True


def test_callbacks_see_the_segment_length_as_sb3s_train_freq(no_leaks):
    seen = TrainFreqSeen()
    OffPolicyAC("MlpPolicy", "CartPole-v1", **FAST).learn(32, callback=seen)
    assert seen.train_freq == TrainFreq(FAST["n_steps"], TrainFrequencyUnit.STEP)  # as OffPolicyAlgorithm converts it


def test_callback_returning_false_stops_every_worker(no_leaks):
    callback = CountingCallback(stop_after_calls=10)
    model = OffPolicyAC("MlpPolicy", "CartPole-v1", **FAST).learn(1_000_000, callback=callback)
    assert callback.n_calls == 10 and callback.training_ends == 1
    assert model.num_timesteps == 10 * model.n_envs


@pytest.mark.parametrize("behavior", [("epsilon", 0.3), "expert"])
def test_save_load_round_trip(behavior, cartpole_expert, tmp_path, no_leaks):
    if behavior == "expert":
        behavior = cartpole_expert
    model = OffPolicyAC("MlpPolicy", "CartPole-v1", behavior_policy=behavior, **FAST).learn(300)
    obs = np.stack([model.observation_space.sample() for _ in range(16)])
    expected, _ = model.predict(obs, deterministic=True)
    model.save(tmp_path / "offpac")

    loaded = OffPolicyAC.load(tmp_path / "offpac", env=make_vec_env("CartPole-v1"), n_workers=1, device="cpu")
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0], expected)
    for saved, restored in zip(model.policy.parameters(), loaded.policy.parameters(), strict=False):
        th.testing.assert_close(saved, restored)
    assert (loaded.rho_bar, loaded.c_bar, loaded.replay_ratio, loaded.n_steps) == (1.0, 1.0, 1.0, 4)
    if isinstance(behavior, tuple):
        assert tuple(loaded.behavior_policy) == behavior
    else:  # the expert's policy travels with the model, so training can go on with the same behaviour
        expert_probs = cartpole_expert.policy.get_distribution(th.as_tensor(obs)).distribution.probs
        loaded_probs = loaded.behavior_policy.get_distribution(th.as_tensor(obs)).distribution.probs
        th.testing.assert_close(loaded_probs, expert_probs)
    loaded.learn(100, reset_num_timesteps=False)
    assert loaded.num_timesteps >= 400


def test_replay_memory_is_per_worker_and_cannot_be_saved(tmp_path):
    model = OffPolicyAC("MlpPolicy", "CartPole-v1", device="cpu")
    with pytest.raises(NotImplementedError, match="each worker keeps its own replay memory"):
        model.save_replay_buffer(tmp_path / "replay.pkl")
    with pytest.raises(NotImplementedError, match="each worker fills its own replay memory"):
        model.load_replay_buffer(tmp_path / "replay.pkl")


def _locked_behavior():
    lock = threading.Lock()

    def behave(obs):
        with lock:
            return uniform_over_two_actions(obs)

    return behave


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(behavior_policy="greedy"), "unknown behavior_policy 'greedy'"),
        (dict(behavior_policy=("epsilon", 1.5)), r"epsilon must be in \[0, 1\]"),
        (dict(behavior_policy=("softmax", 0.1)), r"\('epsilon', eps\)"),
        (dict(behavior_policy=lambda obs: np.zeros(len(obs))), "must return \\(actions, log_probs\\)"),
        (dict(behavior_policy="acrobot-expert"), r"behavior_policy acts in Discrete\(3\).*Discrete\(2\)"),
        (dict(behavior_policy="locked"), "behavior_policy cannot be pickled"),
        (dict(rho_bar=0.0), "rho_bar must be > 0"),
        (dict(c_bar=-1.0), "c_bar must be > 0"),
        (dict(replay_ratio=-1), "replay_ratio"),
        (dict(buffer_size=10), "buffer_size=10 cannot hold one segment"),
        (dict(n_steps=0), "n_steps"),
        (dict(n_workers=0), "n_workers"),
        (dict(trace_lambda=1.5), "trace_lambda"),
    ],
)
def test_bad_arguments_raise_before_any_process_starts(kwargs, message):
    arguments = dict(env="CartPole-v1", device="cpu", n_workers=2) | kwargs
    if arguments.get("behavior_policy") == "acrobot-expert":
        arguments["behavior_policy"] = A2C("MlpPolicy", "Acrobot-v1", device="cpu")
    if arguments.get("behavior_policy") == "locked":
        arguments["behavior_policy"] = _locked_behavior()
    workers_before = forkserver_children()
    with pytest.raises(ValueError, match=message):
        OffPolicyAC("MlpPolicy", **arguments).learn(100)
    assert forkserver_children() == workers_before
