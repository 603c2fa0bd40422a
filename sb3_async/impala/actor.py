"""
What an IMPALA actor does between two parameter copies: act ``n_steps`` in its envs with the
newest policy it has, and hand the segment, with the log-probabilities of the actions it took,
to the learner. No loss, no backward pass: the learner does all the gradient work, in batches.
"""

from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.utils import obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv

from sb3_async.common.collectors import ActorLogic, SegmentResult
from sb3_async.common.rollout import (
    CPU,
    StepLog,
    actions_for_env,
    as_observations,
    concatenate_observations,
    has_plain_categorical_head,
    mode_dependent_module,
    one_row,
    sample_with_log_prob,
    truncations,
)
from sb3_async.impala.trajectories import TrajectoryLayout
from sb3_async.offpac.loss import OffPolicyTrajectories


class IMPALAActor(ActorLogic):
    """
    An IMPALA actor: its behaviour policy mu is its own copy of the learner's policy, as of its
    last copy, so the policy lag V-trace corrects for is the learner's updates since then.

    A step runs the actor half of the policy only: the action and ``log mu(a|x)`` from one
    distribution. No value is computed while acting (that would cost a fifth of an actor's time;
    the learner computes V with its own parameters), so the callbacks' ``self.locals`` hold
    ``log_probs`` but not A2C's ``values``. The final observation of each episode a time limit cut
    adds ``gamma * V(s_T)`` to its reward, as SB3's A2C does. Consecutive segments share a row: one's
    last observation is the next one's first, so no step is lost between unrolls.

    :param env: the actor's envs
    :param policy: its copy of the learner's policy
    :param worker_id: index of this actor, from 0
    :param n_steps: the unroll length: steps per trajectory
    :param gamma: the discount, for the time-limit bootstraps
    :param layout: where each part of a segment goes in the flat vector the learner reads
    """

    policy: ActorCriticPolicy

    def __init__(
        self, env: VecEnv, policy: ActorCriticPolicy, worker_id: int, n_steps: int, gamma: float, layout: TrajectoryLayout
    ) -> None:
        super().__init__(env, policy, worker_id)
        if layout.n_envs != env.num_envs or layout.n_steps != n_steps:
            raise ValueError(f"actor {worker_id} has {env.num_envs} envs and unrolls {n_steps} steps; its layout is {layout}")
        self.n_steps = n_steps
        self.gamma = gamma
        self.layout = layout
        self.step_log = StepLog(n_steps)
        self._last_obs = as_observations(env.reset())
        # Acting is sampling, so a module that acts differently in training (dropout, BatchNorm) acts as in evaluation.
        if mode_dependent_module(policy) is not None:
            policy.set_training_mode(False)
        self.plain_categorical = has_plain_categorical_head(policy)

    def act(self, out: th.Tensor) -> SegmentResult:
        env, policy = self.env, self.policy
        for _ in range(self.n_steps):
            with th.no_grad():
                actions, log_probs = sample_with_log_prob(policy, obs_as_tensor(self._last_obs, CPU), self.plain_categorical)
            actions_array = actions.reshape((-1, *env.action_space.shape)).numpy()  # type: ignore[misc]
            clipped_actions = actions_for_env(actions_array, env.action_space, policy)
            new_obs, rewards, dones, infos = env.step(clipped_actions)
            # What SB3's on-policy collect_rollouts has in locals() for the learner's callbacks (but values).
            self.step_log.add(
                obs_tensor=self._last_obs,
                actions=actions_array,
                clipped_actions=clipped_actions,
                log_probs=log_probs,
                new_obs=new_obs,
                rewards=rewards,
                dones=dones,
                infos=infos,
            )
            self._last_obs = as_observations(new_obs)
        steps = self.step_log.pop()
        observations = concatenate_observations([steps["obs_tensor"], _one_step(self._last_obs)])
        segment = OffPolicyTrajectories(
            observations=_as_tensors(observations),
            actions=th.as_tensor(steps["actions"]),
            rewards=th.as_tensor(self._bootstrapped_rewards(steps)),
            dones=th.as_tensor(steps["dones"]),
            behavior_log_probs=th.as_tensor(steps["log_probs"]),
        )
        self.layout.write(segment, out)
        return SegmentResult(n_env_steps=self.n_steps * env.num_envs, steps=steps)

    def _bootstrapped_rewards(self, steps: dict[str, Any]) -> np.ndarray:
        """
        The segment's rewards, with ``gamma * V(s_T)`` added where a time limit cut an episode (a truncation is not
        a terminal state, SB3 issue #633): one forward pass over those final observations, if there are any.
        """
        rewards = steps["rewards"].astype(np.float32)  # a copy: callbacks see the env's rewards
        truncated = [
            (step, idx, obs)
            for step in range(self.n_steps)
            for idx, obs in truncations(steps["infos"][step], steps["dones"][step])
        ]
        if truncated:
            final_observations = concatenate_observations([one_row(obs, steps["obs_tensor"]) for _, _, obs in truncated])
            with th.no_grad():
                final_values = self.policy.predict_values(obs_as_tensor(final_observations, CPU)).flatten().numpy()
            for (step, idx, _), final_value in zip(truncated, final_values, strict=True):
                rewards[step, idx] += self.gamma * final_value
        return rewards


def _one_step(observations: Any) -> Any:
    """A batch of the envs' observations as one more time step: ``[1, n_envs, ...]``."""
    if isinstance(observations, dict):
        return {key: value[None] for key, value in observations.items()}
    return observations[None]


def _as_tensors(observations: Any) -> th.Tensor | dict[str, th.Tensor]:
    if isinstance(observations, dict):
        return {key: th.as_tensor(value) for key, value in observations.items()}
    return th.as_tensor(observations)
