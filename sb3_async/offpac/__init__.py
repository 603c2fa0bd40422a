from sb3_async.offpac.offpac import OffPolicyAC
from sb3_async.offpac.policies import CnnPolicy, MlpPolicy, MultiInputPolicy

__all__ = ["CnnPolicy", "MlpPolicy", "MultiInputPolicy", "OffPolicyAC"]
