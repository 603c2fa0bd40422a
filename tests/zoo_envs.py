"""Envs for the zoo tests, registered when rl-zoo3 imports this module (``--gym-packages tests.zoo_envs``)."""

import gymnasium as gym
from gymnasium.envs.classic_control import CartPoleEnv


class CartPoleThatCrashes(CartPoleEnv):
    """CartPole whose step raises after ``crash_after`` steps: a worker that fails mid-trial."""

    def __init__(self, crash_after: int = 300, **kwargs):
        super().__init__(**kwargs)
        self.crash_after = crash_after
        self.steps = 0

    def step(self, action):
        self.steps += 1
        if self.steps > self.crash_after:
            raise RuntimeError("the physics engine exploded")
        return super().step(action)


if "CartPoleThatCrashes-v0" not in gym.registry:
    gym.register("CartPoleThatCrashes-v0", entry_point=CartPoleThatCrashes, max_episode_steps=500)
