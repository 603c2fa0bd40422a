from sb3_async.async_q.policies import CnnPolicy, MlpPolicy, MultiInputPolicy
from sb3_async.async_sarsa.async_sarsa import AsyncSARSA

__all__ = ["AsyncSARSA", "CnnPolicy", "MlpPolicy", "MultiInputPolicy"]
