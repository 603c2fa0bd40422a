"""
Where one A3C worker's time goes, with no learner and no processes: the worker's segment loop
in this process, against the bare torch loop, then a cProfile of it.

    python benchmarks/worker_profile.py --envs 8 --rounds 3

Same work per gradient in both: ``envs`` CartPole envs x n_steps 5, a 64x64 MLP, a backward pass
(the bare loop also takes its RMSprop step; the worker's is the learner's). The ratio is the
ceiling for "A3C 1 worker / bare loop" in throughput.py: what is left once nothing waits on the learner.
"""

import argparse
import cProfile
import pickle
import pstats
import statistics
import time

import torch as th

from bare_a2c_loop import bare_a2c_steps_per_second
from sb3_async import A3C
from sb3_async.common.collectors import GradientReport, flat_parameters_view, write_flat_gradient

N_STEPS = 5


def worker_step_function(n_envs: int, seed: int):
    """One gradient of a real A3C worker, as the collector runs it: segment, backward, gradient, report pickle."""
    model = A3C("MlpPolicy", "CartPole-v1", n_workers=1, envs_per_worker=n_envs, n_steps=N_STEPS, seed=seed, device="cpu")
    spec = model._worker_spec()
    env = spec.env_factory.build(0, spec.normalization)
    policy = spec.build_policy()
    policy.load_state_dict(model.policy.state_dict())  # a worker acts with the learner's parameters
    params = list(policy.parameters())
    flat_gradient = th.zeros_like(flat_parameters_view(params))
    logic = spec.logic_class(env, policy, 0, **spec.logic_kwargs)

    def one_gradient() -> None:
        loss, segment = logic.compute_loss()
        policy.zero_grad(set_to_none=True)
        loss.backward()
        write_flat_gradient(params, out=flat_gradient)
        pickle.dumps(GradientReport(0, 0, segment))

    return one_gradient


def steps_per_second(one_gradient, n_envs: int, seconds: float) -> float:
    for _ in range(20):
        one_gradient()
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        one_gradient()
        count += 1
    return count * N_STEPS * n_envs / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--profile-gradients", type=int, default=300)
    args = parser.parse_args()
    th.set_num_threads(1)  # as in a worker
    th.distributions.Distribution.set_default_validate_args(False)  # as in a worker

    bare, worker = [], []
    for seed in range(args.rounds):
        bare.append(bare_a2c_steps_per_second(n_envs=args.envs, n_steps=N_STEPS, seconds=args.seconds, seed=seed))
        worker.append(steps_per_second(worker_step_function(args.envs, seed), args.envs, args.seconds))
    bare_median, worker_median = statistics.median(bare), statistics.median(worker)
    print(f"{args.envs} envs, medians over {args.rounds} rounds of {args.seconds:.0f} s:")
    print(f"  bare torch loop            {bare_median:>8,.0f} env steps/s")
    print(f"  A3C worker, in-process     {worker_median:>8,.0f} env steps/s   ({worker_median / bare_median:.2f}x bare loop)")

    one_gradient = worker_step_function(args.envs, 0)
    profile = cProfile.Profile()
    profile.runcall(lambda: [one_gradient() for _ in range(args.profile_gradients)])
    print(f"\ncProfile of {args.profile_gradients} gradients (cumulative time; the profiler inflates Python-heavy parts):")
    pstats.Stats(profile).sort_stats("cumulative").print_stats(30)


if __name__ == "__main__":
    main()
