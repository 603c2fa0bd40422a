"""
The Ray backend where sb3_async, not the user, starts Ray, and on a simulated 2-node cluster.

Marked ``ray`` (conftest.py re-runs them in a loopback-only network namespace). No module-wide Ray
runs here: each test starts and stops its own.
"""

import os
import shutil
import tempfile

import pytest
from stable_baselines3.common.callbacks import BaseCallback

from sb3_async import A3C
from tests.conftest import RAY_TEST_INIT, shm_segments
from tests.test_ray_backend import wait_until_gone

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray


@pytest.fixture
def temp_dir():
    path = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray puts unix sockets in it
    yield path
    shutil.rmtree(path, ignore_errors=True)


class WhereAreTheWorkers(BaseCallback):
    def _on_training_start(self) -> None:
        self.collector = self.locals["collector"]
        self.locations: set[tuple[str, int]] = set()

    def _on_step(self) -> bool:
        if not self.locations:
            self.first_locations = list(self.collector.worker_locations)
        self.locations.update(self.collector.worker_locations)
        return True


def test_learn_starts_ray_when_none_runs_and_shuts_it_down(temp_dir):
    assert not ray.is_initialized()
    shm_before = shm_segments()
    where = WhereAreTheWorkers()
    model = A3C(
        "MlpPolicy",
        "CartPole-v1",
        n_workers=2,
        seed=0,
        device="cpu",
        backend="ray",
        ray_init_kwargs=dict(RAY_TEST_INIT, _temp_dir=temp_dir),
    )
    model.learn(1_000, callback=where)
    assert model.num_timesteps >= 1_000
    assert not ray.is_initialized()
    actor_pids = sorted(pid for _, pid in where.locations)
    assert len(actor_pids) == 2 and os.getpid() not in actor_pids
    assert wait_until_gone(actor_pids) == []
    assert shm_segments() - shm_before == set()


def test_workers_run_on_both_nodes_of_a_two_node_cluster(temp_dir, monkeypatch):
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("RAY_TMPDIR", temp_dir)  # where a cluster writes its address file, else /tmp/ray

    # One "slot" per node and one per actor: each node takes exactly one worker.
    node_args = dict(num_cpus=1, resources={"sb3_async_slot": 1}, object_store_memory=80 * 1024**2)
    cluster = Cluster(initialize_head=True, head_node_args=dict(node_args, include_dashboard=False))
    try:
        worker_node = cluster.add_node(**node_args)
        ray.init(address=cluster.address, log_to_driver=False)
        where = WhereAreTheWorkers()
        model = A3C(
            "MlpPolicy",
            "CartPole-v1",
            n_workers=2,
            seed=0,
            device="cpu",
            backend="ray",
            ray_actor_options={"num_cpus": 1, "resources": {"sb3_async_slot": 1}},
        )
        model.learn(1_000, callback=where)
        assert model.num_timesteps >= 1_000
        assert {node for node, _ in where.locations} == {cluster.head_node.node_id, worker_node.node_id}
        assert ray.is_initialized()  # the user's connection stays
    finally:
        ray.shutdown()
        cluster.shutdown()


class RemoveNodeAt(BaseCallback):
    """
    Takes the node away (its raylet and every process on it killed) at the ``at_call``-th step. With
    ``until_rebuilt_and``, ends training once worker 1 runs on another node and that many steps are done.
    """

    def __init__(self, cluster, node, at_call: int, until_rebuilt_and: int | None = None):
        super().__init__()
        self.cluster, self.node, self.at_call, self.until_rebuilt_and = cluster, node, at_call, until_rebuilt_and

    def _on_training_start(self) -> None:
        self.collector = self.locals["collector"]

    def _on_step(self) -> bool:
        if self.n_calls == self.at_call:
            self.cluster.remove_node(self.node, allow_graceful=False)
        if self.until_rebuilt_and is None or self.n_calls <= self.at_call:
            return True
        # (None, 0) while the replacement builds, and the learner does not wait for it.
        rebuilt = self.collector.worker_locations[1][0] not in (None, self.node.node_id)
        return not (rebuilt and self.num_timesteps >= self.until_rebuilt_and)


def test_a_worker_whose_node_dies_is_rebuilt_on_a_live_node(temp_dir, monkeypatch):
    from ray.cluster_utils import Cluster
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    monkeypatch.setenv("RAY_TMPDIR", temp_dir)
    # Health checks every 0.2 s: a lost node is declared dead within about a second, not Ray's default tens of seconds.
    health_checks = {"health_check_period_ms": 200, "health_check_failure_threshold": 5}
    head_args = dict(num_cpus=2, object_store_memory=80 * 1024**2, include_dashboard=False, _system_config=health_checks)
    cluster = Cluster(initialize_head=True, head_node_args=head_args)
    try:
        doomed = cluster.add_node(num_cpus=1, object_store_memory=80 * 1024**2)
        ray.init(address=cluster.address, log_to_driver=False)
        # Worker 1 prefers the node that will die; its replacement may go anywhere.
        prefer_doomed = NodeAffinitySchedulingStrategy(node_id=doomed.node_id, soft=True)
        options = [{"num_cpus": 1}, {"num_cpus": 1, "scheduling_strategy": prefer_doomed}]
        where = WhereAreTheWorkers()
        model = A3C(
            "MlpPolicy", "CartPole-v1", n_workers=2, n_steps=5, seed=0, device="cpu",
            backend="ray", ray_actor_options=options, max_worker_restarts=3,
        )  # fmt: skip
        # The other worker goes on while Ray builds the replacement (it is not waited for): train until it runs.
        model.learn(1_000_000, callback=[where, RemoveNodeAt(cluster, doomed, at_call=100, until_rebuilt_and=4_000)])
        assert 4_000 <= model.num_timesteps < 1_000_000
        # Once for the lost actor; again if its first replacement went to the node before Ray knew it dead.
        assert 1 <= model.worker_restarts <= 3
        assert (doomed.node_id, where.first_locations[1][1]) == where.first_locations[1]
        assert where.collector.worker_locations[1][0] == cluster.head_node.node_id
    finally:
        ray.shutdown()
        cluster.shutdown()
