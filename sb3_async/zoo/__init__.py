"""
A3C and OffPolicyAC in rl-zoo3: ``python -m sb3_async.zoo train --algo a3c --env CartPole-v1`` (or the
``sb3-async-zoo`` command) is rl-zoo3's own ``train``/``enjoy``/plot scripts, with every flag, after
:func:`register` has added our algorithms to rl-zoo3's tables. See docs/zoo.md.

rl-zoo3 is imported only when one of its names here is first used: a script that imports this package (for
MinAtar's ids, say) at its top would otherwise make every worker process, which imports the script's
``__main__`` as it starts, import rl-zoo3 too (about half a second per worker, per ``learn()``).
"""

from typing import Any

from sb3_async.zoo.minatar import register_minatar_envs

__all__ = ["AsyncExperimentManager", "main", "register", "register_minatar_envs"]


def __getattr__(name: str) -> Any:
    if name in ("AsyncExperimentManager", "register"):
        from sb3_async.zoo import experiment

        return getattr(experiment, name)
    if name == "main":
        from sb3_async.zoo.cli import main

        return main
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
