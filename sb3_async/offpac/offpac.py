import io
import math
import pathlib
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.policies import ActorCriticCnnPolicy, ActorCriticPolicy, BasePolicy, MultiInputActorCriticPolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule

from sb3_async.common.async_algorithm import AsyncOffPolicyAlgorithm
from sb3_async.common.worker_pickling import dumps_for_workers
from sb3_async.offpac.behavior import BehaviorPolicy, BehaviorSpec, CallableBehavior, make_behavior, policy_copy_on_cpu
from sb3_async.offpac.worker import OffPACWorker

SelfOffPolicyAC = TypeVar("SelfOffPolicyAC", bound="OffPolicyAC")


class OffPolicyAC(AsyncOffPolicyAlgorithm):
    """
    Off-policy actor-critic with V-trace (Off-PAC, Degris et al. 2012; truncated importance
    weights as in IMPALA, Espeholt et al. 2018; per-worker replay as in ACER, Wang et al. 2017).

    Each of ``n_workers`` processes acts in its envs with a behaviour policy b and records
    ``log b(a|s)``; the target policy pi (this model's policy) learns from that experience with
    importance weights ``rho = pi(a|s) / b(a|s)``, truncated at ``rho_bar`` and ``c_bar``. A worker
    hands the learner the gradient of each fresh segment, and ``replay_ratio`` gradients of segments
    replayed from its own memory per fresh one; the learner applies each as it arrives (see
    ``docs/offpac.md`` for the math, ``docs/architecture.md`` for the collector).

    :param policy: The policy model to use (MlpPolicy, CnnPolicy, ...): an actor-critic policy, pi and V
    :param env: The environment to learn from: an env id, a picklable callable that returns a gym.Env,
        or a VecEnv that the workers can rebuild (see ``sb3_async.common.worker_envs``)
    :param learning_rate: The learning rate, it can be a function
        of the current progress remaining (from 1 to 0)
    :param buffer_size: size of the replay memory in transitions, summed over all workers
        (each keeps ``buffer_size // n_workers``)
    :param learning_starts: how many transitions (summed over all workers) to store before replay
        gradients begin; fresh gradients are applied from the start
    :param batch_size: transitions per replay gradient: ``batch_size // n_steps`` stored trajectories
        of ``n_steps`` steps
    :param gamma: the discount factor
    :param n_steps: steps each worker runs in each of its envs per fresh gradient, and the length of
        the V-trace traces. With ``n_steps=1`` and no truncation, the update is Off-PAC's.
    :param behavior_policy: the behaviour policy b: ``"target"`` (pi itself: off-policy through policy
        lag and replay), ``"uniform"``, ``("epsilon", eps)`` (pi mixed with uniform), an SB3 model or
        policy with an action distribution (e.g. a trained PPO), or a picklable callable
        ``obs -> (actions, log_probs)`` on numpy batches
    :param rho_bar: truncation of the importance weight in the TD errors and the policy gradient
        (``float("inf")``: none, the textbook Off-PAC rule; 1.0: IMPALA's)
    :param c_bar: truncation of the importance weights in the V-trace traces
    :param trace_lambda: the traces' lambda, ``c_t = trace_lambda * min(c_bar, rho_t)`` (IMPALA's lambda,
        Retrace's form of trace): 1 looks ahead to the segment's end, 0 makes every target one-step
    :param replay_ratio: replay gradients per fresh gradient (0: no replay memory). A fraction
        accumulates: 0.5 replays once every other fresh segment.
    :param ent_coef: Entropy coefficient for the loss calculation
    :param vf_coef: Value function coefficient for the loss calculation
    :param max_grad_norm: The maximum value for the gradient clipping (applied by whoever applies the gradient)
    :param use_sde: Whether to use generalized State Dependent Exploration (gSDE) instead of action noise
        independent at each step (Box action spaces only). The behaviour's ``log b(a|s)`` is the density of
        the gSDE distribution the action was drawn from, as the target's ``pi(a|s)`` is on replay
    :param sde_sample_freq: Sample a new noise matrix every n steps when using gSDE
        Default: -1 (only sample at the beginning of each fresh segment)
    :param use_rms_prop: Whether to use RMSprop (default) or Adam as optimizer
    :param rms_prop_eps: RMSProp epsilon. It stabilizes square root computation in denominator
        of RMSProp update
    :param n_workers: Number of worker processes (default: the number of CPU cores available). ``"auto"``:
        the constructor runs a worker's loop for about a second and starts more workers than cores when a
        worker's env leaves its core idle (a slow simulator, a socket); see ``docs/a3c.md``
    :param envs_per_worker: Number of envs each worker steps together (default: when ``env`` is a VecEnv of
        N envs, ``N // n_workers``, at least 1, so that the workers share the user's envs; else 1).
        ``"auto"``: the fewest envs that amortize a gradient's fixed cost, measured as for ``n_workers``
    :param wait_for_own_update: Whether a worker waits, after handing over a gradient, until the learner
        has applied it, so that its next segment starts from parameters that include its own last update
        (the paper's implementation). With False it starts the next segment at once, with the newest
        parameters published then (no idle round trip; see ``docs/architecture.md``). Only for
        ``update_mode="learner"``: workers that apply their own updates never wait
    :param update_mode: Who applies the gradients. ``"learner"``: this process, one at a time, as they
        arrive. ``"locked"``: each worker its own, one at a time under a lock that all workers share, with
        optimizer statistics that all workers share: the learner's semantics without a round trip to it.
        ``"hogwild"``: each worker its own, lock-free (the paper's variant). ``"locked"`` and ``"hogwild"``
        need RMSprop, Adam or AdamW, the CPU and the local backend. ``"auto"`` (default): ``"locked"`` where
        it can run, else ``"learner"`` (see ``docs/architecture.md``)
    :param backend: Where the workers run. ``"local"``: processes on this machine, parameters and gradients
        in shared memory. ``"ray"``: Ray actors on the cluster that ``ray.init`` connected this process to (or
        on a local Ray that ``learn()`` starts and stops); needs ``pip install 'sb3_async[ray]'`` and
        ``update_mode="learner"`` (see ``docs/distributed.md``)
    :param max_worker_restarts: How many times in one ``learn()`` a worker that dies (its process, its Ray actor
        or its node) is rebuilt, with new envs and the newest parameters, before a death stops training with
        ``WorkerError``. An exception raised by an env or the loss always stops training
    :param worker_timeout: Seconds a worker may send nothing (an env whose step hangs, say) before a warning names it
        and what it was doing, counted in ``async/stalled_workers``; with restarts left (``max_worker_restarts``)
        it is replaced as a dead worker would be
    :param max_dropped_updates_in_a_row: A gradient that is not finite is dropped and counted
        (``async/dropped_updates``), with a warning the first time; when this many in a row are dropped, nothing
        is being learned, and ``learn()`` raises ``NonFiniteTrainingError`` naming where the first of them met a
        non-finite reward, observation or value (worker, env, step)
    :param ray_actor_options: ``backend="ray"`` only: the options of each worker's actor (``num_cpus``, 1 by
        default, ``resources``, ``runtime_env``, ...), one dict for all or a list of one dict per worker
    :param ray_init_kwargs: ``backend="ray"`` only: keyword arguments for the ``ray.init`` that ``learn()``
        calls when Ray is not initialised
    :param stats_window_size: Window size for the rollout logging, specifying the number of episodes to average
        the reported success rate, mean episode length, and mean reward over
    :param tensorboard_log: the log location for tensorboard (if None, no logging)
    :param policy_kwargs: additional arguments to be passed to the policy on creation
    :param verbose: Verbosity level: 0 for no output, 1 for info messages (such as device or wrappers used), 2 for
        debug messages
    :param seed: Seed for the pseudo random generators (worker ``k`` uses ``seed + k``)
    :param device: Device (cpu, cuda, ...) on which the learner's policy lives. Workers always run on the CPU.
    :param _init_setup_model: Whether or not to build the network at the creation of the instance
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": ActorCriticPolicy,
        "CnnPolicy": ActorCriticCnnPolicy,
        "MultiInputPolicy": MultiInputActorCriticPolicy,
    }
    policy: ActorCriticPolicy

    def __init__(
        self,
        policy: str | type[ActorCriticPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 7e-4,
        buffer_size: int = 100_000,
        learning_starts: int = 1_000,
        batch_size: int = 64,
        gamma: float = 0.99,
        n_steps: int = 8,
        behavior_policy: BehaviorSpec = "target",
        rho_bar: float = 1.0,
        c_bar: float = 1.0,
        trace_lambda: float = 1.0,
        replay_ratio: float = 1.0,
        ent_coef: float = 0.0,
        vf_coef: float = 0.5,
        max_grad_norm: float = 0.5,
        use_sde: bool = False,
        sde_sample_freq: int = -1,
        use_rms_prop: bool = True,
        rms_prop_eps: float = 1e-5,
        n_workers: int | str | None = None,
        envs_per_worker: int | str | None = None,
        wait_for_own_update: bool = True,
        update_mode: str = "auto",
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
        self._set_async_settings(
            env,
            n_workers,
            envs_per_worker,
            wait_for_own_update,
            update_mode,
            backend,
            max_worker_restarts,
            worker_timeout,
            max_dropped_updates_in_a_row,
            ray_actor_options,
            ray_init_kwargs,
            n_steps,
        )
        for name, value in (("rho_bar", rho_bar), ("c_bar", c_bar)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0 (float('inf') for no truncation), got {value!r}")
        if not 0.0 <= trace_lambda <= 1.0:
            raise ValueError(f"trace_lambda must be in [0, 1], got {trace_lambda!r}")
        if not (replay_ratio >= 0 and math.isfinite(replay_ratio)):
            raise ValueError(f"replay_ratio must be a finite number >= 0, got {replay_ratio!r}")
        if replay_ratio > 0 and buffer_size < self.n_workers * self.envs_per_worker * n_steps:
            raise ValueError(
                f"buffer_size={buffer_size} cannot hold one segment per worker "
                f"(n_workers * envs_per_worker * n_steps = {self.n_workers * self.envs_per_worker * n_steps})"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        try:
            super().__init__(
                policy,
                self._learner_env(env),
                learning_rate=learning_rate,
                buffer_size=buffer_size,
                learning_starts=learning_starts,
                batch_size=batch_size,
                gamma=gamma,
                train_freq=(n_steps, "step"),
                n_steps=n_steps,
                policy_kwargs=policy_kwargs,
                stats_window_size=stats_window_size,
                tensorboard_log=tensorboard_log,
                verbose=verbose,
                device=device,
                support_multi_env=True,
                seed=seed,
                use_sde=use_sde,
                sde_sample_freq=sde_sample_freq,
                sde_support=True,
                supported_action_spaces=(spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary),
            )
        except AssertionError as error:  # SB3 checks the action space with an assert
            raise ValueError(str(error)) from error
        self.rho_bar = rho_bar
        self.c_bar = c_bar
        self.trace_lambda = trace_lambda
        self.replay_ratio = replay_ratio
        self.ent_coef = ent_coef
        self.vf_coef = vf_coef
        self.max_grad_norm = max_grad_norm
        # Of an SB3 model, keep a copy of its policy only: it is what acts, and it saves without the model's env.
        if isinstance(behavior_policy, BaseAlgorithm):
            behavior_policy = behavior_policy.policy
        if isinstance(behavior_policy, BasePolicy):
            behavior_policy = policy_copy_on_cpu(behavior_policy)
        self.behavior_policy = behavior_policy
        self._finish_init(use_rms_prop, rms_prop_eps, _init_setup_model)

    def _setup_model(self) -> None:
        # No central replay buffer: each worker keeps its own (see OffPACWorker).
        self._setup_lr_schedule()
        self.set_random_seed(self.seed)
        self.policy = self.policy_class(  # type: ignore[assignment]
            self.observation_space, self.action_space, self.lr_schedule, **self.policy_kwargs
        )
        self.policy = self.policy.to(self.device)

    def _check_worker_setup(self) -> None:
        self._behavior()

    def _behavior(self) -> BehaviorPolicy:
        """The behaviour policy the workers will use, checked here so that a bad one fails before they start."""
        behavior = make_behavior(self.behavior_policy, self.observation_space, self.action_space)
        if isinstance(behavior, CallableBehavior):
            # Call it once on two sample observations, so a wrong signature is a ValueError here.
            samples = [self.observation_space.sample() for _ in range(2)]
            if isinstance(self.observation_space, spaces.Dict):
                batch: Any = {key: np.stack([sample[key] for sample in samples]) for key in samples[0]}
            else:
                batch = np.stack(samples)
            behavior.act(batch, self.policy if hasattr(self, "policy") else None)
        dumps_for_workers(behavior, what="behavior_policy")
        return behavior

    def _worker_logic(self) -> tuple[type, dict[str, Any]]:
        per_worker_capacity = self.buffer_size // self.n_workers // self.n_steps  # trajectories
        return OffPACWorker, dict(
            behavior=self._behavior(),
            n_steps=self.n_steps,
            gamma=self.gamma,
            rho_bar=self.rho_bar,
            c_bar=self.c_bar,
            trace_lambda=self.trace_lambda,
            ent_coef=self.ent_coef,
            vf_coef=self.vf_coef,
            replay_ratio=self.replay_ratio,
            replay_capacity=per_worker_capacity,
            replay_starts=math.ceil(self.learning_starts / self.n_workers),
            replay_trajectories=max(1, self.batch_size // self.n_steps),
            use_sde=self.use_sde,
            sde_sample_freq=self.sde_sample_freq,
        )

    def dump_logs(self) -> None:
        # OffPolicyAlgorithm logs gSDE's std through SAC's ``self.actor``, which an actor-critic policy does not
        # have; the workers' loss stats already carry ``train/std``, as A2C logs it.
        use_sde, self.use_sde = self.use_sde, False
        try:
            super().dump_logs()
        finally:
            self.use_sde = use_sde

    def train(self, gradient_steps: int = 1, batch_size: int = 100) -> None:
        raise NotImplementedError("OffPolicyAC trains in learn(): the learner applies each worker's gradient as it arrives")

    def save_replay_buffer(self, path: str | pathlib.Path | io.BufferedIOBase) -> None:
        raise NotImplementedError(
            "OffPolicyAC has no central replay buffer to save: each worker keeps its own replay memory, "
            "which ends with the worker when learn() returns"
        )

    def load_replay_buffer(self, path: str | pathlib.Path | io.BufferedIOBase, truncate_last_traj: bool = True) -> None:
        raise NotImplementedError(
            "OffPolicyAC has no central replay buffer to load into: each worker fills its own replay memory during learn()"
        )

    def learn(
        self: SelfOffPolicyAC,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 100,
        tb_log_name: str = "OffPolicyAC",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfOffPolicyAC:
        """
        Train for ``total_timesteps`` env steps, summed over all workers' envs (replayed segments
        count no steps). Logs are written every ``log_interval`` iterations of
        ``n_workers * envs_per_worker * n_steps`` timesteps.
        """
        return self._learn_async(
            total_timesteps,
            callback,
            log_interval,
            tb_log_name,
            reset_num_timesteps,
            progress_bar,
            timesteps_per_iteration=self.n_workers * self.envs_per_worker * self.n_steps,
        )
