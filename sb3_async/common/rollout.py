"""Stepping a worker's envs the way SB3's ``collect_rollouts`` does: shared by every algorithm's worker."""

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import BasePolicy


def actions_for_env(actions: np.ndarray, action_space: spaces.Space, policy: BasePolicy) -> np.ndarray:
    """What the env is given for the policy's ``actions``: rescaled if squashed, else clipped to the bounds."""
    if not isinstance(action_space, spaces.Box):
        return actions
    if policy.squash_output:
        return policy.unscale_action(actions)
    return np.clip(actions, action_space.low, action_space.high)


class StepLog:
    """
    A segment's env steps as SB3's ``collect_rollouts`` holds them when it calls ``callback.on_step()``
    (``new_obs``, ``rewards``, ``dones``, ``infos``, ``actions``, ...): the learner hands them to its
    callbacks, so that a callback written for A2C or DQN reads the same ``self.locals``.
    """

    def __init__(self) -> None:
        self._columns: dict[str, list[Any]] = {}

    def add(self, **step: Any) -> None:
        """Record one ``VecEnv.step()``. Arrays are copied: VecFrameStack, for one, returns the same array every step."""
        for key, value in step.items():
            self._columns.setdefault(key, []).append(_copy_step_value(value))

    def pop(self) -> dict[str, Any]:
        """The steps since the last call, each column time-first ``[n_steps, n_envs, ...]`` (``infos``: one list per step)."""
        columns, self._columns = self._columns, {}
        return {key: _stack(values) for key, values in columns.items()}


def _copy_step_value(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: np.array(item) for key, item in value.items()}
    if isinstance(value, th.Tensor):
        return value.detach().numpy().copy()
    if isinstance(value, np.ndarray):
        return value.copy()
    return value  # infos: DummyVecEnv and SubprocVecEnv already give a new list every step


def _stack(values: list[Any]) -> Any:
    if isinstance(values[0], dict):
        return {key: np.stack([value[key] for value in values]) for key in values[0]}
    if isinstance(values[0], np.ndarray):
        return np.stack(values)
    return values


def truncations(infos: list[dict], dones: np.ndarray) -> Iterator[tuple[int, Any]]:
    """``(env index, terminal observation)`` of each episode that a time limit cut short."""
    for idx, info in enumerate(infos):
        if dones[idx] and info.get("terminal_observation") is not None and info.get("TimeLimit.truncated", False):
            yield idx, info["terminal_observation"]


def bootstrap_truncations(infos: list[dict], dones: np.ndarray, rewards: np.ndarray, policy: BasePolicy, gamma: float) -> None:
    """
    For each episode that a time limit just cut short, add ``gamma * V(s_T)`` to its reward in place:
    a truncation is not a terminal state (SB3 issue #633).
    """
    for idx, terminal_observation in truncations(infos, dones):
        terminal_obs = policy.obs_to_tensor(terminal_observation)[0]
        with th.no_grad():
            rewards[idx] += gamma * policy.predict_values(terminal_obs)[0].item()  # type: ignore[attr-defined]
