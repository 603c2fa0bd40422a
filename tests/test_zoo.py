"""sb3_async.zoo: sb3_async's algorithms through rl-zoo3's own train / optimize / enjoy scripts."""

import argparse
import pickle
import re
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import optuna
import pytest
import yaml
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from sb3_async import A3C, IMPALA, AsyncQLearning, AsyncSARSA, OffPolicyAC
from sb3_async.zoo import AsyncExperimentManager, main
from sb3_async.zoo.experiment import config_kwargs, default_config_path, split_envs
from sb3_async.zoo.hyperparams_opt import CONVERTERS, SAMPLERS
from sb3_async.zoo.time_objective import TimeToTargetCallback
from tests.conftest import forkserver_children

ALGO_CLASSES = {
    "a3c": A3C,
    "a3c_lstm": A3C,
    "offpac": OffPolicyAC,
    "impala": IMPALA,
    "async_q": AsyncQLearning,
    "async_sarsa": AsyncSARSA,
}
MINATAR_GAMES = {f"MinAtar/{game}-v1" for game in ("Breakout", "SpaceInvaders", "Freeway", "Asterix", "Seaquest")}
# The env each config entry is built for: its own id, an Atari game for "atari", any other env for "default".
ENTRY_ENV = {"atari": "PongNoFrameskip-v4", "default": "MountainCar-v0"}


def config_entries():
    for algo in ALGO_CLASSES:
        for entry in yaml.safe_load(default_config_path(algo).read_text()):
            yield pytest.param(algo, entry, id=f"{algo}-{entry}")


def journal_study(path: Path, name: str) -> optuna.Study:
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    return optuna.load_study(study_name=name, storage=storage)


def test_every_required_env_has_an_entry_in_every_config():
    discrete = {"CartPole-v1", "Acrobot-v1", "LunarLander-v3", "default", "atari"}
    required = {
        "a3c": discrete | {"Pendulum-v1", "MountainCarContinuous-v0"} | MINATAR_GAMES,
        # The recurrent agent's entries: partially observed tasks and pixels.
        "a3c_lstm": {"default", "atari", "CartPoleNoVel-v1"} | MINATAR_GAMES,
        "offpac": discrete | {"Pendulum-v1", "MountainCarContinuous-v0"},
        "impala": {"CartPole-v1", "Acrobot-v1", "LunarLander-v3"} | MINATAR_GAMES,
        # The Q-learning methods act in Discrete spaces only.
        "async_q": discrete,
        "async_sarsa": discrete,
    }
    assert set(required) == set(ALGO_CLASSES)
    for algo, entries in required.items():
        assert entries <= set(yaml.safe_load(default_config_path(algo).read_text())), algo


@pytest.mark.parametrize("algo, entry", config_entries())
def test_config_entry_loads_and_builds_its_model_and_worker_envs(algo, entry, tmp_path, no_leaks):
    env_id = ENTRY_ENV.get(entry, entry)
    manager = AsyncExperimentManager(argparse.Namespace(), algo, env_id, str(tmp_path), eval_freq=-1, verbose=0)
    model, saved_hyperparams = manager.setup_experiment()
    try:
        assert isinstance(model, ALGO_CLASSES[algo])
        assert model.n_workers * model.envs_per_worker == saved_hyperparams["n_envs"]
        assert (model.get_vec_normalize_env() is not None) == bool(saved_hyperparams.get("normalize", False))
        # One worker's envs, built in this process exactly as a worker process builds them.
        factory = model._worker_env_factory()
        worker_env = factory.build(worker_id=1, normalization=model._normalization_statistics())
        try:
            assert worker_env.num_envs == model.envs_per_worker
            assert worker_env.observation_space == model.observation_space
            assert worker_env.action_space == model.action_space
            worker_env.reset()
            worker_env.step(np.array([worker_env.action_space.sample() for _ in range(worker_env.num_envs)]))
        finally:
            worker_env.close()
    finally:
        model.env.close()


def test_a3c_trains_on_pong_through_the_atari_entry_with_16_workers(tmp_path, no_leaks):
    # The paper's setting as the zoo ships it: AtariWrapper, 4 stacked frames, CnnPolicy, 16 workers x 1 env.
    logs = tmp_path / "logs"
    # 3k steps, about 37 updates of 5 steps from 16 workers: starting the 16 is most of the time this takes.
    main(["train", "--algo", "a3c", "--env", "PongNoFrameskip-v4", "-n", "3000", "-f", str(logs), "--eval-freq", "-1",
          "--seed", "0"])  # fmt: skip
    model = A3C.load(logs / "a3c" / "PongNoFrameskip-v4_1" / "PongNoFrameskip-v4.zip", device="cpu")
    assert (model.n_workers, model.envs_per_worker) == (16, 1) and model.num_timesteps >= 3_000
    assert model._n_updates >= 3_000 // (16 * 5)
    assert model.observation_space.shape == (4, 84, 84)


def test_backend_and_restarts_come_from_the_command_line_hyperparameters(tmp_path):
    # rl-zoo3's --hyperparams override the config entry, as for any constructor argument.
    overrides = {"backend": "ray", "max_worker_restarts": 2, "ray_actor_options": {"num_cpus": 1}}
    manager = AsyncExperimentManager(
        argparse.Namespace(), "a3c", "CartPole-v1", str(tmp_path), eval_freq=-1, verbose=0, hyperparams=overrides
    )
    model, _ = manager.setup_experiment()  # built, not trained: no Ray starts
    assert (model.backend, model.max_worker_restarts, model.ray_actor_options) == ("ray", 2, {"num_cpus": 1})


def test_n_envs_is_split_between_workers():
    assert split_envs(8, 2) == (2, 4)
    assert split_envs(16, None)[0] * split_envs(16, None)[1] == 16
    with pytest.raises(ValueError, match="divisor of n_envs=8"):
        split_envs(8, 3)


def test_a_config_that_sets_envs_per_worker_is_refused(tmp_path):
    config = tmp_path / "a3c.yml"
    config.write_text("CartPole-v1:\n  n_envs: 8\n  envs_per_worker: 4\n  n_timesteps: 1000\n  policy: MlpPolicy\n")
    manager = AsyncExperimentManager(
        argparse.Namespace(), "a3c", "CartPole-v1", str(tmp_path), eval_freq=-1, config=str(config)
    )
    with pytest.raises(ValueError, match="do not set envs_per_worker"):
        manager.setup_experiment()


@pytest.mark.parametrize(
    "algo, sampled",
    [("a3c", {"n_workers", "learning_rate", "n_steps", "one_minus_gae_lambda"}),
     ("async_q", {"n_workers", "learning_rate", "n_steps", "train_freq", "target_update_interval", "exploration_fraction"})],
)  # fmt: skip
def test_optimize_records_two_trials_and_leaves_no_process_behind(algo, sampled, tmp_path, monkeypatch, no_leaks):
    storage = tmp_path / f"{algo}.log"
    workers_alive_when_a_trial_starts = []
    objective = AsyncExperimentManager.objective

    def recording_objective(self, trial):
        workers_alive_when_a_trial_starts.append(forkserver_children())
        return objective(self, trial)

    monkeypatch.setattr(AsyncExperimentManager, "objective", recording_objective)
    main(
        ["train", "--algo", algo, "--env", "CartPole-v1", "-f", str(tmp_path / "logs"), "-n", "3000",
         "-optimize", "--n-trials", "2", "--n-evaluations", "1", "--eval-episodes", "2",
         "--sampler", "random", "--pruner", "median", "--storage", str(storage), "--study-name", f"{algo}-test",
         "--no-optim-plots", "--seed", "3"]
    )  # fmt: skip
    trials = journal_study(storage, f"{algo}-test").trials
    assert len(trials) == 2
    assert workers_alive_when_a_trial_starts == [[], []]  # trial 0's workers were gone before trial 1
    assert [trial.state for trial in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert all(np.isfinite(trial.value) and trial.value > 0 for trial in trials)
    assert sampled <= set(trials[0].params)
    assert "log_std_init" not in trials[0].params  # Discrete actions: no Gaussian to explore with


@pytest.mark.parametrize("objective", ["reward", "time"])
def test_the_impala_sampler_gives_arguments_impala_takes(objective):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        trial = study.ask()
        trial.set_user_attr("objective", objective)
        kwargs = SAMPLERS["impala"](trial, n_actions=2, n_envs=8, additional_args={})
        assert "update_mode" not in kwargs and "update_mode" not in trial.params  # its learner applies every update
        assert {"batch_size", "n_steps", "learning_rate", "c_bar"} <= set(kwargs)
        assert CONVERTERS["impala"](trial.params) | {"envs_per_worker": kwargs["envs_per_worker"]} == kwargs
        if objective == "reward":
            model = IMPALA("MlpPolicy", "CartPole-v1", device="cpu", **kwargs)
            assert model.n_workers * model.envs_per_worker == 8


@pytest.mark.parametrize("name, algo, gsde", [("a3c", A3C, True), ("offpac", OffPolicyAC, True), ("impala", IMPALA, False)])
def test_for_box_actions_the_samplers_search_the_gaussians_exploration(name, algo, gsde):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(4):
        trial = study.ask()
        kwargs = SAMPLERS[name](trial, n_actions=1, n_envs=4, additional_args={})
        assert kwargs["policy_kwargs"]["log_std_init"] == trial.params["log_std_init"]
        assert ("use_sde" in kwargs) == gsde
        assert CONVERTERS[name](trial.params) | {"envs_per_worker": kwargs["envs_per_worker"]} == kwargs
        model = algo("MlpPolicy", "Pendulum-v1", device="cpu", **kwargs)
        assert model.policy.log_std.detach().mean().item() == pytest.approx(trial.params["log_std_init"])
        assert model.policy.use_sde == kwargs.get("use_sde", False)


def test_the_zoo_tells_the_samplers_when_the_actions_are_continuous(tmp_path, no_leaks):
    storage = tmp_path / "offpac.log"
    main(
        ["train", "--algo", "offpac", "--env", "Pendulum-v1", "-f", str(tmp_path / "logs"), "-n", "400",
         "-optimize", "--n-trials", "1", "--n-evaluations", "1", "--eval-episodes", "1", "--sampler", "random",
         "--storage", str(storage), "--study-name", "offpac-box", "--no-optim-plots", "--seed", "0"]
    )  # fmt: skip
    (trial,) = journal_study(storage, "offpac-box").trials
    assert {"log_std_init", "use_sde"} <= set(trial.params)


def test_a_trial_whose_worker_crashes_is_pruned_and_the_study_goes_on(tmp_path, capsys, no_leaks):
    storage = tmp_path / "crash.log"
    config = tmp_path / "offpac.yml"
    config.write_text("CartPoleThatCrashes-v0:\n  n_envs: 2\n  n_workers: 2\n  n_timesteps: 5000\n  policy: MlpPolicy\n")
    main(
        ["train", "--algo", "offpac", "--env", "CartPoleThatCrashes-v0", "--gym-packages", "tests.zoo_envs",
         "--conf-file", str(config), "-f", str(tmp_path / "logs"), "-optimize", "--n-trials", "2",
         "--n-evaluations", "1", "--sampler", "random", "--storage", str(storage), "--study-name", "crash",
         "--no-optim-plots"]
    )  # fmt: skip
    trials = journal_study(storage, "crash").trials
    assert [trial.state for trial in trials] == [optuna.trial.TrialState.PRUNED] * 2
    assert "No trial completed" in capsys.readouterr().out


def test_the_time_objective_ranks_trials_by_seconds_to_the_target_and_misses_below(tmp_path, no_leaks):
    # A 100-episode training mean of 15 on CartPole is reached by any policy (a random one scores about 22),
    # as soon as 100 episodes have ended: every trial hits, and its value is minus its seconds.
    storage = tmp_path / "time.log"
    common = ["--algo", "a3c", "--env", "CartPole-v1", "-f", str(tmp_path / "logs"), "--storage", str(storage),
              "--seed", "2"]  # fmt: skip
    main(["train", *common, "--study-name", "hits", "-n", "200000", "-optimize", "--n-trials", "2", "--sampler", "random",
          "--objective", "time", "--target-score", "15", "--time-budget", "60", "--no-optim-plots"])  # fmt: skip
    trials = journal_study(storage, "hits").trials
    assert [trial.state for trial in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    for trial in trials:
        assert trial.user_attrs["objective"] == "time"
        assert {"n_workers", "envs_per_worker", "update_mode", "learning_rate"} <= set(trial.params)
        assert 0 < trial.user_attrs["seconds_to_target"] < 60
        assert trial.value == pytest.approx(-trial.user_attrs["seconds_to_target"])
        assert trial.user_attrs["final_training_mean"] >= 15 and trial.user_attrs["episodes_after_reaching"] >= 100

    # A target no trial reaches: the trial stops at its time budget and ranks below any hit, by its final mean.
    main(["train", *common, "--study-name", "miss", "-n", "1000000", "-optimize", "--n-trials", "1", "--sampler", "random",
          "--objective", "time", "--target-score", "5000", "--time-budget", "4", "--no-optim-plots"])  # fmt: skip
    (miss,) = journal_study(storage, "miss").trials
    assert miss.user_attrs["seconds_to_target"] is None and 4 <= miss.user_attrs["seconds"] < 30
    shortfall = (5000 - miss.user_attrs["final_training_mean"]) / 5000
    assert miss.value == pytest.approx(-4 * (1 + shortfall)) and miss.value < -4

    # --trial-id reproduces a time trial with the layout it chose, which no config could set.
    main(["train", *common, "--study-name", "hits", "-n", "200", "--trial-id", "1", "--eval-freq", "-1"])
    params = trials[1].params
    model = A3C.load(next((tmp_path / "logs" / "a3c").glob("CartPole-v1_*/CartPole-v1.zip")), device="cpu")
    for key in ("n_workers", "envs_per_worker"):
        assert params[key] == "auto" or getattr(model, key) == params[key]
    assert model.update_mode == params["update_mode"]


class _Trial:
    """What TimeToTargetCallback asks of an Optuna trial."""

    def __init__(self):
        self.reports: list[tuple[float, int]] = []

    def report(self, value: float, step: int) -> None:
        self.reports.append((value, step))

    def should_prune(self) -> bool:
        return False


@pytest.mark.parametrize("returns_after, holds", [(20.0, True), (5.0, False)])
def test_a_hit_of_the_time_objective_counts_only_if_the_episodes_after_it_hold_the_target(returns_after, holds):
    callback = TimeToTargetCallback(DummyVecEnv([lambda: gym.make("CartPole-v1")]), _Trial(), target=15, time_budget=60)
    callback.started = time.perf_counter()

    def episodes_end(episode_return: float, count: int) -> list[bool]:
        callback.locals = {"infos": [{"episode": {"r": episode_return}}] * count}
        return [callback._on_step()]

    assert episodes_end(10.0, 99) == [True]  # 99 episodes: not yet a full window
    assert episodes_end(20.0, 60) == [True]  # the last 100 average 16: reached, and now it must hold
    reached_at = callback.reached_at
    assert reached_at is not None and callback.seconds_to_target is None
    assert episodes_end(returns_after, 99) == [True]
    assert episodes_end(returns_after, 1) == [False]  # 100 episodes after reaching it: judged
    if holds:
        assert callback.seconds_to_target == reached_at and callback.value == -reached_at
    else:  # a miss, ranked by the mean after the hit: 5, a third of the target short
        assert callback.seconds_to_target is None and callback.value == pytest.approx(-60 * (1 + 10 / 15))


def test_the_time_objective_needs_optimize_and_a_target():
    with pytest.raises(SystemExit):
        main(["train", "--algo", "a3c", "--env", "CartPole-v1", "--objective", "time"])
    with pytest.raises(ValueError, match="no reward threshold"):
        AsyncExperimentManager(
            argparse.Namespace(), "a3c", "Blackjack-v1", "/tmp", objective="time", optimize_hyperparameters=True
        )
    with pytest.raises(ValueError, match="objective must be one of"):
        AsyncExperimentManager(argparse.Namespace(), "a3c", "CartPole-v1", "/tmp", objective="seconds")


def test_a_trial_normalizes_rewards_with_the_gamma_it_sampled(tmp_path, monkeypatch, no_leaks):
    # rl-zoo3 alone would give VecNormalize the config's gamma (0.9 here) whatever gamma the trial drew.
    config = tmp_path / "a3c.yml"
    config.write_text("CartPole-v1:\n  normalize: true\n  n_envs: 2\n  gamma: 0.9\n  n_timesteps: 500\n  policy: MlpPolicy\n")
    normalized = []
    maybe_normalize = AsyncExperimentManager._maybe_normalize

    def recording(self, env, eval_env):
        env = maybe_normalize(self, env, eval_env)
        normalized.append(env.gamma)
        return env

    monkeypatch.setattr(AsyncExperimentManager, "_maybe_normalize", recording)
    storage = tmp_path / "gamma.log"
    main(["train", "--algo", "a3c", "--env", "CartPole-v1", "--conf-file", str(config), "-f", str(tmp_path / "logs"),
          "-optimize", "--n-trials", "1", "--n-evaluations", "1", "--eval-episodes", "1", "--sampler", "random",
          "--storage", str(storage), "--study-name", "gamma", "--no-optim-plots", "--seed", "0"])  # fmt: skip
    (trial,) = journal_study(storage, "gamma").trials
    assert trial.user_attrs["gamma"] != 0.9
    # rl-zoo3 first builds an env outside any trial (for the action space); the trial's train and eval envs follow.
    assert normalized == pytest.approx([0.9, trial.user_attrs["gamma"], trial.user_attrs["gamma"]])


def test_trial_id_reproduces_the_trial(tmp_path, no_leaks):
    storage = tmp_path / "offpac.log"
    common = ["--algo", "offpac", "--env", "CartPole-v1", "-f", str(tmp_path / "logs"), "--storage", str(storage),
              "--study-name", "offpac-test", "--seed", "1"]  # fmt: skip
    main(["train", *common, "-n", "1000", "-optimize", "--n-trials", "2", "--n-evaluations", "1", "--eval-episodes", "1",
          "--sampler", "random", "--no-optim-plots"])  # fmt: skip
    # rl-zoo3 reads --trial-id only when it is not 0, so reproduce trial 1.
    main(["train", *common, "-n", "500", "--trial-id", "1", "--eval-freq", "-1"])
    params = journal_study(storage, "offpac-test").trials[1].params
    # The optimisation made logs/offpac/CartPole-v1_1; the reproduction is the next run.
    model = OffPolicyAC.load(tmp_path / "logs" / "offpac" / "CartPole-v1_2" / "CartPole-v1.zip")
    assert model.n_workers == params["n_workers"] and model.n_workers * model.envs_per_worker == 8
    assert model.lr_schedule(1.0) == pytest.approx(params["learning_rate"])  # rl-zoo3 makes it a constant schedule
    assert model.gamma == pytest.approx(1 - params["one_minus_gamma"])
    assert model.rho_bar == params["rho_bar"] and model.replay_ratio == params["replay_ratio"]
    assert model.trace_lambda == params["trace_lambda"]
    assert model.buffer_size == 10 ** params["buffer_size_pow"]
    epsilon = params["behavior_epsilon"]
    if epsilon == 0:
        assert model.behavior_policy == "target"
    else:  # saved as JSON, so the tuple comes back as a list
        assert list(model.behavior_policy) == ["epsilon", epsilon]


def test_train_then_enjoy_reproduces_the_last_evaluation_with_normalize(tmp_path, capsys, no_leaks):
    config = tmp_path / "a3c.yml"
    config.write_text(
        "CartPole-v1:\n  normalize: true\n  n_envs: 4\n  n_workers: 2\n  n_timesteps: 60000\n  policy: MlpPolicy\n"
    )
    logs = tmp_path / "logs"
    main(["train", "--algo", "a3c", "--env", "CartPole-v1", "--conf-file", str(config), "-f", str(logs),
          "--eval-freq", "20000", "--eval-episodes", "10", "--seed", "0"])  # fmt: skip
    run = logs / "a3c" / "CartPole-v1_1"
    # The saved statistics are the learner's, merged from every worker's observations.
    with open(run / "CartPole-v1" / "vecnormalize.pkl", "rb") as file:
        vec_normalize: VecNormalize = pickle.load(file)  # what VecNormalize.load reads
    assert vec_normalize.obs_rms.count >= 60_000
    last_evaluation = float(np.load(run / "evaluations.npz")["results"][-1].mean())
    assert last_evaluation >= 100, f"A3C did not learn enough to compare ({last_evaluation})"
    capsys.readouterr()
    main(["enjoy", "--algo", "a3c", "--env", "CartPole-v1", "-f", str(logs), "--no-render", "-n", "5000", "--seed", "0"])
    enjoyed = float(re.search(r"Mean reward: ([-\d.]+)", capsys.readouterr().out).group(1))
    assert enjoyed == pytest.approx(last_evaluation, rel=0.25), (
        f"enjoy {enjoyed} vs training's last evaluation {last_evaluation}"
    )


def test_unknown_script_says_which_exist():
    with pytest.raises(SystemExit, match="train,enjoy"):
        main(["fly"])


def test_config_kwargs_are_what_the_zoo_gives_the_constructor():
    # A3C's Pendulum entry: n_envs 8 over 2 workers, a lin_ learning rate, policy_kwargs as a string.
    kwargs = config_kwargs("a3c", "Pendulum-v1")
    assert (kwargs["n_workers"], kwargs["envs_per_worker"]) == (2, 4)
    assert kwargs["learning_rate"](1.0) == pytest.approx(7e-4) and kwargs["learning_rate"](0.5) == pytest.approx(3.5e-4)
    assert kwargs["policy_kwargs"] == dict(log_std_init=-2, ortho_init=False)
    assert not {"n_envs", "n_timesteps", "policy", "normalize"} & set(kwargs)
    model = A3C("MlpPolicy", "Pendulum-v1", device="cpu", **kwargs)  # every key is a constructor argument
    assert model.use_sde and model.n_workers == 2
    offpac = OffPolicyAC("MlpPolicy", "Pendulum-v1", device="cpu", **config_kwargs("offpac", "Pendulum-v1"))
    assert offpac.use_sde and offpac.trace_lambda == 0.95 and offpac.replay_ratio == 0.0
    assert (offpac.n_workers, offpac.envs_per_worker, offpac.update_mode) == (4, 2, "hogwild")
