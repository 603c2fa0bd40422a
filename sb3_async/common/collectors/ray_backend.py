"""
The Ray backend (``backend="ray"``): workers are Ray actors, on whatever cluster this process (the
driver, where the learner runs) is connected to; with no connection, ``learn()`` starts a local
Ray and shuts it down at the end::

    learner (driver)                                     worker k (a Ray actor, any node)
    ----------------                                     --------------------------------
    publish (params, buffers, version)                   (built once: envs, policy, WorkerLogic)
    actor_k.compute_gradient.remote(published, go) ----> load params, run a segment, backpropagate
    ray.wait(calls in flight, num_returns=1) <---------- return (GradientReport, gradient, buffer change)
    apply it, then publish()
    send_go(k): actor_k's next call, with the newest parameters

Large parameters (over ``INLINE_BYTES``) go through the object store, one ``ray.put`` per update
however many workers read them; small ones travel inside each call, as Ray inlines small
arguments: a task that reads an object-store reference costs its actor one more round trip to the
store, which for a small network is most of an update's cost (2 x 8 CartPole envs ran at 7,300
env steps/s with a ``ray.put`` per update and 9,700 inline, medians of 2; docs/distributed.md).

Gradients come back as numpy arrays, first ready first applied. With ``wait_for_own_update=False``
each actor has two calls queued, so it starts its next segment at once (with the parameters of one
update earlier), as a local worker with its two slots. Hogwild needs memory shared by all workers
and is local-only.

A dead actor, or its node, is seen through the error its calls return; Ray notices a dead process
at once, a dead node after its health checks (seconds). Within ``max_worker_restarts`` a new actor
takes its place, with new envs and the newest parameters. The learner does not wait for it to be
built (seconds: a process, torch, the envs): its first call is queued at once, Ray runs it once the
actor is up, and meanwhile the other actors' gradients go on being applied.

A new actor costs seconds (a process that imports torch and SB3); building its envs and policy, tens
of milliseconds. So on a Ray the user started, the actors of a ``learn()`` that ends as it should
outlive it, idle (:class:`IdleActors`), and the next ``learn()`` in this process that asks for actors
with the same options, of any model, builds its workers in them: a later ``learn()`` starts in a
fraction of a second instead of 3-4 s. They are built anew, so a worker starts as a new actor would
(new envs, the newest settings and parameters, its seed); only the process is kept. A ``learn()``
that raises stops its actors, and one that started Ray itself shuts it down with them.
"""

import json
import os
import time
import warnings
from collections import OrderedDict
from typing import Any

import cloudpickle
import numpy as np
import torch as th

from sb3_async.common.collectors.base import (
    DEFAULT_WORKER_TIMEOUT,
    SLOTS_PER_WORKER,
    GradientCollector,
    GradientReport,
    Go,
    SilenceWatch,
    WorkerCore,
    WorkerDied,
    WorkerError,
    WorkerSpec,
    prepare_worker_process,
    warn_silent,
)
from sb3_async.common.normalization import NormalizationStatistics
from sb3_async.common.worker_pickling import dumps_for_workers

_WAIT_SECONDS = 1.0
_START_TIMEOUT_SECONDS = 300.0  # actors on a cluster may wait for a node, or for their runtime_env to install
_PATIENCE_SECONDS = 10.0  # then a warning says what the actor waits for
# Parameters up to this size travel inside each call (Ray inlines arguments up to 100 KiB by default);
# larger ones go through the object store once per update.
INLINE_BYTES = 100 * 1024
DEFAULT_ACTOR_OPTIONS: dict[str, Any] = {"num_cpus": 1}


def import_ray() -> Any:
    """Ray, or an ImportError that says how to install it."""
    try:
        import ray
    except ImportError as error:
        raise ImportError("backend='ray' needs Ray, which is not installed: pip install 'sb3_async[ray]'") from error
    return ray


def check_actor_options(ray_actor_options: Any, n_workers: int) -> list[dict[str, Any]]:
    """One options dict per worker: one dict for all of them, or a list of ``n_workers`` dicts (to place each)."""
    if ray_actor_options is None:
        ray_actor_options = {}
    if isinstance(ray_actor_options, dict):
        per_worker = [ray_actor_options] * n_workers
    elif isinstance(ray_actor_options, (list, tuple)) and all(isinstance(options, dict) for options in ray_actor_options):
        per_worker = list(ray_actor_options)
        if len(per_worker) != n_workers:
            raise ValueError(f"ray_actor_options has {len(per_worker)} dicts, one per worker needs n_workers={n_workers}")
    else:
        raise ValueError(f"ray_actor_options must be a dict or a list of n_workers dicts, got {ray_actor_options!r}")
    return [{**DEFAULT_ACTOR_OPTIONS, **options} for options in per_worker]


class RayWorker:
    """
    One worker as a Ray actor: its :class:`WorkerCore`, and a method that turns the published
    parameters into a gradient. Made remote by the collector, so importing this module needs no Ray.
    """

    def __init__(self, worker_id: int, spec_bytes: bytes, n_params: int, incarnation: int, n_workers: int) -> None:
        prepare_worker_process()
        self._build(worker_id, spec_bytes, n_params, incarnation, n_workers)

    def _build(self, worker_id: int, spec_bytes: bytes, n_params: int, incarnation: int, n_workers: int) -> None:
        self.core = WorkerCore(worker_id, cloudpickle.loads(spec_bytes), n_params, incarnation, n_workers)
        # The gradient, or an actor's trajectory (ActorLogic).
        self.gradient = th.zeros(self.core.spec.slot_size(n_params))
        self.buffer_change = th.zeros(0, dtype=th.float64)

    def rebuild(self, worker_id: int, spec_bytes: bytes, n_params: int, incarnation: int, n_workers: int) -> tuple[str, int]:
        """A kept actor's start in a later ``learn()``: envs and policy built anew, as a new actor's; then :meth:`where`."""
        self.core.close()
        self._build(worker_id, spec_bytes, n_params, incarnation, n_workers)
        return self.where()

    def where(self) -> tuple[str, int]:
        """This actor's node id and process id."""
        import ray

        return ray.get_runtime_context().get_node_id(), os.getpid()

    def compute_gradient(
        self, published: tuple[np.ndarray, np.ndarray, int], answer: Go
    ) -> tuple[GradientReport, np.ndarray, np.ndarray]:
        params, buffers, params_version = published
        core = self.core
        core.take_answer(answer)
        # The object store hands out read-only arrays: copy them in.
        np.copyto(core.local_params.numpy(), params)
        core.load_parameters(core.local_params, th.from_numpy(np.array(buffers)))
        segment = core.run_segment()
        core.write_handover(self.gradient)
        if core.buffers:
            self.buffer_change = th.zeros_like(core.buffers_at_start)
            core.write_buffer_change(self.buffer_change)
        report = GradientReport(core.worker_id, params_version, segment, core.new_statistics())
        # Serialized as this call returns, before the next call can overwrite them.
        return report, self.gradient.numpy(), self.buffer_change.numpy()


def _options_key(options: dict[str, Any]) -> str:
    return json.dumps(options, sort_keys=True, default=repr)


class IdleActors:
    """
    The actors that outlived their ``learn()``, by their ``ray.remote`` options, on the Ray this process
    is connected to; a ``learn()`` takes those it can use, and stops the others before it creates new
    ones, since idle actors still hold the resources they asked for (a CPU each by default).
    Forgotten (they are gone with it) when that Ray is shut down or this process reconnects;
    :func:`stop_idle_ray_workers` stops them all.
    """

    def __init__(self) -> None:
        self._connection: tuple[str, ...] | None = None
        self._by_options: dict[str, list[Any]] = {}

    def _forget_if_reconnected(self, ray: Any) -> None:
        connection = _connection(ray)
        if connection != self._connection:
            self._connection, self._by_options = connection, {}

    def take(self, ray: Any, options: dict[str, Any]) -> Any:
        """An idle actor made with ``options``, or None."""
        self._forget_if_reconnected(ray)
        idle = self._by_options.get(_options_key(options), [])
        return idle.pop() if idle else None

    def keep(self, ray: Any, options: dict[str, Any], actor: Any) -> None:
        self._forget_if_reconnected(ray)
        self._by_options.setdefault(_options_key(options), []).append(actor)

    def stop(self, ray: Any) -> None:
        """Kill every idle actor."""
        self._forget_if_reconnected(ray)
        for actors in self._by_options.values():
            for actor in actors:
                ray.kill(actor, no_restart=True)
        self._by_options = {}

    def __len__(self) -> int:
        return sum(len(actors) for actors in self._by_options.values())


def _connection(ray: Any) -> tuple[str, ...] | None:
    """Which Ray this process is connected to (its actors die with the connection), or None."""
    if not ray.is_initialized():
        return None
    context = ray.get_runtime_context()
    return (str(context.gcs_address), context.get_session_name(), context.get_job_id())


IDLE_ACTORS = IdleActors()


def stop_idle_ray_workers() -> None:
    """
    Stop the Ray actors that ``learn()`` calls with ``backend="ray"`` kept for the next one (see
    :class:`IdleActors`), freeing the resources they hold. Nothing to do without Ray.
    """
    ray = import_ray()
    if ray.is_initialized():
        IDLE_ACTORS.stop(ray)


class RayCollector(GradientCollector):
    """
    The learner's side of the Ray backend (see the module docstring).

    :param spec: how each worker builds its envs, its policy and its :class:`WorkerLogic`
    :param n_workers: number of Ray actors
    :param initial_params: the learner's flat parameters, published to the workers at start
    :param initial_buffers: the learner's policy buffers (:func:`buffers_to_vector`), if it has any
    :param max_worker_restarts: how many dead actors to replace before a death is an error
    :param ray_actor_options: options for ``ray.remote`` (``num_cpus``, ``resources``, ``runtime_env``, ...):
        one dict for every actor, or one per actor
    :param ray_init_kwargs: keyword arguments for ``ray.init`` when Ray is not initialised yet
        (then this collector starts it, and shuts it down in :meth:`close`)
    :param worker_timeout: seconds an actor's call may go unanswered before a warning names it (and, with restarts
        left, it is replaced)
    """

    def __init__(
        self,
        spec: WorkerSpec,
        n_workers: int,
        initial_params: th.Tensor,
        initial_buffers: th.Tensor | None = None,
        max_worker_restarts: int = 0,
        ray_actor_options: dict[str, Any] | list[dict[str, Any]] | None = None,
        ray_init_kwargs: dict[str, Any] | None = None,
        worker_timeout: float = DEFAULT_WORKER_TIMEOUT,
    ) -> None:
        if spec.worker_updates is not None:
            raise ValueError("workers that apply their own updates share memory, which the Ray backend's cannot")
        self._ray = import_ray()
        self.n_workers = n_workers
        self.max_worker_restarts = max_worker_restarts
        self._actor_options = check_actor_options(ray_actor_options, n_workers)
        self._ray_init_kwargs = dict(ray_init_kwargs or {})
        self._spec_bytes = dumps_for_workers(spec, what="the worker setup (policy, env factory, hyperparameters)")
        self._calls_per_worker = 1 if spec.wait_for_own_update else SLOTS_PER_WORKER
        self._n_params = initial_params.numel()
        self._buffers = np.zeros(0) if initial_buffers is None else initial_buffers.to("cpu", th.float64).numpy().copy()
        self._initial = (initial_params.detach().to("cpu").numpy().copy(), self._buffers)
        self._published: Any = None
        self._actors: list[Any] = []
        self._incarnations = [0] * n_workers
        self.worker_locations: list[tuple[str | None, int]] = []  # (node id, pid) of each actor; (None, 0) while it builds
        self._locating: dict[Any, int] = {}  # replacements' where() calls not yet answered -> worker id
        self._pending: OrderedDict[Any, int] = OrderedDict()  # calls in flight, oldest first -> worker id
        self._last_answer = [Go() for _ in range(n_workers)]
        self._payloads: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._started_ray = False
        self.version = 0
        self.idle_seconds = 0.0
        self.restarts = 0
        self.silence = SilenceWatch(n_workers, worker_timeout)
        self._closed = False

    @property
    def worker_pids(self) -> list[int]:
        # As the local collector's: the processes that run now, so a replacement still building is left out.
        return [pid for _, pid in self.worker_locations if pid]

    def start(self) -> None:
        ray = self._ray
        if not ray.is_initialized():
            ray.init(**self._ray_init_kwargs)
            self._started_ray = True
        self._publish(*self._initial, version=0)
        kept = [IDLE_ACTORS.take(ray, options) for options in self._actor_options]
        IDLE_ACTORS.stop(ray)  # the idle actors left over would hold resources that new ones may need
        self._actors = [actor or self._new_actor(worker_id) for worker_id, actor in enumerate(kept)]
        builds = [
            self._actors[worker_id].where.remote() if actor is None else actor.rebuild.remote(*self._build_args(worker_id))
            for worker_id, actor in enumerate(kept)
        ]
        rebuilt = self._rebuilt_locations({worker_id: builds[worker_id] for worker_id, actor in enumerate(kept) if actor})
        self.worker_locations = [(None, 0)] * self.n_workers
        for worker_id, build in enumerate(builds):
            location = rebuilt.get(worker_id)
            if kept[worker_id] is not None and location is None:  # as if none had been kept
                self._actors[worker_id] = self._new_actor(worker_id)
                build = self._actors[worker_id].where.remote()
            try:
                self.worker_locations[worker_id] = location or self._wait_until_built(worker_id, build)
            except WorkerDied as died:
                raise WorkerError(worker_id, died.reason) from None
        for worker_id in range(self.n_workers):
            self.silence.heard(worker_id)  # built: its silence counts from now
            for _ in range(self._calls_per_worker):
                self._submit(worker_id)

    def _build_args(self, worker_id: int) -> tuple[int, bytes, int, int, int]:
        return worker_id, self._spec_bytes, self._n_params, self._incarnations[worker_id], self.n_workers

    def _new_actor(self, worker_id: int) -> Any:
        remote_class = self._ray.remote(RayWorker).options(**self._actor_options[worker_id])
        return remote_class.remote(*self._build_args(worker_id))

    def _wait_until_built(self, worker_id: int, where: Any) -> tuple[str, int]:
        ray = self._ray
        waited = 0.0
        while True:
            try:
                return ray.get(where, timeout=_PATIENCE_SECONDS)
            except ray.exceptions.GetTimeoutError:
                waited += _PATIENCE_SECONDS
            except ray.exceptions.RayActorError as error:
                if error.actor_init_failed:
                    raise WorkerError(
                        worker_id, "raised an exception while it built its envs and policy", str(error)
                    ) from None
                # Killed, or its node died, before it was built (say, placed on a node Ray did not yet know was dying).
                raise WorkerDied(worker_id, f"died before it was built (Ray: {_first_line(error)})") from None
            # Most often the cluster cannot place the actor (yet): say so rather than wait in silence.
            resources = f"asks for {self._actor_options[worker_id]}; the cluster has {ray.available_resources()} free"
            if waited >= _START_TIMEOUT_SECONDS:
                raise TimeoutError(f"sb3_async Ray worker {worker_id} did not start within {waited:.0f} s: it {resources}")
            if waited == _PATIENCE_SECONDS:
                warnings.warn(
                    f"sb3_async Ray worker {worker_id} has not started after {waited:.0f} s: it {resources}", stacklevel=2
                )

    def _rebuilt_locations(self, rebuilds: dict[int, Any]) -> dict[int, tuple[str, int]]:
        """
        Where each kept actor runs once it has built its worker, by worker id; left out: those that died while idle,
        or did not answer within ``worker_timeout`` (a call of the last ``learn()`` that hangs, say), all waited for
        at once. Those are killed, and new actors take their places.
        """
        ray = self._ray
        if not rebuilds:
            return {}
        answered, _ = ray.wait(list(rebuilds.values()), num_returns=len(rebuilds), timeout=self.silence.timeout)
        locations = {}
        for worker_id, rebuild in rebuilds.items():
            try:
                if rebuild not in answered:
                    warnings.warn(
                        f"sb3_async Ray worker {worker_id}: the actor kept from the last learn() did not answer within "
                        f"{self.silence.timeout:.0f} s (a call of that learn() still runs: an env whose step hangs, "
                        f"say); it is stopped and a new actor takes its place",
                        stacklevel=3,
                    )
                else:
                    locations[worker_id] = ray.get(rebuild)
            except ray.exceptions.RayActorError:  # it died while idle (or Ray cannot reach it: stopped all the same)
                pass
            except ray.exceptions.RayTaskError as error:
                raise WorkerError(worker_id, "raised an exception while it built its envs and policy", str(error)) from None
            if worker_id not in locations:
                ray.kill(self._actors[worker_id], no_restart=True)
        return locations

    def _submit(self, worker_id: int) -> None:
        call = self._actors[worker_id].compute_gradient.remote(self._published, self._last_answer[worker_id])
        self._pending[call] = worker_id

    def next_report(self) -> GradientReport:
        ray = self._ray
        waiting_since = time.perf_counter()
        while True:
            self._look_for_silent_workers()
            self._note_where_replacements_run()
            ready, _ = ray.wait(list(self._pending), num_returns=1, timeout=_WAIT_SECONDS)
            if not ready:
                continue
            worker_id = self._pending.pop(ready[0])
            self.silence.heard(worker_id)
            node = self.worker_locations[worker_id][0]
            try:
                report, gradient, buffer_change = ray.get(ready[0])
            except ray.exceptions.RayActorError as error:
                if error.actor_init_failed:  # a replacement whose envs or policy raised: it would raise again
                    raise WorkerError(
                        worker_id, "raised an exception while it built its envs and policy", str(error)
                    ) from None
                self._restart_or_raise(worker_id, f"died unexpectedly (Ray: {_first_line(error)})")
                continue
            except ray.exceptions.RayTaskError as error:
                # Its message is the worker's traceback (the class Ray raises wraps the worker's exception).
                raise WorkerError(worker_id, "raised an exception", str(error), node=node) from None
            break
        self.idle_seconds += time.perf_counter() - waiting_since
        self._payloads[worker_id] = (gradient, buffer_change)
        report.staleness = self.version - report.params_version
        # Arrays out of the object store are read-only; callbacks may write into the steps they see.
        report.segment.steps = _writable(report.segment.steps)
        return report

    def _note_where_replacements_run(self) -> None:
        """The node and pid of each replacement that is built by now (one that died building says so through its calls)."""
        if not self._locating:
            return
        built, _ = self._ray.wait(list(self._locating), num_returns=len(self._locating), timeout=0)
        for where in built:
            worker_id = self._locating.pop(where)
            try:
                self.worker_locations[worker_id] = self._ray.get(where)
            except self._ray.exceptions.RayError:
                pass

    def gradient(self, report: GradientReport) -> th.Tensor:
        return _writable_tensor(self._payloads[report.worker_id][0])

    def buffer_change(self, report: GradientReport) -> th.Tensor:
        return _writable_tensor(self._payloads[report.worker_id][1])

    def publish(self, flat_params: th.Tensor, flat_buffers: th.Tensor | None = None) -> None:
        self.version += 1
        if flat_buffers is not None:
            self._buffers = flat_buffers.to("cpu", th.float64).numpy().copy()
        # A copy: the learner changes its parameters in place, and this is sent again with later calls.
        self._publish(flat_params.detach().to("cpu").numpy().copy(), self._buffers, self.version)

    def _publish(self, params: np.ndarray, buffers: np.ndarray, version: int) -> None:
        published = (params, buffers, version)
        self._published = published if params.nbytes + buffers.nbytes <= INLINE_BYTES else self._ray.put(published)

    def send_go(
        self, worker_id: int, normalization: NormalizationStatistics | None = None, progress_remaining: float = 1.0
    ) -> None:
        self._payloads.pop(worker_id, None)
        self._last_answer[worker_id] = Go(normalization, progress_remaining)
        self._submit(worker_id)

    def _look_for_silent_workers(self) -> None:
        for worker_id, seconds in self.silence.newly_silent():
            replace = self.restarts < self.max_worker_restarts
            node = self.worker_locations[worker_id][0]
            if worker_id in self._locating.values():  # a replacement that Ray has not finished starting
                doing = "still being built (a replacement: it has not yet built its envs and policy)"
            else:
                doing = "computing a gradient (its call has not returned: an env whose step hangs, say)"
            warn_silent(worker_id, seconds, doing, replace, node)
            if replace:
                self._restart_or_raise(worker_id, f"was silent for {seconds:.0f} s and was replaced")

    def _restart_or_raise(self, worker_id: int, reason: str) -> None:
        """Replace a dead actor (or raise, with no restart left), without waiting for the new one to be built."""
        if self.restarts >= self.max_worker_restarts:
            raise WorkerError(worker_id, reason, node=self.worker_locations[worker_id][0])
        self.restarts += 1
        # Its other calls in flight fail the same way: forget them.
        for call in [call for call, owner in self._pending.items() if owner == worker_id]:
            del self._pending[call]
        for where in [where for where, owner in self._locating.items() if owner == worker_id]:
            del self._locating[where]
        self._ray.kill(self._actors[worker_id], no_restart=True)
        self._incarnations[worker_id] += 1
        self._actors[worker_id] = self._new_actor(worker_id)
        self.worker_locations[worker_id] = (None, 0)
        self._locating[self._actors[worker_id].where.remote()] = worker_id
        self.silence.heard(worker_id)  # its silence counts from its start, not from its predecessor's last report
        # Queued now, run by Ray once the actor is built; a replacement that dies building fails them, and is replaced.
        for _ in range(self._calls_per_worker):
            self._submit(worker_id)

    def end(self) -> None:
        """
        ``learn()`` is over and went as it should: on a Ray the user started, the actors heard from
        lately go idle for the next ``learn()`` (:class:`IdleActors`); the rest stop as in :meth:`close`.
        """
        if self._closed or self._started_ray:
            return self.close()
        ray = self._ray
        # The calls in flight run their segments, unread, before a later learn()'s rebuild: not cancelled, since
        # cancelling a queued actor call can stall the calls behind it (ray-project/ray#60850, #66020).
        self._pending.clear()
        # A silent actor's call may never return, and a later learn() would wait behind it.
        silent = self.silence.silent | {worker_id for worker_id, _ in self.silence.newly_silent()}
        for worker_id, actor in enumerate(self._actors):
            if worker_id not in silent:
                IDLE_ACTORS.keep(ray, self._actor_options[worker_id], actor)
        self._actors = [actor for worker_id, actor in enumerate(self._actors) if worker_id in silent]
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        ray = self._ray
        self._pending.clear()
        self._locating.clear()
        self._payloads.clear()
        try:
            for actor in self._actors:
                ray.kill(actor, no_restart=True)
        finally:
            self._actors.clear()
            self._published = None
            if self._started_ray:
                ray.shutdown()


def _writable_tensor(array: np.ndarray) -> th.Tensor:
    # Arrays from the object store are read-only; torch wants to be able to write what it wraps.
    return th.from_numpy(array if array.flags.writeable else array.copy())


def _writable(column: Any) -> Any:
    if isinstance(column, dict):
        return {key: _writable(value) for key, value in column.items()}
    if isinstance(column, np.ndarray) and not column.flags.writeable:
        return column.copy()
    return column


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
