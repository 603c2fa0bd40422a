"""
What an asynchronous Q-learning worker does between two parameter syncs (Mnih et al. 2016,
Algorithms S1 and S2): ``train_freq`` epsilon-greedy steps in each of its envs with its local copy of
the Q-network, then the summed loss of the segment against the target network, whose parameters
the worker receives with the online ones at every sync.
"""

from typing import Any, ClassVar

import numpy as np
import torch as th
from stable_baselines3.common.utils import LinearSchedule, obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.dqn.policies import DQNPolicy

from sb3_async.async_q.loss import n_step_targets, q_learning_loss
from sb3_async.common.collectors import SegmentResult, WorkerLogic
from sb3_async.common.rollout import CPU, StepLog, as_observations, mode_dependent_module, truncations


def _concatenate(batches: list[th.Tensor | dict[str, th.Tensor]]) -> th.Tensor | dict[str, th.Tensor]:
    """One batch of ``T * n_envs`` observations, step-major, from ``T`` batches of ``n_envs``."""
    if isinstance(batches[0], dict):
        return {key: th.cat([batch[key] for batch in batches]) for key in batches[0]}  # type: ignore[index]
    return th.cat(batches)  # type: ignore[arg-type]


class AsyncQWorker(WorkerLogic):
    """
    :param env: the worker's own envs
    :param policy: the worker's local DQN policy (online and target Q-networks)
    :param worker_id: index of this worker, from 0
    :param train_freq: steps in each env per segment (the paper's I_AsyncUpdate, or t_max)
    :param n_steps: rewards summed before bootstrapping (1: one-step; ``train_freq``: the paper's n-step)
    :param gamma: discount factor
    :param exploration_schedules: one epsilon schedule per worker, of ``progress_remaining``
    """

    policy: DQNPolicy
    # SARSA bootstraps from the action the worker will take next, so that action, chosen at the
    # end of a segment, must be the one taken at the start of the next.
    keeps_next_action: ClassVar[bool] = False

    def __init__(
        self,
        env: VecEnv,
        policy: DQNPolicy,
        worker_id: int,
        train_freq: int,
        n_steps: int,
        gamma: float,
        exploration_schedules: list[LinearSchedule],
    ) -> None:
        super().__init__(env, policy, worker_id)
        self.train_freq = train_freq
        self.n_steps = n_steps
        self.gamma = gamma
        self.exploration_schedule = exploration_schedules[worker_id]
        self.n_actions = int(env.action_space.n)  # type: ignore[attr-defined]
        self._last_obs = as_observations(env.reset())
        self._next_actions: np.ndarray | None = None
        self.step_log = StepLog(train_freq)
        # set_training_mode walks every module: worth it only where one depends on the mode.
        self._mode_matters = mode_dependent_module(policy) is not None

    def epsilon_greedy(self, observations: th.Tensor | dict[str, th.Tensor], epsilon: float) -> np.ndarray:
        with th.no_grad():
            actions = self.policy.q_net(observations).argmax(dim=1).numpy()
        explore = np.random.random(len(actions)) < epsilon
        return np.where(explore, np.random.randint(self.n_actions, size=len(actions)), actions)

    def bootstrap_values(self, observations: th.Tensor | dict[str, th.Tensor], next_actions: np.ndarray) -> th.Tensor:
        """Q-learning's ``max_a Q(s, a; theta-)`` (the actions the worker takes next do not matter)."""
        with th.no_grad():
            return self.policy.q_net_target(observations).max(dim=1).values

    def compute_loss(self) -> tuple[th.Tensor, SegmentResult]:
        env, n_envs = self.env, self.env.num_envs
        epsilon = self.exploration_schedule(self.progress_remaining)
        if self._mode_matters:
            self.policy.set_training_mode(False)
        observations = [obs_as_tensor(self._last_obs, CPU)]
        if self._next_actions is None or not self.keeps_next_action:
            self._next_actions = self.epsilon_greedy(observations[0], epsilon)
        actions, rewards, episode_ends = [], [], []
        for _ in range(self.train_freq):
            actions.append(self._next_actions)
            step_obs, reward, dones, infos = env.step(self._next_actions)
            new_obs = as_observations(step_obs)
            # What DQN's collect_rollouts hands its callbacks (the env's reward, before the bootstrap below).
            self.step_log.add(
                actions=self._next_actions,
                buffer_actions=self._next_actions,
                new_obs=new_obs,
                rewards=reward,
                dones=dones,
                infos=infos,
            )
            reward = reward.astype(np.float32)
            # A time limit is not a terminal state: its reward gets the bootstrap, and the sum stops.
            for idx, terminal_observation in truncations(infos, dones):
                terminal_obs = self.policy.obs_to_tensor(terminal_observation)[0]
                reward[idx] += (
                    self.gamma * self.bootstrap_values(terminal_obs, self.epsilon_greedy(terminal_obs, epsilon)).item()
                )
            observations.append(obs_as_tensor(new_obs, CPU))
            self._next_actions = self.epsilon_greedy(observations[-1], epsilon)
            rewards.append(reward)
            episode_ends.append(dones)
            self._last_obs = new_obs

        states = _concatenate(observations[:-1])
        taken = th.as_tensor(np.concatenate(actions), dtype=th.long)
        next_actions = np.concatenate([*actions[1:], self._next_actions])
        bootstrap = self.bootstrap_values(_concatenate(observations[1:]), next_actions).view(self.train_freq, n_envs)
        targets = n_step_targets(
            th.as_tensor(np.stack(rewards)),
            th.as_tensor(np.stack(episode_ends), dtype=th.float32),
            bootstrap,
            self.gamma,
            self.n_steps,
        )
        if self._mode_matters:
            self.policy.set_training_mode(True)
        q_values = self.policy.q_net(states).gather(1, taken.view(-1, 1)).flatten()
        loss = q_learning_loss(q_values, targets.flatten())
        stats: dict[str, Any] = {
            "loss": loss.item() / len(q_values),
            "q_mean": q_values.mean().item(),
            "rollout/exploration_rate": epsilon,
        }
        return loss, SegmentResult(n_env_steps=self.train_freq * n_envs, steps=self.step_log.pop(), stats=stats)
