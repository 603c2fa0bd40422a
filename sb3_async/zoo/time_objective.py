"""
The wall-clock objective for tuning (``-optimize --objective time``): how soon a trial's training
mean reaches a target score, in seconds on this machine's cores.

rl-zoo3's own objective is the evaluation score after a fixed number of env steps. It cannot tell a
trial that gets there in 20 s from one that needs two minutes, and wall-clock time is why a user
picks an asynchronous algorithm: a study scored in steps chose 8 workers on 2 cores (docs/zoo.md).

- **The clock** starts when the trial's model is about to be built (an ``"auto"`` layout's probe
  and the workers' start-up count: the user pays them). The trial ends as soon as the mean of its
  last ``window`` training episodes reaches ``target`` (what ``python -m sb3_async.compare`` calls
  the time to threshold), or when ``time_budget`` seconds or rl-zoo3's ``n_timesteps`` run out.
- **A hit must hold.** After reaching the target the trial trains on for ``hold_episodes`` more
  episodes (uncounted in its time), and their mean must reach the target too; else the trial is a
  miss, scored by that mean. Without it, the first Acrobot study's best trial (4.0 s) had found a
  learning rate that reaches -100 once and then collapses: over 3 seeds it reached the threshold
  twice and ended both runs at -500.
- **The value.** rl-zoo3's studies maximize, so a trial that reaches the target is worth minus its
  seconds. One that misses ranks below every one that reaches it, by its training mean at the end
  (rl-zoo3's objective ranks by the last evaluation): ``-time_budget * (1 + shortfall)``, the
  shortfall being how far that mean fell short, as a fraction of the target's size.
- **Pruning** compares trials at the same wall-clock time: every ``time_budget / n_evaluations``
  seconds a trial reports its training mean, and rl-zoo3's pruner (median by default) may stop it.
  Training episodes, not evaluation episodes: an evaluation would take time from the trial it
  measures, and more from slow trials than from fast ones.
- **The samplers** search the layout on the cores too (``n_workers``, ``envs_per_worker``, each
  may be ``"auto"``, and ``update_mode``), which a score objective cannot rank; they read the
  trial's ``objective`` user attribute (:mod:`sb3_async.zoo.hyperparams_opt`).
"""

import math
import time
from collections import deque
from typing import Any

import gymnasium as gym
import numpy as np
import optuna
from rl_zoo3.callbacks import TrialEvalCallback
from stable_baselines3.common.vec_env import VecEnv

OBJECTIVES = ("score", "time")
# Thresholds for envs whose gymnasium spec has none (Pendulum-v1: rl-zoo's "solved" level).
DEFAULT_THRESHOLDS = {"Pendulum-v1": -200.0}


def threshold_for(env_id: str) -> float:
    """The score that counts as solved: the env spec's ``reward_threshold``, else ours; NaN if neither has one."""
    spec = gym.spec(env_id)
    if spec.reward_threshold is not None:
        return float(spec.reward_threshold)
    return DEFAULT_THRESHOLDS.get(env_id, math.nan)


def time_objective_value(seconds_to_target: float | None, final_mean: float, target: float, time_budget: float) -> float:
    """A trial's value, to maximize: minus its seconds to ``target``, or below every hit by how far it fell short."""
    if seconds_to_target is not None:
        return -seconds_to_target
    shortfall = (target - final_mean) / max(abs(target), 1e-8) if math.isfinite(final_mean) else math.inf
    return -time_budget * (1 + max(shortfall, 0.0)) if math.isfinite(shortfall) else -math.inf


class TimeToTargetCallback(TrialEvalCallback):
    """
    Stands where rl-zoo3's objective puts its :class:`TrialEvalCallback`: it keeps that class's
    ``is_pruned`` and ``eval_idx``, but runs no evaluation (``eval_env`` is left unused). It follows
    the training episodes, stops training at the target or the time budget, and reports to the trial
    on wall-clock time.

    :param eval_env: the evaluation env rl-zoo3 made (not used)
    :param trial: the Optuna trial to report to
    :param target: the training mean that counts as reached
    :param time_budget: seconds after which the trial stops if it has not reached ``target``
    :param n_reports: how many times, evenly over ``time_budget``, the trial reports to the pruner
    :param started: ``time.perf_counter()`` when the clock started (default: when training starts)
    :param window: training episodes averaged
    :param hold_episodes: episodes after the target was reached whose mean must reach it too (0: none)
    """

    def __init__(
        self,
        eval_env: VecEnv,
        trial: optuna.Trial,
        target: float,
        time_budget: float,
        n_reports: int = 1,
        started: float | None = None,
        window: int = 100,
        hold_episodes: int = 100,
    ) -> None:
        super().__init__(eval_env, trial, eval_freq=0)
        self.target = target
        self.time_budget = time_budget
        self.report_interval = time_budget / max(n_reports, 1)
        self.started = started
        self.returns: deque[float] = deque(maxlen=window)
        self.final_mean = -math.inf  # no episode finished yet
        self.hold_episodes = hold_episodes
        self.reached_at: float | None = None  # seconds when the mean first reached the target
        self.since_reached: list[float] = []  # the returns of the episodes after that
        self.seconds_to_target: float | None = None  # reached_at, once the hit has held
        self.seconds = 0.0

    def _init_callback(self) -> None:
        pass  # EvalCallback's makes folders and checks the eval env: nothing here evaluates

    def _on_training_start(self) -> None:
        if self.started is None:
            self.started = time.perf_counter()

    def _on_step(self) -> bool:
        assert self.started is not None
        self.seconds = time.perf_counter() - self.started
        for info in self.locals.get("infos", []):
            if "episode" in info:
                episode_return = float(info["episode"]["r"])
                self.returns.append(episode_return)
                if self.reached_at is not None:
                    self.since_reached.append(episode_return)
        if self.reached_at is not None:
            return self._on_step_while_holding()
        mean = self.final_mean = float(np.mean(self.returns)) if self.returns else -math.inf
        if len(self.returns) == self.returns.maxlen and mean >= self.target:
            self.reached_at = self.seconds
            return self._on_step_while_holding()
        while self.seconds >= (self.eval_idx + 1) * self.report_interval:
            self.eval_idx += 1
            if self.returns:
                self.trial.report(mean, self.eval_idx)
                if self.trial.should_prune():
                    self.is_pruned = True
                    return False
        return self.seconds < self.time_budget

    def _on_step_while_holding(self) -> bool:
        held = len(self.since_reached) >= self.hold_episodes
        if not held and self.seconds < self.time_budget:
            return True
        # Held (or out of time, judged on the episodes there are): the hit stands if their mean reaches the target.
        if self.since_reached:
            self.final_mean = float(np.mean(self.since_reached))
        if not self.since_reached or self.final_mean >= self.target:
            self.seconds_to_target = self.reached_at
        return False

    @property
    def value(self) -> float:
        """The trial's value (see :func:`time_objective_value`)."""
        return time_objective_value(self.seconds_to_target, self.final_mean, self.target, self.time_budget)

    def summary(self) -> dict[str, Any]:
        """What the trial records as user attributes."""
        return {
            "seconds_to_target": self.seconds_to_target,
            "first_reached_at": self.reached_at,
            "episodes_after_reaching": len(self.since_reached),
            "final_training_mean": self.final_mean if math.isfinite(self.final_mean) else None,
            "seconds": round(self.seconds, 2),
            "training_episodes_in_window": len(self.returns),
        }
