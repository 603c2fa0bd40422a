"""
Chaos soak (issue 29): train on CartPole-v1 while a killer SIGKILLs a random worker every few
seconds, with ``max_worker_restarts`` high enough for every kill, and check that nothing is lost:

- ``num_timesteps`` is what ``learn()`` was asked for (rounded up to ``n_envs``, as SB3 counts);
- the training mean of the last 100 episodes reaches CartPole's threshold (475);
- every kill was survived by a restart, and after ``learn()`` no worker process, shared-memory
  segment (``/dev/shm``) or Ray process is left;
- memory (PSS summed over the learner and every process under it, Ray's own included) grows less
  than 5% from the run's first minute to its last.

It also counts the env steps the workers took (every process adds its steps to a shared file) and
how many of them ``learn()`` never counted: the segments a kill cut short, and the ones under way
when ``learn()`` ended.

    cd benchmarks && ../tools/loopback-only ../.venv-test/bin/python chaos.py --minutes 10     (or: make bench-chaos)
    ../.venv-test/bin/python chaos.py --minutes 1 --configs a3c-locked                         (no Ray: no namespace needed)

Ray opens ports: the Ray configurations run only in a loopback-only network namespace
(``tools/loopback-only``), and are skipped, with a line that says so, elsewhere.
"""

import argparse
import functools
import json
import mmap
import os
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from multiprocessing import resource_tracker
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.callbacks import BaseCallback

from sb3_async import A3C, OffPolicyAC
from sb3_async.common import forkserver
from sb3_async.compare.measure import EpisodeRecorder, ProcessTreeMonitor, first_time_solved

THRESHOLD = 475.0
# Hyperparameters: the zoo's CartPole-v1 entries (zoo_configs/), 2 workers x 4 envs.
ALGORITHMS: dict[str, tuple[type, dict[str, Any]]] = {
    "a3c": (A3C, dict(ent_coef=0.0)),
    "offpac": (OffPolicyAC, dict()),
}
# name -> (algorithm, settings): the default mode, the learner's and Hogwild's, and Ray, for both algorithms.
CONFIGS = {
    f"{algo}-{mode}": (algo, dict(backend="ray", update_mode="learner") if mode == "ray" else dict(update_mode=mode))
    for algo in ALGORITHMS
    for mode in ("locked", "learner", "hogwild", "ray")
}
RAY_INIT = dict(include_dashboard=False, object_store_memory=100 * 1024**2, num_cpus=4, log_to_driver=False)


# --- Counting every env step, in whichever process takes it -------------------------------------------------------

_COUNTER_SLOTS = 1 << 16  # one int64 per pid modulo this: live processes never share a slot in practice


class CountedSteps(gym.Wrapper):
    """Adds each step to a slot of a shared file (the slot of this process), so steps of killed workers count too."""

    def __init__(self, env: gym.Env, counter_path: str):
        super().__init__(env)
        self.counter_path = counter_path
        self._counts: np.ndarray | None = None

    def step(self, action):
        if self._counts is None:  # opened in the process that steps, not the one that built the env
            with open(self.counter_path, "r+b") as file:
                self._counts = np.frombuffer(mmap.mmap(file.fileno(), 0), dtype=np.int64)
        self._counts[os.getpid() % _COUNTER_SLOTS] += 1
        return self.env.step(action)

    def __getstate__(self):
        return {**self.__dict__, "_counts": None}


def counted_cartpole(counter_path: str) -> gym.Env:
    return CountedSteps(gym.make("CartPole-v1"), counter_path)


def new_step_counter(folder: str) -> str:
    path = os.path.join(folder, "env_steps.bin")
    with open(path, "wb") as file:
        file.truncate(_COUNTER_SLOTS * 8)
    return path


def steps_counted(counter_path: str) -> int:
    return int(np.fromfile(counter_path, dtype=np.int64).sum())


# --- The killer ----------------------------------------------------------------------------------------------------


class KillWorkers(BaseCallback):
    """
    SIGKILLs a random worker every ``every`` seconds (a uniform draw between the two), from a thread
    of its own, as the OOM killer or a failing node would: at any point of a worker's loop, the
    shared lock held or not. Only while a ``learn()`` is under way and past its first update (a
    worker killed while the workers start is an error by design: it could not start again), over
    as many ``learn()`` calls as it is passed to; :meth:`stop` ends it.
    """

    def __init__(self, every: tuple[float, float], seed: int = 0):
        super().__init__()
        self.every = every
        self.kills: list[float] = []  # seconds since the first learn() started
        self.kills_at_an_end = 0  # after the last update of a learn(): the learner was done, and replaced nobody
        self._last_step_at = 0.0
        self._random = random.Random(seed)
        self._stop = threading.Event()
        self._training = threading.Event()
        self._thread = threading.Thread(target=self._kill_until_stopped, daemon=True)

    def _on_training_start(self) -> None:
        self._collector = self.locals["collector"]
        self._kills_before_this_learn = len(self.kills)
        if not self._thread.is_alive():
            self._started = time.perf_counter()
            self._thread.start()

    def _on_step(self) -> bool:
        self._training.set()  # the workers are built and running: a kill now is a death, not a failed start
        self._last_step_at = time.perf_counter() - self._started
        return True

    def _on_training_end(self) -> None:
        self._training.clear()
        self.kills_at_an_end += sum(at > self._last_step_at for at in self.kills[self._kills_before_this_learn :])

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _kill_until_stopped(self) -> None:
        while not self._stop.wait(self._random.uniform(*self.every)):
            pids = [pid for pid in self._collector.worker_pids if pid]
            if not self._training.is_set() or not pids:
                continue
            try:
                os.kill(self._random.choice(pids), signal.SIGKILL)
            except ProcessLookupError:  # it died a moment ago (killed by us, and not yet replaced)
                continue
            self.kills.append(time.perf_counter() - self._started)


# --- One soak ------------------------------------------------------------------------------------------------------


@dataclass
class SoakResult:
    config: str
    seconds: float
    learns: int  # learn() calls, one after the other (reset_num_timesteps=False after the first)
    asked: int
    num_timesteps: int
    # As SB3's loops count: on_step per n_envs steps, and the last segment counted whole, so at most the budget
    # rounded up to n_envs plus one worker's segment (as SB3's A2C finishes its last rollout), in every mode.
    most_timesteps: int
    kills: int
    kills_at_an_end: int  # after the last update of a learn(): the learner was done, and replaced nobody
    restarts: int
    env_steps_taken: int
    env_steps_not_counted: int
    seconds_to_threshold: float
    best_training_mean: float
    final_training_mean: float
    pss_first_mib: float
    pss_last_mib: float
    processes_left: list[int]
    shm_left: list[str]

    @property
    def pss_growth(self) -> float:
        return self.pss_last_mib / self.pss_first_mib - 1.0

    @property
    def problems(self) -> list[str]:
        """What the soak checks, as sentences for each check that failed."""
        found = []
        if not self.asked <= self.num_timesteps <= self.most_timesteps:
            found.append(f"num_timesteps {self.num_timesteps}, asked for {self.asked} (at most {self.most_timesteps})")
        # A kill just before a learn()'s last update may find the learner with every step it asked for: no restart
        # needed. More restarts than kills: a worker went silent and was replaced, which nothing here should cause.
        if not self.kills - self.kills_at_an_end - self.learns <= self.restarts <= self.kills:
            found.append(f"{self.kills} kills but {self.restarts} restarts")
        if self.processes_left or self.shm_left:
            found.append(f"left behind: processes {self.processes_left}, /dev/shm {self.shm_left}")
        return found


class SoakEpisodes(EpisodeRecorder):
    """Every training episode, timed from the first of several ``learn()`` calls."""

    def _on_training_start(self) -> None:
        if not self.started:
            super()._on_training_start()


def descendants(root: int) -> list[int]:
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                parents[int(entry)] = int(fields[1])
    found, frontier = [], [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        found += children
        frontier += children
    return found


def most_timesteps(model: Any, asked: int) -> int:
    return -(-asked // model.n_envs) * model.n_envs + model.envs_per_worker * model.n_steps


def mean_pss_mib(samples: list[tuple[float, int]], start: float, stop: float) -> float:
    window = [pss for at, pss in samples if start <= at <= stop]
    return statistics.mean(window) / 2**20 if window else float("nan")


def soak(config: str, seconds: float, every: tuple[float, float], seed: int = 0, timesteps: int | None = None) -> SoakResult:
    """
    Train ``config`` under the killer: one ``learn(timesteps)``, or, by default, ``learn()`` after
    ``learn()`` (as a user training in chunks would) of about a minute each, until ``seconds`` have passed.
    """
    algo, settings = CONFIGS[config]
    algorithm_class, hyperparameters = ALGORITHMS[algo]
    ray = None
    if settings.get("backend") == "ray":
        import ray

        temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray puts unix sockets in it
        ray.init(**RAY_INIT, _temp_dir=temp_dir)
    shm_before, processes_before = set(os.listdir("/dev/shm")), set(descendants(os.getpid()))
    with tempfile.TemporaryDirectory() as folder:
        counter = new_step_counter(folder)
        try:

            def new_model() -> Any:
                return algorithm_class(
                    "MlpPolicy", functools.partial(counted_cartpole, counter), n_workers=2, envs_per_worker=4,
                    seed=seed, device="cpu", max_worker_restarts=1_000_000, **hyperparameters, **settings,
                )  # fmt: skip

            if timesteps is None:  # learn() in chunks of about a minute (calibrated on a model of its own) for `seconds`
                calibration = new_model().learn(5_000)
                started = time.perf_counter()
                calibration.learn(20_000, reset_num_timesteps=False)
                chunk = int(20_000 / (time.perf_counter() - started) * min(seconds, 60.0))
            model = new_model()
            steps_before = steps_counted(counter)
            killer, episodes = KillWorkers(every, seed), SoakEpisodes()
            with ProcessTreeMonitor(interval=1.0) as memory:
                started, learns = time.perf_counter(), 0
                try:
                    while learns == 0 or (timesteps is None and time.perf_counter() - started < seconds):
                        counted_before = model.num_timesteps
                        model.learn(timesteps or chunk, callback=[killer, episodes], reset_num_timesteps=learns == 0)
                        learns += 1
                finally:
                    killer.stop()
                elapsed = time.perf_counter() - started
            asked = counted_before + (timesteps or chunk)  # what the last learn() counted to, as SB3 adds it up
        finally:
            if ray is not None:
                ray.shutdown()
        taken = steps_counted(counter) - steps_before
    # The workers' forkserver and multiprocessing's resource tracker serve this process for its whole life.
    helpers = {forkserver.server_pid(), getattr(resource_tracker._resource_tracker, "_pid", None)}
    deadline = time.monotonic() + 10
    while (left := sorted(set(descendants(os.getpid())) - processes_before - helpers)) and time.monotonic() < deadline:
        time.sleep(0.1)
    minute = min(60.0, elapsed / 5)
    returns = [episode[2] for episode in episodes.episodes]
    means = np.convolve(returns, np.ones(100) / 100, mode="valid") if len(returns) >= 100 else np.array([np.nan])
    return SoakResult(
        config=config,
        seconds=elapsed,
        learns=learns,
        asked=asked,
        num_timesteps=model.num_timesteps,
        most_timesteps=most_timesteps(model, asked),
        kills=len(killer.kills),
        kills_at_an_end=killer.kills_at_an_end,
        restarts=model.worker_restarts,
        env_steps_taken=taken,
        env_steps_not_counted=taken - model.num_timesteps,
        seconds_to_threshold=first_time_solved(episodes.episodes, THRESHOLD, 100)[1],
        best_training_mean=float(np.nanmax(means)),
        final_training_mean=float(means[-1]),
        pss_first_mib=mean_pss_mib(memory.pss_samples, 0.0, minute),
        pss_last_mib=mean_pss_mib(memory.pss_samples, elapsed - minute, elapsed),
        processes_left=left,
        shm_left=sorted(set(os.listdir("/dev/shm")) - shm_before),
    )


def network_is_loopback_only() -> bool:
    with open("/proc/self/net/dev") as interfaces:
        return [line.split(":")[0].strip() for line in interfaces.readlines()[2:]] == ["lo"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="length of each soak")
    parser.add_argument("--every", type=float, nargs=2, default=(2.0, 10.0), help="seconds between kills: a uniform draw")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    results, failed = [], False
    for config in args.configs:
        if CONFIGS[config][1].get("backend") == "ray" and not network_is_loopback_only():
            print(f"{config}: skipped (Ray runs only under tools/loopback-only)", flush=True)
            continue
        try:
            result = soak(config, args.minutes * 60, tuple(args.every), args.seed)
        except Exception as error:  # one configuration's failure is a finding, not the end of the soak
            print(f"{config}: FAILED: {type(error).__name__}: {error}", flush=True)
            failed = True
            continue
        results.append(result)
        verdict = "; ".join(result.problems) or "nothing lost or left"
        print(
            f"{config}: {result.seconds:.0f} s in {result.learns} learn() calls, {result.kills} kills, "
            f"{result.restarts} restarts, "
            f"{result.num_timesteps:,} of {result.asked:,} steps; threshold at {result.seconds_to_threshold:.0f} s "
            f"(best mean {result.best_training_mean:.0f}, final {result.final_training_mean:.0f}); "
            f"{result.env_steps_not_counted:,} env steps not counted "
            f"({result.env_steps_not_counted / max(result.kills, 1):.0f} per kill); "
            f"PSS {result.pss_first_mib:.0f} -> {result.pss_last_mib:.0f} MiB ({result.pss_growth:+.1%}); "
            f"{verdict}",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as file:
            json.dump([asdict(result) for result in results], file, indent=1)
    if failed or any(result.problems for result in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
