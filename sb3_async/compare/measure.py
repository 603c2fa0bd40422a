"""What one run measures: its learning curve, CPU time and memory, across the learner and its workers."""

import os
import threading
import time

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


class EpisodeRecorder(BaseCallback):
    """Records every finished training episode as (env steps so far, seconds since training started, return)."""

    def __init__(self) -> None:
        super().__init__()
        self.started = 0.0
        self.episodes: list[tuple[int, float, float]] = []

    def _on_training_start(self) -> None:
        self.started = time.perf_counter()

    def _on_step(self) -> bool:
        seconds = time.perf_counter() - self.started
        for info in self.locals.get("infos", []):
            if "episode" in info:
                self.episodes.append((self.num_timesteps, seconds, float(info["episode"]["r"])))
        return True


def _proc_stat(pid: int) -> tuple[int, int, int] | None:
    """(parent pid, CPU ticks user+system, resident pages) of ``pid``, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[21])


def _pss_bytes(pid: int) -> int:
    """
    The proportional set size of ``pid`` (``/proc/PID/smaps_rollup``): its private pages plus its
    share of the pages it shares. Summed over processes it counts every page once, where summed RSS
    counts torch's shared pages once per worker. 0 if the process is gone.
    """
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class ProcessTreeMonitor:
    """
    Samples, a few times a second, the CPU time and memory of this process and all its
    descendants: the asynchronous algorithms' workers are children of a forkserver, so
    ``getrusage`` of this process would not count them. CPU time is the sum over processes of the
    last value seen (up to one interval of a worker's last work is missed). Peak memory is the
    largest sum seen at one time of PSS (the measure to read: every page counted once) and, for
    comparison, of RSS (which counts pages shared between processes once per process). Every sample's
    PSS sum is kept in ``pss_samples`` as (seconds since start, bytes), to see memory grow. Linux only (/proc).
    """

    def __init__(self, interval: float = 0.25) -> None:
        self.interval = interval
        self.root = os.getpid()
        self.cpu_ticks: dict[int, int] = {}
        self.ticks_at_start = 0
        self.peak_rss_bytes = 0
        self.peak_pss_bytes = 0
        self.pss_samples: list[tuple[float, int]] = []
        self._started = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "ProcessTreeMonitor":
        own = _proc_stat(self.root)
        self.ticks_at_start = own[1] if own else 0
        self.sample()  # so that the peaks start from this process's own memory
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        stats = {int(entry): stat for entry in os.listdir("/proc") if entry.isdigit() and (stat := _proc_stat(int(entry)))}
        tree, frontier = {self.root}, [self.root]
        while frontier:
            parent = frontier.pop()
            children = [pid for pid, stat in stats.items() if stat[0] == parent and pid not in tree]
            tree.update(children)
            frontier.extend(children)
        rss = pss = 0
        for pid in tree:
            if pid in stats:
                self.cpu_ticks[pid] = stats[pid][1]
                rss += stats[pid][2] * _PAGE_SIZE
                pss += _pss_bytes(pid)
        self.peak_rss_bytes = max(self.peak_rss_bytes, rss)
        self.peak_pss_bytes = max(self.peak_pss_bytes, pss)
        self.pss_samples.append((time.perf_counter() - self._started, pss))

    @property
    def cpu_seconds(self) -> float:
        return (sum(self.cpu_ticks.values()) - self.ticks_at_start) / _CLOCK_TICKS


def first_time_solved(episodes: list[tuple[int, float, float]], threshold: float, window: int) -> tuple[float, float]:
    """(steps, seconds) when the mean of the last ``window`` training episodes first reached ``threshold``; NaN if never."""
    returns = np.array([episode[2] for episode in episodes])
    if len(returns) < window:
        return float("nan"), float("nan")
    means = np.convolve(returns, np.ones(window) / window, mode="valid")  # means[i] covers episodes i .. i+window-1
    reached = np.flatnonzero(means >= threshold)
    if len(reached) == 0:
        return float("nan"), float("nan")
    step, seconds, _ = episodes[reached[0] + window - 1]
    return float(step), float(seconds)
