"""SinkGD: Gradient Multi-Normalization for Stateless and Scalable LLM Training
(Scetbon, Ma, Gong, Meeds 2025). arXiv 2502.06742. No official code; the third-party port
``sinkgd-pytorch`` was read as a reference only.

SinkGD is a **stateless** optimizer. The gradient ``G`` (m x n) of every matrix parameter is
multi-normalized by alternating projections (Algorithm 1) onto two norms, rows then columns
(SR-Sinkhorn, Algorithm 3), ``L`` times::

    X <- G
    repeat L times:
        X <- sqrt(n) * Q(X)^-1 X      # every row gets l2 norm sqrt(n)
        X <- sqrt(m) * X R(X)^-1      # every column gets l2 norm sqrt(m)
    W <- W - lr * X

At the fixed point all rows have norm sqrt(n), all columns sqrt(m) (RMS of the update = 1).
There is no momentum and no second moment: ``optimizer.state`` stays empty.

Implementation: ``X = diag(r) G diag(c)`` at every stage, so the iteration only updates the two
scaling vectors with matrix-vector products against ``S = G**2`` (Sinkhorn scaling on |G|^2,
as the paper notes); this is the same computation as the naive loop, one pass over the matrix
per half-step instead of four. Norms are computed in float32 whatever the gradient's dtype.

Guesses and deviations (also in the card):

- Parameters that are not matrices (biases, norms' weights) get the stateless *RMS-normalized*
  gradient ``g / rms(g)`` (``fallback="rms"``, the card's CPU check) or plain SGD
  (``fallback="sgd"``). The paper runs Adam on embeddings, LM head and norms; that is stateful,
  so here it is a separate optimizer (see :func:`build_sinkgd_param_groups`), not hidden inside
  SinkGD. A param group may set ``"sinkhorn": False`` to send its matrices to the fallback too.
- Parameters with more than two dimensions (conv kernels ``out x in x kh x kw``) are normalized as
  the matrix ``out x (in*kh*kw)`` when ``flatten_conv=True`` (default); the paper only has 2-D
  weights (transformers). Set ``flatten_conv=False`` to send them to the fallback.
- ``weight_decay`` is decoupled (``W <- W (1 - lr wd)``), stateless, and 0 by default.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.nn.backbones import build_backbone
from zoo.templates import ClassifierModule

__all__ = [
    "SinkGD",
    "SinkGDClassifier",
    "sr_sinkhorn",
    "sr_sinkhorn_scalings",
    "rms_normalize",
    "build_sinkgd_param_groups",
    "split_sinkgd_params",
    "optimizer_state_bytes",
    "OPTIMIZERS",
]

OPTIMIZERS = ("sinkgd", "adam", "adamw")
FALLBACKS = ("rms", "sgd")


# ------------------------------------------------------------------------- the normalization
def sr_sinkhorn_scalings(g: Tensor, iters: int = 5, eps: float = 1e-8) -> tuple[Tensor, Tensor]:
    """Row and column scalings ``(r, c)`` (float32 or wider) such that ``diag(r) g diag(c)`` is the
    SR-Sinkhorn multi-normalization of the matrix ``g`` after ``iters`` row-then-column steps."""
    if g.ndim != 2:
        raise ValueError(f"sr_sinkhorn takes a matrix, got shape {tuple(g.shape)}")
    if iters < 0:
        raise ValueError(f"iters must be >= 0, got {iters}")
    m, n = g.shape
    dtype = torch.promote_types(g.dtype, torch.float32)  # at least fp32 under bf16/fp16
    s = g.detach().to(dtype).square()  # Sinkhorn on |G|^2
    r = torch.ones(m, dtype=dtype, device=g.device)
    c = torch.ones(n, dtype=dtype, device=g.device)
    sqrt_n, sqrt_m = math.sqrt(n), math.sqrt(m)
    for _ in range(iters):
        # row norms of diag(r) G diag(c) are r_i * q_i with q_i = sqrt(sum_j G_ij^2 c_j^2), so the
        # new row scaling is sqrt(n) / q_i whatever r was. The eps floor is taken on q_i (not on
        # r_i q_i) so that a zero row (a dead unit) cannot compound its scaling into inf * 0 = nan.
        r = sqrt_n / torch.mv(s, c.square()).sqrt().clamp_min(eps)
        c = sqrt_m / torch.mv(s.t(), r.square()).sqrt().clamp_min(eps)
    return r, c


def sr_sinkhorn(g: Tensor, iters: int = 5, eps: float = 1e-8) -> Tensor:
    """The SR-Sinkhorn multi-normalization (Algorithm 3) of a matrix, in ``g``'s dtype:
    ``iters`` times, rows to l2 norm sqrt(n), then columns to l2 norm sqrt(m)."""
    r, c = sr_sinkhorn_scalings(g, iters, eps)
    return (g.to(r.dtype) * r[:, None] * c[None, :]).to(g.dtype)


def rms_normalize(g: Tensor, eps: float = 1e-8) -> Tensor:
    """The stateless fallback for non-matrix parameters: ``g / rms(g)`` (RMS of the update = 1)."""
    g32 = g.to(torch.promote_types(g.dtype, torch.float32))
    return (g32 / g32.square().mean().sqrt().clamp_min(eps)).to(g.dtype)


# -------------------------------------------------------------------------------- optimizer
class SinkGD(torch.optim.Optimizer):
    """Stateless SinkGD: SR-Sinkhorn-normalized gradients for matrices, a stateless fallback
    for the rest.

    Args:
        params: parameters or param groups (a group may set ``sinkhorn=False``, ``lr``, ...).
        lr: step size; the update of a matrix has RMS 1, so this is the per-entry step.
        sinkhorn_iters: ``L``, the number of row-then-column rounds (paper: 5).
        eps: floor on the norms (dead units give zero rows).
        weight_decay: decoupled weight decay (0 = the paper's stateless SinkGD).
        fallback: ``"rms"`` (``g / rms(g)``) or ``"sgd"`` (``g``) for non-matrix parameters.
        flatten_conv: normalize >2-D weights as ``out x rest`` matrices (else fallback).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        sinkhorn_iters: int = 5,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        fallback: str = "rms",
        flatten_conv: bool = True,
    ) -> None:
        if lr < 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if sinkhorn_iters < 1:
            raise ValueError(f"sinkhorn_iters must be >= 1, got {sinkhorn_iters}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if fallback not in FALLBACKS:
            raise ValueError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")
        defaults = dict(
            lr=lr,
            sinkhorn_iters=sinkhorn_iters,
            eps=eps,
            weight_decay=weight_decay,
            fallback=fallback,
            flatten_conv=flatten_conv,
            sinkhorn=True,
        )
        super().__init__(params, defaults)

    @staticmethod
    def direction(p: Tensor, grad: Tensor, group: dict[str, Any]) -> Tensor:
        """The normalized update direction of one parameter (before ``-lr``)."""
        matrix = grad.ndim == 2 or (grad.ndim > 2 and group["flatten_conv"])
        if group["sinkhorn"] and matrix:
            g2 = grad.reshape(grad.shape[0], -1)
            return sr_sinkhorn(g2, group["sinkhorn_iters"], group["eps"]).view_as(grad)
        if group["fallback"] == "rms":
            return rms_normalize(grad, group["eps"])
        return grad

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("SinkGD does not support sparse gradients")
                if wd:
                    p.mul_(1 - lr * wd)
                p.add_(self.direction(p, p.grad, group), alpha=-lr)
        return loss


EMBEDDINGS = (nn.Embedding, nn.EmbeddingBag)


def _output_head(model: nn.Module) -> nn.Module | None:
    """The module producing the logits: the model's own ``get_output_embeddings()`` (HF) or
    ``get_classifier()`` (timm) where it defines one, else the last registered module with a 2-D
    ``weight`` that is not an embedding (the final Linear of an MLP or a CNN)."""
    for hook in ("get_output_embeddings", "get_classifier"):
        getter = getattr(model, hook, None)
        if callable(getter):  # the model knows its head; a headless one (nn.Identity, None) has none
            head = getter()
            return head if isinstance(head, nn.Module) else None
    last = None
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, nn.Parameter) and weight.ndim == 2 and not isinstance(module, EMBEDDINGS):
            last = module
    return last


def split_sinkgd_params(
    model: nn.Module, head: nn.Module | str | None = None, exclude: tuple[str, ...] = ()
) -> tuple[list[Tensor], list[Tensor]]:
    """``(hidden matrices, the rest)`` of ``model``'s trainable parameters, by module type and position.

    Hidden matrices (SinkGD) are the 2-D ``weight`` of any module (``nn.Linear``, GPT-2's
    ``Conv1D``, ...) that is neither an embedding (``nn.Embedding`` / ``nn.EmbeddingBag``) nor the
    output head. The rest (AdamW) are embeddings, the head (tied weights included: parameters are
    compared by identity), 1-D parameters (biases, norms), conv kernels and free parameters such as
    position tables or class tokens. ``head``: the output module or its qualified name (default:
    see :func:`_output_head`); ``exclude``: qualified module or parameter names also sent to AdamW.
    """
    if isinstance(head, str):
        head = model.get_submodule(head)
    elif head is None:
        head = _output_head(model)
    adam_ids = {id(p) for p in head.parameters()} if head is not None else set()
    hidden_ids = set()
    for name, module in model.named_modules():
        if isinstance(module, EMBEDDINGS) or any(name == e or name.startswith(e + ".") for e in exclude):
            adam_ids.update(id(p) for p in module.parameters())
            continue
        weight = module._parameters.get("weight")
        if weight is not None and weight.ndim == 2:
            hidden_ids.add(id(weight))
    matrices, others = [], []
    for name, p in model.named_parameters():  # each shared tensor once
        if not p.requires_grad:
            continue
        excluded = any(name == e or name.startswith(e + ".") for e in exclude)
        (matrices if id(p) in hidden_ids and id(p) not in adam_ids and not excluded else others).append(p)
    return matrices, others


def build_sinkgd_param_groups(
    model: nn.Module,
    global_lr: float = 0.02,
    sinkgd_scale: float = 0.05,
    sinkhorn_iters: int = 5,
    adam_cls: type[torch.optim.Optimizer] = torch.optim.AdamW,
    head: nn.Module | str | None = None,
    exclude: tuple[str, ...] = (),
) -> tuple[SinkGD, torch.optim.Optimizer | None]:
    """The paper's hybrid: SinkGD (lr ``global_lr * sinkgd_scale``) on hidden 2-D weights,
    ``adam_cls`` (lr ``global_lr``) on embeddings, the output head, norms, biases and the rest
    (see :func:`split_sinkgd_params` for ``head`` and ``exclude``). Returns ``(sinkgd, adam or
    None)``; Lightning takes both from ``configure_optimizers`` only with manual optimization, so
    for automatic optimization use :class:`SinkGD` alone with its stateless fallback."""
    matrices, others = split_sinkgd_params(model, head, exclude)
    if not matrices:
        raise ValueError(
            "build_sinkgd_param_groups: the model has no hidden 2-D weights for SinkGD (embeddings and the output "
            "head go to AdamW); pass head= if the detected head is wrong"
        )
    sink = SinkGD(matrices, lr=global_lr * sinkgd_scale, sinkhorn_iters=sinkhorn_iters)
    adam = adam_cls(others, lr=global_lr) if others else None
    return sink, adam


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held in tensors of ``optimizer.state`` (0 for SinkGD; 2x the parameters for Adam)."""
    total = 0
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, Tensor):
                total += value.numel() * value.element_size()
    return total


# -------------------------------------------------------------------------------- the module
class SinkGDClassifier(ClassifierModule):
    """A classifier trained with SinkGD or the paper's baselines Adam / AdamW.

    Args:
        input_dim: features of a flat input (MLP mode).
        hidden_dims: MLP hidden widths (default ``[256, 256]``: the 64-256-256-10 MLP of the card).
        num_classes: output classes.
        backbone: ``mlp`` or a timm model name (e.g. ``"resnet18"``), see
            :func:`zoo.nn.backbones.build_backbone`.
        in_chans: image channels for a timm backbone.
        optimizer: ``sinkgd | adam | adamw``.
        lr: learning rate of the chosen optimizer.
        sinkhorn_iters: ``L`` for SinkGD.
        weight_decay: passed to the optimizer (SinkGD: decoupled; 0 keeps it the paper's).
        fallback: SinkGD's rule for non-matrix parameters (``rms`` or ``sgd``).

    Logs ``optimizer_state_bytes`` (bytes of tensors in the optimizer's state) every epoch, and
    :class:`zoo.templates.ClassifierModule`'s val/test accuracies.
    """

    def __init__(
        self,
        input_dim: int = 64,
        hidden_dims: list[int] | None = None,
        num_classes: int = 10,
        backbone: str = "mlp",
        in_chans: int = 3,
        optimizer: str = "sinkgd",
        lr: float = 1e-3,
        sinkhorn_iters: int = 5,
        weight_decay: float = 0.0,
        fallback: str = "rms",
    ) -> None:
        super().__init__(num_classes)
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {OPTIMIZERS}")
        if fallback not in FALLBACKS:
            raise ValueError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")
        self.save_hyperparameters()
        hidden = [256, 256] if hidden_dims is None else hidden_dims
        # backbone=None: configs written before the shared builder meant the MLP
        self.net = build_backbone(backbone or "mlp", num_classes, input_dim=input_dim, hidden_dims=hidden, in_chans=in_chans, flatten=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def on_train_epoch_end(self) -> None:
        optimizers = self.trainer.optimizers if self._trainer is not None else []
        self.log("optimizer_state_bytes", float(sum(optimizer_state_bytes(o) for o in optimizers)))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        if hp["optimizer"] == "sinkgd":
            return SinkGD(
                self.parameters(),
                lr=hp["lr"],
                sinkhorn_iters=hp["sinkhorn_iters"],
                weight_decay=hp["weight_decay"],
                fallback=hp["fallback"],
            )
        cls = torch.optim.Adam if hp["optimizer"] == "adam" else torch.optim.AdamW
        return cls(self.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
