import functools
import sys
import threading

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from stable_baselines3.common.callbacks import (
    BaseCallback,
    CheckpointCallback,
    EvalCallback,
    StopTrainingOnRewardThreshold,
)
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import (
    FakeImageEnv,
    IdentityEnv,
    IdentityEnvBox,
    IdentityEnvMultiBinary,
    IdentityEnvMultiDiscrete,
    SimpleMultiObsEnv,
)
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.vec_env import VecEnvWrapper, VecFrameStack, VecNormalize

from sb3_async import A3C
from sb3_async.common.env_recipes import make_vec_env as sb3_async_make_vec_env
from tests.conftest import CountingCallback, RecordingOutput, forkserver_children
from tests.envs import TupleActionEnv

FAST = dict(n_workers=2, n_steps=5, seed=0, device="cpu")


@pytest.mark.parametrize(
    "env, policy",
    [
        ("CartPole-v1", "MlpPolicy"),  # Discrete
        ("Pendulum-v1", "MlpPolicy"),  # Box
        (functools.partial(IdentityEnvMultiDiscrete, dim=2), "MlpPolicy"),
        (functools.partial(IdentityEnvMultiBinary, dim=3), "MlpPolicy"),
        (lambda: IdentityEnvBox(eps=0.5), "MlpPolicy"),
        (lambda: FakeImageEnv(screen_height=36, screen_width=36, n_channels=1), "CnnPolicy"),
        (SimpleMultiObsEnv, "MultiInputPolicy"),
    ],
    ids=["discrete", "box", "multidiscrete", "multibinary", "box-lambda", "cnn-image", "dict-obs"],
)
def test_spaces_and_policies(env, policy, no_leaks):
    model = A3C(policy, env, **FAST).learn(200)
    assert model.num_timesteps >= 200
    obs = model.get_env().reset()
    actions, _ = model.predict(obs, deterministic=True)
    assert model.action_space.contains(actions[0])


def test_learner_counts_match_workers(backend, no_leaks):
    model = A3C("MlpPolicy", "CartPole-v1", n_workers=2, envs_per_worker=3, n_steps=4, seed=0, device="cpu", backend=backend)
    callback = CountingCallback()
    model.learn(600, callback=callback)
    assert model.n_envs == 6
    assert callback.training_starts == 1 and callback.training_ends == 1
    # One on_step per n_envs timesteps, as SB3 does once per VecEnv.step() of n_envs envs.
    assert callback.timesteps_seen == list(range(6, model.num_timesteps + 1, 6))
    assert model.num_timesteps >= 600
    assert model._n_updates >= 600 // (3 * 4)


def test_callback_returning_false_stops_every_worker(backend, no_leaks):
    model = A3C("MlpPolicy", "CartPole-v1", backend=backend, **FAST)
    callback = CountingCallback(stop_after_calls=10)
    model.learn(1_000_000, callback=callback)
    assert callback.n_calls == 10
    assert model.num_timesteps == 10 * model.n_envs
    assert callback.training_ends == 1


def test_sb3_callbacks_and_progress_bar(tmp_path, backend, no_leaks):
    model = A3C("MlpPolicy", "CartPole-v1", backend=backend, **FAST)
    eval_callback = EvalCallback(
        make_vec_env("CartPole-v1", n_envs=1),
        eval_freq=200,
        n_eval_episodes=2,
        # Any score stops training at the first evaluation.
        callback_on_new_best=StopTrainingOnRewardThreshold(reward_threshold=-1.0),
        log_path=str(tmp_path / "eval"),
    )
    checkpoint = CheckpointCallback(save_freq=100, save_path=str(tmp_path / "checkpoints"), name_prefix="a3c")
    model.learn(100_000, callback=[checkpoint, eval_callback], progress_bar=True)
    # Stopped by the reward threshold at the first evaluation (200 calls of 2 envs).
    assert model.num_timesteps == 200 * model.n_envs
    assert len(eval_callback.evaluations_results) == 1
    checkpoints = sorted((tmp_path / "checkpoints").glob("a3c_*_steps.zip"))
    assert len(checkpoints) == 2
    A3C.load(checkpoints[-1])


def test_logger_keys(backend, no_leaks):
    model = A3C("MlpPolicy", "CartPole-v1", backend=backend, **FAST)
    output = RecordingOutput()
    model.set_logger(Logger(folder=None, output_formats=[output]))
    model.learn(2_000, log_interval=20)
    assert output.dumps, "nothing was logged"
    logged = output.dumps[-1]
    for key in (
        "rollout/ep_rew_mean",
        "time/fps",
        "train/policy_loss",
        "train/value_loss",
        "train/entropy_loss",
        "train/learning_rate",
        "async/staleness_mean",
        "async/staleness_max",
        "async/updates_per_s",
        "async/learner_idle_fraction",
        "async/dropped_updates",
        "async/worker_restarts",
    ):
        assert key in logged, key
    assert 0.0 <= logged["async/learner_idle_fraction"] <= 1.0
    assert logged["async/staleness_max"] >= logged["async/staleness_mean"] >= 0
    assert logged["async/dropped_updates"] == 0
    assert logged["async/worker_restarts"] == 0
    # How the run was set up, "auto" resolved: the workers apply their updates wherever they can.
    assert (logged["async/n_workers"], logged["async/envs_per_worker"]) == (2, 1)
    assert logged["async/update_mode"] == ("learner" if backend == "ray" else "locked")


def test_continue_learning(no_leaks):
    # The learner loop, the same for every backend (test_learner_counts_match_workers runs it on Ray).
    model = A3C("MlpPolicy", "CartPole-v1", **FAST)
    threads = th.get_num_threads()
    model.learn(300)
    assert th.get_num_threads() == threads  # the learner's one thread is only for the duration of learn()
    first = model.num_timesteps
    model.learn(300, reset_num_timesteps=False)
    assert model.num_timesteps >= first + 300
    model.learn(300)
    assert 300 <= model.num_timesteps < first + 300


class RecordLearningRate(BaseCallback):
    def __init__(self):
        super().__init__()
        self.rates: list[float] = []

    def _on_step(self) -> bool:
        self.rates.append(self.model.policy.optimizer.param_groups[0]["lr"])
        return True


@pytest.mark.parametrize("update_mode", ["learner", "locked", "hogwild"])
def test_learning_rate_schedule_reaches_the_learner_optimizer(update_mode, no_leaks):
    model = A3C("MlpPolicy", "CartPole-v1", learning_rate=lambda progress: 1e-3 * progress, update_mode=update_mode, **FAST)
    recorder = RecordLearningRate()
    model.learn(1_000, callback=recorder)
    # As SB3's A2C: each update's rate counts the steps behind it, so the last one, at progress 0, is 0.
    assert 0.98e-3 <= recorder.rates[0] < 1e-3
    assert all(later <= earlier for earlier, later in zip(recorder.rates, recorder.rates[1:], strict=False))
    assert model.policy.optimizer.param_groups[0]["lr"] == 0.0


def test_save_load_round_trip(tmp_path, backend, no_leaks):
    model = A3C("MlpPolicy", "CartPole-v1", n_workers=4, seed=0, device="cpu", backend=backend).learn(500)
    obs = np.stack([model.observation_space.sample() for _ in range(16)])
    expected, _ = model.predict(obs, deterministic=True)
    model.save(tmp_path / "a3c")

    loaded = A3C.load(tmp_path / "a3c", device="cpu")
    assert loaded.backend == backend
    actions, _ = loaded.predict(obs, deterministic=True)
    np.testing.assert_array_equal(actions, expected)
    for saved, restored in zip(model.policy.parameters(), loaded.policy.parameters(), strict=False):
        th.testing.assert_close(saved, restored)
    # The RMSprop statistics travel too.
    assert loaded.policy.optimizer.state_dict()["state"].keys() == model.policy.optimizer.state_dict()["state"].keys()

    # Saved with 4 workers, trains with 2.
    loaded = A3C.load(tmp_path / "a3c", env=make_vec_env("CartPole-v1"), n_workers=2, device="cpu")
    assert loaded.n_workers == 2
    loaded.learn(300, reset_num_timesteps=False)
    assert loaded.num_timesteps >= 800


def test_vec_normalize_statistics_are_merged_into_the_learner(tmp_path, backend, no_leaks):
    env = VecNormalize(make_vec_env("Pendulum-v1", n_envs=1), gamma=0.99)
    model = A3C("MlpPolicy", env, n_workers=2, envs_per_worker=2, seed=0, device="cpu", backend=backend)
    model.learn(2_000)
    learner_stats = model.get_vec_normalize_env()
    assert learner_stats is env
    # Every env step of every worker is counted once (plus the resets and the learner's own reset).
    assert model.num_timesteps <= learner_stats.obs_rms.count <= model.num_timesteps + 4 * 10 + 10
    assert learner_stats.ret_rms.count >= model.num_timesteps
    # Pendulum observations are (cos, sin, angular velocity): the cos/sin variances are at most 1.
    assert np.all(learner_stats.obs_rms.var[:2] <= 1.0) and learner_stats.obs_rms.var[2] > 0.1

    env.save(str(tmp_path / "vecnormalize.pkl"))
    restored = VecNormalize.load(str(tmp_path / "vecnormalize.pkl"), make_vec_env("Pendulum-v1"))
    np.testing.assert_allclose(restored.obs_rms.mean, learner_stats.obs_rms.mean)


def test_vec_normalize_of_rewards_only_trains_and_merges_the_return_statistics(no_leaks):
    # SB3's VecNormalize(norm_obs=False) has no obs_rms at all; the workers used to fail on it.
    env = VecNormalize(make_vec_env("CartPole-v1", n_envs=1), norm_obs=False, gamma=0.99)
    model = A3C("MlpPolicy", env, n_workers=2, envs_per_worker=2, seed=0, device="cpu")
    model.learn(2_000)
    assert not hasattr(env, "obs_rms")
    assert model.num_timesteps <= env.ret_rms.count <= model.num_timesteps + 10
    # CartPole pays 1 a step: the discounted returns the workers saw grow above 1 and vary.
    assert env.ret_rms.mean > 1.0 and env.ret_rms.var > 0.1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n_workers=0), "n_workers"),
        (dict(n_steps=0), "n_steps"),
        (dict(envs_per_worker=0), "envs_per_worker"),
        (dict(env="NoSuchEnv-v0"), "unknown env id"),
        (dict(env=TupleActionEnv), "action space"),
        (dict(backend="mpi"), "backend must be one of"),
        (dict(max_worker_restarts=-1), "max_worker_restarts must be an integer >= 0"),
        (dict(max_worker_restarts=1.5), "max_worker_restarts must be an integer >= 0"),
    ],
)
def test_bad_arguments_raise_before_any_process_starts(kwargs, message, backend):
    arguments = dict(policy="MlpPolicy", env="CartPole-v1", device="cpu", backend=backend) | kwargs
    policy, env = arguments.pop("policy"), arguments.pop("env")
    workers_before = forkserver_children()
    with pytest.raises(ValueError, match=message):
        A3C(policy, env, **arguments).learn(100)
    assert forkserver_children() == workers_before


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(update_mode="hogwild"), "update_mode='hogwild' needs the workers to share memory"),
        (dict(ray_actor_options="num_cpus=1"), "ray_actor_options must be a dict or a list"),
        (dict(ray_actor_options=[{}, {}, {}], n_workers=2), "one per worker needs n_workers=2"),
        (dict(ray_init_kwargs=["address"]), "ray_init_kwargs must be a dict"),
    ],
)
def test_settings_the_ray_backend_cannot_use_raise_at_construction(kwargs, message):
    # No Ray starts: these are refused by the constructor.
    with pytest.raises(ValueError, match=message):
        A3C("MlpPolicy", "CartPole-v1", device="cpu", backend="ray", **kwargs)


def test_ray_backend_without_ray_installed_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` sees where Ray is not installed
    with pytest.raises(ImportError, match=r"pip install 'sb3_async\[ray\]'"):
        A3C("MlpPolicy", "CartPole-v1", device="cpu", backend="ray")
    A3C("MlpPolicy", "CartPole-v1", device="cpu")  # the local backend never imports it


def test_unpicklable_env_factory_names_the_fix():
    lock = threading.Lock()

    def make_env():
        with lock:
            return gym.make("CartPole-v1")

    with pytest.raises(ValueError, match=r"cannot be pickled.*module-level function"):
        A3C("MlpPolicy", make_env, device="cpu")


def test_vec_env_the_workers_cannot_rebuild_names_the_fix():
    class CustomWrapper(VecEnvWrapper):
        def reset(self):
            return self.venv.reset()

        def step_wait(self):
            return self.venv.step_wait()

    with pytest.raises(ValueError, match=r"CustomWrapper.*Pass `env` as an env id"):
        A3C("MlpPolicy", CustomWrapper(make_vec_env("CartPole-v1")), device="cpu")


def test_identity_env_learns_a_little(no_leaks):
    # A cheap end-to-end check that gradients from workers improve the learner's policy.
    model = A3C("MlpPolicy", lambda: IdentityEnv(dim=4, ep_length=10), ent_coef=0.01, **FAST)
    obs = np.arange(4)
    model.learn(6_000)
    actions, _ = model.predict(obs, deterministic=True)
    assert (actions == obs).mean() >= 0.75


class ScaledReward(gym.Wrapper):
    """A wrapper that, like SB3's AtariWrapper, does not record its arguments for gymnasium to re-create it."""

    def __init__(self, env: gym.Env, scale: float):
        super().__init__(env)
        self.scale = scale

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        return obs, reward * self.scale, terminated, truncated, info


def test_workers_build_envs_with_the_arguments_given_to_sb3_async_make_vec_env(tmp_path):
    recorded = sb3_async_make_vec_env(
        "CartPole-v1",
        n_envs=2,
        wrapper_class=ScaledReward,
        wrapper_kwargs=dict(scale=3.0),
        env_kwargs=dict(sutton_barto_reward=True),
        monitor_dir=str(tmp_path),
    )
    env = VecFrameStack(VecNormalize(recorded, norm_reward=False), n_stack=3)
    model = A3C("MlpPolicy", env, n_workers=2, envs_per_worker=2, device="cpu")
    worker_env = model._worker_env_factory().build(worker_id=1, normalization=model._normalization_statistics())
    try:
        assert worker_env.observation_space == model.observation_space  # the 3-frame stack is re-applied
        sub_env = worker_env.unwrapped.envs[0]
        assert isinstance(sub_env, ScaledReward) and sub_env.scale == 3.0
        assert sub_env.unwrapped._sutton_barto_reward
        # Each worker env writes its own Monitor file, numbered after the learner's 2 envs.
        assert sorted(path.name for path in tmp_path.glob("*.monitor.csv")) == [f"{rank}.monitor.csv" for rank in (0, 1, 4, 5)]
    finally:
        worker_env.close()
        env.close()


def test_a_wrapper_gymnasium_cannot_recreate_reaches_the_workers_as_a_copy(no_leaks):
    # SB3's make_vec_env, not ours: no recipe is recorded, and the spec cannot say how to re-create ScaledReward.
    env = make_vec_env("CartPole-v1", n_envs=2, wrapper_class=ScaledReward, wrapper_kwargs=dict(scale=3.0))
    model = A3C("MlpPolicy", env, n_workers=2, envs_per_worker=3, device="cpu")
    worker_env = model._worker_env_factory().build(worker_id=1)
    try:
        sub_envs = worker_env.unwrapped.envs
        assert len(sub_envs) == 3 and all(isinstance(sub_env, ScaledReward) and sub_env.scale == 3.0 for sub_env in sub_envs)
        assert all(sub_env is not original for sub_env in sub_envs for original in env.envs)
    finally:
        worker_env.close()
    model.learn(100)


@pytest.mark.parametrize("wait_for_own_update", [True, False])
def test_a_worker_waits_for_its_own_update_only_in_the_papers_mode(wait_for_own_update, no_leaks):
    # One worker: any staleness can only be its own last update, not yet applied when it copied the parameters.
    model = A3C(
        "MlpPolicy",
        "CartPole-v1",
        n_workers=1,
        n_steps=5,
        seed=0,
        device="cpu",
        update_mode="learner",
        wait_for_own_update=wait_for_own_update,
    )
    output = RecordingOutput()
    model.set_logger(Logger(folder=None, output_formats=[output]))
    model.learn(3_000, log_interval=10)
    staleness_max = max(dump["async/staleness_max"] for dump in output.dumps)
    if wait_for_own_update:
        assert staleness_max == 0
    else:
        # It starts its next segment at once, and never runs more than its two gradient slots ahead.
        assert staleness_max in (1, 2)
    assert model._n_updates == model.num_timesteps // 5


def test_the_learner_builds_step_locals_only_when_a_callback_may_read_them(tmp_path, monkeypatch, no_leaks):
    from stable_baselines3.common.callbacks import (
        CallbackList,
        CheckpointCallback,
        EvalCallback,
        StopTrainingOnRewardThreshold,
    )

    from sb3_async.common.async_algorithm import AsyncAlgorithmMixin, reads_step_locals

    sb3_only = [
        CheckpointCallback(10_000, str(tmp_path)),
        EvalCallback(make_vec_env("CartPole-v1"), callback_on_new_best=StopTrainingOnRewardThreshold(500), eval_freq=10**6),
    ]
    built = []
    original = AsyncAlgorithmMixin._callback_locals
    monkeypatch.setattr(AsyncAlgorithmMixin, "_callback_locals", lambda self, *args: built.append(1) or original(self, *args))
    model = A3C("MlpPolicy", "CartPole-v1", **FAST)
    model.learn(500, callback=sb3_only, progress_bar=True)
    model.learn(500)  # no callback: SB3 wraps None in a ConvertCallback, which reads nothing
    assert built == [] and not reads_step_locals(None)
    seen = []
    model.learn(500, callback=lambda local_vars, global_vars: seen.append(local_vars["new_obs"].shape) or True)
    assert len(built) == len(seen) > 0 and seen[0] == (model.n_envs, 4)  # an old-style function callback gets them
    built.clear()
    counter = CountingCallback()  # a user's callback: it may read self.locals, and gets them
    model.learn(500, callback=[*sb3_only, counter])
    assert len(built) == counter.n_calls > 0
    nested = EvalCallback(make_vec_env("CartPole-v1"), callback_on_new_best=CountingCallback(), eval_freq=10**6)
    assert reads_step_locals(nested) and reads_step_locals(CallbackList([CheckpointCallback(10, str(tmp_path)), nested]))
    assert model.ep_info_buffer, "episode statistics are kept either way"
