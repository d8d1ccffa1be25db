"""ARL: Improving Multimodal Learning via Imbalanced Learning (Wei, Luo, Luo, ICCV 2025).

arXiv 2507.10203. Official code: shicaiwei123/ICCV2025-ARL (``main_arl_variance.py`` for the
modality analysis, ``models/backbone.py`` for ``GradScale``, ``models/fusion_modules.py`` for the
``*_AUXI`` heads).

Joint training of a fused multimodal classifier under-uses the modality that is informative but
slow to learn. ARL's bias-variance view says the fused error is smallest when each modality's
dependence is inversely proportional to its variance, not equal. It adds (i) unimodal "bias"
regularisers: cross-entropy of each modality's logits computed by the *shared* fusion head with
the other modality's feature zeroed (no new parameters), weighted by ``gamma``; and (ii) a
gradient re-weighting of each encoder by ``1 + c_m``, where ``c = softmax(T [D_v' u_a', D_a' u_v'])``
pairs each modality's inverse prediction entropy (the variance proxy, ``u``) with the *other*
modality's share of logit mass (the dependence, ``D``): the modality relied on less but less
noisy gets the larger push.

Paper and released code differ: the released ``main_arl_variance.py`` computes ``c`` but never
writes it to the encoders' ``GradScale``, so both keep ``c = 0.5`` (gradient x1.5) and the method
reduces to ``L_f + gamma (L_a + L_v)``. Both are here, named: ``grad_scale="paper"`` applies
``1 + c_m`` after ``start_epoch`` (the default), ``grad_scale="released"`` keeps x1.5 throughout;
``"none"`` with ``gamma = warmup_gamma = 0`` is plain joint training. Before ``start_epoch`` both
use ``L_f + warmup_gamma (L_a + L_v)`` with ``warmup_gamma = 1`` as the released code does.
Exactly two modalities (the paper's formulation); fusion ``concat`` and ``share`` (the official
``ConcatFusion_AUXI`` / ``ShareWeightFusion_AUXI``); FiLM and gated fusion are not implemented.
The released code pools a video's frame features after ``GradScale``; :class:`ARLClassifier`
folds frames into the batch, scales per frame and averages (the same, since both are linear).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from zoo.nn.backbones import build_backbone, feature_dim
from zoo.templates.classifier import ClassifierModule

__all__ = [
    "GradScale",
    "grad_scale",
    "shared_head_logits",
    "dependence",
    "prediction_entropy",
    "arl_modality_weights",
    "arl_loss",
    "ARL",
    "ARLClassifier",
    "FUSIONS",
    "GRAD_SCALES",
]

FUSIONS = ("concat", "share")
GRAD_SCALES = ("paper", "released", "none")


class GradScale(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by ``1 + c`` (step 5; official ``models/backbone.py``).

    ``c`` is a 0-d tensor read at backward time, so it can be filled in after the forward pass
    from the same batch's unimodal logits (one forward per step, as the released code).
    """

    @staticmethod
    def forward(ctx: Any, h: Tensor, c: Tensor) -> Tensor:
        ctx.c = c
        return h.view_as(h)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad * (1 + ctx.c.detach().to(grad.dtype)), None


def grad_scale(h: Tensor, c: float | Tensor) -> Tensor:
    """``h`` unchanged, its gradient times ``1 + c``; no gradient flows into ``c``."""
    return GradScale.apply(h, torch.as_tensor(c, device=h.device))


def shared_head_logits(head: nn.Linear, h_a: Tensor, h_v: Tensor, fusion: str = "concat") -> tuple[Tensor, Tensor, Tensor]:
    """Fused and unimodal logits ``(z, z_a, z_v)`` from ONE head (the official ``*_AUXI`` fusion).

    ``concat``: ``z = W[h_a; h_v] + b``, ``z_a = W[h_a; 0] + b``, ``z_v = W[0; h_v] + b``;
    ``share``: ``z_a = W h_a + b``, ``z_v = W h_v + b``, ``z = z_a + z_v``.
    """
    if fusion == "concat":
        z = head(torch.cat([h_a, h_v], 1))
        z_a = head(torch.cat([h_a, torch.zeros_like(h_v)], 1))
        z_v = head(torch.cat([torch.zeros_like(h_a), h_v], 1))
        return z, z_a, z_v
    if fusion == "share":
        z_a, z_v = head(h_a), head(h_v)
        return z_a + z_v, z_a, z_v
    raise ValueError(f"unknown fusion {fusion!r}; choose one of {FUSIONS}")


def dependence(logits: Tensor) -> Tensor:
    """A modality's dependence ``D_m = sum_classes mean_batch |z_m|`` (step 2), detached."""
    return logits.detach().abs().mean(0).sum()


def prediction_entropy(logits: Tensor, eps: float = 1e-16) -> Tensor:
    """The variance proxy ``H_m = mean_batch(-sum_k p_k log p_k)``, ``p = softmax(z_m)`` (step 3), detached."""
    p = logits.detach().softmax(-1)
    return -(p * torch.log(p + eps)).sum(-1).mean()


def arl_modality_weights(logits_a: Tensor, logits_v: Tensor, T: float = 8.0, entropy_floor: float = 0.3) -> dict[str, Tensor]:
    """ARL's coefficients ``c_a, c_v`` (steps 2-4) and the statistics behind them.

    ``D'`` normalised dependences; ``H'`` normalised entropies clamped below at ``entropy_floor``;
    ``u' = (1/H') / sum(1/H')``; ``[c_a, c_v] = softmax(T [D_v' u_a', D_a' u_v'])``.
    """
    d_a, d_v = dependence(logits_a), dependence(logits_v)
    dep_a = d_a / (d_a + d_v).clamp_min(1e-12)
    dep_v = 1 - dep_a
    h_a, h_v = prediction_entropy(logits_a), prediction_entropy(logits_v)
    total = (h_a + h_v).clamp_min(1e-12)
    ent_a, ent_v = (h_a / total).clamp_min(entropy_floor), (h_v / total).clamp_min(entropy_floor)
    inv_a, inv_v = 1 / ent_a, 1 / ent_v
    u_a, u_v = inv_a / (inv_a + inv_v), inv_v / (inv_a + inv_v)
    c = torch.softmax(T * torch.stack([dep_v * u_a, dep_a * u_v]), 0)
    return {"c_a": c[0], "c_v": c[1], "dep_a": dep_a, "dep_v": dep_v, "u_a": u_a, "u_v": u_v}


def arl_loss(z: Tensor, z_a: Tensor, z_v: Tensor, y: Tensor, gamma: float) -> tuple[Tensor, dict[str, Tensor]]:
    """``L = CE(z, y) + gamma (CE(z_a, y) + CE(z_v, y))`` (steps 1 and 6) and its parts."""
    parts = {"loss_f": F.cross_entropy(z, y), "loss_a": F.cross_entropy(z_a, y), "loss_v": F.cross_entropy(z_v, y)}
    return parts["loss_f"] + gamma * (parts["loss_a"] + parts["loss_v"]), parts


class ARL(nn.Module):
    """ARL as a regulariser for any two-encoder model with a shared head: loss and gradient coefficients.

    Call :meth:`coefficients` on the unimodal logits of the batch (detached statistics), pass each
    encoder's features through :func:`grad_scale` with them, then use :meth:`loss`.

    Args:
        gamma: weight of the unimodal losses after ``start_epoch`` (CREMA-D 4, Kinetics-Sounds 3, AVE 5).
        warmup_gamma: their weight up to ``start_epoch`` (the released code: 1).
        T: softmax temperature of the coefficients (CREMA-D 8, KS / AVE 4).
        entropy_floor: lower clamp of the normalised entropies.
        start_epoch: ARL is switched on for epochs ``> start_epoch``.
        grad_scale: ``paper`` (``1 + c_m``), ``released`` (``1.5`` for both), ``none`` (1).

    >>> arl = ARL()
    >>> za, zv = torch.tensor([[4.0, 0.0]]), torch.tensor([[0.5, 0.4]])
    >>> c = arl.coefficients(za, zv, epoch=10)
    >>> round(float(c["c_a"] + c["c_v"]), 6)
    1.0
    """

    def __init__(
        self,
        gamma: float = 4.0,
        warmup_gamma: float = 1.0,
        T: float = 8.0,
        entropy_floor: float = 0.3,
        start_epoch: int = 5,
        grad_scale: str = "paper",
    ) -> None:
        super().__init__()
        if grad_scale not in GRAD_SCALES:
            raise ValueError(f"unknown grad_scale {grad_scale!r}; choose one of {GRAD_SCALES}")
        if gamma < 0 or warmup_gamma < 0 or T <= 0:
            raise ValueError(f"need gamma >= 0, warmup_gamma >= 0 and T > 0, got {gamma}, {warmup_gamma}, {T}")
        if not 0 <= entropy_floor <= 0.5:
            raise ValueError(f"entropy_floor must be in [0, 0.5] (normalised entropies sum to 1), got {entropy_floor}")
        self.gamma, self.warmup_gamma, self.T = gamma, warmup_gamma, T
        self.entropy_floor, self.start_epoch, self.grad_scale = entropy_floor, start_epoch, grad_scale

    def active(self, epoch: int) -> bool:
        """Whether ARL's weighting is on (the released code's ``epoch > args.start``)."""
        return epoch > self.start_epoch

    def coefficients(self, z_a: Tensor, z_v: Tensor, epoch: int) -> dict[str, Tensor]:
        """The gradient coefficients ``c_a, c_v`` for this batch (0.5 each before start or unless ``paper``), with statistics."""
        stats = arl_modality_weights(z_a, z_v, self.T, self.entropy_floor)
        if self.grad_scale == "none":
            stats["c_a"], stats["c_v"] = z_a.new_tensor(0.0), z_a.new_tensor(0.0)
        elif self.grad_scale == "released" or not self.active(epoch):
            stats["c_a"], stats["c_v"] = z_a.new_tensor(0.5), z_a.new_tensor(0.5)
        return stats

    def loss(self, z: Tensor, z_a: Tensor, z_v: Tensor, y: Tensor, epoch: int) -> tuple[Tensor, dict[str, Tensor]]:
        """The total loss of step 6: ``gamma`` after ``start_epoch``, ``warmup_gamma`` before."""
        return arl_loss(z, z_a, z_v, y, self.gamma if self.active(epoch) else self.warmup_gamma)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, T={self.T}, start_epoch={self.start_epoch}, grad_scale={self.grad_scale!r}"


_DEFAULT_ENCODERS: dict[str, dict[str, Any]] = {
    "a": {"backbone": "mlp", "input_dim": 64, "hidden_dims": [64, 32]},
    "v": {"backbone": "mlp", "input_dim": 16, "hidden_dims": [64, 32]},
}


class ARLClassifier(ClassifierModule):
    """Two encoders, one shared linear fusion head, trained with :class:`ARL` (or its baselines).

    The batch is ``({name_a: x_a, name_v: x_v}, y)``; ``forward`` returns the fused logits. A 5-D
    input ``(B, C, T, H, W)`` is a clip: frames go through the encoder one by one and are averaged.
    Test also logs ``test/acc_<name>``, the accuracy of each modality's shared-head logits, and
    training logs ``train/c_<name>`` and ``train/dep_<name>`` (coefficient and logit-mass share).

    Args:
        num_classes: classes.
        encoders: ``{modality: build_backbone kwargs}``, two entries, in the head's order.
        fusion: ``concat`` | ``share``.
        only: train and predict from this one modality (the other's feature is zeroed): the
            unimodal reference; None uses both.
        gamma / warmup_gamma / T / entropy_floor / start_epoch / grad_scale: see :class:`ARL`.
        lr / momentum / weight_decay / lr_milestones / lr_gamma: SGD and its MultiStepLR.
    """

    def __init__(
        self,
        num_classes: int = 6,
        encoders: dict[str, dict[str, Any]] | None = None,
        fusion: str = "concat",
        only: str | None = None,
        gamma: float = 4.0,
        warmup_gamma: float = 1.0,
        T: float = 8.0,
        entropy_floor: float = 0.3,
        start_epoch: int = 5,
        grad_scale: str = "paper",
        lr: float = 1e-3,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        lr_milestones: list[int] | None = None,
        lr_gamma: float = 0.1,
    ) -> None:
        super().__init__(num_classes)
        self.save_hyperparameters()
        encoders = encoders or _DEFAULT_ENCODERS
        if len(encoders) != 2:
            raise ValueError(f"ARL needs exactly two modalities, got {list(encoders)}")
        if fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {fusion!r}; choose one of {FUSIONS}")
        self.modalities: list[str] = list(encoders)
        if only is not None and only not in self.modalities:
            raise ValueError(f"only must be one of {self.modalities} or None, got {only!r}")
        self.encoders = nn.ModuleDict({m: build_backbone(num_classes=0, **kw) for m, kw in encoders.items()})
        widths = [feature_dim(e) for e in self.encoders.values()]
        if fusion == "share" and widths[0] != widths[1]:
            raise ValueError(f"share fusion needs equal feature widths, got {widths}")
        self.head = nn.Linear(sum(widths) if fusion == "concat" else widths[0], num_classes)
        self.arl = ARL(gamma, warmup_gamma, T, entropy_floor, start_epoch, grad_scale)
        self.unimodal_acc = nn.ModuleDict({m: MulticlassAccuracy(num_classes, average="micro") for m in self.modalities})

    def _encode(self, name: str, x: Tensor, c: Tensor | None) -> Tensor:
        """Features of one modality, gradient-scaled by ``1 + c``; clips are folded and frame-averaged."""
        clip = x.ndim == 5
        if clip:  # (B, C, T, H, W) -> (B T, C, H, W)
            b, t = x.shape[0], x.shape[2]
            x = x.transpose(1, 2).reshape(b * t, *x.shape[1:2], *x.shape[3:])
        h = self.encoders[name](x)
        if c is not None:
            h = grad_scale(h, c)
        if clip:
            h = h.view(b, t, -1).mean(1)
        if self.hparams["only"] is not None and name != self.hparams["only"]:
            h = torch.zeros_like(h)
        return h

    def _inputs(self, x: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        if not isinstance(x, dict) or set(x) != set(self.modalities):
            got = list(x) if isinstance(x, dict) else type(x).__name__
            raise ValueError(f"ARLClassifier expects a dict with keys {self.modalities}, got {got}")
        return x[self.modalities[0]], x[self.modalities[1]]

    def forward_all(self, x: dict[str, Tensor], c: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Fused and unimodal logits ``(z, z_a, z_v)``; ``c`` scales the encoders' gradients."""
        x_a, x_v = self._inputs(x)
        h_a = self._encode(self.modalities[0], x_a, None if c is None else c[0])
        h_v = self._encode(self.modalities[1], x_v, None if c is None else c[1])
        return shared_head_logits(self.head, h_a, h_v, self.hparams["fusion"])

    def forward(self, x: dict[str, Tensor]) -> Tensor:
        return self.forward_all(x)[0]

    def training_step(self, batch: tuple[dict[str, Tensor], Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        epoch = self.current_epoch
        c_a, c_v = torch.zeros((), device=self.device), torch.zeros((), device=self.device)
        z, z_a, z_v = self.forward_all(x, (c_a, c_v))
        stats = self.arl.coefficients(z_a, z_v, epoch)  # steps 2-4 on this batch's detached logits
        c_a.fill_(stats["c_a"]), c_v.fill_(stats["c_v"])  # read by GradScale in the backward below
        loss, parts = self.arl.loss(z, z_a, z_v, y, epoch)
        a, v = self.modalities
        self.log_dict({f"train/{k}": val for k, val in parts.items()}, on_step=False, on_epoch=True)
        self.log_dict(
            {f"train/c_{a}": stats["c_a"], f"train/c_{v}": stats["c_v"], f"train/dep_{a}": stats["dep_a"], f"train/dep_{v}": stats["dep_v"]},
            on_step=False,
            on_epoch=True,
        )
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y = batch
        z, z_a, z_v = self.forward_all(x)
        self.update_metrics("test", z, y, dataloader_idx)
        self.log("test/loss", F.cross_entropy(z, y))
        for name, logits in zip(self.modalities, (z_a, z_v)):
            self.unimodal_acc[name].update(logits, y)

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        for name, metric in self.unimodal_acc.items():
            if metric.update_called:
                self.log(f"test/acc_{name}", metric.compute())
            metric.reset()

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        opt = torch.optim.SGD(self.parameters(), lr=hp["lr"], momentum=hp["momentum"], weight_decay=hp["weight_decay"])
        if not hp["lr_milestones"]:
            return opt
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(hp["lr_milestones"]), gamma=hp["lr_gamma"])
        return {"optimizer": opt, "lr_scheduler": sched}
