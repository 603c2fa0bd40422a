"""The lean rollout (LeanA3CWorker) computes what SB3's machinery (A3CWorker) does, and runs only where it applies."""

import functools

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.distributions import CategoricalDistribution
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import SimpleMultiObsEnv
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.vec_env import VecNormalize

from sb3_async import A3C, AsyncQLearning, OffPolicyAC
from sb3_async.a3c.worker import A3CWorker, LeanA3CWorker, RecurrentA3CWorker
from sb3_async.common.rollout import categorical_log_prob_and_entropy, has_plain_categorical_head, sample_categorical

N_STEPS = 8


def segments(model: A3C, logic_class: type, n_segments: int) -> list[tuple[th.Tensor, dict, dict]]:
    """Run ``n_segments`` of ``logic_class`` in this process, on the model's worker 0 setup, from fixed parameters."""
    spec = model._worker_spec()
    _, logic_kwargs = model._worker_logic()
    np.random.seed(7)  # the same draws for envs that use numpy's global generator (SimpleMultiObsEnv)
    env = spec.env_factory.build(0, spec.normalization)
    policy = spec.build_policy()
    policy.load_state_dict(model.policy.state_dict())
    th.manual_seed(7)  # the same action draws for both logics
    logic = logic_class(env, policy, 0, **logic_kwargs)
    results = []
    for index in range(n_segments):
        # SB3's RolloutBuffer.get() draws a permutation from numpy's global generator; the lean path draws none.
        np.random.seed(index)
        loss, segment = logic.compute_loss()
        policy.zero_grad(set_to_none=True)
        loss.backward()
        gradient = th.cat([param.grad.reshape(-1) for param in policy.parameters()])
        results.append((gradient, segment.steps, segment.stats))
    env.close()
    return results


def short_cartpole() -> gym.Env:
    return gym.make("CartPole-v1", max_episode_steps=6)  # time limits inside every segment of 8 steps


def short_pendulum() -> gym.Env:
    return gym.make("Pendulum-v1", max_episode_steps=5)


@pytest.mark.parametrize(
    "env, kwargs",
    [
        (short_cartpole, dict(gae_lambda=0.9, ent_coef=0.01)),
        (short_pendulum, dict(gae_lambda=1.0, normalize_advantage=True)),
        (functools.partial(make_vec_env, short_cartpole, n_envs=3), dict(policy_kwargs=dict(share_features_extractor=False))),
        ("vec-normalize", dict()),
    ],
    ids=["discrete-truncations", "box-truncations", "separate-extractors", "vec-normalize"],
)
def test_lean_rollout_gives_sb3s_gradient_steps_and_stats(env, kwargs):
    if env == "vec-normalize":
        env = VecNormalize(make_vec_env(short_cartpole, n_envs=2))
    elif isinstance(env, functools.partial):
        env = env()
    model = A3C("MlpPolicy", env, n_workers=1, envs_per_worker=2, n_steps=N_STEPS, seed=0, device="cpu", **kwargs)
    sb3, lean = segments(model, A3CWorker, 4), segments(model, LeanA3CWorker, 4)
    truncated = 0
    for (sb3_gradient, sb3_steps, sb3_stats), (lean_gradient, lean_steps, lean_stats) in zip(sb3, lean, strict=True):
        assert th.allclose(lean_gradient, sb3_gradient, rtol=1e-4, atol=1e-5)
        assert sb3_gradient.abs().sum() > 0
        # What the learner's callbacks see: the same columns, shapes, dtypes and values.
        assert lean_steps.keys() == sb3_steps.keys()
        for key, column in sb3_steps.items():
            if key == "infos":
                assert [[info.keys() for info in step] for step in lean_steps[key]] == [
                    [info.keys() for info in step] for step in column
                ]
                truncated += sum(info.get("TimeLimit.truncated", False) for step in column for info in step)
            else:
                assert np.asarray(lean_steps[key]).shape == np.asarray(column).shape, key
                assert np.asarray(lean_steps[key]).dtype == np.asarray(column).dtype, key
                np.testing.assert_allclose(lean_steps[key], column, rtol=1e-5, atol=1e-5, err_msg=key)
        assert lean_stats.keys() == sb3_stats.keys()
        for key, value in sb3_stats.items():
            assert lean_stats[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key
    assert truncated > 0, "the segments must hold truncations, whose bootstrap the lean path computes its own way"


def dict_obs_env() -> gym.Env:
    return gym.wrappers.TimeLimit(SimpleMultiObsEnv(random_start=True), max_episode_steps=5)


def test_dict_observations_take_the_lean_rollout_with_sb3s_gradient():
    env = make_vec_env(dict_obs_env, n_envs=2)
    model = A3C("MultiInputPolicy", env, n_workers=1, envs_per_worker=2, n_steps=N_STEPS, seed=0, device="cpu")
    assert model._worker_logic()[0] is LeanA3CWorker
    for (sb3_gradient, _, _), (lean_gradient, _, _) in zip(
        segments(model, A3CWorker, 3), segments(model, LeanA3CWorker, 3), strict=True
    ):
        assert th.allclose(lean_gradient, sb3_gradient, rtol=1e-4, atol=1e-5)


class MyRolloutBuffer(RolloutBuffer):
    pass


def test_the_lean_rollout_runs_only_where_it_computes_what_sb3_does(capsys):
    def worker_class_of(model: A3C) -> type:
        return model._worker_logic()[0]

    assert worker_class_of(A3C("MlpPolicy", "CartPole-v1", device="cpu")) is LeanA3CWorker
    assert worker_class_of(A3C("MlpLstmPolicy", "CartPole-v1", device="cpu")) is RecurrentA3CWorker
    assert worker_class_of(A3C("MlpPolicy", "Pendulum-v1", use_sde=True, device="cpu")) is A3CWorker
    assert worker_class_of(A3C("MlpPolicy", "CartPole-v1", rollout_buffer_class=MyRolloutBuffer, device="cpu")) is A3CWorker
    batch_norm = dict(features_extractor_class=BatchNormExtractor)
    assert worker_class_of(A3C("MlpPolicy", "CartPole-v1", policy_kwargs=batch_norm, device="cpu")) is A3CWorker
    dropout = A3C("MlpPolicy", "CartPole-v1", device="cpu", verbose=1)
    dropout.policy.mlp_extractor.policy_net.append(th.nn.Dropout(0.1))
    capsys.readouterr()
    assert worker_class_of(dropout) is A3CWorker
    assert worker_class_of(dropout) is A3CWorker
    said = capsys.readouterr().out
    assert said.count("not the lean rollout") == 1 and "Dropout" in said


class BatchNormExtractor(BaseFeaturesExtractor):
    def __init__(self, observation_space: gym.spaces.Box) -> None:
        super().__init__(observation_space, features_dim=8)
        self.net = th.nn.Sequential(th.nn.Linear(observation_space.shape[0], 8), th.nn.BatchNorm1d(8))

    def forward(self, observations: th.Tensor) -> th.Tensor:
        return self.net(observations)


@pytest.mark.parametrize("algo_class", [OffPolicyAC, AsyncQLearning])
def test_workers_walk_the_modules_for_the_training_mode_only_when_a_module_depends_on_it(algo_class):
    def calls_per_segment(policy_kwargs: dict) -> int:
        model = algo_class(
            "MlpPolicy", "CartPole-v1", n_workers=1, envs_per_worker=2, seed=0, device="cpu", policy_kwargs=policy_kwargs
        )
        spec = model._worker_spec()
        logic_class, logic_kwargs = model._worker_logic()
        env = spec.env_factory.build(0, spec.normalization)
        policy = spec.build_policy()
        logic = logic_class(env, policy, 0, **logic_kwargs)
        calls = []
        original = policy.set_training_mode
        policy.set_training_mode = lambda mode: calls.append(mode) or original(mode)
        loss, _ = logic.compute_loss()
        assert th.isfinite(loss)
        env.close()
        return len(calls)

    assert calls_per_segment({}) == 0
    assert calls_per_segment(dict(features_extractor_class=BatchNormExtractor)) >= 2


def test_the_categorical_shortcut_draws_and_scores_as_sb3s_distribution():
    th.manual_seed(0)
    logits = th.randn(64, 5, requires_grad=True)
    with th.no_grad():
        logits[:3, 0] = -float("inf")  # an action of probability 0
    distribution = CategoricalDistribution(5).proba_distribution(logits)
    th.manual_seed(1)
    sb3_draws = [distribution.get_actions() for _ in range(20)]
    th.manual_seed(1)
    own_draws = [sample_categorical(logits.detach()) for _ in range(20)]
    assert all(th.equal(own, sb3) for own, sb3 in zip(own_draws, sb3_draws, strict=True))
    actions = sb3_draws[0]
    log_prob, entropy = categorical_log_prob_and_entropy(logits, actions)
    assert th.allclose(log_prob, distribution.log_prob(actions), atol=1e-6)
    assert th.allclose(entropy, distribution.entropy(), atol=1e-6) and th.isfinite(entropy).all()
    own_grad = th.autograd.grad((log_prob + entropy).sum(), logits)[0]
    sb3_grad = th.autograd.grad((distribution.log_prob(actions) + distribution.entropy()).sum(), logits)[0]
    assert th.allclose(own_grad, sb3_grad, atol=1e-6)


class OwnDistributionPolicy(ActorCriticPolicy):
    def _get_action_dist_from_latent(self, latent_pi):
        return super()._get_action_dist_from_latent(latent_pi)


@pytest.mark.parametrize(
    "env_id, policy, plain",
    [("CartPole-v1", "MlpPolicy", True), ("Pendulum-v1", "MlpPolicy", False), ("CartPole-v1", OwnDistributionPolicy, False)],
)
def test_the_categorical_shortcut_applies_only_to_sb3s_own_categorical_head(env_id, policy, plain):
    model = A3C(policy, env_id, n_workers=1, device="cpu")
    assert has_plain_categorical_head(model.policy) is plain
