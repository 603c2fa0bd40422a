"""
A bare torch A2C loop (CleanRL style): the per-core throughput limit the collector is measured against.

Same work per update as an A3C worker: ``n_envs`` CartPole envs in a gymnasium SyncVectorEnv, ``n_steps``
steps with a 64x64 tanh actor-critic, n-step returns, one RMSprop step. No SB3, no processes.
"""

import time

import gymnasium as gym
import numpy as np
import torch as th
from torch import nn


def _mlp(n_in: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, n_out))


def bare_a2c_steps_per_second(n_envs: int = 8, n_steps: int = 5, seconds: float = 10.0, seed: int = 0) -> float:
    """Train for about ``seconds`` and return env steps per second (one torch thread)."""
    th.set_num_threads(1)
    th.manual_seed(seed)
    envs = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1") for _ in range(n_envs)])
    n_obs, n_actions = envs.single_observation_space.shape[0], envs.single_action_space.n
    actor, critic = _mlp(n_obs, n_actions), _mlp(n_obs, 1)
    optimizer = th.optim.RMSprop([*actor.parameters(), *critic.parameters()], lr=7e-4, alpha=0.99, eps=1e-5)
    obs, _ = envs.reset(seed=seed)
    gamma = 0.99
    steps, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        observations, actions, rewards, not_dones = [], [], [], []
        for _ in range(n_steps):
            obs_tensor = th.as_tensor(obs, dtype=th.float32)
            with th.no_grad():
                action = th.distributions.Categorical(logits=actor(obs_tensor)).sample()
            obs, reward, terminated, truncated, _ = envs.step(action.numpy())
            observations.append(obs_tensor)
            actions.append(action)
            rewards.append(th.as_tensor(reward, dtype=th.float32))
            not_dones.append(th.as_tensor(1.0 - np.logical_or(terminated, truncated), dtype=th.float32))
        with th.no_grad():
            ret = critic(th.as_tensor(obs, dtype=th.float32)).squeeze(-1)
        returns = []
        for reward, not_done in zip(reversed(rewards), reversed(not_dones), strict=False):
            ret = reward + gamma * not_done * ret
            returns.append(ret)
        returns = th.stack(returns[::-1]).flatten()
        batch_obs, batch_actions = th.cat(observations), th.cat(actions)
        values = critic(batch_obs).squeeze(-1)
        distribution = th.distributions.Categorical(logits=actor(batch_obs))
        advantages = (returns - values).detach()
        loss = -(advantages * distribution.log_prob(batch_actions)).mean() + 0.5 * (returns - values).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_([*actor.parameters(), *critic.parameters()], 0.5)
        optimizer.step()
        steps += n_envs * n_steps
    return steps / (time.perf_counter() - started)


if __name__ == "__main__":
    print(f"bare torch A2C loop: {bare_a2c_steps_per_second():.0f} env steps/s")
