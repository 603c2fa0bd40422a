"""
Recipes for envs like the user's: how a worker makes its own envs from an env id, a callable, a VecEnv
made by :func:`make_vec_env` (SB3's arguments, recorded on the VecEnv), or envs given only as objects
(copies, or a re-make from their gymnasium spec). :class:`~sb3_async.common.worker_envs.WorkerEnvFactory`
picks the recipe and adds the VecEnv wrappers.
"""

import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import FrameType
from typing import Any

import cloudpickle
import gymnasium as gym
import numpy as np
from stable_baselines3.common import env_util
from stable_baselines3.common.env_util import is_wrapped
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv

from sb3_async.common.worker_pickling import find_unpicklable, pickle_env_copy
from sb3_async.common.worker_vec_env import WorkerDummyVecEnv

HOW_TO_FIX = (
    "Pass `env` as an env id (e.g. 'CartPole-v1') or as a picklable callable that returns a gym.Env "
    "(e.g. functools.partial(MyEnv, ...) or a lambda), so that each worker makes its own, or build the VecEnv "
    "with sb3_async.common.env_recipes.make_vec_env (SB3's arguments) and wrap it only in VecNormalize, "
    "VecFrameStack, VecTransposeImage, VecMonitor, VecCheckNan or VecExtractDictObs."
)


class EnvRebuildError(ValueError):
    """The workers cannot build an env like the one given to the algorithm."""


def _env_factory_from_spec(spec: gym.envs.registration.EnvSpec | None) -> Callable[[], gym.Env]:
    if spec is None or spec.id not in gym.registry:
        raise EnvRebuildError(f"its sub-envs have no registered gymnasium spec to re-make them from. {HOW_TO_FIX}")
    # Monitor is not recorded with its arguments; the workers add their own.
    wrappers = tuple(w for w in spec.additional_wrappers if w.name != "Monitor")
    for wrapper in wrappers:
        if wrapper.kwargs is None:
            raise EnvRebuildError(
                f"its sub-envs are wrapped in {wrapper.name}, which gymnasium cannot re-create "
                f"(it does not record its constructor arguments). {HOW_TO_FIX}"
            )
    return functools.partial(gym.make, replace(spec, additional_wrappers=wrappers))


# The attribute a SubprocVecEnv's sub-env holds its own copy in, for a moment, while the learner fetches it.
_COPY_ATTRIBUTE = "_sb3_async_pickled_copy"


class _CopyOfThisProcessEnv:
    """
    Sent to a SubprocVecEnv's processes with ``set_attr``: unpickled there, it becomes that process's
    env pickled as :func:`pickle_env_copy` pickles (cloudpickle, so an env class defined in the user's
    ``__main__`` travels by value), or a sentence saying why it cannot be. SB3's ``get_attr`` sends an
    env back with the standard pickler, which fails for such a class: in the sub-process it is
    cloudpickle's rebuilt copy, not the ``__main__`` module's own.
    """

    def __reduce__(self) -> tuple[Any, tuple]:
        return _pickled_copy_of_this_process_env, ()


def _pickled_copy_of_this_process_env() -> bytes | str:
    """Runs in a SubprocVecEnv's process, as it unpickles the learner's message: its env, pickled for the workers."""
    from stable_baselines3.common.vec_env import subproc_vec_env

    frame: FrameType | None = sys._getframe(1)
    while frame is not None and frame.f_code is not subproc_vec_env._worker.__code__:
        frame = frame.f_back
    if frame is None or "env" not in frame.f_locals:
        return "this version of SB3's SubprocVecEnv does not hold its env where sb3_async looks for it"
    env = frame.f_locals["env"]
    try:
        return pickle_env_copy(env)
    except Exception as error:
        path, culprit = find_unpicklable(env, "env")
        culprit_name = f"{type(culprit).__module__}.{type(culprit).__qualname__}"
        return f"{path} (a {culprit_name}) cannot be pickled ({type(error).__name__}: {error})"


def _copies_from_subprocesses(venv: SubprocVecEnv) -> list[bytes]:
    """Each sub-env of a SubprocVecEnv, pickled in its own process (see :class:`_CopyOfThisProcessEnv`)."""
    venv.set_attr(_COPY_ATTRIBUTE, _CopyOfThisProcessEnv())
    try:
        copies = venv.get_attr(_COPY_ATTRIBUTE)
    finally:
        venv.set_attr(_COPY_ATTRIBUTE, None)  # the copies are not kept in the user's envs
    for index, copy in enumerate(copies):
        if not isinstance(copy, bytes):
            raise EnvRebuildError(
                f"the workers cannot get their own copies of the SubprocVecEnv's sub-env {index}: {copy}, and it has no "
                f"gymnasium spec to re-make it from. {HOW_TO_FIX}"
            )
    return copies


def _copies_of_sub_envs(innermost: VecEnv) -> list[bytes]:
    """One pickled copy per sub-env, or an EnvRebuildError that names the part that cannot be pickled."""
    if isinstance(innermost, SubprocVecEnv):
        return _copies_from_subprocesses(innermost)
    envs = getattr(innermost, "envs", None)
    if not isinstance(envs, (list, tuple)):
        raise EnvRebuildError(f"{type(innermost).__name__} does not show its sub-envs (it has no `envs` list). {HOW_TO_FIX}")
    copies = []
    for index, env in enumerate(envs):
        try:
            copies.append(pickle_env_copy(env))
        except Exception as error:
            path, culprit = find_unpicklable(env, f"sub-env {index}")
            raise EnvRebuildError(
                f"the workers cannot get their own copies of the env: {path} (a {type(culprit).__module__}."
                f"{type(culprit).__qualname__}) cannot be pickled ({type(error).__name__}: {error}), and the env has no "
                f"gymnasium spec to re-make it from. {HOW_TO_FIX}"
            ) from error
    return copies


@dataclass
class EnvCopies:
    """
    Independent copies of given envs, made by unpickling them (see :func:`pickle_env_copy`), for
    envs that exist only as objects: a ``gym.Env`` instance or the sub-envs of a ``DummyVecEnv``.
    Same ``make`` as :class:`VecEnvRecipe`.
    """

    pickled_envs: list[bytes]

    def make(self, n_envs: int, seed: int | None = None, start_index: int = 0) -> VecEnv:
        # Copies are handed out round-robin over the original sub-envs, so that different sub-envs
        # (e.g. one per task) are all trained on. start_index counts from the learner env's
        # num_envs, which is len(pickled_envs), so the first worker env gets copy 0.
        factories = [functools.partial(self._copy, (start_index + i) % len(self.pickled_envs)) for i in range(n_envs)]
        venv = WorkerDummyVecEnv(factories)  # type: ignore[arg-type]
        # A copy carries its original's random state: without a new seed, all copies would act alike.
        first_seed = seed if seed is not None else int(np.random.SeedSequence().generate_state(1)[0])
        for i, env in enumerate(venv.envs):
            env.action_space.seed(first_seed + i)
        venv.seed(first_seed)
        return venv

    def _copy(self, index: int) -> gym.Env:
        env = cloudpickle.loads(self.pickled_envs[index])
        return env if is_wrapped(env, Monitor) else Monitor(env)


@dataclass
class VecEnvRecipe:
    """
    How to make envs like a VecEnv's sub-envs: the arguments of SB3's ``make_vec_env`` except
    ``n_envs``, ``seed`` and ``start_index``, which each worker chooses. It must pickle with cloudpickle.
    """

    env_id: str | Callable[..., gym.Env]
    env_kwargs: dict[str, Any] | None = None
    wrapper_class: Callable[..., gym.Env] | None = None
    wrapper_kwargs: dict[str, Any] | None = None
    monitor_dir: str | None = None
    monitor_kwargs: dict[str, Any] | None = None

    def make(self, n_envs: int, seed: int | None = None, start_index: int = 0) -> VecEnv:
        return env_util.make_vec_env(
            self.env_id,
            n_envs=n_envs,
            seed=seed,
            start_index=start_index,
            env_kwargs=self.env_kwargs,
            wrapper_class=self.wrapper_class,
            wrapper_kwargs=self.wrapper_kwargs,
            monitor_dir=self.monitor_dir,
            monitor_kwargs=self.monitor_kwargs,
            vec_env_cls=WorkerDummyVecEnv,
        )


RECIPE_ATTRIBUTE = "worker_env_recipe"


def portable_env_id(env_id: str | Callable[..., gym.Env]) -> str | Callable[..., gym.Env]:
    """
    An env id as something that makes the env in any process: ``gym.make`` of its registered spec.
    Ids registered only in this process (by importing a package such as ``minatar.gym`` or
    ``rl_zoo3.import_envs``; gymnasium 1.x loads no plugins by itself) then work in the workers too.
    """
    if isinstance(env_id, str) and env_id in gym.registry:
        return functools.partial(gym.make, gym.spec(env_id))
    return env_id


def make_vec_env(
    env_id: str | Callable[..., gym.Env],
    n_envs: int = 1,
    seed: int | None = None,
    start_index: int = 0,
    monitor_dir: str | None = None,
    wrapper_class: Callable[..., gym.Env] | None = None,
    env_kwargs: dict[str, Any] | None = None,
    vec_env_cls: type[DummyVecEnv] | type[SubprocVecEnv] | None = None,
    vec_env_kwargs: dict[str, Any] | None = None,
    monitor_kwargs: dict[str, Any] | None = None,
    wrapper_kwargs: dict[str, Any] | None = None,
) -> VecEnv:
    """
    SB3's :func:`~stable_baselines3.common.env_util.make_vec_env`, with the same arguments, that also
    records them on the VecEnv, so the asynchronous algorithms' workers build their envs exactly
    like these: with the same ``wrapper_class`` (e.g. SB3's AtariWrapper, which gymnasium cannot
    re-create from a spec), ``env_kwargs`` and Monitor settings.
    """
    venv = env_util.make_vec_env(
        env_id,
        n_envs=n_envs,
        seed=seed,
        start_index=start_index,
        monitor_dir=monitor_dir,
        wrapper_class=wrapper_class,
        env_kwargs=env_kwargs,
        vec_env_cls=vec_env_cls,
        vec_env_kwargs=vec_env_kwargs,
        monitor_kwargs=monitor_kwargs,
        wrapper_kwargs=wrapper_kwargs,
    )
    recipe = VecEnvRecipe(portable_env_id(env_id), env_kwargs, wrapper_class, wrapper_kwargs, monitor_dir, monitor_kwargs)
    setattr(venv, RECIPE_ATTRIBUTE, recipe)
    return venv


def recipe_for_env_objects(innermost: VecEnv) -> "VecEnvRecipe | EnvCopies":
    """
    How the workers make envs like ``innermost``'s sub-envs when the user gave them only as objects.
    In-process sub-envs are copied: that keeps every wrapper and attribute the user set. A
    SubprocVecEnv's are re-made from their gymnasium spec if they have one (cheaper than sending
    them back), and so are in-process ones that cannot be pickled (Box2D's, for example).
    """
    specs = innermost.get_attr("spec")
    spec_factory = None
    if all(spec == specs[0] for spec in specs):  # one spec can stand for every sub-env
        try:
            spec_factory = _env_factory_from_spec(specs[0])
        except EnvRebuildError:
            pass
    if spec_factory is not None and isinstance(innermost, SubprocVecEnv):
        return VecEnvRecipe(spec_factory)
    try:
        return EnvCopies(_copies_of_sub_envs(innermost))
    except EnvRebuildError:
        if spec_factory is None:
            raise
        return VecEnvRecipe(spec_factory)
