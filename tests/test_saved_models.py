"""Models saved by an earlier sb3_async load, predict and train on with today's code ("a saved model always loads")."""

from pathlib import Path

import pytest
import torch as th
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecNormalize

from sb3_async import A3C, AsyncQLearning, AsyncSARSA, OffPolicyAC

# Saved with the code of 2026-11-27 (commit b28f48f, before update_mode="locked", the lean rollout, "auto" and
# update_paths.py): CartPole-v1, 200 steps each; a3c.zip with VecNormalize, a3c_hogwild.zip with update_mode="hogwild".
SAVED = Path(__file__).parent / "data" / "saved_by_2026_11_27"


def flat(policy) -> th.Tensor:
    return th.nn.utils.parameters_to_vector(policy.parameters()).detach().clone()


@pytest.mark.parametrize(
    "name, algorithm",
    [
        ("a3c", A3C),
        ("a3c_hogwild", A3C),
        ("a3c_lstm", A3C),
        ("offpac", OffPolicyAC),
        ("async_q", AsyncQLearning),
        ("async_sarsa", AsyncSARSA),
    ],
)
def test_a_model_saved_by_an_earlier_release_loads_predicts_and_trains_on(name, algorithm, no_leaks):
    env = make_vec_env("CartPole-v1", n_envs=1, seed=0)
    if name == "a3c":
        env = VecNormalize.load(str(SAVED / "a3c_vecnormalize.pkl"), env)
    model = algorithm.load(SAVED / f"{name}.zip", env=env, device="cpu")
    assert model.num_timesteps >= 200
    assert model.update_mode == ("hogwild" if name == "a3c_hogwild" else "learner")  # what it was saved with
    actions, _ = model.predict(env.reset(), deterministic=True)
    assert env.action_space.contains(actions[0])

    before = flat(model.policy)
    model.learn(100, reset_num_timesteps=False)
    assert model.num_timesteps >= 300
    assert not th.equal(flat(model.policy), before)
    assert model.dropped_updates == 0 and model.worker_restarts == 0
