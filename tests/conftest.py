import os
import time
from multiprocessing import forkserver

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
