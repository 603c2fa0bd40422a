"""Learning tests: real training, real scores."""

import pytest
from stable_baselines3.common.callbacks import EvalCallback, StopTrainingOnRewardThreshold
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecNormalize

from sb3_async import A3C

# A random policy scores about -1205 on Pendulum-v1 (20 episodes, measured); A3C reaches about -330 in 150k steps.
PENDULUM_RANDOM_SCORE = -1205.0


@pytest.mark.parametrize("seed", [0, 1])
def test_a3c_solves_cartpole(seed, no_leaks):
    model = A3C("MlpPolicy", "CartPole-v1", n_workers=2, envs_per_worker=4, seed=seed, device="cpu")
    stop_when_solved = EvalCallback(
        make_vec_env("CartPole-v1", n_envs=1, seed=100 + seed),
        eval_freq=10_000 // model.n_envs,
        n_eval_episodes=20,
        callback_on_new_best=StopTrainingOnRewardThreshold(reward_threshold=475),
        verbose=0,
    )
    model.learn(250_000, callback=stop_when_solved)
    # Judged on fresh episodes, not on the evaluation that stopped training.
    mean_reward, _ = evaluate_policy(model, make_vec_env("CartPole-v1", n_envs=1, seed=999), n_eval_episodes=20)
    assert mean_reward >= 475, f"seed {seed}: {mean_reward:.1f} after {model.num_timesteps} steps"


def test_a3c_learns_pendulum(no_leaks):
    # rl-zoo's A2C settings for Pendulum-v1, with 2 workers x 4 envs in place of 8 envs.
    env = VecNormalize(make_vec_env("Pendulum-v1", n_envs=1), gamma=0.9)
    model = A3C(
        "MlpPolicy",
        env,
        n_workers=2,
        envs_per_worker=4,
        n_steps=8,
        gamma=0.9,
        gae_lambda=0.9,
        use_sde=True,
        policy_kwargs=dict(log_std_init=-2, ortho_init=False),
        seed=0,
        device="cpu",
    )
    model.learn(200_000)
    env.training, env.norm_reward = False, False
    mean_reward, _ = evaluate_policy(model, env, n_eval_episodes=10)
    assert mean_reward > PENDULUM_RANDOM_SCORE + 300, f"{mean_reward:.1f}"
