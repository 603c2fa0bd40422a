"""update_mode="locked": each worker applies its own gradient under the shared lock; the default where it can run."""

import pytest
import torch as th
from stable_baselines3.common.env_util import make_vec_env

from stable_baselines3.common.logger import Logger

from sb3_async import A3C, AsyncQLearning, OffPolicyAC
from tests.conftest import RecordingOutput
from tests.known_gradients import STEPS_PER_GRADIENT, KnownGradientA3C, known_gradient

FAST = dict(n_workers=2, n_steps=5, seed=0, device="cpu")


def flat(module) -> th.Tensor:
    return th.nn.utils.parameters_to_vector(module.parameters()).detach().clone()


def sequential_rmsprop(start: th.Tensor, gradient: th.Tensor, n_updates: int, **hyperparameters) -> th.Tensor:
    """The parameters after ``n_updates`` RMSprop steps of ``gradient``, applied one after the other."""
    param = th.nn.Parameter(start.clone())
    optimizer = th.optim.RMSprop([param], **hyperparameters)
    for _ in range(n_updates):
        param.grad = gradient.clone()
        optimizer.step()
    return param.detach()


@pytest.mark.parametrize("n_workers", [1, 3])
def test_locked_updates_of_known_gradients_are_all_applied_one_at_a_time(n_workers, no_leaks):
    """
    Every segment's gradient is the same vector g, so N workers x M updates, each applied whole,
    one at a time, give exactly M*N sequential RMSprop steps of g. An update lost to a race (two
    workers reading the same mean square and each writing its own) would leave other parameters.
    """
    model = KnownGradientA3C(
        "MlpPolicy", "CartPole-v1", n_workers=n_workers, seed=0, device="cpu", update_mode="locked", max_grad_norm=None
    )
    start = flat(model.policy)
    model.learn(300 * n_workers * STEPS_PER_GRADIENT)
    n_updates = model.num_timesteps // STEPS_PER_GRADIENT
    assert model._n_updates == n_updates == 300 * n_workers
    hyperparameters = {key: value for key, value in model.policy.optimizer.defaults.items() if key in ("alpha", "eps")}
    expected = sequential_rmsprop(start, known_gradient(start.numel()), n_updates, lr=7e-4, **hyperparameters)
    assert th.allclose(flat(model.policy), expected, rtol=0, atol=1e-6)
    steps = {state["step"].item() for state in model.policy.optimizer.state_dict()["state"].values()}
    assert steps == {float(n_updates)}


def test_locked_is_the_default_where_it_can_run_and_learner_elsewhere():
    assert A3C("MlpPolicy", "CartPole-v1", device="cpu")._update_mode() == "locked"
    assert OffPolicyAC("MlpPolicy", "CartPole-v1", device="cpu")._update_mode() == "locked"
    assert AsyncQLearning("MlpPolicy", "CartPole-v1", device="cpu")._update_mode() == "locked"
    sgd = dict(optimizer_class=th.optim.SGD)
    assert A3C("MlpPolicy", "CartPole-v1", device="cpu", policy_kwargs=sgd)._update_mode() == "learner"
    assert A3C("MlpPolicy", "CartPole-v1", device="cpu", backend="ray")._update_mode() == "learner"
    # A model keeps what the user asked for, so that a loaded one re-decides on the machine it is loaded on.
    assert A3C("MlpPolicy", "CartPole-v1", device="cpu").update_mode == "auto"


@pytest.mark.parametrize("n_envs, n_workers, expected", [(8, 2, 4), (8, 3, 2), (1, 2, 1), (2, 4, 1)])
def test_the_workers_share_the_envs_of_a_vec_env_by_default(n_envs, n_workers, expected):
    model = A3C("MlpPolicy", make_vec_env("CartPole-v1", n_envs=n_envs), n_workers=n_workers, device="cpu")
    assert model.envs_per_worker == expected
    assert A3C("MlpPolicy", "CartPole-v1", n_workers=n_workers, device="cpu").envs_per_worker == 1
    given = A3C("MlpPolicy", make_vec_env("CartPole-v1", n_envs=n_envs), n_workers=n_workers, envs_per_worker=3, device="cpu")
    assert given.envs_per_worker == 3


def test_a_locked_worker_starts_each_segment_from_its_own_last_update(no_leaks):
    """As in the paper's learner mode, without waiting for the learner: one worker's staleness is always 0."""
    model = A3C("MlpPolicy", "CartPole-v1", n_workers=1, n_steps=5, seed=0, device="cpu", update_mode="locked")
    output = RecordingOutput()
    model.set_logger(Logger(folder=None, output_formats=[output]))
    model.learn(3_000, log_interval=10)
    assert max(dump["async/staleness_max"] for dump in output.dumps) == 0
    assert model._n_updates == model.num_timesteps // 5


@pytest.mark.parametrize("update_mode", ["learner", "locked"])
def test_async_q_target_network_refreshes_in_both_modes(update_mode, no_leaks):
    model = AsyncQLearning(
        "MlpPolicy", "CartPole-v1", train_freq=5, target_update_interval=100, update_mode=update_mode, **FAST
    )
    target = flat(model.q_net_target)
    model.learn(1_000)
    assert model.target_updates == model.num_timesteps // 100
    assert not th.equal(flat(model.q_net_target), target)
