"""
The step that workers take on the shared optimizer state (``FlatOptimizerState.step``, code of our
own so that no worker builds a torch optimizer) is torch's optimizer step, and the workers indeed
never import ``torch._dynamo``; what else a worker skips at start-up because it cannot matter.
"""

import sys

import gymnasium as gym
import pytest
import torch as th
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.policies import ActorCriticPolicy

from sb3_async import A3C, IMPALA, AsyncQLearning, OffPolicyAC
from sb3_async.common.collectors.base import NoOptimizer
from sb3_async.common.flat_optimizer import FlatOptimizerState
from sb3_async.common.forkserver import preloadable
from sb3_async.common.worker_envs import env_modules
from tests.test_hogwild import assert_same_optimizer_state, flat


@pytest.mark.parametrize(
    "optimizer_class, hyperparameters",
    [
        (th.optim.RMSprop, dict(alpha=0.99, eps=1e-5, weight_decay=0)),  # A3C's (SB3's A2C's)
        (th.optim.RMSprop, dict(alpha=0.9, eps=1e-3, weight_decay=0.01, momentum=0.9, centered=True)),
        (th.optim.RMSprop, dict(centered=True)),
        (th.optim.RMSprop, dict(maximize=True)),
        (th.optim.Adam, dict()),
        (th.optim.Adam, dict(betas=(0.8, 0.95), eps=1e-6, weight_decay=0.01, amsgrad=True)),
        (th.optim.AdamW, dict(weight_decay=0.05)),
        (th.optim.AdamW, dict(weight_decay=0.05, amsgrad=True)),
        (th.optim.Adam, dict(maximize=True)),
    ],
)
def test_the_shared_states_step_is_torchs_optimizer_step(optimizer_class, hyperparameters):
    th.manual_seed(0)
    # The optimizer steps the first and third tensors; the second (a target network, say) lies between them.
    params = [th.nn.Parameter(th.randn(3, 2)), th.nn.Parameter(th.randn(5)), th.nn.Parameter(th.randn(4))]
    stepped = [params[0], params[2]]
    optimizer = optimizer_class(stepped, lr=0.1, **hyperparameters)
    shared = FlatOptimizerState.of(optimizer, params)
    flat_params = flat(params)
    for lr in (0.1, 0.05, 0.02, 0.01, 0.005):
        gradient = th.randn(flat_params.numel())
        shared.step(flat_params, gradient, lr)
        for param, piece in zip(params, th.split(gradient, [param.numel() for param in params]), strict=True):
            param.grad = piece.view_as(param).clone()
        optimizer.param_groups[0]["lr"] = lr
        optimizer.step()
    assert th.equal(flat_params, flat(params))
    shared.copy_to(reference := optimizer_class(stepped, lr=0.1, **hyperparameters), params)
    assert_same_optimizer_state(optimizer, reference)


class HalfStepRMSprop(th.optim.RMSprop):
    """A subclass that steps otherwise than RMSprop's maths: half the learning rate."""

    def step(self, closure=None):
        for group in self.param_groups:
            group["lr"] /= 2
        super().step(closure)
        for group in self.param_groups:
            group["lr"] *= 2


def test_a_subclass_of_a_shared_optimizer_steps_with_its_own_step():
    params = [th.nn.Parameter(th.randn(6))]
    optimizer = HalfStepRMSprop(params, lr=0.1)
    shared = FlatOptimizerState.of(optimizer, params)
    flat_params, gradient = flat(params), th.randn(6)
    shared.stepper_over(flat_params, gradient)(0.1)
    params[0].grad = gradient.clone()
    optimizer.step()
    assert th.equal(flat_params, flat(params))


class PolicyWithItsOwnOptimizer(ActorCriticPolicy):
    """A custom policy that sets its optimizer itself: given an optimizer_class too, it raises a TypeError."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, optimizer_class=th.optim.SGD, **kwargs)


def test_a_policy_that_sets_its_own_optimizer_still_builds_in_the_workers(no_leaks):
    # Its workers' copies cannot take the stand-in optimizer, so they are built as the policy wants.
    model = A3C(
        PolicyWithItsOwnOptimizer, "CartPole-v1", use_rms_prop=False, update_mode="learner", n_workers=2, n_steps=5,
        device="cpu",
    )  # fmt: skip
    model.learn(500)
    assert model.num_timesteps >= 500 and isinstance(model.policy.optimizer, th.optim.SGD)


class DynamoWitness(gym.Wrapper):
    """CartPole whose infos say whether the process that steps it (a worker) has imported torch._dynamo."""

    def __init__(self) -> None:
        super().__init__(gym.make("CartPole-v1"))

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated, truncated, {**info, "dynamo": "torch._dynamo" in sys.modules}


class RecordDynamo(BaseCallback):
    def _on_training_start(self) -> None:
        self.seen: set[bool] = set()

    def _on_step(self) -> bool:
        self.seen.update(info["dynamo"] for info in self.locals["infos"])
        return True


@pytest.mark.parametrize(
    "make_model",
    [
        lambda: A3C("MlpPolicy", DynamoWitness, n_workers=2, n_steps=5, device="cpu"),  # locked: workers step the state
        lambda: A3C("MlpPolicy", DynamoWitness, n_workers=2, n_steps=5, update_mode="learner", device="cpu"),
        lambda: AsyncQLearning("MlpPolicy", DynamoWitness, n_workers=2, train_freq=5, device="cpu"),
        lambda: OffPolicyAC("MlpPolicy", DynamoWitness, n_workers=2, learning_starts=20, batch_size=10, device="cpu"),
        lambda: IMPALA("MlpPolicy", DynamoWitness, n_workers=2, batch_size=2, device="cpu"),
    ],
    ids=["a3c-locked", "a3c-learner", "async_q-locked", "offpac", "impala"],
)
def test_workers_never_import_torch_dynamo(make_model, no_leaks):
    # It is what the first torch optimizer of a process imports, about 1.4 s: a worker that needs it starts that much later.
    model = make_model()
    assert "torch._dynamo" in sys.modules  # the learner's optimizer
    record = RecordDynamo()
    model.learn(1_000, callback=record)
    assert record.seen == {False}


def test_a_workers_policy_copy_skips_the_initialization_its_parameters_replace(monkeypatch):
    model = A3C("MlpPolicy", "CartPole-v1", n_workers=1, device="cpu")
    orthogonal_calls = []
    original = th.nn.init.orthogonal_
    monkeypatch.setattr(
        th.nn.init, "orthogonal_", lambda *args, **kwargs: orthogonal_calls.append(1) or original(*args, **kwargs)
    )
    worker_copy = model._worker_spec().build_policy()
    assert orthogonal_calls == []
    assert type(worker_copy) is type(model.policy)
    assert [p.shape for p in worker_copy.parameters()] == [p.shape for p in model.policy.parameters()]
    A3C("MlpPolicy", "CartPole-v1", n_workers=1, device="cpu")
    assert orthogonal_calls, "the learner's own policy is initialized as SB3 initializes it"


class CustomCartPole(gym.Wrapper):
    def __init__(self) -> None:
        super().__init__(gym.make("CartPole-v1"))

    @property
    def unwrapped(self) -> gym.Env:
        return self


def test_the_workers_server_preloads_gymnasiums_env_modules_and_no_others():
    assert env_modules(make_vec_env("CartPole-v1", n_envs=2)) == ["gymnasium.envs.classic_control.cartpole"]
    assert preloadable("gymnasium.envs.classic_control.cartpole")
    assert preloadable("gymnasium.envs.box2d.lunar_lander")
    assert not preloadable("gymnasium.envs.mujoco.ant_v5")  # imports MuJoCo, which loads GL libraries
    # A user's module is imported by each worker, never by the server that every worker forks from.
    assert env_modules(make_vec_env(CustomCartPole)) == [__name__]
    assert not preloadable(__name__)


class PolicyThatSetsOrthoInit(ActorCriticPolicy):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, ortho_init=False, **kwargs)


def test_a_policy_that_sets_ortho_init_itself_still_gets_the_stand_in_optimizer():
    # Its first build (with ortho_init=False added) raises TypeError; the next keeps the stand-in optimizer.
    model = A3C(PolicyThatSetsOrthoInit, "CartPole-v1", n_workers=1, device="cpu")
    assert isinstance(model._worker_spec().build_policy().optimizer, NoOptimizer)
