"""n_workers="auto" and envs_per_worker="auto": the rules, and the probe that feeds them on real envs."""

import gymnasium as gym
import pytest
import torch as th
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import Logger

from sb3_async import A3C, AsyncQLearning, OffPolicyAC
from sb3_async.common.async_algorithm import default_n_workers
from sb3_async.common.collectors import WorkerError
from sb3_async.common.worker_layout import (
    MAX_AUTO_ENVS_PER_WORKER,
    MAX_WORKERS_PER_CORE,
    GradientCost,
    choose_envs_per_worker,
    choose_layout,
    choose_n_workers,
    measure_gradient_costs,
    split_gradient_cost,
)
from sb3_async.common.wrappers import RandomLatency
from tests.conftest import RecordingOutput
from tests.envs import RaisingEnv

CORES = default_n_workers()


def cartpole_waiting_2ms() -> gym.Env:
    """CartPole behind a 2 ms wait per step (a simulator on a socket, say): its worker's core is idle most of the time."""
    return RandomLatency(gym.make("CartPole-v1"), mean_seconds=0.002, distribution="constant")


def cartpole_raising() -> gym.Env:
    return RaisingEnv(fail_after=3)


# --- The rules --------------------------------------------------------------------------------------


def test_a_worker_that_never_waits_gets_one_core_and_one_that_waits_gets_company():
    assert choose_n_workers(cpu_share=1.0, cores=2) == 2
    assert choose_n_workers(cpu_share=0.85, cores=4) == 4  # scheduling noise is not waiting
    assert choose_n_workers(cpu_share=0.5, cores=2) == 5  # cores x (1 + wait / compute), and a quarter more
    assert choose_n_workers(cpu_share=0.25, cores=3) == 15
    assert choose_n_workers(cpu_share=0.001, cores=2) == MAX_WORKERS_PER_CORE * 2


def test_envs_per_worker_are_the_fewest_that_cost_as_much_as_a_gradients_fixed_part():
    # 5 steps of 0.1 ms per env against 1 ms fixed: 2 envs.
    assert choose_envs_per_worker(fixed_seconds=1e-3, seconds_per_env_step=1e-4, steps_per_env=5) == 2
    assert choose_envs_per_worker(fixed_seconds=1e-3, seconds_per_env_step=2e-3, steps_per_env=5) == 1  # a slow env
    assert choose_envs_per_worker(fixed_seconds=1e-3, seconds_per_env_step=1e-5, steps_per_env=5) == 16
    assert choose_envs_per_worker(fixed_seconds=1.0, seconds_per_env_step=1e-9, steps_per_env=5) == MAX_AUTO_ENVS_PER_WORKER


def test_the_fixed_and_per_step_costs_come_back_from_two_measurements():
    fixed, per_step, n_steps = 1e-3, 1e-4, 5
    costs = [GradientCost(envs, fixed + envs * n_steps * per_step, 0.0, n_steps) for envs in (1, 8)]
    assert split_gradient_cost(costs) == pytest.approx((fixed, per_step))


def test_a_users_vec_env_is_shared_among_the_workers_chosen():
    costs = [GradientCost(4, wall_seconds=2e-3, cpu_seconds=1e-3, steps_per_env=5)]  # busy half the time
    layout = choose_layout(costs, cores=2, envs_per_worker=None, n_envs=8)
    assert (layout.n_workers, layout.envs_per_worker) == (5, 1)
    assert layout.cpu_share == pytest.approx(0.5)
    layout = choose_layout(costs, cores=2, envs_per_worker=3, n_envs=None)
    assert (layout.n_workers, layout.envs_per_worker) == (5, 3)


# --- The probe, on real envs ---------------------------------------------------------------------------


def test_a_cpu_bound_env_gets_one_worker_per_core_and_a_few_envs_each(no_leaks):
    model = A3C("MlpPolicy", "CartPole-v1", n_workers="auto", envs_per_worker="auto", device="cpu", seed=0)
    assert model.n_workers == CORES
    assert model.envs_per_worker > 1  # CartPole's steps cost little beside a gradient's backward pass
    assert model.n_envs == model.n_workers * model.envs_per_worker
    assert model.auto_layout["cpu_share"] >= 0.8


def test_an_env_that_waits_gets_more_workers_than_cores_and_trains_with_them(tmp_path, no_leaks):
    model = A3C("MlpPolicy", cartpole_waiting_2ms, n_workers="auto", envs_per_worker="auto", n_steps=5, device="cpu")
    assert model.n_workers > CORES
    assert model.envs_per_worker == 1  # its steps already cost more than a gradient
    recording = RecordingOutput()
    model.set_logger(Logger(None, [recording]))
    model.learn(8 * model.n_workers * 5, log_interval=1)
    assert recording.dumps[-1]["async/n_workers"] == model.n_workers
    model.save(tmp_path / "model")
    loaded = A3C.load(tmp_path / "model", env=make_vec_env(cartpole_waiting_2ms))
    assert (loaded.n_workers, loaded.envs_per_worker) == (model.n_workers, 1)  # measured once, then kept
    assert loaded.auto_layout == model.auto_layout


def test_auto_workers_share_the_users_vec_env():
    model = OffPolicyAC("MlpPolicy", make_vec_env("CartPole-v1", n_envs=8), n_workers="auto", device="cpu")
    assert model.n_workers == CORES
    assert model.envs_per_worker == max(1, 8 // CORES)


def test_the_value_methods_take_auto_too():
    model = AsyncQLearning("MlpPolicy", "CartPole-v1", n_workers=1, envs_per_worker="auto", device="cpu")
    assert model.n_workers == 1 and model.envs_per_worker >= 1


def test_the_probe_measures_the_segment_length_each_algorithm_steps():
    # The value methods' segments are train_freq steps long; their n_steps is the return's length, not the segment's.
    model = AsyncQLearning("MlpPolicy", "CartPole-v1", n_workers=1, train_freq=5, n_steps=1, device="cpu")
    params = th.cat([param.detach().flatten() for param in model.policy.parameters()])
    (cost,) = measure_gradient_costs(model._worker_spec(), params, th.zeros(0, dtype=th.float64), [2], seconds=0.2)
    assert (cost.envs_per_worker, cost.steps_per_env) == (2, 5)


def test_an_env_that_raises_in_the_probe_is_named_at_construction_and_leaves_nothing(no_leaks):
    with pytest.raises(WorkerError, match="the env broke on purpose"):
        A3C("MlpPolicy", cartpole_raising, n_workers="auto", device="cpu")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n_workers="many"), "n_workers must be"),
        (dict(envs_per_worker="max"), "envs_per_worker must be"),
        (dict(n_workers="auto", backend="ray"), "Ray cluster"),
    ],
)
def test_bad_layouts_are_refused_before_any_process_starts(kwargs, message, no_leaks):
    with pytest.raises(ValueError, match=message):
        A3C("MlpPolicy", "CartPole-v1", device="cpu", **kwargs)
