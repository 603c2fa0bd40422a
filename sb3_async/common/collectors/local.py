"""
The local backend (``backend="local"``): worker processes on this machine, parameters and
gradients in shared memory::

    learner (main process)                               worker k  (K processes)
    ----------------------                               -----------------------
                                                         copy the newest parameters <--- params, buffers (shm)
                                                         WorkerLogic.compute_loss():
                                                             n_steps in its own envs -> loss
                                                         loss.backward()
                                                         (waits for an answer: see below)
                                                         write the flat gradient --> gradients[k, slot] (shm)
                                                         and the buffer change  --> buffer_changes[k, slot]
    next_report() <------------ report pipe k ---------- GradientReport(k, slot, params_version, env steps)
    apply gradients[k, slot] with the one optimizer,     ... then its next segment
      add buffer_changes[k, slot]
    publish() ---> params, buffers (shm), params_version += 1
    send_go(k) --- go pipe k: "go" (+ VecNormalize stats, progress) ---> read when it comes: slot free, newest stats
    callbacks' on_step once per n_envs reported env steps

Policy buffers (BatchNorm's running statistics) travel like the parameters: the learner publishes
them with every update; each worker writes how its segment changed them into a slot of its own,
and the learner adds that change to its buffers, as it applies the gradient.

Parameters and gradients never travel through pickles: they, the buffers, and two gradient slots
and two buffer-change slots per worker live in shared memory, created once; the pipes carry the
messages that name a slot, and the segment's env steps for the learner's callbacks. Each worker
has pipes of its own, so a worker killed halfway through a message corrupts nothing but its own
pipe, and a replacement (``max_worker_restarts``) starts with fresh ones.

Two ways to go on after a report (``wait_for_own_update``):

- True, the default, the paper's: the worker waits for the learner's answer to its report, so its
  next segment starts from parameters that include its own last update.
- False, no idle round trip: the worker starts its next segment at once, with the newest
  parameters published at that moment. Its next gradient goes into its other slot; it waits only
  if the learner has not yet applied the gradient before last, which frees that slot.

How many updates landed between a worker's parameter copy and the application of its gradient
(with False, its own included) is the staleness the learner logs.

With ``update_mode="locked"`` or ``"hogwild"`` (``WorkerSpec.worker_updates`` set) a worker applies
its gradient itself to the shared parameters, with an optimizer state that all workers share
(:mod:`sb3_async.common.worker_updates`): under the lock ("locked"), or lock-free ("hogwild"). It
then reports what it did and goes on without waiting; the learner only counts, calls back, logs
and merges statistics. Each worker claims its segment's env steps from a shared budget before it
applies, so exactly the steps ``learn()`` asked for are applied.
"""

import multiprocessing as mp
import signal
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
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
    clip_gradient_norm_,
    prepare_worker_process,
    warn_silent,
)
from sb3_async.common.normalization import NormalizationStatistics
from sb3_async.common.worker_pickling import dumps_for_workers
from sb3_async.common.flat_optimizer import FlatOptimizerState
from sb3_async.common.forkserver import worker_context
from sb3_async.common.worker_updates import WorkerUpdateSettings

# A worker that died is seen at once through its sentinel; this only bounds a wait that sees nothing.
_WAIT_SECONDS = 1.0
_START_TIMEOUT_SECONDS = 120.0
# Workers hold the shared lock for microseconds: held this long while a worker is dead, the dead one holds it.
_LOCK_PATIENCE_SECONDS = 0.1


@dataclass
class _Ready:
    worker_id: int


@dataclass
class _Failure:
    worker_id: int
    traceback: str


_STOP = None


@dataclass
class _SharedMemory:
    params: th.Tensor  # flat global parameters, written only by the learner
    params_version: th.Tensor  # int64[1]: number of updates applied so far
    # [n_workers, SLOTS_PER_WORKER, n_params]: row k written only by worker k (an actor's: trajectories, spec.slot_size)
    gradients: th.Tensor
    lock: Any  # so that no worker copies half-written parameters; orders the claims of workers that apply their own updates
    buffers: th.Tensor  # float64 [n_buffer_values]: the policy's buffers (e.g. BatchNorm statistics), as params
    buffer_changes: th.Tensor  # float64 [n_workers, SLOTS_PER_WORKER, n_buffer_values]: what each gradient's segment changed
    # Workers that apply their own updates only: the optimizer's state, stepped by every worker, and int64
    # [env steps claimed, budget]: a worker claims its segment's steps before it applies the gradient, and
    # stops once the budget is spent.
    optimizer_state: FlatOptimizerState | None
    claims: th.Tensor
    claims_by_worker: th.Tensor  # int64 [n_workers]: what each worker claimed, to give back a dead one's unreported steps
    activity: th.Tensor  # int64 [n_workers]: what each worker is doing (ACTIVITIES), for a warning if it goes silent


# What a worker is doing, as it writes it into the shared activity row: what a warning about a silent worker says.
STARTING, STEPPING, WAITING, UPDATING, FINISHED = range(5)
ACTIVITIES = {
    STARTING: "building its envs and policy",
    STEPPING: "stepping its envs or computing its loss (an env whose step hangs, say)",
    WAITING: "waiting for the learner's answer to its last report",
    UPDATING: "waiting for the shared lock, or applying its update",
    FINISHED: "done: learn() has all the env steps it asked for",
}


def _worker_main(
    worker_id: int,
    spec_bytes: bytes,
    shared: _SharedMemory,
    go_receiver: Connection,
    report_sender: Connection,
    incarnation: int,
    n_workers: int,
) -> None:
    prepare_worker_process()
    core = None
    try:
        spec: WorkerSpec = cloudpickle.loads(spec_bytes)
        core = WorkerCore(worker_id, spec, shared.params.numel(), incarnation, n_workers)
        worker = _Worker(core, shared, report_sender)
        worker.doing(WAITING)
        report_sender.send(_Ready(worker_id))
        answers = _Answers(go_receiver)
        if spec.worker_updates is None:
            worker.run_learner_mode(answers)
        else:
            worker.run_own_updates(answers, spec.worker_updates)
    except (EOFError, BrokenPipeError):
        pass  # the learner is gone: there is nobody to report to
    except BaseException:
        try:
            report_sender.send(_Failure(worker_id, traceback.format_exc()))
        except OSError:
            pass
    finally:
        if core is not None:
            core.close()


class _Worker:
    """A worker's loop, in each update mode: copy the parameters, run a segment, hand over (or apply) its gradient."""

    def __init__(self, core: WorkerCore, shared: _SharedMemory, reports: Connection) -> None:
        self.core = core
        self.worker_id = core.worker_id
        self.shared = shared
        self.reports = reports
        self._activity = shared.activity.numpy()  # a numpy view: one store per change, no torch dispatch

    def doing(self, activity: int) -> None:
        self._activity[self.worker_id] = activity

    def _copy_shared_parameters(self) -> int:
        """Copy the newest parameters and buffers into the local policy; return their version."""
        with self.shared.lock:
            self.core.load_parameters(self.shared.params, self.shared.buffers)
            return int(self.shared.params_version.item())

    def run_learner_mode(self, answers: "_Answers") -> None:
        """Hand each gradient to the learner through a shared slot; the learner applies it."""
        shared, core, slot = self.shared, self.core, 0
        while answers.latest is not _STOP:
            if core.spec.wait_for_own_update:
                # The paper's way: the next segment starts from parameters that include this worker's last update.
                answers.wait_until_unanswered(0)
            else:
                answers.read_those_already_sent()
            if answers.latest is _STOP:
                break
            core.take_answer(answers.latest)
            params_version = self._copy_shared_parameters()
            self.doing(STEPPING)
            segment = core.run_segment()
            self.doing(WAITING)
            # This slot held the report before last: it is free once that one was answered.
            answers.wait_until_unanswered(SLOTS_PER_WORKER - 1)
            if answers.latest is _STOP:
                break
            core.write_handover(shared.gradients[self.worker_id, slot])
            core.write_buffer_change(shared.buffer_changes[self.worker_id, slot])
            report = GradientReport(self.worker_id, params_version, segment, core.new_statistics(), slot=slot)
            self.reports.send(report)
            answers.unanswered += 1
            slot = (slot + 1) % SLOTS_PER_WORKER

    def run_own_updates(self, answers: "_Answers", settings: WorkerUpdateSettings) -> None:
        """
        Apply each gradient to the shared parameters here, with the shared optimizer state, then tell
        the learner what was done, and go on without waiting for it. ``"locked"``: the update is
        taken under the lock the copies take, so updates land one at a time and no copy sees half
        of one. ``"hogwild"``: the update takes no lock, so a copy may catch another's update half
        done; the lock then only orders the claim on the step budget, the version count and the
        buffer changes, a few numbers.
        """
        shared, core = self.shared, self.core
        optimizer_state = shared.optimizer_state
        assert optimizer_state is not None
        flat_gradient = th.zeros_like(core.local_params)
        buffer_change = th.zeros_like(shared.buffers)
        step = optimizer_state.stepper_over(shared.params, flat_gradient)

        def apply(claimed: int, n_env_steps: int) -> None:
            # As SB3's learning rate for a rollout's update: counting the rollout's own steps.
            step(settings.lr_schedule(settings.progress_remaining(claimed + n_env_steps)))

        while True:
            answers.read_those_already_sent()
            if answers.latest is _STOP:
                return
            core.take_answer(answers.latest)
            core.logic.progress_remaining = settings.progress_remaining(int(shared.claims[0].item()))
            params_version = self._copy_shared_parameters()
            self.doing(STEPPING)
            segment = core.run_segment()
            self.doing(UPDATING)
            core.write_gradient(flat_gradient)
            core.write_buffer_change(buffer_change)
            gradient_norm = flat_gradient.norm().item()
            applied = np.isfinite(gradient_norm) and bool(th.isfinite(buffer_change).all())
            if applied:  # before the lock: the lock is every other worker's wait
                clip_gradient_norm_(flat_gradient, gradient_norm, settings.max_grad_norm)
            with shared.lock:
                claimed, budget = (int(value) for value in shared.claims.tolist())
                if claimed >= budget:  # learn() has all the steps it asked for, or was stopped
                    break
                shared.claims[0] += segment.n_env_steps
                shared.claims_by_worker[self.worker_id] += segment.n_env_steps
                staleness = int(shared.params_version.item()) - params_version
                if applied:
                    shared.params_version += 1
                    if core.buffers:
                        shared.buffers += buffer_change
                    if settings.locked:
                        apply(claimed, segment.n_env_steps)
            if applied and not settings.locked:
                apply(claimed, segment.n_env_steps)
            # A dropped gradient contributes nothing, not even its normalization statistics.
            statistics = core.new_statistics() if applied else None
            report = GradientReport(self.worker_id, params_version, segment, statistics, staleness=staleness, applied=applied)
            self.reports.send(report)
        self.doing(FINISHED)
        answers.wait_until_stopped()


class _Answers:
    """
    A worker's side of its "go" pipe. The first message starts the worker; each later one answers
    one of its reports ("applied: that slot is free", with the newest statistics and progress),
    until the stop message.
    """

    def __init__(self, go_receiver: Connection) -> None:
        self._receiver = go_receiver
        self.latest: Any = go_receiver.recv()  # the start signal, once every worker is ready
        self.unanswered = 0

    def _read_one(self) -> None:
        self.latest = self._receiver.recv()
        if self.latest is not _STOP:
            self.unanswered -= 1

    def wait_until_unanswered(self, at_most: int) -> None:
        while self.unanswered > at_most and self.latest is not _STOP:
            self._read_one()

    def read_those_already_sent(self) -> None:
        while self.latest is not _STOP and self._receiver.poll():
            self._read_one()

    def wait_until_stopped(self) -> None:
        while self.latest is not _STOP:
            self._read_one()


@dataclass
class _WorkerProcess:
    """The learner's handles on one worker process."""

    process: mp.process.BaseProcess
    go_sender: Connection
    report_receiver: Connection
    incarnation: int

    def close(self) -> None:
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(1.0)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.process.close()
        self.go_sender.close()
        self.report_receiver.close()


class LocalCollector(GradientCollector):
    """
    The learner's side of the local backend: worker processes forked from sb3_async's forkserver,
    parameters and gradients in shared memory (see the module docstring).

    :param spec: how each worker builds its envs, its policy and its :class:`WorkerLogic`
    :param n_workers: number of worker processes
    :param initial_params: the learner's flat parameters, published to the workers at start
    :param initial_buffers: the learner's policy buffers (:func:`buffers_to_vector`), if it has any
    :param optimizer_state: only when the workers apply their own updates (``spec.worker_updates`` set): the optimizer
        state they share
    :param step_budget: only when the workers apply their own updates: how many env steps they may take in all
    :param max_worker_restarts: how many dead workers to replace before a death is an error
    :param worker_timeout: seconds a worker may send nothing before a warning names it (and, with restarts left,
        it is replaced)
    """

    def __init__(
        self,
        spec: WorkerSpec,
        n_workers: int,
        initial_params: th.Tensor,
        initial_buffers: th.Tensor | None = None,
        optimizer_state: FlatOptimizerState | None = None,
        step_budget: int = 0,
        max_worker_restarts: int = 0,
        worker_timeout: float = DEFAULT_WORKER_TIMEOUT,
    ) -> None:
        if (spec.worker_updates is None) != (optimizer_state is None):
            raise ValueError("workers that apply their own updates need the shared optimizer state, and only they use it")
        self.n_workers = n_workers
        self.max_worker_restarts = max_worker_restarts
        # Pickling problems surface here, before any process starts.
        self._spec_bytes = dumps_for_workers(spec, what="the worker setup (policy, env factory, hyperparameters)")
        self._context = worker_context()
        flat = initial_params.detach().to("cpu").clone()
        buffers = th.zeros(0, dtype=th.float64) if initial_buffers is None else initial_buffers.to("cpu", th.float64).clone()
        self._shared = _SharedMemory(
            params=flat.share_memory_(),
            params_version=th.zeros(1, dtype=th.int64).share_memory_(),
            gradients=th.zeros(n_workers, SLOTS_PER_WORKER, spec.slot_size(flat.numel()), dtype=flat.dtype).share_memory_(),
            lock=self._context.Lock(),
            buffers=buffers.share_memory_(),
            buffer_changes=th.zeros(n_workers, SLOTS_PER_WORKER, buffers.numel(), dtype=th.float64).share_memory_(),
            optimizer_state=None if optimizer_state is None else optimizer_state.share_memory_(),
            claims=th.tensor([0, step_budget], dtype=th.int64).share_memory_(),
            claims_by_worker=th.zeros(n_workers, dtype=th.int64).share_memory_(),
            activity=th.full((n_workers,), STARTING, dtype=th.int64).share_memory_(),
        )
        self.silence = SilenceWatch(n_workers, worker_timeout)
        self.workers_apply = spec.worker_updates is not None
        self._workers: list[_WorkerProcess] = []
        self._reported_steps = [0] * n_workers  # workers that apply their own updates: env steps each reported
        self._next_to_read = 0  # where the round over the report pipes starts: no worker goes unread
        self.version = 0
        self.idle_seconds = 0.0
        self.restarts = 0
        self._closed = False

    @property
    def worker_pids(self) -> list[int]:
        return [worker.process.pid for worker in self._workers if worker.process.pid is not None]

    def _start_worker(self, worker_id: int, incarnation: int) -> _WorkerProcess:
        go_receiver, go_sender = self._context.Pipe(duplex=False)
        report_receiver, report_sender = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=_worker_main,
            args=(worker_id, self._spec_bytes, self._shared, go_receiver, report_sender, incarnation, self.n_workers),
            name=f"sb3_async-worker-{worker_id}",
            daemon=True,
        )
        try:
            process.start()
        finally:
            # The worker holds the only other ends: it sees EOF if we die, and we see EOF if it dies.
            go_receiver.close()
            report_sender.close()
        return _WorkerProcess(process, go_sender, report_receiver, incarnation)

    def start(self) -> None:
        """Start every worker, wait until each has built its envs and policy, then let them run."""
        for worker_id in range(self.n_workers):
            self._workers.append(self._start_worker(worker_id, incarnation=0))
        deadline = time.monotonic() + _START_TIMEOUT_SECONDS
        ready: set[int] = set()
        while len(ready) < self.n_workers:
            if time.monotonic() > deadline:
                raise TimeoutError(f"sb3_async workers did not start within {_START_TIMEOUT_SECONDS:.0f} s")
            try:
                message = self._receive_or_raise()
            except WorkerDied as died:  # a worker that cannot start would not start again
                raise WorkerError(died.worker_id, died.reason) from None
            assert isinstance(message, _Ready), f"unexpected message before start: {message}"
            ready.add(message.worker_id)
        for worker_id in range(self.n_workers):
            self.send_go(worker_id)

    def next_report(self) -> GradientReport:
        """Block until some worker's gradient is ready (raises :class:`WorkerError` if one fails)."""
        waiting_since = time.perf_counter()
        while True:
            try:
                message = self._receive_or_raise(watch_silence=True)
            except WorkerDied as died:
                self._restart_or_raise(died)
                continue
            if isinstance(message, _Ready):  # a replacement built its envs: let it run
                self.send_go(message.worker_id)
                continue
            break
        self.idle_seconds += time.perf_counter() - waiting_since
        assert isinstance(message, GradientReport), f"unexpected message: {message}"
        if self.workers_apply:
            self._reported_steps[message.worker_id] += message.segment.n_env_steps
        else:
            message.staleness = self.version - message.params_version
        return message

    @property
    def shared_params(self) -> th.Tensor:
        """The flat parameters in shared memory: workers that apply their own updates update them in place."""
        return self._shared.params

    @property
    def shared_buffers(self) -> th.Tensor:
        return self._shared.buffers

    @property
    def optimizer_state(self) -> FlatOptimizerState | None:
        return self._shared.optimizer_state

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the lock that workers take to read the parameters and buffers (and to claim steps, or update)."""
        self._acquire_lock()
        try:
            yield
        finally:
            self._shared.lock.release()

    def _acquire_lock(self) -> None:
        while not self._shared.lock.acquire(timeout=_LOCK_PATIENCE_SECONDS):
            if any(not worker.process.is_alive() for worker in self._workers):
                return  # a worker died holding it: it is ours now

    def stop_claims(self) -> None:
        """Let no worker apply another gradient of its own (training stops)."""
        with self.locked():
            self._shared.claims[1] = 0

    def gradient(self, report: GradientReport) -> th.Tensor:
        return self._shared.gradients[report.worker_id, report.slot]

    def buffer_change(self, report: GradientReport) -> th.Tensor:
        return self._shared.buffer_changes[report.worker_id, report.slot]

    def publish(self, flat_params: th.Tensor, flat_buffers: th.Tensor | None = None) -> None:
        with self.locked():
            self._shared.params.copy_(flat_params)
            if flat_buffers is not None:
                self._shared.buffers.copy_(flat_buffers)
            self.version += 1
            self._shared.params_version.fill_(self.version)

    def send_go(
        self, worker_id: int, normalization: NormalizationStatistics | None = None, progress_remaining: float = 1.0
    ) -> None:
        try:
            self._workers[worker_id].go_sender.send(Go(normalization, progress_remaining))
        except OSError:  # it died: the next receive sees that
            pass

    def _restart_or_raise(self, died: WorkerDied) -> None:
        if self.restarts >= self.max_worker_restarts:
            raise WorkerError(died.worker_id, died.reason)
        self.restarts += 1
        worker_id = died.worker_id
        old = self._workers[worker_id]
        with self.locked():  # freed, if the dead worker held it
            if self.workers_apply:
                # Steps it claimed and never reported would otherwise stay spent: learn() would wait for them forever.
                unreported = int(self._shared.claims_by_worker[worker_id]) - self._reported_steps[worker_id]
                self._shared.claims[0] -= unreported
                self._shared.claims_by_worker[worker_id] -= unreported
        old.close()
        self._workers[worker_id] = self._start_worker(worker_id, old.incarnation + 1)

    def close(self, timeout: float = 5.0) -> None:
        """Stop every worker (politely, then by force) and free every resource. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.stop_claims()  # no worker applies a gradient the learner will not count
        for worker in self._workers:
            try:
                worker.go_sender.send(_STOP)
            except OSError:  # that worker is already gone
                pass
        self._drain_reports_until_workers_exit(time.monotonic() + timeout)
        for worker in self._workers:
            worker.close()
        # Drop the last references to the shared tensors and the lock (Process objects keep their
        # arguments), so their memory and /dev/shm semaphores go now, not at some later gc.collect().
        self._workers.clear()
        del self._shared

    def _drain_reports_until_workers_exit(self, deadline: float) -> None:
        # A worker may be blocked writing a report larger than the pipe holds (image steps, say): it
        # only reads its "stop" once that report is read. A worker already silent for longer than
        # worker_timeout (an env whose step hangs) is not waited for: close() stops it by force.
        while time.monotonic() < deadline:
            alive = [
                worker
                for worker_id, worker in enumerate(self._workers)
                if worker.process.is_alive() and worker_id not in self.silence.silent
            ]
            if not alive:
                return
            waitables = [obj for worker in alive for obj in (worker.report_receiver, worker.process.sentinel)]
            for ready in wait(waitables, timeout=max(0.0, deadline - time.monotonic())):
                if isinstance(ready, Connection):
                    try:
                        ready.recv()
                    except (EOFError, OSError):
                        pass

    def _receive_or_raise(self, watch_silence: bool = False) -> Any:
        """
        The next message from any worker; raises WorkerError for a worker's exception, WorkerDied for a death
        (and for a worker silent for longer than worker_timeout, with ``watch_silence`` and restarts left).
        """
        while True:
            if watch_silence:
                self._look_for_silent_workers()
            order = [*range(self._next_to_read, self.n_workers), *range(self._next_to_read)]
            receivers = {self._workers[worker_id].report_receiver: worker_id for worker_id in order}
            sentinels = {self._workers[worker_id].process.sentinel: worker_id for worker_id in order}
            ready = set(wait([*receivers, *sentinels], timeout=_WAIT_SECONDS))
            # Reports first, in round order: a worker that caught an exception sent it before it exited.
            for receiver, worker_id in receivers.items():
                if receiver in ready or (self._workers[worker_id].process.sentinel in ready and receiver.poll()):
                    self._next_to_read = (worker_id + 1) % self.n_workers
                    try:
                        message = receiver.recv()
                    except (EOFError, OSError):
                        raise WorkerDied(worker_id, self._describe_death(worker_id)) from None
                    self.silence.heard(worker_id)
                    if isinstance(message, _Failure):
                        raise WorkerError(message.worker_id, "raised an exception", message.traceback)
                    return message
            for sentinel, worker_id in sentinels.items():
                if sentinel in ready:
                    raise WorkerDied(worker_id, self._describe_death(worker_id))

    def _look_for_silent_workers(self) -> None:
        def finished(worker_id: int) -> bool:
            return int(self._shared.activity[worker_id]) == FINISHED

        replaced: list[WorkerDied] = []
        for worker_id, seconds in self.silence.newly_silent(may_be_silent=finished):
            doing = ACTIVITIES[int(self._shared.activity[worker_id])]
            replace = self.restarts + len(replaced) < self.max_worker_restarts
            warn_silent(worker_id, seconds, doing, replace)
            if replace:
                # As the OOM killer would (a lock it holds is then the learner's to free); the restart rebuilds it.
                self._workers[worker_id].process.kill()
                replaced.append(WorkerDied(worker_id, f"was silent for {seconds:.0f} s ({doing}) and was replaced"))
        if replaced:  # the first is restarted now; the others are dead, and their sentinels say so next
            raise replaced[0]

    def _describe_death(self, worker_id: int) -> str:
        process = self._workers[worker_id].process
        process.join(_WAIT_SECONDS)  # its pipe closes as it exits: the exit code follows at once
        return f"died unexpectedly ({_describe_exit(process.exitcode)})"


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            pass
    return f"exit code {exitcode}"
