"""
What an OffPolicyAC worker does between two parameter syncs.

ACER's design (Wang et al. 2017): each worker keeps its own replay memory of whole segments, so
V-trace can run its n-step traces over them, nothing crosses processes but gradients, and the
memory grows with the workers. On each "go" from the learner, a worker either

- acts ``n_steps`` in its envs with the behaviour policy b, stores the segment, and returns the
  V-trace loss on it (a "fresh" gradient); this earns it ``replay_ratio`` replay credits; or
- spends a credit: returns the loss on ``batch_size // n_steps`` segments drawn uniformly from its
  memory (a "replay" gradient, which counts no env steps).

Each gradient is its own update at the learner, as in ACER, so a replayed segment is always
weighted with the freshest pi the worker has.
"""

from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.preprocessing import get_action_dim, get_obs_shape
from stable_baselines3.common.vec_env import VecEnv

from sb3_async.common.collectors import SegmentResult, WorkerLogic
from sb3_async.common.rollout import (
    Observations,
    StepLog,
    actions_for_env,
    as_observations,
    bootstrap_truncations,
    mode_dependent_module,
)
from sb3_async.offpac.behavior import BehaviorPolicy
from sb3_async.offpac.loss import OffPolicyTrajectories, off_policy_ac_loss


class SegmentMemory:
    """
    A worker's replay memory: the last ``capacity`` single-env trajectories of ``n_steps`` steps,
    each with its ``n_steps + 1`` observations (the last one is the bootstrap state).

    :param capacity: number of trajectories kept (first in, first out)
    :param n_steps: length of each trajectory
    :param observation_space: the worker env's observation space
    :param action_space: the worker env's action space
    """

    def __init__(self, capacity: int, n_steps: int, observation_space: spaces.Space, action_space: spaces.Space) -> None:
        self.capacity = capacity
        self.n_steps = n_steps
        self.size = 0
        self._next = 0
        if isinstance(observation_space, spaces.Dict):
            self.observations: Observations = {
                key: np.zeros((capacity, n_steps + 1, *get_obs_shape(space)), dtype=space.dtype)
                for key, space in observation_space.spaces.items()
            }
        else:
            shape = get_obs_shape(observation_space)
            self.observations = np.zeros((capacity, n_steps + 1, *shape), dtype=observation_space.dtype)
        if isinstance(action_space, spaces.Discrete):
            action_shape: tuple[int, ...] = ()
        else:
            action_shape = (get_action_dim(action_space),)
        self.actions = np.zeros((capacity, n_steps, *action_shape), dtype=np.float32)  # as SB3's buffers keep them
        self.rewards = np.zeros((capacity, n_steps), dtype=np.float32)
        self.dones = np.zeros((capacity, n_steps), dtype=np.float32)
        self.behavior_log_probs = np.zeros((capacity, n_steps), dtype=np.float32)

    @property
    def n_transitions(self) -> int:
        return self.size * self.n_steps

    def add(self, segment: OffPolicyTrajectories) -> None:
        """Store each env's trajectory of a time-first ``[T, B]`` segment."""
        n_envs = segment.rewards.shape[1]
        rows = (self._next + np.arange(n_envs)) % self.capacity

        def store(memory: np.ndarray, new: th.Tensor) -> None:
            memory[rows] = _env_first(new).reshape((n_envs, *memory.shape[1:]))

        _map_observations(store, self.observations, segment.observations)
        store(self.actions, segment.actions)
        self.rewards[rows] = _env_first(segment.rewards)
        self.dones[rows] = _env_first(segment.dones)
        self.behavior_log_probs[rows] = _env_first(segment.behavior_log_probs)
        self._next = int((self._next + n_envs) % self.capacity)
        self.size = min(self.size + n_envs, self.capacity)

    def sample(self, n_trajectories: int, rng: np.random.Generator) -> OffPolicyTrajectories:
        """``n_trajectories`` stored trajectories, uniformly with replacement, as a time-first segment."""
        rows = rng.integers(self.size, size=n_trajectories)

        def pick(array: np.ndarray) -> th.Tensor:
            return th.as_tensor(array[rows]).transpose(0, 1)

        return OffPolicyTrajectories(
            observations=_map_observations(pick, self.observations),
            actions=pick(self.actions),
            rewards=pick(self.rewards),
            dones=pick(self.dones),
            behavior_log_probs=pick(self.behavior_log_probs),
        )


def _env_first(tensor: th.Tensor) -> np.ndarray:
    return tensor.transpose(0, 1).numpy()


def _map_observations(function: Any, observations: Any, *others: Any) -> Any:
    if isinstance(observations, dict):
        return {key: function(value, *(other[key] for other in others)) for key, value in observations.items()}
    return function(observations, *others)


class BehaviorRollout:
    """
    Acts ``n_steps`` in a VecEnv with a behaviour policy b and records each step's ``log b(a|s)``:
    the experience V-trace learns from (OffPolicyAC's workers, IMPALA's actors). Consecutive
    segments share a row: one's last observation is the next one's first, so no step is lost.
    A time limit's cut is bootstrapped into its reward with ``gamma * V(s_T)``, as SB3's A2C does.

    :param env: the worker's envs
    :param policy: the worker's local copy of the target policy
    :param behavior: the behaviour policy b
    :param n_steps: steps per segment in each env
    :param gamma: the discount, for the time-limit bootstraps
    :param use_sde: whether the policy uses gSDE
    :param sde_sample_freq: gSDE's noise resampling period in steps (-1: once per segment)
    """

    def __init__(
        self,
        env: VecEnv,
        policy: ActorCriticPolicy,
        behavior: BehaviorPolicy,
        n_steps: int,
        gamma: float,
        use_sde: bool = False,
        sde_sample_freq: int = -1,
    ) -> None:
        self.env = env
        self.policy = policy
        self.behavior = behavior
        self.n_steps = n_steps
        self.gamma = gamma
        self.use_sde = use_sde
        self.sde_sample_freq = sde_sample_freq
        self._last_obs = as_observations(env.reset())
        # What the learner's callbacks see of each step.
        self.step_log = StepLog(n_steps)
        # set_training_mode walks every module: worth it only where one depends on the mode.
        self.mode_matters = mode_dependent_module(policy) is not None

    def run(self) -> OffPolicyTrajectories:
        """Act one segment; return it time-first, ``[n_steps (+ 1 for observations), n_envs, ...]``."""
        env, policy = self.env, self.policy
        if self.mode_matters:
            policy.set_training_mode(False)
        observations, actions, rewards, dones, behavior_log_probs = [self._last_obs], [], [], [], []
        for step in range(self.n_steps):
            # gSDE, as SB3 samples it: a new noise matrix per segment, or every sde_sample_freq steps.
            if self.use_sde and (step == 0 or (self.sde_sample_freq > 0 and step % self.sde_sample_freq == 0)):
                policy.reset_noise(env.num_envs)
            step_actions, step_log_probs = self.behavior.act(self._last_obs, policy)
            env_actions = actions_for_env(step_actions, env.action_space, policy)
            step_obs, step_rewards, step_dones, infos = env.step(env_actions)
            new_obs = as_observations(step_obs)
            # What OffPolicyAlgorithm.collect_rollouts hands its callbacks: actions as given to the env.
            self.step_log.add(
                actions=env_actions,
                buffer_actions=step_actions,
                new_obs=new_obs,
                rewards=step_rewards,
                dones=step_dones,
                infos=infos,
            )
            bootstrap_truncations(infos, step_dones, step_rewards, policy, self.gamma)
            actions.append(step_actions)
            rewards.append(step_rewards)
            dones.append(step_dones)
            behavior_log_probs.append(step_log_probs)
            observations.append(new_obs)
            self._last_obs = new_obs
        if self.mode_matters:
            policy.set_training_mode(True)

        def stack(rows: list) -> th.Tensor:
            return th.as_tensor(np.stack(rows))

        return OffPolicyTrajectories(
            observations=_map_observations(lambda *rows: stack(list(rows)), *observations),
            actions=stack(actions),
            rewards=stack(rewards).float(),
            dones=stack(dones).float(),
            behavior_log_probs=stack(behavior_log_probs).float(),
        )


class OffPACWorker(WorkerLogic):
    """
    Acts with the behaviour policy (a :class:`BehaviorRollout`), keeps a :class:`SegmentMemory`, and returns the V-trace
    off-policy actor-critic loss (:func:`~sb3_async.offpac.loss.off_policy_ac_loss`) of either a
    fresh segment or replayed ones (see the module docstring for which).
    """

    policy: ActorCriticPolicy

    def __init__(
        self,
        env: VecEnv,
        policy: ActorCriticPolicy,
        worker_id: int,
        behavior: BehaviorPolicy,
        n_steps: int,
        gamma: float,
        rho_bar: float,
        c_bar: float,
        trace_lambda: float,
        ent_coef: float,
        vf_coef: float,
        replay_ratio: float,
        replay_capacity: int,
        replay_starts: int,
        replay_trajectories: int,
        use_sde: bool = False,
        sde_sample_freq: int = -1,
    ) -> None:
        super().__init__(env, policy, worker_id)
        self.n_steps = n_steps
        self.loss_kwargs: dict[str, Any] = dict(
            gamma=gamma, rho_bar=rho_bar, c_bar=c_bar, trace_lambda=trace_lambda, ent_coef=ent_coef, vf_coef=vf_coef
        )
        self.replay_ratio = replay_ratio
        self.replay_starts = replay_starts
        self.replay_trajectories = replay_trajectories
        self.memory = (
            SegmentMemory(replay_capacity, n_steps, env.observation_space, env.action_space) if replay_ratio > 0 else None
        )
        self._replay_credit = 0.0
        self._rng = np.random.default_rng(np.random.randint(2**31))
        self.rollout = BehaviorRollout(env, policy, behavior, n_steps, gamma, use_sde, sde_sample_freq)

    def compute_loss(self) -> tuple[th.Tensor, SegmentResult]:
        if self.rollout.mode_matters:
            self.policy.set_training_mode(True)
        if self.memory is not None and self._replay_credit >= 1.0 and self.memory.n_transitions >= self.replay_starts:
            self._replay_credit -= 1.0
            replayed = self.memory.sample(self.replay_trajectories, self._rng)
            loss, stats = off_policy_ac_loss(self.policy, replayed, **self.loss_kwargs)
            return loss, SegmentResult(n_env_steps=0, stats={**stats, "offpac/replay_fraction": 1.0})

        fresh = self.rollout.run()
        # A non-finite reward makes this gradient one the learner drops; replaying it would only repeat that.
        if self.memory is not None and th.isfinite(fresh.rewards).all():
            self.memory.add(fresh)
            self._replay_credit += self.replay_ratio
        loss, stats = off_policy_ac_loss(self.policy, fresh, **self.loss_kwargs)
        stats["offpac/replay_fraction"] = 0.0
        n_env_steps = self.n_steps * self.env.num_envs
        return loss, SegmentResult(n_env_steps=n_env_steps, steps=self.rollout.step_log.pop(), stats=stats)
