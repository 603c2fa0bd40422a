"""
How VecNormalize statistics travel between the learner and the workers: each worker normalizes
with the learner's statistics and records what it sees into fresh ones, which the learner merges
into its own (so every observation is counted exactly once, whichever worker saw it).
"""

from dataclasses import dataclass
from typing import Any

import numpy as np
from stable_baselines3.common.running_mean_std import RunningMeanStd
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

ObsStatistics = RunningMeanStd | dict[str, RunningMeanStd]


@dataclass
class NormalizationStatistics:
    """The part of a VecNormalize that changes while training: observation and return statistics."""

    obs_rms: ObsStatistics | None
    ret_rms: RunningMeanStd | None

    @classmethod
    def of(cls, vec_normalize: VecNormalize) -> "NormalizationStatistics":
        # SB3's VecNormalize has no obs_rms at all when it normalizes rewards only (norm_obs=False).
        obs_rms = _copy_statistics(vec_normalize.obs_rms) if vec_normalize.norm_obs else None
        return cls(obs_rms=obs_rms, ret_rms=vec_normalize.ret_rms.copy())

    def merge_into(self, vec_normalize: VecNormalize) -> None:
        """Fold these statistics (a worker's new observations) into ``vec_normalize``'s."""
        if vec_normalize.norm_obs and self.obs_rms is not None:
            if isinstance(self.obs_rms, dict):
                for key, statistics in self.obs_rms.items():
                    vec_normalize.obs_rms[key].combine(statistics)
            else:
                vec_normalize.obs_rms.combine(self.obs_rms)  # type: ignore[attr-defined]  # SB3 types it as its dict case
        if vec_normalize.norm_reward and self.ret_rms is not None:
            vec_normalize.ret_rms.combine(self.ret_rms)


def _copy_statistics(statistics: ObsStatistics) -> ObsStatistics:
    if isinstance(statistics, dict):
        return {key: value.copy() for key, value in statistics.items()}
    return statistics.copy()


def _statistics_of(batches: list[np.ndarray], shape: tuple[int, ...]) -> RunningMeanStd:
    """
    Fresh statistics (from almost zero count, so that what is merged is only what this worker saw) of
    the recorded ``batches``, in one update: merged, the same as one update per batch.
    """
    statistics = RunningMeanStd(shape=shape)
    if batches:
        statistics.update(np.concatenate(batches))
    return statistics


class WorkerVecNormalize(VecNormalize):
    """
    A worker's VecNormalize: it normalizes with the learner's statistics (the newest its answers
    carried) and records what it sees into fresh statistics, which the learner merges into its own.
    Merging new moments, not copying a worker's whole statistics, is what keeps every observation
    counted exactly once across workers.
    """

    def __init__(self, venv: VecEnv, settings: dict[str, Any], learner_statistics: NormalizationStatistics):
        super().__init__(venv, training=False, **settings)
        self.load_learner_statistics(learner_statistics)
        self._returns_seen = np.zeros(self.num_envs)
        self._start_new_record()

    def load_learner_statistics(self, statistics: NormalizationStatistics) -> None:
        if statistics.obs_rms is not None:
            self.obs_rms = statistics.obs_rms  # type: ignore[assignment]  # SB3 types it as its dict case
        if statistics.ret_rms is not None:
            self.ret_rms = statistics.ret_rms

    def _start_new_record(self) -> None:
        # What this worker sees until the next report, kept raw: the moments are computed once per report
        # (pop_new_statistics), which merges exactly as per-step updates would, at a fraction of their cost.
        self._observations_seen: list[Any] = []
        self._returns_recorded: list[np.ndarray] = []

    def pop_new_statistics(self) -> NormalizationStatistics:
        """The statistics of what this worker saw since the previous call."""
        new_obs_rms: ObsStatistics | None = None
        if self.norm_obs:  # else SB3's VecNormalize has no obs_rms
            seen = self._observations_seen
            if isinstance(self.obs_rms, dict):  # only the keys it normalizes (norm_obs_keys)
                new_obs_rms = {
                    key: _statistics_of([obs[key] for obs in seen], rms.mean.shape) for key, rms in self.obs_rms.items()
                }
            else:
                new_obs_rms = _statistics_of(seen, self.obs_rms.mean.shape)
        new_ret_rms = _statistics_of(self._returns_recorded, shape=()) if self.norm_reward else None
        self._start_new_record()
        return NormalizationStatistics(obs_rms=new_obs_rms, ret_rms=new_ret_rms)

    def _record_observations(self, raw_obs: Any) -> None:
        if not self.norm_obs:
            return
        if isinstance(self.obs_rms, dict):  # only the keys it normalizes (norm_obs_keys)
            self._observations_seen.append({key: np.array(raw_obs[key]) for key in self.obs_rms})
        else:
            self._observations_seen.append(np.array(raw_obs))  # a copy: a VecEnv may reuse its buffer

    def step_wait(self):
        obs, rewards, dones, infos = super().step_wait()
        self._record_observations(self.old_obs)
        if self.norm_reward:
            # The same discounted-return recursion as VecNormalize._update_reward.
            self._returns_seen = self._returns_seen * self.gamma + self.old_reward
            self._returns_recorded.append(self._returns_seen.copy())
            self._returns_seen[dones] = 0.0
        return obs, rewards, dones, infos

    def reset(self):
        obs = super().reset()
        self._record_observations(self.old_obs)
        self._returns_seen = np.zeros(self.num_envs)
        return obs
