"""
Behaviour policies b: what acts in an OffPolicyAC worker's envs, and how likely each action was.

``make_behavior`` turns the user's ``behavior_policy`` argument into one of these, in the learner,
so that a bad one is a ValueError before any worker starts:

=================================  =============================================================
``behavior_policy``                 b(a|s)
=================================  =============================================================
``"target"``                        the worker's copy of pi: off-policy only through policy lag
                                    and replay
``"uniform"``                       uniform over the action space (for Box: in its bounds)
``("epsilon", eps)``                (1 - eps) pi + eps uniform
an SB3 model or policy              its action distribution (e.g. a trained PPO expert)
a callable ``obs -> (a, log b)``    the user's: numpy batch in, actions and log-probabilities out
=================================  =============================================================
"""

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy

from sb3_async.common.rollout import has_plain_categorical_head, sample_with_log_prob

BehaviorSpec = str | tuple[str, float] | list | BaseAlgorithm | BasePolicy | Callable[[Any], tuple[np.ndarray, np.ndarray]]


class BehaviorPolicy(ABC):
    """Acts for a batch of observations; returns actions as the target policy reads them, and log b(a|s)."""

    _rng: np.random.Generator | None = None

    @property
    def rng(self) -> np.random.Generator:
        # Made on first use, in the worker: drawn from numpy's global state, which the worker seeds
        # with seed + worker_id, so workers neither share a stream nor lose reproducibility.
        if self._rng is None:
            self._rng = np.random.default_rng(np.random.randint(2**31))
        return self._rng

    @abstractmethod
    def act(self, obs: np.ndarray | dict[str, np.ndarray], target: ActorCriticPolicy) -> tuple[np.ndarray, np.ndarray]:
        """:return: actions ``[B, ...]`` and their log-probabilities under b, ``[B]``"""


class TargetBehavior(BehaviorPolicy):
    def act(self, obs, target):
        with th.no_grad():
            obs_tensor = target.obs_to_tensor(obs)[0]
            actions, log_probs = sample_with_log_prob(target, obs_tensor, has_plain_categorical_head(target))
            return actions.numpy(), log_probs.numpy()


class UniformBehavior(BehaviorPolicy):
    """Uniform over a Discrete, MultiDiscrete or MultiBinary space, or over a bounded Box."""

    def __init__(self, action_space: spaces.Space) -> None:
        if isinstance(action_space, spaces.Box) and not action_space.is_bounded():
            raise ValueError(f"a uniform behaviour needs a bounded Box action space, got {action_space}")
        self.action_space = action_space
        self.log_prob = self._log_prob_of_any_action(action_space)

    @staticmethod
    def _log_prob_of_any_action(action_space: spaces.Space) -> float:
        if isinstance(action_space, spaces.Discrete):
            return -math.log(action_space.n)
        if isinstance(action_space, spaces.MultiDiscrete):
            return -float(np.log(action_space.nvec).sum())
        if isinstance(action_space, spaces.MultiBinary):
            return -float(np.prod(action_space.shape)) * math.log(2)
        if isinstance(action_space, spaces.Box):
            return -float(np.log(action_space.high - action_space.low).sum())
        raise ValueError(f"no uniform behaviour for action space {action_space}")

    def sample(self, n: int) -> np.ndarray:
        space = self.action_space
        if isinstance(space, spaces.Discrete):
            return space.start + self.rng.integers(space.n, size=n)
        if isinstance(space, spaces.MultiDiscrete):
            return self.rng.integers(space.nvec, size=(n, *space.nvec.shape))
        if isinstance(space, spaces.MultiBinary):
            return self.rng.integers(2, size=(n, *space.shape))
        assert isinstance(space, spaces.Box)
        return self.rng.uniform(space.low, space.high, size=(n, *space.shape)).astype(space.dtype)

    def log_probs(self, actions: np.ndarray) -> np.ndarray:
        """log u(a): constant, except outside a Box's bounds where u(a) = 0."""
        log_probs = np.full(len(actions), self.log_prob)
        if isinstance(self.action_space, spaces.Box):
            inside = ((actions >= self.action_space.low) & (actions <= self.action_space.high)).reshape(len(actions), -1)
            log_probs[~inside.all(axis=1)] = -np.inf
        return log_probs

    def act(self, obs, target):
        actions = self.sample(_batch_size(obs))
        return actions, self.log_probs(actions)


class EpsilonBehavior(BehaviorPolicy):
    """With probability ``epsilon`` a uniform action, else pi's: b = (1 - eps) pi + eps uniform."""

    def __init__(self, epsilon: float, action_space: spaces.Space) -> None:
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
        self.epsilon = epsilon
        self.uniform = UniformBehavior(action_space)

    def act(self, obs, target):
        with th.no_grad():
            distribution = target.get_distribution(target.obs_to_tensor(obs)[0])
            actions = distribution.get_actions().numpy()
            explore = self.rng.random(len(actions)) < self.epsilon
            actions[explore] = self.uniform.sample(int(explore.sum()))
            target_log_probs = distribution.log_prob(th.as_tensor(actions)).numpy()
        # log((1 - eps) pi(a|s) + eps u(a)), without leaving log space
        with np.errstate(divide="ignore"):
            log_probs = np.logaddexp(
                np.log1p(-self.epsilon) + target_log_probs, np.log(self.epsilon) + self.uniform.log_probs(actions)
            )
        return actions, log_probs


class SB3PolicyBehavior(BehaviorPolicy):
    """Another agent's stochastic policy (PPO, A2C, A3C, ...): b is its action distribution."""

    def __init__(self, policy: BasePolicy) -> None:
        self.policy = policy_copy_on_cpu(policy)

    def act(self, obs, target):
        with th.no_grad():
            distribution = self.policy.get_distribution(self.policy.obs_to_tensor(obs)[0])
            actions = distribution.get_actions()
            return actions.numpy(), distribution.log_prob(actions).numpy()


class CallableBehavior(BehaviorPolicy):
    """The user's ``obs -> (actions, log_probs)``."""

    def __init__(self, function: Callable[[Any], tuple[np.ndarray, np.ndarray]]) -> None:
        self.function = function

    def act(self, obs, target):
        result = self.function(obs)
        n = _batch_size(obs)
        if isinstance(result, tuple) and len(result) == 2:
            actions, log_probs = np.asarray(result[0]), np.asarray(result[1], dtype=np.float32)
            if actions.ndim >= 1 and len(actions) == n and log_probs.shape == (n,):
                return actions, log_probs
        raise ValueError(
            f"behavior_policy(obs) must return (actions, log_probs) for a batch of {n} observations: "
            f"{n} actions and log_probs of shape ({n},), got {_describe(result)}"
        )


def make_behavior(spec: BehaviorSpec, observation_space: spaces.Space, action_space: spaces.Space) -> BehaviorPolicy:
    """The :class:`BehaviorPolicy` for the user's ``behavior_policy`` (see the module docstring)."""
    if isinstance(spec, str):
        if spec == "target":
            return TargetBehavior()
        if spec == "uniform":
            return UniformBehavior(action_space)
        raise ValueError(
            f"unknown behavior_policy {spec!r}: use 'target', 'uniform', ('epsilon', eps), an SB3 model or policy, "
            "or a callable"
        )
    if isinstance(spec, (tuple, list)):
        if len(spec) != 2 or spec[0] != "epsilon" or not isinstance(spec[1], (int, float)):
            raise ValueError(f"behavior_policy {spec!r}: the tuple form is ('epsilon', eps)")
        return EpsilonBehavior(float(spec[1]), action_space)
    if isinstance(spec, BaseAlgorithm):
        spec = spec.policy
    if isinstance(spec, BasePolicy):
        if not hasattr(spec, "get_distribution"):
            raise ValueError(
                f"behavior_policy {type(spec).__name__} has no action distribution to give b(a|s); "
                "use a stochastic policy (PPO, A2C, A3C) or a callable obs -> (actions, log_probs)"
            )
        if spec.action_space != action_space:
            raise ValueError(f"behavior_policy acts in {spec.action_space}, but the env's action space is {action_space}")
        if spec.observation_space != observation_space:
            raise ValueError(
                f"behavior_policy observes {spec.observation_space}, but the env's observation space is {observation_space}"
            )
        return SB3PolicyBehavior(spec)
    if callable(spec):
        return CallableBehavior(spec)
    raise ValueError(f"unsupported behavior_policy {spec!r}")


def policy_copy_on_cpu(policy: BasePolicy) -> BasePolicy:
    """
    A fresh copy of ``policy`` on the CPU, in eval mode, rebuilt from its constructor arguments and
    weights as ``BasePolicy.save`` does (a deepcopy would also drag along the last forward pass).
    """
    clone = type(policy)(**policy._get_constructor_parameters())
    clone.load_state_dict(policy.state_dict())
    clone.set_training_mode(False)
    return clone.to("cpu")


def _describe(result: Any) -> str:
    if isinstance(result, tuple):
        return "a tuple of " + ", ".join(str(np.shape(item)) for item in result)
    return f"{type(result).__name__} of shape {np.shape(result)}"


def _batch_size(obs: np.ndarray | dict[str, np.ndarray]) -> int:
    if isinstance(obs, dict):
        return len(next(iter(obs.values())))
    return len(obs)
