from sb3_async.impala.impala import IMPALA

__all__ = ["IMPALA"]
