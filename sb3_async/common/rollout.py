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


def ended_episodes(infos: list[dict], dones: np.ndarray) -> list[dict[str, float]]:
    """The Monitor statistics (and ``is_success``) of the episodes that just ended."""
    episodes: list[dict[str, float]] = []
    for idx, info in enumerate(infos):
        if dones[idx] and "episode" in info:
            episode = dict(info["episode"])
            if info.get("is_success") is not None:
                episode["is_success"] = info["is_success"]
            episodes.append(episode)
    return episodes


def truncations(infos: list[dict], dones: np.ndarray) -> Iterator[tuple[int, Any]]:
    """``(env index, terminal observation)`` of each episode that a time limit cut short."""
    for idx, info in enumerate(infos):
        if dones[idx] and info.get("terminal_observation") is not None and info.get("TimeLimit.truncated", False):
            yield idx, info["terminal_observation"]


def finish_episodes(
    infos: list[dict], dones: np.ndarray, rewards: np.ndarray, policy: BasePolicy, gamma: float
) -> list[dict[str, float]]:
    """
    The Monitor statistics of the episodes that just ended. For an episode cut by a time limit, add
    ``gamma * V(s_T)`` to its reward in place: a truncation is not a terminal state (SB3 issue #633).
    """
    for idx, terminal_observation in truncations(infos, dones):
        terminal_obs = policy.obs_to_tensor(terminal_observation)[0]
        with th.no_grad():
            rewards[idx] += gamma * policy.predict_values(terminal_obs)[0].item()  # type: ignore[attr-defined]
    return ended_episodes(infos, dones)
