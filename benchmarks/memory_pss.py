"""
Memory of a training run, summed over the learner and all its worker processes, as PSS (each page
counted once) and as RSS (shared pages counted once per process), against SB3's A2C:

    python benchmarks/memory_pss.py --timesteps 30000

Each contestant runs in a fresh process (so no contestant's memory stays in another's numbers).
"""

import argparse
import json
import subprocess
import sys

RUN = """
import json, sys
from stable_baselines3 import A2C
from stable_baselines3.common.env_util import make_vec_env
from sb3_async import A3C
from sb3_async.compare.measure import ProcessTreeMonitor

if __name__ == "__main__":
    algo, n_workers, timesteps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    with ProcessTreeMonitor() as monitor:
        if algo == "a2c":
            A2C("MlpPolicy", make_vec_env("CartPole-v1", n_envs=8), device="cpu").learn(timesteps)
        else:
            per_worker = 8 // n_workers or 1
            A3C("MlpPolicy", "CartPole-v1", n_workers=n_workers, envs_per_worker=per_worker, device="cpu").learn(timesteps)
    print(json.dumps(dict(pss=monitor.peak_pss_bytes / 2**20, rss=monitor.peak_rss_bytes / 2**20)))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timesteps", type=int, default=30_000)
    args = parser.parse_args()
    print("| run | peak summed PSS, MB | peak summed RSS, MB |\n|---|---:|---:|")
    for label, algo, n_workers in [("SB3 A2C, 8 envs", "a2c", 0), ("A3C, 2 workers", "a3c", 2), ("A3C, 8 workers", "a3c", 8)]:
        command = [sys.executable, "-c", RUN, algo, str(n_workers), str(args.timesteps)]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        result = json.loads(output.strip().splitlines()[-1])
        print(f"| {label} | {result['pss']:,.0f} | {result['rss']:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
