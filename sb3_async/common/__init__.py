from sb3_async.common.collector import AsyncGradientCollector, Segment, WorkerError, WorkerLogic, WorkerSpec

__all__ = ["AsyncGradientCollector", "Segment", "WorkerError", "WorkerLogic", "WorkerSpec"]
