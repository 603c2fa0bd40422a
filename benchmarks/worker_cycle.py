"""
A worker's whole cycle in this process, on one core: microseconds per gradient of
``WorkerCore.run_segment`` (env steps, actor passes, the segment's loss and backward), A3C on
CartPole-v1 with ``n_steps`` 5. To compare two versions of the code, run it on each in turn:

    python benchmarks/worker_cycle.py --envs 1 8 --seconds 3
    cd ../old-checkout && PYTHONPATH=. python benchmarks/worker_cycle.py --envs 1 8 --seconds 3

(``gradient_timeline.py`` splits the same cycle into its parts, and adds the collector around it.)
"""

import argparse
import time

import torch as th

from sb3_async import A3C
from sb3_async.common.collectors.base import WorkerCore, prepare_worker_process


def microseconds_per_gradient(n_envs: int, seconds: float) -> float:
    model = A3C("MlpPolicy", "CartPole-v1", n_workers=1, envs_per_worker=n_envs, n_steps=5, seed=0, device="cpu")
    params = th.nn.utils.parameters_to_vector(model.policy.parameters()).detach()
    core = WorkerCore(0, model._worker_spec(), params.numel())
    try:
        core.load_parameters(params, th.zeros(0, dtype=th.float64))  # the learner's, as a worker's first segment
        for _ in range(200):  # warm-up: resets, allocations
            core.run_segment()
        n_gradients, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            core.run_segment()
            n_gradients += 1
        return (time.perf_counter() - started) / n_gradients * 1e6
    finally:
        core.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    prepare_worker_process()  # one torch thread, as in a worker
    print("  ".join(f"{n_envs} env(s): {microseconds_per_gradient(n_envs, args.seconds):,.0f} us" for n_envs in args.envs))


if __name__ == "__main__":
    main()
