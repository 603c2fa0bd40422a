"""
A3C and OffPolicyAC in rl-zoo3: ``python -m sb3_async.zoo train --algo a3c --env CartPole-v1`` (or the
``sb3-async-zoo`` command) is rl-zoo3's own ``train``/``enjoy``/plot scripts, with every flag, after
:func:`register` has added our algorithms to rl-zoo3's tables. See docs/zoo.md.
"""

from sb3_async.zoo.cli import main
from sb3_async.zoo.experiment import AsyncExperimentManager, register
from sb3_async.zoo.minatar import register_minatar_envs

__all__ = ["AsyncExperimentManager", "main", "register", "register_minatar_envs"]
