"""Adversarial attacks shared by the robustness entries: PGD (L-inf and L2), FGSM, CW-margin loss.

``attack(model, x, y) -> x_adv``. The attack differentiates with respect to the input only
(``torch.autograd.grad``), so the model's parameter gradients, its train/eval mode and the
caller's grad mode are left as they were found; ``model_mode="eval"`` runs the attack in eval
mode (as MTARD generates its examples) and restores the mode afterwards. It works inside
``torch.no_grad``/``inference_mode`` evaluation loops. Inputs are clipped to ``clip`` (pixels in
[0, 1] by default; ``None`` for unbounded features, e.g. standardised ones: see
:func:`check_clip_matches_data`).

>>> import torch
>>> model = torch.nn.Linear(4, 3)
>>> x, y = torch.rand(8, 4), torch.randint(0, 3, (8,))
>>> x_adv = PGD(eps=0.1, alpha=0.025, steps=10)(model, x, y)
>>> bool((x_adv - x).abs().max() <= 0.1 + 1e-6)
True
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PGD", "FGSM", "cw_margin_loss", "ATTACK_LOSSES", "as_clip", "check_clip_matches_data"]

Norm = Literal["linf", "l2"]


def cw_margin_loss(logits: Tensor, y: Tensor, kappa: float = 0.0) -> Tensor:
    """Carlini-Wagner margin to maximise: ``min(max_{j != y} z_j - z_y, kappa)``, mean over the batch.

    It saturates once an example is misclassified with confidence ``kappa``, as the CW loss
    used for CW-k robust evaluation does (``-clamp(z_y - z_other + kappa, min=0)`` up to a constant).
    """
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
    return torch.clamp(other - true, max=kappa).mean()


def cross_entropy_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Cross-entropy to maximise (a named function, so attacks pickle for ``ddp_spawn``)."""
    return F.cross_entropy(logits, y)


ATTACK_LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"ce": cross_entropy_loss, "cw": cw_margin_loss}


def _flat_norm(t: Tensor) -> Tensor:
    """Per-example L2 norm, shaped to broadcast against ``t``."""
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (t.dim() - 1)))


@contextmanager
def _mode(model: nn.Module, mode: str) -> Iterator[None]:
    was_training = model.training
    if mode == "eval":
        model.eval()
    try:
        yield
    finally:
        model.train(was_training)


class PGD:
    """Projected gradient ascent on ``loss`` inside the ``norm`` ball of radius ``eps`` (Madry et al. 2018).

    Args:
        eps: radius of the threat model; alpha: step size; steps: iterations (PGD-k).
        norm: ``linf`` (signed-gradient steps) or ``l2`` (normalised-gradient steps).
        random_start: start at a random point of the ball (``init="uniform"``) or at
            ``x + init_std * N(0, I)`` (``init="normal"``, MTARD's start).
        loss: ``ce`` (cross-entropy) or ``cw`` (Carlini-Wagner margin, for CW-k evaluation).
        clip: valid input range, or None.
        model_mode: ``keep`` the model's mode, or run the attack in ``eval`` mode.
    """

    def __init__(
        self,
        eps: float,
        alpha: float,
        steps: int,
        norm: Norm = "linf",
        random_start: bool = True,
        init: Literal["uniform", "normal"] = "uniform",
        init_std: float = 0.001,
        loss: str = "ce",
        clip: tuple[float, float] | None = (0.0, 1.0),
        model_mode: Literal["keep", "eval"] = "keep",
    ) -> None:
        if eps < 0 or alpha <= 0 or steps < 1:
            raise ValueError(f"need eps >= 0, alpha > 0, steps >= 1; got {eps}, {alpha}, {steps}")
        if norm not in ("linf", "l2"):
            raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
        if loss not in ATTACK_LOSSES:
            raise ValueError(f"loss must be one of {sorted(ATTACK_LOSSES)}, got {loss!r}")
        self.eps, self.alpha, self.steps, self.norm = eps, alpha, steps, norm
        self.random_start, self.init, self.init_std = random_start, init, init_std
        self.loss_fn, self.clip, self.model_mode = ATTACK_LOSSES[loss], clip, model_mode

    def __repr__(self) -> str:
        return f"PGD(eps={self.eps}, alpha={self.alpha}, steps={self.steps}, norm={self.norm!r})"

    def _project(self, x_adv: Tensor, x: Tensor) -> Tensor:
        delta = x_adv - x
        if self.norm == "linf":
            delta = delta.clamp(-self.eps, self.eps)
        else:
            delta = delta * torch.clamp(self.eps / _flat_norm(delta), max=1.0)
        x_adv = x + delta
        return x_adv.clamp(*self.clip) if self.clip is not None else x_adv

    def _start(self, x: Tensor) -> Tensor:
        if not self.random_start:
            return x.clone()
        if self.init == "normal":
            return self._project(x + self.init_std * torch.randn_like(x), x)
        if self.norm == "linf":
            return self._project(x + torch.empty_like(x).uniform_(-self.eps, self.eps), x)
        direction = torch.randn_like(x)
        radius = self.eps * torch.rand(x.shape[0], *([1] * (x.dim() - 1)), device=x.device)
        return self._project(x + radius * direction / _flat_norm(direction), x)

    def _step(self, x_adv: Tensor, grad: Tensor) -> Tensor:
        if self.norm == "linf":
            return x_adv + self.alpha * grad.sign()
        return x_adv + self.alpha * grad / _flat_norm(grad)

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        x = x.detach()
        with torch.inference_mode(False), torch.enable_grad(), _mode(model, self.model_mode):
            x, y = x.clone(), y.clone()  # usable by autograd even if made under inference_mode
            x_adv = self._start(x)
            for _ in range(self.steps):
                x_adv.requires_grad_(True)
                loss = self.loss_fn(model(x_adv), y)
                (grad,) = torch.autograd.grad(loss, x_adv)
                x_adv = self._project(self._step(x_adv.detach(), grad), x).detach()
        return x_adv


def FGSM(eps: float, loss: str = "ce", clip: tuple[float, float] | None = (0.0, 1.0)) -> PGD:
    """Fast gradient sign method (Goodfellow et al. 2015): one L-inf step of size ``eps`` from ``x``."""
    return PGD(eps=eps, alpha=eps, steps=1, norm="linf", random_start=False, loss=loss, clip=clip)


def as_clip(clip: Sequence[float] | None) -> tuple[float, float] | None:
    """``clip`` as a ``(low, high)`` pair (a config gives a list); None stays None (unbounded inputs)."""
    if clip is None:
        return None
    if len(clip) != 2 or not float(clip[0]) < float(clip[1]):
        raise ValueError(f"clip must be [low, high] with low < high, or None for unbounded inputs; got {clip}")
    return float(clip[0]), float(clip[1])


def check_clip_matches_data(datamodule: object, clip: tuple[float, float] | None, owner: str) -> None:
    """Refuse a DataModule that standardises its inputs (``normalize=True``) when the attack clips them to a range.

    Standardised inputs are not pixels in ``clip``: clamping them would move clean examples
    (a silent error), so ``owner`` stops at ``setup`` and names both ways out.
    """
    if clip is not None and getattr(datamodule, "normalize", False) is True:
        raise ValueError(
            f"{owner} clips adversarial inputs to {list(clip)}, but {type(datamodule).__name__} standardises them "
            f"(normalize=True): pass the DataModule normalize=False (pixels in [0, 1]) or give {owner} clip=None (unbounded inputs)"
        )
