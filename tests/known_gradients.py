"""A worker logic whose every gradient is known in advance. Module-level, so that the worker processes can import it."""

import torch as th

from sb3_async import A3C
from sb3_async.common.collectors import SegmentResult, WorkerLogic

STEPS_PER_GRADIENT = 5


def known_gradient(n_params: int) -> th.Tensor:
    """The same gradient for every segment of every worker: a fixed pattern of signs and sizes."""
    return th.linspace(-1.0, 1.0, n_params) + 0.01


class KnownGradientLogic(WorkerLogic):
    """Takes no env step; its loss is <g, theta>, so its gradient is :func:`known_gradient`, whatever theta is."""

    def compute_loss(self) -> tuple[th.Tensor, SegmentResult]:
        params = list(self.policy.parameters())
        gradient = known_gradient(sum(param.numel() for param in params))
        loss = th.dot(gradient, th.cat([param.reshape(-1) for param in params]))
        return loss, SegmentResult(n_env_steps=STEPS_PER_GRADIENT)


class KnownGradientA3C(A3C):
    """A3C whose workers hand in :func:`known_gradient`: what the updates sum to can be computed exactly."""

    def _worker_logic(self) -> tuple[type, dict]:
        return KnownGradientLogic, {}
