"""
The asynchronous gradient collector: the part of sb3_async that every algorithm shares.

It replaces SB3's synchronous rollout buffer. K worker processes each own their envs and a local
copy of the policy; each turns a short segment of experience into a gradient and hands it to the
learner (the main process), which applies gradients one at a time, first come first served, with
no barrier between workers::

    learner (main process)                               worker k  (K processes)
    ----------------------                               -----------------------
                                                         copy the newest parameters <--- params, buffers (shm)
                                                         WorkerLogic.compute_loss():
                                                             n_steps in its own envs -> loss
                                                         loss.backward()
                                                         (waits for an answer: see below)
                                                         write the flat gradient --> gradients[k, slot] (shm)
                                                         and the buffer change  --> buffer_changes[k, slot]
    next_report() <------------ report pipe ------------ GradientReport(k, slot, params_version, env steps)
    apply gradients[k, slot] with the one optimizer,     ... then its next segment
      add buffer_changes[k, slot]
    publish() ---> params, buffers (shm), params_version += 1
    release(k) -- "go" (+ VecNormalize stats, progress) --> read when it comes: slot free, newest stats
    callbacks' on_step once per n_envs reported env steps

Policy buffers (BatchNorm's running statistics) travel like the parameters: the learner publishes
them with every update; each worker writes how its segment changed them into a slot of its own,
and the learner adds that change to its buffers, as it applies the gradient.

Parameters and gradients never travel through pickles: they, the buffers, and two gradient slots
and two buffer-change slots per worker live in shared memory, created once; the pipes carry the
messages that name a slot, and the segment's env steps for the learner's callbacks.

Two ways to go on after a report (``wait_for_own_update``):

- True, the default, the paper's: the worker waits for the learner's answer to its report, so its
  next segment starts from parameters that include its own last update.
- False, no idle round trip: the worker starts its next segment at once, with the newest
  parameters published at that moment. Its next gradient goes into its other slot; it waits only
  if the learner has not yet applied the gradient before last, which frees that slot.

How many updates landed between a worker's parameter copy and the application of its gradient
(with False, its own included) is the staleness the learner logs.

With ``update_mode="hogwild"`` (``WorkerSpec.hogwild`` set) a worker applies its gradient itself,
lock-free, to the shared parameters with an optimizer state that all workers share
(:mod:`sb3_async.common.hogwild`), then reports what it did and goes on without waiting; the
learner only counts, calls back, logs and merges statistics. Each worker claims its segment's env
steps from a shared budget before it applies, so exactly the steps ``learn()`` asked for are applied.

The algorithm-specific half of a worker is a :class:`WorkerLogic` subclass living in the
algorithm's own folder (e.g. ``sb3_async/a3c/worker.py``); the learner loop that drives this
collector is :class:`sb3_async.common.async_algorithm.AsyncAlgorithmMixin`.
"""

import multiprocessing as mp
import signal
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

import cloudpickle
import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.utils import set_random_seed
from stable_baselines3.common.vec_env import VecEnv, unwrap_vec_normalize

from sb3_async.common.forkserver import worker_context
from sb3_async.common.envs import NormalizationStatistics, WorkerEnvFactory, WorkerVecNormalize, dumps_for_workers
from sb3_async.common.flat_optimizer import FlatOptimizerState
from sb3_async.common.hogwild import HogwildSettings

# A worker that died is seen at once through its sentinel; this only bounds a wait that sees nothing.
_WAIT_SECONDS = 1.0
_START_TIMEOUT_SECONDS = 120.0
# Gradient slots per worker: a worker writes its next gradient into the other slot while the learner
# still applies the last one, so it never waits for the learner unless that is two gradients behind.
SLOTS_PER_WORKER = 2


@dataclass
class Segment:
    """What a worker tells the learner about the experience behind one gradient."""

    n_env_steps: int
    # The env steps behind the gradient, as SB3's callbacks see them (a StepLog's pop()); empty for
    # a gradient that took no env steps (e.g. OffPolicyAC's replay).
    steps: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)


class WorkerLogic(ABC):
    """
    The algorithm-specific half of a worker: given envs and a policy whose parameters the
    collector keeps in sync with the learner, gather experience and return the loss to differentiate.

    :param env: the worker's own envs
    :param policy: the worker's local copy of the policy
    :param worker_id: index of this worker, from 0
    """

    def __init__(self, env: VecEnv, policy: BasePolicy, worker_id: int) -> None:
        self.env = env
        self.policy = policy
        self.worker_id = worker_id
        # The learner's training progress (1 at the start, 0 at the end), as of the last "go":
        # what SB3's schedules (e.g. DQN's exploration rate) take.
        self.progress_remaining = 1.0

    @abstractmethod
    def compute_loss(self) -> tuple[th.Tensor, Segment]:
        """Run one segment with the freshly synced policy; return its loss and what it saw."""


@dataclass
class WorkerSpec:
    """Everything a worker process needs to build itself; cloudpickled once, at start."""

    env_factory: WorkerEnvFactory
    policy_class: type[BasePolicy]
    policy_kwargs: dict[str, Any]
    observation_space: spaces.Space
    action_space: spaces.Space
    logic_class: type[WorkerLogic]
    logic_kwargs: dict[str, Any]
    normalization: NormalizationStatistics | None = None
    seed: int | None = None
    # True: the paper's way, each segment starts from parameters that include the worker's own last
    # update (it waits for the learner). False: no idle round trip (see the module docstring).
    wait_for_own_update: bool = True
    # Set for update_mode="hogwild": the worker applies its own gradients (see sb3_async.common.hogwild).
    hogwild: HogwildSettings | None = None

    def build_policy(self) -> BasePolicy:
        # The local copy never steps an optimizer, so its learning rate does not matter.
        policy = self.policy_class(self.observation_space, self.action_space, lambda _: 0.0, **self.policy_kwargs)
        return policy.to("cpu")


@dataclass
class GradientReport:
    """Worker -> learner: "my gradient is in my slot"."""

    worker_id: int
    params_version: int
    segment: Segment
    normalization: NormalizationStatistics | None = None
    slot: int = 0  # which of the worker's gradient slots holds it
    # Updates applied since the worker copied the parameters: filled in by the learner, or by a Hogwild worker.
    staleness: int = 0
    # Hogwild: whether the worker applied it (False: not finite, dropped). None: the learner applies it.
    applied: bool | None = None


@dataclass
class _Ready:
    worker_id: int


@dataclass
class _Failure:
    worker_id: int
    traceback: str


@dataclass
class _Go:
    normalization: NormalizationStatistics | None = None
    progress_remaining: float = 1.0


_STOP = None


class WorkerError(RuntimeError):
    """A worker process failed or died. ``worker_traceback`` holds its traceback when it had one."""

    def __init__(self, worker_id: int, reason: str, worker_traceback: str | None = None) -> None:
        self.worker_id = worker_id
        self.reason = reason
        self.worker_traceback = worker_traceback
        message = f"sb3_async worker {worker_id} {reason}"
        if worker_traceback:
            message += f"\n\nTraceback in worker {worker_id}:\n{worker_traceback}"
        super().__init__(message)


@dataclass
class _ReportChannel:
    """Workers -> learner: one pipe, so reports are read in the order they were sent."""

    reader: Connection
    writer: Connection
    write_lock: Any  # so that two workers' messages never interleave

    def send(self, message: Any) -> None:
        with self.write_lock:
            self.writer.send(message)


@dataclass
class _SharedMemory:
    params: th.Tensor  # flat global parameters, written only by the learner
    params_version: th.Tensor  # int64[1]: number of updates applied so far
    gradients: th.Tensor  # [n_workers, SLOTS_PER_WORKER, n_params]: row k written only by worker k
    params_lock: Any  # so that no worker copies half-written parameters
    buffers: th.Tensor  # float64 [n_buffer_values]: the policy's buffers (e.g. BatchNorm statistics), as params
    buffer_changes: th.Tensor  # float64 [n_workers, SLOTS_PER_WORKER, n_buffer_values]: what each gradient's segment changed
    # Hogwild only: the optimizer's state, stepped by every worker, and int64 [env steps claimed, budget]:
    # a worker claims its segment's steps before it applies the gradient, and stops once the budget is spent.
    optimizer_state: FlatOptimizerState | None = None
    claims: th.Tensor = field(default_factory=lambda: th.zeros(2, dtype=th.int64))


def buffers_to_vector(buffers: Sequence[th.Tensor]) -> th.Tensor:
    """All ``buffers`` in one float64 vector (float64 holds integer counters such as ``num_batches_tracked`` exactly)."""
    if not buffers:
        return th.zeros(0, dtype=th.float64)
    return th.cat([buffer.detach().reshape(-1).to("cpu", th.float64) for buffer in buffers])


def vector_to_buffers(vector: th.Tensor, buffers: Sequence[th.Tensor]) -> None:
    offset = 0
    for buffer in buffers:
        size = buffer.numel()
        buffer.copy_(vector[offset : offset + size].view_as(buffer))
        offset += size


def flat_parameters_view(params: Sequence[th.nn.Parameter]) -> th.Tensor:
    """Re-seat ``params`` as views into one flat tensor (returned), so syncing is one copy."""
    flat = th.nn.utils.parameters_to_vector(params).detach().clone()
    th.nn.utils.vector_to_parameters(flat, params)
    return flat


def write_flat_gradient(params: Sequence[th.nn.Parameter], out: th.Tensor) -> None:
    offset = 0
    for param in params:
        size = param.numel()
        if param.grad is None:  # a parameter the loss does not use
            out[offset : offset + size].zero_()
        else:
            out[offset : offset + size].copy_(param.grad.view(-1))
        offset += size


def clip_gradient_norm_(flat_gradient: th.Tensor, gradient_norm: float, max_norm: float | None) -> None:
    """``th.nn.utils.clip_grad_norm_`` on one flat gradient whose norm is already known."""
    if max_norm is not None:
        flat_gradient.mul_(min(1.0, max_norm / (gradient_norm + 1e-6)))


def flat_gradient_view(params: Sequence[th.nn.Parameter]) -> th.Tensor:
    """Give every parameter a ``.grad`` that is a view into one flat zero tensor (returned)."""
    flat = th.zeros(sum(param.numel() for param in params), dtype=params[0].dtype, device=params[0].device)
    offset = 0
    for param in params:
        size = param.numel()
        param.grad = flat[offset : offset + size].view_as(param)
        offset += size
    return flat


def _worker_main(
    worker_id: int, spec_bytes: bytes, shared: _SharedMemory, go_receiver: Connection, reports: _ReportChannel
) -> None:
    # Ctrl-C reaches the whole process group; the learner decides how everybody stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Workers already fill the cores; intra-op threads on top of them only oversubscribe.
    th.set_num_threads(1)
    # Argument checks in torch.distributions cost more than the tiny networks' forward passes.
    th.distributions.Distribution.set_default_validate_args(False)
    env = None
    try:
        spec: WorkerSpec = cloudpickle.loads(spec_bytes)
        # Every worker forks from the same server: without a seed of its own, all would draw the same numbers.
        set_random_seed(spec.seed + worker_id if spec.seed is not None else int(np.random.SeedSequence().entropy % 2**32))
        env = spec.env_factory.build(worker_id, spec.normalization)
        vec_normalize = unwrap_vec_normalize(env)
        assert vec_normalize is None or isinstance(vec_normalize, WorkerVecNormalize)
        policy = spec.build_policy()
        local_params = flat_parameters_view(list(policy.parameters()))
        if local_params.numel() != shared.params.numel():
            raise RuntimeError(
                f"the worker's policy has {local_params.numel()} parameters, the learner's {shared.params.numel()}"
            )
        worker = _Worker(worker_id, spec, shared, policy, local_params, vec_normalize, env, reports)
        reports.send(_Ready(worker_id))
        answers = _Answers(go_receiver)
        if spec.hogwild is None:
            worker.run_learner_mode(answers)
        else:
            worker.run_hogwild(answers, spec.hogwild)
    except (EOFError, BrokenPipeError):
        pass  # the learner is gone: there is nobody to report to
    except BaseException:
        reports.send(_Failure(worker_id, traceback.format_exc()))
    finally:
        if env is not None:
            try:
                env.close()
            except Exception:
                pass


class _Worker:
    """A worker's loop, in each update mode: copy the parameters, run a segment, hand over (or apply) its gradient."""

    def __init__(
        self,
        worker_id: int,
        spec: WorkerSpec,
        shared: _SharedMemory,
        policy: BasePolicy,
        local_params: th.Tensor,
        vec_normalize: WorkerVecNormalize | None,
        env: VecEnv,
        reports: _ReportChannel,
    ) -> None:
        self.worker_id = worker_id
        self.spec = spec
        self.shared = shared
        self.policy = policy
        self.params = list(policy.parameters())
        self.local_params = local_params
        self.buffers = list(policy.buffers())
        self.buffers_at_start = th.zeros(0, dtype=th.float64)
        self.vec_normalize = vec_normalize
        self.reports = reports
        self.logic = spec.logic_class(env, policy, worker_id, **spec.logic_kwargs)

    def _take_answer(self, answer: "_Go") -> None:
        if answer.normalization is not None and self.vec_normalize is not None:
            self.vec_normalize.load_learner_statistics(answer.normalization)
        self.logic.progress_remaining = answer.progress_remaining

    def _copy_shared_parameters(self) -> int:
        """Copy the newest parameters and buffers into the local policy; return their version."""
        with self.shared.params_lock:
            self.local_params.copy_(self.shared.params)
            if self.buffers:
                self.buffers_at_start = self.shared.buffers.clone()
                vector_to_buffers(self.buffers_at_start, self.buffers)
            return int(self.shared.params_version.item())

    def _run_segment(self) -> Segment:
        loss, segment = self.logic.compute_loss()
        self.policy.zero_grad(set_to_none=True)
        loss.backward()
        return segment

    def _write_buffer_change(self, out: th.Tensor) -> None:
        if self.buffers:
            th.sub(buffers_to_vector(self.buffers), self.buffers_at_start, out=out)

    def _new_statistics(self) -> NormalizationStatistics | None:
        return self.vec_normalize.pop_new_statistics() if self.vec_normalize is not None else None

    def run_learner_mode(self, answers: "_Answers") -> None:
        """Hand each gradient to the learner through a shared slot; the learner applies it."""
        shared, slot = self.shared, 0
        while answers.latest is not _STOP:
            if self.spec.wait_for_own_update:
                # The paper's way: the next segment starts from parameters that include this worker's last update.
                answers.wait_until_unanswered(0)
            else:
                answers.read_those_already_sent()
            if answers.latest is _STOP:
                break
            self._take_answer(answers.latest)
            params_version = self._copy_shared_parameters()
            segment = self._run_segment()
            # This slot held the report before last: it is free once that one was answered.
            answers.wait_until_unanswered(SLOTS_PER_WORKER - 1)
            if answers.latest is _STOP:
                break
            write_flat_gradient(self.params, out=shared.gradients[self.worker_id, slot])
            self._write_buffer_change(shared.buffer_changes[self.worker_id, slot])
            report = GradientReport(self.worker_id, params_version, segment, self._new_statistics(), slot=slot)
            self.reports.send(report)
            answers.unanswered += 1
            slot = (slot + 1) % SLOTS_PER_WORKER

    def run_hogwild(self, answers: "_Answers", settings: HogwildSettings) -> None:
        """
        Apply each gradient to the shared parameters here, with the shared optimizer state, then tell
        the learner what was done. The update takes no lock (Hogwild!), so a worker's copy may catch
        another's update half done; the lock only orders the claim on the step budget, the version
        count and the buffer changes, a few numbers.
        """
        shared = self.shared
        assert shared.optimizer_state is not None
        optimizer = shared.optimizer_state.optimizer_over(shared.params)
        flat_gradient = th.zeros_like(self.local_params)
        shared.optimizer_state.set_gradient(optimizer, flat_gradient)
        buffer_change = th.zeros_like(shared.buffers)
        while True:
            answers.read_those_already_sent()
            if answers.latest is _STOP:
                return
            self._take_answer(answers.latest)
            self.logic.progress_remaining = settings.progress_remaining(int(shared.claims[0].item()))
            params_version = self._copy_shared_parameters()
            segment = self._run_segment()
            write_flat_gradient(self.params, out=flat_gradient)
            self._write_buffer_change(buffer_change)
            gradient_norm = flat_gradient.norm().item()
            applied = np.isfinite(gradient_norm) and bool(th.isfinite(buffer_change).all())
            with shared.params_lock:
                claimed, budget = (int(value) for value in shared.claims.tolist())
                if claimed >= budget:  # learn() has all the steps it asked for, or was stopped
                    break
                shared.claims[0] += segment.n_env_steps
                staleness = int(shared.params_version.item()) - params_version
                if applied:
                    shared.params_version += 1
                    if self.buffers:
                        shared.buffers += buffer_change
            if applied:
                clip_gradient_norm_(flat_gradient, gradient_norm, settings.max_grad_norm)
                # As SB3's learning rate for a rollout's update: counting the rollout's own steps.
                progress_remaining = settings.progress_remaining(claimed + segment.n_env_steps)
                optimizer.param_groups[0]["lr"] = settings.lr_schedule(progress_remaining)
                optimizer.step()
            # A dropped gradient contributes nothing, not even its normalization statistics.
            statistics = self._new_statistics() if applied else None
            report = GradientReport(self.worker_id, params_version, segment, statistics, staleness=staleness, applied=applied)
            self.reports.send(report)
        answers.wait_until_stopped()


class _Answers:
    """
    A worker's side of the "go" pipe. The first message starts the worker; each later one answers
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


class AsyncGradientCollector:
    """
    The learner's side of the collector: starts the workers, hands out their gradients one at a
    time, publishes new parameters and stops everything in :meth:`close` (also on errors).

    :param spec: how each worker builds its envs, its policy and its :class:`WorkerLogic`
    :param n_workers: number of worker processes
    :param initial_params: the learner's flat parameters, published to the workers at start
    :param initial_buffers: the learner's policy buffers (:func:`buffers_to_vector`), if it has any
    :param optimizer_state: Hogwild only (``spec.hogwild`` set): the optimizer state the workers share
    :param step_budget: Hogwild only: how many env steps the workers may take in all
    """

    def __init__(
        self,
        spec: WorkerSpec,
        n_workers: int,
        initial_params: th.Tensor,
        initial_buffers: th.Tensor | None = None,
        optimizer_state: FlatOptimizerState | None = None,
        step_budget: int = 0,
    ) -> None:
        if (spec.hogwild is None) != (optimizer_state is None):
            raise ValueError("Hogwild workers need the shared optimizer state, and only they use it")
        self.n_workers = n_workers
        # Pickling problems surface here, before any process starts.
        self._spec_bytes = dumps_for_workers(spec, what="the worker setup (policy, env factory, hyperparameters)")
        self._context = worker_context()
        flat = initial_params.detach().to("cpu").clone()
        buffers = th.zeros(0, dtype=th.float64) if initial_buffers is None else initial_buffers.to("cpu", th.float64).clone()
        self._shared = _SharedMemory(
            params=flat.share_memory_(),
            params_version=th.zeros(1, dtype=th.int64).share_memory_(),
            gradients=th.zeros(n_workers, SLOTS_PER_WORKER, flat.numel(), dtype=flat.dtype).share_memory_(),
            params_lock=self._context.Lock(),
            buffers=buffers.share_memory_(),
            buffer_changes=th.zeros(n_workers, SLOTS_PER_WORKER, buffers.numel(), dtype=th.float64).share_memory_(),
            optimizer_state=None if optimizer_state is None else optimizer_state.share_memory_(),
            claims=th.tensor([0, step_budget], dtype=th.int64).share_memory_(),
        )
        self.hogwild = spec.hogwild is not None
        reader, writer = self._context.Pipe(duplex=False)
        self._reports = _ReportChannel(reader, writer, self._context.Lock())
        self._go_senders: list[Any] = []
        self._processes: list[mp.process.BaseProcess] = []
        self.version = 0
        self.idle_seconds = 0.0
        self._closed = False

    @property
    def worker_pids(self) -> list[int]:
        return [process.pid for process in self._processes if process.pid is not None]

    def start(self) -> None:
        """Start every worker, wait until each has built its envs and policy, then let them run."""
        for worker_id in range(self.n_workers):
            go_receiver, go_sender = self._context.Pipe(duplex=False)
            process = self._context.Process(
                target=_worker_main,
                args=(worker_id, self._spec_bytes, self._shared, go_receiver, self._reports),
                name=f"sb3_async-worker-{worker_id}",
                daemon=True,
            )
            process.start()
            go_receiver.close()  # the worker holds the only reading end: it sees EOF if we die
            self._processes.append(process)
            self._go_senders.append(go_sender)
        deadline = time.monotonic() + _START_TIMEOUT_SECONDS
        n_ready = 0
        while n_ready < self.n_workers:
            if time.monotonic() > deadline:
                raise TimeoutError(f"sb3_async workers did not start within {_START_TIMEOUT_SECONDS:.0f} s")
            message = self._receive()
            assert isinstance(message, _Ready), f"unexpected message before start: {message}"
            n_ready += 1
        for worker_id in range(self.n_workers):
            self.release(worker_id)

    def next_report(self) -> GradientReport:
        """Block until some worker's gradient is ready (raises :class:`WorkerError` if one fails)."""
        waiting_since = time.perf_counter()
        message = self._receive()
        self.idle_seconds += time.perf_counter() - waiting_since
        assert isinstance(message, GradientReport), f"unexpected message: {message}"
        if not self.hogwild:
            message.staleness = self.version - message.params_version
        return message

    @property
    def shared_params(self) -> th.Tensor:
        """The flat parameters in shared memory: Hogwild workers update them in place."""
        return self._shared.params

    @property
    def shared_buffers(self) -> th.Tensor:
        return self._shared.buffers

    @property
    def lock(self) -> Any:
        """Held by whoever reads or writes the shared buffers, or (learner mode) the parameters."""
        return self._shared.params_lock

    @property
    def optimizer_state(self) -> FlatOptimizerState | None:
        return self._shared.optimizer_state

    def stop_claims(self) -> None:
        """Hogwild: let no worker apply another gradient (training stops)."""
        with self._shared.params_lock:
            self._shared.claims[1] = 0

    def gradient(self, report: GradientReport) -> th.Tensor:
        """The report's flat gradient, valid until its worker is released."""
        return self._shared.gradients[report.worker_id, report.slot]

    def buffer_change(self, report: GradientReport) -> th.Tensor:
        """How the report's segment changed the policy buffers, valid until its worker is released."""
        return self._shared.buffer_changes[report.worker_id, report.slot]

    def publish(self, flat_params: th.Tensor, flat_buffers: th.Tensor | None = None) -> None:
        """Make ``flat_params`` (and ``flat_buffers``) the parameters (and buffers) that workers copy from now on."""
        with self._shared.params_lock:
            self._shared.params.copy_(flat_params)
            if flat_buffers is not None:
                self._shared.buffers.copy_(flat_buffers)
            self.version += 1
            self._shared.params_version.fill_(self.version)

    def release(
        self, worker_id: int, normalization: NormalizationStatistics | None = None, progress_remaining: float = 1.0
    ) -> None:
        """Tell worker ``worker_id`` its report was applied (its slot is free), with the newest statistics and progress."""
        self._go_senders[worker_id].send(_Go(normalization, progress_remaining))

    def close(self, timeout: float = 5.0) -> None:
        """Stop every worker (politely, then by force) and free every resource. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.stop_claims()  # no Hogwild worker applies a gradient the learner will not count
        for sender in self._go_senders:
            try:
                sender.send(_STOP)
            except OSError:  # that worker is already gone
                pass
        deadline = time.monotonic() + timeout
        self._drain_reports_until_workers_exit(deadline)
        for process in self._processes:
            if process.is_alive():
                process.terminate()
                process.join(1.0)
            if process.is_alive():
                process.kill()
                process.join()
            process.close()
        for connection in [*self._go_senders, self._reports.reader, self._reports.writer]:
            connection.close()
        # Drop the last references to the shared tensors and the locks (Process objects keep their
        # arguments), so their memory and /dev/shm semaphores go now, not at some later gc.collect().
        self._processes.clear()
        self._go_senders.clear()
        del self._shared, self._reports

    def _drain_reports_until_workers_exit(self, deadline: float) -> None:
        # A worker may be blocked writing a report larger than the pipe holds (image steps, say): it
        # only reads its "stop" once that report is read.
        while any(process.is_alive() for process in self._processes) and time.monotonic() < deadline:
            sentinels = [process.sentinel for process in self._processes if process.is_alive()]
            ready = wait([self._reports.reader, *sentinels], timeout=max(0.0, deadline - time.monotonic()))
            if self._reports.reader in ready:
                try:
                    self._reports.reader.recv()
                except (EOFError, OSError):
                    break

    def __enter__(self) -> "AsyncGradientCollector":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def _receive(self) -> Any:
        while True:
            sentinels = {process.sentinel: worker_id for worker_id, process in enumerate(self._processes)}
            ready = wait([self._reports.reader, *sentinels], timeout=_WAIT_SECONDS)
            if self._reports.reader in ready:
                # Read reports first: a worker that caught an exception sent it before it exited.
                message = self._reports.reader.recv()
                if isinstance(message, _Failure):
                    raise WorkerError(message.worker_id, "raised an exception", message.traceback)
                return message
            for sentinel in ready:
                worker_id = sentinels[sentinel]
                exitcode = self._processes[worker_id].exitcode
                raise WorkerError(worker_id, f"died unexpectedly ({_describe_exit(exitcode)})")


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            pass
    return f"exit code {exitcode}"
