"""AnyLoss: Transforming Classification Metrics into Loss Functions (Han, Moniz, Chawla 2024).

arXiv 2405.14745. Official code (TensorFlow, reference only): doheonhan/AnyLoss and
doheonhan/anyloss_extension.

AnyLoss makes any metric computed from a binary confusion matrix differentiable. The
predicted probability ``p`` is pushed towards 0 or 1 by the approximation (amplifying)
function ``A(p) = sigmoid(L (p - 0.5))`` with ``L = 73``; the batch's soft confusion matrix
is built from ``A(p)`` and the labels, and the loss is ``1 - metric``. So the network is
trained on the metric one reports (F1, G-mean, balanced accuracy) instead of a likelihood,
which pays off on imbalanced data at the default 0.5 threshold.

>>> import torch
>>> loss = AnyLoss("f1")
>>> p, y = torch.tensor([0.9, 0.2, 0.8, 0.1]), torch.tensor([1, 0, 0, 1])
>>> round(float(loss(p, y)), 3)  # hard F1 = 0.5
0.5
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import BinaryAccuracy, BinaryF1Score, BinaryRecall, BinarySpecificity

from zoo.hub import ZooModule
from zoo.nn.backbones import build_backbone

__all__ = [
    "AnyLoss",
    "AnyLossClassifier",
    "amplify",
    "soft_confusion_matrix",
    "confusion_metric",
    "weighted_bce",
    "METRICS",
    "LOSSES",
]

METRICS = ("accuracy", "f1", "fbeta", "gmean", "balanced_accuracy")
LOSSES = ("anyloss", "bce", "wbce", "mse")
MetricFn = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]


def amplify(p: Tensor, L: float) -> Tensor:
    """The approximation function A(p) = 1 / (1 + exp(-L (p - 0.5))) (paper, Eq. 1)."""
    return torch.sigmoid(L * (p - 0.5))


def soft_confusion_matrix(a: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(TN, FP, FN, TP) of amplified outputs ``a`` against binary labels ``y`` (paper, Eq. 2)."""
    y = y.to(a.dtype)
    tp = (y * a).sum()
    fn = y.sum() - tp
    fp = a.sum() - tp
    tn = y.numel() - y.sum() - a.sum() + tp
    return tn, fp, fn, tp


def confusion_metric(metric: str, tn: Tensor, fp: Tensor, fn: Tensor, tp: Tensor, beta: float = 1.0, eps: float = 1e-5) -> Tensor:
    """A metric of the (soft) confusion matrix, as the paper defines it (Section 3.2).

    ``gmean`` is the paper's surrogate TPR * TNR, the square of the G-mean (same optimum).
    """
    n1, n0 = tp + fn, tn + fp
    if metric == "accuracy":
        return (tp + tn) / (tn + fp + fn + tp)
    if metric in ("f1", "fbeta"):
        b2 = 1.0 if metric == "f1" else beta**2
        return (1 + b2) * tp / (b2 * n1 + tp + fp + eps)  # (1+b²)TP / (b² n1 + Σa)
    if metric == "gmean":
        return tp * tn / (n1 * n0 + eps)
    if metric == "balanced_accuracy":
        return (n0 * tp + n1 * tn) / (2 * n1 * n0 + eps)
    raise ValueError(f"unknown metric {metric!r}; choose one of {METRICS} or pass a callable")


class AnyLoss(nn.Module):
    """``1 - metric`` on the amplified soft confusion matrix of a batch.

    Args:
        metric: one of ``accuracy | f1 | fbeta | gmean | balanced_accuracy``, or a callable
            ``(tn, fp, fn, tp) -> metric`` for any other confusion-matrix metric.
        beta: the F-beta weight (``metric="fbeta"``).
        L: the amplifier's slope; the paper derives a valid range and recommends 73.
        eps: keeps the ratios finite when a batch has no positives.
        from_logits: apply a sigmoid first (the paper feeds probabilities).

    Shapes: ``pred`` (N,) or (N, 1) probabilities (or logits), ``target`` (N,) in {0, 1}.
    Use batches that hold positives (the paper uses 5 % of the training set).
    """

    def __init__(
        self,
        metric: str | MetricFn = "f1",
        beta: float = 1.0,
        L: float = 73.0,
        eps: float = 1e-5,
        from_logits: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(metric, str) and metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; choose one of {METRICS} or pass a callable")
        if L <= 0:
            raise ValueError(f"the amplifier L must be positive, got {L}")
        if beta <= 0:
            raise ValueError(f"beta must be positive, got {beta}")
        self.metric, self.beta, self.L, self.eps, self.from_logits = metric, beta, L, eps, from_logits

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        p = pred.reshape(-1)
        if self.from_logits:
            p = torch.sigmoid(p)
        a = amplify(p, self.L)
        tn, fp, fn, tp = soft_confusion_matrix(a, target.reshape(-1))
        if callable(self.metric):
            return 1 - self.metric(tn, fp, fn, tp)
        return 1 - confusion_metric(self.metric, tn, fp, fn, tp, beta=self.beta, eps=self.eps)

    def extra_repr(self) -> str:
        return f"metric={self.metric!r}, L={self.L}, beta={self.beta}"


def weighted_bce(p: Tensor, y: Tensor, eps: float = 1e-5) -> Tensor:
    """The paper's WBCE baseline: each class weighted by the other's share of the batch."""
    y = y.to(p.dtype)
    w1 = (1 - y).mean()  # y0 / N
    w0 = y.mean()  # y1 / N
    return -(w1 * y * torch.log(p + eps) + w0 * (1 - y) * torch.log(1 - p + eps)).mean()


class AnyLossClassifier(ZooModule):
    """A binary classifier (single-layer perceptron or MLP) trained with AnyLoss or a baseline.

    One logit and a decision ``threshold``, so its metrics are torchmetrics' binary ones
    (``{stage}/f1``, ``acc``, ``recall``, ``specificity``, ``balanced_accuracy``) rather than
    :class:`zoo.templates.ClassifierModule`'s argmax over ``C`` logits.

    Args:
        input_dim: features per example.
        hidden_dims: hidden layer widths; ``[]`` is the paper's single-layer perceptron.
        loss: ``anyloss`` (the method) or the paper's baselines ``bce | wbce | mse``.
        metric / beta / L: AnyLoss settings (see :class:`AnyLoss`).
        lr: Adam learning rate (the paper uses Adam).
        threshold: decision threshold on the probability for the reported metrics.
    """

    def __init__(
        self,
        input_dim: int = 20,
        hidden_dims: list[int] | None = None,
        loss: str = "anyloss",
        metric: str = "f1",
        beta: float = 1.0,
        L: float = 73.0,
        lr: float = 0.01,
        threshold: float = 0.5,
    ) -> None:
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; choose one of {LOSSES}")
        self.save_hyperparameters()
        self.net = build_backbone("mlp", 1, input_dim=input_dim, hidden_dims=hidden_dims or [], flatten=False)  # one logit
        self.anyloss = AnyLoss(metric=metric, beta=beta, L=L)
        self.metrics = nn.ModuleDict(
            {stage: self._make_metrics(threshold, f"{stage}/") for stage in ("val", "test")}
        )

    @staticmethod
    def _make_metrics(threshold: float, prefix: str) -> MetricCollection:
        return MetricCollection(
            {
                "acc": BinaryAccuracy(threshold=threshold),
                "f1": BinaryF1Score(threshold=threshold),
                "recall": BinaryRecall(threshold=threshold),
                "specificity": BinarySpecificity(threshold=threshold),
            },
            prefix=prefix,
        )

    def forward(self, x: Tensor) -> Tensor:
        """Logits of the positive class, shape (N,)."""
        return self.net(x).squeeze(-1)

    def loss_fn(self, logits: Tensor, y: Tensor) -> Tensor:
        p = torch.sigmoid(logits)
        kind = self.hparams["loss"]
        if kind == "anyloss":
            return self.anyloss(p, y)
        if kind == "bce":
            return F.binary_cross_entropy_with_logits(logits, y.float())
        if kind == "wbce":
            return weighted_bce(p, y)
        return F.mse_loss(p, y.float())

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = self.loss_fn(self(x), y)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def _eval_step(self, batch: tuple[Tensor, Tensor], stage: str) -> None:
        x, y = batch
        logits = self(x)
        self.log(f"{stage}/loss", self.loss_fn(logits, y))
        self.metrics[stage].update(torch.sigmoid(logits), y)

    def _log_epoch(self, stage: str) -> None:
        values = self.metrics[stage].compute()
        # balanced accuracy = (TPR + TNR) / 2, the metric the paper also reports
        values[f"{stage}/balanced_accuracy"] = (values[f"{stage}/recall"] + values[f"{stage}/specificity"]) / 2
        f1 = values.pop(f"{stage}/f1")
        self.log_dict(values)
        self.log(f"{stage}/f1", f1, prog_bar=stage == "val")
        self.metrics[stage].reset()

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return torch.sigmoid(self(x))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams["lr"])
