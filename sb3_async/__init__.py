"""Asynchronous actor-critic algorithms for Stable-Baselines3."""

from sb3_async.a3c import A3C
from sb3_async.async_q import AsyncQLearning
from sb3_async.async_sarsa import AsyncSARSA
from sb3_async.common.async_algorithm import NonFiniteTrainingError
from sb3_async.common.collectors import WorkerError
from sb3_async.common.collectors.ray_backend import stop_idle_ray_workers
from sb3_async.impala import IMPALA
from sb3_async.offpac import OffPolicyAC

__version__ = "0.1.0"

__all__ = [
    "A3C",
    "IMPALA",
    "AsyncQLearning",
    "AsyncSARSA",
    "NonFiniteTrainingError",
    "OffPolicyAC",
    "WorkerError",
    "__version__",
    "stop_idle_ray_workers",
]
