"""What each worker builds for its environments.

The learner keeps the env the user passed (``model.get_env()``), but never steps it: it is the
source of the spaces, of the VecNormalize statistics that callbacks and ``save`` see, and of the
recipe the workers follow. Each worker builds ``envs_per_worker`` envs of its own:

=====================================  ======================================================
``env`` given to the algorithm          what each worker builds
=====================================  ======================================================
an env id (``"CartPole-v1"``)           ``make_vec_env(env_id, n_envs=envs_per_worker)``
a callable returning a ``gym.Env``      ``make_vec_env(callable, n_envs=envs_per_worker)``;
                                        the callable travels with cloudpickle
a ``VecEnv`` made by this module's      SB3's ``make_vec_env`` with the same arguments (env
``make_vec_env``                        kwargs, wrapper_class, Monitor settings), then its
                                        VecEnv wrappers re-applied in order
a ``gym.Env`` instance, or any other    copies of its (sub-)envs, cloudpickled once (in the
``VecEnv`` (DummyVecEnv,                learner; a SubprocVecEnv's in its own processes):
SubprocVecEnv, ...)                     each worker env unpickles its own, wrappers
                                        included, round-robin over the sub-envs; then the
                                        VecEnv wrappers (VecNormalize, VecFrameStack,
                                        VecTransposeImage, VecMonitor, VecCheckNan,
                                        VecExtractDictObs) are re-applied in order. A sub-env
                                        that cannot be pickled (Box2D, a socket) is re-made
                                        from its gymnasium spec when it has one.
=====================================  ======================================================

Every worker's envs are wrapped in ``Monitor`` (for episode statistics), unless a copy already has
one (a copied Monitor starts afresh and writes no file), and seeded with
``seed + worker_id * envs_per_worker + i`` when a seed is given, from fresh entropy otherwise (so
that copies never share a random state). When the recipe names a
``monitor_dir``, each worker env writes its own ``<rank>.monitor.csv`` there, ranks following the
learner env's, so rl-zoo3's plots read every worker's episodes.
"""

from dataclasses import dataclass
from typing import Any

import cloudpickle
import gymnasium as gym
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecNormalize

from sb3_async.common.env_recipes import RECIPE_ATTRIBUTE, EnvCopies, VecEnvRecipe, portable_env_id, recipe_for_env_objects
from sb3_async.common.normalization import NormalizationStatistics, WorkerVecNormalize
from sb3_async.common.worker_pickling import dumps_for_workers
from sb3_async.common.wrapper_layers import WrapperLayer, wrapper_layers


@dataclass
class WorkerEnvFactory:
    """
    Picklable recipe for a worker's envs. Build it in the learner with :meth:`from_user_env`;
    each worker calls :meth:`build`.
    """

    recipe: bytes  # a cloudpickled VecEnvRecipe
    envs_per_worker: int
    layers: list[WrapperLayer]
    seed: int | None = None
    first_rank: int = 0  # Monitor file ranks start after the learner env's own

    @classmethod
    def from_user_env(
        cls, user_env: Any, learner_env: VecEnv, envs_per_worker: int, seed: int | None = None
    ) -> "WorkerEnvFactory":
        """
        :param user_env: the ``env`` argument the user gave (id, callable, gym.Env or VecEnv)
        :param learner_env: the learner's VecEnv, after SB3's own wrapping (it fixes the wrapper layers)
        """
        layers, innermost = wrapper_layers(learner_env)
        recorded = getattr(innermost, RECIPE_ATTRIBUTE, None)
        recipe: VecEnvRecipe | EnvCopies
        if recorded is not None:
            recipe = recorded
        elif isinstance(user_env, str) or (callable(user_env) and not isinstance(user_env, (gym.Env, VecEnv))):
            recipe = VecEnvRecipe(portable_env_id(user_env))
        else:
            recipe = recipe_for_env_objects(innermost)
        return cls(
            recipe=dumps_for_workers(recipe, what="the env factory"),
            envs_per_worker=envs_per_worker,
            layers=layers,
            seed=seed,
            first_rank=innermost.num_envs,
        )

    def build(self, worker_id: int, normalization: NormalizationStatistics | None = None) -> VecEnv:
        recipe: VecEnvRecipe | EnvCopies = cloudpickle.loads(self.recipe)
        first_env = worker_id * self.envs_per_worker
        seed = None if self.seed is None else self.seed + first_env
        venv = recipe.make(self.envs_per_worker, seed=seed, start_index=self.first_rank + first_env)
        for layer in self.layers:
            if layer.wrapper_class is VecNormalize:
                assert normalization is not None, "a VecNormalize layer needs the learner's statistics"
                venv = WorkerVecNormalize(venv, layer.kwargs, normalization)
            else:
                venv = layer.wrapper_class(venv, **layer.kwargs)
        # The same automatic wrapping (VecTransposeImage for channel-last images) as the learner got.
        return BaseAlgorithm._wrap_env(venv)


def env_modules(learner_env: VecEnv) -> list[str]:
    """The modules that define the learner's envs, where it holds them in this process (a ``DummyVecEnv``)."""
    _, innermost = wrapper_layers(learner_env)
    if not isinstance(innermost, DummyVecEnv):
        return []
    return sorted({type(env.unwrapped).__module__ for env in innermost.envs})
