"""IMPALA: the flat trajectories, V-trace on the learner's batch, its reduction to A3C, and the SB3 contract."""

import functools

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import IdentityEnvBox, IdentityEnvMultiBinary, IdentityEnvMultiDiscrete, SimpleMultiObsEnv
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.policies import ActorCriticPolicy

from sb3_async import IMPALA
from sb3_async.a3c.worker import a3c_loss, generalized_advantages
from sb3_async.impala.actor import IMPALAActor
from sb3_async.impala.trajectories import TrajectoryLayout
from sb3_async.offpac.loss import OffPolicyTrajectories, off_policy_ac_loss, vtrace
from tests.conftest import CountingCallback, RecordingOutput, forkserver_children

FAST = dict(n_workers=2, n_steps=5, batch_size=2, seed=0, device="cpu")


def random_segment(layout: TrajectoryLayout, space: spaces.Space, generator: th.Generator) -> OffPolicyTrajectories:
    steps, envs = layout.n_steps, layout.n_envs

    def observations_like(part: spaces.Space) -> th.Tensor:
        return th.randint(0, 5, (steps + 1, envs, *part.shape), generator=generator).float()

    if isinstance(space, spaces.Dict):
        observations: th.Tensor | dict[str, th.Tensor] = {key: observations_like(part) for key, part in space.spaces.items()}
    else:
        observations = observations_like(space)
    return OffPolicyTrajectories(
        observations=observations,
        actions=th.randn(steps, envs, *layout.action_shape, generator=generator),
        rewards=th.randn(steps, envs, generator=generator),
        dones=(th.rand(steps, envs, generator=generator) < 0.3).float(),
        behavior_log_probs=-th.rand(steps, envs, generator=generator),
    )


@pytest.mark.parametrize(
    "observation_space, action_space",
    [
        (spaces.Box(-1, 1, (4,)), spaces.Discrete(2)),
        (spaces.Box(0, 255, (3, 5, 5), dtype=np.uint8), spaces.Box(-1, 1, (2,))),
        (spaces.Dict({"image": spaces.Box(0, 1, (2, 3)), "vector": spaces.Box(-1, 1, (5,))}), spaces.MultiDiscrete([3, 2])),
    ],
    ids=["vector-discrete", "image-box", "dict-multidiscrete"],
)
def test_segments_read_back_as_one_batch_column_by_column(observation_space, action_space):
    layout = TrajectoryLayout.of(observation_space, action_space, n_steps=3, n_envs=2)
    generator = th.Generator().manual_seed(0)
    segments = [random_segment(layout, observation_space, generator) for _ in range(3)]
    rows = th.full((3, layout.size), float("nan"))
    for segment, row in zip(segments, rows, strict=True):
        layout.write(segment, row)
    assert th.isfinite(rows).all()  # every value of a row is written

    batch = layout.read(rows)
    # Segment i's env j is the batch's column i * n_envs + j.
    for i, segment in enumerate(segments):
        columns = slice(2 * i, 2 * i + 2)
        for name in ("actions", "rewards", "dones", "behavior_log_probs"):
            th.testing.assert_close(getattr(batch, name)[:, columns], getattr(segment, name))
        if isinstance(segment.observations, dict):
            assert isinstance(batch.observations, dict)
            for key, observations in segment.observations.items():
                th.testing.assert_close(batch.observations[key][:, columns], observations)
        else:
            assert isinstance(batch.observations, th.Tensor)
            th.testing.assert_close(batch.observations[:, columns], segment.observations)


def vtrace_reference(rhos, rewards, dones, values, bootstrap, gamma, rho_bar, c_bar):
    """
    IMPALA's eq. (1) written out as its sum, one trajectory at a time (numpy, float64)::

        v_s = V(x_s) + sum_{t=s}^{s+n-1} gamma^{t-s} (prod_{i=s}^{t-1} c_i) delta_t V

    where an episode end at step t zeroes every discount after it.
    """
    steps = len(rewards)
    next_values = np.append(values[1:], bootstrap)
    discounts = gamma * (1.0 - dones)
    deltas = np.minimum(rho_bar, rhos) * (rewards + discounts * next_values - values)
    cs = np.minimum(c_bar, rhos)
    vs = np.array(values, dtype=np.float64)
    for s in range(steps):
        weight = 1.0
        for t in range(s, steps):
            vs[s] += weight * deltas[t]
            weight *= discounts[t] * cs[t]
    return vs


def test_vtrace_targets_of_a_learner_batch_equal_the_papers_sum():
    # Two actors' segments of 2 envs x 6 steps, written and read as the learner does, with a fixed value function.
    observation_space, action_space = spaces.Box(-1, 1, (3,)), spaces.Discrete(2)
    layout = TrajectoryLayout.of(observation_space, action_space, n_steps=6, n_envs=2)
    generator = th.Generator().manual_seed(1)
    rows = th.zeros(2, layout.size)
    for row in rows:
        layout.write(random_segment(layout, observation_space, generator), row)
    batch = layout.read(rows)
    assert isinstance(batch.observations, th.Tensor)
    weights = th.tensor([0.5, -1.0, 0.25])
    values_of_all = batch.observations @ weights  # V(x) for x_0..x_T, [T + 1, B]
    target_log_probs = batch.behavior_log_probs + th.randn(batch.rewards.shape, generator=generator)  # rho far from 1
    returns = vtrace(
        batch.behavior_log_probs,
        target_log_probs,
        batch.rewards,
        batch.dones,
        values_of_all[:-1],
        values_of_all[-1],
        gamma=0.9,
        rho_bar=1.0,
        c_bar=0.8,
    )
    rhos = th.exp(target_log_probs - batch.behavior_log_probs).double().numpy()
    for column in range(4):
        expected = vtrace_reference(
            rhos[:, column],
            batch.rewards[:, column].double().numpy(),
            batch.dones[:, column].double().numpy(),
            values_of_all[:-1, column].double().numpy(),
            values_of_all[-1, column].item(),
            gamma=0.9,
            rho_bar=1.0,
            c_bar=0.8,
        )
        np.testing.assert_allclose(returns.vs[:, column].numpy(), expected, rtol=1e-5, atol=1e-5)


def test_with_one_actor_and_no_lag_the_update_is_a3cs_on_the_same_segment():
    """
    The no-correction case: the actor's policy is the learner's (zero lag), so every rho is 1, V-trace
    targets are A3C's n-step returns, and the gradient is A3C's (vf_coef 2c on the paper's 1/2 (v - V)^2
    is A3C's vf_coef c on (R - V)^2).
    """
    env = make_vec_env("CartPole-v1", n_envs=3, seed=0)
    th.manual_seed(0)
    policy = ActorCriticPolicy(env.observation_space, env.action_space, lambda _: 0.0)
    layout = TrajectoryLayout.of(env.observation_space, env.action_space, n_steps=8, n_envs=3)
    actor = IMPALAActor(env, policy, 0, n_steps=8, gamma=0.99, layout=layout)
    trajectory = th.zeros(layout.size)
    actor.act(trajectory)  # a second segment starts mid-episode: the bootstrap and the dones both matter
    actor.act(trajectory)
    segment = layout.read(trajectory[None])  # as the learner reads a batch of one
    assert segment.dones.any(), "the segment should cross an episode end"

    policy.zero_grad()
    loss, _ = off_policy_ac_loss(policy, segment, gamma=0.99, rho_bar=1.0, c_bar=1.0, ent_coef=0.01, vf_coef=0.5)
    loss.backward()
    impala_gradient = [param.grad.clone() for param in policy.parameters()]

    policy.zero_grad()
    steps, envs = segment.rewards.shape
    assert isinstance(segment.observations, th.Tensor)
    observations = segment.observations[:-1].flatten(0, 1)
    values, log_prob, entropy = policy.evaluate_actions(observations, segment.actions.flatten().long())
    with th.no_grad():
        last_values = policy.predict_values(segment.observations[-1]).flatten().numpy()
    # SB3's rollout buffer: episode_starts[t] says step t began an episode (the step before ended one).
    episode_starts = np.concatenate([np.zeros((1, envs)), segment.dones[:-1].numpy()])
    advantages = generalized_advantages(
        segment.rewards.numpy(),
        values.detach().view(steps, envs).numpy(),
        episode_starts,
        last_values,
        segment.dones[-1].numpy(),
        gamma=0.99,
        gae_lambda=1.0,
    )
    returns = th.as_tensor(advantages).flatten() + values.detach().flatten()
    loss, _ = a3c_loss(values, log_prob, entropy, returns, th.as_tensor(advantages).flatten(), 0.01, 0.25, False)
    loss.backward()
    for impala_grad, param in zip(impala_gradient, policy.parameters(), strict=True):
        th.testing.assert_close(impala_grad, param.grad, rtol=1e-4, atol=1e-6)
    env.close()


def test_an_actor_records_its_log_probs_and_bootstraps_a_time_limits_cut():
    env = make_vec_env(lambda: gym.make("CartPole-v1", max_episode_steps=6), n_envs=2, seed=0)
    policy = ActorCriticPolicy(env.observation_space, env.action_space, lambda _: 0.0)
    layout = TrajectoryLayout.of(env.observation_space, env.action_space, n_steps=8, n_envs=2)
    actor = IMPALAActor(env, policy, 0, n_steps=8, gamma=0.9, layout=layout)
    trajectory = th.zeros(layout.size)
    steps = actor.act(trajectory).steps
    segment = layout.read(trajectory[None])
    assert isinstance(segment.observations, th.Tensor)
    with th.no_grad():
        _, log_probs, _ = policy.evaluate_actions(segment.observations[:-1].flatten(0, 1), segment.actions.flatten().long())
    # log mu(a|x), computed after the segment, is the log-probability of the policy that acted.
    th.testing.assert_close(segment.behavior_log_probs, log_probs.view(8, 2))
    cut = [
        (step, env_idx)
        for step in range(8)
        for env_idx in range(2)
        if steps["infos"][step][env_idx].get("TimeLimit.truncated")
    ]
    assert cut, "a 6-step time limit cuts an episode within 8 steps (a random policy rarely drops the pole in 6)"
    for step, env_idx in cut:
        final = steps["infos"][step][env_idx]["terminal_observation"]
        with th.no_grad():
            final_value = policy.predict_values(th.as_tensor(final[None])).item()
        assert segment.rewards[step, env_idx].item() == pytest.approx(1.0 + 0.9 * final_value, rel=1e-5)
        assert segment.dones[step, env_idx] == 1.0
    # Not bootstrapped elsewhere: every other reward is CartPole's 1.
    others = th.ones(8, 2, dtype=th.bool)
    for step, env_idx in cut:
        others[step, env_idx] = False
    assert (segment.rewards[others] == 1.0).all()
    # The last observation of this segment is the first of the next: no step is lost between unrolls.
    last = segment.observations[-1].clone()
    actor.act(trajectory)
    th.testing.assert_close(layout.read(trajectory[None]).observations[0], last)
    env.close()


@pytest.mark.parametrize(
    "env, policy",
    [
        ("Pendulum-v1", "MlpPolicy"),
        (functools.partial(IdentityEnvMultiDiscrete, dim=2), "MlpPolicy"),
        (functools.partial(IdentityEnvMultiBinary, dim=3), "MlpPolicy"),
        (functools.partial(IdentityEnvBox, ep_length=10), "MlpPolicy"),
        (SimpleMultiObsEnv, "MultiInputPolicy"),
    ],
    ids=["box-pendulum", "multidiscrete", "multibinary", "box-identity", "dict-obs"],
)
def test_spaces_and_policies(env, policy, no_leaks):
    model = IMPALA(policy, env, **FAST).learn(200)
    assert model.num_timesteps >= 200
    assert model._n_updates >= 200 // 10  # batches of 2 segments of 5 steps; a last one not full is learned from too
    obs = model.get_env().reset()
    actions, _ = model.predict(obs, deterministic=True)
    assert model.action_space.contains(actions[0])


def test_logs_the_policy_lag_and_the_importance_weights(no_leaks):
    model = IMPALA("MlpPolicy", "CartPole-v1", envs_per_worker=2, **FAST)
    output = RecordingOutput()
    model.set_logger(Logger(folder=None, output_formats=[output]))
    callback = CountingCallback()
    model.learn(2_000, log_interval=5, callback=callback)
    # Every env step reaches the callbacks once, n_envs at a time, as in A2C.
    assert callback.timesteps_seen == list(range(4, model.num_timesteps + 1, 4))
    logged = output.dumps[-1]
    for key in (
        "impala/policy_lag_min",
        "impala/policy_lag_mean",
        "impala/policy_lag_max",
        "impala/rho_mean",
        "impala/effective_sample_size",
        "impala/dropped_stale_trajectories",
        "train/value_loss",
        "train/policy_loss",
        "async/staleness_mean",
    ):
        assert key in logged, key
    assert 0 <= logged["impala/policy_lag_min"] <= logged["impala/policy_lag_mean"] <= logged["impala/policy_lag_max"]
    assert 0.5 < logged["impala/rho_mean"] < 1.5  # the actors' policy is the learner's, up to the lag
    # A batch takes 2 trajectories: one actor segment of 2 envs.
    assert model.segments_per_batch == 1
    assert model._n_updates == model.num_timesteps // (5 * 2)


def test_once_the_steps_are_taken_a_batch_not_yet_full_is_learned_from(no_leaks):
    # One actor of one env, unrolls of 5, batches of 3 unrolls: 20 steps are one full batch and one of 1 unroll.
    settings = dict(n_workers=1, envs_per_worker=1, n_steps=5, batch_size=3, seed=0, device="cpu")
    model = IMPALA("MlpPolicy", "CartPole-v1", **settings).learn(20)
    assert model.num_timesteps == 20
    assert model._n_updates == 2
    # A callback that stops training, even at the last step: as SB3's A2C does not train on the rollout it
    # stopped, the batch is left.
    model = IMPALA("MlpPolicy", "CartPole-v1", **settings).learn(20, callback=CountingCallback(stop_after_calls=20))
    assert model.num_timesteps == 20
    assert model._n_updates == 1


def test_a_lag_bound_of_zero_drops_and_counts_what_is_older(no_leaks):
    model = IMPALA("MlpPolicy", "CartPole-v1", max_policy_lag=0, **FAST).learn(2_000)
    # Two actors race the learner: some of their segments were acted before the other's batch was learned.
    assert model.dropped_stale_trajectories > 0
    assert model._n_updates < model.num_timesteps // 10
    assert model._n_updates > 0


def test_save_load_round_trip(tmp_path, no_leaks):
    model = IMPALA("MlpPolicy", "CartPole-v1", max_policy_lag=3, **FAST).learn(300)
    obs = np.stack([model.observation_space.sample() for _ in range(16)])
    expected, _ = model.predict(obs, deterministic=True)
    model.save(tmp_path / "impala")
    loaded = IMPALA.load(tmp_path / "impala", env=make_vec_env("CartPole-v1"), device="cpu")
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0], expected)
    assert (loaded.batch_size, loaded.max_policy_lag, loaded.n_steps, loaded.rho_bar) == (2, 3, 5, 1.0)
    loaded.learn(100, reset_num_timesteps=False)
    assert loaded.num_timesteps >= 400


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(batch_size=0), "batch_size"),
        (dict(max_policy_lag=-1), "max_policy_lag"),
        (dict(rho_bar=0.0), "rho_bar must be > 0"),
        (dict(n_steps=0), "n_steps"),
        (dict(n_workers=0), "n_workers"),
        (dict(policy=RecurrentActorCriticPolicy), "recurrent"),
    ],
)
def test_bad_arguments_raise_before_any_process_starts(kwargs, message):
    arguments = dict(policy="MlpPolicy", env="CartPole-v1", device="cpu", n_workers=2) | kwargs
    workers_before = forkserver_children()
    with pytest.raises(ValueError, match=message):
        IMPALA(**arguments).learn(100)
    assert forkserver_children() == workers_before
