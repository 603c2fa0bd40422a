"""MinAtar's env ids for rl-zoo3 and the compare harness (MinAtar itself is an optional, GPL-3.0 extra)."""

import gymnasium as gym


def register_minatar_envs() -> bool:
    """
    Register MinAtar's gymnasium ids (``MinAtar/Breakout-v1``, ...) when the ``minatar`` package is
    installed and they are not yet registered: MinAtar declares them as a gymnasium plugin, which
    gymnasium 1.x no longer loads. The zoo and the compare harness call it. Returns whether they are registered.
    """
    if "MinAtar/Breakout-v1" in gym.registry:
        return True
    try:
        from minatar.gym import register_envs
    except ImportError:
        return False
    register_envs()
    return True
