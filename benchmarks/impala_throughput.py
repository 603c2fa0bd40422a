"""
IMPALA against A3C: env steps per second, and per CPU-second of the learner and its workers (their
user + system time from /proc/PID/stat), with each algorithm's zoo entry. Both are measured inside one
``learn()``, after its first ``--warmup`` steps, so that starting the workers is not counted.
Contestants interleave over rounds so that drift hits both alike; medians over rounds.

    python benchmarks/impala_throughput.py --rounds 3
    python benchmarks/impala_throughput.py --rounds 3 --envs CartPole-v1 MinAtar/Breakout-v1
    python benchmarks/impala_throughput.py --rounds 3 --envs MinAtar/Breakout-v1 \
        --algos a3c impala impala:envs_per_worker=32,batch_size=32

A contestant is an algorithm's zoo entry, or ``ALGO:KEY=VALUE,...`` with constructor arguments over it (as the
comparison tool's variants, but with ``envs_per_worker`` in place of ``n_envs``).
The target (issue 30): IMPALA >= 1.5x A3C's env steps per CPU-second.
"""

import argparse
import os
import statistics
import time

from stable_baselines3.common.callbacks import BaseCallback

from sb3_async import A3C, IMPALA
from sb3_async.compare.harness import parse_variant
from sb3_async.zoo.experiment import config_entry, config_kwargs
from sb3_async.zoo.minatar import register_minatar_envs

ALGORITHMS = {"a3c": A3C, "impala": IMPALA}
TIMESTEPS = {"CartPole-v1": 100_000, "MinAtar/Breakout-v1": 40_000}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (fields 14 and 15 of /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter(BaseCallback):
    """Wall time and the CPU time of the learner and its workers between the ``warmup``-th env step and the last."""

    def __init__(self, warmup: int) -> None:
        super().__init__()
        self.warmup = warmup
        self.start: tuple[float, dict[int, float], int] | None = None
        self.end: tuple[float, dict[int, float], int] | None = None

    def _on_training_start(self) -> None:
        self.collector = self.locals["collector"]

    def _sample(self) -> tuple[float, dict[int, float], int]:
        pids = [os.getpid(), *self.collector.worker_pids]
        return time.perf_counter(), {pid: cpu_seconds(pid) for pid in pids}, self.num_timesteps

    def _on_step(self) -> bool:
        if self.start is None:
            if self.num_timesteps >= self.warmup:
                self.start = self._sample()
        else:
            self.end = self._sample()
        return True

    def rates(self) -> tuple[float, float]:
        assert self.start is not None and self.end is not None
        (wall_0, cpu_0, steps_0), (wall_1, cpu_1, steps_1) = self.start, self.end
        cpu = sum(cpu_1[pid] - cpu_0.get(pid, 0.0) for pid in cpu_1)  # a replaced worker would start from 0
        return (steps_1 - steps_0) / (wall_1 - wall_0), (steps_1 - steps_0) / cpu


def measure(contestant: str, env_id: str, timesteps: int, warmup: int, seed: int) -> tuple[float, float]:
    """(env steps per second, env steps per CPU-second) of one run after its start-up."""
    algo, overrides, _ = parse_variant(contestant)
    kwargs = {**config_kwargs(algo, env_id), **overrides}
    policy = config_entry(algo, env_id)["policy"]
    model = ALGORITHMS[algo](policy, env_id, seed=seed, device="cpu", **kwargs)
    meter = CpuMeter(warmup)
    model.learn(warmup + timesteps, callback=meter)
    return meter.rates()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--envs", nargs="+", default=["CartPole-v1", "MinAtar/Breakout-v1"])
    parser.add_argument("--warmup", type=int, default=5_000, help="env steps of each run not measured")
    parser.add_argument("--algos", nargs="+", default=["a3c", "impala"], help="contestants; the first is the baseline")
    args = parser.parse_args()
    unknown = [algo for algo in args.algos if parse_variant(algo)[0] not in ALGORITHMS]
    if unknown:
        parser.error(f"unknown contestants {unknown}: each is one of {sorted(ALGORITHMS)}, with or without :KEY=VALUE,...")
    register_minatar_envs()

    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for round_index in range(args.rounds):
        for env_id in args.envs:
            for algo in args.algos:
                timesteps = TIMESTEPS.get(env_id, 50_000)
                per_second, per_core = measure(algo, env_id, timesteps, args.warmup, seed=round_index)
                results.setdefault((env_id, algo), []).append((per_second, per_core))
                print(f"round {round_index}: {env_id} {algo}: {per_second:,.0f} steps/s, {per_core:,.0f} per CPU-second")

    print(f"\nmedians over {args.rounds} rounds:")
    baseline = args.algos[0]
    for env_id in args.envs:
        medians = {}
        for algo in args.algos:
            runs = results[(env_id, algo)]
            medians[algo] = (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))
            print(f"  {env_id:<22} {algo:<7} {medians[algo][0]:>8,.0f} steps/s  {medians[algo][1]:>8,.0f} per CPU-second")
        for algo in args.algos[1:]:
            ratio = medians[algo][1] / medians[baseline][1]
            print(f"  {env_id}: {algo} / {baseline} per CPU-second {ratio:.2f}x (target for IMPALA / A3C: >= 1.5)")


if __name__ == "__main__":
    main()
