"""Dynamic-balance EMA (CoIN / LCIA): weight averaging whose balance weight adapts per tensor and step.

Paper: *Large Continual Instruction Assistant*, Qiao et al. (ICML 2025), arXiv 2410.10868. Official code
(reference only, MIT): https://github.com/JingyangQiao/CoIN, ``CoIN/peft/tuners/lora.py``
(``ema_update`` after every ``optimizer.step()``, ``ema_replace`` at the end of training).

An exponential moving average ``theta*`` of the trainable weights keeps what earlier tasks
learned while the live weights ``theta`` learn the new task. Instead of a fixed decay, the
paper derives the balance weight ``beta_t`` from a second-order Taylor expansion of the loss
around ``theta*_{t-1}`` (the gradient is the first-order term, a finite difference of
gradients stands in for the Hessian). Per parameter tensor, with L1 norms (the code's closed
form, the one behind the released numbers)::

    a = ||theta_t - theta*_{t-1}||_1     b = ||g_t||_1     c = ||g_t - g_{t-1}||_1
    beta_t = 2 (1 + b) / (a c)           (fallback 0.01 where beta_t is not in (0, 1))
    theta*_t = (1 - beta_t) theta*_{t-1} + beta_t theta_t

``theta_t`` are the weights after the optimizer step, ``g_t`` the gradient that step used.
The first update of a task copies ``theta`` into the shadow (the official code's deepcopy
followed by a fallback step, which is the same thing), and at the end of every task the
average replaces the trained weights (``ema_replace``); the shadow then starts afresh for the
next task, as in the official pipeline, where each task is a new run.

:class:`DynamicEMA` subclasses Lightning's :class:`~lightning.pytorch.callbacks.WeightAveraging`
(its swap-for-validation and checkpoint logic are reused); :class:`TaskEndEMA` is Lightning's
:class:`~lightning.pytorch.callbacks.EMAWeightAveraging` (fixed decay) with the same
end-of-task replacement, the paper's fixed-EMA baseline. Task ends come from a continual
DataModule (:func:`zoo.datamodules.continual.task_schedule`); without one the average replaces
the weights when training ends, as the official code does.

Choices and guesses (named in the card too):

- The official code's bare ``except:`` (no previous gradient on the first step, a missing
  gradient) is reproduced deterministically: ``beta`` falls back where it is NaN, infinite,
  not in ``(0, 1)``, or where this or the previous step had no gradient for the tensor.
- Only parameters with ``requires_grad`` at ``setup`` are averaged (the code averages the
  trainable LoRA weights); buffers and frozen parameters follow the model (never averaged,
  swapped or copied back), so BatchNorm statistics are never mixed across tasks and a replay
  memory that grows (ER, ER-ACE) stays the live one. :class:`TaskEndEMA` also averages
  fixed-shape floating-point buffers (Lightning's ``use_buffers``); all others follow.
- Gradients are read after the optimizer step, so they are unscaled (AMP) and clipped, as in
  the official trainer. A gradient set to ``None`` after the step (manual optimization that
  zeroes after stepping) makes that tensor fall back.
- Norms and ``beta`` are computed in the parameters' dtype, in the code's order of operations.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import EMAWeightAveraging, WeightAveraging
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel
from typing_extensions import override

from zoo.datamodules.continual import task_schedule

__all__ = ["DynamicEMA", "TaskEndEMA", "balance_weights", "dynamic_ema_update"]


# --------------------------------------------------------------------------------- the maths
def balance_weights(
    param_gap: Tensor, grad_norm: Tensor, grad_diff_norm: Tensor, fallback: float = 0.01, valid: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """CoIN's per-tensor balance weight ``beta = 2 (1 + b) / (a c)`` and where it was used.

    Official ``ema_update``: ``alpha = float((1 + b) / (a * c) * 2)``, kept if ``0 < alpha < 1``,
    else 0.01. A zero denominator gives ``inf`` and a NaN norm gives NaN: both fall back here
    without exceptions, as does every tensor where ``valid`` is False (no previous gradient).

    Args:
        param_gap: ``a = ||theta_t - theta*_{t-1}||``, shape ``(n,)``, one entry per tensor.
        grad_norm: ``b = ||g_t||``, shape ``(n,)``.
        grad_diff_norm: ``c = ||g_t - g_{t-1}||``, shape ``(n,)``.
        fallback: the weight used where the formula does not apply (0.01 = decay 0.99).
        valid: optional bool mask ``(n,)``; False forces the fallback.

    Returns:
        ``(beta, adaptive)``: the weights ``(n,)`` and the bool mask of tensors that used the formula.

    >>> beta, used = balance_weights(torch.tensor([4.0, 0.0]), torch.tensor([1.0, 1.0]), torch.tensor([2.0, 2.0]))
    >>> beta.tolist(), used.tolist()
    ([0.5, 0.009999999776482582], [True, False])
    """
    beta = (1 + grad_norm) / (param_gap * grad_diff_norm) * 2
    adaptive = (beta > 0) & (beta < 1)  # NaN and inf compare False: the code's fallback cases
    if valid is not None:
        adaptive &= valid
    return torch.where(adaptive, beta, torch.full_like(beta, fallback)), adaptive


def _norms(tensors: list[Tensor], p: float, scratch: bool = False) -> Tensor:
    """Per-tensor ``p``-norms as one vector: ``torch._foreach_norm``, except the L1 norm on CPU.

    torch's CPU kernel for the L1 norm is not vectorised: on ResNet-18's gradients
    ``abs().sum()`` per tensor measured 3-4x faster than ``_foreach_norm(ord=1)`` (one thread).
    ``scratch=True``: the tensors may be overwritten (``abs_`` in place, no temporary).
    """
    if p == 1 and tensors[0].device.type == "cpu":
        return torch.stack([(t.abs_() if scratch else t.abs()).sum() for t in tensors])
    return torch.stack(torch._foreach_norm(tensors, p))


def dynamic_ema_update(
    shadow: list[Tensor],
    params: list[Tensor],
    grads: list[Tensor],
    prev_grads: list[Tensor],
    valid: Tensor | None = None,
    fallback: float = 0.01,
    norm_p: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """One CoIN EMA step over whole tensor lists, in place (official ``ema_update``).

    ``shadow[i] <- (1 - beta_i) shadow[i] + beta_i params[i]`` with ``beta`` from
    :func:`balance_weights`; then ``prev_grads[i] <- grads[i]`` (the code's ``p_grad_data``).
    Fused ``torch._foreach_*`` kernels over whole lists, in place (no temporaries the size of
    the model); only the three norms are per tensor (:func:`_norms`).

    Args:
        shadow: the averaged tensors ``theta*_{t-1}`` (updated in place).
        params: the weights ``theta_t`` after the optimizer step.
        grads: the gradients ``g_t`` of that step.
        prev_grads: ``g_{t-1}`` (overwritten with ``g_t``).
        valid: bool ``(n,)``; False where ``g_{t-1}`` does not exist (forces the fallback).
        fallback / norm_p: the fallback weight and the norm's order (the paper: 1).

    Returns:
        ``(beta, adaptive)`` as :func:`balance_weights`.
    """
    torch._foreach_sub_(shadow, params)  # shadow holds theta*_{t-1} - theta_t (no temporary)
    a = _norms(shadow, norm_p)  # ||theta_t - theta*_{t-1}||
    b = _norms(grads, norm_p)  # L'
    torch._foreach_sub_(prev_grads, grads)  # g_{t-1} - g_t: the norm of g_t - g_{t-1}
    c = _norms(prev_grads, norm_p, scratch=True)  # L'' (prev_grads is overwritten below)
    beta, adaptive = balance_weights(a, b, c, fallback, valid)
    torch._foreach_mul_(shadow, list((1 - beta).unbind()))  # (1 - beta)(theta* - theta) ...
    torch._foreach_add_(shadow, params)  # ... + theta = (1 - beta) theta* + beta theta
    torch._foreach_copy_(prev_grads, grads)  # official p_grad_data[n] = deepcopy(p.grad)
    return beta, adaptive


# ---------------------------------------------------------------------- end-of-task replacement
def _named_tensors(module: nn.Module) -> dict[str, Tensor]:
    """Parameters and buffers by name, looked up afresh: a buffer may be rebound to a new tensor of another shape."""
    return {**dict(module.named_parameters()), **dict(module.named_buffers())}


class _TaskEndReplacement:
    """What :class:`DynamicEMA` and :class:`TaskEndEMA` add to Lightning's ``WeightAveraging``.

    - at the end of every task of a continual DataModule the average replaces the model's
      weights (official ``ema_replace``) and the shadow starts afresh for the next task;
      without a continual DataModule, at the end of training (Lightning's behaviour);
    - an average that was never updated (validation before the first step, or right after a
      task end) is never swapped or copied into the model;
    - the average covers named tensors of fixed shape (:meth:`_select_averaged`): parameters
      and, with ``use_buffers``, non-empty floating-point buffers. Every other buffer (replay
      memories, counters, generator states) follows the live model: it is never averaged,
      swapped or copied back, so a buffer that changes shape (an ER reservoir filling up)
      neither crashes the callback nor comes back stale. An averaged buffer whose shape
      changes joins the followed ones from then on (``followed_buffers`` in the state);
    - :meth:`_update_average` is the one place the average is updated, so a subclass changes
      the rule without touching Lightning's step and epoch bookkeeping;
    - ``dema/adaptive_frac`` and ``dema/adaptive_frac_matrices`` are logged at every epoch end
      and put into ``trainer.callback_metrics`` when training ends (0 for a fixed decay), so
      runs with either callback fill the same table.

    Checkpoints keep Lightning's layout: ``state_dict`` holds the model with the averaged
    tensors in place of the live ones (followed buffers as they are live), ``current_model_state``
    the live model, ``averaging_state`` the ``AveragedModel``'s counter.

    The host class must be a ``WeightAveraging``; this mixin comes first in the bases.
    """

    _average_model: AveragedModel | None
    _use_buffers: bool
    _latest_update_step: int
    _latest_update_epoch: int
    replace_at_task_end: bool
    replace_at_train_end: bool
    _swapped: bool = False
    _averaged: list[str] | None = None  # names of the tensors the average covers (set at setup)
    _followed_buffers: list[str] | None = None  # averaged buffers that changed shape and follow the model since
    _pending_followed: list[str] | None = None  # from a state loaded before setup

    if TYPE_CHECKING:  # provided by WeightAveraging (stubs here would shadow it in the MRO)

        def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool: ...

        @property
        def state_key(self) -> str: ...

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)  # type: ignore[misc]
        if stage == "fit" and self._average_model is not None:
            self._averaged = self._select_averaged(pl_module)
            self._followed_buffers = []
            if self._pending_followed is not None:
                self._follow(self._pending_followed)
                self._pending_followed = None

    def _select_averaged(self, pl_module: LightningModule) -> list[str]:
        """All parameters; with ``use_buffers`` also the non-empty floating-point buffers (an empty one is a placeholder)."""
        names = [name for name, _ in pl_module.named_parameters()]
        if self._use_buffers:
            names += [name for name, b in pl_module.named_buffers() if b.is_floating_point() and b.numel() > 0]
        return names

    def _follow(self, names: list[str]) -> None:
        """Stop averaging these buffers: from now on they follow the live model."""
        assert self._averaged is not None and self._followed_buffers is not None
        self._averaged = [n for n in self._averaged if n not in names]
        self._followed_buffers += [n for n in names if n not in self._followed_buffers]

    def _pairs(self, pl_module: LightningModule) -> tuple[list[Tensor], list[Tensor]]:
        """``(average, live)`` tensors the average covers; an averaged buffer whose shape changed starts following."""
        assert self._average_model is not None and self._averaged is not None
        live, average = _named_tensors(pl_module), _named_tensors(self._average_model.module)
        changed = [n for n in self._averaged if n not in live or live[n].shape != average[n].shape]
        if changed:
            params = [n for n, _ in self._average_model.module.named_parameters() if n in changed]
            if params:
                raise RuntimeError(
                    f"{type(self).__name__} averages parameters of a fixed shape, but {params} changed shape or "
                    "disappeared during training; keep parameter shapes fixed (hold growing state in buffers)"
                )
            rank_zero_info(f"{type(self).__name__}: buffers {changed} changed shape; they follow the model from now on")
            self._follow(changed)
        return [average[n] for n in self._averaged], [live[n] for n in self._averaged]

    def _update_average(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """``AveragedModel.update_parameters`` restricted to the averaged tensors (same arithmetic, per tensor)."""
        assert self._average_model is not None
        average, live = self._pairs(pl_module)
        model = [p.detach().to(a.device) for a, p in zip(average, live)]
        if self._average_model.n_averaged == 0:
            for a, p in zip(average, model):
                a.detach().copy_(p)
        elif self._average_model.multi_avg_fn is not None:
            self._average_model.multi_avg_fn([a.detach() for a in average], model, self._average_model.n_averaged.to(average[0].device))
        else:
            avg_fn = self._average_model.avg_fn
            assert avg_fn is not None, "give WeightAveraging an avg_fn or a multi_avg_fn"
            for a, p in zip(average, model):
                a.detach().copy_(avg_fn(a.detach(), p, self._average_model.n_averaged.to(a.device)))
        self._average_model.n_averaged += 1

    def _swap_models(self, pl_module: LightningModule) -> None:
        """Swap the averaged tensors with the live ones (followed buffers stay live)."""
        for average, current in zip(*self._pairs(pl_module)):
            tmp = average.data.clone()
            average.data.copy_(current.data)
            current.data.copy_(tmp)

    def _copy_average_to_current(self, pl_module: LightningModule) -> None:
        """Copy the averaged tensors into the model (followed buffers are never overwritten)."""
        for average, current in zip(*self._pairs(pl_module)):
            current.data.copy_(average.data)

    def _has_average(self) -> bool:
        return self._average_model is not None and bool(self._average_model.n_averaged > 0)

    def _reset_average(self) -> None:
        """Start a fresh shadow: the next update copies the model (``n_averaged = 0``)."""
        assert self._average_model is not None
        self._average_model.n_averaged.zero_()

    def replace_with_average(self, trainer: Trainer, pl_module: LightningModule) -> bool:
        """Copy the average into the model and reset the shadow (the task-end step); False if there was none."""
        if not self._has_average():
            return False
        self._copy_average_to_current(pl_module)
        self._reset_average()
        return True

    # ------------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "followed_buffers": list(self._followed_buffers or [])}  # type: ignore[misc]

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)  # type: ignore[misc]
        followed = list(state_dict.get("followed_buffers", []))
        if self._averaged is None:  # before setup
            self._pending_followed = followed
        else:
            self._follow(followed)

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        if self._average_model is None or self._averaged is None:
            super().on_save_checkpoint(trainer, pl_module, checkpoint)  # type: ignore[misc]  # Lightning's notice
            return
        average = _named_tensors(self._average_model.module)  # no shape check here: saving changes nothing
        current = checkpoint["state_dict"]
        by_name = {n: average[n].detach() for n in self._averaged if n in current and current[n].shape == average[n].shape}
        checkpoint["current_model_state"] = current
        checkpoint["state_dict"] = {k: by_name.get(k, v) for k, v in current.items()}
        checkpoint["averaging_state"] = {k: v for k, v in self._average_model.state_dict().items() if not k.startswith("module.")}

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        if self._average_model is None or self._averaged is None:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)  # type: ignore[misc]  # Lightning's warning
            return
        state = checkpoint["state_dict"]
        averaging = checkpoint.get("averaging_state")
        if "current_model_state" in checkpoint and averaging is not None:
            # load_state_dict comes after this hook: take the followed buffers from the saved state now
            self._follow(list(checkpoint.get("callbacks", {}).get(self.state_key, {}).get("followed_buffers", [])))
            self._average_model.load_state_dict(averaging, strict=False)  # the counter; module.* are set below
        else:
            rank_zero_warn(
                f"The checkpoint was not created with {type(self).__name__}: the average starts from its state_dict"
            )
        average = _named_tensors(self._average_model.module)
        for name in self._averaged:
            if name in state and state[name].shape == average[name].shape:
                average[name].detach().copy_(state[name])
        if "current_model_state" in checkpoint and averaging is not None:
            # the model was loaded from "state_dict" (the average); the live weights are in "current_model_state"
            pl_module.load_state_dict(checkpoint["current_model_state"])

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: STEP_OUTPUT, batch: Any, batch_idx: int
    ) -> None:
        # as WeightAveraging: once per real optimizer step (global_step moved), never on accumulation steps
        step_idx = trainer.global_step - 1
        if trainer.global_step > self._latest_update_step and self.should_update(step_idx=step_idx):
            self._update_average(trainer, pl_module)
            self._latest_update_step = trainer.global_step

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        epoch = trainer.current_epoch
        if epoch > self._latest_update_epoch and self.should_update(epoch_idx=epoch):
            self._update_average(trainer, pl_module)
            self._latest_update_epoch = epoch
        schedule = task_schedule(trainer)
        if self.replace_at_task_end and schedule is not None and schedule.is_task_end(epoch):
            self.replace_with_average(trainer, pl_module)  # official ema_replace, once per task
        for key, value in self.adaptive_fractions().items():
            pl_module.log(key, value, on_step=False, on_epoch=True, sync_dist=True)

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.replace_at_train_end and self._has_average():  # Lightning asserts and copies unconditionally
            self._copy_average_to_current(pl_module)
        # self.log is not allowed here; the final values go where sweeps and `zoo reproduce` read them
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in self.adaptive_fractions().items()})

    def adaptive_fractions(self) -> dict[str, float]:
        """Fractions of tensor updates that used an adaptive weight: none for a fixed-decay EMA."""
        return {"dema/adaptive_frac": 0.0, "dema/adaptive_frac_matrices": 0.0}

    @override
    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._swapped = self._has_average()
        if self._swapped:
            self._swap_models(pl_module)

    @override
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._swapped:
            self._swap_models(pl_module)
            self._swapped = False


# ------------------------------------------------------------------------------- the callbacks
class DynamicEMA(_TaskEndReplacement, WeightAveraging):
    """EMA weight averaging with CoIN's per-tensor, per-step balance weight; replaces the weights at task ends.

    Drop it into any Lightning run (``Trainer(callbacks=[DynamicEMA()])``). It needs only that
    gradients are still set after the optimizer step (true with automatic optimization). Logs,
    at every epoch end (and into ``trainer.callback_metrics`` when training ends), over all
    tensor updates since fit began:

    - ``dema/adaptive_frac``: the fraction that used the formula (the rest fell back);
    - ``dema/adaptive_frac_matrices``: the same over tensors with two or more dimensions
      (weight matrices and conv kernels; the formula rarely applies to small bias vectors);
    - ``dema/adaptive_beta_mean``: the mean adaptive ``beta``.

    Args:
        fallback_beta: weight where the formula leaves ``(0, 1)`` or cannot be computed (the
            official 0.01, i.e. a fixed EMA with decay 0.99).
        norm_p: order of the norms (the official code: 1; size-dependent sums, on purpose).
        replace_at_task_end: copy the average into the model at every task end of a
            continual DataModule and restart the shadow (official ``ema_replace``).
        replace_at_train_end: copy the average into the model when fit ends (Lightning's
            and the official code's behaviour). With both replacements off the callback only
            observes: the model trains as if it were absent.
        device: where the average lives (default: the model's device).

    Example::

        trainer = Trainer(callbacks=[DynamicEMA()], max_epochs=5, reload_dataloaders_every_n_epochs=1)
        trainer.fit(model, datamodule=SplitTasks(scenario="domain"))
    """

    def __init__(
        self,
        fallback_beta: float = 0.01,
        norm_p: float = 1.0,
        replace_at_task_end: bool = True,
        replace_at_train_end: bool = True,
        device: str | None = None,
    ) -> None:
        if not 0.0 < fallback_beta <= 1.0:
            raise ValueError(f"fallback_beta must be in (0, 1], got {fallback_beta}")
        if not norm_p > 0:
            raise ValueError(f"norm_p must be positive (the paper uses 1), got {norm_p}")
        super().__init__(device=device, use_buffers=False)
        self.fallback_beta, self.norm_p = fallback_beta, norm_p
        self.replace_at_task_end, self.replace_at_train_end = replace_at_task_end, replace_at_train_end
        self._params: list[Tensor] = []  # the model's trainable parameters (frozen ones and buffers follow the model)
        self._shadow: list[Tensor] = []
        self._prev_grads: list[Tensor] = []  # g_{t-1}, preallocated (official p_grad_data)
        self._prev_valid: Tensor | None = None  # per tensor: did step t-1 have a gradient?
        self._is_matrix: Tensor | None = None
        self._adaptive = torch.zeros(2, dtype=torch.long)  # adaptive tensor updates: all, weight matrices
        self._beta_sum = torch.zeros(())  # sum of the adaptive betas (for their mean)
        self._task_updates = 0  # updates since the shadow was (re)started
        self._updates = 0  # updates since fit began
        self._pending_state: dict[str, Any] | None = None

    # ----------------------------------------------------------------------------- setup
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "fit":
            return
        assert self._average_model is not None and self._averaged is not None
        if not self._averaged:
            raise ValueError("DynamicEMA averages trainable parameters, but the model has none that require grad")
        model_params, avg_params = dict(pl_module.named_parameters()), dict(self._average_model.module.named_parameters())
        self._params = [model_params[n] for n in self._averaged]
        self._shadow = [avg_params[n].detach() for n in self._averaged]
        device = self._shadow[0].device
        self._prev_grads = [torch.zeros_like(s) for s in self._shadow]
        self._prev_valid = torch.zeros(len(self._shadow), dtype=torch.bool, device=device)
        self._is_matrix = torch.tensor([s.ndim >= 2 for s in self._shadow], dtype=torch.bool, device=device)
        self._adaptive = torch.zeros(2, dtype=torch.long, device=device)
        self._beta_sum = torch.zeros((), device=device)
        self._task_updates = self._updates = 0  # a new AveragedModel starts empty
        if self._pending_state is not None:  # load_state_dict came before setup
            self._apply_state(self._pending_state)

    @override
    def _select_averaged(self, pl_module: LightningModule) -> list[str]:
        """The parameters that require grad at ``setup`` (the code averages the trainable LoRA weights)."""
        return [name for name, p in pl_module.named_parameters() if p.requires_grad]

    # ---------------------------------------------------------------------------- update
    @override
    def _update_average(self, trainer: Trainer, pl_module: LightningModule) -> None:
        assert self._average_model is not None and self._prev_valid is not None and self._is_matrix is not None
        device = self._prev_valid.device
        grads = [p.grad for p in self._params]
        has_grad: Tensor | None = None
        if any(g is None for g in grads):  # rare: an unused parameter, or grads zeroed after the step
            has_grad = torch.tensor([g is not None for g in grads], dtype=torch.bool, device=device)
            grads = [torch.zeros_like(p) if g is None else g for p, g in zip(self._params, grads)]
        params = [p.detach() for p in self._params]
        if params and params[0].device != device:  # the average lives elsewhere (device=...)
            params, grads = [p.to(device) for p in params], [g.to(device) for g in grads]
        if self._task_updates == 0:  # first update of a task: theta*_0 = theta (deepcopy in ema_update)
            torch._foreach_copy_(self._shadow, params)
            torch._foreach_copy_(self._prev_grads, grads)
        else:
            valid = self._prev_valid if has_grad is None else self._prev_valid & has_grad
            beta, adaptive = dynamic_ema_update(self._shadow, params, grads, self._prev_grads, valid, self.fallback_beta, self.norm_p)
            self._adaptive += torch.stack([adaptive.sum(), (adaptive & self._is_matrix).sum()])
            self._beta_sum += torch.where(adaptive, beta, 0).sum().float()
        if has_grad is None:
            self._prev_valid.fill_(True)
        else:
            self._prev_valid.copy_(has_grad)
        self._average_model.n_averaged += 1
        self._task_updates += 1
        self._updates += 1

    @override
    def _reset_average(self) -> None:
        super()._reset_average()
        self._task_updates = 0
        if self._prev_valid is not None:
            self._prev_valid.fill_(False)

    # --------------------------------------------------------------------------- logging
    @override
    def adaptive_fractions(self) -> dict[str, float]:
        """``dema/adaptive_frac``, ``dema/adaptive_frac_matrices``, ``dema/adaptive_beta_mean`` so far."""
        assert self._is_matrix is not None
        adaptive, adaptive_matrices = self._adaptive.tolist()
        beta_sum = float(self._beta_sum)
        n_matrices = int(self._is_matrix.sum())
        return {
            "dema/adaptive_frac": adaptive / max(self._updates * len(self._shadow), 1),
            "dema/adaptive_frac_matrices": adaptive_matrices / max(self._updates * n_matrices, 1),
            "dema/adaptive_beta_mean": beta_sum / adaptive if adaptive else float("nan"),
        }

    # ------------------------------------------------------------------------ checkpoints
    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "latest_update_epoch": self._latest_update_epoch,
            "task_updates": self._task_updates,
            "updates": self._updates,
            "prev_grads": self._prev_grads,
            "prev_valid": self._prev_valid,
            "adaptive": self._adaptive,
            "beta_sum": self._beta_sum,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if self._prev_valid is None:  # before setup: applied once the buffers exist
            self._pending_state = state_dict
        else:
            self._apply_state(state_dict)

    def _apply_state(self, state: dict[str, Any]) -> None:
        assert self._prev_valid is not None
        if len(state["prev_grads"]) != len(self._prev_grads):
            raise ValueError(
                f"DynamicEMA checkpoint holds {len(state['prev_grads'])} gradients but the model has "
                f"{len(self._prev_grads)} trainable tensors; resume with the same model and frozen parameters"
            )
        self._latest_update_epoch = state["latest_update_epoch"]
        self._task_updates, self._updates = state["task_updates"], state["updates"]
        device = self._prev_valid.device
        torch._foreach_copy_(self._prev_grads, [g.to(device) for g in state["prev_grads"]])
        self._prev_valid.copy_(state["prev_valid"])
        self._adaptive.copy_(state["adaptive"])
        self._beta_sum.copy_(state["beta_sum"])
        self._pending_state = None


class TaskEndEMA(_TaskEndReplacement, EMAWeightAveraging):
    """Lightning's fixed-decay ``EMAWeightAveraging`` with the same end-of-task replacement as :class:`DynamicEMA`.

    The paper's fixed-EMA baseline: ``theta* <- decay theta* + (1 - decay) theta`` after every
    optimizer step, the average copied into the model at every task end and restarted. The
    default decay 0.99 equals DynamicEMA's fallback weight 0.01.

    Args:
        decay: EMA decay (Lightning's default is 0.999; CoIN's fallback corresponds to 0.99).
        replace_at_task_end / replace_at_train_end: as :class:`DynamicEMA`.
        device / use_buffers / update_every_n_steps / update_starting_at_step /
            update_starting_at_epoch: Lightning's ``EMAWeightAveraging`` arguments.
    """

    def __init__(
        self,
        decay: float = 0.99,
        replace_at_task_end: bool = True,
        replace_at_train_end: bool = True,
        device: str | None = None,
        use_buffers: bool = True,
        update_every_n_steps: int = 1,
        update_starting_at_step: int | None = None,
        update_starting_at_epoch: int | None = None,
    ) -> None:
        super().__init__(
            device=device,
            use_buffers=use_buffers,
            decay=decay,
            update_every_n_steps=update_every_n_steps,
            update_starting_at_step=update_starting_at_step,
            update_starting_at_epoch=update_starting_at_epoch,
        )
        self.decay = decay
        self.replace_at_task_end, self.replace_at_train_end = replace_at_task_end, replace_at_train_end

