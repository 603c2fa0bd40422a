"""
Hogwild! updates (``update_mode="hogwild"``), the paper's lock-free variant: every worker clips its
own gradient and applies it to the shared parameters itself, with one set of optimizer statistics
(RMSprop's mean squares, Adam's moments and step count) in shared memory, shared by all workers, as
in the paper's best variant ("shared RMSProp"). The learner only counts, calls back, logs and saves.

The learner's optimizer holds one state per parameter tensor (SB3 saves it in that form). Here the
same state is laid out flat, over the contiguous runs of the flat parameter vector that the
optimizer steps (a DQN policy's target network is in the vector but not in its optimizer), so a
worker's update is one optimizer step over one or two tensors. :class:`SharedOptimizerState` moves
the state between the two forms: from the learner's optimizer when ``learn()`` starts, back to it
when ``learn()`` ends or the model is saved.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch as th

# Optimizers whose every state tensor is updated in place (so stepping the shared tensors updates
# them for everyone) and whose fresh state is the state after a zero-gradient step, step count aside.
HOGWILD_OPTIMIZERS = (th.optim.RMSprop, th.optim.Adam, th.optim.AdamW)


def check_hogwild_optimizer(optimizer_class: type) -> None:
    """Raise ValueError for an optimizer whose state cannot be shared between workers."""
    if not (isinstance(optimizer_class, type) and issubclass(optimizer_class, HOGWILD_OPTIMIZERS)):
        names = ", ".join(f"th.optim.{cls.__name__}" for cls in HOGWILD_OPTIMIZERS)
        raise ValueError(
            f"update_mode='hogwild' shares the optimizer's statistics between worker processes, which works for "
            f"{names}; got optimizer_class={optimizer_class!r}. Use update_mode='learner' for other optimizers."
        )


def flat_ranges(params: Sequence[th.nn.Parameter]) -> dict[int, tuple[int, int]]:
    """Where each parameter (by ``id``) lies in the flat parameter vector."""
    ranges, offset = {}, 0
    for param in params:
        ranges[id(param)] = (offset, offset + param.numel())
        offset += param.numel()
    return ranges


def optimizer_runs(params: Sequence[th.nn.Parameter], optimizer: th.optim.Optimizer) -> list[tuple[int, int]]:
    """The contiguous ranges of the flat parameter vector that ``optimizer`` steps."""
    ranges = flat_ranges(params)
    stepped = sorted(ranges[id(param)] for group in optimizer.param_groups for param in group["params"])
    runs: list[tuple[int, int]] = []
    for start, stop in stepped:
        if runs and runs[-1][1] == start:
            runs[-1] = (runs[-1][0], stop)
        else:
            runs.append((start, stop))
    return runs


@dataclass
class SharedOptimizerState:
    """
    One optimizer's state laid out over runs of the flat parameter vector, in shared memory.

    :param optimizer_class: the learner's optimizer class
    :param hyperparameters: its one parameter group, without the parameters (lr, alpha, eps, ...)
    :param runs: the ``(start, stop)`` ranges of the flat parameter vector it steps
    :param state: one state dict per run; its tensors are in shared memory once :meth:`share_memory_` ran
    """

    optimizer_class: type[th.optim.Optimizer]
    hyperparameters: dict[str, Any]
    runs: list[tuple[int, int]]
    state: list[dict[str, th.Tensor]]

    @classmethod
    def of(cls, optimizer: th.optim.Optimizer, params: Sequence[th.nn.Parameter]) -> "SharedOptimizerState":
        """The flat form of ``optimizer``'s state over ``params`` (the policy's parameters, in flat-vector order)."""
        check_hogwild_optimizer(type(optimizer))
        if len(optimizer.param_groups) != 1:
            raise ValueError(
                f"update_mode='hogwild' needs one parameter group, the optimizer has {len(optimizer.param_groups)}"
            )
        hyperparameters = {key: value for key, value in optimizer.param_groups[0].items() if key != "params"}
        runs = optimizer_runs(params, optimizer)
        ranges = flat_ranges(params)
        self = cls(type(optimizer), hyperparameters, runs, [])
        for start, stop in runs:
            run_state = self._fresh_state(stop - start)
            members = [param for param in params if start <= ranges[id(param)][0] < stop]
            for param in members:
                param_state = optimizer.state.get(param, {})
                param_start, param_stop = ranges[id(param)]
                for key, value in param_state.items():
                    if key == "step":
                        run_state["step"] = th.maximum(run_state["step"], th.as_tensor(value, dtype=run_state["step"].dtype))
                    else:
                        run_state[key][param_start - start : param_stop - start] = value.detach().reshape(-1)
            self.state.append(run_state)
        return self

    def _fresh_state(self, size: int) -> dict[str, th.Tensor]:
        # A zero-gradient step on zero parameters creates the optimizer's state and leaves it at its
        # initial value for every optimizer in HOGWILD_OPTIMIZERS; only the step count moves, to 1.
        dummy = th.nn.Parameter(th.zeros(size))
        dummy.grad = th.zeros(size)
        optimizer = self._build([dummy])
        optimizer.step()
        state = {key: value.detach().clone() for key, value in optimizer.state[dummy].items()}
        state["step"].zero_()
        return state

    def _build(self, params: list[th.nn.Parameter]) -> th.optim.Optimizer:
        optimizer = self.optimizer_class(params)
        optimizer.param_groups[0].update(self.hyperparameters)
        return optimizer

    def share_memory_(self) -> "SharedOptimizerState":
        for run_state in self.state:
            for value in run_state.values():
                value.share_memory_()
        return self

    def optimizer_over(self, flat_params: th.Tensor) -> th.optim.Optimizer:
        """
        An optimizer (for a worker) whose parameters are views of ``flat_params`` (the shared vector)
        and whose state is this shared state: its ``step()`` updates both in place, for every worker.
        Give it a gradient with :meth:`set_gradient`.
        """
        params = [th.nn.Parameter(flat_params[start:stop], requires_grad=False) for start, stop in self.runs]
        optimizer = self._build(params)
        for param, run_state in zip(params, self.state, strict=True):
            optimizer.state[param] = run_state
        return optimizer

    def set_gradient(self, optimizer: th.optim.Optimizer, flat_gradient: th.Tensor) -> None:
        """Point the ``.grad`` of :meth:`optimizer_over`'s parameters at their runs of ``flat_gradient``."""
        for param, (start, stop) in zip(optimizer.param_groups[0]["params"], self.runs, strict=True):
            param.grad = flat_gradient[start:stop]

    def copy_to(self, optimizer: th.optim.Optimizer, params: Sequence[th.nn.Parameter]) -> None:
        """Write this state into ``optimizer``, one state per parameter tensor, as SB3 saves it."""
        ranges = flat_ranges(params)
        for (start, stop), run_state in zip(self.runs, self.state, strict=True):
            for param in params:
                param_start, param_stop = ranges[id(param)]
                if not start <= param_start < stop:
                    continue
                optimizer.state[param] = {
                    key: value.clone()
                    if key == "step"
                    else value[param_start - start : param_stop - start].view_as(param).clone().to(param.device)
                    for key, value in run_state.items()
                }


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
