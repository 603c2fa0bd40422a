"""Asynchronous actor-critic algorithms for Stable-Baselines3."""

from sb3_async.a3c import A3C
from sb3_async.common.collector import WorkerError

__version__ = "0.1.0"

__all__ = ["A3C", "WorkerError", "__version__"]
