from dataclasses import replace
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch as th
from gymnasium import spaces
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from stable_baselines3.common.policies import ActorCriticCnnPolicy, ActorCriticPolicy, BasePolicy, MultiInputActorCriticPolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule

from sb3_async.common.async_algorithm import AsyncOnPolicyAlgorithm
from sb3_async.common.collectors import GradientCollector, GradientReport, WorkerSpec, buffers_to_vector, clip_gradient_norm_
from sb3_async.common.update_paths import LearnerApplies, UpdatePath
from sb3_async.common.worker_updates import WorkerUpdateSettings
from sb3_async.impala.actor import IMPALAActor
from sb3_async.impala.trajectories import TrajectoryLayout
from sb3_async.offpac.loss import off_policy_ac_loss

SelfIMPALA = TypeVar("SelfIMPALA", bound="IMPALA")


class IMPALA(AsyncOnPolicyAlgorithm):
    """
    Importance Weighted Actor-Learner Architecture (IMPALA)

    Paper: https://arxiv.org/abs/1802.01561

    ``n_workers`` actor processes each step ``envs_per_worker`` envs for ``n_steps`` steps (the
    unroll) with the newest parameters they have copied, and hand the trajectories, with the
    log-probabilities of the actions taken, to the learner (this process). The actors compute no
    gradient. The learner takes trajectories in the order they arrive; once it holds
    ``batch_size`` of them, it computes V-trace targets with its current parameters, which
    correct for the policy lag (the learner's updates since an actor's copy), takes one optimizer
    step on the policy-gradient, value and entropy losses of the whole batch, and publishes the
    new parameters. An actor copies them before its next unroll, without waiting for the learner.
    See ``docs/impala.md``.

    :param policy: The policy model to use (MlpPolicy, CnnPolicy, MultiInputPolicy): an actor-critic policy
    :param env: The environment to learn from: an env id, a picklable callable that returns a gym.Env,
        or a VecEnv that the actors can rebuild (see ``sb3_async.common.worker_envs``)
    :param learning_rate: The learning rate, it can be a function
        of the current progress remaining (from 1 to 0)
    :param n_steps: The unroll length: the steps each actor runs in each of its envs per trajectory
    :param batch_size: Trajectories (of one env each) per learner update. The learner takes whole actor
        segments, so this is rounded up to a multiple of ``envs_per_worker``
    :param gamma: Discount factor
    :param rho_bar: truncation of the importance weights in the TD errors and the policy gradient
        (the paper's rho-bar; 1.0 as in its experiments)
    :param c_bar: truncation of the importance weights in the V-trace traces (the paper's c-bar)
    :param ent_coef: Entropy coefficient for the loss calculation
    :param vf_coef: Value function coefficient for the loss calculation, on the paper's baseline loss
        ``1/2 (v_s - V(x_s))^2`` (so ``vf_coef=2 * c`` weighs it as A2C's and A3C's ``vf_coef=c`` do)
    :param max_grad_norm: The maximum value for the gradient clipping
    :param max_policy_lag: A trajectory acted with parameters more than this many learner updates old
        when it arrives is dropped, counted in ``impala/dropped_stale_trajectories`` (None: no bound
        beyond the one the slots set: each actor runs at most two unrolls ahead of the learner)
    :param use_rms_prop: Whether to use RMSprop (default) or Adam as optimizer
    :param rms_prop_eps: RMSProp epsilon. It stabilizes square root computation in denominator
        of RMSProp update
    :param n_workers: Number of actor processes (default: the number of CPU cores available). ``"auto"``:
        measured as for A3C (see ``docs/a3c.md``)
    :param envs_per_worker: Number of envs each actor steps together (default: when ``env`` is a VecEnv of
        N envs, ``N // n_workers``, at least 1; else 1). ``"auto"``: measured as for A3C
    :param backend: Where the actors run. ``"local"``: processes on this machine, parameters and trajectories
        in shared memory. ``"ray"``: Ray actors on the cluster that ``ray.init`` connected this process to (or
        on a local Ray that ``learn()`` starts and stops), trajectories through the object store; needs
        ``pip install 'sb3_async[ray]'`` (see ``docs/distributed.md``)
    :param max_worker_restarts: How many times in one ``learn()`` an actor that dies (its process, its Ray actor
        or its node) is rebuilt, with new envs and the newest parameters, before a death stops training with
        ``WorkerError``. An exception raised by an env always stops training
    :param worker_timeout: Seconds an actor may send nothing (an env whose step hangs, say) before a warning names it,
        counted in ``async/stalled_workers``; with restarts left it is replaced as a dead actor would be
    :param max_dropped_updates_in_a_row: A trajectory that holds a reward or observation that is not finite, and an
        update whose gradient is not finite, are dropped and counted (``async/dropped_updates``), with a warning the
        first time; when this many in a row are dropped, ``learn()`` raises ``NonFiniteTrainingError``
    :param ray_actor_options: ``backend="ray"`` only: the options of each actor's Ray actor (``num_cpus``, 1 by
        default, ``resources``, ``runtime_env``, ...), one dict for all or a list of one dict per actor
    :param ray_init_kwargs: ``backend="ray"`` only: keyword arguments for the ``ray.init`` that ``learn()``
        calls when Ray is not initialised
    :param stats_window_size: Window size for the rollout logging, specifying the number of episodes to average
        the reported success rate, mean episode length, and mean reward over
    :param tensorboard_log: the log location for tensorboard (if None, no logging)
    :param policy_kwargs: additional arguments to be passed to the policy on creation
    :param verbose: Verbosity level: 0 for no output, 1 for info messages (such as device or wrappers used), 2 for
        debug messages
    :param seed: Seed for the pseudo random generators (actor ``k`` uses ``seed + k``)
    :param device: Device (cpu, cuda, ...) on which the learner's policy and its updates run. Actors always
        run on the CPU.
    :param _init_setup_model: Whether or not to build the network at the creation of the instance
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": ActorCriticPolicy,
        "CnnPolicy": ActorCriticCnnPolicy,
        "MultiInputPolicy": MultiInputActorCriticPolicy,
    }
    policy: ActorCriticPolicy
    # Counted over the learn() calls of one run (reset with reset_num_timesteps).
    dropped_stale_trajectories: int = 0
    # During learn(): segments waiting for a full batch, (flat trajectory, its policy lag); the learned ones' lags.
    _batch: list[tuple[th.Tensor, int]]
    _policy_lags: list[int]

    def __init__(
        self,
        policy: str | type[ActorCriticPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 7e-4,
        n_steps: int = 20,
        batch_size: int = 8,
        gamma: float = 0.99,
        rho_bar: float = 1.0,
        c_bar: float = 1.0,
        ent_coef: float = 0.0,
        vf_coef: float = 0.5,
        max_grad_norm: float = 0.5,
        max_policy_lag: int | None = None,
        use_rms_prop: bool = True,
        rms_prop_eps: float = 1e-5,
        n_workers: int | str | None = None,
        envs_per_worker: int | str | None = None,
        backend: str = "local",
        max_worker_restarts: int = 0,
        worker_timeout: float = 60.0,
        max_dropped_updates_in_a_row: int = 100,
        ray_actor_options: dict[str, Any] | list[dict[str, Any]] | None = None,
        ray_init_kwargs: dict[str, Any] | None = None,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        _init_setup_model: bool = True,
    ):
        # The learner applies every update (there is no gradient for an actor to apply), and an actor never
        # waits for it: it copies the newest parameters before each unroll.
        self._set_async_settings(
            env,
            n_workers,
            envs_per_worker,
            False,
            "learner",
            backend,
            max_worker_restarts,
            worker_timeout,
            max_dropped_updates_in_a_row,
            ray_actor_options,
            ray_init_kwargs,
            n_steps,
        )
        if isinstance(policy, type) and issubclass(policy, RecurrentActorCriticPolicy):
            raise ValueError("IMPALA does not take recurrent policies yet: use A3C with 'MlpLstmPolicy' for them")
        for name, value in (("rho_bar", rho_bar), ("c_bar", c_bar)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0 (float('inf') for no truncation), got {value!r}")
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if max_policy_lag is not None and (not isinstance(max_policy_lag, (int, np.integer)) or max_policy_lag < 0):
            raise ValueError(f"max_policy_lag must be an integer >= 0 or None, got {max_policy_lag!r}")
        try:
            super().__init__(
                policy,
                self._learner_env(env),
                learning_rate=learning_rate,
                n_steps=n_steps,
                gamma=gamma,
                gae_lambda=1.0,
                ent_coef=ent_coef,
                vf_coef=vf_coef,
                max_grad_norm=max_grad_norm,
                use_sde=False,
                sde_sample_freq=-1,
                stats_window_size=stats_window_size,
                tensorboard_log=tensorboard_log,
                policy_kwargs=policy_kwargs,
                verbose=verbose,
                device=device,
                seed=seed,
                _init_setup_model=False,
                supported_action_spaces=(spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary),
            )
        except AssertionError as error:  # SB3 checks the action space with an assert
            raise ValueError(str(error)) from error
        self.batch_size = batch_size
        self.rho_bar = rho_bar
        self.c_bar = c_bar
        self.max_policy_lag = max_policy_lag
        self._finish_init(use_rms_prop, rms_prop_eps, _init_setup_model)

    def _setup_model(self) -> None:
        # No rollout buffer: the learner batches the actors' trajectories as they arrive (see _apply_report).
        self._setup_lr_schedule()
        self.set_random_seed(self.seed)
        self.policy = self.policy_class(  # type: ignore[assignment]
            self.observation_space, self.action_space, self.lr_schedule, **self.policy_kwargs
        )
        self.policy = self.policy.to(self.device)

    def _trajectory_layout(self) -> TrajectoryLayout:
        return TrajectoryLayout.of(self.observation_space, self.action_space, self.n_steps, self.envs_per_worker)

    def _worker_logic(self) -> tuple[type, dict[str, Any]]:
        return IMPALAActor, dict(n_steps=self.n_steps, gamma=self.gamma, layout=self._trajectory_layout())

    def _worker_spec(self, worker_updates: WorkerUpdateSettings | None = None) -> WorkerSpec:
        return replace(super()._worker_spec(worker_updates), trajectory_size=self._trajectory_layout().size)

    @property
    def segments_per_batch(self) -> int:
        """Actor segments (of ``envs_per_worker`` trajectories each) per update: ``batch_size``, rounded up."""
        return -(-self.batch_size // self.envs_per_worker)

    def _apply_report(
        self, path: LearnerApplies, report: GradientReport, flat_params: th.Tensor, flat_gradient: th.Tensor
    ) -> None:
        """
        Take an actor's segment into the batch (unless it holds a value that is not finite, or is older
        than ``max_policy_lag``), free its slot at once, and learn from the batch once it is full.
        """
        collector = path.collector
        if report.segment.non_finite is not None:
            self._count_dropped_update(report)
        elif self.max_policy_lag is not None and report.staleness > self.max_policy_lag:
            self.dropped_stale_trajectories += self.envs_per_worker
        else:
            self._batch.append((collector.trajectory(report).clone(), report.staleness))
            if report.normalization is not None and self._vec_normalize_env is not None:
                report.normalization.merge_into(self._vec_normalize_env)
        # Copied out: the actor may write its next segment there now.
        collector.send_go(report.worker_id, self._normalization_statistics(), self._current_progress_remaining)
        if len(self._batch) >= self.segments_per_batch:
            self._learn_from_batch(path, collector, report, flat_params, flat_gradient)

    def _on_steps_reached(
        self, path: UpdatePath, last_report: GradientReport, flat_params: th.Tensor, flat_gradient: th.Tensor
    ) -> None:
        """The steps are all taken: the trajectories of a batch not yet full are learned from, in one smaller update."""
        if self._batch:
            assert isinstance(path, LearnerApplies), "IMPALA's learner applies every update"
            self._learn_from_batch(path, path.collector, last_report, flat_params, flat_gradient)

    def _learn_from_batch(
        self,
        path: LearnerApplies,
        collector: GradientCollector,
        report: GradientReport,
        flat_params: th.Tensor,
        flat_gradient: th.Tensor,
    ) -> None:
        """One optimizer step on the V-trace loss of the batch, oldest segments first; its stats go with ``report``."""
        rows = th.stack([trajectory for trajectory, _ in self._batch]).to(self.device)
        lags = [lag for _, lag in self._batch]
        self._batch.clear()
        batch = self._trajectory_layout().read(rows)
        self.policy.set_training_mode(True)
        flat_gradient.zero_()
        loss, stats = off_policy_ac_loss(
            self.policy,
            batch,
            gamma=self.gamma,
            rho_bar=self.rho_bar,
            c_bar=self.c_bar,
            ent_coef=self.ent_coef,
            vf_coef=self.vf_coef,
            stats_section="impala",
        )
        loss.backward()
        gradient_norm = flat_gradient.norm().item()
        if not np.isfinite(gradient_norm):
            self._count_dropped_update(replace(report, segment=replace(report.segment, non_finite=None)))
            return
        clip_gradient_norm_(flat_gradient, gradient_norm, self.max_grad_norm)
        self._update_learning_rate([self.policy.optimizer, path.optimizer])
        path.optimizer.step()
        self._n_updates += 1
        self._dropped_in_a_row = 0
        collector.publish(flat_params, buffers_to_vector(self._policy_buffers) if self._policy_buffers else None)
        self._policy_lags.extend(lags)
        report.segment.stats.update(stats)

    def _record_async_logs(self, window: Any, collector: GradientCollector) -> None:
        super()._record_async_logs(window, collector)
        if self._policy_lags:
            self.logger.record("impala/policy_lag_min", int(np.min(self._policy_lags)))
            self.logger.record("impala/policy_lag_mean", float(np.mean(self._policy_lags)))
            self.logger.record("impala/policy_lag_max", int(np.max(self._policy_lags)))
            self._policy_lags = []
        self.logger.record("impala/dropped_stale_trajectories", self.dropped_stale_trajectories)
        self.logger.record("impala/batch_trajectories", self.segments_per_batch * self.envs_per_worker, exclude="tensorboard")

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_batch", "_policy_lags"]

    def train(self) -> None:
        raise NotImplementedError("IMPALA trains in learn(): the learner updates on each batch of trajectories as it fills")

    def learn(
        self: SelfIMPALA,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 100,
        tb_log_name: str = "IMPALA",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfIMPALA:
        """
        Train for ``total_timesteps`` env steps, summed over all actors' envs. Once they are taken, the
        trajectories of a batch not yet full are learned from in one smaller update; not when a callback
        stops training (as SB3's A2C does not train on a rollout a callback stopped).

        One logging iteration is ``n_workers * envs_per_worker * n_steps`` timesteps.
        """
        self._batch, self._policy_lags = [], []
        if reset_num_timesteps:
            self.dropped_stale_trajectories = 0
        return self._learn_async(
            total_timesteps,
            callback,
            log_interval,
            tb_log_name,
            reset_num_timesteps,
            progress_bar,
            timesteps_per_iteration=self.n_workers * self.envs_per_worker * self.n_steps,
        )
