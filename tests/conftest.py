import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from multiprocessing import forkserver
from pathlib import Path

import pytest
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import KVWriter

from sb3_async.common import forkserver as sb3_async_forkserver


def forkserver_children() -> list[int]:
    """Pids of live processes started by this test process's forkservers: sb3_async's (the workers) and Python's."""
    server_pids = {sb3_async_forkserver.server_pid(), getattr(forkserver._forkserver, "_forkserver_pid", None)} - {None}
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:  # it exited while we looked
            continue
        state, parent = fields[0], int(fields[1])
        if parent in server_pids and state != "Z":
            children.append(int(entry))
    return children


def shm_segments() -> set[str]:
    return set(os.listdir("/dev/shm"))


def wait_until_no_workers(timeout: float = 5.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := forkserver_children()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


@pytest.fixture
def no_leaks():
    """Fails the test if a worker process or a /dev/shm segment outlives it."""
    before = shm_segments()
    yield
    assert wait_until_no_workers() == [], "worker processes left behind"
    assert shm_segments() - before == set(), "shared-memory segments left behind"


class RecordingOutput(KVWriter):
    """Keeps every logger dump in memory."""

    def __init__(self) -> None:
        self.dumps: list[dict] = []

    def write(self, key_values, key_excluded, step=0):
        self.dumps.append(dict(key_values))

    def close(self):
        pass


class CountingCallback(BaseCallback):
    def __init__(self, stop_after_calls: int | None = None):
        super().__init__()
        self.stop_after_calls = stop_after_calls
        self.training_starts = 0
        self.training_ends = 0
        self.timesteps_seen: list[int] = []

    def _on_training_start(self) -> None:
        self.training_starts += 1

    def _on_training_end(self) -> None:
        self.training_ends += 1

    def _on_step(self) -> bool:
        self.timesteps_seen.append(self.num_timesteps)
        return self.stop_after_calls is None or self.n_calls < self.stop_after_calls


# --- Tests that start Ray -------------------------------------------------------------------------
# Ray opens ports, rewrites 127.0.0.1 to the machine's address and probes cloud-metadata and DNS
# hosts even with usage stats off. So a test marked `ray` runs only where the network is loopback
# and nothing else: anywhere else, this plugin takes the Ray tests out of the run and, at the end,
# runs them again through tools/loopback-only (a fresh network namespace whose only interface is
# lo, which needs root, with the settings that keep a local Ray on 127.0.0.1 and quiet). Where no
# namespace can be made, they are skipped, and the reason is printed.
LOOPBACK_ONLY = Path(__file__).resolve().parent.parent / "tools" / "loopback-only"
# Small, quiet, in a directory of its own that the fixture removes.
RAY_TEST_INIT = dict(include_dashboard=False, object_store_memory=100 * 1024**2, num_cpus=4, log_to_driver=False)


def network_is_loopback_only() -> bool:
    """Whether this process's network namespace has no interface but lo (/proc/self/net, not /sys, is per process)."""
    with open("/proc/self/net/dev") as interfaces:
        names = [line.split(":")[0].strip() for line in interfaces.readlines()[2:]]
    return names == ["lo"]


def pytest_configure(config):
    config.addinivalue_line("markers", "ray: starts Ray; runs only in a loopback-only network namespace (see conftest.py)")
    if network_is_loopback_only():
        os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(16))  # else Ray writes ~/.ray/auth_token


@pytest.hookimpl(trylast=True)  # after -k and -m have deselected what they deselect
def pytest_collection_modifyitems(session, config, items):
    ray_items = [item for item in items if item.get_closest_marker("ray")]
    if not ray_items or network_is_loopback_only():
        return
    items[:] = [item for item in items if not item.get_closest_marker("ray")]
    config.hook.pytest_deselected(items=ray_items)
    config.stash[_RAY_NODE_IDS] = [item.nodeid for item in ray_items]


_RAY_NODE_IDS = pytest.StashKey[list]()


def _namespace_problem() -> str | None:
    """Why no loopback-only namespace can be made here, or None."""
    try:
        probe = subprocess.run([str(LOOPBACK_ONLY), "true"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        return str(error)
    return None if probe.returncode == 0 else (probe.stderr.strip() or f"exit code {probe.returncode}")


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    node_ids = session.config.stash.get(_RAY_NODE_IDS, None)
    if not node_ids:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    problem = _namespace_problem()
    if problem is not None:
        reporter.write_line(f"SKIPPED {len(node_ids)} Ray tests: cannot make a loopback-only network namespace ({problem})")
        return
    reporter.write_sep("=", f"{len(node_ids)} Ray tests, re-run in a loopback-only network namespace")
    command = [sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider", "--durations=5", *node_ids]
    child = subprocess.run(
        [str(LOOPBACK_ONLY), *command],
        cwd=session.config.rootpath,
        capture_output=True,
        text=True,
    )
    reporter.write(child.stdout + child.stderr)
    if child.returncode != 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="module")
def ray_session():
    """A small local Ray for the tests of one module, shut down and removed after them."""
    ray = pytest.importorskip("ray")
    assert network_is_loopback_only(), "Ray tests must be marked `ray`"
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray puts unix sockets in it
    ray.init(**RAY_TEST_INIT, _temp_dir=temp_dir)
    try:
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module", params=["local", pytest.param("ray", marks=pytest.mark.ray)])
def backend(request) -> str:
    """Each collector backend; Ray's with a local Ray running."""
    if request.param == "ray":
        request.getfixturevalue("ray_session")
    return request.param
