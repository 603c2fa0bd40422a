import io
import pathlib
from collections.abc import Sequence
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch as th
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule
from stable_baselines3.common.utils import LinearSchedule, get_parameters_by_name, polyak_update
from stable_baselines3.dqn import DQN
from stable_baselines3.dqn.policies import DQNPolicy

from sb3_async.async_q.worker import AsyncQWorker
from sb3_async.common.async_algorithm import AsyncOffPolicyAlgorithm
from sb3_async.common.collectors import GradientReport

SelfAsyncQLearning = TypeVar("SelfAsyncQLearning", bound="AsyncQLearning")

# Mnih et al. 2016, section 8: each thread's final epsilon, and how likely it is.
PAPER_FINAL_EPS = (0.1, 0.01, 0.5)
PAPER_FINAL_EPS_PROBS = (0.4, 0.3, 0.3)


class AsyncQLearning(AsyncOffPolicyAlgorithm, DQN):
    """
    Asynchronous one-step and n-step Q-learning (Mnih et al. 2016, Algorithms S1 and S2)

    Paper: https://arxiv.org/abs/1602.01783

    SB3's DQN with the replay buffer replaced by parallel actors: ``n_workers`` processes each act
    epsilon-greedily in ``envs_per_worker`` envs with a local copy of the Q-network, sum the gradient
    of ``train_freq`` steps per env and hand it to the learner, which applies it at once with the
    one RMSprop optimizer. The learner owns the target network, copies the online network into it
    every ``target_update_interval`` env steps, and the workers receive it with every parameter sync.
    Each worker anneals its own epsilon from ``exploration_initial_eps`` to a final value drawn
    from ``exploration_final_eps`` with ``exploration_final_eps_probs`` (the paper's exploration).

    :param policy: The policy model to use (MlpPolicy, CnnPolicy, ...): SB3's DQN policies
    :param env: The environment to learn from: an env id, a picklable callable that returns a gym.Env,
        or a VecEnv that the workers can rebuild (see ``sb3_async.common.worker_envs``). Discrete actions only.
    :param learning_rate: The learning rate, it can be a function
        of the current progress remaining (from 1 to 0)
    :param gamma: the discount factor
    :param train_freq: steps each worker runs in each of its envs per gradient (the paper's
        ``I_AsyncUpdate`` for the one-step methods and ``t_max`` for n-step Q-learning)
    :param n_steps: rewards a target sums before it bootstraps from the target network: 1 for
        one-step Q-learning; ``train_freq`` for the paper's n-step Q-learning, where every state of a
        segment looks ahead to its end. Must not exceed ``train_freq``.
    :param target_update_interval: copy the online network into the target network every
        ``target_update_interval`` env steps, summed over all workers
    :param exploration_fraction: fraction of entire training period over which each worker's exploration rate is reduced
    :param exploration_initial_eps: initial value of random action probability
    :param exploration_final_eps: final value of random action probability: one value for every
        worker, or the values each worker draws its own from
    :param exploration_final_eps_probs: the probability of each of ``exploration_final_eps``.
        Default: the paper's (0.4, 0.3, 0.3) for its (0.1, 0.01, 0.5), else uniform.
    :param max_grad_norm: The maximum value for the gradient clipping (applied by whoever applies the gradient)
    :param use_rms_prop: Whether to use RMSprop (default, the paper's shared RMSprop) or Adam as optimizer
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
    :param seed: Seed for the pseudo random generators (worker ``k`` uses ``seed + k``; the workers'
        final exploration rates are drawn with ``seed``)
    :param device: Device (cpu, cuda, ...) on which the learner's policy lives. Workers always run on the CPU.
    :param _init_setup_model: Whether or not to build the network at the creation of the instance
    """

    # Env steps per env per gradient: the workers' segment length, never converted to SB3's TrainFreq.
    train_freq: int

    worker_class: ClassVar[type[AsyncQWorker]] = AsyncQWorker
    policy: DQNPolicy

    def __init__(
        self,
        policy: str | type[DQNPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 7e-4,
        gamma: float = 0.99,
        train_freq: int = 5,
        n_steps: int = 1,
        target_update_interval: int = 10_000,
        exploration_fraction: float = 0.1,
        exploration_initial_eps: float = 1.0,
        exploration_final_eps: float | Sequence[float] = PAPER_FINAL_EPS,
        exploration_final_eps_probs: Sequence[float] | None = None,
        max_grad_norm: float = 10,
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
    ) -> None:
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
        if not isinstance(train_freq, (int, np.integer)) or train_freq < 1:
            raise ValueError(f"train_freq must be an integer >= 1 (steps per env per gradient), got {train_freq!r}")
        if n_steps > train_freq:
            raise ValueError(f"n_steps={n_steps} cannot exceed train_freq={train_freq}: a target cannot look past its segment")
        if not isinstance(target_update_interval, (int, np.integer)) or target_update_interval < 1:
            raise ValueError(f"target_update_interval must be an integer >= 1, got {target_update_interval!r}")
        final_eps, final_eps_probs = _check_exploration(
            exploration_fraction, exploration_initial_eps, exploration_final_eps, exploration_final_eps_probs
        )
        try:
            super().__init__(
                policy,
                self._learner_env(env),
                learning_rate=learning_rate,
                gamma=gamma,
                train_freq=train_freq,
                n_steps=n_steps,
                target_update_interval=target_update_interval,
                exploration_fraction=exploration_fraction,
                exploration_initial_eps=exploration_initial_eps,
                exploration_final_eps=final_eps,  # type: ignore[arg-type]
                max_grad_norm=max_grad_norm,
                stats_window_size=stats_window_size,
                tensorboard_log=tensorboard_log,
                policy_kwargs=policy_kwargs,
                verbose=verbose,
                seed=seed,
                device=device,
                _init_setup_model=False,
            )
        except AssertionError as error:  # SB3 checks the action space with an assert
            raise ValueError(f"{type(self).__name__}: {error}") from error
        self.exploration_final_eps_probs = final_eps_probs
        self._finish_init(use_rms_prop, rms_prop_eps, _init_setup_model)

    def _setup_model(self) -> None:
        # No replay buffer: the workers' fresh segments take its place.
        self._setup_lr_schedule()
        self.set_random_seed(self.seed)
        self.policy = self.policy_class(  # type: ignore[assignment]
            self.observation_space, self.action_space, self.lr_schedule, **self.policy_kwargs
        )
        self.policy = self.policy.to(self.device)
        self._create_aliases()
        # As DQN keeps them: BatchNorm statistics go to the target network with its parameters.
        self.batch_norm_stats = get_parameters_by_name(self.q_net, ["running_"])
        self.batch_norm_stats_target = get_parameters_by_name(self.q_net_target, ["running_"])
        self._steps_since_target_update = 0
        self.target_updates = 0
        self._worker_exploration_rates: dict[int, float] = {}

    def _setup_learn(self, *args: Any, **kwargs: Any) -> Any:
        self._worker_exploration_rates = {}  # this learn()'s workers only
        return super()._setup_learn(*args, **kwargs)

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_worker_exploration_rates"]

    def worker_exploration_schedules(self) -> list[LinearSchedule]:
        """
        Each worker's epsilon schedule. The final values are drawn with ``seed``, so a seeded model draws
        the same ones on every ``learn()``.
        """
        rng = np.random.default_rng(self.seed)
        finals = rng.choice(self.exploration_final_eps, size=self.n_workers, p=self.exploration_final_eps_probs)
        return [LinearSchedule(self.exploration_initial_eps, float(final), self.exploration_fraction) for final in finals]

    def _worker_logic(self) -> tuple[type, dict[str, Any]]:
        return self.worker_class, dict(
            train_freq=self.train_freq,
            n_steps=self.n_steps,
            gamma=self.gamma,
            exploration_schedules=self.worker_exploration_schedules(),
        )

    def _after_gradient_step(self, report: GradientReport) -> None:
        # The paper refreshes the target every 40,000 frames; SB3's DQN counts env steps of all envs too.
        self._steps_since_target_update += report.segment.n_env_steps
        if self._steps_since_target_update >= self.target_update_interval:
            self._steps_since_target_update %= self.target_update_interval
            with self._writing_shared_parameters():
                polyak_update(self.q_net.parameters(), self.q_net_target.parameters(), 1.0)
                polyak_update(self.batch_norm_stats, self.batch_norm_stats_target, 1.0)  # as DQN does
            self.target_updates += 1
            self.logger.record("train/target_updates", self.target_updates)
        # What predict(deterministic=False) uses, as SB3's DQN: here the workers' mean epsilon.
        self._worker_exploration_rates[report.worker_id] = report.segment.stats["rollout/exploration_rate"]
        self.exploration_rate = float(np.mean(list(self._worker_exploration_rates.values())))

    def save_replay_buffer(self, path: str | pathlib.Path | io.BufferedIOBase) -> None:
        raise NotImplementedError(f"{type(self).__name__} has no replay buffer to save: its workers learn from fresh segments")

    def load_replay_buffer(self, path: str | pathlib.Path | io.BufferedIOBase, truncate_last_traj: bool = True) -> None:
        raise NotImplementedError(
            f"{type(self).__name__} has no replay buffer to load into: its workers learn from fresh segments"
        )

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        raise NotImplementedError(
            f"{type(self).__name__} trains in learn(): the learner applies each worker's gradient as it arrives"
        )

    def learn(
        self: SelfAsyncQLearning,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 100,
        tb_log_name: str = "AsyncQLearning",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfAsyncQLearning:
        """
        Train for ``total_timesteps`` env steps, summed over all workers' envs. Logs are written every
        ``log_interval`` iterations of ``n_workers * envs_per_worker * train_freq`` timesteps.
        """
        return self._learn_async(
            total_timesteps,
            callback,
            log_interval,
            tb_log_name,
            reset_num_timesteps,
            progress_bar,
            timesteps_per_iteration=self.n_workers * self.envs_per_worker * self.train_freq,
        )


def _check_exploration(
    fraction: float, initial_eps: float, final_eps: float | Sequence[float], final_eps_probs: Sequence[float] | None
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The final epsilons and their probabilities as tuples, or a ValueError that says what is wrong."""
    if not 0 < fraction <= 1:
        raise ValueError(f"exploration_fraction must be in (0, 1], got {fraction!r}")
    if isinstance(final_eps, (int, float, np.integer, np.floating)):
        finals: tuple[float, ...] = (float(final_eps),)
    else:
        finals = tuple(float(eps) for eps in final_eps)
    if not finals or not all(0 <= eps <= 1 for eps in (initial_eps, *finals)):
        raise ValueError(f"exploration rates must lie in [0, 1], got initial {initial_eps!r} and final {final_eps!r}")
    if final_eps_probs is None:
        return finals, PAPER_FINAL_EPS_PROBS if finals == PAPER_FINAL_EPS else tuple(1 / len(finals) for _ in finals)
    probs = tuple(float(p) for p in final_eps_probs)
    if len(probs) != len(finals) or min(probs) < 0 or not np.isclose(sum(probs), 1.0):
        raise ValueError(
            f"exploration_final_eps_probs must give one non-negative probability per final epsilon, summing to 1; "
            f"got {final_eps_probs!r} for {final_eps!r}"
        )
    return finals, probs
