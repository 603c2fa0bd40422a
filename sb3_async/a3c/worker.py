"""What an A3C worker does between two parameter syncs: n_steps in its envs, then the A3C loss (feed-forward or LSTM)."""

from typing import Any, ClassVar

import numpy as np
import torch as th
from gymnasium import spaces
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from sb3_contrib.common.recurrent.type_aliases import RNNStates
from stable_baselines3.common.buffers import DictRolloutBuffer, RolloutBuffer
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.type_aliases import PyTorchObs
from stable_baselines3.common.utils import explained_variance, obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv
from torch.nn import functional as F

from sb3_async.common.collectors import SegmentResult, WorkerLogic
from sb3_async.common.rollout import (
    CPU,
    StepLog,
    as_observations,
    actions_for_env,
    bootstrap_truncations,
    categorical_log_prob_and_entropy,
    concatenate_observations,
    has_plain_categorical_head,
    mode_dependent_module,
    one_row,
    rows_of,
    sample_actions,
    truncations,
)


def a3c_loss(
    values: th.Tensor,
    log_prob: th.Tensor,
    entropy: th.Tensor | None,
    returns: th.Tensor,
    advantages: th.Tensor,
    ent_coef: float,
    vf_coef: float,
    normalize_advantage: bool,
) -> tuple[th.Tensor, dict[str, float]]:
    """
    The A3C loss (Mnih et al. 2016, Algorithm S3), averaged over the segment as SB3's A2C does:

        L = -A(s, a) log pi(a|s)  +  vf_coef * (R - V(s))^2  -  ent_coef * H(pi(.|s))

    with R the n-step (or TD(lambda)) return and A = R - V(s) the advantage, both held fixed;
    ``values``, ``log_prob`` and ``entropy`` are the policy's ``evaluate_actions`` on the segment.
    """
    if normalize_advantage:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)

    policy_loss = -(advantages * log_prob).mean()
    value_loss = F.mse_loss(returns, values.flatten())
    # Without an analytical entropy (e.g. squashed Gaussian), -log pi(a|s) estimates it.
    entropy_loss = -th.mean(entropy) if entropy is not None else th.mean(log_prob)
    loss = policy_loss + vf_coef * value_loss + ent_coef * entropy_loss
    return loss, {"policy_loss": policy_loss.item(), "value_loss": value_loss.item(), "entropy_loss": entropy_loss.item()}


def _actions_for_loss(actions: th.Tensor, action_space: spaces.Space) -> th.Tensor:
    return actions.long().flatten() if isinstance(action_space, spaces.Discrete) else actions


class A3CWorker(WorkerLogic):
    """
    Runs ``n_steps`` in the worker's envs with its local policy (exactly as SB3's
    ``OnPolicyAlgorithm.collect_rollouts``, minus callbacks, which are the learner's), computes
    returns and advantages in an SB3 rollout buffer, and returns :func:`a3c_loss`.
    """

    policy: ActorCriticPolicy
    # Whether the segment goes through an SB3 rollout buffer (LeanA3CWorker's does not).
    uses_rollout_buffer: ClassVar[bool] = True

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
        self.gae_lambda = gae_lambda
        self.ent_coef = ent_coef
        self.vf_coef = vf_coef
        self.normalize_advantage = normalize_advantage
        self.use_sde = use_sde
        self.sde_sample_freq = sde_sample_freq
        if self.uses_rollout_buffer:
            if rollout_buffer_class is None:
                rollout_buffer_class = DictRolloutBuffer if isinstance(env.observation_space, spaces.Dict) else RolloutBuffer
            self.rollout_buffer = rollout_buffer_class(
                n_steps,
                env.observation_space,
                env.action_space,
                device="cpu",
                gamma=gamma,
                gae_lambda=gae_lambda,
                n_envs=env.num_envs,
                **rollout_buffer_kwargs,
            )
        self._last_obs = as_observations(env.reset())
        self._last_episode_starts = np.ones((env.num_envs,), dtype=bool)
        self.step_log = StepLog(n_steps)

    def compute_loss(self) -> tuple[th.Tensor, SegmentResult]:
        self._collect_segment()
        self.policy.set_training_mode(True)
        values, log_prob, entropy, returns, advantages = self._evaluate_segment()
        loss, stats = a3c_loss(
            values, log_prob, entropy, returns, advantages, self.ent_coef, self.vf_coef, self.normalize_advantage
        )
        return loss, self._segment(stats)

    def _evaluate_segment(self) -> tuple[th.Tensor, th.Tensor, th.Tensor | None, th.Tensor, th.Tensor]:
        """The policy's values, log-probabilities and entropy on the segment in the buffer, and its returns and advantages."""
        batch = next(self.rollout_buffer.get(batch_size=None))
        values, log_prob, entropy = self.policy.evaluate_actions(
            batch.observations,
            _actions_for_loss(batch.actions, self.env.action_space),
        )
        return values, log_prob, entropy, batch.returns, batch.advantages

    def _segment(self, stats: dict[str, float]) -> SegmentResult:
        if hasattr(self.policy, "log_std"):
            stats["std"] = th.exp(self.policy.log_std).mean().item()
        stats["explained_variance"] = float(
            explained_variance(self.rollout_buffer.values.flatten(), self.rollout_buffer.returns.flatten())
        )
        return SegmentResult(n_env_steps=self.n_steps * self.env.num_envs, steps=self.step_log.pop(), stats=stats)

    def _collect_segment(self) -> None:
        env, policy, buffer = self.env, self.policy, self.rollout_buffer
        policy.set_training_mode(False)
        buffer.reset()
        if self.use_sde:
            policy.reset_noise(env.num_envs)
        self._start_segment()
        for step in range(self.n_steps):
            if self.use_sde and self.sde_sample_freq > 0 and step % self.sde_sample_freq == 0:
                policy.reset_noise(env.num_envs)
            with th.no_grad():
                actions_tensor, values, log_probs = self._act(obs_as_tensor(self._last_obs, CPU))
            actions = actions_tensor.numpy()
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
            self._bootstrap_truncations(infos, dones, rewards)

            if isinstance(env.action_space, spaces.Discrete):
                actions = actions.reshape(-1, 1)
            buffer.add(self._last_obs, actions, rewards, self._last_episode_starts, values, log_probs)  # type: ignore[arg-type]
            self._last_obs = as_observations(new_obs)
            self._last_episode_starts = dones

        with th.no_grad():
            last_values = self._values(obs_as_tensor(as_observations(new_obs), CPU), dones)
        buffer.compute_returns_and_advantage(last_values=last_values, dones=dones)

    # What a recurrent policy does differently, step by step (see RecurrentA3CWorker).
    def _start_segment(self) -> None:
        pass

    def _act(self, obs: PyTorchObs) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        return self.policy(obs)

    def _bootstrap_truncations(self, infos: list[dict], dones: np.ndarray, rewards: np.ndarray) -> None:
        bootstrap_truncations(infos, dones, rewards, self.policy, self.gamma)

    def _values(self, obs: PyTorchObs, dones: np.ndarray) -> th.Tensor:
        return self.policy.predict_values(obs)


def lean_rollout_applies(policy: ActorCriticPolicy, use_sde: bool, rollout_buffer_class: type | None) -> str | None:
    """None when :class:`LeanA3CWorker` computes what :class:`A3CWorker` does; else why it does not."""
    if isinstance(policy, RecurrentActorCriticPolicy):
        return "a recurrent policy carries LSTM states from step to step"
    if use_sde:
        return "gSDE samples its noise matrix through the rollout"
    if rollout_buffer_class not in (None, RolloutBuffer, DictRolloutBuffer):
        return f"a custom rollout_buffer_class ({rollout_buffer_class.__name__}) may compute returns its own way"
    module = mode_dependent_module(policy)
    if module is not None:
        return f"{module} acts differently in training and evaluation mode"
    return None


class LeanA3CWorker(A3CWorker):
    """
    :class:`A3CWorker`'s segment and loss with less work per env step, for the common case
    (:func:`lean_rollout_applies`): the same actions (one draw from the same SB3 distribution per
    step), the same returns and advantages, the same loss, to float tolerance.

    The parameters are fixed within a segment, so the values and log-probabilities that SB3 computes
    step by step come from the one forward pass over the whole segment that the loss needs anyway;
    a step only runs the actor. Each step is written once, into the step log, whose arrays are both
    what the learner's callbacks see and what the loss reads; no rollout buffer, and no
    training-mode walks (no module here depends on the mode).
    """

    uses_rollout_buffer = False

    def __init__(self, env: VecEnv, policy: ActorCriticPolicy, worker_id: int, **kwargs: Any) -> None:
        super().__init__(env, policy, worker_id, **kwargs)
        policy.set_training_mode(True)  # once: no module depends on it (lean_rollout_applies)
        # Discrete actions: the distribution's numbers, computed without building torch's Categorical objects.
        self.plain_categorical = has_plain_categorical_head(policy)

    def compute_loss(self) -> tuple[th.Tensor, SegmentResult]:
        env, policy = self.env, self.policy
        episode_starts = np.empty((self.n_steps, env.num_envs), dtype=np.float32)
        for step in range(self.n_steps):
            with th.no_grad():
                actions = sample_actions(policy, obs_as_tensor(self._last_obs, CPU), self.plain_categorical)
            actions_array = actions.reshape((-1, *env.action_space.shape)).numpy()  # type: ignore[misc]
            clipped_actions = actions_for_env(actions_array, env.action_space, policy)
            new_obs, rewards, dones, infos = env.step(clipped_actions)
            self.step_log.add(
                obs_tensor=self._last_obs,
                actions=actions_array,
                clipped_actions=clipped_actions,
                new_obs=new_obs,
                rewards=rewards,
                dones=dones,
                infos=infos,
            )
            episode_starts[step] = self._last_episode_starts
            self._last_obs = as_observations(new_obs)
            self._last_episode_starts = dones
        steps = self.step_log.pop()
        n_rows = self.n_steps * env.num_envs

        # One forward pass: the segment's observations (with gradient, for the loss), then, detached,
        # the last observation and the final observations of truncated episodes (for bootstrapping).
        truncated = [
            (step, idx, obs)
            for step in range(self.n_steps)
            for idx, obs in truncations(steps["infos"][step], steps["dones"][step])
        ]
        observations = concatenate_observations(
            [rows_of(steps["obs_tensor"]), new_obs, *(one_row(obs, steps["obs_tensor"]) for _, _, obs in truncated)]
        )
        features = policy.extract_features(obs_as_tensor(observations, CPU))
        if isinstance(features, th.Tensor):  # one features extractor shared by both heads
            latent_pi = policy.mlp_extractor.forward_actor(features[:n_rows])
            latent_vf = policy.mlp_extractor.forward_critic(features)
        else:
            pi_features, vf_features = features
            latent_pi = policy.mlp_extractor.forward_actor(pi_features[:n_rows])
            latent_vf = policy.mlp_extractor.forward_critic(vf_features)
        all_values = policy.value_net(latent_vf).flatten()
        actions_taken = _actions_for_loss(th.as_tensor(rows_of(steps["actions"])), env.action_space)
        entropy: th.Tensor | None
        if self.plain_categorical:
            log_prob, entropy = categorical_log_prob_and_entropy(policy.action_net(latent_pi), actions_taken)
        else:
            distribution = policy._get_action_dist_from_latent(latent_pi)
            log_prob, entropy = distribution.log_prob(actions_taken), distribution.entropy()

        detached = all_values.detach().numpy()
        values = detached[:n_rows].reshape(self.n_steps, env.num_envs)
        last_values = detached[n_rows : n_rows + env.num_envs]
        rewards = steps["rewards"].astype(np.float32)  # a copy: callbacks see the env's rewards
        for (step, idx, _), terminal_value in zip(truncated, detached[n_rows + env.num_envs :], strict=True):
            rewards[step, idx] += self.gamma * terminal_value  # a truncation is not a terminal state (SB3 issue #633)
        advantages = generalized_advantages(rewards, values, episode_starts, last_values, dones, self.gamma, self.gae_lambda)
        returns = advantages + values

        loss, stats = a3c_loss(
            all_values[:n_rows],
            log_prob,
            entropy,
            th.as_tensor(returns.reshape(-1)),
            th.as_tensor(advantages.reshape(-1)),
            self.ent_coef,
            self.vf_coef,
            self.normalize_advantage,
        )
        # What SB3's collect_rollouts has in locals() for callbacks, now that they are known.
        steps["values"] = values[..., None]
        steps["log_probs"] = log_prob.detach().numpy().reshape(self.n_steps, env.num_envs)
        if hasattr(policy, "log_std"):
            stats["std"] = th.exp(policy.log_std).mean().item()
        stats["explained_variance"] = float(explained_variance(values.flatten(), returns.flatten()))
        return loss, SegmentResult(n_env_steps=n_rows, steps=steps, stats=stats)


def generalized_advantages(
    rewards: np.ndarray,
    values: np.ndarray,
    episode_starts: np.ndarray,
    last_values: np.ndarray,
    dones: np.ndarray,
    gamma: float,
    gae_lambda: float,
) -> np.ndarray:
    """SB3's ``RolloutBuffer.compute_returns_and_advantage`` on ``[n_steps, n_envs]`` arrays: the GAE advantages."""
    advantages = np.zeros_like(values)
    last_gae_lam = np.zeros_like(last_values)
    next_values, next_non_terminal = last_values, 1.0 - dones.astype(np.float32)
    for step in reversed(range(len(rewards))):
        delta = rewards[step] + gamma * next_values * next_non_terminal - values[step]
        last_gae_lam = delta + gamma * gae_lambda * next_non_terminal * last_gae_lam
        advantages[step] = last_gae_lam
        next_values, next_non_terminal = values[step], 1.0 - episode_starts[step]
    return advantages


class RecurrentA3CWorker(A3CWorker):
    """
    The paper's A3C-LSTM: :class:`A3CWorker` with one of sb3-contrib's recurrent policies (as
    ``RecurrentPPO`` uses them). The worker carries each env's LSTM states from one segment into the
    next, zeroes them where an episode starts, and backpropagates through the whole segment from the
    states it began with: backpropagation through time truncated at ``n_steps`` (the paper's t_max).

    A segment is the same length in every env, so the loss reads it as ``n_envs`` sequences of
    ``n_steps`` steps: no padding, unlike ``RecurrentRolloutBuffer``, which must cut minibatches.
    """

    policy: RecurrentActorCriticPolicy

    def __init__(self, env: VecEnv, policy: RecurrentActorCriticPolicy, worker_id: int, **kwargs: Any) -> None:
        super().__init__(env, policy, worker_id, **kwargs)
        n_layers, _, hidden_size = policy.lstm_hidden_state_shape

        def zeros() -> th.Tensor:
            return th.zeros(n_layers, env.num_envs, hidden_size)

        # The states after the last step taken, and those the current segment's loss starts from.
        self.lstm_states = RNNStates((zeros(), zeros()), (zeros(), zeros()))
        self.segment_start_states = self.lstm_states

    def _evaluate_segment(self) -> tuple[th.Tensor, th.Tensor, th.Tensor | None, th.Tensor, th.Tensor]:
        buffer = self.rollout_buffer
        # (n_steps, n_envs, ...) -> (n_envs * n_steps, ...): each env's steps in order, as _process_sequence reads them.
        flat = buffer.swap_and_flatten
        observations = (
            {key: flat(value) for key, value in buffer.observations.items()}
            if isinstance(buffer.observations, dict)
            else flat(buffer.observations)
        )
        values, log_prob, entropy = self.policy.evaluate_actions(
            obs_as_tensor(observations, CPU),  # type: ignore[arg-type]  # sb3-contrib: obs typed as a Tensor
            _actions_for_loss(th.as_tensor(flat(buffer.actions)), self.env.action_space),
            self.segment_start_states,
            th.as_tensor(flat(buffer.episode_starts)).flatten(),
        )
        returns = th.as_tensor(flat(buffer.returns)).flatten()
        return values, log_prob, entropy, returns, th.as_tensor(flat(buffer.advantages)).flatten()

    def _start_segment(self) -> None:
        # Where an episode starts, the policy zeroes the state anyway; zeroed here, segment_start_states is what the loss uses.
        keep = th.as_tensor(1.0 - self._last_episode_starts, dtype=th.float32).view(1, -1, 1)
        states = self.lstm_states
        self.lstm_states = self.segment_start_states = RNNStates(
            (states.pi[0] * keep, states.pi[1] * keep), (states.vf[0] * keep, states.vf[1] * keep)
        )

    def _act(self, obs: PyTorchObs) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        episode_starts = th.as_tensor(self._last_episode_starts, dtype=th.float32)
        actions, values, log_probs, self.lstm_states = self.policy(obs, self.lstm_states, episode_starts)
        return actions, values, log_probs

    def _bootstrap_truncations(self, infos: list[dict], dones: np.ndarray, rewards: np.ndarray) -> None:
        # A truncated episode's last observation is valued from the states that followed its last step.
        for idx, terminal_observation in truncations(infos, dones):
            terminal_obs = self.policy.obs_to_tensor(terminal_observation)[0]
            hidden, cell = self.lstm_states.vf
            terminal_states = (hidden[:, idx : idx + 1].contiguous(), cell[:, idx : idx + 1].contiguous())
            with th.no_grad():
                terminal_value = self.policy.predict_values(terminal_obs, terminal_states, th.zeros(1))  # type: ignore[arg-type]  # sb3-contrib: obs typed as a Tensor
            rewards[idx] += self.gamma * terminal_value[0].item()

    def _values(self, obs: PyTorchObs, dones: np.ndarray) -> th.Tensor:
        return self.policy.predict_values(obs, self.lstm_states.vf, th.as_tensor(dones, dtype=th.float32))  # type: ignore[arg-type]  # sb3-contrib: obs typed as a Tensor
