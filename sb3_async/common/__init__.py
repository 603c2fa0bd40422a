from sb3_async.common.collectors import GradientCollector, LocalCollector, Segment, WorkerError, WorkerLogic, WorkerSpec

__all__ = ["GradientCollector", "LocalCollector", "Segment", "WorkerError", "WorkerLogic", "WorkerSpec"]
