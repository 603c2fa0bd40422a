"""Recurrent A3C (the paper's A3C-LSTM) with sb3-contrib's recurrent policies, and A3C on MinAtar's small images."""

import functools

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from sb3_contrib import RecurrentPPO
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticCnnPolicy, RecurrentActorCriticPolicy
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import SimpleMultiObsEnv
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.policies import ActorCriticCnnPolicy
from stable_baselines3.common.torch_layers import NatureCNN
from stable_baselines3.common.vec_env import VecNormalize

from sb3_async import A3C
from sb3_async.a3c.worker import RecurrentA3CWorker
from sb3_async.zoo.minatar import register_minatar_envs
from sb3_async.common.torch_layers import MinAtarCNN, small_image_policy_kwargs
from sb3_async.zoo.experiment import config_entry, config_kwargs
from tests.envs import FixedLengthEnv, cartpole_without_velocities
from tests.test_learning import EVAL_ENVS, assert_training_reaches

SMALL_LSTM = dict(lstm_hidden_size=16, net_arch=dict(pi=[16], vf=[16]))


def _worker(env_fn, n_envs: int, n_steps: int, seed: int = 0) -> RecurrentA3CWorker:
    """A recurrent worker's logic in this process, on its own envs, as a worker process builds it."""
    th.manual_seed(seed)
    env = make_vec_env(env_fn, n_envs=n_envs, seed=seed)
    policy = RecurrentActorCriticPolicy(env.observation_space, env.action_space, lambda _: 0.0, **SMALL_LSTM)
    return RecurrentA3CWorker(
        env,
        policy,
        worker_id=0,
        n_steps=n_steps,
        gamma=0.99,
        gae_lambda=1.0,
        ent_coef=0.0,
        vf_coef=0.5,
        normalize_advantage=False,
        use_sde=False,
        sde_sample_freq=-1,
        rollout_buffer_class=None,
        rollout_buffer_kwargs={},
    )


def _states_per_env(states) -> list[th.Tensor]:
    """The four LSTM state tensors (actor h, c; critic h, c), each (n_layers, n_envs, hidden)."""
    return [states.pi[0], states.pi[1], states.vf[0], states.vf[1]]


@pytest.mark.parametrize("episode_length", [4, 6])
def test_segment_starts_from_the_last_segments_states_zeroed_at_episode_starts(episode_length):
    # Segments of 4 steps: episodes of 4 steps start with every segment; of 6 steps, every third segment.
    worker = _worker(functools.partial(FixedLengthEnv, episode_length), n_envs=3, n_steps=4)
    carried = zeroed = 0
    for _ in range(6):
        states_at_end = _states_per_env(worker.lstm_states)
        starts = worker._last_episode_starts.copy()
        worker.compute_loss()
        for at_start, at_end in zip(_states_per_env(worker.segment_start_states), states_at_end, strict=True):
            for env_index in range(3):
                if starts[env_index]:
                    assert th.count_nonzero(at_start[:, env_index]) == 0
                else:
                    assert th.equal(at_start[:, env_index], at_end[:, env_index])
        carried += int((~starts).sum())
        zeroed += int(starts.sum())
    # Both cases were seen: 6 segments x 3 envs.
    assert (carried, zeroed) == ((0, 18) if episode_length == 4 else (12, 6))


def test_the_loss_replays_the_segment_through_the_lstm_exactly_as_it_was_played():
    # Values the policy computed step by step while acting equal those the loss recomputes over the whole
    # segment from its start states: the loss sees the same hidden states, resets included.
    worker = _worker(functools.partial(FixedLengthEnv, 3), n_envs=2, n_steps=8)
    for _ in range(3):
        worker.compute_loss()
        buffer = worker.rollout_buffer
        values, _, _ = worker.policy.evaluate_actions(
            th.as_tensor(buffer.swap_and_flatten(buffer.observations)),
            th.as_tensor(buffer.swap_and_flatten(buffer.actions)).long().flatten(),
            worker.segment_start_states,
            th.as_tensor(buffer.swap_and_flatten(buffer.episode_starts)).flatten(),
        )
        np.testing.assert_allclose(
            values.detach().numpy().flatten(), buffer.swap_and_flatten(buffer.values).flatten(), atol=1e-5
        )


def test_the_gradient_flows_back_through_the_segment_to_its_first_step():
    worker = _worker(functools.partial(FixedLengthEnv, 100), n_envs=2, n_steps=6)
    worker.compute_loss()
    first_obs = th.as_tensor(worker.rollout_buffer.observations[0], dtype=th.float32).requires_grad_(True)
    # The last step's action log-probability depends on the first step's observation only through the LSTM.
    buffer = worker.rollout_buffer
    observations = th.as_tensor(buffer.observations).clone()
    observations[0] = first_obs
    _, log_prob, _ = worker.policy.evaluate_actions(
        observations.swapaxes(0, 1).reshape(-1, 3),
        th.as_tensor(buffer.swap_and_flatten(buffer.actions)).long().flatten(),
        worker.segment_start_states,
        th.as_tensor(buffer.swap_and_flatten(buffer.episode_starts)).flatten(),
    )
    last_steps = log_prob.view(2, 6)[:, -1].sum()
    (gradient,) = th.autograd.grad(last_steps, first_obs)
    assert th.count_nonzero(gradient) > 0


def test_predict_behaves_as_recurrent_ppos(no_leaks):
    model = A3C("MlpLstmPolicy", "CartPole-v1", n_workers=2, n_steps=5, seed=0, device="cpu", policy_kwargs=SMALL_LSTM)
    model.learn(400)
    ppo = RecurrentPPO("MlpLstmPolicy", "CartPole-v1", seed=0, device="cpu", policy_kwargs=SMALL_LSTM)
    ppo.policy.load_state_dict(model.policy.state_dict())

    env = make_vec_env("CartPole-v1", n_envs=2, seed=3)
    obs = env.reset()
    states = ppo_states = None
    episode_starts = np.ones(2, dtype=bool)
    for _ in range(60):
        actions, states = model.predict(obs, state=states, episode_start=episode_starts, deterministic=True)
        ppo_actions, ppo_states = ppo.predict(obs, state=ppo_states, episode_start=episode_starts, deterministic=True)
        np.testing.assert_array_equal(actions, ppo_actions)
        for mine, theirs in zip(states, ppo_states, strict=True):
            np.testing.assert_allclose(mine, theirs, atol=1e-6)
        obs, _, episode_starts, _ = env.step(actions)
    assert states[0].shape == (1, 2, 16)  # (n_layers, n_envs, lstm_hidden_size)


def test_save_load_round_trip_keeps_the_recurrent_policy(tmp_path, no_leaks):
    model = A3C("MlpLstmPolicy", "CartPole-v1", n_workers=2, n_steps=5, seed=0, device="cpu", policy_kwargs=SMALL_LSTM)
    model.learn(300)
    model.save(tmp_path / "lstm")
    loaded = A3C.load(tmp_path / "lstm", device="cpu")
    assert isinstance(loaded.policy, RecurrentActorCriticPolicy)
    obs = make_vec_env("CartPole-v1", n_envs=1, seed=5).reset()
    state = np.random.default_rng(0).normal(size=(1, 1, 16)).astype(np.float32)
    expected = model.predict(obs, state=(state, state), episode_start=np.zeros(1), deterministic=True)
    actual = loaded.predict(obs, state=(state, state), episode_start=np.zeros(1), deterministic=True)
    np.testing.assert_array_equal(actual[0], expected[0])
    np.testing.assert_allclose(actual[1][0], expected[1][0])
    loaded.set_env(make_vec_env("CartPole-v1", n_envs=1))
    loaded.learn(200)  # and trains on


def test_dict_observations_with_vec_normalize(no_leaks):
    env = VecNormalize(make_vec_env(SimpleMultiObsEnv, n_envs=1), norm_obs_keys=["vec"])
    model = A3C("MultiInputLstmPolicy", env, n_workers=2, n_steps=5, seed=0, device="cpu", policy_kwargs=SMALL_LSTM)
    model.learn(500)
    assert model.num_timesteps >= 500
    assert model.get_vec_normalize_env().obs_rms["vec"].count > 400  # the workers' statistics reached the learner
    obs = model.get_env().reset()
    actions, states = model.predict(obs, episode_start=np.ones(1, dtype=bool))
    assert model.action_space.contains(actions[0]) and states[0].shape == (1, 1, 16)


def test_hogwild_mode_trains_a_recurrent_policy(no_leaks):
    model = A3C("MlpLstmPolicy", "CartPole-v1", n_workers=2, n_steps=5, update_mode="hogwild", seed=0, device="cpu",
                policy_kwargs=SMALL_LSTM)  # fmt: skip
    before = th.nn.utils.parameters_to_vector(model.policy.parameters()).clone()
    model.learn(500)
    assert model.num_timesteps >= 500
    assert not th.equal(before, th.nn.utils.parameters_to_vector(model.policy.parameters()))


# The zoo's CartPoleNoVel-v1 entry (zoo_configs/a3c_lstm.yml) as it ships: its hyperparameters, with the
# linear learning-rate schedule over its n_timesteps, and its `normalize: true`.
NO_VELOCITIES_ENTRY = config_entry("a3c_lstm", "CartPoleNoVel-v1")
NO_VELOCITIES = config_kwargs("a3c_lstm", "CartPoleNoVel-v1")


def _no_velocities_env(seed=None, training=True, n_envs=1) -> VecNormalize:
    """CartPoleNoVel-v1 in the entry's VecNormalize, with the entry's gamma as rl-zoo3 does; raw rewards to evaluate."""
    env = make_vec_env(cartpole_without_velocities, n_envs=n_envs, seed=seed)
    return VecNormalize(env, training=training, norm_reward=training, gamma=NO_VELOCITIES["gamma"])


def test_recurrent_a3c_balances_cartpole_without_velocities_and_feed_forward_a3c_cannot(no_leaks):
    # Position and angle only: the velocities must be remembered. Trial runs of the entry on seeds 5-9
    # (docs/a3c.md) first averaged 450 after 20k-140k steps, and all five ended at 500; the budget is the
    # entry's own 300k, which its learning-rate schedule spans.
    assert NO_VELOCITIES_ENTRY["normalize"] is True and NO_VELOCITIES_ENTRY["policy"] == "MlpLstmPolicy"
    model = A3C("MlpLstmPolicy", _no_velocities_env(), seed=0, device="cpu", **NO_VELOCITIES)
    eval_env = _no_velocities_env(100, training=False, n_envs=EVAL_ENVS)
    assert_training_reaches(
        model, eval_env, threshold=450, budget=int(NO_VELOCITIES_ENTRY["n_timesteps"]), eval_every=20_000,
        n_eval_episodes=20, best_return=500,
    )  # fmt: skip

    # The same settings without the LSTM, for as many steps as the recurrent agent needed.
    feed_forward_kwargs = dict(NO_VELOCITIES, policy_kwargs=dict(NO_VELOCITIES["policy_kwargs"]))
    del feed_forward_kwargs["policy_kwargs"]["lstm_hidden_size"]
    feed_forward = A3C("MlpPolicy", _no_velocities_env(), seed=0, device="cpu", **feed_forward_kwargs)
    feed_forward.learn(model.num_timesteps)
    eval_env = _no_velocities_env(100, training=False, n_envs=EVAL_ENVS)
    eval_env.obs_rms = feed_forward.get_vec_normalize_env().obs_rms
    mean_reward, _ = evaluate_policy(feed_forward, eval_env, n_eval_episodes=20)
    assert mean_reward < 150, (
        f"feed-forward A3C scored {mean_reward} in {model.num_timesteps} steps: the task needs no memory?"
    )


# MinAtar: Atari's dynamics on 10x10 grids (a tests extra); bool images, channels last.
MINATAR = pytest.param("MinAtar/Breakout-v1", id="breakout")


def test_small_images_get_minatar_cnn_and_a_users_extractor_wins():
    minatar_like = gym.spaces.Box(0, 1, (10, 10, 4), dtype=bool)
    picked = small_image_policy_kwargs(ActorCriticCnnPolicy, minatar_like, {})
    assert picked == {"features_extractor_class": MinAtarCNN}
    assert small_image_policy_kwargs(RecurrentActorCriticCnnPolicy, minatar_like, {}) == picked
    atari = gym.spaces.Box(0, 255, (4, 84, 84), dtype=np.uint8)
    assert small_image_policy_kwargs(ActorCriticCnnPolicy, atari, {}) == {}
    own = {"features_extractor_class": NatureCNN}
    assert small_image_policy_kwargs(ActorCriticCnnPolicy, minatar_like, own) is own


@pytest.mark.parametrize("shape, channels_last", [((10, 10, 4), True), ((4, 10, 10), False), ((10, 10, 10), True)])
def test_minatar_cnn_reads_channels_first_or_last(shape, channels_last):
    extractor = MinAtarCNN(gym.spaces.Box(0, 1, shape, dtype=bool))
    assert extractor.channels_last is channels_last
    features = extractor(th.ones((5, *shape)))
    assert features.shape == (5, 128)
    assert extractor.cnn[0].in_channels == (shape[2] if channels_last else shape[0])
    with pytest.raises(ValueError, match="3-dimensional"):
        MinAtarCNN(gym.spaces.Box(0, 1, (10, 10), dtype=bool))


@pytest.mark.parametrize("env_id", [MINATAR])
@pytest.mark.parametrize("policy", ["CnnPolicy", "CnnLstmPolicy"])
def test_a3c_trains_on_minatar(env_id, policy, no_leaks):
    assert register_minatar_envs(), "minatar is in the tests extra"
    model = A3C(policy, env_id, n_workers=2, envs_per_worker=2, seed=0, device="cpu")
    assert isinstance(model.policy.features_extractor, MinAtarCNN)
    model.learn(3000)
    assert model.num_timesteps >= 3000
    mean_reward, _ = evaluate_policy(model, make_vec_env(env_id, n_envs=1, seed=1), n_eval_episodes=2)
    assert np.isfinite(mean_reward)
