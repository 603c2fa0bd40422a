"""Stepping a worker's envs the way SB3's ``collect_rollouts`` does: shared by every algorithm's worker."""

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.distributions import CategoricalDistribution
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy
from stable_baselines3.common.type_aliases import PyTorchObs
from stable_baselines3.common.vec_env.base_vec_env import VecEnvObs

CPU = th.device("cpu")  # where workers keep their tensors

# A worker's observations: an array, or a dict of arrays for a Dict space.
Observations = np.ndarray | dict[str, np.ndarray]


def as_observations(obs: VecEnvObs) -> Observations:
    """A VecEnv's observations as the workers hold them (Tuple observation spaces are refused at construction)."""
    assert not isinstance(obs, tuple), "Tuple observation spaces are refused at construction"
    return obs


def mode_dependent_module(policy: th.nn.Module) -> str | None:
    """
    The name of the first module of ``policy`` whose output depends on the training mode (BatchNorm,
    Dropout), or None: then ``set_training_mode`` changes nothing, and a worker need not walk the
    modules twice a segment to call it.
    """
    for name, module in policy.named_modules():
        if isinstance(module, (th.nn.modules.batchnorm._BatchNorm, th.nn.modules.dropout._DropoutNd)):
            return f"{name} ({type(module).__name__})"
    return None


def actions_for_env(actions: np.ndarray, action_space: spaces.Space, policy: BasePolicy) -> np.ndarray:
    """What the env is given for the policy's ``actions``: rescaled if squashed, else clipped to the bounds."""
    if not isinstance(action_space, spaces.Box):
        return actions
    if policy.squash_output:
        return policy.unscale_action(actions)
    return np.clip(actions, action_space.low, action_space.high)


def has_plain_categorical_head(policy: BasePolicy) -> bool:
    """
    Whether ``policy`` draws its actions as SB3's ``ActorCriticPolicy`` does for a Discrete action
    space: a ``CategoricalDistribution`` over ``action_net``'s logits, with ``get_distribution`` and
    ``_get_action_dist_from_latent`` as SB3 wrote them. Then :func:`sample_categorical` and
    :func:`categorical_log_prob_and_entropy` compute what those distribution objects do.
    """
    if not isinstance(policy, ActorCriticPolicy) or type(policy.action_dist) is not CategoricalDistribution:
        return False
    policy_class = type(policy)
    return (
        policy_class.get_distribution is ActorCriticPolicy.get_distribution
        and policy_class._get_action_dist_from_latent is ActorCriticPolicy._get_action_dist_from_latent
    )


def actor_logits(policy: ActorCriticPolicy, obs: PyTorchObs) -> th.Tensor:
    """The action logits of ``policy.get_distribution(obs)`` (see :func:`has_plain_categorical_head`)."""
    features = BasePolicy.extract_features(policy, obs, policy.pi_features_extractor)
    return policy.action_net(policy.mlp_extractor.forward_actor(features))


def sample_categorical(logits: th.Tensor) -> th.Tensor:
    """
    One action per row of ``logits``, drawn as torch's ``Categorical(logits=logits).sample()`` draws
    it (one ``multinomial`` over the softmax), without building the distribution object: its
    per-call normalization (a ``logsumexp``, about 40 µs on a batch of 8) cost more than the actor's
    forward pass.
    """
    return th.multinomial(th.softmax(logits, dim=-1), 1, True).squeeze(-1)


def sample_actions(policy: ActorCriticPolicy, obs: PyTorchObs, plain_categorical: bool) -> th.Tensor:
    """
    One draw from ``policy.get_distribution(obs)``, through the categorical shortcut where
    ``plain_categorical`` (:func:`has_plain_categorical_head`) says it computes the same.
    """
    if plain_categorical:
        return sample_categorical(actor_logits(policy, obs))
    return policy.get_distribution(obs).get_actions()


def sample_with_log_prob(policy: ActorCriticPolicy, obs: PyTorchObs, plain_categorical: bool) -> tuple[th.Tensor, th.Tensor]:
    """
    One draw from ``policy.get_distribution(obs)`` and its log-probability, through the categorical
    shortcut where ``plain_categorical`` (:func:`has_plain_categorical_head`) says it computes the same.
    """
    if plain_categorical:
        logits = actor_logits(policy, obs)
        actions = sample_categorical(logits)
        return actions, categorical_log_prob(logits, actions)
    distribution = policy.get_distribution(obs)
    actions = distribution.get_actions()
    return actions, distribution.log_prob(actions)


def categorical_log_prob(logits: th.Tensor, actions: th.Tensor) -> th.Tensor:
    """``log_prob(actions)`` of SB3's ``CategoricalDistribution`` over ``logits``."""
    return _taken(th.log_softmax(logits, dim=-1), actions)


def categorical_log_prob_and_entropy(logits: th.Tensor, actions: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
    """``log_prob(actions)`` and ``entropy()`` of SB3's ``CategoricalDistribution`` over ``logits``, from one log-softmax."""
    log_probs = th.log_softmax(logits, dim=-1)
    # As torch's Categorical.entropy: a probability of 0 contributes 0, not 0 * -inf.
    entropy = -(log_probs.clamp(min=th.finfo(log_probs.dtype).min) * log_probs.exp()).sum(-1)
    return _taken(log_probs, actions), entropy


def _taken(log_probs: th.Tensor, actions: th.Tensor) -> th.Tensor:
    """Each row's log-probability of the action taken in it."""
    return log_probs.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)


class StepLog:
    """
    A segment's env steps as SB3's ``collect_rollouts`` holds them when it calls ``callback.on_step()``
    (``new_obs``, ``rewards``, ``dones``, ``infos``, ``actions``, ...), for the learner to hand to its
    callbacks, so that a callback written for A2C or DQN reads the same ``self.locals``.

    Each column is written into an array of ``n_steps`` rows allocated at a segment's first step: one
    small copy per value (VecFrameStack, for one, returns the same array every step, so a value must
    be copied) and nothing to stack at the end.

    :param n_steps: env steps per segment
    """

    def __init__(self, n_steps: int) -> None:
        self.n_steps = n_steps
        self._columns: dict[str, Any] = {}
        self._n_added = 0

    def add(self, **step: Any) -> None:
        """Record one ``VecEnv.step()``: arrays (or dicts of them) with a leading ``n_envs``, tensors, or ``infos``."""
        for key, value in step.items():
            column = self._columns.get(key)
            if column is None:
                column = self._columns[key] = _empty_column(value, self.n_steps)
            _store(column, self._n_added, value)
        self._n_added += 1

    def pop(self) -> dict[str, Any]:
        """The steps since the last call, each column time-first ``[n_steps, n_envs, ...]`` (``infos``: one list per step)."""
        columns, n_added = self._columns, self._n_added
        self._columns, self._n_added = {}, 0
        if n_added < self.n_steps:
            columns = {key: _first_rows(column, n_added) for key, column in columns.items()}
        return columns


def _empty_column(value: Any, n_steps: int) -> Any:
    if isinstance(value, dict):
        return {key: _empty_column(item, n_steps) for key, item in value.items()}
    if isinstance(value, th.Tensor):
        value = value.detach().numpy()
    if isinstance(value, np.ndarray):
        return np.empty((n_steps, *value.shape), dtype=value.dtype)
    return []  # infos: DummyVecEnv and SubprocVecEnv give a new list every step


def _store(column: Any, row: int, value: Any) -> None:
    if isinstance(column, dict):
        for key, item in value.items():
            _store(column[key], row, item)
    elif isinstance(column, list):
        column.append(value)
    else:
        column[row] = value.detach().numpy() if isinstance(value, th.Tensor) else value


def _first_rows(column: Any, n_rows: int) -> Any:
    if isinstance(column, dict):
        return {key: _first_rows(item, n_rows) for key, item in column.items()}
    return column[:n_rows]


def truncations(infos: list[dict], dones: np.ndarray) -> Iterator[tuple[int, Any]]:
    """``(env index, terminal observation)`` of each episode that a time limit cut short."""
    for idx, info in enumerate(infos):
        if dones[idx] and info.get("terminal_observation") is not None and info.get("TimeLimit.truncated", False):
            yield idx, info["terminal_observation"]


def bootstrap_truncations(
    infos: list[dict], dones: np.ndarray, rewards: np.ndarray, policy: ActorCriticPolicy, gamma: float
) -> None:
    """
    For each episode that a time limit just cut short, add ``gamma * V(s_T)`` to its reward in place:
    a truncation is not a terminal state (SB3 issue #633).
    """
    for idx, terminal_observation in truncations(infos, dones):
        terminal_obs = policy.obs_to_tensor(terminal_observation)[0]
        with th.no_grad():
            rewards[idx] += gamma * policy.predict_values(terminal_obs)[0].item()


# What a worker checks before it sends a segment, in this order: the first that is not finite is named.
CHECKED_FOR_FINITE = (("rewards", "reward"), ("new_obs", "observation"), ("values", "value estimate"))


def first_non_finite(steps: dict[str, Any]) -> tuple[str, int, int, float] | None:
    """
    ``(what, env, step in the segment, value)`` of the first reward, observation or value estimate in a segment's
    step log (time-first columns) that is not finite, or None. Vectorised: a few microseconds for
    small envs, and nothing for integer observations (images), which are always finite.
    """
    for key, what in CHECKED_FOR_FINITE:
        column = steps.get(key)
        parts = column.items() if isinstance(column, dict) else [(None, column)]
        for name, array in parts:
            if array is None:
                continue
            values = np.asarray(array)
            if values.ndim < 2 or not np.issubdtype(values.dtype, np.floating):
                continue
            finite = np.isfinite(values.reshape(*values.shape[:2], -1)).all(axis=2)
            if not finite.all():
                step, env = (int(index) for index in np.argwhere(~finite)[0])
                bad = values[step, env].reshape(-1)
                label = what if name is None else f"{what} {name!r}"
                return label, env, step, float(bad[~np.isfinite(bad)][0])
    return None


def rows_of(column: Any) -> Any:
    """A step log column ``[n_steps, n_envs, ...]`` as rows ``[n_steps * n_envs, ...]``, time-major; dicts key by key."""
    if isinstance(column, dict):
        return {key: rows_of(value) for key, value in column.items()}
    return column.reshape(-1, *column.shape[2:])


def one_row(observation: Any, like: Any) -> Any:
    """One env's observation as a batch of one, in the dtype of the step log's column ``like``."""
    if isinstance(like, dict):
        return {key: one_row(observation[key], like[key]) for key in like}
    return np.asarray(observation, dtype=like.dtype).reshape(1, *like.shape[2:])


def concatenate_observations(parts: list[Any]) -> Any:
    """Batches of observations (arrays, or dicts of them) as one batch, in order."""
    if isinstance(parts[0], dict):
        return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
    return np.concatenate(parts)
