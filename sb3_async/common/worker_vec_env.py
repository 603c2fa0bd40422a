"""The VecEnv a worker steps its envs in: SB3's ``DummyVecEnv`` without the per-step deep copy of the infos."""

from typing import Any

import numpy as np
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecEnvWrapper
from stable_baselines3.common.vec_env.base_vec_env import VecEnvObs, VecEnvStepReturn


class EnvOutputError(ValueError):
    """A worker's env returned something its spaces do not allow (an observation of another shape, a reward that is
    not a number); the message names the env (its index among the worker's envs) and its step."""


def _describe(obs: Any) -> str:
    if isinstance(obs, dict):
        return "{" + ", ".join(f"{key!r}: {_describe(value)}" for key, value in obs.items()) + "}"
    array = np.asarray(obs) if not isinstance(obs, (str, bytes)) else None
    if array is None or array.dtype == object:
        return f"{obs!r} ({type(obs).__name__})"
    return f"an array of shape {array.shape} and dtype {array.dtype}"


class WorkerDummyVecEnv(DummyVecEnv):
    """
    SB3's ``DummyVecEnv``, step for step, except that ``step_wait`` returns a shallow copy of each
    info dict where SB3 deep-copies the whole list. The deep copy guards against an env that mutates
    what it returned before; the dicts themselves are still copied, so a key an env changes later
    is not seen, and a worker's infos only travel on, pickled, to the learner's callbacks. For
    CartPole with 8 envs the deep copy was about a tenth of a worker's time.
    """

    # The first observation returned that was not finite, since take_non_finite_observation last took it:
    # (env index, that env's step from 0, the value). An episode's last one counts too (its terminal_observation).
    first_non_finite_obs: tuple[int, int, float] | None = None
    steps_taken = 0

    def step_wait(self) -> VecEnvStepReturn:
        for env_idx in range(self.num_envs):
            try:
                obs, reward, terminated, truncated, self.buf_infos[env_idx] = self.envs[env_idx].step(self.actions[env_idx])
            except Exception as error:
                # Whatever an env raises (its own bug, or a wrapper such as Monitor refusing its output): where.
                if hasattr(error, "add_note"):  # Python 3.11+
                    error.add_note(f"(raised by env {env_idx} of this worker's envs, at its step {self.steps_taken})")
                raise
            try:
                self.buf_rews[env_idx] = reward
            except (TypeError, ValueError):
                raise EnvOutputError(
                    f"env {env_idx} returned a reward of {reward!r} ({type(reward).__name__}) at its step "
                    f"{self.steps_taken}: a reward must be a number"
                ) from None
            self.buf_dones[env_idx] = terminated or truncated
            self.buf_infos[env_idx]["TimeLimit.truncated"] = truncated and not terminated
            if self.buf_dones[env_idx]:
                self.buf_infos[env_idx]["terminal_observation"] = obs
                if self.first_non_finite_obs is None:  # an episode's last observation is checked as it ends
                    bad = _first_non_finite_value(obs)
                    if bad is not None:
                        self.first_non_finite_obs = (env_idx, self.steps_taken, bad)
                obs, self.reset_infos[env_idx] = self.envs[env_idx].reset()
            self._save_obs(env_idx, obs)
        if self.first_non_finite_obs is None:
            self._look_for_non_finite_obs()
        self.steps_taken += 1
        infos = [dict(info) for info in self.buf_infos]
        return self._obs_from_buf(), np.copy(self.buf_rews), np.copy(self.buf_dones), infos

    def _save_obs(self, env_idx: int, obs: VecEnvObs) -> None:
        try:
            super()._save_obs(env_idx, obs)
        except (TypeError, ValueError, KeyError, IndexError) as error:
            raise EnvOutputError(
                f"env {env_idx} returned an observation outside its observation space at its step {self.steps_taken}: "
                f"expected {self.observation_space}, got {_describe(obs)} ({error})"
            ) from None

    def _look_for_non_finite_obs(self) -> None:
        # One vectorised check over all envs per step; only when it fails, which env.
        if _first_non_finite_value(self.buf_obs) is None:
            return
        for env_idx in range(self.num_envs):
            bad = _first_non_finite_value({key: observations[env_idx] for key, observations in self.buf_obs.items()})
            if bad is not None:
                self.first_non_finite_obs = (env_idx, self.steps_taken, bad)
                return


def _first_non_finite_value(obs: Any) -> float | None:
    """The first value of an observation (an array, or a dict of them) that is not finite; integers always are."""
    for value in obs.values() if isinstance(obs, dict) else [obs]:
        array = np.asarray(value)
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            return float(array[~np.isfinite(array)][0])
    return None


def take_non_finite_observation(venv: VecEnv) -> tuple[int, int, float] | None:
    """
    The first observation that was not finite since the last call, as ``(env, that env's step, value)``, from
    a worker's :class:`WorkerDummyVecEnv` under any VecEnv wrappers (None for another VecEnv).
    """
    while not isinstance(venv, WorkerDummyVecEnv):
        if not isinstance(venv, VecEnvWrapper):
            return None
        venv = venv.venv
    found, venv.first_non_finite_obs = venv.first_non_finite_obs, None
    return found
