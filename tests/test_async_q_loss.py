"""The value-based targets and the accumulated gradient, worked out by hand on a 3-step segment."""

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.utils import LinearSchedule
from stable_baselines3.common.vec_env import DummyVecEnv
from stable_baselines3.dqn.policies import DQNPolicy

from sb3_async.async_q.loss import n_step_targets
from sb3_async.async_q.worker import AsyncQWorker
from sb3_async.async_sarsa.worker import AsyncSARSAWorker


def test_n_step_targets_stop_at_episode_ends_and_at_the_segment_end():
    gamma = 0.5
    rewards = th.tensor([[1.0], [2.0], [3.0]])
    bootstrap = th.tensor([[4.0], [5.0], [6.0]])  # B_t: the value of the state step t reached
    no_end = th.zeros(3, 1)
    end_after_step_1 = th.tensor([[0.0], [1.0], [0.0]])
    # 1-step: r_t + 0.5 B_t
    th.testing.assert_close(n_step_targets(rewards, no_end, bootstrap, gamma, 1), th.tensor([[3.0], [4.5], [6.0]]))
    # 2-step window: y_0 = 1 + .5*2 + .25*5, y_1 = 2 + .5*3 + .25*6, y_2 = 3 + .5*6 (the segment ends)
    th.testing.assert_close(n_step_targets(rewards, no_end, bootstrap, gamma, 2), th.tensor([[3.25], [5.0], [6.0]]))
    # 3-step (the paper's n-step Q): y_2 = 6, y_1 = 2 + .5*6 = 5, y_0 = 1 + .5*5 = 3.5
    th.testing.assert_close(n_step_targets(rewards, no_end, bootstrap, gamma, 3), th.tensor([[3.5], [5.0], [6.0]]))
    # The episode ends at step 1: y_1 = 2 (no bootstrap), y_0 = 1 + .5*2 = 2; y_2 starts a new episode.
    th.testing.assert_close(n_step_targets(rewards, end_after_step_1, bootstrap, gamma, 3), th.tensor([[2.0], [2.0], [6.0]]))


class ThreeStates(gym.Env):
    """s0 -> s1 -> s2 -> s3 (one-hot) whatever the action, with rewards 1, 2, 3; optionally a time limit at s3."""

    observation_space = spaces.Box(0.0, 1.0, (4,), np.float32)
    action_space = spaces.Discrete(2)

    def __init__(self, truncate_at_s3: bool = False):
        self.truncate_at_s3 = truncate_at_s3

    def _state(self) -> np.ndarray:
        return np.eye(4, dtype=np.float32)[self.t]

    def reset(self, seed=None, options=None):
        self.t = 0
        return self._state(), {}

    def step(self, action):
        self.t += 1
        return self._state(), float(self.t), False, self.truncate_at_s3 and self.t == 3, {}


def linear_q_policy() -> DQNPolicy:
    """Q(s, a) = W[a] . s, online and target weights set by hand (columns are the states s0..s3)."""
    policy = DQNPolicy(ThreeStates.observation_space, ThreeStates.action_space, lambda _: 0.0, net_arch=[])
    with th.no_grad():
        online, target = policy.q_net.q_net[0], policy.q_net_target.q_net[0]
        online.weight.copy_(th.tensor([[4.5, 5.0, 6.0, 7.0], [0.0, 0.0, 0.0, 0.0]]))  # greedy: action 0 everywhere
        target.weight.copy_(th.tensor([[1.0, 2.0, 3.0, 4.2], [0.0, 8.0, 0.0, 9.0]]))
        online.bias.zero_()
        target.bias.zero_()
    return policy


# Segment s0 -a0-> s1 -a0-> s2 -a0-> s3, gamma = 0.5, Q(s_t, a_t) = 4.5, 5, 6.
# Q-learning bootstraps max_a target: B = max(2, 8), max(3, 0), max(4.2, 9) = 8, 3, 9.
# SARSA bootstraps the target at the next action taken (greedy: 0): B = 2, 3, 4.2.
CASES = {
    # y = 1 + .5*8, 2 + .5*3, 3 + .5*9 = 5, 3.5, 7.5; Q - y = -0.5, 1.5, -1.5
    "1-step Q": (AsyncQWorker, 1, [-0.5, 1.5, -1.5]),
    # y_2 = 7.5, y_1 = 2 + .5*7.5 = 5.75, y_0 = 1 + .5*5.75 = 3.875; Q - y = 0.625, -0.75, -1.5
    "3-step Q": (AsyncQWorker, 3, [0.625, -0.75, -1.5]),
    # y = 1 + .5*2, 2 + .5*3, 3 + .5*4.2 = 2, 3.5, 5.1; Q - y = 2.5, 1.5, 0.9
    "1-step SARSA": (AsyncSARSAWorker, 1, [2.5, 1.5, 0.9]),
    # y_2 = 5.1, y_1 = 2 + .5*5.1 = 4.55, y_0 = 1 + .5*4.55 = 3.275; Q - y = 1.225, 0.45, 0.9
    "3-step SARSA": (AsyncSARSAWorker, 3, [1.225, 0.45, 0.9]),
}


def huber(x: float) -> float:
    return 0.5 * x**2 if abs(x) < 1 else abs(x) - 0.5


@pytest.mark.parametrize("truncate_at_s3", [False, True], ids=["no-time-limit", "time-limit-at-s3"])
@pytest.mark.parametrize("case", CASES)
def test_segment_loss_and_accumulated_gradient(case, truncate_at_s3):
    worker_class, n_steps, errors = CASES[case]
    env = DummyVecEnv([lambda: ThreeStates(truncate_at_s3)])
    policy = linear_q_policy()
    worker = worker_class(
        env, policy, 0, train_freq=3, n_steps=n_steps, gamma=0.5, exploration_schedules=[LinearSchedule(0.0, 0.0, 1.0)]
    )
    loss, segment = worker.compute_loss()
    loss.backward()

    # A time limit at s3 is not an end: its reward carries 0.5 * B(s3), so the targets are the same.
    assert loss.item() == pytest.approx(sum(huber(error) for error in errors))
    # Summed over the segment, not averaged: d/dW[0, s_t] = clip(Q - y, -1, 1), action 1 untouched.
    expected_weight_grad = th.zeros(2, 4)
    expected_weight_grad[0, :3] = th.tensor(errors).clamp(-1.0, 1.0)
    th.testing.assert_close(policy.q_net.q_net[0].weight.grad, expected_weight_grad)
    th.testing.assert_close(policy.q_net.q_net[0].bias.grad, th.tensor([sum(expected_weight_grad[0]).item(), 0.0]))
    assert policy.q_net_target.q_net[0].weight.grad is None  # the target is held fixed
    assert segment.n_env_steps == 3
    assert segment.stats["rollout/exploration_rate"] == 0.0
