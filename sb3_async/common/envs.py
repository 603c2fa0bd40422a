"""What each worker builds for its environments, and how VecNormalize statistics travel.

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
a ``gym.Env`` instance, or any other    copies of its (sub-)envs, cloudpickled once in the
``VecEnv`` (DummyVecEnv,                learner: each worker env unpickles its own, wrappers
SubprocVecEnv, ...)                     included, round-robin over the sub-envs; then the
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

import functools
import importlib
import io
import pickle
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import cloudpickle
import gymnasium as gym
import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common import env_util
from stable_baselines3.common.env_util import is_wrapped
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.running_mean_std import RunningMeanStd
from stable_baselines3.common.vec_env import (
    DummyVecEnv,
    SubprocVecEnv,
    VecCheckNan,
    VecEnv,
    VecEnvWrapper,
    VecExtractDictObs,
    VecFrameStack,
    VecMonitor,
    VecNormalize,
    VecTransposeImage,
)

from sb3_async.common.worker_vec_env import WorkerDummyVecEnv

ObsStatistics = RunningMeanStd | dict[str, RunningMeanStd]

_HOW_TO_FIX = (
    "Pass `env` as an env id (e.g. 'CartPole-v1') or as a picklable callable that returns a gym.Env "
    "(e.g. functools.partial(MyEnv, ...) or a lambda), so that each worker makes its own, or build the VecEnv "
    "with sb3_async.common.envs.make_vec_env (SB3's arguments) and wrap it only in VecNormalize, "
    "VecFrameStack, VecTransposeImage, VecMonitor, VecCheckNan or VecExtractDictObs."
)


class EnvRebuildError(ValueError):
    """The workers cannot build an env like the one given to the algorithm."""


@dataclass
class NormalizationStatistics:
    """The part of a VecNormalize that changes while training: observation and return statistics."""

    obs_rms: ObsStatistics | None
    ret_rms: RunningMeanStd | None

    @classmethod
    def of(cls, vec_normalize: VecNormalize) -> "NormalizationStatistics":
        return cls(obs_rms=_copy_statistics(vec_normalize.obs_rms), ret_rms=vec_normalize.ret_rms.copy())

    def merge_into(self, vec_normalize: VecNormalize) -> None:
        """Fold these statistics (a worker's new observations) into ``vec_normalize``'s."""
        if vec_normalize.norm_obs and self.obs_rms is not None:
            if isinstance(self.obs_rms, dict):
                for key, statistics in self.obs_rms.items():
                    vec_normalize.obs_rms[key].combine(statistics)
            else:
                vec_normalize.obs_rms.combine(self.obs_rms)  # type: ignore[attr-defined]  # SB3 types it as its dict case
        if vec_normalize.norm_reward and self.ret_rms is not None:
            vec_normalize.ret_rms.combine(self.ret_rms)


def _copy_statistics(statistics: ObsStatistics) -> ObsStatistics:
    if isinstance(statistics, dict):
        return {key: value.copy() for key, value in statistics.items()}
    return statistics.copy()


def _fresh_statistics_like(statistics: ObsStatistics) -> ObsStatistics:
    # Start from (almost) zero count, so that what is merged is only what this worker saw.
    if isinstance(statistics, dict):
        return {key: RunningMeanStd(shape=value.mean.shape) for key, value in statistics.items()}
    return RunningMeanStd(shape=statistics.mean.shape)


class WorkerVecNormalize(VecNormalize):
    """
    A worker's VecNormalize: it normalizes with the learner's statistics (refreshed before every
    segment) and records what it sees into fresh statistics, which the learner merges into its own.
    Merging new moments, not copying a worker's whole statistics, is what keeps every observation
    counted exactly once across workers.
    """

    def __init__(self, venv: VecEnv, settings: dict[str, Any], learner_statistics: NormalizationStatistics):
        super().__init__(venv, training=False, **settings)
        self.load_learner_statistics(learner_statistics)
        self._returns_seen = np.zeros(self.num_envs)
        self._start_new_record()

    def load_learner_statistics(self, statistics: NormalizationStatistics) -> None:
        if statistics.obs_rms is not None:
            self.obs_rms = statistics.obs_rms  # type: ignore[assignment]  # SB3 types it as its dict case
        if statistics.ret_rms is not None:
            self.ret_rms = statistics.ret_rms

    def _start_new_record(self) -> None:
        self._new_obs_rms = _fresh_statistics_like(self.obs_rms)
        self._new_ret_rms = RunningMeanStd(shape=())

    def pop_new_statistics(self) -> NormalizationStatistics:
        """The statistics of what this worker saw since the previous call."""
        new = NormalizationStatistics(
            obs_rms=self._new_obs_rms if self.norm_obs else None,
            ret_rms=self._new_ret_rms if self.norm_reward else None,
        )
        self._start_new_record()
        return new

    def _record_observations(self, raw_obs: Any) -> None:
        if not self.norm_obs:
            return
        if isinstance(self._new_obs_rms, dict):
            for key in self._new_obs_rms:
                self._new_obs_rms[key].update(raw_obs[key])
        else:
            self._new_obs_rms.update(raw_obs)

    def step_wait(self):
        obs, rewards, dones, infos = super().step_wait()
        self._record_observations(self.old_obs)
        if self.norm_reward:
            # The same discounted-return recursion as VecNormalize._update_reward.
            self._returns_seen = self._returns_seen * self.gamma + self.old_reward
            self._new_ret_rms.update(self._returns_seen)
            self._returns_seen[dones] = 0.0
        return obs, rewards, dones, infos

    def reset(self):
        obs = super().reset()
        self._record_observations(self.old_obs)
        self._returns_seen = np.zeros(self.num_envs)
        return obs


@dataclass
class _WrapperLayer:
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


def _wrapper_layers(venv: VecEnv) -> tuple[list[_WrapperLayer], VecEnv]:
    """The VecEnv wrappers around ``venv``, innermost first, and the VecEnv they wrap."""
    layers: list[_WrapperLayer] = []
    while isinstance(venv, VecEnvWrapper):
        if isinstance(venv, VecNormalize):
            layers.append(_WrapperLayer(VecNormalize, _normalize_settings(venv)))
        elif isinstance(venv, VecFrameStack):
            layers.append(_WrapperLayer(VecFrameStack, _frame_stack_settings(venv)))
        elif isinstance(venv, VecTransposeImage):
            layers.append(_WrapperLayer(VecTransposeImage, dict(skip=venv.skip)))
        elif isinstance(venv, VecMonitor):
            layers.append(_WrapperLayer(VecMonitor))
        elif isinstance(venv, VecCheckNan):
            settings = dict(raise_exception=venv.raise_exception, warn_once=venv.warn_once, check_inf=venv.check_inf)
            layers.append(_WrapperLayer(VecCheckNan, settings))
        elif isinstance(venv, VecExtractDictObs):
            layers.append(_WrapperLayer(VecExtractDictObs, dict(key=venv.key)))
        else:
            raise EnvRebuildError(f"the workers cannot rebuild the VecEnv wrapper {type(venv).__name__}. {_HOW_TO_FIX}")
        venv = venv.venv
    layers.reverse()
    return layers, venv


def _env_factory_from_spec(spec: gym.envs.registration.EnvSpec | None) -> Callable[[], gym.Env]:
    if spec is None or spec.id not in gym.registry:
        raise EnvRebuildError(f"its sub-envs have no registered gymnasium spec to re-make them from. {_HOW_TO_FIX}")
    # Monitor is not recorded with its arguments; the workers add their own.
    wrappers = tuple(w for w in spec.additional_wrappers if w.name != "Monitor")
    for wrapper in wrappers:
        if wrapper.kwargs is None:
            raise EnvRebuildError(
                f"its sub-envs are wrapped in {wrapper.name}, which gymnasium cannot re-create "
                f"(it does not record its constructor arguments). {_HOW_TO_FIX}"
            )
    return functools.partial(gym.make, replace(spec, additional_wrappers=wrappers))


class _WorkerPickler(cloudpickle.Pickler):
    """
    cloudpickle, except for a class whose importable name now names a subclass of it: a library's
    monkeypatch, such as rl-zoo3's ``gymnasium.wrappers.TimeLimit = PatchedTimeLimit`` on import.
    An env made before that import holds the original class, which plain pickle can no longer find
    by name, so cloudpickle would rebuild it by value in the worker: a new class, on whose
    instances the original methods' ``super()`` fails. It goes by reference to the original instead.
    """

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, type) and _shadowed_by_a_subclass(obj):
            return _original_class, (obj.__module__, obj.__qualname__)
        return super().reducer_override(obj)


def _class_named(module_name: str, qualname: str) -> Any:
    found: Any = sys.modules.get(module_name) or importlib.import_module(module_name)
    for name in qualname.split("."):
        found = getattr(found, name, None)
    return found


def _shadowed_by_a_subclass(cls: type) -> bool:
    if "<locals>" in cls.__qualname__ or cls.__module__ not in sys.modules:
        return False
    named = _class_named(cls.__module__, cls.__qualname__)
    return named is not cls and isinstance(named, type) and issubclass(named, cls)


def _original_class(module_name: str, qualname: str) -> type:
    """The class defined as ``module_name.qualname``, also where that name now names a subclass of it."""
    named = _class_named(module_name, qualname)
    for cls in getattr(named, "__mro__", ()):
        if cls.__module__ == module_name and cls.__qualname__ == qualname:
            return cls
    raise pickle.UnpicklingError(f"{module_name}.{qualname} names {named}, which does not derive from the original class")


class _CopyPickler(_WorkerPickler):
    """
    The workers' pickler, except that a Monitor is pickled as a fresh one in its place (same
    settings, no file, no episode under way): the workers' copies must not share, or fail on, the
    learner's log file.
    """

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, Monitor):
            return _fresh_monitor, (obj.env, obj.allow_early_resets, obj.reset_keywords, obj.info_keywords)
        return super().reducer_override(obj)


def _fresh_monitor(env: gym.Env, allow_early_resets: bool, reset_keywords: tuple, info_keywords: tuple) -> Monitor:
    return Monitor(env, allow_early_resets=allow_early_resets, reset_keywords=reset_keywords, info_keywords=info_keywords)


def pickle_env_copy(env: gym.Env) -> bytes:
    """``env`` (wrappers and state included) as bytes that unpickle into an independent copy."""
    buffer = io.BytesIO()
    _CopyPickler(buffer).dump(env)
    return buffer.getvalue()


def _parts(obj: Any, path: str) -> Iterator[tuple[str, Any]]:
    if isinstance(obj, dict):
        yield from ((f"{path}[{key!r}]", value) for key, value in obj.items())
    elif isinstance(obj, (list, tuple)):
        yield from ((f"{path}[{index}]", value) for index, value in enumerate(obj))
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        yield from ((f"{path}.{name}", value) for name, value in vars(obj).items())


def find_unpicklable(obj: Any, path: str, max_depth: int = 16) -> tuple[str, Any]:
    """The innermost part of ``obj`` (and its attribute path) that cannot be pickled: what to name in an error."""
    for _ in range(max_depth):
        for part_path, part in _parts(obj, path):
            try:
                pickle_env_copy(part)
            except Exception:
                obj, path = part, part_path
                break
        else:
            break
    return path, obj


def _sub_envs(innermost: VecEnv) -> list[gym.Env]:
    """The sub-env objects of a VecEnv: its own for an in-process VecEnv, copies sent back by a SubprocVecEnv."""
    if isinstance(innermost, SubprocVecEnv):
        # Each sub-env comes back pickled by its process, as the object its bound reset() is bound to.
        try:
            return [method.__self__ for method in innermost.get_attr("reset")]
        except Exception as error:
            raise EnvRebuildError(
                f"the SubprocVecEnv's sub-envs have no gymnasium spec and could not be sent back from their processes "
                f"to be copied ({type(error).__name__}: {error}); SB3's SubprocVecEnv ends a process whose reply cannot "
                f"be pickled, so this SubprocVecEnv cannot be used any more. {_HOW_TO_FIX}"
            ) from error
    envs = getattr(innermost, "envs", None)
    if not isinstance(envs, (list, tuple)):
        raise EnvRebuildError(f"{type(innermost).__name__} does not show its sub-envs (it has no `envs` list). {_HOW_TO_FIX}")
    return list(envs)


def _copies_of_sub_envs(innermost: VecEnv) -> list[bytes]:
    """One pickled copy per sub-env, or an EnvRebuildError that names the part that cannot be pickled."""
    copies = []
    for index, env in enumerate(_sub_envs(innermost)):
        try:
            copies.append(pickle_env_copy(env))
        except Exception as error:
            path, culprit = find_unpicklable(env, f"sub-env {index}")
            raise EnvRebuildError(
                f"the workers cannot get their own copies of the env: {path} (a {type(culprit).__module__}."
                f"{type(culprit).__qualname__}) cannot be pickled ({type(error).__name__}: {error}), and the env has no "
                f"gymnasium spec to re-make it from. {_HOW_TO_FIX}"
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


@dataclass
class WorkerEnvFactory:
    """
    Picklable recipe for a worker's envs. Build it in the learner with :meth:`from_user_env`;
    each worker calls :meth:`build`.
    """

    recipe: bytes  # a cloudpickled VecEnvRecipe
    envs_per_worker: int
    layers: list[_WrapperLayer]
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
        layers, innermost = _wrapper_layers(learner_env)
        recorded = getattr(innermost, RECIPE_ATTRIBUTE, None)
        recipe: VecEnvRecipe | EnvCopies
        if recorded is not None:
            recipe = recorded
        elif isinstance(user_env, str) or (callable(user_env) and not isinstance(user_env, (gym.Env, VecEnv))):
            recipe = VecEnvRecipe(portable_env_id(user_env))
        else:
            recipe = _recipe_for_env_objects(innermost)
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


def _recipe_for_env_objects(innermost: VecEnv) -> "VecEnvRecipe | EnvCopies":
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


def dumps_for_workers(obj: Any, what: str) -> bytes:
    """cloudpickle ``obj`` for the worker processes, or say plainly why it cannot go there."""
    try:
        buffer = io.BytesIO()
        _WorkerPickler(buffer).dump(obj)
        return buffer.getvalue()
    except Exception as error:
        raise ValueError(
            f"{what} cannot be pickled to the worker processes ({type(error).__name__}: {error}). "
            "Use objects that can be pickled, e.g. a module-level function or functools.partial."
        ) from error


def register_minatar_envs() -> bool:
    """
    Register MinAtar's gymnasium ids (``MinAtar/Breakout-v1``, ...) when the ``minatar`` package is
    installed and they are not yet registered: MinAtar declares them as a gymnasium plugin, which
    gymnasium 1.x no longer loads. The zoo and the compare harness call it. Returns whether they are registered.
    """
    if "MinAtar/Breakout-v1" in gym.registry:
        return True
    try:
        from minatar.gym import register_envs
    except ImportError:
        return False
    register_envs()
    return True
