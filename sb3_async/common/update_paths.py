"""
Who applies the updates of one ``learn()``, and what that takes. One object per path, built at the
start of ``learn()`` and closed in its ``finally``; it owns the optimizer state laid out flat, the
parameters' place in shared memory, and putting everything back in SB3's form at the end. The
collector it holds stays the transport.

- :class:`LearnerApplies` (``update_mode="learner"``, and every Ray run): the learner steps the
  optimizer on each gradient it receives; the workers copy what it publishes.
- :class:`WorkersApply` (``"locked"``, ``"hogwild"``): each worker steps an optimizer over the
  parameters in shared memory, with the optimizer state all workers share; the learner's
  parameters are views of those, so its callbacks see every update as it lands.

Both give SB3's objects back at :meth:`UpdatePath.close`: ``policy.parameters()`` tensors of their
own again, and the optimizer state where ``policy.optimizer.state_dict()`` (and so ``save``) reads it.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import torch as th
from stable_baselines3.common.policies import BasePolicy

from sb3_async.common.collectors import GradientCollector, LocalCollector, flat_parameters_view, vector_to_buffers
from sb3_async.common.flat_optimizer import FlatOptimizerState


class UpdatePath:
    """
    :param collector: the transport: its workers, and their reports
    :param policy: the learner's policy
    :param flat_state: the policy optimizer's state laid out flat (one tensor per state entry), when it can be
    """

    workers_apply = False

    def __init__(self, collector: GradientCollector, policy: BasePolicy, flat_state: FlatOptimizerState | None) -> None:
        self.collector = collector
        self.policy = policy
        self.params = list(policy.parameters())
        self.flat_state = flat_state
        self._closed = False

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Around a read of all the parameters and the optimizer state (a save): no update lands halfway through it."""
        yield

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Around the learner's write into the parameters (a target network's refresh): no worker copies half of it."""
        yield

    def optimizer_state_to_sb3(self) -> None:
        """Write the flat optimizer state (stepped since) into ``policy.optimizer``, where SB3 reads it."""
        if self.flat_state is not None:
            self.flat_state.copy_to(self.policy.optimizer, self.params)

    def close(self, learn_went_well: bool = False) -> None:
        """
        Stop the workers (``learn_went_well``: the collector may keep them for the next ``learn()``), and
        give the policy back in SB3's form. Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        try:
            if learn_went_well:
                self.collector.end()
            else:
                self.collector.close()
        finally:
            self._restore_policy()
            self.optimizer_state_to_sb3()

    def _restore_policy(self) -> None:
        pass


class LearnerApplies(UpdatePath):
    """
    The learner applies every gradient: ``optimizer`` steps the flat parameters (one tensor per
    state entry, the same update as SB3's optimizer over its parameter tensors) with the gradient
    loaded into ``flat_gradient``; without a flat state, the policy's own optimizer steps.
    """

    def __init__(
        self,
        collector: GradientCollector,
        policy: BasePolicy,
        flat_state: FlatOptimizerState | None,
        flat_params: th.Tensor,
        flat_gradient: th.Tensor,
    ) -> None:
        super().__init__(collector, policy, flat_state)
        if flat_state is not None:
            self.optimizer = flat_state.optimizer_over(flat_params)
            flat_state.set_gradient(self.optimizer, flat_gradient)
        else:
            self.optimizer = policy.optimizer
            for group in self.optimizer.param_groups:
                if group.get("foreach") is None:
                    group["foreach"] = True  # same update, one kernel per op for all tensors


class WorkersApply(UpdatePath):
    """
    The workers apply their own gradients to the parameters in the collector's shared memory, with
    ``flat_state`` (moved there by the collector). ``locked``: one at a time under the lock their
    parameter copies take, so the learner's snapshots and writes take it too.
    """

    workers_apply = True
    collector: LocalCollector

    def __init__(self, collector: LocalCollector, policy: BasePolicy, flat_state: FlatOptimizerState, locked: bool) -> None:
        super().__init__(collector, policy, flat_state)
        self.locked = locked
        self._holding_lock = False
        self.policy_buffers = list(policy.buffers())
        # Still readable once the collector has closed, to give the learner the workers' last buffers.
        self.shared_buffers = collector.shared_buffers
        # The learner's parameters become views of the ones the workers update, so callbacks see them.
        th.nn.utils.vector_to_parameters(collector.shared_params, self.params)

    @contextmanager
    def holding_lock(self) -> Iterator[None]:
        """The lock the workers take to copy the parameters and to claim steps (and, locked, to update); re-entrant."""
        if self._holding_lock:
            yield
            return
        with self.collector.locked():
            self._holding_lock = True
            try:
                yield
            finally:
                self._holding_lock = False

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        # th.save of views the workers go on writing could write other bytes than its checksum covered: a corrupt
        # file. Under the lock, locked workers' updates are in it whole or not at all (lock-free ones may be halfway).
        with self.holding_lock():
            yield

    @contextmanager
    def writing(self) -> Iterator[None]:
        if self.locked:
            with self.holding_lock():
                yield
        else:  # lock-free workers take no lock to update: a write by the learner is one more such update
            yield

    def _restore_policy(self) -> None:
        flat_parameters_view(self.params)  # the learner's own copy again, of what the workers made
        if self.policy_buffers:
            vector_to_buffers(self.shared_buffers, self.policy_buffers)
