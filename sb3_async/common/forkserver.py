"""
sb3_async's own forkserver, so that how workers start never depends on what ran before.

Python keeps one forkserver per process and reads its preload list once, when the server starts.
If anything else started it first (SB3's ``SubprocVecEnv`` for an eval env, rl-zoo3's
``--vec-env subproc``, another library), workers forked from it would import torch themselves:
seconds to start each, and a torch thread pool of their own beside the single thread they are
meant to use (``benchmarks/startup_hijack.py`` measures both). So sb3_async starts a server of its
own, preloaded with ``sb3_async``, the first time it needs one, and forks
every worker from it. A child forked from it is an ordinary forkserver child; only the learner's
side of the launch (which server to ask) differs from ``multiprocessing``'s.
"""

import io
import multiprocessing as mp
import os
from collections.abc import Sequence
from multiprocessing import forkserver, spawn, util

# multiprocessing's own launch, as popen_forkserver writes it: names typeshed does not declare (private).
from multiprocessing.context import reduction, set_spawning_popen  # type: ignore[attr-defined]
from typing import Any

# What the server imports once, so that each worker starts in milliseconds. Not torch._dynamo, which
# the first torch optimizer of a process imports (about 1.4 s, as long as torch itself): workers build
# none (their policy copy gets a stand-in, and they step the shared optimizer state with code of our own),
# so the server is ready that much sooner after a model is built.
PRELOAD = ["sb3_async"]

_server: forkserver.ForkServer | None = None


def _the_server(env_modules: Sequence[str] = ()) -> forkserver.ForkServer:
    global _server
    if _server is None:
        _server = forkserver.ForkServer()
        _server.set_forkserver_preload(PRELOAD + [name for name in env_modules if preloadable(name)])
    return _server


# gymnasium's env packages whose import starts no thread, opens no device and raises nothing but an
# ImportError (a missing Box2D), which the server skips; not MuJoCo's (GL libraries) or the JAX-based envs.
PRELOADABLE_ENV_PACKAGES = ("gymnasium.envs.classic_control.", "gymnasium.envs.toy_text.", "gymnasium.envs.box2d.")


def preloadable(module_name: str) -> bool:
    """
    Whether the server may import ``module_name`` (an env's module) beside ``sb3_async``: each worker
    would import it anyway to build its envs (the classic-control envs cost a worker 3.6 ms), but a
    server that fails to start fails every ``learn()`` of the process, so only modules known to be safe.
    """
    return module_name.startswith(PRELOADABLE_ENV_PACKAGES)


def server_pid() -> int | None:
    """The pid of sb3_async's forkserver, or None before it started: every worker is its child."""
    return None if _server is None else _server._forkserver_pid  # type: ignore[attr-defined]


if "forkserver" in mp.get_all_start_methods():  # not on Windows
    from multiprocessing import popen_forkserver

    class _Popen(popen_forkserver.Popen):
        """``multiprocessing``'s forkserver launch, asking sb3_async's server instead of the process-wide one."""

        def _launch(self, process_obj: Any) -> None:
            prep_data = spawn.get_preparation_data(process_obj._name)
            buffer = io.BytesIO()
            set_spawning_popen(self)
            try:
                reduction.dump(prep_data, buffer)
                reduction.dump(process_obj, buffer)
            finally:
                set_spawning_popen(None)
            self.sentinel, data_pipe = _the_server().connect_to_new_process(self._fds)  # type: ignore[attr-defined]
            # As multiprocessing does: a duplicate of the data pipe's write end tells the child its parent lives.
            parent_alive = os.dup(data_pipe)
            self.finalizer = util.Finalize(self, util.close_fds, (parent_alive, self.sentinel))  # type: ignore[attr-defined]
            with open(data_pipe, "wb", closefd=True) as pipe:
                pipe.write(buffer.getbuffer())
            self.pid = forkserver.read_signed(self.sentinel)

    class _Process(mp.context.ForkServerProcess):
        @staticmethod
        def _Popen(process_obj: Any) -> _Popen:
            return _Popen(process_obj)

    class PrivateForkServerContext(mp.context.ForkServerContext):
        """A ``forkserver`` multiprocessing context whose processes fork from sb3_async's own server."""

        Process = _Process


def start_server_in_background(env_modules: Sequence[str] = ()) -> None:
    """
    Start sb3_async's forkserver now, if there is one to start, without waiting for it: its preload
    (about 2 s, mostly importing torch) then runs on another core while the model is built, instead
    of in the first ``learn()``.

    :param env_modules: the modules that define the model's envs; the server imports those that are
        :func:`preloadable` too, if this call starts it (the first model of the process decides)
    """
    if "forkserver" in mp.get_all_start_methods():
        _the_server(env_modules).ensure_running()


def worker_context() -> "mp.context.ForkServerContext | mp.context.SpawnContext":
    """The context workers start with: sb3_async's forkserver where there is one (Linux, macOS), else ``spawn``."""
    if "forkserver" in mp.get_all_start_methods():
        return PrivateForkServerContext()
    return mp.get_context("spawn")
