"""
What it costs a worker to hand its env steps to the learner's callbacks (``self.locals``: new_obs,
rewards, dones, infos, actions, ...), measured in this one process, interleaved over rounds:

    python benchmarks/step_log_cost.py --rounds 5

For each setting, one A3C worker's whole cycle, as in ``collector._worker_main``: ``compute_loss()``
(n_steps 5 in its envs, the A3C loss), ``backward()``, and the report pickled and unpickled as the
pipe does. Once as shipped, once with the worker's StepLog switched off (no steps reported). The
ratio is the worker throughput kept with callbacks' locals. Both run in alternating blocks of 20
cycles, so that the machine's drift hits both alike.
"""

import argparse
import pickle
import statistics
import time

import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import FakeImageEnv
from stable_baselines3.common.policies import ActorCriticCnnPolicy, ActorCriticPolicy

from sb3_async.a3c.worker import A3CWorker
from sb3_async.common.collectors import GradientReport

SETTINGS = {
    "CartPole-v1, 1 env": (lambda: make_vec_env("CartPole-v1", n_envs=1, seed=0), ActorCriticPolicy),
    "CartPole-v1, 8 envs": (lambda: make_vec_env("CartPole-v1", n_envs=8, seed=0), ActorCriticPolicy),
    "84x84x4 images, 1 env (NatureCNN)": (
        lambda: make_vec_env(lambda: FakeImageEnv(screen_height=84, screen_width=84, n_channels=4), n_envs=1, seed=0),
        ActorCriticCnnPolicy,
    ),
}


class _NoStepLog:
    def add(self, **step) -> None:
        pass

    def pop(self) -> dict:
        return {}


def make_worker(make_env, policy_class, log_steps: bool) -> A3CWorker:
    env = BaseAlgorithm._wrap_env(make_env())  # VecTransposeImage for the images, as a worker's envs get
    policy = policy_class(env.observation_space, env.action_space, lambda _: 0.0)
    worker = A3CWorker(
        env, policy, 0, n_steps=5, gamma=0.99, gae_lambda=1.0, ent_coef=0.0, vf_coef=0.5, normalize_advantage=False,
        use_sde=False, sde_sample_freq=-1, rollout_buffer_class=None, rollout_buffer_kwargs={},
    )  # fmt: skip
    if not log_steps:
        worker.step_log = _NoStepLog()  # type: ignore[assignment]
    return worker


def one_cycle(worker: A3CWorker) -> None:
    loss, segment = worker.compute_loss()
    worker.policy.zero_grad(set_to_none=True)
    loss.backward()
    pickle.loads(pickle.dumps(GradientReport(0, 0, segment), protocol=pickle.HIGHEST_PROTOCOL))


def cycles_per_second(make_env, policy_class, seconds: float, block: int = 20) -> tuple[float, float]:
    """Cycles per second with and without the step log, alternating blocks of ``block`` cycles so that drift hits both."""
    workers = {True: make_worker(make_env, policy_class, True), False: make_worker(make_env, policy_class, False)}
    elapsed = {True: 0.0, False: 0.0}
    cycles = 0
    while sum(elapsed.values()) < seconds:
        for log_steps, worker in workers.items():
            started = time.perf_counter()
            for _ in range(block):
                one_cycle(worker)
            elapsed[log_steps] += time.perf_counter() - started
        cycles += block
    for worker in workers.values():
        worker.env.close()
    return cycles / elapsed[True], cycles / elapsed[False]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=6.0, help="per setting per round, both contestants")
    args = parser.parse_args()
    th.set_num_threads(1)  # as in a worker
    th.distributions.Distribution.set_default_validate_args(False)
    ratios: dict[str, list[float]] = {name: [] for name in SETTINGS}
    for round_index in range(args.rounds):
        for name, (make_env, policy_class) in SETTINGS.items():
            with_log, without = cycles_per_second(make_env, policy_class, args.seconds)
            ratios[name].append(with_log / without)
            print(f"round {round_index}: {name}: {with_log:,.0f} vs {without:,.0f} cycles/s without the step log", flush=True)
    print(f"\nmedian over {args.rounds} rounds, worker throughput with the step log / without:")
    for name, values in ratios.items():
        print(f"  {name:<36} {statistics.median(values):.3f}")


if __name__ == "__main__":
    main()
