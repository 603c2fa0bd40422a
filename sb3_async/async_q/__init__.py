from sb3_async.async_q.async_q import AsyncQLearning
from sb3_async.async_q.policies import CnnPolicy, MlpPolicy, MultiInputPolicy

__all__ = ["AsyncQLearning", "CnnPolicy", "MlpPolicy", "MultiInputPolicy"]
