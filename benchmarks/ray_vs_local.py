"""
The Ray backend against the local one on this machine: start-up, throughput and memory of A3C on
CartPole-v1 with 2 workers x 8 envs and 2 workers x 1 env, interleaved over rounds (medians).
Ray is started once, by this script, as a user would; its start is timed on its own.

    tools/loopback-only python benchmarks/ray_vs_local.py --rounds 3     (or: make bench-ray)

(Ray opens ports and probes the network: run it where only loopback can be reached.)

- start-up: from ``learn()`` to the first update, workers built and their first segment done (a first
  ``learn()``'s: the actors Ray keeps from one ``learn()`` for the next are stopped before each run);
- env steps/s: over the steps after the first 20% of a ``learn()``;
- PSS: summed over the learner and its workers (``/proc/PID/smaps_rollup``), and, for Ray, over its
  own processes (GCS, raylet, idle worker pool) as well.

Target (issue 14): Ray >= 0.7x the local backend's env steps/s at 2 x 8.
"""

import argparse
import os
import statistics
import tempfile
import time

from stable_baselines3.common.callbacks import BaseCallback

from sb3_async import A3C

LAYOUTS = [(2, 8), (2, 1)]
# wait_for_own_update: True, the paper's (a worker's next segment includes its own last update), and False.
MODES = [True, False]
BACKENDS = ["local", "ray"]


class Timing(BaseCallback):
    """When training started, when the first update came, when 20% of the steps were done; PSS in the middle."""

    def __init__(self, total_timesteps: int):
        super().__init__()
        self.total_timesteps = total_timesteps
        self.first_update_at = self.warm_at = 0.0
        self.warm_steps = 0
        self.worker_pss = 0

    def _on_training_start(self) -> None:
        self.collector = self.locals["collector"]
        self.started_at = time.perf_counter()

    def _on_step(self) -> bool:
        if not self.first_update_at:
            self.first_update_at = time.perf_counter()
        if not self.warm_at and self.num_timesteps >= self.total_timesteps // 5:
            self.warm_at, self.warm_steps = time.perf_counter(), self.num_timesteps
        if not self.worker_pss and self.num_timesteps >= self.total_timesteps // 2:
            from sb3_async.compare.measure import _pss_bytes

            self.worker_pss = sum(_pss_bytes(pid) for pid in [os.getpid(), *self.collector.worker_pids])
        return True


def run(backend: str, wait: bool, n_workers: int, envs_per_worker: int, timesteps: int, seed: int) -> dict[str, float]:
    if backend == "ray":
        # The last run's actors wait for a later learn(): stopped, so that this run starts (and is measured) with
        # actors of its own, as a first learn() does. benchmarks/startup.py measures later learn() calls.
        from sb3_async.common.collectors.ray_backend import stop_idle_ray_workers

        stop_idle_ray_workers()
    model = A3C(
        "MlpPolicy", "CartPole-v1", n_workers=n_workers, envs_per_worker=envs_per_worker, seed=seed, device="cpu",
        backend=backend, wait_for_own_update=wait,
    )  # fmt: skip
    from sb3_async.compare.measure import ProcessTreeMonitor

    timing = Timing(timesteps)
    with ProcessTreeMonitor() as tree:
        model.learn(timesteps, callback=timing)
        ended = time.perf_counter()
    return {
        "startup_s": timing.first_update_at - timing.started_at,
        "steps_per_s": (model.num_timesteps - timing.warm_steps) / (ended - timing.warm_at),
        "pss_mb": timing.worker_pss / 2**20,
        "tree_pss_mb": tree.peak_pss_bytes / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timesteps", type=int, default=40_000, help="per learn() at 2 x 8; a quarter of it at 2 x 1")
    args = parser.parse_args()
    # Imported here, not at the top (nor sb3_async.compare, which imports rl-zoo3): a local worker
    # imports the main script as it starts, and these would add seconds to every local start-up.
    import ray

    started = time.perf_counter()
    ray.init(include_dashboard=False, num_cpus=2, object_store_memory=200 * 2**20, _temp_dir=tempfile.mkdtemp(prefix="ray"))
    ray_init_s = time.perf_counter() - started
    results: dict[tuple, list[dict[str, float]]] = {}
    try:
        for seed in range(args.rounds):
            for n_workers, envs_per_worker in LAYOUTS:
                timesteps = args.timesteps if envs_per_worker > 1 else args.timesteps // 4
                for wait in MODES:
                    for backend in BACKENDS:
                        result = run(backend, wait, n_workers, envs_per_worker, timesteps, seed)
                        results.setdefault((n_workers, envs_per_worker, wait, backend), []).append(result)
                        print(
                            f"round {seed}: {n_workers} x {envs_per_worker}, wait={wait}, {backend}: "
                            f"start-up {result['startup_s']:.2f} s, {result['steps_per_s']:,.0f} steps/s, "
                            f"PSS {result['pss_mb']:.0f} MB (whole tree {result['tree_pss_mb']:.0f} MB)",
                            flush=True,
                        )
    finally:
        ray.shutdown()

    print(
        f"\nA3C on CartPole-v1, medians over {args.rounds} rounds; ray.init took {ray_init_s:.1f} s (once, not counted below)"
    )
    print("| workers x envs | wait_for_own_update | backend | start-up | env steps/s | Ray / local | PSS learner + workers |")
    print("|---|---|---|---:|---:|---:|---:|")
    for n_workers, envs_per_worker in LAYOUTS:
        for wait in MODES:
            median = {
                backend: {key: statistics.median(run[key] for run in results[(n_workers, envs_per_worker, wait, backend)])
                          for key in ("startup_s", "steps_per_s", "pss_mb", "tree_pss_mb")}
                for backend in BACKENDS
            }  # fmt: skip
            for backend in BACKENDS:
                row, ratio = median[backend], median[backend]["steps_per_s"] / median["local"]["steps_per_s"]
                print(
                    f"| {n_workers} x {envs_per_worker} | {wait} | {backend} | {row['startup_s']:.2f} s "
                    f"| {row['steps_per_s']:,.0f} | {ratio:.2f} | {row['pss_mb']:.0f} MB |"
                )
    print("target: Ray >= 0.7x local at 2 x 8")


if __name__ == "__main__":
    main()
