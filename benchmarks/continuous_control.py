"""
Continuous control: OffPolicyAC against A3C, SB3's A2C and, as the off-policy reference, SB3's SAC,
at the same budget of env steps. Each run is evaluated every ``--every`` steps (the deterministic
policy, 10 new episodes) and stops at the first evaluation that reaches the threshold; the table
gives env steps and wall-clock (evaluations excluded) to get there, and the best evaluation.
Seeds are paired and the order of the algorithms rotates from seed to seed; medians.

Settings: OffPolicyAC its zoo entry (zoo_configs/offpac.yml); A3C and A2C rl-zoo's A2C entry
(VecNormalize, gSDE, 8 envs; A3C as 2 workers x 4 envs); SAC rl-zoo's entry (learning rate 1e-3).

    python benchmarks/continuous_control.py --seeds 5          # Pendulum-v1, threshold -250, 200k steps
"""

import argparse
import statistics
import time

from stable_baselines3.common.callbacks import BaseCallback

ALGOS = ("OffPolicyAC", "A3C", "SB3 A2C", "SB3 SAC")
A2C_ZOO_PENDULUM = dict(
    n_steps=8,
    gamma=0.9,
    gae_lambda=0.9,
    vf_coef=0.4,
    use_sde=True,
    policy_kwargs=dict(log_std_init=-2, ortho_init=False),
)


class StopAtScore(BaseCallback):
    """Evaluates every ``every`` steps; stops at ``threshold``. Keeps the training time spent until then."""

    def __init__(self, env_id: str, threshold: float, every: int, normalize: bool) -> None:
        super().__init__()
        self.env_id, self.threshold, self.every, self.normalize = env_id, threshold, every, normalize
        self.next_evaluation = every
        self.evaluation_seconds = 0.0
        self.best = -float("inf")
        self.solved_at: tuple[int, float] | None = None
        self.start = time.perf_counter()

    def _on_step(self) -> bool:
        from stable_baselines3.common.env_util import make_vec_env
        from stable_baselines3.common.evaluation import evaluate_policy
        from stable_baselines3.common.vec_env import VecNormalize, sync_envs_normalization

        if self.num_timesteps < self.next_evaluation:
            return True
        self.next_evaluation += self.every
        started = time.perf_counter()
        eval_env = make_vec_env(self.env_id, n_envs=1, seed=1000 + self.num_timesteps)
        if self.normalize:
            eval_env = VecNormalize(eval_env, training=False, norm_reward=False)
            sync_envs_normalization(self.training_env, eval_env)
        score, _ = evaluate_policy(self.model, eval_env, n_eval_episodes=10)
        self.evaluation_seconds += time.perf_counter() - started
        self.best = max(self.best, float(score))
        if score >= self.threshold:
            self.solved_at = (self.num_timesteps, time.perf_counter() - self.start - self.evaluation_seconds)
            return False
        return True


def make_model(algo: str, env_id: str, seed: int):
    import torch as th
    from stable_baselines3 import A2C, SAC
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    from sb3_async import A3C, OffPolicyAC

    if algo == "SB3 SAC":
        th.set_num_threads(1)
        return SAC("MlpPolicy", make_vec_env(env_id, n_envs=1, seed=seed), learning_rate=1e-3, seed=seed, device="cpu")
    if algo == "SB3 A2C":
        th.set_num_threads(1)
        env = VecNormalize(make_vec_env(env_id, n_envs=8, seed=seed), gamma=0.9)
        return A2C("MlpPolicy", env, seed=seed, device="cpu", **A2C_ZOO_PENDULUM)
    env = VecNormalize(make_vec_env(env_id, n_envs=1, seed=seed), gamma=0.9)
    if algo == "A3C":
        return A3C("MlpPolicy", env, n_workers=2, envs_per_worker=4, seed=seed, device="cpu", **A2C_ZOO_PENDULUM)
    from sb3_async.zoo.experiment import config_kwargs

    return OffPolicyAC("MlpPolicy", env, seed=seed, device="cpu", **config_kwargs("offpac", env_id))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="Pendulum-v1", choices=["Pendulum-v1"])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--budget", type=int, default=200_000)
    parser.add_argument("--threshold", type=float, default=-250.0)
    parser.add_argument("--every", type=int, default=10_000)
    parser.add_argument("--algos", nargs="+", default=list(ALGOS), choices=list(ALGOS))
    args = parser.parse_args()

    print(f"{args.env}: steps and seconds to a deterministic 10-episode mean of {args.threshold:g}", flush=True)
    results: dict[str, list[tuple[tuple[int, float] | None, float]]] = {algo: [] for algo in args.algos}
    for seed in range(args.seeds):
        algos = list(args.algos)
        order = algos[seed % len(algos) :] + algos[: seed % len(algos)]
        for algo in order:
            callback = StopAtScore(args.env, args.threshold, args.every, normalize=algo != "SB3 SAC")
            make_model(algo, args.env, seed).learn(args.budget, callback=callback)
            results[algo].append((callback.solved_at, callback.best))
            solved = callback.solved_at
            shown = f"{solved[0]:,} steps, {solved[1]:.0f} s" if solved else f"not within {args.budget:,} steps"
            print(f"  seed {seed}: {algo}: {shown} (best evaluation {callback.best:.0f})", flush=True)
    print(f"medians over {args.seeds} seeds (an unsolved run counts as the budget / infinite time):")
    for algo, runs in results.items():
        steps = statistics.median(solved[0] if solved else args.budget for solved, _ in runs)
        seconds = statistics.median(solved[1] if solved else float("inf") for solved, _ in runs)
        n_solved = sum(solved is not None for solved, _ in runs)
        best = statistics.median(best for _, best in runs)
        print(
            f"  {algo:<12} {steps:>9,.0f} steps {seconds:>7.0f} s  solved {n_solved}/{len(runs)}  best {best:.0f}", flush=True
        )


if __name__ == "__main__":
    main()
