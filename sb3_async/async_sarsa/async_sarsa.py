from typing import ClassVar, TypeVar

from stable_baselines3.common.type_aliases import MaybeCallback

from sb3_async.async_q.async_q import AsyncQLearning
from sb3_async.async_q.worker import AsyncQWorker
from sb3_async.async_sarsa.worker import AsyncSARSAWorker

SelfAsyncSARSA = TypeVar("SelfAsyncSARSA", bound="AsyncSARSA")


class AsyncSARSA(AsyncQLearning):
    """
    Asynchronous one-step SARSA (Mnih et al. 2016, section 4): asynchronous Q-learning whose target
    bootstraps from the action the worker takes next, ``r + gamma Q(s', a'; theta-)``, instead of
    ``max_a Q(s', a; theta-)``. With ``n_steps > 1``, n-step SARSA.

    Every parameter is :class:`~sb3_async.async_q.AsyncQLearning`'s, with the same meaning.
    """

    worker_class: ClassVar[type[AsyncQWorker]] = AsyncSARSAWorker

    def learn(
        self: SelfAsyncSARSA,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 100,
        tb_log_name: str = "AsyncSARSA",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfAsyncSARSA:
        return super().learn(total_timesteps, callback, log_interval, tb_log_name, reset_num_timesteps, progress_bar)
