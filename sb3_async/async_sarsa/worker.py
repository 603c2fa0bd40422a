"""An asynchronous SARSA worker: the Q-learning worker with an on-policy bootstrap."""

import numpy as np
import torch as th

from sb3_async.async_q.worker import AsyncQWorker


class AsyncSARSAWorker(AsyncQWorker):
    """Bootstraps from ``Q(s', a'; theta-)``, with ``a'`` the epsilon-greedy action the worker takes in ``s'``."""

    keeps_next_action = True

    def bootstrap_values(self, observations: th.Tensor | dict[str, th.Tensor], next_actions: np.ndarray) -> th.Tensor:
        with th.no_grad():
            q_values = self.policy.q_net_target(observations)
        return q_values.gather(1, th.as_tensor(next_actions, dtype=th.long).view(-1, 1)).flatten()
