"""
Every env SB3's A2C accepts works in every algorithm, and callbacks see what SB3's loops give them
(issue 12). SB3's own test envs, as instances, DummyVecEnv and SubprocVecEnv, and one written here.
"""

import functools
import os
import pickle
import re
import subprocess
import sys
import threading

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3 import A2C, DQN
from stable_baselines3.common.callbacks import BaseCallback, EvalCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import (
    BitFlippingEnv,
    FakeImageEnv,
    IdentityEnv,
    IdentityEnvBox,
    IdentityEnvMultiBinary,
    IdentityEnvMultiDiscrete,
    SimpleMultiObsEnv,
)
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.vec_env import (
    DummyVecEnv,
    SubprocVecEnv,
    VecCheckNan,
    VecExtractDictObs,
    VecFrameStack,
    VecMonitor,
    VecNormalize,
)

from sb3_async import A3C, AsyncQLearning, AsyncSARSA, OffPolicyAC
from sb3_async.common.worker_pickling import pickle_env_copy
from tests.conftest import forkserver_children


class ShiftedObsEnv(gym.Env):
    """A user's own env, defined here and never registered: observations around ``shift``, reward for action 0."""

    def __init__(self, shift: float = 5.0, ep_length: int = 20):
        self.observation_space = spaces.Box(-np.inf, np.inf, (3,), np.float32)
        self.action_space = spaces.Discrete(2)
        self.shift = shift
        self.ep_length = ep_length
        self._t = 0

    def _obs(self) -> np.ndarray:
        return (self.shift + self.np_random.standard_normal(3)).astype(np.float32)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self._t = 0
        return self._obs(), {}

    def step(self, action):
        self._t += 1
        return self._obs(), float(action == 0), False, self._t >= self.ep_length, {}


def image_env(channel_first: bool) -> FakeImageEnv:
    return FakeImageEnv(screen_height=36, screen_width=36, n_channels=1, channel_first=channel_first)


# (make the env, policy, action space kind)
ENVS = {
    "identity": (lambda: IdentityEnv(10), "MlpPolicy", "discrete"),
    "identity-box": (lambda: IdentityEnvBox(eps=0.5), "MlpPolicy", "box"),
    "identity-multibinary": (lambda: IdentityEnvMultiBinary(3), "MlpPolicy", "multibinary"),
    "identity-multidiscrete": (lambda: IdentityEnvMultiDiscrete(3), "MlpPolicy", "multidiscrete"),
    "image-channel-last": (functools.partial(image_env, False), "CnnPolicy", "discrete"),
    "image-channel-first": (functools.partial(image_env, True), "CnnPolicy", "discrete"),
    "multi-obs": (SimpleMultiObsEnv, "MultiInputPolicy", "discrete"),
    "bit-flipping": (lambda: BitFlippingEnv(n_bits=4), "MultiInputPolicy", "discrete"),
    "user-env": (ShiftedObsEnv, "MlpPolicy", "discrete"),
}
ALGOS = {
    "a3c": (A3C, dict(n_steps=4)),
    "offpac": (OffPolicyAC, dict(n_steps=4)),
    "async_q": (AsyncQLearning, dict(train_freq=4)),
    "async_sarsa": (AsyncSARSA, dict(train_freq=4)),
}
FITS = {"a3c": None, "offpac": None, "async_q": {"discrete"}, "async_sarsa": {"discrete"}}


def as_form(make_env, form: str):
    if form == "instance":
        return make_env()
    if form == "dummy":
        return DummyVecEnv([lambda: make_env(), lambda: make_env()])
    return SubprocVecEnv([lambda: make_env(), lambda: make_env()])


def cases():
    for algo, (_, _) in ALGOS.items():
        for env_name, (_, _, kind) in ENVS.items():
            if FITS[algo] is not None and kind not in FITS[algo]:
                continue
            # Every form for A3C; the others build their envs with the same code, so one form checks their workers.
            for form in ("instance", "dummy", "subproc") if algo == "a3c" else ("instance",):
                yield pytest.param(algo, env_name, form, id=f"{algo}-{env_name}-{form}")


class LocalsRecorder(BaseCallback):
    """Keeps, for every on_step, each local's type and shape (and the step's rewards, dones and infos)."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[dict[str, object]] = []
        self.rewards: list[np.ndarray] = []
        self.dones: list[np.ndarray] = []
        self.infos: list[dict] = []

    def _on_step(self) -> bool:
        self.shapes.append({key: describe(value) for key, value in self.locals.items()})
        self.rewards.append(np.asarray(self.locals["rewards"]).copy())
        self.dones.append(np.asarray(self.locals["dones"]).copy())
        self.infos += self.locals["infos"]
        return True


def describe(value: object) -> object:
    if isinstance(value, (np.ndarray, th.Tensor)):
        return (type(value).__name__, tuple(value.shape), str(value.dtype).replace("torch.", ""))
    if isinstance(value, dict) and value and all(isinstance(item, np.ndarray) for item in value.values()):
        return {key: describe(item) for key, item in value.items()}
    if isinstance(value, list):
        return ("list", len(value))
    return type(value).__name__


@pytest.mark.parametrize("algo, env_name, form", list(cases()))
def test_every_sb3_test_env_trains_in_every_form(algo, env_name, form, no_leaks):
    algo_class, algo_kwargs = ALGOS[algo]
    make_env, policy, _ = ENVS[env_name]
    env = as_form(make_env, form)
    try:
        model = algo_class(policy, env, n_workers=2, envs_per_worker=2, seed=0, device="cpu", **algo_kwargs)
        recorder = LocalsRecorder()
        model.learn(160, callback=recorder)
        assert model.num_timesteps >= 160
        # One on_step per n_envs env steps, each with n_envs rewards, as from a VecEnv of n_envs envs.
        assert all(rewards.shape == (model.n_envs,) for rewards in recorder.rewards)
        obs = model.get_env().reset()
        actions, _ = model.predict(obs, deterministic=True)
        assert model.action_space.contains(actions[0])
    finally:
        env.close()


def test_a_user_env_is_copied_per_worker_with_its_attributes_and_fresh_seeds():
    env = Monitor(ShiftedObsEnv(shift=-3.0))
    model = A3C("MlpPolicy", env, n_workers=2, envs_per_worker=2, device="cpu")
    factory = model._worker_env_factory()
    worker_envs = [factory.build(worker_id) for worker_id in range(2)]
    try:
        copies = [sub_env for worker_env in worker_envs for sub_env in worker_env.envs]
        assert all(copy.unwrapped.shift == -3.0 and copy.unwrapped is not env.unwrapped for copy in copies)
        # A copied Monitor, not a second one on top of it.
        assert all(isinstance(copy, Monitor) and not isinstance(copy.env, Monitor) for copy in copies)
        first_observations = np.concatenate([worker_env.reset() for worker_env in worker_envs])
        assert len(np.unique(first_observations[:, 0])) == 4, "copies must not share their random state"
    finally:
        for worker_env in worker_envs:
            worker_env.close()


@pytest.mark.parametrize(
    "wrap, expected_layers",
    [
        (lambda venv: VecCheckNan(venv, raise_exception=True), [VecCheckNan]),
        (lambda venv: VecMonitor(VecFrameStack(venv, n_stack=2)), [VecFrameStack, VecMonitor]),
        (
            lambda venv: VecNormalize(VecFrameStack(venv, n_stack=3, channels_order="first"), norm_reward=False),
            [VecFrameStack, VecNormalize],
        ),
    ],
    ids=["check-nan", "frame-stack-monitor", "normalize-frame-stack"],
)
def test_vec_env_wrappers_are_rebuilt_in_the_workers(wrap, expected_layers, no_leaks):
    env = wrap(DummyVecEnv([ShiftedObsEnv]))
    model = A3C("MlpPolicy", env, n_workers=2, seed=0, device="cpu")
    worker_env = model._worker_env_factory().build(0, model._normalization_statistics())
    try:
        layers = []
        venv = worker_env
        while hasattr(venv, "venv"):
            layers.append(type(venv))
            venv = venv.venv
        assert [layer.__name__.replace("Worker", "") for layer in reversed(layers)] == [
            layer.__name__ for layer in expected_layers
        ]
        assert worker_env.observation_space == model.observation_space
    finally:
        worker_env.close()
    model.learn(100)


def test_vec_extract_dict_obs_is_rebuilt(no_leaks):
    env = VecExtractDictObs(DummyVecEnv([SimpleMultiObsEnv]), key="vec")
    model = A3C("MlpPolicy", env, n_workers=2, seed=0, device="cpu").learn(100)
    assert model.observation_space == env.observation_space


def test_an_env_that_cannot_be_copied_names_the_object_and_the_fix():
    class HoldsALock(gym.Wrapper):
        def __init__(self, env):
            super().__init__(env)
            self.connection_lock = threading.Lock()

    workers_before = forkserver_children()
    with pytest.raises(
        ValueError, match=r"connection_lock \(a _thread.lock\) cannot be pickled.*callable that returns a gym.Env"
    ):
        A3C("MlpPolicy", HoldsALock(ShiftedObsEnv()), device="cpu")
    assert forkserver_children() == workers_before


# A user's script: an env class defined in its __main__, in a SubprocVecEnv of lambdas (issue 29). SB3's
# sub-process cannot send such an env back with the standard pickler; it sends a copy made with cloudpickle.
_MAIN_SCRIPT_WITH_SUBPROC_ENV = """
import sys
import threading

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env import SubprocVecEnv

from sb3_async import A3C, AsyncQLearning, AsyncSARSA, OffPolicyAC


class CountingEnv(gym.Env):
    observation_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, ep_length=20):
        self.ep_length = ep_length

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.observation_space.sample(), {}

    def step(self, action):
        self.t += 1
        return self.observation_space.sample(), float(action), False, self.t >= self.ep_length, {}


class HoldsALock(CountingEnv):
    def __init__(self):
        super().__init__()
        self.connection_lock = threading.Lock()


if __name__ == "__main__":
    for algo in (A3C, OffPolicyAC, AsyncQLearning, AsyncSARSA):
        venv = SubprocVecEnv([lambda: CountingEnv(ep_length=7), lambda: CountingEnv(ep_length=7)])
        model = algo("MlpPolicy", venv, n_workers=2, seed=0, device="cpu")
        model.learn(200)
        lengths = {int(info["l"]) for info in model.ep_info_buffer}
        print(algo.__name__, model.num_timesteps, sorted(lengths), flush=True)
        venv.close()
    venv = SubprocVecEnv([lambda: HoldsALock()])
    try:
        A3C("MlpPolicy", venv, n_workers=1, device="cpu")
    except ValueError as error:
        print("refused:", error, flush=True)
    print("still usable:", venv.reset().shape, flush=True)
    venv.close()
"""


def test_a_subproc_vec_env_of_an_env_class_in_main_trains_in_every_algorithm(tmp_path):
    script = tmp_path / "user_script.py"
    script.write_text(_MAIN_SCRIPT_WITH_SUBPROC_ENV)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=os.getcwd())
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    # Every algorithm trained, on copies that keep the user's constructor argument (episodes of 7 steps).
    assert lines[:4] == [f"{name} 200 [7]" for name in ("A3C", "OffPolicyAC", "AsyncQLearning", "AsyncSARSA")]
    # A sub-env that truly cannot be copied: the error names the part and the fix, and the SubprocVecEnv still works.
    assert re.match(r"refused: .*sub-env 0: env\.connection_lock \(a _thread\.lock\) cannot be pickled.*callable", lines[4])
    assert lines[5] == "still usable: (1, 3)"


def test_unpicklable_registered_env_falls_back_to_its_spec(no_leaks):
    env = gym.make("LunarLander-v3")
    env.reset(seed=0)  # now holds a Box2D world, which cannot be pickled
    A3C("MlpPolicy", env, n_workers=2, seed=0, device="cpu").learn(100)


def test_an_env_made_before_a_library_patched_its_wrapper_class_trains(monkeypatch, no_leaks):
    # rl-zoo3 does this on import: gymnasium.wrappers.TimeLimit = PatchedTimeLimit, a subclass. An env made before
    # holds the original class, which its name no longer finds; copied by value, that class's super() failed in
    # the workers ("super(type, obj): obj must be an instance or subtype of type", 2026-11-27, from a benchmark
    # that made its env before importing sb3_async.zoo).
    env = make_vec_env("Pendulum-v1", n_envs=1, seed=0)
    time_limit = type(env.envs[0].env)
    assert time_limit.__name__.endswith("TimeLimit")

    class PatchedTimeLimit(time_limit):
        pass

    monkeypatch.setattr(sys.modules[time_limit.__module__], time_limit.__qualname__, PatchedTimeLimit)
    copy = pickle.loads(pickle_env_copy(env.envs[0]))
    assert type(copy.env) is time_limit
    A3C("MlpPolicy", VecNormalize(env), n_workers=2, seed=0, device="cpu").learn(200)


def step_locals(model_class, env, **kwargs) -> dict[str, object]:
    recorder = LocalsRecorder()
    model_class("MlpPolicy", env, seed=0, device="cpu", **kwargs).learn(64, callback=recorder)
    return recorder.shapes[-1]


@pytest.mark.parametrize(
    "sb3_class, sb3_kwargs, async_class, async_kwargs",
    [
        (A2C, dict(n_steps=4), A3C, dict(n_steps=4)),
        (DQN, dict(learning_starts=0, train_freq=4), AsyncQLearning, dict(train_freq=4)),
    ],
    ids=["a2c-a3c", "dqn-async_q"],
)
def test_callback_locals_match_sb3s(sb3_class, sb3_kwargs, async_class, async_kwargs, no_leaks):
    sb3_locals = step_locals(sb3_class, make_vec_env("CartPole-v1", n_envs=4), **sb3_kwargs)
    async_locals = step_locals(async_class, "CartPole-v1", n_workers=2, envs_per_worker=2, **async_kwargs)
    assert async_locals.pop("self") == async_class.__name__
    # Every key SB3 passes, with the same type and shape, but the buffer the learner does not have and
    # the variables SB3's loop over the infos leaves behind.
    not_in_learner = {"self", "rollout_buffer", "replay_buffer", "idx", "done"}
    expected = {key: value for key, value in sb3_locals.items() if key not in not_in_learner}
    assert {key: async_locals.get(key) for key in expected} == expected


def test_every_env_step_reaches_the_callbacks_once(no_leaks):
    recorder = LocalsRecorder()
    model = A3C("MlpPolicy", "CartPole-v1", n_workers=2, envs_per_worker=3, n_steps=5, seed=0, device="cpu")
    model.learn(3_000, callback=recorder)
    rewards = np.concatenate(recorder.rewards)
    assert len(rewards) == model.num_timesteps
    assert (rewards == 1.0).all()  # the env's reward, not the truncation-bootstrapped one
    # The episodes the callbacks saw ended (dones) are exactly those with Monitor's statistics in their infos.
    dones = np.concatenate(recorder.dones)
    assert dones.sum() == sum("episode" in info for info in recorder.infos) > 10
    ended_lengths = [info["episode"]["l"] for info in recorder.infos if "episode" in info]
    assert [episode["l"] for episode in model.ep_info_buffer] == ended_lengths[-len(model.ep_info_buffer) :]


class BatchNormExtractor(BaseFeaturesExtractor):
    def __init__(self, observation_space: spaces.Box):
        super().__init__(observation_space, features_dim=16)
        self.net = th.nn.Sequential(
            th.nn.BatchNorm1d(observation_space.shape[0]), th.nn.Linear(observation_space.shape[0], 16), th.nn.ReLU()
        )

    def forward(self, observations: th.Tensor) -> th.Tensor:
        return self.net(observations)


@pytest.mark.parametrize("update_mode", ["learner", "hogwild"])
@pytest.mark.parametrize("algo", ["a3c", "async_q"])
def test_batch_norm_statistics_reach_the_learner(algo, update_mode, tmp_path, no_leaks):
    algo_class, algo_kwargs = ALGOS[algo]
    model = algo_class(
        "MlpPolicy",
        ShiftedObsEnv(shift=5.0),
        n_workers=2,
        envs_per_worker=8,  # batches of 40 or more, so that a batch's variance is a steady estimate
        seed=0,
        device="cpu",
        update_mode=update_mode,
        policy_kwargs=dict(features_extractor_class=BatchNormExtractor),
        **algo_kwargs,
    )
    batch_norm = next(module for module in model.policy.modules() if isinstance(module, th.nn.BatchNorm1d))
    assert th.allclose(batch_norm.running_mean, th.zeros(3))
    model.learn(4_000)
    # Every applied gradient's forward pass in training mode moved the statistics once, as in A2C's train().
    assert int(batch_norm.num_batches_tracked) == model._n_updates
    # And they reflect the training data: observations are 5 + N(0, 1).
    assert th.allclose(batch_norm.running_mean, th.full((3,), 5.0), atol=0.5)
    assert th.allclose(batch_norm.running_var, th.ones(3), atol=0.5)
    model.save(tmp_path / "model")
    loaded = algo_class.load(tmp_path / "model", device="cpu")
    loaded_batch_norm = next(module for module in loaded.policy.modules() if isinstance(module, th.nn.BatchNorm1d))
    assert th.equal(loaded_batch_norm.running_mean, batch_norm.running_mean)


class EvalStatisticsRecorder(EvalCallback):
    """EvalCallback that notes, at each evaluation, the training and eval envs' observation statistics."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: list[tuple[np.ndarray, np.ndarray]] = []

    def _on_step(self) -> bool:
        continue_training = super()._on_step()
        if self.eval_freq > 0 and self.n_calls % self.eval_freq == 0:
            self.seen.append((self.training_env.obs_rms.mean.copy(), self.eval_env.obs_rms.mean.copy()))
        return continue_training


def test_eval_callback_syncs_vec_normalize_statistics_as_with_a2c(no_leaks):
    env = VecNormalize(make_vec_env(ShiftedObsEnv, n_envs=2), norm_reward=False)
    eval_env = VecNormalize(make_vec_env(ShiftedObsEnv, n_envs=1), training=False, norm_reward=False)
    callback = EvalStatisticsRecorder(eval_env, eval_freq=50, n_eval_episodes=1)
    model = A3C("MlpPolicy", env, n_workers=2, seed=0, device="cpu")
    model.learn(1_000, callback=callback)
    assert len(callback.seen) >= 2
    for training_mean, eval_mean in callback.seen:
        np.testing.assert_array_equal(training_mean, eval_mean)
    # The training statistics are the workers' merged ones: observations are 5 + N(0, 1).
    np.testing.assert_allclose(callback.seen[-1][0], 5.0, atol=0.3)
    assert model.get_vec_normalize_env() is env
    assert model.get_env().env_is_wrapped(Monitor) == [True, True]


def test_set_env_takes_a_new_env_instance(no_leaks):
    model = A3C("MlpPolicy", ShiftedObsEnv(), n_workers=2, seed=0, device="cpu").learn(100)
    new_env = ShiftedObsEnv(shift=-1.0)
    model.set_env(new_env)
    assert model.get_env().envs[0].unwrapped is new_env
    assert model._worker_env_factory().build(0).envs[0].unwrapped.shift == -1.0
    model.learn(100, reset_num_timesteps=False)
    assert model.num_timesteps >= 200


def test_a3c_learns_sb3s_identity_env(no_leaks):
    """SB3's identity test, made harder (10 actions instead of 4): the mean reward over a 100-step episode is >= 90."""
    env = IdentityEnv(10)
    model = A3C("MlpPolicy", env, n_workers=2, envs_per_worker=4, gamma=0.4, seed=0, device="cpu")
    model.learn(30_000)
    mean_reward, _ = evaluate_policy(model, model.get_env(), n_eval_episodes=20, deterministic=True)
    assert mean_reward >= 90, f"mean reward {mean_reward} over 100-step episodes"


class WorkerThreads(BaseCallback):
    """Counts the threads of every worker process once training runs."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[int] = []

    def _on_step(self) -> bool:
        if not self.threads:
            self.threads = [len(os.listdir(f"/proc/{pid}/task")) for pid in self.locals["collector"].worker_pids]
        return True


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
def test_workers_start_alike_after_another_library_started_pythons_forkserver(no_leaks):
    # SB3's SubprocVecEnv starts Python's forkserver (without sb3_async's preload) before A3C does.
    make_vec_env("CartPole-v1", n_envs=2, vec_env_cls=SubprocVecEnv, vec_env_kwargs=dict(start_method="forkserver")).close()
    threads = WorkerThreads()
    A3C("MlpPolicy", "CartPole-v1", n_workers=2, seed=0, device="cpu").learn(200, callback=threads)
    # Forked from sb3_async's own preloaded server: one thread each, no torch thread pool of their own.
    assert threads.threads == [1, 1]
