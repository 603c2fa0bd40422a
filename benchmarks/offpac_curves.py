"""
OffPolicyAC's learning curve under given settings: the deterministic target policy's mean return,
evaluated every ``--every`` env steps on new episodes. This is how docs/offpac.md's tables of
"score at 50k, 100k, ..." were made.

    # CartPole-v1 from uniform behaviour (20 episodes per evaluation)
    python benchmarks/offpac_curves.py --env CartPole-v1 --seeds 0 1 \\
        --kwargs '{"behavior_policy": "uniform", "learning_rate": 1e-4, "ent_coef": 0.01}'
    # ... with every training episode started anywhere in a box of states (evaluations start as usual)
    python benchmarks/offpac_curves.py --env CartPole-v1 --seeds 0 1 --exploring-starts 2.0 1.5 0.15 1.5 \\
        --kwargs '{"behavior_policy": "uniform"}'
    # Pendulum-v1 with the zoo entry's settings (VecNormalize; 10 episodes per evaluation)
    python benchmarks/offpac_curves.py --env Pendulum-v1 --budget 200000 --every 25000 --zoo
"""

import argparse
import json
import time

from stable_baselines3.common.callbacks import BaseCallback


class EvaluateEvery(BaseCallback):
    """Evaluates the deterministic policy every ``every`` steps on a fresh env; keeps (steps, score)."""

    def __init__(self, every: int, make_eval_env, n_episodes: int) -> None:
        super().__init__()
        self.every, self.make_eval_env, self.n_episodes = every, make_eval_env, n_episodes
        self.next_evaluation = every
        self.curve: list[tuple[int, float]] = []

    def _on_step(self) -> bool:
        from stable_baselines3.common.evaluation import evaluate_policy
        from stable_baselines3.common.vec_env import sync_envs_normalization

        if self.num_timesteps >= self.next_evaluation:
            self.next_evaluation += self.every
            eval_env = self.make_eval_env()
            sync_envs_normalization(self.training_env, eval_env)
            score, _ = evaluate_policy(self.model, eval_env, n_eval_episodes=self.n_episodes)
            self.curve.append((self.num_timesteps, float(score)))
        return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--budget", type=int, default=300_000)
    parser.add_argument("--every", type=int, default=50_000)
    parser.add_argument("--episodes", type=int, default=None, help="per evaluation (CartPole 20, others 10)")
    parser.add_argument("--zoo", action="store_true", help="start from the env's entry in zoo_configs/offpac.yml")
    parser.add_argument(
        "--exploring-starts",
        type=float,
        nargs="+",
        metavar="HIGH",
        help="start training episodes uniformly in [-HIGH, HIGH] of the env's state (wrappers.ExploringStarts)",
    )
    parser.add_argument("--kwargs", default="{}", help="OffPolicyAC keyword arguments as JSON (on top of --zoo)")
    args = parser.parse_args()

    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    from sb3_async import OffPolicyAC
    from sb3_async.common.wrappers import ExploringStarts
    from sb3_async.zoo.experiment import config_entry, config_kwargs

    kwargs = config_kwargs("offpac", args.env) if args.zoo else {"n_workers": 2, "envs_per_worker": 4}
    normalize = bool(config_entry("offpac", args.env).get("normalize")) if args.zoo else False
    kwargs.update(json.loads(args.kwargs))
    n_episodes = args.episodes or (20 if args.env == "CartPole-v1" else 10)
    starts = f", exploring starts in +-{args.exploring_starts}" if args.exploring_starts else ""
    print(f"{args.env}{starts}, {args.budget} steps, OffPolicyAC({kwargs}), normalize={normalize}", flush=True)

    def make_eval_env():
        env = make_vec_env(args.env, n_envs=1, seed=999)
        return VecNormalize(env, training=False, norm_reward=False) if normalize else env

    for seed in args.seeds:
        exploring = {"wrapper_class": ExploringStarts, "wrapper_kwargs": {"high": args.exploring_starts}}
        env = make_vec_env(args.env, n_envs=1, **(exploring if args.exploring_starts else {}))
        if normalize:
            env = VecNormalize(env, gamma=kwargs.get("gamma", 0.99))
        callback = EvaluateEvery(args.every, make_eval_env, n_episodes)
        start = time.perf_counter()
        OffPolicyAC("MlpPolicy", env, seed=seed, device="cpu", **kwargs).learn(args.budget, callback=callback)
        curve = ", ".join(f"{steps // 1000}k: {score:.0f}" for steps, score in callback.curve)
        print(f"seed {seed}: {curve} ({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
