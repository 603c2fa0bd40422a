"""
How many gradients per second can the learner apply, and so how many workers can it serve?

    python benchmarks/learner_capacity.py --rounds 3 --seconds 4

Workers here are synthetic: they take no env steps, and their loss is a fixed random linear
function of the parameters, so a gradient costs one cheap backward pass and the learner, not the
workers, is what limits the rate (watch `learner busy`: near 1 means saturated). Everything else is
the real thing: the collector, shared memory, pipes, the learner's apply (clip, RMSprop, publish),
callbacks and logging. Each report still counts 5 env steps, as A3C's ``n_steps=5`` with one env.

Networks: the 64x64 MLP of CartPole (A3C's default policy), the paper's Atari network (16 8x8/4,
32 4x4/2, 256 units, on 84x84x4: Mnih et al. 2016, as in Mnih et al. 2013), and SB3's NatureCNN
(the zoo's ``atari`` entry).

For each, the script also measures one real A3C worker in-process (one core, no learner): env
steps, forward passes and the backward pass. The image networks step SB3's FakeImageEnv, which
costs next to nothing, so their worker rate is an upper bound for Atari, whose emulator and
preprocessing add more. capacity / worker rate = the number of workers at which learner mode
saturates. Hogwild has no such ceiling (each worker applies its own gradient); its column shows
what the same synthetic workers reach when they apply themselves, on this machine's cores.
"""

import argparse
import os
import statistics
import time

import torch as th
from gymnasium import spaces
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.envs import FakeImageEnv
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

from sb3_async import A3C
from sb3_async.common.collectors import SegmentResult, WorkerLogic

N_STEPS = 5


class PaperAtariCNN(BaseFeaturesExtractor):
    """The A3C paper's network body: conv 16x8x8 stride 4, conv 32x4x4 stride 2, 256 units, ReLUs."""

    def __init__(self, observation_space: spaces.Box, features_dim: int = 256):
        super().__init__(observation_space, features_dim)
        n_channels = observation_space.shape[0]
        self.cnn = nn.Sequential(
            nn.Conv2d(n_channels, 16, 8, stride=4), nn.ReLU(), nn.Conv2d(16, 32, 4, stride=2), nn.ReLU(), nn.Flatten()
        )
        with th.no_grad():
            n_flat = self.cnn(th.as_tensor(observation_space.sample()[None]).float()).shape[1]
        self.linear = nn.Sequential(nn.Linear(n_flat, features_dim), nn.ReLU())

    def forward(self, observations: th.Tensor) -> th.Tensor:
        return self.linear(self.cnn(observations))


class SyntheticGradient(WorkerLogic):
    """A worker that takes no env step: its loss is a fixed random linear function of the parameters."""

    def __init__(self, env, policy, worker_id: int) -> None:
        super().__init__(env, policy, worker_id)
        self.directions = [th.randn_like(param) for param in policy.parameters()]

    def compute_loss(self):
        loss = sum(
            (param * direction).sum() for param, direction in zip(self.policy.parameters(), self.directions, strict=True)
        )
        return loss, SegmentResult(n_env_steps=N_STEPS * self.env.num_envs)


class SyntheticA3C(A3C):
    def _worker_logic(self):
        return SyntheticGradient, {}


def image_env() -> FakeImageEnv:
    return FakeImageEnv(screen_height=84, screen_width=84, n_channels=4, discrete=True, channel_first=True)


NETWORKS = {
    "64x64 MLP (CartPole-v1)": dict(policy="MlpPolicy", env="CartPole-v1", policy_kwargs={}),
    "paper's Atari net (84x84x4)": dict(
        policy="CnnPolicy", env=image_env, policy_kwargs=dict(features_extractor_class=PaperAtariCNN)
    ),
    "SB3 NatureCNN (84x84x4)": dict(policy="CnnPolicy", env=image_env, policy_kwargs={}),
}


def make(model_class, network: dict, n_workers: int, **kwargs) -> A3C:
    return model_class(
        network["policy"], network["env"], n_workers=n_workers, n_steps=N_STEPS, seed=0, device="cpu",
        policy_kwargs=network["policy_kwargs"], **kwargs,
    )  # fmt: skip


class Stopwatch(BaseCallback):
    """Times the learner from its ``warmup``-th update for ``seconds``, then stops training."""

    def __init__(self, warmup: int, seconds: float) -> None:
        super().__init__()
        self.warmup, self.seconds = warmup, seconds
        self.started: tuple[float, float, int] | None = None
        self.gradients_per_second = self.learner_busy = float("nan")

    def _on_step(self) -> bool:
        now, updates = time.perf_counter(), self.model._n_updates
        if self.started is None:
            if updates >= self.warmup:
                self.started = (now, time.process_time(), updates)
            return True
        wall_started, cpu_started, updates_started = self.started
        if now - wall_started < self.seconds:
            return True
        self.gradients_per_second = (updates - updates_started) / (now - wall_started)
        self.learner_busy = (time.process_time() - cpu_started) / (now - wall_started)
        return False


def synthetic_gradients_per_second(network: dict, n_workers: int, seconds: float, update_mode: str) -> tuple[float, float]:
    """Gradients applied per second with ``n_workers`` synthetic workers, and the learner's busy fraction."""
    model = make(SyntheticA3C, network, n_workers, update_mode=update_mode)
    stopwatch = Stopwatch(warmup=20 * n_workers, seconds=seconds)
    model.learn(10**9, callback=stopwatch)
    return stopwatch.gradients_per_second, stopwatch.learner_busy


def real_worker_gradients_per_second(network: dict, seconds: float) -> float:
    """One real A3C worker, in this process, on one core: env steps, forward passes, backward."""
    model = make(A3C, network, 1)
    spec = model._worker_spec()
    env = spec.env_factory.build(0, spec.normalization)
    policy = spec.build_policy()
    policy.load_state_dict(model.policy.state_dict())  # a worker acts with the learner's parameters
    logic = spec.logic_class(env, policy, 0, **spec.logic_kwargs)
    threads = th.get_num_threads()
    th.set_num_threads(1)
    try:
        for _ in range(10):
            logic.compute_loss()[0].backward()
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            policy.zero_grad(set_to_none=True)
            logic.compute_loss()[0].backward()
            count += 1
        return count / (time.perf_counter() - started)
    finally:
        th.set_num_threads(threads)
        env.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0, help="measuring time per contestant and round")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="synthetic worker counts, learner mode")
    parser.add_argument("--hogwild-workers", type=int, nargs="+", default=[1, 2], help="synthetic worker counts, Hogwild")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, torch {th.__version__}, {args.rounds} rounds of {args.seconds:.0f} s, medians\n")

    for name, network in NETWORKS.items():
        n_params = sum(param.numel() for param in make(A3C, network, 1).policy.parameters())
        results: dict[str, list[float]] = {}
        busy: dict[str, list[float]] = {}
        for _ in range(args.rounds):
            for mode, counts in (("learner", args.workers), ("hogwild", args.hogwild_workers)):
                for n_workers in counts:
                    rate, learner_busy = synthetic_gradients_per_second(network, n_workers, args.seconds, mode)
                    results.setdefault(f"{mode} x{n_workers}", []).append(rate)
                    busy.setdefault(f"{mode} x{n_workers}", []).append(learner_busy)
            results.setdefault("worker", []).append(real_worker_gradients_per_second(network, args.seconds))
        median = {key: statistics.median(values) for key, values in results.items()}
        busy_median = {key: statistics.median(values) for key, values in busy.items()}
        print(f"{name}: {n_params:,} parameters")
        for key in busy_median:
            cpu_us = busy_median[key] / median[key] * 1e6
            print(
                f"  synthetic, {key:<11} {median[key]:>8,.0f} gradients/s   learner busy {busy_median[key]:.2f}, "
                f"{cpu_us:>6,.0f} us of learner CPU per gradient"
            )
        # On a small machine the synthetic workers take CPU from the learner too: its capacity on a core of
        # its own is 1 / (its CPU time per gradient), taken where it was busiest.
        busiest = max((key for key in busy_median if key.startswith("learner")), key=busy_median.get)
        capacity = median[busiest] / busy_median[busiest]
        worker = median["worker"]
        print(
            f"  one real A3C worker     {worker:>8,.0f} gradients/s   "
            f"({worker * N_STEPS:,.0f} env steps/s, 1 env, n_steps {N_STEPS})"
        )
        print(
            f"  learner capacity on a core of its own: {capacity:,.0f} gradients/s, so learner mode saturates at "
            f"about {capacity / worker:.1f} such workers\n"
        )


if __name__ == "__main__":
    main()
