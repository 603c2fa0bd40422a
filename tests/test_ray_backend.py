"""
The Ray backend (``backend="ray"``) on a local Ray: learning, the other algorithms, faults.

Every test here is marked ``ray``: outside a loopback-only network namespace, conftest.py re-runs
them inside one (see there). The A3C API tests run on both backends in test_a3c_api.py.
"""

import functools
import os
import signal
import time

import pytest
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger

from sb3_async import A3C, IMPALA, AsyncQLearning, OffPolicyAC, WorkerError
from sb3_async.common.collectors import ray_backend
from tests.conftest import RecordingOutput
from tests.envs import CartPoleBuiltOnlyIn, HangingEnv, RaisingEnv
from tests.test_learning import assert_solves_cartpole

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_session")]

FAST = dict(n_workers=2, n_steps=5, seed=0, device="cpu", backend="ray")


def process_exists(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_until_gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := [pid for pid in pids if process_exists(pid)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


class KillAnActor(BaseCallback):
    """
    SIGKILLs worker 0's actor process at the ``at_call``-th step; remembers every actor it saw. With
    ``until_replaced_and``, ends training once a replacement has been built and that many steps are done.
    """

    def __init__(self, at_call: int, until_replaced_and: int | None = None):
        super().__init__()
        self.at_call = at_call
        self.until_replaced_and = until_replaced_and
        self.killed: int | None = None
        self.killed_at: float | None = None
        self.seen_pids: set[int] = set()
        self.replaced = False

    def _on_training_start(self) -> None:
        self.collector = self.locals["collector"]

    def _on_step(self) -> bool:
        seen_before = len(self.seen_pids)
        self.seen_pids.update(self.collector.worker_pids)
        if self.n_calls == self.at_call:
            self.killed = self.collector.worker_pids[0]
            self.killed_at = time.monotonic()
            os.kill(self.killed, signal.SIGKILL)
        self.replaced = self.replaced or (self.killed is not None and len(self.seen_pids) > seen_before)
        return self.until_replaced_and is None or not self.replaced or self.num_timesteps < self.until_replaced_and


def test_a3c_solves_cartpole_with_two_ray_actors():
    model = A3C("MlpPolicy", "CartPole-v1", n_workers=2, envs_per_worker=4, seed=0, device="cpu", backend="ray")
    assert_solves_cartpole(model, seed=0, budget=250_000)


@pytest.mark.parametrize(
    "make_model",
    [
        lambda: OffPolicyAC("MlpPolicy", "CartPole-v1", learning_starts=20, batch_size=10, **FAST),
        lambda: AsyncQLearning("MlpPolicy", "CartPole-v1", train_freq=5, target_update_interval=100, **FAST),
        # The recurrent worker keeps its LSTM states inside the actor, from one segment to the next.
        lambda: A3C("MlpLstmPolicy", "CartPole-v1", **FAST),
        # Trajectories, not gradients, travel through the object store; the learner updates on each one (batch_size=1).
        lambda: IMPALA("MlpPolicy", "CartPole-v1", batch_size=1, **FAST),
    ],
    ids=["offpac", "async_q", "a3c_lstm", "impala"],
)
def test_the_other_algorithms_and_recurrent_a3c_train_on_ray(make_model):
    model = make_model()
    model.learn(2_000)
    assert model.num_timesteps >= 2_000
    assert model._n_updates >= 2_000 // 10  # every fresh segment of 2 envs x 5 steps is applied
    assert model.dropped_updates == 0


def test_sigkill_of_an_actor_without_restarts_is_reported_with_its_node():
    model = A3C("MlpPolicy", "CartPole-v1", **FAST)
    killer = KillAnActor(at_call=100)
    with pytest.raises(WorkerError, match=r"worker 0 \(node [0-9a-f]+\) died unexpectedly") as error:
        model.learn(1_000_000, callback=killer)
    assert time.monotonic() - killer.killed_at < 1  # Ray reports the actor dead within tens of milliseconds here
    assert error.value.node is not None
    assert wait_until_gone(sorted(killer.seen_pids)) == []  # the other actor is stopped too
    assert len(ray_backend.IDLE_ACTORS) == 0  # a learn() that raises keeps none


def test_sigkill_of_an_actor_with_a_restart_left_training_goes_on():
    model = A3C("MlpPolicy", "CartPole-v1", max_worker_restarts=1, **FAST)
    output = RecordingOutput()
    model.set_logger(Logger(folder=None, output_formats=[output]))
    # The other actor goes on while Ray builds the replacement (it is not waited for): train until it runs.
    killer = KillAnActor(at_call=100, until_replaced_and=2_000)
    model.learn(1_000_000, callback=killer, log_interval=10)
    assert killer.replaced and 2_000 <= model.num_timesteps < 1_000_000
    assert model.worker_restarts == 1
    assert output.dumps[-1]["async/worker_restarts"] == 1
    assert killer.killed not in killer.collector.worker_pids  # worker 0 is a new actor
    assert len(killer.seen_pids) == 3
    assert wait_until_gone([killer.killed]) == []
    # The learn() went well: the two actors it ended with wait for the next one, until they are stopped.
    assert all(process_exists(pid) for pid in killer.collector.worker_pids)
    ray_backend.stop_idle_ray_workers()
    assert wait_until_gone(sorted(killer.seen_pids)) == []


def test_env_that_raises_on_an_actor_is_an_error_not_a_restart():
    model = A3C("MlpPolicy", lambda: RaisingEnv(fail_after=30), max_worker_restarts=3, **FAST)
    with pytest.raises(WorkerError, match="raised an exception") as error:
        model.learn(100_000)
    assert "RuntimeError: the env broke on purpose" in str(error.value)
    assert "tests/envs.py" in error.value.worker_traceback
    assert model.worker_restarts == 0


def test_a_silent_actor_is_named_and_replaced_while_restarts_are_left(tmp_path):
    # The replacement does not hang; at 1 ms a step, the other actor's 3,000 steps outlast the 1 s timeout on any machine.
    env = functools.partial(HangingEnv, hang_at=50, once_marker=str(tmp_path / "hung"), step_seconds=0.001)
    model = A3C("MlpPolicy", env, worker_timeout=1.0, max_worker_restarts=1, **FAST)
    with pytest.warns(UserWarning, match=r"has sent nothing for \d+ s; it is computing a gradient .* it is replaced"):
        model.learn(3_000)
    assert model.worker_restarts == 1
    assert model.num_timesteps >= 3_000


def test_large_parameters_go_through_the_object_store(monkeypatch):
    # Small networks' parameters travel inside each call; with the threshold at 0, every update is a ray.put.
    monkeypatch.setattr(ray_backend, "INLINE_BYTES", 0)
    puts = []
    real_put = ray_backend.RayCollector._publish

    def counting_publish(self, params, buffers, version):
        real_put(self, params, buffers, version)
        puts.append(type(self._published).__name__)

    monkeypatch.setattr(ray_backend.RayCollector, "_publish", counting_publish)
    model = A3C("MlpPolicy", "CartPole-v1", **FAST).learn(1_000)
    assert model._n_updates >= 1_000 // 10
    assert set(puts) == {"ObjectRef"} and len(puts) == model._n_updates + 1  # the first, then one per update


class ActorPids(BaseCallback):
    """The pids of the actors a learn() ran its workers in."""

    def _on_training_start(self) -> None:
        self.collector = self.locals["collector"]

    def _on_step(self) -> bool:
        self.pids = sorted(self.collector.worker_pids)
        return True


def train_in(model, timesteps: int = 500) -> list[int]:
    pids = ActorPids()
    model.learn(timesteps, callback=pids)
    assert model.num_timesteps >= timesteps
    return pids.pids


def test_a_later_learn_of_any_model_builds_its_workers_anew_in_the_actors_the_last_one_kept():
    ray_backend.stop_idle_ray_workers()
    model = A3C("MlpPolicy", "CartPole-v1", **FAST)
    first = train_in(model)
    assert train_in(model) == first and len(first) == 2
    # Another model, another algorithm and a policy of another size (the actor would refuse a gradient of the
    # wrong length): the workers are built from its settings, in the same processes.
    other = OffPolicyAC("MlpPolicy", "CartPole-v1", policy_kwargs=dict(net_arch=[8]), learning_starts=20, **FAST)
    assert train_in(other) == first
    # One that died while it waited is replaced by a new actor, and not counted as a restart.
    os.kill(first[0], signal.SIGKILL)
    assert wait_until_gone([first[0]]) == []
    after_the_death = train_in(model)
    assert first[1] in after_the_death and first[0] not in after_the_death and model.worker_restarts == 0
    ray_backend.stop_idle_ray_workers()
    assert wait_until_gone(after_the_death) == []
    assert len(ray_backend.IDLE_ACTORS) == 0


def test_kept_actors_that_cannot_build_the_next_workers_are_an_error_and_are_stopped():
    ray_backend.stop_idle_ray_workers()
    kept = train_in(A3C("MlpPolicy", "CartPole-v1", **FAST))
    model = A3C("MlpPolicy", functools.partial(CartPoleBuiltOnlyIn, pid=os.getpid()), **FAST)
    with pytest.raises(WorkerError, match="raised an exception while it built its envs and policy") as error:
        model.learn(500)
    assert "this env cannot be built in a worker" in str(error.value)
    assert wait_until_gone(kept) == [] and len(ray_backend.IDLE_ACTORS) == 0


def test_idle_actors_that_a_learn_cannot_use_are_stopped_before_new_ones_are_made():
    # The test's Ray has 4 CPUs. Worker 0 asks for what a kept actor has (1 CPU) and takes it; worker 1 asks for
    # 3: the other kept actor, idle, would leave no room for it.
    ray_backend.stop_idle_ray_workers()
    kept = train_in(A3C("MlpPolicy", "CartPole-v1", **FAST))
    options = [{}, {"num_cpus": 3}]
    mixed = train_in(A3C("MlpPolicy", "CartPole-v1", ray_actor_options=options, **FAST))
    assert len(set(mixed) & set(kept)) == 1 and wait_until_gone(sorted(set(kept) - set(mixed))) == []
    ray_backend.stop_idle_ray_workers()
    assert wait_until_gone(mixed) == []


def test_a_kept_actor_still_busy_with_a_hanging_call_is_replaced_after_worker_timeout(tmp_path):
    # One worker of 5-step segments: learn(50) ends with the call for steps 51-55 in flight, and it hangs at step 53.
    ray_backend.stop_idle_ray_workers()
    env = functools.partial(HangingEnv, hang_at=53, once_marker=str(tmp_path / "hung"))
    model = A3C("MlpPolicy", env, worker_timeout=1.0, **dict(FAST, n_workers=1))
    hanging = train_in(model, 50)
    with pytest.warns(UserWarning, match=r"worker 0: the actor kept from the last learn\(\) did not answer within 1 s"):
        replacement = train_in(model, 50)
    assert replacement != hanging and wait_until_gone(hanging) == [] and model.worker_restarts == 0
    ray_backend.stop_idle_ray_workers()
    assert wait_until_gone(replacement) == []
