"""Envs for the zoo tests, registered when rl-zoo3 imports this module (``--gym-packages tests.zoo_envs``)."""

import gymnasium as gym

from tests.envs import RaisingEnv

if "CartPoleThatCrashes-v0" not in gym.registry:
    # A worker whose env raises mid-trial.
    gym.register("CartPoleThatCrashes-v0", entry_point=RaisingEnv, kwargs=dict(fail_after=300))
