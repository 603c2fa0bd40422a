"""The learner loop shared by the asynchronous algorithms (mixed into SB3's base algorithm classes)."""

import copy
import io
import os
import pathlib
import secrets
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import gymnasium as gym
from gymnasium import spaces
import numpy as np
import torch as th
from stable_baselines3.common.callbacks import (
    BaseCallback,
    CallbackList,
    CheckpointCallback,
    ConvertCallback,
    EvalCallback,
    EventCallback,
    EveryNTimesteps,
    LogEveryNTimesteps,
    ProgressBarCallback,
    StopTrainingOnNoModelImprovement,
    StopTrainingOnRewardThreshold,
)
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.type_aliases import MaybeCallback, TrainFreq, TrainFrequencyUnit
from stable_baselines3.common.utils import obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv

from sb3_async.common.collectors import (
    BACKENDS,
    GradientCollector,
    GradientReport,
    LocalCollector,
    WorkerSpec,
    buffers_to_vector,
    clip_gradient_norm_,
    flat_gradient_view,
    flat_parameters_view,
    vector_to_buffers,
)
from sb3_async.common.collectors.base import DEFAULT_WORKER_TIMEOUT, check_restarts
from sb3_async.common.collectors.ray_backend import RayCollector, check_actor_options, import_ray
from sb3_async.common.normalization import NormalizationStatistics
from sb3_async.common.worker_envs import WorkerEnvFactory, env_modules
from sb3_async.common.forkserver import start_server_in_background
from sb3_async.common.flat_optimizer import FlatOptimizerState, can_flatten
from sb3_async.common.torch_layers import small_image_policy_kwargs
from sb3_async.common.update_paths import LearnerApplies, UpdatePath, WorkersApply
from sb3_async.common.worker_layout import (
    AUTO,
    PROBE_SECONDS,
    PROBED_ENVS_PER_WORKER,
    WorkerLayout,
    choose_layout,
    measure_gradient_costs,
)
from sb3_async.common.worker_updates import (
    UPDATE_MODES,
    WORKER_UPDATE_MODES,
    WorkerUpdateSettings,
    can_share_optimizer,
    check_shared_optimizer,
)


def _n_envs_of(env: Any) -> int:
    return env.num_envs if isinstance(env, VecEnv) else 1


def default_n_workers() -> int:
    """One worker per CPU core this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@contextmanager
def sigterm_raises_system_exit() -> Iterator[None]:
    """
    While training, SIGTERM (``kill``, ``pkill``, a job scheduler) raises SystemExit(143) in the
    learner, so the ``finally`` that stops the workers and frees shared memory runs; Python's
    default would end the process on the spot. A handler the user installed is left alone.
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def exit_cleanly(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, exit_cleanly)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


class AsyncProgressBarCallback(ProgressBarCallback):
    """SB3's progress bar, advanced by the timesteps of all workers' envs, not the learner env's."""

    def _on_step(self) -> bool:
        self.pbar.update(self.model.n_envs)
        return True


# SB3's callbacks whose on_step reads nothing of ``self.locals`` (exactly these classes: a subclass may).
_CALLBACKS_THAT_IGNORE_LOCALS = (
    CallbackList,
    AsyncProgressBarCallback,
    CheckpointCallback,
    EvalCallback,
    EveryNTimesteps,
    LogEveryNTimesteps,
    StopTrainingOnNoModelImprovement,
    StopTrainingOnRewardThreshold,
)


def reads_step_locals(callback: BaseCallback | None) -> bool:
    """Whether any callback in the tree under ``callback`` may read ``self.locals`` at ``on_step``."""
    if callback is None:
        return False
    if type(callback) is ConvertCallback:  # what SB3 makes of learn(callback=None), or of a function, which reads them
        return callback.callback is not None
    if type(callback) not in _CALLBACKS_THAT_IGNORE_LOCALS:
        return True
    children: list[BaseCallback | None] = list(callback.callbacks) if isinstance(callback, CallbackList) else []
    if isinstance(callback, EventCallback):  # EvalCallback's callback_after_eval, and its callback_on_new_best
        children = [callback.callback, getattr(callback, "callback_on_new_best", None)]
    return any(reads_step_locals(child) for child in children)


@dataclass
class _LogWindow:
    """What happened since the last ``dump_logs``."""

    started_at: float = field(default_factory=time.perf_counter)
    idle_seconds_at_start: float = 0.0
    staleness: list[int] = field(default_factory=list)
    stats: dict[str, list[float]] = field(default_factory=dict)

    def add(self, report: GradientReport) -> None:
        self.staleness.append(report.staleness)
        for key, value in report.segment.stats.items():
            self.stats.setdefault(key, []).append(value)


class PendingSteps:
    """
    Env steps that workers reported and callbacks have not seen yet, handed out ``n`` at a time in the
    order they arrived. Each column is kept flat: ``[rows, ...]``, a row being one env's step. A take
    that falls within one report's rows is views of them; only one that spans two reports copies.
    """

    def __init__(self) -> None:
        self.n_rows = 0
        self._chunks: list[tuple[dict[str, Any], int]] = []  # (flat columns, their row count)
        self._offset = 0  # rows of the first chunk already handed out

    def add(self, steps: dict[str, Any], n_rows: int) -> None:
        """Add a segment's steps (a StepLog's ``[n_steps, n_envs, ...]`` columns; empty if the worker logged none)."""
        if n_rows:
            self._chunks.append(({key: _flatten_steps(column) for key, column in steps.items()}, n_rows))
            self.n_rows += n_rows

    def take(self, n: int) -> dict[str, Any] | None:
        """The next ``n`` rows, or None while fewer are pending."""
        if self.n_rows < n:
            return None
        pieces, needed = [], n
        while needed:
            columns, n_chunk_rows = self._chunks[0]
            stop = min(self._offset + needed, n_chunk_rows)
            pieces.append({key: _rows(column, self._offset, stop) for key, column in columns.items()})
            needed -= stop - self._offset
            if stop == n_chunk_rows:
                self._chunks.pop(0)
                self._offset = 0
            else:
                self._offset = stop
        self.n_rows -= n
        if len(pieces) == 1:
            return pieces[0]
        return {key: _concatenate([piece[key] for piece in pieces]) for key in pieces[0]}


def _flatten_steps(column: Any) -> Any:
    if isinstance(column, dict):
        return {key: _flatten_steps(value) for key, value in column.items()}
    if isinstance(column, np.ndarray):
        return column.reshape(-1, *column.shape[2:])
    return [row for step in column for row in step]  # infos: one list per step


def _concatenate(columns: list[Any]) -> Any:
    if len(columns) == 1:
        return columns[0]
    if isinstance(columns[0], dict):
        return {key: _concatenate([column[key] for column in columns]) for key in columns[0]}
    if isinstance(columns[0], np.ndarray):
        return np.concatenate(columns)
    return [row for column in columns for row in column]


def _rows(column: Any, start: int, stop: int | None) -> Any:
    if isinstance(column, dict):
        return {key: value[start:stop] for key, value in column.items()}
    return column[start:stop]


class NonFiniteTrainingError(RuntimeError):
    """Every update of the last ``max_dropped_updates_in_a_row`` was dropped as not finite: training learns nothing."""


def _flush_to_disk(path: pathlib.Path) -> None:
    """``fsync`` a file or a folder, so that what was written (or renamed) in it survives a crash of the machine."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


if TYPE_CHECKING:  # to the type checker, the mixin is what it is mixed into: an SB3 algorithm, whose attributes it uses
    from stable_baselines3.common.base_class import BaseAlgorithm as _Host
else:
    _Host = object


class AsyncAlgorithmMixin(_Host):
    """
    The learner half of an asynchronous algorithm: ``learn()`` starts the workers of an
    :class:`~sb3_async.common.collectors.GradientCollector`, applies each gradient as it arrives
    with the policy's one optimizer (so RMSprop statistics are shared by construction), runs SB3's
    callbacks and logger, and always stops the workers before returning.

    The algorithm class provides ``_worker_logic()``: its WorkerLogic class and keyword arguments.
    """

    # Set by the algorithm's __init__ (these annotations document the contract). The defaults are what a
    # model saved before a setting existed did, for a model restored without its __init__ (a plain unpickle).
    n_workers: int
    envs_per_worker: int
    n_steps: int
    max_grad_norm: float
    update_mode: str = "learner"
    wait_for_own_update: bool = True
    backend: str = "local"
    max_worker_restarts: int = 0
    worker_timeout: float = DEFAULT_WORKER_TIMEOUT
    max_dropped_updates_in_a_row: int = 100
    ray_actor_options: dict[str, Any] | list[dict[str, Any]] | None = None
    ray_init_kwargs: dict[str, Any] | None = None
    _user_env: Any
    # Counted over the learn() calls of one run (reset with reset_num_timesteps).
    dropped_updates: int = 0
    worker_restarts: int = 0
    # The updates dropped since the last applied one with fresh env steps; the first dropped update of the run.
    _dropped_in_a_row: int = 0
    _first_dropped: str | None = None
    # During learn(): who applies the updates (the learner, or the workers), with the optimizer state and the collector.
    _update_path: UpdatePath | None = None
    # During learn(): whether a callback may read self.locals at on_step (else the learner builds none).
    _callbacks_read_locals = True
    # What the constructor was given for n_workers and envs_per_worker (``"auto"`` is resolved at its end),
    # and what "auto" measured and chose (a dict of :class:`WorkerLayout`), saved with the model.
    _requested_layout: tuple[int | str | None, int | str | None] = (None, None)
    auto_layout: dict[str, Any] | None = None

    def _set_async_settings(
        self,
        env: Any,
        n_workers: int | str | None,
        envs_per_worker: int | str | None,
        wait_for_own_update: bool,
        update_mode: str,
        backend: str,
        max_worker_restarts: int,
        worker_timeout: float,
        max_dropped_updates_in_a_row: int,
        ray_actor_options: dict[str, Any] | list[dict[str, Any]] | None,
        ray_init_kwargs: dict[str, Any] | None,
        n_steps: int,
    ) -> None:
        """
        The start of every constructor: the settings every asynchronous algorithm shares, checked
        before any process starts. By default one worker per core, and the envs of a VecEnv the
        user passed shared among them (``make_vec_env(MyEnv, n_envs=8)`` on 2 cores: 2 workers x 4
        envs), so that swapping A2C for A3C keeps the envs and the samples per update the user chose.
        ``"auto"`` is measured at the end of the constructor (:meth:`_choose_worker_layout`): until
        then, the defaults stand in.
        """
        for name, value in (("n_workers", n_workers), ("envs_per_worker", envs_per_worker)):
            if isinstance(value, str) and value != AUTO:
                raise ValueError(f"{name} must be an integer >= 1, None or {AUTO!r}, got {value!r}")
        self._requested_layout = (n_workers, envs_per_worker)
        self.auto_layout = None
        self.n_workers = default_n_workers() if n_workers in (None, AUTO) else n_workers  # type: ignore[assignment]
        if envs_per_worker in (None, AUTO):
            valid_n_workers = isinstance(self.n_workers, (int, np.integer)) and self.n_workers >= 1  # else refused below
            envs_per_worker = max(1, _n_envs_of(env) // self.n_workers) if valid_n_workers else 1
        self.envs_per_worker = envs_per_worker  # type: ignore[assignment]
        self.wait_for_own_update = wait_for_own_update
        self.update_mode = update_mode
        self.backend = backend
        self.max_worker_restarts = max_worker_restarts
        self.worker_timeout = worker_timeout
        self.max_dropped_updates_in_a_row = max_dropped_updates_in_a_row
        self.ray_actor_options = ray_actor_options
        self.ray_init_kwargs = ray_init_kwargs
        if AUTO in self._requested_layout and self.backend != "local":
            raise ValueError(
                f"n_workers={AUTO!r} and envs_per_worker={AUTO!r} measure this machine's cores, not a Ray cluster's: "
                f"give both as numbers with backend={self.backend!r}"
            )
        self._validate_async_arguments(n_steps)
        self._user_env = env

    def _validate_async_arguments(self, n_steps: int) -> None:
        checked = (
            ("n_workers", self.n_workers),
            ("envs_per_worker", self.envs_per_worker),
            ("n_steps", n_steps),
            ("max_dropped_updates_in_a_row", self.max_dropped_updates_in_a_row),
        )
        for name, value in checked:
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.worker_timeout, (int, float)) or not self.worker_timeout > 0:
            raise ValueError(f"worker_timeout must be a number of seconds > 0, got {self.worker_timeout!r}")
        requested_mode = self.update_mode
        if requested_mode not in (*UPDATE_MODES, "auto"):
            raise ValueError(f"update_mode must be one of {UPDATE_MODES} or 'auto', got {requested_mode!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        check_restarts(self.max_worker_restarts)
        if self.backend == "ray":
            if requested_mode in WORKER_UPDATE_MODES:
                raise ValueError(
                    f"update_mode={requested_mode!r} needs the workers to share memory, which Ray actors on a cluster "
                    f"do not: use backend='local' for it, or update_mode='learner' with Ray"
                )
            check_actor_options(self.ray_actor_options, self.n_workers)
            if not isinstance(self.ray_init_kwargs or {}, dict):
                raise ValueError(f"ray_init_kwargs must be a dict, got {self.ray_init_kwargs!r}")
            import_ray()  # an ImportError that says what to install, now rather than in learn()

    def _update_mode(self) -> str:
        """
        Who applies the updates in this ``learn()``. ``"auto"`` (the default): the workers, under the
        lock (``"locked"``), wherever they can (the local backend, the CPU, RMSprop, Adam or AdamW):
        the learner's semantics with no round trip on a worker's critical path, measured faster to the
        threshold (``docs/architecture.md``); else the learner.
        """
        requested = self.update_mode
        if requested != "auto":
            return requested
        shareable = can_share_optimizer(self.policy_kwargs.get("optimizer_class", th.optim.Adam))
        on_cpu = self.device.type == "cpu"
        return "locked" if self.backend == "local" and shareable and on_cpu else "learner"

    def _finish_init(self, use_rms_prop: bool, rms_prop_eps: float, init_setup_model: bool) -> None:
        """
        The end of every constructor: refuse observation spaces SB3's policies cannot read; make
        RMSprop (the paper's optimizer, shared by all workers at the learner) the policy's optimizer
        unless the user chose one; check now, not in the workers, that they can build their envs
        (and whatever else :meth:`_check_worker_setup` checks); build the model.
        """
        supported = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary, spaces.Dict)
        if self.env is not None and not isinstance(self.observation_space, supported):
            raise ValueError(f"{type(self).__name__} does not support observation space {self.observation_space}")
        if self.env is not None:
            # NatureCNN cannot read images under 36x36 (MinAtar's are 10x10): MinAtar's own network instead.
            policy_kwargs = small_image_policy_kwargs(self.policy_class, self.observation_space, self.policy_kwargs)
            if policy_kwargs is not self.policy_kwargs and self.verbose >= 1:
                print(f"Using MinAtarCNN as features extractor: {self.observation_space} is too small for NatureCNN")
            self.policy_kwargs = policy_kwargs
        if use_rms_prop and "optimizer_class" not in self.policy_kwargs:
            self.policy_kwargs["optimizer_class"] = th.optim.RMSprop
            self.policy_kwargs["optimizer_kwargs"] = dict(alpha=0.99, eps=rms_prop_eps, weight_decay=0)
        if self.update_mode in WORKER_UPDATE_MODES:
            check_shared_optimizer(self.policy_kwargs.get("optimizer_class", th.optim.Adam), self._update_mode())
            if self.device.type != "cpu":
                raise ValueError(
                    f"update_mode={self._update_mode()!r} keeps the parameters in shared CPU memory, where the workers "
                    f"update them; pass device='cpu' (got device={self.device})"
                )
        self.n_envs = self.n_workers * self.envs_per_worker
        if self.env is not None:
            self._worker_env_factory()
            self._check_worker_setup()
            if self.backend == "local":
                start_server_in_background(env_modules(self.env))  # the first learn() then finds the workers' server ready
        if init_setup_model:
            self._setup_model()
            if AUTO in self._requested_layout and self.env is not None:
                self._choose_worker_layout()

    def _choose_worker_layout(self) -> None:
        """
        ``n_workers="auto"`` / ``envs_per_worker="auto"``: run a worker's loop for about a second in
        a probe process, then lay the workers out for the cores (:mod:`sb3_async.common.worker_layout`).
        Here rather than in ``learn()``: ``n_envs`` (which callbacks and the user read) is then right from the start.
        """
        requested_workers, requested_envs = self._requested_layout
        auto_workers, auto_envs = requested_workers == AUTO, requested_envs == AUTO
        user_envs = _n_envs_of(self._user_env) if requested_envs is None else None  # shared among the workers chosen
        probed = list(PROBED_ENVS_PER_WORKER) if auto_envs else [self.envs_per_worker]
        params = th.nn.utils.parameters_to_vector(self.policy.parameters()).detach()
        buffers = buffers_to_vector(list(self.policy.buffers()))
        costs = measure_gradient_costs(self._worker_spec(), params, buffers, probed, PROBE_SECONDS)
        layout = choose_layout(
            costs, cores=default_n_workers(), envs_per_worker=None if auto_envs else self.envs_per_worker, n_envs=user_envs
        )
        if auto_workers:
            self.n_workers = layout.n_workers
        if auto_envs or user_envs is not None:
            self.envs_per_worker = layout.envs_per_worker
        self.n_envs = self.n_workers * self.envs_per_worker
        self.auto_layout = replace(layout, n_workers=self.n_workers, envs_per_worker=self.envs_per_worker).as_dict()
        if self.verbose >= 1:
            print(f"{type(self).__name__}: {AUTO!r} chose {WorkerLayout(**self.auto_layout).describe()}")

    def _check_worker_setup(self) -> None:
        """Raise ValueError now for an algorithm-specific setting the workers could not use."""

    @staticmethod
    def _learner_env(env: Any) -> Any:
        """
        What the learner keeps as ``self.env``: the user's env, with a callable turned into one env
        (the learner only needs its spaces and a target for callbacks), and an unknown id turned into
        a ValueError.
        """
        if isinstance(env, str):
            try:
                gym.spec(env)
            except gym.error.Error as error:
                raise ValueError(f"unknown env id {env!r}: {error}") from error
        elif callable(env) and not isinstance(env, (gym.Env, VecEnv)):
            return env()
        return env

    def _worker_env_factory(self) -> WorkerEnvFactory:
        assert self.env is not None, "the learner's env is set before any worker is built"
        return WorkerEnvFactory.from_user_env(self._user_env, self.env, self.envs_per_worker, self.seed)

    def _worker_logic(self) -> tuple[type, dict[str, Any]]:
        raise NotImplementedError

    def _worker_spec(self, worker_updates: WorkerUpdateSettings | None = None) -> WorkerSpec:
        logic_class, logic_kwargs = self._worker_logic()
        return WorkerSpec(
            env_factory=self._worker_env_factory(),
            policy_class=self.policy_class,
            policy_kwargs=self._worker_policy_kwargs(),
            observation_space=self.observation_space,
            action_space=self.action_space,
            logic_class=logic_class,
            logic_kwargs=logic_kwargs,
            normalization=self._normalization_statistics(),
            seed=self.seed,
            wait_for_own_update=self.wait_for_own_update,
            worker_updates=worker_updates,
        )

    def _worker_policy_kwargs(self) -> dict[str, Any]:
        return dict(self.policy_kwargs)

    def _normalization_statistics(self) -> NormalizationStatistics | None:
        if self._vec_normalize_env is None:
            return None
        return NormalizationStatistics.of(self._vec_normalize_env)

    def set_env(self, env: Any, force_reset: bool = True) -> None:
        """SB3's ``set_env``: any env the constructor takes, with any number of envs (the workers make their own)."""
        learner_env = self._wrap_env(self._learner_env(env), self.verbose)
        n_envs = self.n_envs
        self.n_envs = learner_env.num_envs  # what SB3 checks the env against
        try:
            super().set_env(learner_env, force_reset)
        finally:
            self.n_envs = n_envs
        self._user_env = env

    def _excluded_save_params(self) -> list[str]:
        excluded = [
            "_user_env",
            "_steps_for_callbacks",
            "_policy_buffers",
            "_update_path",
            "_callbacks_read_locals",
            "_requested_layout",
            "_dropped_in_a_row",
            "_first_dropped",
        ]
        return [*super()._excluded_save_params(), *excluded]

    def save(
        self,
        path: str | pathlib.Path | io.BufferedIOBase,
        exclude: Iterable[str] | None = None,
        include: Iterable[str] | None = None,
    ) -> None:
        """
        SB3's ``save``, made atomic for a path: the zip is written to a temporary file in the same
        folder, flushed to disk, then renamed over ``path`` (``os.replace``, atomic on POSIX). So the
        file at ``path`` is always a whole model, the old one until the new one is complete, even if
        this process is killed mid-save (an ``EvalCallback`` rewriting ``best_model.zip``, say). A
        process killed mid-save may leave its temporary file (``.<name>.<pid>.<random>.partial.zip``);
        an exception removes it. A file object is written as SB3 writes it.
        """
        if isinstance(path, io.BufferedIOBase):
            return super().save(path, exclude, include)
        target = pathlib.Path(path)
        if target.suffix == "":  # SB3 names it so
            target = target.with_name(f"{target.name}.zip")
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.partial.zip")
        try:
            super().save(partial, exclude, include)
            _flush_to_disk(partial)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)  # gone already, unless the save failed
        try:
            _flush_to_disk(target.parent)  # the rename itself, on file systems that need it
        except OSError:  # a folder cannot be opened on Windows: the rename is as durable as it gets there
            pass

    def get_parameters(self) -> dict[str, dict]:
        """SB3's ``get_parameters``; during ``learn()`` (a callback saving, say), with the optimizer state stepped then."""
        path = self._update_path
        if path is None:
            return super().get_parameters()
        with path.snapshot():
            path.optimizer_state_to_sb3()
            parameters = super().get_parameters()
            # Where the workers apply, the tensors are views of the parameters they go on updating: copy them now.
            return copy.deepcopy(parameters) if path.workers_apply else parameters

    def _init_callback(self, callback: MaybeCallback, progress_bar: bool = False) -> BaseCallback:
        if progress_bar:
            callbacks = callback if isinstance(callback, list) else [callback] if callback is not None else []
            callback = [*callbacks, AsyncProgressBarCallback()]
        return super()._init_callback(callback, progress_bar=False)

    def _learn_async(
        self,
        total_timesteps: int,
        callback: MaybeCallback,
        log_interval: int | None,
        tb_log_name: str,
        reset_num_timesteps: bool,
        progress_bar: bool,
        timesteps_per_iteration: int,
    ):
        self._validate_async_arguments(self.n_steps)
        if self.env is None:
            raise ValueError("this model has no env: pass one with model.set_env(env) or Model.load(path, env=env)")
        self.n_envs = self.n_workers * self.envs_per_worker
        total_timesteps, callback = self._setup_learn(
            total_timesteps, callback, reset_num_timesteps, tb_log_name, progress_bar
        )
        if reset_num_timesteps or not hasattr(self, "_steps_for_callbacks"):
            self._steps_for_callbacks = PendingSteps()  # env steps not yet passed to callbacks (fewer than n_envs)
            self.dropped_updates = 0
            self._dropped_in_a_row, self._first_dropped = 0, None
            self.worker_restarts = 0
        self._update_current_progress_remaining(self.num_timesteps, total_timesteps)
        # The learner's apply is on every worker's critical path. Parameters and gradients as views of
        # two flat tensors make loading a gradient, clipping it and publishing parameters one op each.
        params = list(self.policy.parameters())
        flat_params, flat_gradient = flat_parameters_view(params), flat_gradient_view(params)
        window = _LogWindow()
        iteration = 0
        # The learner's ops are tiny; idle intra-op threads would only spin on the workers' cores.
        user_threads = th.get_num_threads()
        self._policy_buffers = list(self.policy.buffers())
        path = self._update_path = self._start_update_path(total_timesteps, flat_params, flat_gradient)
        collector = path.collector
        restarts_before = self.worker_restarts
        went_well = False
        with sigterm_raises_system_exit():
            try:
                callback.on_training_start(locals(), globals())
                self._callbacks_read_locals = reads_step_locals(callback)
                th.set_num_threads(1)
                collector.start()
                report, stopped_by_callback = None, False
                while self.num_timesteps < total_timesteps:
                    report = collector.next_report()
                    # As SB3's learning rate for a rollout's update: counting the rollout's own steps.
                    steps_taken = self.num_timesteps + self._steps_for_callbacks.n_rows + report.segment.n_env_steps
                    self._update_current_progress_remaining(steps_taken, total_timesteps)
                    self.worker_restarts = restarts_before + collector.restarts
                    if isinstance(path, WorkersApply):
                        self._account_for_worker_update(path, report)
                    else:
                        assert isinstance(path, LearnerApplies)
                        self._apply_report(path, report, flat_params, flat_gradient)
                    window.add(report)
                    if not self._run_callbacks(callback, report):
                        stopped_by_callback = True
                        break
                    done_iterations = (self.num_timesteps - self._num_timesteps_at_start) // timesteps_per_iteration
                    if done_iterations > iteration:
                        iteration = done_iterations
                        if log_interval is not None and iteration % log_interval == 0:
                            self._record_async_logs(window, collector)
                            self._dump_iteration_logs(iteration)
                            window = _LogWindow(idle_seconds_at_start=collector.idle_seconds)
                if report is not None and not stopped_by_callback:
                    self._on_steps_reached(path, report, flat_params, flat_gradient)
                went_well = True
            finally:
                try:
                    path.close(went_well)  # the workers stop (or wait for the next learn()); the policy is SB3's again
                finally:
                    th.set_num_threads(user_threads)
                    self._update_path = None
        callback.on_training_end()
        return self

    def _start_update_path(self, total_timesteps: int, flat_params: th.Tensor, flat_gradient: th.Tensor) -> UpdatePath:
        """
        The collector for one ``learn()`` on the model's backend, inside what applies its updates:
        the learner (``update_mode="learner"``), stepping the flat optimizer state if it can; or, in
        "locked" and "hogwild" mode, the workers, through that state in shared memory.
        """
        params = list(self.policy.parameters())
        # The optimizer steps one tensor per run of parameters, not one per parameter tensor.
        flat_state = None
        if can_flatten(self.policy.optimizer) and flat_params.device.type == "cpu":
            flat_state = FlatOptimizerState.of(self.policy.optimizer, params)
        buffers = buffers_to_vector(self._policy_buffers)
        if self._update_mode() in WORKER_UPDATE_MODES:
            assert flat_state is not None, "checked at construction: the optimizer class and device='cpu'"
            steps_taken = self.num_timesteps + self._steps_for_callbacks.n_rows
            locked = self._update_mode() == "locked"
            settings = WorkerUpdateSettings(self.lr_schedule, self.max_grad_norm, steps_taken, total_timesteps, locked=locked)
            # Exactly the steps the loop of learn() waits for: on_step counts n_envs at a time.
            n_calls_left = -(-(total_timesteps - self.num_timesteps) // self.n_envs)
            step_budget = n_calls_left * self.n_envs - self._steps_for_callbacks.n_rows
            spec, restarts = self._worker_spec(settings), self.max_worker_restarts
            collector = LocalCollector(
                spec, self.n_workers, flat_params, buffers, flat_state, step_budget, restarts, self.worker_timeout
            )
            return WorkersApply(collector, self.policy, flat_state, locked)
        transport: GradientCollector
        if self.backend == "ray":
            transport = RayCollector(
                self._worker_spec(),
                self.n_workers,
                flat_params,
                buffers,
                max_worker_restarts=self.max_worker_restarts,
                ray_actor_options=self.ray_actor_options,
                ray_init_kwargs=self.ray_init_kwargs,
                worker_timeout=self.worker_timeout,
            )
        else:
            transport = LocalCollector(
                self._worker_spec(),
                self.n_workers,
                flat_params,
                buffers,
                max_worker_restarts=self.max_worker_restarts,
                worker_timeout=self.worker_timeout,
            )
        return LearnerApplies(transport, self.policy, flat_state, flat_params, flat_gradient)

    def _dump_iteration_logs(self, iteration: int) -> None:
        """SB3's ``dump_logs`` of the base class (:class:`AsyncOnPolicyAlgorithm`, :class:`AsyncOffPolicyAlgorithm`)."""
        raise NotImplementedError

    def _loop_counters(self, n_calls: int, n_episodes: int) -> dict[str, Any]:
        """The loop counters of the base class's ``collect_rollouts`` in ``self.locals``, counting this report's steps."""
        raise NotImplementedError

    def _on_steps_reached(
        self, path: UpdatePath, last_report: GradientReport, flat_params: th.Tensor, flat_gradient: th.Tensor
    ) -> None:
        """
        Called once ``learn()`` has its ``total_timesteps`` (not when a callback stopped it), while the
        workers still run: a learner that holds experience it has not learned from learns from it here.
        """

    def _after_gradient_step(self, report: GradientReport) -> None:
        """Called after each applied gradient, before the new parameters are published (e.g. to refresh a target network)."""

    @contextmanager
    def _writing_shared_parameters(self) -> Iterator[None]:
        """
        Around a write of the learner into the parameters (a target network's refresh): in "locked"
        mode, where the workers' copies read them straight from shared memory, it takes their lock, so
        that no copy sees half of it; elsewhere it does nothing (learner mode publishes afterwards).
        """
        if self._update_path is None:
            yield
        else:
            with self._update_path.writing():
                yield

    def _apply_report(
        self, path: LearnerApplies, report: GradientReport, flat_params: th.Tensor, flat_gradient: th.Tensor
    ) -> None:
        """
        Apply one worker's gradient (unless it is not finite), add its change to the policy buffers
        (e.g. BatchNorm statistics) to the learner's, publish, and let the worker go on.
        """
        collector = path.collector
        flat_gradient.copy_(collector.gradient(report))
        gradient_norm = flat_gradient.norm().item()
        buffer_change = collector.buffer_change(report) if self._policy_buffers else None
        applied = np.isfinite(gradient_norm) and (buffer_change is None or bool(th.isfinite(buffer_change).all()))
        if applied:
            clip_gradient_norm_(flat_gradient, gradient_norm, self.max_grad_norm)
            self._update_learning_rate([self.policy.optimizer, path.optimizer])
            path.optimizer.step()
            flat_buffers = None
            if buffer_change is not None:
                # Added, not copied: each worker's change counts once, however stale, as its gradient does.
                flat_buffers = buffers_to_vector(self._policy_buffers) + buffer_change
                vector_to_buffers(flat_buffers, self._policy_buffers)
            self._after_gradient_step(report)
            if flat_buffers is not None:  # a target network's copy of them, if the step above made one
                flat_buffers = buffers_to_vector(self._policy_buffers)
            collector.publish(flat_params, flat_buffers)
        self._finish_report(path, report, applied)

    def _account_for_worker_update(self, path: WorkersApply, report: GradientReport) -> None:
        """
        The worker applied its gradient itself (unless it was not finite). Do the learner's
        share: count it, refresh what follows the parameters (a target network), merge VecNormalize
        statistics, and pass the worker the newest ones.
        """
        if report.applied:
            self._update_learning_rate(self.policy.optimizer)  # what the workers use, logged as in learner mode
            if self._policy_buffers:
                with path.holding_lock():  # workers add their buffer changes under it
                    vector_to_buffers(path.shared_buffers, self._policy_buffers)
                    self._after_gradient_step(report)
                    path.shared_buffers.copy_(buffers_to_vector(self._policy_buffers))
            else:
                self._after_gradient_step(report)
        self._finish_report(path, report, bool(report.applied))

    def _finish_report(self, path: UpdatePath, report: GradientReport, applied: bool) -> None:
        """Count the update (or the dropped one), merge its VecNormalize statistics, and answer its worker."""
        if applied:
            self._n_updates += 1
            if report.normalization is not None and self._vec_normalize_env is not None:
                report.normalization.merge_into(self._vec_normalize_env)
            if report.segment.n_env_steps > 0:  # fresh data was learned from (a replay says nothing of the env now)
                self._dropped_in_a_row = 0
        else:
            # A dropped update contributes nothing, not even its normalization statistics.
            self._count_dropped_update(report)
        if path.workers_apply and self._vec_normalize_env is None:
            return  # a worker that applies its own updates waits for no answer, and takes its progress from the budget
        path.collector.send_go(report.worker_id, self._normalization_statistics(), self._current_progress_remaining)

    def _count_dropped_update(self, report: GradientReport) -> None:
        """A non-finite gradient was dropped: count it, warn the first time, and stop when nothing is being learned."""
        where = report.segment.non_finite or f"a gradient that is not finite in worker {report.worker_id}"
        self.dropped_updates += 1
        self._dropped_in_a_row += 1
        if self._first_dropped is None:
            self._first_dropped = where
        if self.dropped_updates == 1:
            warnings.warn(
                f"{type(self).__name__} dropped an update, which met {where}. Dropped updates are not applied and are counted "
                f"in async/dropped_updates; {self.max_dropped_updates_in_a_row} in a row stop training.",
                stacklevel=2,
            )
        if self._dropped_in_a_row >= self.max_dropped_updates_in_a_row:
            raise NonFiniteTrainingError(
                f"the last {self._dropped_in_a_row} updates were all dropped as not finite, so nothing is being learned. "
                f"The first update dropped in this run met {self._first_dropped}; the last, {where}. Check the env's "
                f"rewards and observations (VecCheckNan finds the step), or lower the learning rate."
            )

    def _run_callbacks(self, callback: BaseCallback, report: GradientReport) -> bool:
        """
        Count the report's env steps and call ``on_step`` once per ``n_envs`` of them, as SB3 does once
        per ``env.step()`` of all its envs. ``self.locals`` then holds the next ``n_envs`` env steps the
        workers reported (``new_obs``, ``rewards``, ``dones``, ``infos``, ``actions``, ...), shaped as
        SB3's ``collect_rollouts`` has them, so that every env step reaches the callbacks exactly once.
        """
        callback.on_rollout_start()
        self._steps_for_callbacks.add(report.segment.steps, report.segment.n_env_steps)
        continue_training = True
        n_calls, n_episodes = 0, 0
        while (step := self._steps_for_callbacks.take(self.n_envs)) is not None:
            self.num_timesteps += self.n_envs
            if self._callbacks_read_locals:  # else nobody would read what SB3's loop has in locals()
                callback.update_locals(self._callback_locals(step, callback, n_calls, n_episodes))
            n_calls += 1
            if not callback.on_step():
                continue_training = False
                break
            # After on_step, as SB3 does.
            infos = step.get("infos", [])
            self._update_info_buffer(infos, step.get("dones"))
            n_episodes += sum("episode" in info for info in infos)
        self._episode_num += n_episodes
        callback.on_rollout_end()
        return continue_training

    def _callback_locals(self, step: dict[str, Any], callback: BaseCallback, n_calls: int, n_episodes: int) -> dict[str, Any]:
        """
        What SB3's ``collect_rollouts`` has in ``locals()`` at ``on_step``, except its rollout or replay
        buffer (each worker keeps its own). Its loop counters count this report's steps.
        """
        step = dict(step, env=self.env, callback=callback)
        for key in ("obs_tensor", "values", "log_probs"):  # tensors in SB3's on-policy loop
            if key in step:
                step[key] = obs_as_tensor(step[key], self.device)
        step.update(self._loop_counters(n_calls, n_episodes))
        return step

    def _record_async_logs(self, window: _LogWindow, collector: GradientCollector) -> None:
        elapsed = max(time.perf_counter() - window.started_at, sys.float_info.epsilon)
        for key, values in window.stats.items():
            # A worker's stats go under train/ unless they name their own section (e.g. "offpac/rho_mean").
            self.logger.record(key if "/" in key else f"train/{key}", float(np.mean(values)))
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        if window.staleness:
            self.logger.record("async/staleness_mean", float(np.mean(window.staleness)))
            self.logger.record("async/staleness_max", int(np.max(window.staleness)))
        self.logger.record("async/updates_per_s", len(window.staleness) / elapsed)
        self.logger.record("async/learner_idle_fraction", (collector.idle_seconds - window.idle_seconds_at_start) / elapsed)
        self.logger.record("async/dropped_updates", self.dropped_updates)
        self.logger.record("async/worker_restarts", self.worker_restarts)
        self.logger.record("async/stalled_workers", len(collector.silence.silent))
        self.logger.record("async/n_workers", self.n_workers, exclude="tensorboard")
        self.logger.record("async/envs_per_worker", self.envs_per_worker, exclude="tensorboard")
        self.logger.record("async/update_mode", self._update_mode(), exclude=("tensorboard", "csv"))


class AsyncOnPolicyAlgorithm(AsyncAlgorithmMixin, OnPolicyAlgorithm):
    """SB3's ``OnPolicyAlgorithm`` with its experience from the asynchronous collector (A3C)."""

    def _dump_iteration_logs(self, iteration: int) -> None:
        self.dump_logs(iteration)

    def _loop_counters(self, n_calls: int, n_episodes: int) -> dict[str, Any]:
        return dict(n_rollout_steps=self.n_steps, n_steps=n_calls)


class AsyncOffPolicyAlgorithm(AsyncAlgorithmMixin, OffPolicyAlgorithm):
    """SB3's ``OffPolicyAlgorithm`` with its experience from the asynchronous collector (OffPolicyAC; the value methods)."""

    def _dump_iteration_logs(self, iteration: int) -> None:
        self.logger.record("time/iterations", iteration, exclude="tensorboard")  # OffPolicyAlgorithm.dump_logs takes none
        self.dump_logs()

    def _loop_counters(self, n_calls: int, n_episodes: int) -> dict[str, Any]:
        # The workers' segment length, as the user gave it (no _setup_model here converts it): SB3's TrainFreq, as
        # OffPolicyAlgorithm._convert_train_freq makes it, for the callbacks.
        given = self.train_freq
        if isinstance(given, TrainFreq):
            train_freq = given
        else:
            frequency, unit = given if isinstance(given, tuple) else (given, "step")
            train_freq = TrainFreq(frequency, TrainFrequencyUnit(unit))
        return dict(
            train_freq=train_freq,
            learning_starts=self.learning_starts,
            action_noise=None,
            num_collected_steps=n_calls,
            num_collected_episodes=n_episodes,
            continue_training=True,
        )
