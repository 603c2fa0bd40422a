"""
How objects go to the worker processes: cloudpickle, by reference to classes that a library has
since shadowed with a subclass, and, for the copies of a user's envs, with a fresh Monitor in place
of the learner's; and, when something cannot go, which part of it is to blame.
"""

import importlib
import io
import pickle
import sys
from collections.abc import Iterator
from typing import Any

import cloudpickle
import gymnasium as gym
from stable_baselines3.common.monitor import Monitor


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
