"""
What every collector backend shares: the messages between workers and the learner, the
algorithm-specific half of a worker (:class:`WorkerLogic`), the transport-independent rest of a
worker (:class:`WorkerCore`), and the learner's side of the transport (:class:`GradientCollector`).

A backend only moves things: parameters out to the workers, gradients (and policy-buffer changes,
VecNormalize statistics, env steps for the callbacks) back, "go" messages out again. How one
segment becomes a gradient is the same everywhere (:meth:`WorkerCore.run_segment`).

A worker whose logic is an :class:`ActorLogic` (IMPALA's actors) hands over its segment itself,
flat, in the slot a gradient would take: the learner computes the loss.
"""

import signal
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy
from stable_baselines3.common.utils import set_random_seed
from stable_baselines3.common.vec_env import VecEnv, unwrap_vec_normalize

from sb3_async.common.normalization import NormalizationStatistics, WorkerVecNormalize
from sb3_async.common.rollout import first_non_finite
from sb3_async.common.worker_vec_env import EnvOutputError, take_non_finite_observation
from sb3_async.common.worker_envs import WorkerEnvFactory
from sb3_async.common.worker_updates import WorkerUpdateSettings

# Gradients a worker may have handed over and not yet had answered: with wait_for_own_update=False
# it computes its next gradient while the learner still applies the last one.
SLOTS_PER_WORKER = 2


@dataclass
class SegmentResult:
    """What a worker tells the learner about the experience behind one gradient."""

    n_env_steps: int
    # The env steps behind the gradient, as SB3's callbacks see them (a StepLog's pop()); empty for
    # a gradient that took no env steps (e.g. OffPolicyAC's replay).
    steps: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)
    # Where the segment first held a reward, observation or value that is not finite (filled by WorkerCore):
    # what the learner names when it drops the gradient.
    non_finite: str | None = None


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
    def compute_loss(self) -> tuple[th.Tensor, SegmentResult]:
        """Run one segment with the freshly synced policy; return its loss and what it saw."""


class ActorLogic(ABC):
    """
    The algorithm-specific half of an actor (IMPALA): a worker that only acts. Given envs and a
    policy that the collector keeps in sync with the learner, it runs one segment and writes it,
    flat, into the slot where a :class:`WorkerLogic`'s gradient would go; the learner computes the loss.

    :param env: the worker's own envs
    :param policy: the worker's local copy of the policy
    :param worker_id: index of this worker, from 0
    """

    def __init__(self, env: VecEnv, policy: BasePolicy, worker_id: int) -> None:
        self.env = env
        self.policy = policy
        self.worker_id = worker_id
        self.progress_remaining = 1.0

    @abstractmethod
    def act(self, out: th.Tensor) -> SegmentResult:
        """Run one segment with the freshly synced policy, write it into ``out`` (flat), and return what it saw."""


class NoOptimizer:
    """
    The optimizer of a worker's policy copy, which nothing steps. SB3 policies build one when they are
    built; a torch optimizer would import ``torch._dynamo`` (about 1.4 s) in every worker process. A
    policy that uses more of its optimizer while it builds is built with its own (``build_policy``).
    """

    def __init__(self, params: Any, lr: float = 0.0, **kwargs: Any) -> None:
        self.param_groups = [{"params": list(params), "lr": lr, **kwargs}]

    def step(self, closure: Any = None) -> None:
        raise RuntimeError("a worker's policy copy has no optimizer: its gradients are applied to the shared parameters")


@dataclass
class WorkerSpec:
    """Everything a worker needs to build itself; cloudpickled once, at start."""

    env_factory: WorkerEnvFactory
    policy_class: type[BasePolicy]
    policy_kwargs: dict[str, Any]
    observation_space: spaces.Space
    action_space: spaces.Space
    logic_class: type[WorkerLogic] | type[ActorLogic]
    logic_kwargs: dict[str, Any]
    normalization: NormalizationStatistics | None = None
    seed: int | None = None
    # True: the paper's way, each segment starts from parameters that include the worker's own last
    # update (it waits for the learner). False: no idle round trip (see docs/architecture.md).
    wait_for_own_update: bool = True
    # Set for update_mode="locked" or "hogwild": the worker applies its own gradients (see sb3_async.common.worker_updates).
    worker_updates: WorkerUpdateSettings | None = None
    # Set when ``logic_class`` is an ActorLogic: the length of the flat segment it hands over, which a slot then
    # holds instead of a gradient.
    trajectory_size: int | None = None

    def slot_size(self, n_params: int) -> int:
        """Values in each of a worker's slots: its trajectory's, or one per parameter for a gradient."""
        return n_params if self.trajectory_size is None else self.trajectory_size

    def build_policy(self) -> BasePolicy:
        # The local copy never steps its own optimizer (the learner does, or the worker steps the shared state), so
        # neither its learning rate nor its optimizer matter: a stand-in keeps torch's out of the worker.
        stand_in = {**self.policy_kwargs, "optimizer_class": NoOptimizer, "optimizer_kwargs": {}}
        attempts = [stand_in, self.policy_kwargs]  # the user's own: a policy that sets or uses its optimizer itself
        if issubclass(self.policy_class, ActorCriticPolicy):
            # The learner's parameters overwrite the copy's before its first use: SB3's orthogonal
            # initialization (a QR decomposition per layer, 4 of a worker's 11 ms of start-up) would be thrown away.
            attempts.insert(0, {**stand_in, "ortho_init": False})
        for policy_kwargs in attempts[:-1]:
            try:
                return self._policy_with(policy_kwargs)
            except (TypeError, AttributeError):  # e.g. a custom policy that sets ortho_init or its optimizer itself
                pass
        return self._policy_with(attempts[-1])

    def _policy_with(self, policy_kwargs: dict[str, Any]) -> BasePolicy:
        return self.policy_class(self.observation_space, self.action_space, lambda _: 0.0, **policy_kwargs).to("cpu")


@dataclass
class GradientReport:
    """Worker -> learner: "my gradient is ready" (where it is, the backend knows: a slot, an array)."""

    worker_id: int
    params_version: int
    segment: SegmentResult
    normalization: NormalizationStatistics | None = None
    slot: int = 0  # which of the worker's gradient slots holds it
    # Updates applied since the worker copied the parameters: filled in by the learner, or by a Hogwild worker.
    staleness: int = 0
    # Hogwild: whether the worker applied it (False: not finite, dropped). None: the learner applies it.
    applied: bool | None = None


@dataclass
class Go:
    """Learner -> worker: "your last report is done with", with the newest statistics and progress."""

    normalization: NormalizationStatistics | None = None
    progress_remaining: float = 1.0


DEFAULT_WORKER_TIMEOUT = 60.0


class SilenceWatch:
    """
    When each worker was last heard from (a report, or "ready"), and which have been silent for longer than
    ``timeout`` seconds: each such worker is returned once by :meth:`newly_silent`, until it is heard again.
    """

    def __init__(self, n_workers: int, timeout: float) -> None:
        self.timeout = timeout
        self._last_heard = [time.monotonic()] * n_workers
        self.silent: set[int] = set()
        # Looked at between reports, so at most a few times a timeout: it is on the learner's path to every report.
        self._check_every = min(1.0, timeout / 4)
        self._next_check = time.monotonic() + self._check_every

    def heard(self, worker_id: int) -> None:
        self._last_heard[worker_id] = time.monotonic()
        self.silent.discard(worker_id)

    def newly_silent(self, may_be_silent: Callable[[int], bool] = lambda worker_id: False) -> list[tuple[int, float]]:
        """
        ``(worker id, seconds silent)`` of the workers silent for longer than the timeout, and not yet returned,
        except those ``may_be_silent`` excuses (a worker whose share of the steps is done, say).
        """
        now = time.monotonic()
        if now < self._next_check:
            return []
        self._next_check = now + self._check_every
        found = [
            (worker_id, now - last)
            for worker_id, last in enumerate(self._last_heard)
            if now - last > self.timeout and worker_id not in self.silent and not may_be_silent(worker_id)
        ]
        self.silent.update(worker_id for worker_id, _ in found)
        return found


def warn_silent(worker_id: int, seconds: float, doing: str, replaced: bool, node: str | None = None) -> None:
    where = f" (node {node})" if node else ""
    then = (
        "it is replaced, as a dead worker would be"
        if replaced
        else "no restart is left (max_worker_restarts), so it is left as it is"
    )
    warnings.warn(
        f"sb3_async worker {worker_id}{where} has sent nothing for {seconds:.0f} s; it is {doing}. {then}; "
        f"async/stalled_workers counts the silent ones.",
        stacklevel=3,
    )


class WorkerError(RuntimeError):
    """A worker failed or died. ``worker_traceback`` holds its traceback when it had one; ``node`` its Ray node."""

    def __init__(self, worker_id: int, reason: str, worker_traceback: str | None = None, node: str | None = None) -> None:
        self.worker_id = worker_id
        self.reason = reason
        self.worker_traceback = worker_traceback
        self.node = node
        where = f" (node {node})" if node else ""
        message = f"sb3_async worker {worker_id}{where} {reason}"
        if worker_traceback:
            message += f"\n\nTraceback in worker {worker_id}:\n{worker_traceback}"
        super().__init__(message)


def check_action_spaces(venv: VecEnv, expected: spaces.Space, worker_id: int) -> None:
    """Every sub-env of a worker must take the actions the learner's policy makes (copies of different envs may not)."""
    for env_idx, action_space in enumerate(venv.get_attr("action_space")):
        if action_space != expected:
            raise EnvOutputError(
                f"env {env_idx} of worker {worker_id} has the action space {action_space}, but the learner's env "
                f"(its first sub-env) has {expected}: every env the workers copy must take the same actions"
            )


class NonFiniteObservationError(ValueError):
    """A worker's env returned an observation that is not finite, and the worker's policy failed on it."""


class WorkerDied(Exception):
    """Raised inside a collector when worker ``worker_id`` is gone; a restart or a :class:`WorkerError` follows."""

    def __init__(self, worker_id: int, reason: str, node: str | None = None) -> None:
        super().__init__(reason)
        self.worker_id = worker_id
        self.reason = reason
        self.node = node


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


def prepare_worker_process() -> None:
    """What every worker process does first, whatever started it."""
    # Ctrl-C reaches the whole process group; the learner decides how everybody stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Workers already fill the cores; intra-op threads on top of them only oversubscribe.
    th.set_num_threads(1)
    # Argument checks in torch.distributions cost more than the tiny networks' forward passes.
    th.distributions.Distribution.set_default_validate_args(False)


class WorkerCore:
    """
    A worker's envs, local policy and :class:`WorkerLogic`, and the steps of one segment that do not
    depend on how parameters and gradients travel: load parameters, run the segment and
    backpropagate, read the gradient and the buffer change.

    :param worker_id: index of this worker, from 0
    :param spec: how to build it
    :param n_params: the learner's parameter count, to check the local policy against
    :param incarnation: how many times this worker was restarted (a restarted worker draws new random numbers)
    :param n_workers: the number of workers
    """

    def __init__(self, worker_id: int, spec: WorkerSpec, n_params: int, incarnation: int = 0, n_workers: int = 1) -> None:
        self.worker_id = worker_id
        self.spec = spec
        # Every worker forks from the same server: without a seed of its own, all would draw the same numbers.
        if spec.seed is not None:
            set_random_seed(spec.seed + worker_id + incarnation * n_workers)
        else:
            set_random_seed(int(np.random.SeedSequence().generate_state(1)[0]))
        self.env = spec.env_factory.build(worker_id, spec.normalization)
        check_action_spaces(self.env, spec.action_space, worker_id)
        vec_normalize = unwrap_vec_normalize(self.env)
        assert vec_normalize is None or isinstance(vec_normalize, WorkerVecNormalize)
        self.vec_normalize = vec_normalize
        self.policy = spec.build_policy()
        self.params = list(self.policy.parameters())
        self.local_params = flat_parameters_view(self.params)
        # backward() accumulates into views of one flat tensor: reading the gradient is one copy.
        self.local_gradient = flat_gradient_view(self.params)
        if self.local_params.numel() != n_params:
            raise RuntimeError(f"the worker's policy has {self.local_params.numel()} parameters, the learner's {n_params}")
        self.buffers = list(self.policy.buffers())
        self.buffers_at_start = th.zeros(0, dtype=th.float64)
        self.logic = spec.logic_class(self.env, self.policy, worker_id, **spec.logic_kwargs)
        # An actor's last segment, flat (ActorLogic); empty for a worker that hands over gradients.
        self.trajectory = th.zeros(spec.trajectory_size or 0)
        self.steps_per_env = 0  # env steps each of its envs has taken, in the segments reported so far
        self._last_bad_observation: tuple[int, int, float] | None = None  # the last fresh segment's, if it had one

    def take_answer(self, answer: Go) -> None:
        if answer.normalization is not None and self.vec_normalize is not None:
            self.vec_normalize.load_learner_statistics(answer.normalization)
        self.logic.progress_remaining = answer.progress_remaining

    def load_parameters(self, params: th.Tensor, buffers: th.Tensor) -> None:
        """Copy the learner's flat parameters and buffers into the local policy."""
        self.local_params.copy_(params)
        if self.buffers:
            self.buffers_at_start = buffers.clone()
            vector_to_buffers(self.buffers_at_start, self.buffers)

    def run_segment(self) -> SegmentResult:
        """
        Run one segment and backpropagate its loss into the local policy's ``.grad``; an actor's
        (:class:`ActorLogic`) writes the segment into :attr:`trajectory` instead.
        """
        loss: th.Tensor | None = None
        try:
            if isinstance(self.logic, ActorLogic):
                segment = self.logic.act(self.trajectory)
            else:
                loss, segment = self.logic.compute_loss()
        except Exception as error:
            # The first of the last fresh segment's, or of this one's: where the env began to return them.
            bad_observation = self._last_bad_observation or take_non_finite_observation(self.env)
            if bad_observation is None:
                raise
            raise NonFiniteObservationError(
                f"the policy failed on an observation that is not finite; the first was "
                f"{self._describe_non_finite('observation', *bad_observation)}"
            ) from error
        if loss is not None:
            self.local_gradient.zero_()
            loss.backward()
        # What the learner names if it drops this gradient: an observation as the VecEnv saw it (an episode's
        # last one included), else a reward or value estimate as the step log holds it, else the loss itself.
        bad_observation = take_non_finite_observation(self.env)
        if segment.n_env_steps > 0:  # a replayed segment (OffPolicyAC) took no step: the last one stands
            self._last_bad_observation = bad_observation
        in_step_log = first_non_finite(segment.steps) if bad_observation is None else None
        if bad_observation is not None:
            segment.non_finite = self._describe_non_finite("observation", *bad_observation)
        elif in_step_log is not None:
            what, env, step_in_segment, value = in_step_log
            segment.non_finite = self._describe_non_finite(what, env, self.steps_per_env + step_in_segment, value)
        elif loss is not None and not th.isfinite(loss):
            segment.non_finite = (
                f"a loss of {loss.item()} in worker {self.worker_id} from finite rewards and observations "
                f"(the network or the hyperparameters)"
            )
        self.steps_per_env += segment.n_env_steps // self.env.num_envs
        return segment

    def _describe_non_finite(self, what: str, env: int, step: int, value: float) -> str:
        article = "an" if what[0] in "aeiou" else "a"
        return (
            f"{article} {what} of {value} from env {env} of worker {self.worker_id}, at that env's step {step} "
            f"(counted from the worker's start)"
        )

    def write_gradient(self, out: th.Tensor) -> None:
        out.copy_(self.local_gradient)

    def write_handover(self, out: th.Tensor) -> None:
        """What the learner takes from this worker's slot: the last segment's gradient, or an actor's trajectory."""
        out.copy_(self.local_gradient if self.trajectory.numel() == 0 else self.trajectory)

    def write_buffer_change(self, out: th.Tensor) -> None:
        """How the segment changed the policy buffers (e.g. BatchNorm statistics)."""
        if self.buffers:
            th.sub(buffers_to_vector(self.buffers), self.buffers_at_start, out=out)

    def new_statistics(self) -> NormalizationStatistics | None:
        return self.vec_normalize.pop_new_statistics() if self.vec_normalize is not None else None

    def close(self) -> None:
        try:
            self.env.close()
        except Exception:
            pass


class GradientCollector(ABC):
    """
    The learner's side of a backend: start the workers, hand out their gradients one at a time,
    publish new parameters, answer each report, and stop everything in :meth:`close` (also on errors).

    A worker that dies is rebuilt (new envs, newest parameters) while ``max_worker_restarts`` allows,
    counted in :attr:`restarts`; after that, or when a worker raises, :meth:`next_report` raises
    :class:`WorkerError` naming it.
    """

    n_workers: int
    version: int  # updates published so far
    idle_seconds: float  # time the learner spent waiting for reports
    restarts: int  # workers rebuilt so far
    silence: SilenceWatch  # which workers have sent nothing for worker_timeout seconds

    @abstractmethod
    def start(self) -> None:
        """Start every worker, wait until each has built its envs and policy, then let them run."""

    @abstractmethod
    def next_report(self) -> GradientReport:
        """Block until some worker's gradient is ready (raises :class:`WorkerError` if one fails)."""

    @abstractmethod
    def gradient(self, report: GradientReport) -> th.Tensor:
        """The report's flat gradient, valid until its worker is sent its next go."""

    def trajectory(self, report: GradientReport) -> th.Tensor:
        """An actor's report (:class:`ActorLogic`): its flat trajectory, in the slot a gradient would take."""
        return self.gradient(report)

    @abstractmethod
    def buffer_change(self, report: GradientReport) -> th.Tensor:
        """How the report's segment changed the policy buffers, valid until its worker is sent its next go."""

    @abstractmethod
    def publish(self, flat_params: th.Tensor, flat_buffers: th.Tensor | None = None) -> None:
        """Make ``flat_params`` (and ``flat_buffers``) the parameters (and buffers) that workers copy from now on."""

    @abstractmethod
    def send_go(
        self, worker_id: int, normalization: NormalizationStatistics | None = None, progress_remaining: float = 1.0
    ) -> None:
        """
        Send worker ``worker_id`` a "go" (:class:`Go`): the first lets it start; each later one answers its
        oldest report (that report's slot is free again), with the newest VecNormalize statistics and progress.
        """

    @abstractmethod
    def close(self) -> None:
        """Stop every worker and free every resource. Idempotent."""

    def end(self) -> None:
        """As :meth:`close`, when ``learn()`` went as it should: a backend may keep its workers for the next one."""
        self.close()

    def __enter__(self) -> "GradientCollector":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def check_restarts(max_worker_restarts: Any) -> int:
    if (
        not isinstance(max_worker_restarts, (int, np.integer))
        or isinstance(max_worker_restarts, bool)
        or max_worker_restarts < 0
    ):
        raise ValueError(f"max_worker_restarts must be an integer >= 0, got {max_worker_restarts!r}")
    return int(max_worker_restarts)
