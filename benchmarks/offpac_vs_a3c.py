"""
OffPolicyAC against A3C and SB3 A2C: env steps and wall-clock until the 100-episode training mean
reaches the env's threshold (CartPole-v1: 475, Acrobot-v1: -100). Seeds are paired and the order of
the algorithms rotates from seed to seed, so machine drift hits all alike; medians.

Then the score of OffPolicyAC's deterministic target policy after learning only from a behaviour
policy that is not its own: uniform random actions, and a trained A3C expert's stochastic policy.

    python benchmarks/offpac_vs_a3c.py --seeds 5
    python benchmarks/offpac_vs_a3c.py --seeds 1 --envs CartPole-v1 --budget 100000   # a quick look
"""

import argparse
import statistics

import gymnasium as gym
import numpy as np
import torch as th
from stable_baselines3 import A2C
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecNormalize
from time_to_solve import StopWhenSolved

from sb3_async import A3C, OffPolicyAC

THRESHOLDS = {"CartPole-v1": 475.0, "Acrobot-v1": -100.0}
# rl-zoo's A2C settings: CartPole-v1 with 8 envs; Acrobot-v1 with 16 envs and normalized observations.
ZOO_N_ENVS = {"CartPole-v1": 8, "Acrobot-v1": 16}
ZOO_NORMALIZE = {"CartPole-v1": False, "Acrobot-v1": True}
ALGOS = ("OffPolicyAC", "A3C", "SB3 A2C")


def make_env(env_id: str, n_envs: int, seed: int):
    env = make_vec_env(env_id, n_envs=n_envs, seed=seed)
    return VecNormalize(env, norm_reward=False) if ZOO_NORMALIZE[env_id] else env


def make_model(algo: str, env_id: str, seed: int, **kwargs):
    n_envs = ZOO_N_ENVS[env_id]
    if algo == "SB3 A2C":
        th.set_num_threads(1)  # SB3's fastest setting for a small MLP on CPU
        return A2C("MlpPolicy", make_env(env_id, n_envs, seed), seed=seed, device="cpu")
    # The same total number of envs, over 2 workers.
    algo_class = OffPolicyAC if algo == "OffPolicyAC" else A3C
    return algo_class(
        "MlpPolicy", make_env(env_id, 1, seed), n_workers=2, envs_per_worker=n_envs // 2, seed=seed, device="cpu", **kwargs
    )


def time_to_solve(algo: str, env_id: str, seed: int, budget: int) -> tuple[int, float] | None:
    callback = StopWhenSolved(THRESHOLDS[env_id])
    make_model(algo, env_id, seed).learn(budget, callback=callback)
    return callback.solved_at


def score_from_behaviour(behavior, label: str, seed: int, budget: int) -> float:
    model = make_model("OffPolicyAC", "CartPole-v1", seed, behavior_policy=behavior).learn(budget)
    score, _ = evaluate_policy(model, make_vec_env("CartPole-v1", n_envs=1, seed=1000 + seed), n_eval_episodes=20)
    print(f"  seed {seed}: from {label}: {score:.1f}", flush=True)
    return score


def random_policy_score(env_id: str, n_episodes: int = 100) -> float:
    env = gym.make(env_id)
    env.action_space.seed(0)
    returns = []
    for episode in range(n_episodes):
        env.reset(seed=episode)
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return float(np.mean(returns))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--budget", type=int, default=500_000)
    parser.add_argument("--envs", nargs="+", default=list(THRESHOLDS), choices=list(THRESHOLDS))
    parser.add_argument("--behaviour-budget", type=int, default=200_000)
    args = parser.parse_args()

    for env_id in args.envs:
        print(f"\n{env_id}: time to a 100-episode training mean of {THRESHOLDS[env_id]:g}", flush=True)
        results: dict[str, list[tuple[int, float] | None]] = {algo: [] for algo in ALGOS}
        for seed in range(args.seeds):
            order = ALGOS[seed % 3 :] + ALGOS[: seed % 3]
            for algo in order:
                solved = time_to_solve(algo, env_id, seed, args.budget)
                results[algo].append(solved)
                shown = f"{solved[0]:,} steps, {solved[1]:.1f} s" if solved else f"not solved in {args.budget:,} steps"
                print(f"  seed {seed}: {algo}: {shown}", flush=True)
        print(f"  medians over {args.seeds} seeds (an unsolved run counts as the budget / infinite time):")
        for algo, runs in results.items():
            steps = statistics.median(r[0] if r else args.budget for r in runs)
            seconds = statistics.median(r[1] if r else float("inf") for r in runs)
            n_solved = sum(r is not None for r in runs)
            print(f"    {algo:<12} {steps:>9,.0f} steps  {seconds:>7.1f} s   solved {n_solved}/{len(runs)}", flush=True)

    print(
        f"\nCartPole-v1: OffPolicyAC's deterministic target policy after {args.behaviour_budget:,} steps of "
        "another policy's behaviour (20 evaluation episodes)",
        flush=True,
    )
    expert = make_model("A3C", "CartPole-v1", seed=123).learn(200_000)
    expert_score, _ = evaluate_policy(
        expert, make_vec_env("CartPole-v1", n_envs=1, seed=7), n_eval_episodes=20, deterministic=False
    )
    print(f"  the expert (A3C, 200k steps), acting stochastically as it does for OffPolicyAC: {expert_score:.1f}")
    uniform = [
        score_from_behaviour("uniform", "uniform random actions", seed, args.behaviour_budget) for seed in range(args.seeds)
    ]
    from_expert = [
        score_from_behaviour(expert, "the expert's behaviour", seed, args.behaviour_budget) for seed in range(args.seeds)
    ]
    random_score = random_policy_score("CartPole-v1")
    print(
        f"  medians: from uniform {statistics.median(uniform):.1f} (range {min(uniform):.0f}-{max(uniform):.0f}), "
        f"from the expert {statistics.median(from_expert):.1f} (range {min(from_expert):.0f}-{max(from_expert):.0f}); "
        f"a random policy scores {random_score:.1f}"
    )


if __name__ == "__main__":
    main()
