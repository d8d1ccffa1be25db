"""BANG's maths as pure functions and torchmetrics metrics: WiSE-FT averaging, logit-temperature
balancing, the FalseFalseTrue ratio and the Mixup + label-smoothing loss (arXiv 2309.17230)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric

__all__ = [
    "FalseFalseTrueRatio",
    "LogitTemperature",
    "balance_factors",
    "false_false_true_ratio",
    "logit_temperature",
    "mixup_label_smoothing_loss",
    "scale_head",
    "smoothed_one_hot",
    "weight_average",
    "wise_ft",
]

StateLike = nn.Module | Mapping[str, Tensor]


# ------------------------------------------------------------------------------- WiSE-FT
def _state(model: StateLike) -> Mapping[str, Tensor]:
    return model.state_dict() if isinstance(model, nn.Module) else model


def _check_same_keys(states: Sequence[Mapping[str, Tensor]]) -> None:
    keys = list(states[0])
    for i, state in enumerate(states[1:], 1):
        if set(state) != set(keys):
            missing, extra = sorted(set(keys) - set(state)), sorted(set(state) - set(keys))
            raise ValueError(f"state {i} has other keys than state 0 (missing {missing[:3]}, extra {extra[:3]}): average models of one architecture")
        for key in keys:
            if state[key].shape != states[0][key].shape:
                raise ValueError(f"{key!r}: shape {tuple(state[key].shape)} in state {i} vs {tuple(states[0][key].shape)} in state 0")


def wise_ft(theta_0: StateLike, theta_1: StateLike, alpha: float = 0.5) -> dict[str, Tensor]:
    """WiSE-FT, ``theta_alpha = (1 - alpha) theta_0 + alpha theta_1`` (WiSE-FT Eq. 1; the paper's Sec. 2).

    ``theta_0`` is the zero-shot (pre-trained) model, ``theta_1`` the fine-tuned one; modules or
    state dicts of one architecture. Every floating tensor is interpolated, buffers included
    (BatchNorm running statistics); integer buffers (``num_batches_tracked``) cannot be, and are
    taken from the nearer endpoint (``theta_0`` for ``alpha < 0.5``). ``alpha = 0`` and ``1``
    return the endpoints exactly (``torch.lerp``). Returns a new state dict.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1] (0 = theta_0, 1 = theta_1), got {alpha}")
    s0, s1 = _state(theta_0), _state(theta_1)
    _check_same_keys([s0, s1])
    out: dict[str, Tensor] = {}
    for key, t0 in s0.items():
        t1 = s1[key].to(t0.device)
        if t0.is_floating_point():
            out[key] = torch.lerp(t0.detach(), t1.detach().to(t0.dtype), alpha)
        else:
            out[key] = (t0 if alpha < 0.5 else t1).detach().clone()
    return out


def weight_average(states: Sequence[StateLike], weights: Sequence[float] | None = None) -> dict[str, Tensor]:
    """``sum_k w_k theta_k`` over floating tensors (uniform ``w`` by default; weights sum to 1).

    Integer buffers come from the member with the largest weight. Two members with weights
    ``(1 - alpha, alpha)`` give :func:`wise_ft` up to rounding.
    """
    if not states:
        raise ValueError("weight_average needs at least one state")
    sd = [_state(s) for s in states]
    _check_same_keys(sd)
    w = [1.0 / len(sd)] * len(sd) if weights is None else [float(v) for v in weights]
    if len(w) != len(sd) or any(v < 0 for v in w) or not math.isclose(sum(w), 1.0, rel_tol=1e-6):
        raise ValueError(f"weights must be {len(sd)} non-negative numbers summing to 1, got {weights}")
    top = max(range(len(w)), key=w.__getitem__)
    out: dict[str, Tensor] = {}
    for key, t0 in sd[0].items():
        if t0.is_floating_point():
            out[key] = sum(wk * s[key].detach().to(t0) for wk, s in zip(w, sd))  # type: ignore[assignment]
        else:
            out[key] = sd[top][key].detach().clone()
    return out


# ------------------------------------------------------------------- temperature balancing
def scale_head(state: Mapping[str, Tensor], head: str, factor: float | Tensor) -> dict[str, Tensor]:
    """A copy of ``state`` whose last layer ``head`` (``head.weight``, ``head.bias``) is multiplied
    by ``factor``: the model's logits are multiplied by ``factor`` exactly (``z = W h + b``)."""
    keys = [k for k in (f"{head}.weight", f"{head}.bias") if k in state]
    if f"{head}.weight" not in state:
        raise KeyError(f"no {head}.weight in the state dict; heads are {sorted({k.rsplit('.', 1)[0] for k in state})[-3:]}")
    out = dict(state)
    for key in keys:
        out[key] = state[key] * factor
    return out


def logit_temperature(logits: Tensor) -> Tensor:
    """A model's confidence scale: the (population) std of all its logits on ID data, ``(N, C) -> ()``."""
    return logits.detach().float().std(correction=0)


def balance_factors(temperatures: Tensor) -> Tensor:
    """Per-model logit multipliers ``mean(T) / T_k`` that give every model the same temperature.

    Dividing each model's logits by its own ID temperature (this module's balancing) and then
    multiplying all by the common ``mean(T)`` changes no argmax of the average and leaves
    equally confident models untouched (factors 1).
    """
    t = torch.as_tensor(temperatures, dtype=torch.float32)
    if (t <= 0).any() or not torch.isfinite(t).all():
        raise ValueError(f"temperatures must be positive and finite, got {t.tolist()}")
    return t.mean() / t


class LogitTemperature(Metric):
    """Streaming :func:`logit_temperature`: the std of all logits seen, DDP-safe (sum states)."""

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("sum_sq", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, logits: Tensor) -> None:
        z = logits.detach().double()
        self.total += z.numel()
        self.sum += z.sum()
        self.sum_sq += (z * z).sum()

    def compute(self) -> Tensor:
        mean = self.sum / self.total
        return (self.sum_sq / self.total - mean * mean).clamp_min(0).sqrt().float()


# ---------------------------------------------------------------------- FalseFalseTrue
def _labels(preds: Tensor) -> Tensor:
    """Class labels: argmax of floating logits, integer labels as they are."""
    return preds.argmax(-1) if preds.is_floating_point() else preds


def _fft_update(member_preds: Tensor | Sequence[Tensor], average_preds: Tensor, target: Tensor) -> tuple[Tensor, int]:
    if isinstance(member_preds, Tensor):
        members = _labels(member_preds)
    else:
        members = torch.stack([_labels(p) for p in member_preds])
    avg = _labels(average_preds)
    if members.ndim != 2 or members.shape[1] != target.shape[0] or avg.shape != target.shape:
        raise ValueError(
            f"expected member predictions (K, N) or (K, N, C), average (N,) or (N, C) and target (N,); "
            f"got {tuple(members.shape)}, {tuple(avg.shape)}, {tuple(target.shape)}"
        )
    all_wrong = (members != target.unsqueeze(0)).all(0)
    return (all_wrong & (avg == target)).sum(), target.numel()


def false_false_true_ratio(member_preds: Tensor | Sequence[Tensor], average_preds: Tensor, target: Tensor) -> Tensor:
    """FFT = #(every member wrong and the average right) / N (the paper's Sec. 2).

    ``member_preds``: ``(K, N)`` labels or ``(K, N, C)`` logits (or a list of them);
    ``average_preds``: the averaged model's ``(N,)`` labels or ``(N, C)`` logits; ``target`` ``(N,)``.

    >>> members = torch.tensor([[1, 0, 2, 1], [2, 0, 1, 2]])  # example 3: member 0 is right
    >>> false_false_true_ratio(members, torch.tensor([0, 0, 0, 1]), torch.tensor([0, 1, 0, 1]))
    tensor(0.5000)
    """
    count, total = _fft_update(member_preds, average_preds, target)
    return count.float() / max(total, 1)


class FalseFalseTrueRatio(Metric):
    """Fraction of examples every member gets wrong while their weight average gets right.

    States are counts summed across processes (``dist_reduce_fx="sum"``), so batched, one-shot and
    DDP results agree. Same inputs as :func:`false_false_true_ratio`.
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, member_preds: Tensor | Sequence[Tensor], average_preds: Tensor, target: Tensor) -> None:
        count, total = _fft_update(member_preds, average_preds, target)
        self.count += count
        self.total += total

    def compute(self) -> Tensor:
        return self.count.float() / self.total.clamp_min(1)


# -------------------------------------------------------------- BANG fine-tuning loss
def smoothed_one_hot(target: Tensor, num_classes: int, smoothing: float = 0.0) -> Tensor:
    """Label smoothing: ``(1 - eps) one_hot + eps / C`` (as ``F.cross_entropy(label_smoothing=eps)``)."""
    return F.one_hot(target, num_classes).float() * (1.0 - smoothing) + smoothing / num_classes


def mixup_label_smoothing_loss(
    logits: Tensor, target: Tensor, num_classes: int, lam: float = 1.0, perm: Tensor | None = None, smoothing: float = 0.0
) -> Tensor:
    """BANG's fine-tuning loss (the paper's Sec. 5: Mixup + label smoothing), for a mixed batch.

    The inputs were mixed as ``lam x + (1 - lam) x[perm]``; the soft target is
    ``lam ls(y) + (1 - lam) ls(y[perm])`` with ``ls`` the smoothed one-hot, and the loss is the
    soft-target cross-entropy ``-sum_c t_c log softmax(z)_c`` averaged over the batch.
    ``lam = 1`` (no mixup) equals ``F.cross_entropy(logits, target, label_smoothing=smoothing)``.
    """
    soft = smoothed_one_hot(target, num_classes, smoothing)
    if perm is not None and lam < 1.0:
        soft = lam * soft + (1.0 - lam) * soft[perm]
    return -(soft * F.log_softmax(logits, dim=-1)).sum(-1).mean()
