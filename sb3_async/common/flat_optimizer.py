"""
An optimizer's state laid out over the flat parameter vector, so that an update is one optimizer
step over one tensor per contiguous run of parameters, not one per parameter tensor.

SB3 keeps (and saves) one state per parameter tensor. The learner steps the flat form during
``learn()`` (RMSprop for CartPole's 64x64 MLP: about 50 us instead of 210 us over its 12 tensors),
and workers that apply their own updates step it in shared memory (:mod:`sb3_async.common.worker_updates`).
:class:`FlatOptimizerState` moves the state between the two forms: from the policy's optimizer when
``learn()`` starts, back to it when ``learn()`` ends or the model is saved. The runs are those of
the parameters the optimizer steps: a DQN policy's target network is in the vector, not in its optimizer.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch as th

# Optimizers whose every state tensor is updated in place (so stepping shared tensors updates them
# for everyone) and whose fresh state is the state after a zero-gradient step, step count aside.
FLAT_OPTIMIZERS = (th.optim.RMSprop, th.optim.Adam, th.optim.AdamW)


def can_flatten(optimizer: th.optim.Optimizer) -> bool:
    return isinstance(optimizer, FLAT_OPTIMIZERS) and len(optimizer.param_groups) == 1


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
class FlatOptimizerState:
    """
    One optimizer's state laid out over runs of the flat parameter vector (in shared memory for Hogwild).

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
    def of(cls, optimizer: th.optim.Optimizer, params: Sequence[th.nn.Parameter]) -> "FlatOptimizerState":
        """The flat form of ``optimizer``'s state over ``params`` (the policy's parameters, in flat-vector order)."""
        if not can_flatten(optimizer):
            raise ValueError(f"cannot lay out {type(optimizer).__name__}'s state flat: {FLAT_OPTIMIZERS}, one parameter group")
        hyperparameters = {key: value for key, value in optimizer.param_groups[0].items() if key != "params"}
        hyperparameters["foreach"] = False  # one tensor per run: the multi-tensor kernels only add their overhead
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
        # initial value for every optimizer in FLAT_OPTIMIZERS; only the step count moves, to 1.
        dummy = th.nn.Parameter(th.zeros(size))
        dummy.grad = th.zeros(size)
        optimizer = self._build([dummy])
        optimizer.step()
        state = {key: value.detach().clone() for key, value in optimizer.state[dummy].items()}
        state["step"].zero_()
        return state

    def _build(self, params: list[th.nn.Parameter]) -> th.optim.Optimizer:
        optimizer = self.optimizer_class(params)  # type: ignore[call-arg]  # concrete optimizers default the rest
        optimizer.param_groups[0].update(self.hyperparameters)
        return optimizer

    def share_memory_(self) -> "FlatOptimizerState":
        for run_state in self.state:
            for value in run_state.values():
                value.share_memory_()
        return self

    def optimizer_over(self, flat_params: th.Tensor) -> th.optim.Optimizer:
        """
        An optimizer whose parameters are views of ``flat_params`` and whose state is this state: its
        ``step()`` updates both in place (for every worker, when they are in shared memory).
        Give it a gradient with :meth:`set_gradient`.
        """
        params = [th.nn.Parameter(flat_params[start:stop], requires_grad=False) for start, stop in self.runs]
        optimizer = self._build(params)
        for param, run_state in zip(params, self.state, strict=True):
            optimizer.state[param] = run_state
        return optimizer

    def step(self, flat_params: th.Tensor, flat_gradient: th.Tensor, lr: float) -> None:
        """
        What ``optimizer_over(flat_params).step()`` does with ``flat_gradient`` at learning rate ``lr``,
        without a torch optimizer: building or stepping one imports ``torch._dynamo`` (about 1.4 s), which
        the workers that apply their own updates then need not import (see :mod:`sb3_async.common.forkserver`).
        """
        for (start, stop), run_state in zip(self.runs, self.state, strict=True):
            param, grad = flat_params[start:stop], flat_gradient[start:stop]
            if issubclass(self.optimizer_class, th.optim.RMSprop):
                _rmsprop_step(param, grad, run_state, lr, self.hyperparameters)
            else:
                _adam_step(param, grad, run_state, lr, self.hyperparameters, self.optimizer_class)

    def stepper_over(self, flat_params: th.Tensor, flat_gradient: th.Tensor) -> Callable[[float], None]:
        """
        A step of this state over ``flat_params`` with ``flat_gradient``, at the learning rate it is called
        with: :meth:`step` for RMSprop, Adam and AdamW themselves; for a subclass, which may step otherwise,
        its own ``step()`` (through :meth:`optimizer_over`).
        """
        if self.optimizer_class in FLAT_OPTIMIZERS:
            return lambda lr: self.step(flat_params, flat_gradient, lr)
        optimizer = self.optimizer_over(flat_params)
        self.set_gradient(optimizer, flat_gradient)

        def step(lr: float) -> None:
            optimizer.param_groups[0]["lr"] = lr
            optimizer.step()

        return step

    def set_gradient(self, optimizer: th.optim.Optimizer, flat_gradient: th.Tensor) -> None:
        """Point the ``.grad`` of :meth:`optimizer_over`'s parameters at their runs of ``flat_gradient``."""
        for param, (start, stop) in zip(optimizer.param_groups[0]["params"], self.runs, strict=True):
            param.grad = flat_gradient[start:stop]

    def copy_to(self, optimizer: th.optim.Optimizer, params: Sequence[th.nn.Parameter]) -> None:
        """Write this state into ``optimizer``, one state per parameter tensor, as SB3 saves it."""
        ranges = flat_ranges(params)
        for (start, stop), run_state in zip(self.runs, self.state, strict=True):
            # Read once: lock-free workers go on counting, and every tensor of the run must show the same count.
            step = run_state["step"].clone() if "step" in run_state else None
            for param in params:
                param_start, param_stop = ranges[id(param)]
                if not start <= param_start < stop:
                    continue
                optimizer.state[param] = {
                    key: step.clone()
                    if key == "step" and step is not None
                    else value[param_start - start : param_stop - start].view_as(param).clone().to(param.device)
                    for key, value in run_state.items()
                }


# torch's single-tensor steps (torch/optim/rmsprop.py, adam.py), op for op, for a real CPU tensor that
# is neither differentiable nor capturable; tests/test_flat_optimizer.py holds them to torch's optimizers.


def _rmsprop_step(param: th.Tensor, grad: th.Tensor, state: dict[str, th.Tensor], lr: float, group: dict[str, Any]) -> None:
    grad = -grad if group.get("maximize", False) else grad
    state["step"] += 1
    if group["weight_decay"] != 0:
        grad = grad.add(param, alpha=group["weight_decay"])
    alpha, square_avg = group["alpha"], state["square_avg"]
    square_avg.mul_(alpha).addcmul_(grad, grad, value=1 - alpha)
    if group.get("centered", False):
        grad_avg = state["grad_avg"]
        grad_avg.lerp_(grad, 1 - alpha)
        avg = square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt_()
    else:
        avg = square_avg.sqrt()
    avg = avg.add_(group["eps"])
    if group.get("momentum", 0) > 0:
        buffer = state["momentum_buffer"]
        buffer.mul_(group["momentum"]).addcdiv_(grad, avg)
        param.add_(buffer, alpha=-lr)
    else:
        param.addcdiv_(grad, avg, value=-lr)


def _adam_step(
    param: th.Tensor, grad: th.Tensor, state: dict[str, th.Tensor], lr: float, group: dict[str, Any], optimizer_class: type
) -> None:
    grad = -grad if group.get("maximize", False) else grad
    state["step"] += 1
    weight_decay = group["weight_decay"]
    if weight_decay != 0:
        # AdamW decouples it (torch < 2.6 has no such key: AdamW was its own class then).
        if group.get("decoupled_weight_decay", issubclass(optimizer_class, th.optim.AdamW)):
            param.mul_(1 - lr * weight_decay)
        else:
            grad = grad.add(param, alpha=weight_decay)
    beta1, beta2 = group["betas"]
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    step = state["step"].item()
    bias_correction2_sqrt = (1 - beta2**step) ** 0.5
    if group.get("amsgrad", False):
        th.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
        denom = (state["max_exp_avg_sq"].sqrt() / bias_correction2_sqrt).add_(group["eps"])
    else:
        denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(group["eps"])
    param.addcdiv_(exp_avg, denom, value=-lr / (1 - beta1**step))
