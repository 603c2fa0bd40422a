"""
rl-zoo3's ExperimentManager, taught what is different about an asynchronous algorithm. Everything
else (config files, schedules, VecNormalize, callbacks, Optuna studies, saving) is rl-zoo3's own.

- **Default config**: ``zoo_configs/<algo>.yml`` of this package, unless ``--conf-file`` is given.
- **n_envs is the total number of envs**, as in rl-zoo3's A2C configs; ``n_workers`` splits them,
  and ``envs_per_worker = n_envs // n_workers`` is derived (a config must not set it). rl-zoo3
  scales its evaluation and checkpoint frequencies by ``n_envs``, and our algorithms call
  ``on_step`` once per ``n_envs`` env steps, so those frequencies stay right.
- **Envs**: the learner never steps its env, so it gets one; the workers build the ``n_envs`` that
  do with the same recipe rl-zoo3 uses (its ``make_env``, ``env_kwargs``, ``env_wrapper``, Monitor
  settings and log folder; the VecNormalize and frame stacking around them are re-applied by the
  workers from the learner env's wrappers).
- **A trial whose workers fail** (an env or the loss raising, e.g. on NaN) is pruned, as rl-zoo3
  prunes trials that raise ValueError, instead of ending the study; so is a trial whose score is
  not finite. Workers are stopped at the end of every ``learn()``, so trials do not pile up processes.
- **A trial's VecNormalize takes the gamma the trial drew**, not the config's, as the entry made
  from it will.
- **The wall-clock objective** (``objective="time"``, ``--objective time`` on the command line): a
  trial's value is minus its seconds to ``target_score``, within ``time_budget`` seconds
  (:mod:`sb3_async.zoo.time_objective`); rl-zoo3's objective stays the default.
"""

import functools
import importlib
import math
import time
from pathlib import Path
from typing import Any
from unittest import mock

import gymnasium as gym
import optuna
import rl_zoo3.exp_manager
from rl_zoo3.exp_manager import ExperimentManager
from rl_zoo3.hyperparams_opt import HYPERPARAMS_CONVERTER, HYPERPARAMS_SAMPLER
from rl_zoo3.utils import ALGOS
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecEnv

from sb3_async import A3C, IMPALA, AsyncQLearning, AsyncSARSA, OffPolicyAC
from sb3_async.common.async_algorithm import default_n_workers
from sb3_async.common.collectors import WorkerError
from sb3_async.common.torch_layers import MinAtarCNN
from sb3_async.common.env_recipes import RECIPE_ATTRIBUTE, VecEnvRecipe
from sb3_async.zoo.hyperparams_opt import CONVERTERS, SAMPLERS
from sb3_async.zoo.minatar import register_minatar_envs
from sb3_async.zoo.time_objective import OBJECTIVES, TimeToTargetCallback, threshold_for

# a3c_lstm is A3C with its own config file of recurrent entries, as rl-zoo3's ppo_lstm is RecurrentPPO.
ASYNC_ALGOS: dict[str, type[BaseAlgorithm]] = {
    "a3c": A3C,
    "a3c_lstm": A3C,
    "offpac": OffPolicyAC,
    "impala": IMPALA,
    "async_q": AsyncQLearning,
    "async_sarsa": AsyncSARSA,
}


def register() -> None:
    """
    Add ``a3c``, ``a3c_lstm``, ``offpac``, ``impala``, ``async_q`` and ``async_sarsa`` to rl-zoo3's algorithm, sampler
    and converter tables, and register MinAtar's env ids if it is installed. rl-zoo3 has no plugin entry
    point; its scripts read these tables when they build their parsers, so this must run before them
    (``sb3_async.zoo.main`` and :class:`AsyncExperimentManager` do it).
    """
    register_minatar_envs()
    ALGOS.update(ASYNC_ALGOS)
    HYPERPARAMS_SAMPLER.update(SAMPLERS)
    HYPERPARAMS_CONVERTER.update(CONVERTERS)


def default_config_path(algo: str) -> Path:
    """This package's rl-zoo3 config file for ``algo`` (``zoo_configs/<algo>.yml``)."""
    zoo_configs = importlib.import_module("sb3_async.zoo_configs")  # the repository's zoo_configs/, as package data
    return Path(zoo_configs.__path__[0]) / f"{algo}.yml"


# Keys of a zoo config entry that describe the env or the run, not the model's constructor.
RUN_SETTINGS = ("n_timesteps", "policy", "normalize", "env_wrapper", "vec_env_wrapper", "frame_stack", "callback")


def config_entry(algo: str, env_id: str) -> dict[str, Any]:
    """The raw entry for ``env_id`` in ``zoo_configs/<algo>.yml``."""
    import yaml

    return dict(yaml.safe_load(default_config_path(algo).read_text())[env_id])


def config_kwargs(algo: str, env_id: str) -> dict[str, Any]:
    """
    The keyword arguments that the zoo's entry for ``env_id`` gives ``algo``'s constructor, for training
    what ships without the zoo's command line (the learning tests and benchmarks do): ``policy_kwargs``
    evaluated as rl-zoo3 does, ``lin_<x>`` learning rates as linear schedules, and ``n_envs`` split into
    ``n_workers`` and ``envs_per_worker``. The run's settings (``RUN_SETTINGS``) are left out.
    """
    from rl_zoo3.utils import linear_schedule

    kwargs = {key: value for key, value in config_entry(algo, env_id).items() if key not in RUN_SETTINGS}
    if isinstance(kwargs.get("policy_kwargs"), str):
        kwargs["policy_kwargs"] = evaluate_policy_kwargs(kwargs["policy_kwargs"])
    if isinstance(kwargs.get("learning_rate"), str) and kwargs["learning_rate"].startswith("lin_"):
        kwargs["learning_rate"] = linear_schedule(float(kwargs["learning_rate"][len("lin_") :]))
    kwargs["n_workers"], kwargs["envs_per_worker"] = split_envs(kwargs.pop("n_envs", 1), kwargs.get("n_workers"))
    return kwargs


def evaluate_policy_kwargs(policy_kwargs: str) -> dict[str, Any]:
    """A config's ``policy_kwargs`` string, evaluated as rl-zoo3 does, with sb3_async's features extractors as names too."""
    return eval(policy_kwargs, {**vars(rl_zoo3.exp_manager), "MinAtarCNN": MinAtarCNN})


def split_envs(n_envs: int, n_workers: int | None) -> tuple[int, int]:
    """``(n_workers, envs_per_worker)`` for ``n_envs`` envs in all; by default one worker per core."""
    if n_workers is None:
        n_workers = max(n for n in range(1, min(n_envs, default_n_workers()) + 1) if n_envs % n == 0)
    if not isinstance(n_workers, int) or n_workers < 1 or n_envs % n_workers != 0:
        raise ValueError(f"n_workers={n_workers!r} must be a positive divisor of n_envs={n_envs} (the total number of envs)")
    return n_workers, n_envs // n_workers


class AsyncExperimentManager(ExperimentManager):
    """
    :class:`rl_zoo3.exp_manager.ExperimentManager` for sb3_async's algorithms too (see the module docstring).

    :param args: rl-zoo3's arguments
    :param objective: what ``-optimize`` maximizes: ``"score"`` (rl-zoo3's: the evaluation after
        ``n_timesteps``) or ``"time"`` (minus the seconds until the 100-episode training mean
        reaches ``target_score``)
    :param target_score: the wall-clock objective's target (default: the env's reward threshold)
    :param time_budget: the wall-clock objective's seconds per trial
    :param hold_episodes: the wall-clock objective's episodes after a hit whose mean must reach the target too
    :param kwargs: rl-zoo3's keyword arguments
    """

    def __init__(
        self,
        *args: Any,
        objective: str = "score",
        target_score: float | None = None,
        time_budget: float = 300.0,
        hold_episodes: int = 100,
        **kwargs: Any,
    ):
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        if objective == "time" and not (isinstance(time_budget, (int, float)) and time_budget > 0):
            raise ValueError(f"time_budget must be a number of seconds > 0, got {time_budget!r}")
        if not isinstance(hold_episodes, int) or hold_episodes < 0:
            raise ValueError(f"hold_episodes must be an integer >= 0, got {hold_episodes!r}")
        register()
        super().__init__(*args, **kwargs)
        if self.is_async and not kwargs.get("config"):
            self.config = str(default_config_path(self.algo))
        self.objective_kind = objective
        self.time_budget = float(time_budget)
        self.hold_episodes = hold_episodes
        self.target_score = float("nan")
        self._trial: optuna.Trial | None = None  # the trial being run, while -optimize runs one
        if objective == "time":
            if not self.optimize_hyperparameters:
                raise ValueError("the time objective is what -optimize maximizes: add -optimize")
            self.target_score = threshold_for(self.env_name.gym_id) if target_score is None else float(target_score)
            if not math.isfinite(self.target_score):
                raise ValueError(f"{self.env_name.gym_id} has no reward threshold: give the time objective a target_score")

    @property
    def is_async(self) -> bool:
        return self.algo in ASYNC_ALGOS

    def _preprocess_hyperparams(self, hyperparams: dict[str, Any]):
        # A trial of the wall-clock objective chose its own layout; --trial-id brings it back as it was.
        layout_of_a_trial = self.trial_id is not None and "envs_per_worker" in hyperparams
        if self.is_async and "envs_per_worker" in hyperparams and not layout_of_a_trial:
            raise ValueError(
                f"{self.algo} config: do not set envs_per_worker; set n_envs (the total number of envs) "
                "and n_workers, and envs_per_worker = n_envs // n_workers follows"
            )
        if isinstance(hyperparams.get("policy_kwargs"), str):
            hyperparams = {**hyperparams, "policy_kwargs": evaluate_policy_kwargs(hyperparams["policy_kwargs"])}
        hyperparams, env_wrapper, callbacks, vec_env_wrapper = super()._preprocess_hyperparams(hyperparams)
        if self.is_async and layout_of_a_trial:
            if isinstance(hyperparams["n_workers"], int) and isinstance(hyperparams["envs_per_worker"], int):
                self.n_envs = hyperparams["n_workers"] * hyperparams["envs_per_worker"]  # rl-zoo3 scales frequencies by it
        elif self.is_async:
            hyperparams["n_workers"], hyperparams["envs_per_worker"] = split_envs(self.n_envs, hyperparams.get("n_workers"))
        return hyperparams, env_wrapper, callbacks, vec_env_wrapper

    def create_envs(self, n_envs: int, eval_env: bool = False, no_log: bool = False) -> VecEnv:
        if not self.is_async or eval_env:
            return super().create_envs(n_envs, eval_env=eval_env, no_log=no_log)
        # The learner only needs the spaces and the VecNormalize statistics: one env.
        env = super().create_envs(1, eval_env=False, no_log=no_log)
        # What rl-zoo3's create_envs gives make_vec_env, for the workers to build theirs alike.
        recipe = VecEnvRecipe(
            env_id=functools.partial(gym.make, gym.spec(self.env_name.gym_id)),
            env_kwargs=self.env_kwargs,
            wrapper_class=self.env_wrapper,
            monitor_dir=None if no_log else self.save_path,
            monitor_kwargs=self.monitor_kwargs,
        )
        setattr(env.unwrapped, RECIPE_ATTRIBUTE, recipe)
        return env

    def hyperparameters_optimization(self) -> None:
        try:
            super().hyperparameters_optimization()
        except ValueError as error:
            # rl-zoo3 asks for the best trial after optimizing, which fails when every trial was pruned.
            if "No trials are completed yet" not in str(error):
                raise
            print(f"No trial completed (all pruned or failed), so there is no best trial to report: {error}")

    def objective(self, trial: optuna.Trial) -> float:
        self._trial = trial
        try:
            if self.objective_kind == "time":
                return self._time_objective(trial)
            return self._score_objective(trial)
        finally:
            self._trial = None

    def _score_objective(self, trial: optuna.Trial) -> float:
        try:
            score = super().objective(trial)
        except WorkerError as error:
            print(f"Trial {trial.number} pruned: {error}")
            raise optuna.TrialPruned(str(error)) from error
        if not math.isfinite(score):
            raise optuna.TrialPruned(f"the trial's evaluation score is {score}")
        return score

    def _maybe_normalize(self, env: VecEnv, eval_env: bool) -> VecEnv:
        # rl-zoo3 gives VecNormalize the config's gamma, fixed when it reads the config. A trial that samples
        # gamma would then be tuned on another reward scale than the entry made from it runs with: use the trial's.
        trial_gamma = self._trial.user_attrs.get("gamma") if self._trial is not None else None
        if not (self.is_async and self.normalize and trial_gamma is not None and "gamma" in self.normalize_kwargs):
            return super()._maybe_normalize(env, eval_env)
        config_kwargs = self.normalize_kwargs
        self.normalize_kwargs = {**config_kwargs, "gamma": trial_gamma}
        try:
            return super()._maybe_normalize(env, eval_env)
        finally:
            self.normalize_kwargs = config_kwargs

    def _time_objective(self, trial: optuna.Trial) -> float:
        """rl-zoo3's objective, with :class:`TimeToTargetCallback` where it makes its evaluation callback."""
        trial.set_user_attr("objective", "time")  # the samplers then search the layout too
        started = time.perf_counter()
        made: list[TimeToTargetCallback] = []

        def time_to_target(eval_env: VecEnv, trial: optuna.Trial, **unused: Any) -> TimeToTargetCallback:
            callback = TimeToTargetCallback(
                eval_env,
                trial,
                self.target_score,
                self.time_budget,
                n_reports=self.n_evaluations or 1,
                started=started,
                hold_episodes=self.hold_episodes,
            )
            made.append(callback)
            return callback

        try:
            with mock.patch.object(rl_zoo3.exp_manager, "TrialEvalCallback", time_to_target):
                super().objective(trial)
        except (WorkerError, ValueError) as error:
            # A sampled layout this run cannot use (a worker update mode with Ray, say) is pruned, not fatal.
            print(f"Trial {trial.number} pruned: {error}")
            raise optuna.TrialPruned(str(error)) from error
        (callback,) = made
        for key, value in callback.summary().items():
            trial.set_user_attr(key, value)
        return callback.value
