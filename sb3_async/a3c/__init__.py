from sb3_async.a3c.a3c import A3C
from sb3_async.a3c.policies import CnnPolicy, MlpPolicy, MultiInputPolicy

__all__ = ["A3C", "CnnPolicy", "MlpPolicy", "MultiInputPolicy"]
