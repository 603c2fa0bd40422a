"""
What an IMPALA actor does between two parameter copies: act ``n_steps`` in its envs with the
newest policy it has, and hand the segment, with the log-probabilities of the actions it took,
to the learner. No loss, no backward pass: the learner does all the gradient work, in batches.
"""

import torch as th
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.vec_env import VecEnv

from sb3_async.common.collectors import ActorLogic, SegmentResult
from sb3_async.impala.trajectories import TrajectoryLayout
from sb3_async.offpac.behavior import TargetBehavior
from sb3_async.offpac.worker import BehaviorRollout


class IMPALAActor(ActorLogic):
    """
    An IMPALA actor: its behaviour policy is its own copy of the learner's policy, as of its last
    copy, so the policy lag V-trace corrects for is the learner's updates since then.

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
        self.layout = layout
        self.rollout = BehaviorRollout(env, policy, TargetBehavior(), n_steps, gamma)

    def act(self, out: th.Tensor) -> SegmentResult:
        segment = self.rollout.run()
        self.layout.write(segment, out)
        n_env_steps = self.layout.n_steps * self.layout.n_envs
        return SegmentResult(n_env_steps=n_env_steps, steps=self.rollout.step_log.pop())
