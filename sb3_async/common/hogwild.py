"""
Hogwild! updates (``update_mode="hogwild"``), the paper's lock-free variant: every worker clips its
own gradient and applies it to the shared parameters itself, with one set of optimizer statistics
(RMSprop's mean squares, Adam's moments and step count) in shared memory, shared by all workers, as
in the paper's best variant ("shared RMSProp"). The learner only counts, calls back, logs and saves.
The shared statistics are a :class:`~sb3_async.common.flat_optimizer.FlatOptimizerState` in shared
memory; the worker's loop is ``_Worker.run_hogwild`` in :mod:`sb3_async.common.collectors.local`.
"""

from dataclasses import dataclass
from typing import Any

from sb3_async.common.flat_optimizer import FLAT_OPTIMIZERS


def check_hogwild_optimizer(optimizer_class: type) -> None:
    """Raise ValueError for an optimizer whose state cannot be shared between workers."""
    if not (isinstance(optimizer_class, type) and issubclass(optimizer_class, FLAT_OPTIMIZERS)):
        names = ", ".join(f"th.optim.{cls.__name__}" for cls in FLAT_OPTIMIZERS)
        raise ValueError(
            f"update_mode='hogwild' shares the optimizer's statistics between worker processes, which works for "
            f"{names}; got optimizer_class={optimizer_class!r}. Use update_mode='learner' for other optimizers."
        )


@dataclass
class HogwildSettings:
    """What a Hogwild worker needs to apply its own gradients as the learner would have."""

    lr_schedule: Any  # SB3's Schedule: progress remaining (1 -> 0) -> learning rate
    max_grad_norm: float | None
    timesteps_at_start: int  # the env steps the model had taken when learn() started
    total_timesteps: int  # as SB3's _setup_learn returns it (num_timesteps included unless reset)

    def progress_remaining(self, claimed_env_steps: int) -> float:
        """SB3's ``_current_progress_remaining`` once ``claimed_env_steps`` of this learn() were taken."""
        return 1.0 - (self.timesteps_at_start + claimed_env_steps) / self.total_timesteps
