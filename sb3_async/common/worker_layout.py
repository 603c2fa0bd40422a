"""
``n_workers="auto"`` and ``envs_per_worker="auto"``: measure what one worker's gradient costs on this
machine, then lay the workers out over the cores this process may use.

One probe process, started like a worker (sb3_async's forkserver, one torch thread), builds a
worker's envs and policy and runs the worker's own loop, segment, loss and backward, for about a
second. Two numbers decide the layout:

- **How much of a worker's time is CPU work** (``cpu_share``: CPU seconds over wall seconds). A
  worker that waits (an env behind a socket, a simulator that sleeps) leaves its core idle, so
  ``cores / cpu_share`` workers keep the cores busy: the thread-pool rule
  ``workers = cores x (1 + wait / compute)``, here with a quarter more (``WAITING_HEADROOM``). A
  worker that waits less than ``1 - CPU_BOUND_SHARE`` of its time gets one core, as with the
  default: more processes than cores would only take turns.
- **What one more env adds to a gradient** (``envs_per_worker="auto"``): the loop is timed with 1
  and with 8 envs, which gives a fixed cost per gradient (the loss, the backward pass, and the
  policy's forward passes, which a batch of envs shares) and a cost per env step (the env, and
  what its row adds to the batch). The fewest envs (a power of two, at most
  ``MAX_AUTO_ENVS_PER_WORKER``) whose steps cost at least the fixed part amortize it without
  making each gradient longer than it needs to be.

Both choices are about throughput (env steps per second), not about how much the policy learns
per env step: more envs per worker are larger, less frequent updates. A zoo entry tuned for the
env knows better; ``auto`` is for an env nobody tuned.
"""

import math
import time
import traceback
from dataclasses import asdict, dataclass, replace
from multiprocessing.connection import Connection, wait
from typing import Any

import cloudpickle
import torch as th

from sb3_async.common.collectors.base import WorkerCore, WorkerError, WorkerSpec, prepare_worker_process
from sb3_async.common.worker_pickling import dumps_for_workers
from sb3_async.common.forkserver import worker_context

AUTO = "auto"
PROBE_SECONDS = 1.0
CPU_BOUND_SHARE = 0.8
# Waits vary, and one worker's do not line up with the others' compute: CartPole behind a 1 ms wait on 2 cores
# ran fastest with 6-8 workers (2,000-3,000 env steps/s; 4 workers 1,700-1,900, 12-16 no faster), where the
# rule alone says 5.
WAITING_HEADROOM = 1.25
MAX_WORKERS_PER_CORE = 8  # the paper's 16 threads on a 2-core machine would be 8 a core: beyond that, memory for nothing
MAX_AUTO_ENVS_PER_WORKER = 16
PROBED_ENVS_PER_WORKER = (1, 8)
# A probe that cannot build its envs in this long would not run a worker either.
_PROBE_TIMEOUT_SECONDS = 120.0


@dataclass(frozen=True)
class GradientCost:
    """What one worker's gradient cost in the probe, with ``envs_per_worker`` envs."""

    envs_per_worker: int
    wall_seconds: float
    cpu_seconds: float
    # Env steps each env took per gradient, as measured (the segment length: n_steps for A3C and OffPolicyAC,
    # train_freq for the value methods; less where OffPolicyAC's replayed gradients take none).
    steps_per_env: float

    @property
    def cpu_share(self) -> float:
        return min(1.0, self.cpu_seconds / self.wall_seconds) if self.wall_seconds > 0 else 1.0


@dataclass(frozen=True)
class WorkerLayout:
    """What ``"auto"`` chose, and the measurements it chose from (the model keeps them as a dict: ``auto_layout``)."""

    n_workers: int
    envs_per_worker: int
    cores: int
    cpu_share: float
    fixed_seconds_per_gradient: float | None  # None when envs_per_worker was not "auto"
    seconds_per_env_step: float | None

    def describe(self) -> str:
        text = (
            f"{self.n_workers} workers x {self.envs_per_worker} envs for {self.cores} cores "
            f"(a worker's time is {self.cpu_share:.0%} CPU work"
        )
        if self.fixed_seconds_per_gradient is not None and self.seconds_per_env_step is not None:
            text += (
                f"; a gradient costs {self.fixed_seconds_per_gradient * 1e3:.2f} ms "
                f"+ {self.seconds_per_env_step * 1e3:.3f} ms per env step"
            )
        return text + ")"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose_n_workers(cpu_share: float, cores: int) -> int:
    """Enough workers to keep ``cores`` busy when each is busy ``cpu_share`` of its time, and a quarter more."""
    if cpu_share >= CPU_BOUND_SHARE:
        return cores
    return min(round(WAITING_HEADROOM * cores / max(cpu_share, 1e-3)), MAX_WORKERS_PER_CORE * cores)


def choose_envs_per_worker(fixed_seconds: float, seconds_per_env_step: float, steps_per_env: float) -> int:
    """The fewest envs (a power of two) whose ``steps_per_env`` env steps each cost at least a gradient's fixed cost."""
    envs = 1
    while envs < MAX_AUTO_ENVS_PER_WORKER and envs * steps_per_env * seconds_per_env_step < fixed_seconds:
        envs *= 2
    return envs


def _env_steps(cost: GradientCost) -> float:
    return cost.envs_per_worker * cost.steps_per_env


def split_gradient_cost(costs: list[GradientCost]) -> tuple[float, float]:
    """
    A gradient's fixed cost and the cost of one env step, from the costs at two env counts
    (a straight line through them: wall seconds = fixed + env steps per gradient x per step).
    """
    few = min(costs, key=lambda cost: cost.envs_per_worker)
    many = max(costs, key=lambda cost: cost.envs_per_worker)
    per_env_step = max(many.wall_seconds - few.wall_seconds, 0.0) / max(_env_steps(many) - _env_steps(few), 1e-9)
    fixed = max(few.wall_seconds - _env_steps(few) * per_env_step, 0.0)
    return fixed, per_env_step


def choose_layout(costs: list[GradientCost], cores: int, envs_per_worker: int | None, n_envs: int | None) -> WorkerLayout:
    """
    :param costs: the probe's measurements, one per env count it ran
    :param cores: the cores this process may use
    :param envs_per_worker: the user's choice, or None for "auto"
    :param n_envs: the number of envs of the user's VecEnv, shared among the workers when ``envs_per_worker``
        is not "auto" and not given (as without "auto"), else None
    """
    fixed = per_env_step = None
    if envs_per_worker is None and n_envs is None:
        fixed, per_env_step = split_gradient_cost(costs)
        steps_per_env = min(costs, key=lambda cost: cost.envs_per_worker).steps_per_env
        chosen_envs = choose_envs_per_worker(fixed, per_env_step, steps_per_env)
    else:
        chosen_envs = envs_per_worker or 1
    # The measurement at the env count nearest the chosen one says how much of a worker's time is CPU work.
    nearest = min(costs, key=lambda cost: abs(math.log(cost.envs_per_worker / chosen_envs)))
    n_workers = choose_n_workers(nearest.cpu_share, cores)
    if envs_per_worker is None and n_envs is not None:
        chosen_envs = max(1, n_envs // n_workers)
    return WorkerLayout(n_workers, chosen_envs, cores, nearest.cpu_share, fixed, per_env_step)


def measure_gradient_costs(
    spec: WorkerSpec, params: th.Tensor, buffers: th.Tensor, envs_per_worker: list[int], seconds: float
) -> list[GradientCost]:
    """
    Run a worker's loop in a probe process, started as workers are, for ``seconds`` in all, at each
    env count in ``envs_per_worker``; raise :class:`WorkerError` with its traceback if it fails.
    The probe acts with the learner's flat ``params`` and ``buffers``, as a worker's first segment
    does: how long its episodes last, and so how often its envs reset, is then the run's.
    """
    specs = [replace(spec, env_factory=replace(spec.env_factory, envs_per_worker=n)) for n in envs_per_worker]
    spec_bytes = dumps_for_workers(specs, what="the worker setup (policy, env factory, hyperparameters)")
    context = worker_context()
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(
        target=_probe_main,
        args=(spec_bytes, params.detach().clone(), buffers.detach().clone(), seconds / len(specs), sender),
        name="sb3_async-probe",
        daemon=True,
    )
    try:
        process.start()
        sender.close()  # the probe holds the only other end: EOF if it dies
        ready = wait([receiver, process.sentinel], timeout=_PROBE_TIMEOUT_SECONDS + seconds)
        if not ready:
            raise WorkerError(0, f"(the probe for 'auto') did not finish within {_PROBE_TIMEOUT_SECONDS + seconds:.0f} s")
        try:
            result = receiver.recv()
        except (EOFError, OSError):
            process.join(1.0)
            raise WorkerError(0, f"(the probe for 'auto') died unexpectedly (exit code {process.exitcode})") from None
        if isinstance(result, str):
            raise WorkerError(0, "(the probe for 'auto') raised an exception", result)
        return result
    finally:
        receiver.close()
        if process.is_alive():
            process.kill()
        process.join()
        process.close()


def _probe_main(spec_bytes: bytes, params: th.Tensor, buffers: th.Tensor, seconds_each: float, sender: Connection) -> None:
    prepare_worker_process()
    try:
        costs = []
        for spec in cloudpickle.loads(spec_bytes):
            core = WorkerCore(0, spec, params.numel())
            gradient = th.zeros(spec.slot_size(params.numel()))  # or an actor's trajectory
            try:
                core.load_parameters(params, buffers)
                core.run_segment()  # the first one pays for resets and lazy initialisation
                n_gradients, env_steps, started, cpu_started = 0, 0, time.perf_counter(), time.process_time()
                while n_gradients < 3 or time.perf_counter() - started < seconds_each:
                    env_steps += core.run_segment().n_env_steps
                    core.write_handover(gradient)
                    n_gradients += 1
                wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
            finally:
                core.close()
            envs = spec.env_factory.envs_per_worker
            costs.append(GradientCost(envs, wall / n_gradients, cpu / n_gradients, env_steps / n_gradients / envs))
        sender.send(costs)
    except BaseException:
        sender.send(traceback.format_exc())
    finally:
        sender.close()
