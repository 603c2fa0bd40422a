"""
How long ``learn()`` takes to reach its first env step: the first ``learn()`` of a fresh process, and
later ones on the same model, on each backend. A3C on CartPole-v1, 2 workers; each round runs every
backend in a fresh process of its own (taking turns), and the table shows medians over the rounds.

    tools/loopback-only python benchmarks/startup.py --rounds 3

(Ray opens ports and probes the network: run it where only loopback can be reached.) Ray is started
by the process, as a user would, and its ``ray.init`` is timed on its own: a ``learn()`` that starts
Ray itself pays that too, every time, since it shuts Ray down at its end.

Targets (issue 26): the first ``learn()`` within 1.5 s locally; a later one within 0.05 s locally and
0.5 s on Ray (Ray keeps the actors of a ``learn()`` for the next one; the local backend starts its
workers anew, from its preloaded forkserver).
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time

BACKENDS = ["local", "ray"]
LEARN_CALLS = 4


def one_process(backend: str, seed: int) -> dict[str, float | list[float]]:
    """In this process: build a model, then ``learn(20)`` LEARN_CALLS times; seconds to each first env step."""
    from stable_baselines3.common.callbacks import BaseCallback

    from sb3_async import A3C

    class FirstStep(BaseCallback):
        def __init__(self, called_at: float):
            super().__init__()
            self.called_at, self.seconds = called_at, 0.0

        def _on_step(self) -> bool:
            if not self.seconds:
                self.seconds = time.perf_counter() - self.called_at
            return True

    ray_init_s = 0.0
    if backend == "ray":
        import ray

        started = time.perf_counter()
        temp_dir = tempfile.mkdtemp(prefix="ray")  # short: Ray puts unix sockets in it
        ray.init(include_dashboard=False, num_cpus=2, object_store_memory=100 * 2**20, _temp_dir=temp_dir)
        ray_init_s = time.perf_counter() - started
    started = time.perf_counter()
    model = A3C("MlpPolicy", "CartPole-v1", n_workers=2, seed=seed, device="cpu", backend=backend)
    construct_s = time.perf_counter() - started
    first_steps = []
    for _ in range(LEARN_CALLS):
        first_step = FirstStep(time.perf_counter())
        model.learn(20, callback=first_step)
        first_steps.append(first_step.seconds)
    return {"ray_init_s": ray_init_s, "construct_s": construct_s, "first_steps": first_steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--one", choices=BACKENDS, help=argparse.SUPPRESS)  # a child: one process's measurement
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_process(args.one, args.seed)))
        return
    results: dict[str, list[dict]] = {backend: [] for backend in BACKENDS}
    for seed in range(args.rounds):
        for backend in BACKENDS:
            child = subprocess.run(
                [sys.executable, __file__, "--one", backend, "--seed", str(seed)], capture_output=True, text=True, check=True
            )
            result = json.loads(child.stdout.strip().splitlines()[-1])
            results[backend].append(result)
            steps = ", ".join(f"{seconds:.2f}" for seconds in result["first_steps"])
            print(f"round {seed}, {backend}: model built in {result['construct_s']:.2f} s; first env step after {steps} s")

    print(f"\nA3C, CartPole-v1, 2 workers; seconds from learn(20) to its first env step, medians over {args.rounds} rounds")
    print("| backend | ray.init | first learn() | later learn() (median of the 2nd-4th) | slowest later learn() |")
    print("|---|---:|---:|---:|---:|")
    for backend in BACKENDS:
        runs = results[backend]
        later = [seconds for run in runs for seconds in run["first_steps"][1:]]
        init = f"{statistics.median(run['ray_init_s'] for run in runs):.2f} s" if backend == "ray" else "-"
        print(
            f"| {backend} | {init} | {statistics.median(run['first_steps'][0] for run in runs):.2f} s "
            f"| {statistics.median(later):.3f} s | {max(later):.3f} s |"
        )
    print("targets: first learn() <= 1.5 s locally; a later one <= 0.05 s locally and <= 0.5 s on Ray")


if __name__ == "__main__":
    main()
