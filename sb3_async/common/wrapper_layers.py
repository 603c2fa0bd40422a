"""
The VecEnv wrappers around the user's env, read as layers the workers re-apply in order around their
own envs (VecNormalize, VecFrameStack, VecTransposeImage, VecMonitor, VecCheckNan, VecExtractDictObs).
"""

from dataclasses import dataclass, field
from typing import Any

from stable_baselines3.common.vec_env import (
    VecCheckNan,
    VecEnv,
    VecEnvWrapper,
    VecExtractDictObs,
    VecFrameStack,
    VecMonitor,
    VecNormalize,
    VecTransposeImage,
)

from sb3_async.common.env_recipes import HOW_TO_FIX, EnvRebuildError


@dataclass
class WrapperLayer:
    wrapper_class: type[VecEnvWrapper]
    kwargs: dict[str, Any] = field(default_factory=dict)


def _normalize_settings(vec_normalize: VecNormalize) -> dict[str, Any]:
    return dict(
        norm_obs=vec_normalize.norm_obs,
        norm_reward=vec_normalize.norm_reward,
        clip_obs=vec_normalize.clip_obs,
        clip_reward=vec_normalize.clip_reward,
        gamma=vec_normalize.gamma,
        epsilon=vec_normalize.epsilon,
        norm_obs_keys=vec_normalize.norm_obs_keys,
    )


def _frame_stack_settings(vec_frame_stack: VecFrameStack) -> dict[str, Any]:
    stacked = vec_frame_stack.stacked_obs
    if hasattr(stacked, "sub_stacked_observations"):  # Dict observations: an order per key
        order: Any = {key: "first" if sub.channels_first else "last" for key, sub in stacked.sub_stacked_observations.items()}
    else:
        order = "first" if stacked.channels_first else "last"
    return dict(n_stack=stacked.n_stack, channels_order=order)


def wrapper_layers(venv: VecEnv) -> tuple[list[WrapperLayer], VecEnv]:
    """The VecEnv wrappers around ``venv``, innermost first, and the VecEnv they wrap."""
    layers: list[WrapperLayer] = []
    while isinstance(venv, VecEnvWrapper):
        if isinstance(venv, VecNormalize):
            layers.append(WrapperLayer(VecNormalize, _normalize_settings(venv)))
        elif isinstance(venv, VecFrameStack):
            layers.append(WrapperLayer(VecFrameStack, _frame_stack_settings(venv)))
        elif isinstance(venv, VecTransposeImage):
            layers.append(WrapperLayer(VecTransposeImage, dict(skip=venv.skip)))
        elif isinstance(venv, VecMonitor):
            layers.append(WrapperLayer(VecMonitor))
        elif isinstance(venv, VecCheckNan):
            settings = dict(raise_exception=venv.raise_exception, warn_once=venv.warn_once, check_inf=venv.check_inf)
            layers.append(WrapperLayer(VecCheckNan, settings))
        elif isinstance(venv, VecExtractDictObs):
            layers.append(WrapperLayer(VecExtractDictObs, dict(key=venv.key)))
        else:
            raise EnvRebuildError(f"the workers cannot rebuild the VecEnv wrapper {type(venv).__name__}. {HOW_TO_FIX}")
        venv = venv.venv
    layers.reverse()
    return layers, venv
