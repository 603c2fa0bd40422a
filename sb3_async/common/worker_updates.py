"""
Updates applied by the workers themselves (``update_mode="locked"`` and ``update_mode="hogwild"``):
every worker clips its own gradient and applies it to the shared parameters, with one set of
optimizer statistics (RMSprop's mean squares, Adam's moments and step count) in shared memory,
shared by all workers, as in the paper's best variant ("shared RMSProp"). The learner only counts,
calls back, logs, merges VecNormalize statistics and saves; nothing a worker waits for.

- ``"locked"``: the update is taken under the lock that workers also hold to copy the parameters,
  so updates land one at a time on one set of parameters and no copy sees half of one: the
  semantics of the learner applying them (``"learner"``), without the round trip to the learner
  on each worker's critical path. A worker's next segment starts from parameters that include its
  own last update.
- ``"hogwild"``: the update takes no lock (Hogwild!, Recht et al. 2011), as the paper did; a copy
  may catch another worker's update half done.

The shared statistics are a :class:`~sb3_async.common.flat_optimizer.FlatOptimizerState` in shared
memory; the worker's loop is ``_Worker.run_own_updates`` in :mod:`sb3_async.common.collectors.local`.
"""

from dataclasses import dataclass
from typing import Any

from sb3_async.common.flat_optimizer import FLAT_OPTIMIZERS

UPDATE_MODES = ("learner", "locked", "hogwild")
# The modes in which the workers apply their own gradients.
WORKER_UPDATE_MODES = ("locked", "hogwild")


def can_share_optimizer(optimizer_class: Any) -> bool:
    """Whether workers can step one state of ``optimizer_class`` in shared memory (its state is updated in place)."""
    return isinstance(optimizer_class, type) and issubclass(optimizer_class, FLAT_OPTIMIZERS)


def check_shared_optimizer(optimizer_class: type, update_mode: str) -> None:
    """Raise ValueError for an optimizer whose state cannot be shared between workers."""
    if not can_share_optimizer(optimizer_class):
        names = ", ".join(f"th.optim.{cls.__name__}" for cls in FLAT_OPTIMIZERS)
        raise ValueError(
            f"update_mode={update_mode!r} shares the optimizer's statistics between worker processes, which works for "
            f"{names}; got optimizer_class={optimizer_class!r}. Use update_mode='learner' for other optimizers."
        )


@dataclass
class WorkerUpdateSettings:
    """What a worker needs to apply its own gradients as the learner would have."""

    lr_schedule: Any  # SB3's Schedule: progress remaining (1 -> 0) -> learning rate
    max_grad_norm: float | None
    timesteps_at_start: int  # the env steps the model had taken when learn() started
    total_timesteps: int  # as SB3's _setup_learn returns it (num_timesteps included unless reset)
    locked: bool  # True: "locked", under the shared lock; False: "hogwild", lock-free

    def progress_remaining(self, claimed_env_steps: int) -> float:
        """SB3's ``_current_progress_remaining`` once ``claimed_env_steps`` of this learn() were taken."""
        return 1.0 - (self.timesteps_at_start + claimed_env_steps) / self.total_timesteps
