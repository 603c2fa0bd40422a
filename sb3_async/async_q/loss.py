"""
The value-based losses of the A3C paper (Mnih et al. 2016, Algorithms S1 and S2, and 1-step SARSA),
for one worker's segment of ``T`` steps in each of its envs.

Every transition ``t`` of the segment gets the target

    y_t = r_t + gamma r_{t+1} + ... + gamma^(h-1) r_{t+h-1} + gamma^h B_{t+h-1},   h = min(n_steps, T - t)

where the sum stops at an episode end (no bootstrap there), and ``B_t`` is the target network's
value of the state that step ``t`` reached:

- Q-learning: ``B_t = max_a Q(s_{t+1}, a; theta-)``;
- SARSA:      ``B_t = Q(s_{t+1}, a_{t+1}; theta-)``, with ``a_{t+1}`` the action the worker takes there.

With ``n_steps = 1`` these are the 1-step methods; with ``n_steps = T`` every state looks ahead to the
end of the segment, which is the paper's n-step Q-learning (Algorithm S2: ``R <- r_i + gamma R``
backwards from ``R = B_T``).

The loss is **summed** over the segment, so its gradient is the paper's accumulated ``d theta``
(Huber, as SB3's DQN, so each transition's error is clipped to [-1, 1] in the gradient).
"""

import torch as th
from torch.nn import functional as F


def n_step_targets(
    rewards: th.Tensor, episode_ends: th.Tensor, bootstrap_values: th.Tensor, gamma: float, n_steps: int
) -> th.Tensor:
    """
    :param rewards: ``[T, n_envs]`` rewards (a truncated episode's already holds ``gamma * B(s_T)``)
    :param episode_ends: ``[T, n_envs]`` 1.0 where the step ended an episode, else 0.0
    :param bootstrap_values: ``[T, n_envs]`` ``B_t``, the target network's value of the state step ``t`` reached
    :param gamma: discount factor
    :param n_steps: how many rewards a target sums at most before it bootstraps
    :return: ``[T, n_envs]`` targets ``y_t``
    """
    horizon = rewards.shape[0]
    targets = th.zeros_like(rewards)
    for start in range(horizon):
        end = min(start + n_steps, horizon)
        discounted_return = th.zeros_like(rewards[0])
        discount = th.ones_like(rewards[0])  # gamma^k while the episode goes on, 0 after it ended
        for step in range(start, end):
            discounted_return += discount * rewards[step]
            discount = discount * gamma * (1.0 - episode_ends[step])
        targets[start] = discounted_return + discount * bootstrap_values[end - 1]
    return targets


def q_learning_loss(q_values: th.Tensor, targets: th.Tensor) -> th.Tensor:
    """``sum_t huber(y_t - Q(s_t, a_t; theta))``: the segment's accumulated gradient, not its mean."""
    return F.smooth_l1_loss(q_values, targets.detach(), reduction="sum")
