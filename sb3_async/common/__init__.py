from sb3_async.common.collectors import GradientCollector, LocalCollector, SegmentResult, WorkerError, WorkerLogic, WorkerSpec

__all__ = ["GradientCollector", "LocalCollector", "SegmentResult", "WorkerError", "WorkerLogic", "WorkerSpec"]
