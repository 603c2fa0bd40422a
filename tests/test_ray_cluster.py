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
