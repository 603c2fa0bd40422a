"""What an A3C worker does between two parameter syncs: n_steps in its envs, then the A3C loss."""

from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import DictRolloutBuffer, RolloutBuffer
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.type_aliases import RolloutBufferSamples
from stable_baselines3.common.utils import explained_variance, obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv
from torch.nn import functional as F

from sb3_async.common.collectors import Segment, WorkerLogic
from sb3_async.common.rollout import StepLog, actions_for_env, bootstrap_truncations


def a3c_loss(
    policy: ActorCriticPolicy,
    batch: RolloutBufferSamples,
    ent_coef: float,
    vf_coef: float,
    normalize_advantage: bool,
) -> tuple[th.Tensor, dict[str, float]]:
    """
    The A3C loss (Mnih et al. 2016, Algorithm S3), averaged over the segment as SB3's A2C does:

        L = -A(s, a) log pi(a|s)  +  vf_coef * (R - V(s))^2  -  ent_coef * H(pi(.|s))

    with R the n-step (or TD(lambda)) return and A = R - V(s) the advantage, both held fixed.
    """
    actions = batch.actions
    if isinstance(policy.action_space, spaces.Discrete):
        actions = actions.long().flatten()
    values, log_prob, entropy = policy.evaluate_actions(batch.observations, actions)
    advantages = batch.advantages
    if normalize_advantage:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)

    policy_loss = -(advantages * log_prob).mean()
    value_loss = F.mse_loss(batch.returns, values.flatten())
    # Without an analytical entropy (e.g. squashed Gaussian), -log pi(a|s) estimates it.
    entropy_loss = -th.mean(entropy) if entropy is not None else th.mean(log_prob)
    loss = policy_loss + vf_coef * value_loss + ent_coef * entropy_loss

    stats = {"policy_loss": policy_loss.item(), "value_loss": value_loss.item(), "entropy_loss": entropy_loss.item()}
    if hasattr(policy, "log_std"):
        stats["std"] = th.exp(policy.log_std).mean().item()
    return loss, stats


class A3CWorker(WorkerLogic):
    """
    Runs ``n_steps`` in the worker's envs with its local policy (exactly as SB3's
    ``OnPolicyAlgorithm.collect_rollouts``, minus callbacks, which are the learner's), computes
    returns and advantages in an SB3 rollout buffer, and returns :func:`a3c_loss`.
    """

    policy: ActorCriticPolicy

    def __init__(
        self,
        env: VecEnv,
        policy: ActorCriticPolicy,
        worker_id: int,
        n_steps: int,
        gamma: float,
        gae_lambda: float,
        ent_coef: float,
        vf_coef: float,
        normalize_advantage: bool,
        use_sde: bool,
        sde_sample_freq: int,
        rollout_buffer_class: type[RolloutBuffer] | None,
        rollout_buffer_kwargs: dict[str, Any],
    ) -> None:
        super().__init__(env, policy, worker_id)
        self.n_steps = n_steps
        self.gamma = gamma
        self.ent_coef = ent_coef
        self.vf_coef = vf_coef
        self.normalize_advantage = normalize_advantage
        self.use_sde = use_sde
        self.sde_sample_freq = sde_sample_freq
        if rollout_buffer_class is None:
            rollout_buffer_class = DictRolloutBuffer if isinstance(env.observation_space, spaces.Dict) else RolloutBuffer
        self.rollout_buffer = rollout_buffer_class(
            n_steps,
            env.observation_space,  # type: ignore[arg-type]
            env.action_space,
            device="cpu",
            gamma=gamma,
            gae_lambda=gae_lambda,
            n_envs=env.num_envs,
            **rollout_buffer_kwargs,
        )
        self._last_obs = env.reset()
        self._last_episode_starts = np.ones((env.num_envs,), dtype=bool)
        self.step_log = StepLog(n_steps)

    def compute_loss(self) -> tuple[th.Tensor, Segment]:
        self._collect_segment()
        self.policy.set_training_mode(True)
        batch = next(self.rollout_buffer.get(batch_size=None))
        loss, stats = a3c_loss(self.policy, batch, self.ent_coef, self.vf_coef, self.normalize_advantage)
        stats["explained_variance"] = float(
            explained_variance(self.rollout_buffer.values.flatten(), self.rollout_buffer.returns.flatten())
        )
        return loss, Segment(n_env_steps=self.n_steps * self.env.num_envs, steps=self.step_log.pop(), stats=stats)

    def _collect_segment(self) -> None:
        env, policy, buffer = self.env, self.policy, self.rollout_buffer
        policy.set_training_mode(False)
        buffer.reset()
        if self.use_sde:
            policy.reset_noise(env.num_envs)
        for step in range(self.n_steps):
            if self.use_sde and self.sde_sample_freq > 0 and step % self.sde_sample_freq == 0:
                policy.reset_noise(env.num_envs)
            with th.no_grad():
                actions, values, log_probs = policy(obs_as_tensor(self._last_obs, "cpu"))  # type: ignore[arg-type]
            actions = actions.numpy()
            clipped_actions = actions_for_env(actions, env.action_space, policy)
            new_obs, rewards, dones, infos = env.step(clipped_actions)
            self.step_log.add(
                obs_tensor=self._last_obs,
                actions=actions,
                clipped_actions=clipped_actions,
                values=values,
                log_probs=log_probs,
                new_obs=new_obs,
                rewards=rewards,
                dones=dones,
                infos=infos,
            )
            bootstrap_truncations(infos, dones, rewards, policy, self.gamma)

            if isinstance(env.action_space, spaces.Discrete):
                actions = actions.reshape(-1, 1)
            buffer.add(self._last_obs, actions, rewards, self._last_episode_starts, values, log_probs)  # type: ignore[arg-type]
            self._last_obs = new_obs
            self._last_episode_starts = dones

        with th.no_grad():
            last_values = policy.predict_values(obs_as_tensor(new_obs, "cpu"))  # type: ignore[arg-type]
        buffer.compute_returns_and_advantage(last_values=last_values, dones=dones)
