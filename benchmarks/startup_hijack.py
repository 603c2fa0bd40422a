"""
Does A3C's throughput depend on what started the process's forkserver? Each run is a fresh Python
process; rounds interleave the two states so that drift hits both; medians are reported.

    python benchmarks/startup_hijack.py --rounds 3 --timesteps 60000

States: "fresh" (A3C starts the forkserver) and "SubprocVecEnv first" (SB3's SubprocVecEnv was
created and closed before A3C, so it started the forkserver). A3C 8 workers x 1 env on CartPole-v1.
Also printed: the threads of each worker process during training (/proc/PID/task).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

RUN = """
import json, os, sys, time
from stable_baselines3.common.callbacks import BaseCallback
from sb3_async import A3C

class Threads(BaseCallback):
    def __init__(self):
        super().__init__()
        self.threads = []
    def _on_step(self):
        if not self.threads and self.num_timesteps > 1000:
            self.threads = [len(os.listdir(f"/proc/{pid}/task")) for pid in self.locals["collector"].worker_pids]
        return True

if __name__ == "__main__":
    subproc_first, timesteps, seed = sys.argv[1] == "True", int(sys.argv[2]), int(sys.argv[3])
    if subproc_first:
        from stable_baselines3.common.env_util import make_vec_env
        from stable_baselines3.common.vec_env import SubprocVecEnv
        make_vec_env("CartPole-v1", n_envs=2, vec_env_cls=SubprocVecEnv).close()
    model = A3C("MlpPolicy", "CartPole-v1", n_workers=8, envs_per_worker=1, seed=seed, device="cpu")
    started = time.perf_counter()
    model.learn(2_000)
    start_up = time.perf_counter() - started
    threads = Threads()
    started = time.perf_counter()
    model.learn(timesteps, callback=threads, reset_num_timesteps=False)
    steps_per_s = timesteps / (time.perf_counter() - started)
    print(json.dumps(dict(steps_per_s=steps_per_s, threads=threads.threads, start_up=start_up)))
"""


def run(subproc_first: bool, timesteps: int, seed: int) -> dict:
    command = [sys.executable, "-c", RUN, str(subproc_first), str(timesteps), str(seed)]
    output = subprocess.run(command, capture_output=True, text=True, check=True, cwd=os.getcwd())
    return json.loads(output.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timesteps", type=int, default=60_000)
    args = parser.parse_args()
    states = {"fresh process": False, "SubprocVecEnv first": True}
    results: dict[str, list[dict]] = {name: [] for name in states}
    for round_index in range(args.rounds):
        for name, subproc_first in states.items():
            result = run(subproc_first, args.timesteps, seed=round_index)
            results[name].append(result)
            print(
                f"round {round_index}: {name}: {result['steps_per_s']:,.0f} steps/s, "
                f"start-up {result['start_up']:.2f} s, worker threads {result['threads']}",
                flush=True,
            )
    print(f"\nmedians over {args.rounds} rounds, A3C 8 workers x 1 env, CartPole-v1:")
    fresh = statistics.median(r["steps_per_s"] for r in results["fresh process"])
    for name, runs in results.items():
        median = statistics.median(r["steps_per_s"] for r in runs)
        start_up = statistics.median(r["start_up"] for r in runs)
        print(f"  {name:<22} {median:>8,.0f} steps/s ({median / fresh:.2f}x fresh), start-up {start_up:.2f} s")


if __name__ == "__main__":
    main()
