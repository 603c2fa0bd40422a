from typing import Any, ClassVar, TypeVar

import torch as th
from gymnasium import spaces
from sb3_contrib.common.recurrent.policies import (
    RecurrentActorCriticCnnPolicy,
    RecurrentActorCriticPolicy,
    RecurrentMultiInputActorCriticPolicy,
)
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.policies import ActorCriticCnnPolicy, ActorCriticPolicy, BasePolicy, MultiInputActorCriticPolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule

from sb3_async.a3c.worker import A3CWorker, LeanA3CWorker, RecurrentA3CWorker, lean_rollout_applies
from sb3_async.common.async_algorithm import AsyncOnPolicyAlgorithm

SelfA3C = TypeVar("SelfA3C", bound="A3C")


class A3C(AsyncOnPolicyAlgorithm):
    """
    Asynchronous Advantage Actor Critic (A3C)

    Paper: https://arxiv.org/abs/1602.01783

    ``n_workers`` processes each run ``envs_per_worker`` envs with a local copy of the policy for
    ``n_steps`` steps, compute the gradient of the A2C loss on that segment and hand it to the learner
    (this process), which applies each gradient as it arrives, with no barrier between workers. The
    worker then copies the newest parameters and goes on. The learner's single optimizer means
    RMSprop statistics are shared by all workers, as in the paper's best variant.

    See ``docs/architecture.md`` for who sends what to whom, and ``docs/a3c.md`` for usage.

    :param policy: The policy model to use (MlpPolicy, CnnPolicy, ...; MlpLstmPolicy, CnnLstmPolicy or
        MultiInputLstmPolicy for the paper's A3C-LSTM: each worker carries the LSTM states across segments and
        backpropagates through each segment, and ``predict`` takes ``state`` and ``episode_start`` as
        ``RecurrentPPO``'s does)
    :param env: The environment to learn from: an env id, a picklable callable that returns a gym.Env,
        or a VecEnv that the workers can rebuild (see ``sb3_async.common.worker_envs``). The learner never
        steps it; each worker builds ``envs_per_worker`` envs like it.
    :param learning_rate: The learning rate, it can be a function
        of the current progress remaining (from 1 to 0)
    :param n_steps: The number of steps each worker runs in each of its envs per gradient
        (the paper's t_max)
    :param gamma: Discount factor
    :param gae_lambda: Factor for trade-off of bias vs variance for Generalized Advantage Estimator.
        Equivalent to classic advantage when set to 1.
    :param ent_coef: Entropy coefficient for the loss calculation
    :param vf_coef: Value function coefficient for the loss calculation
    :param max_grad_norm: The maximum value for the gradient clipping (applied by whoever applies the gradient)
    :param rms_prop_eps: RMSProp epsilon. It stabilizes square root computation in denominator
        of RMSProp update
    :param use_rms_prop: Whether to use RMSprop (default) or Adam as optimizer
    :param use_sde: Whether to use generalized State Dependent Exploration (gSDE)
        instead of action noise exploration (default: False)
    :param sde_sample_freq: Sample a new noise matrix every n steps when using gSDE
        Default: -1 (only sample at the beginning of the rollout)
    :param rollout_buffer_class: Rollout buffer class each worker uses for its segment.
        If ``None``, it will be automatically selected.
    :param rollout_buffer_kwargs: Keyword arguments to pass to the rollout buffer on creation.
    :param normalize_advantage: Whether to normalize or not the advantage
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
        Setting it to auto, the code will be run on the GPU if possible.
    :param _init_setup_model: Whether or not to build the network at the creation of the instance
    """

    # Said once per model, at verbose >= 1, when the workers cannot take the lean rollout.
    _told_why_not_lean = False

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": ActorCriticPolicy,
        "CnnPolicy": ActorCriticCnnPolicy,
        "MultiInputPolicy": MultiInputActorCriticPolicy,
        # The paper's A3C-LSTM, with sb3-contrib's recurrent policies (those of RecurrentPPO).
        "MlpLstmPolicy": RecurrentActorCriticPolicy,
        "CnnLstmPolicy": RecurrentActorCriticCnnPolicy,
        "MultiInputLstmPolicy": RecurrentMultiInputActorCriticPolicy,
    }

    def __init__(
        self,
        policy: str | type[ActorCriticPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 7e-4,
        n_steps: int = 5,
        gamma: float = 0.99,
        gae_lambda: float = 1.0,
        ent_coef: float = 0.0,
        vf_coef: float = 0.5,
        max_grad_norm: float = 0.5,
        rms_prop_eps: float = 1e-5,
        use_rms_prop: bool = True,
        use_sde: bool = False,
        sde_sample_freq: int = -1,
        rollout_buffer_class: type[RolloutBuffer] | None = None,
        rollout_buffer_kwargs: dict[str, Any] | None = None,
        normalize_advantage: bool = False,
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
        try:
            super().__init__(
                policy,
                self._learner_env(env),
                learning_rate=learning_rate,
                n_steps=n_steps,
                gamma=gamma,
                gae_lambda=gae_lambda,
                ent_coef=ent_coef,
                vf_coef=vf_coef,
                max_grad_norm=max_grad_norm,
                use_sde=use_sde,
                sde_sample_freq=sde_sample_freq,
                rollout_buffer_class=rollout_buffer_class,
                rollout_buffer_kwargs=rollout_buffer_kwargs,
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
        self.normalize_advantage = normalize_advantage
        self._finish_init(use_rms_prop, rms_prop_eps, _init_setup_model)

    def _setup_model(self) -> None:
        # No rollout buffer here: each worker keeps its own (see A3CWorker).
        self._setup_lr_schedule()
        self.set_random_seed(self.seed)
        self.policy = self.policy_class(  # type: ignore[assignment]
            self.observation_space, self.action_space, self.lr_schedule, use_sde=self.use_sde, **self.policy_kwargs
        )
        self.policy = self.policy.to(self.device)
        self._maybe_recommend_cpu()

    def _worker_policy_kwargs(self) -> dict[str, Any]:
        return dict(use_sde=self.use_sde, **self.policy_kwargs)

    def _worker_logic(self) -> tuple[type, dict[str, Any]]:
        if issubclass(self.policy_class, RecurrentActorCriticPolicy):
            worker_class: type[A3CWorker] = RecurrentA3CWorker
        else:
            why_not_lean = lean_rollout_applies(self.policy, self.use_sde, self.rollout_buffer_class)
            worker_class = A3CWorker if why_not_lean else LeanA3CWorker
            if why_not_lean and self.verbose >= 1 and not self._told_why_not_lean:
                print(f"A3C workers step SB3's rollout machinery, not the lean rollout: {why_not_lean}")
                self._told_why_not_lean = True
        return worker_class, dict(
            n_steps=self.n_steps,
            gamma=self.gamma,
            gae_lambda=self.gae_lambda,
            ent_coef=self.ent_coef,
            vf_coef=self.vf_coef,
            normalize_advantage=self.normalize_advantage,
            use_sde=self.use_sde,
            sde_sample_freq=self.sde_sample_freq,
            rollout_buffer_class=self.rollout_buffer_class,
            rollout_buffer_kwargs=self.rollout_buffer_kwargs,
        )

    def train(self) -> None:
        raise NotImplementedError("A3C trains in learn(): the learner applies each worker's gradient as it arrives")

    def learn(
        self: SelfA3C,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 100,
        tb_log_name: str = "A3C",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfA3C:
        """
        Train for ``total_timesteps`` env steps, summed over all workers' envs.

        One logging iteration is ``n_workers * envs_per_worker * n_steps`` timesteps, the same amount
        of experience as one A2C update with as many envs.
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
