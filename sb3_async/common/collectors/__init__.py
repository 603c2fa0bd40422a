"""
The asynchronous gradient collectors: the part of sb3_async that every algorithm shares.

They replace SB3's synchronous rollout buffer. K workers each own their envs and a local copy of
the policy; each turns a short segment of experience into a gradient and hands it to the learner
(the main process), which applies gradients one at a time, first come first served, with no
barrier between workers; the worker then takes the newest parameters and goes on.

- :mod:`~sb3_async.common.collectors.base`: what every backend shares: the messages, the
  algorithm-specific half of a worker (:class:`WorkerLogic`, which lives in the algorithm's own
  folder, e.g. ``sb3_async/a3c/worker.py``), the rest of a worker (:class:`WorkerCore`) and the
  learner's interface to a backend (:class:`GradientCollector`).
- :mod:`~sb3_async.common.collectors.local` (``backend="local"``, the default): worker processes on
  this machine, parameters and gradients in shared memory; also Hogwild mode.
- :mod:`~sb3_async.common.collectors.ray_backend` (``backend="ray"``): workers as Ray actors on a
  cluster, parameters through the object store.

The learner loop that drives a collector is :class:`sb3_async.common.async_algorithm.AsyncAlgorithmMixin`.
"""

from sb3_async.common.collectors.base import (
    SLOTS_PER_WORKER,
    ActorLogic,
    GradientCollector,
    GradientReport,
    SegmentResult,
    WorkerCore,
    WorkerError,
    WorkerLogic,
    WorkerSpec,
    buffers_to_vector,
    clip_gradient_norm_,
    flat_gradient_view,
    flat_parameters_view,
    vector_to_buffers,
    write_flat_gradient,
)
from sb3_async.common.collectors.local import LocalCollector

BACKENDS = ("local", "ray")
# SegmentResult's name until 2026-12-04, for WorkerLogic classes written against it.
Segment = SegmentResult

__all__ = [
    "BACKENDS",
    "SLOTS_PER_WORKER",
    "ActorLogic",
    "GradientCollector",
    "GradientReport",
    "LocalCollector",
    "SegmentResult",
    "WorkerCore",
    "WorkerError",
    "WorkerLogic",
    "WorkerSpec",
    "buffers_to_vector",
    "clip_gradient_norm_",
    "flat_gradient_view",
    "flat_parameters_view",
    "vector_to_buffers",
    "write_flat_gradient",
]
