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
from tests.envs import HangingEnv, RaisingEnv
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
