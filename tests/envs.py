"""Small envs for the tests. Module-level, so that the worker processes can import them."""

import os
import time

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class RaisingEnv(gym.Wrapper):
    """CartPole that raises after ``fail_after`` steps."""

    def __init__(self, fail_after: int = 50):
        super().__init__(gym.make("CartPole-v1"))
        self.fail_after = fail_after
        self.n_steps = 0

    def step(self, action):
        self.n_steps += 1
        if self.n_steps > self.fail_after:
            raise RuntimeError("the env broke on purpose")
        return self.env.step(action)


class NaNRewardEnv(gym.Wrapper):
    """CartPole whose reward is NaN once, at step ``nan_at``."""

    def __init__(self, nan_at: int = 30):
        super().__init__(gym.make("CartPole-v1"))
        self.nan_at = nan_at
        self.n_steps = 0

    def step(self, action):
        self.n_steps += 1
        obs, reward, terminated, truncated, info = self.env.step(action)
        if self.n_steps == self.nan_at:
            reward = float("nan")
        return obs, reward, terminated, truncated, info


class HangingEnv(gym.Wrapper):
    """
    CartPole whose step hangs (sleeps an hour) at its step ``hang_at``: in every copy, or, when ``once_marker``
    names a file, only in the first copy to get there (it creates the file), so that a replacement does not hang.
    Every other step takes ``step_seconds``, so that the workers that do not hang cannot take a run's steps before
    the learner's silence timeout has passed, however fast the machine.
    """

    def __init__(self, hang_at: int = 50, once_marker: str | None = None, step_seconds: float = 0.0):
        super().__init__(gym.make("CartPole-v1"))
        self.hang_at, self.once_marker, self.step_seconds = hang_at, once_marker, step_seconds
        self.n_steps = 0

    def step(self, action):
        self.n_steps += 1
        if self.n_steps == self.hang_at and self._first_to_hang():
            time.sleep(3600)
        time.sleep(self.step_seconds)
        return self.env.step(action)

    def _first_to_hang(self) -> bool:
        if self.once_marker is None:
            return True
        try:
            os.close(os.open(self.once_marker, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return False
        return True


class BrokenFromEnv(gym.Wrapper):
    """
    CartPole whose output breaks from its step ``broken_from`` on (counted from 1, across episodes), as ``what``
    says: ``"nan_reward"``, ``"nan_observation"`` (one value), ``"observation_shape"`` (5 values instead of 4) or
    ``"none_reward"``.
    """

    def __init__(self, broken_from: int = 100, what: str = "nan_reward"):
        super().__init__(gym.make("CartPole-v1"))
        self.broken_from, self.what = broken_from, what
        self.n_steps = 0

    def step(self, action):
        self.n_steps += 1
        obs, reward, terminated, truncated, info = self.env.step(action)
        if self.n_steps >= self.broken_from:
            if self.what == "nan_reward":
                reward = float("nan")
            elif self.what == "nan_observation":
                obs = obs.copy()
                obs[2] = np.nan
            elif self.what == "observation_shape":
                obs = np.append(obs, 0.0)
            else:
                reward = None
        return obs, reward, terminated, truncated, info


class CartPoleBuiltOnlyIn(gym.Wrapper):
    """CartPole that raises when it is built in any process but ``pid`` (the learner's): no worker can build it."""

    def __init__(self, pid: int):
        if os.getpid() != pid:
            raise RuntimeError("this env cannot be built in a worker")
        super().__init__(gym.make("CartPole-v1"))


class ThreeActionCartPole(gym.Wrapper):
    """CartPole that claims a third action (which pushes left): a sub-env whose action space differs from CartPole's."""

    def __init__(self):
        super().__init__(gym.make("CartPole-v1"))
        self.action_space = spaces.Discrete(3)

    def step(self, action):
        return self.env.step(min(int(action), 1))


class TupleActionEnv(gym.Env):
    observation_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = spaces.Tuple((spaces.Discrete(2), spaces.Discrete(2)))

    def reset(self, seed=None, options=None):
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, False, False, {}


class FixedLengthEnv(gym.Env):
    """Random observations, episodes of exactly ``length`` steps: episode starts fall where a test wants them."""

    observation_space = spaces.Box(-1.0, 1.0, (3,), np.float32)
    action_space = spaces.Discrete(2)

    def __init__(self, length: int = 4):
        self.length = length
        self.t = 0

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.observation_space.sample(), {}

    def step(self, action):
        self.t += 1
        return self.observation_space.sample(), float(action), self.t >= self.length, False, {}


def cartpole_without_velocities() -> gym.Env:
    """CartPole-v1 observing only the cart's position and the pole's angle (rl-zoo3's CartPoleNoVel-v1)."""
    from rl_zoo3.wrappers import MaskVelocityWrapper

    return MaskVelocityWrapper(gym.make("CartPole-v1"))
