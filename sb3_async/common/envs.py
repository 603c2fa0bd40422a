"""
Where these names lived before the module was split by job; kept so that imports (and objects
pickled) from before the split still find them: :mod:`~sb3_async.common.worker_envs` (what each
worker builds), :mod:`~sb3_async.common.env_recipes` (the recipes, ``make_vec_env``),
:mod:`~sb3_async.common.wrapper_layers`, :mod:`~sb3_async.common.normalization` (VecNormalize
statistics) and :mod:`~sb3_async.common.worker_pickling`. MinAtar's registration is
:func:`sb3_async.zoo.register_minatar_envs`.
"""

from typing import Any

from sb3_async.common.env_recipes import (
    RECIPE_ATTRIBUTE,
    EnvCopies,
    EnvRebuildError,
    VecEnvRecipe,
    make_vec_env,
    portable_env_id,
)
from sb3_async.common.normalization import NormalizationStatistics, WorkerVecNormalize
from sb3_async.common.worker_envs import WorkerEnvFactory
from sb3_async.common.worker_pickling import dumps_for_workers, find_unpicklable, pickle_env_copy

__all__ = [
    "RECIPE_ATTRIBUTE",
    "EnvCopies",
    "EnvRebuildError",
    "NormalizationStatistics",
    "VecEnvRecipe",
    "WorkerEnvFactory",
    "WorkerVecNormalize",
    "dumps_for_workers",
    "find_unpicklable",
    "make_vec_env",
    "pickle_env_copy",
    "portable_env_id",
]


def __getattr__(name: str) -> Any:
    # Not imported above: the zoo package is rl-zoo3's, which a script importing this module should not pay for.
    if name == "register_minatar_envs":
        from sb3_async.zoo.minatar import register_minatar_envs

        return register_minatar_envs
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
