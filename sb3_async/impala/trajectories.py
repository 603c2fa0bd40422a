"""
An actor's segment as one flat float32 vector: what travels through a collector slot (shared memory
on the local backend, the object store on Ray) from an IMPALA actor to the learner.

One actor's segment is ``n_envs`` trajectories of ``n_steps`` steps, time first::

    observations        [n_steps + 1, n_envs, *obs_shape]   (one block per key of a Dict space)
    actions             [n_steps, n_envs, *action_shape]
    rewards             [n_steps, n_envs]                    time-limit bootstraps folded in
    dones               [n_steps, n_envs]
    behavior_log_probs  [n_steps, n_envs]                    log mu(a|x) of the actor's policy

float32 holds every observation the policies read exactly (images are uint8; SB3's policies turn
observations into float32 before anything else), so the flat form loses nothing they use.
"""

from dataclasses import dataclass

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.preprocessing import get_action_dim, get_obs_shape

from sb3_async.offpac.loss import OffPolicyTrajectories


@dataclass(frozen=True)
class TrajectoryLayout:
    """
    Where each part of a segment lies in the flat vector (see the module docstring).

    :param n_steps: steps per trajectory (the unroll length)
    :param n_envs: trajectories per segment (the actor's envs)
    :param observation_shapes: each observation block's shape, keyed by the Dict space's keys (``None``: not a Dict)
    :param action_shape: one action's shape, as the policy's distribution reads it
    """

    n_steps: int
    n_envs: int
    observation_shapes: tuple[tuple[str | None, tuple[int, ...]], ...]
    action_shape: tuple[int, ...]

    @classmethod
    def of(cls, observation_space: spaces.Space, action_space: spaces.Space, n_steps: int, n_envs: int) -> "TrajectoryLayout":
        shapes: tuple[tuple[str | None, tuple[int, ...]], ...]
        if isinstance(observation_space, spaces.Dict):
            shapes = tuple((str(key), _int_shape(space)) for key, space in observation_space.spaces.items())
        else:
            shapes = ((None, _int_shape(observation_space)),)
        action_shape = () if isinstance(action_space, spaces.Discrete) else (get_action_dim(action_space),)
        return cls(n_steps, n_envs, shapes, action_shape)

    def _blocks(self) -> list[tuple[str, tuple[int, ...]]]:
        """``(name, shape)`` of each block, in order; observation blocks are named ``obs`` or ``obs:<key>``."""
        steps, envs = self.n_steps, self.n_envs
        blocks = [(_observation_block(key), (steps + 1, envs, *shape)) for key, shape in self.observation_shapes]
        blocks.append(("actions", (steps, envs, *self.action_shape)))
        blocks.extend((name, (steps, envs)) for name in ("rewards", "dones", "behavior_log_probs"))
        return blocks

    @property
    def size(self) -> int:
        return sum(int(np.prod(shape)) for _, shape in self._blocks())

    def write(self, segment: OffPolicyTrajectories, out: th.Tensor) -> None:
        """Write an actor's time-first segment into ``out``, a flat float32 tensor of :attr:`size` values."""
        parts = dict(self._parts(segment))
        offset = 0
        for name, shape in self._blocks():
            size = int(np.prod(shape))
            out[offset : offset + size].view(shape).copy_(parts[name].reshape(shape))
            offset += size

    def read(self, rows: th.Tensor) -> OffPolicyTrajectories:
        """
        ``rows``: ``[n_segments, size]``, segments written by :meth:`write`. Returns them as one batch of
        ``n_segments * n_envs`` trajectories, time first: segment ``i``'s env ``j`` is column ``i * n_envs + j``.
        """
        n_segments = rows.shape[0]
        blocks: dict[str, th.Tensor] = {}
        offset = 0
        for name, shape in self._blocks():
            size = int(np.prod(shape))
            block = rows[:, offset : offset + size].reshape(n_segments, *shape)
            # [segments, time, envs, ...] -> [time, segments * envs, ...]
            blocks[name] = block.transpose(0, 1).reshape(shape[0], n_segments * self.n_envs, *shape[2:])
            offset += size
        observations: th.Tensor | dict[str, th.Tensor]
        if self.observation_shapes[0][0] is None:
            observations = blocks["obs"]
        else:
            observations = {str(key): blocks[_observation_block(key)] for key, _ in self.observation_shapes}
        return OffPolicyTrajectories(
            observations=observations,
            actions=blocks["actions"],
            rewards=blocks["rewards"],
            dones=blocks["dones"],
            behavior_log_probs=blocks["behavior_log_probs"],
        )

    def _parts(self, segment: OffPolicyTrajectories) -> list[tuple[str, th.Tensor]]:
        observations = segment.observations
        if isinstance(observations, dict):
            parts = [(_observation_block(key), th.as_tensor(observations[str(key)])) for key, _ in self.observation_shapes]
        else:
            parts = [("obs", th.as_tensor(observations))]
        parts += [
            ("actions", segment.actions),
            ("rewards", segment.rewards),
            ("dones", segment.dones),
            ("behavior_log_probs", segment.behavior_log_probs),
        ]
        return [(name, tensor.to(th.float32)) for name, tensor in parts]


def _observation_block(key: str | None) -> str:
    return "obs" if key is None else f"obs:{key}"


def _int_shape(space: spaces.Space) -> tuple[int, ...]:
    return tuple(int(size) for size in get_obs_shape(space))
