"""The deep linear unconstrained feature model (UFM) of neural collapse, and its closed form.

Paper: *Neural Collapse in Deep Linear Networks: From Balanced to Imbalanced Data*, Dang, Tran,
Osher, Tran-The, Ho, Nguyen (ICML 2023), arXiv 2301.00437. Official code (reference only):
https://github.com/Fsoft-AIC/Neural-Collapse-in-Deep-Linear-Networks
(``synthetic_experiment_imbalanced.py``).

The UFM treats the last-layer features ``H = [h_1 ... h_N]`` of a very expressive network as
free parameters and puts ``M`` bias-free linear layers on top. The paper trains it with the
regularised MSE objective (its deep linear UFM problem, eq. (2)/(7) in the MSE sections)
``(1/2N) ||W_M ... W_1 H - Y||_F^2 + (lambda_W/2) sum_l ||W_l||_F^2 + (lambda_H/2) ||H||_F^2``
and proves (Theorem 4.1 for imbalanced classes, bias-free) that every global minimiser has
collapsed features (NC1), orthogonal class means and orthogonal classifier rows whose lengths
follow the class sizes ``n_k`` through ``x_k`` and ``s_k`` (see
:func:`callbacks.neural_collapse.closed_form`), which is not the simplex ETF of the balanced
with-bias case. This module trains that model with full-batch SGD (lr 0.1, momentum 0.9) and,
at test time, logs the NC metrics for both geometries and the gap between the measured relative
squared norms of the class means / classifier rows and the closed form.

Choices: the two decays are applied as SGD ``weight_decay`` of two parameter groups
(``lambda_W`` on every ``W_l``, ``lambda_H`` on ``H``), which gives exactly the gradient of the
paper's penalty terms at a fraction of the autograd cost; the logged ``train/loss`` is the full
objective. Initialisation is ``N(0, 0.1^2)`` for ``H`` and every ``W_l`` as in the official code.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from callbacks.neural_collapse import (
    NeuralCollapseMetrics,
    class_means,
    closed_form,
    closed_form_relative_norms,
    max_abs_cosine,
    relative_sq_norms,
)
from zoo.hub import ZooModule

__all__ = ["DeepLinearUFM"]


class DeepLinearUFM(ZooModule):
    """Free features ``H (N x d)`` and ``M`` bias-free linear layers, trained with regularised MSE.

    ``forward(index)`` returns the logits ``W_M ... W_1 h_index`` of those samples; batches are
    ``(index, label)`` (:class:`datamodules.ufm.UFMDataModule`).

    Args:
        class_counts: samples per class; sets ``N`` (the rows of ``H``) and ``K``, and must match
            the data (checked at test time).
        hidden: feature width ``d`` (also the width of the hidden linear layers).
        depth: ``M``, the number of linear layers.
        lr, momentum: full-batch SGD.
        weight_decay: ``lambda_W`` on each linear layer.
        feature_decay: ``lambda_H`` on the free features.
        init_std: standard deviation of the normal initialisation.

    >>> model = DeepLinearUFM(class_counts=[2, 1], hidden=4, depth=2)
    >>> model(torch.tensor([0, 2])).shape
    torch.Size([2, 2])
    """

    def __init__(
        self,
        class_counts: list[int] = [200, 100, 50, 50],  # noqa: B006 - JSON-able default, never mutated
        hidden: int = 64,
        depth: int = 3,
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        feature_decay: float = 5e-4,
        init_std: float = 0.1,
    ) -> None:
        super().__init__()
        if len(class_counts) < 2 or any(int(n) != n or n < 1 for n in class_counts):
            raise ValueError(f"class_counts must be at least 2 positive integers, got {class_counts}")
        if depth < 1 or hidden < 1:
            raise ValueError(f"depth and hidden must be positive, got depth={depth}, hidden={hidden}")
        if weight_decay <= 0 or feature_decay <= 0:
            raise ValueError(f"weight_decay and feature_decay must be positive (the theory needs both), got {weight_decay}, {feature_decay}")
        self.save_hyperparameters()
        self.num_classes = len(class_counts)
        self.num_samples = int(sum(class_counts))
        self.H = nn.Parameter(torch.randn(self.num_samples, hidden) * init_std)
        widths = [hidden] * depth + [self.num_classes]
        self.layers = nn.Sequential(*(nn.Linear(a, b, bias=False) for a, b in zip(widths, widths[1:])))
        for layer in self.layers:
            nn.init.normal_(layer.weight, std=init_std)
        metric_args: dict[str, Any] = dict(num_classes=self.num_classes, feature_dim=hidden)
        self.nc_paper = NeuralCollapseMetrics(
            **metric_args, geometry="imbalanced_orthogonal", depth=depth, weight_decay=weight_decay, feature_decay=feature_decay
        )
        self.nc_etf = NeuralCollapseMetrics(**metric_args, geometry="etf")
        self._test_sq_err = 0.0
        self._test_correct = 0

    # ------------------------------------------------------------------ model
    def forward(self, index: Tensor) -> Tensor:
        return self.layers(self.H[index])

    def classifier(self) -> Tensor:
        """``W = W_M ... W_1`` (``K x d``)."""
        weight = self.layers[0].weight
        for layer in list(self.layers)[1:]:
            weight = layer.weight @ weight
        return weight

    def objective(self, index: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """``(mse, full objective)``: ``(1/2B) ||W H_batch - Y||^2`` and the same plus both penalties."""
        mse = (self(index) - F.one_hot(labels, self.num_classes).to(self.H.dtype)).pow(2).sum() / (2 * len(index))
        hp = self.hparams
        penalty = hp.weight_decay / 2 * sum(layer.weight.pow(2).sum() for layer in self.layers)
        return mse, mse + penalty + hp.feature_decay / 2 * self.H.pow(2).sum()

    def closed_form(self, class_counts: list[int] | None = None) -> dict[str, list[float]]:
        """The paper's prediction: ``x_k``, ``s_k`` and the relative squared norms of the class means
        (``mean_rel``) and of the classifier rows (``classifier_rel``), each divided by its largest."""
        counts = class_counts or list(self.hparams.class_counts)
        hp = self.hparams
        cf = closed_form(counts, hp.depth, hp.weight_decay, hp.feature_decay)
        means, rows = closed_form_relative_norms(counts, hp.depth, hp.weight_decay, hp.feature_decay)
        return {"x": cf.x.tolist(), "s": cf.s.tolist(), "mean_rel": means.tolist(), "classifier_rel": rows.tolist()}

    # ------------------------------------------------------------------ training
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        index, labels = batch
        mse = (self(index) - F.one_hot(labels, self.num_classes).to(self.H.dtype)).pow(2).sum() / (2 * len(index))
        if self.global_step % max(1, self.trainer.log_every_n_steps) == 0:
            with torch.no_grad():
                _, full = self.objective(index, labels)
            self.log("train/loss", full, on_step=True, on_epoch=False, batch_size=len(index))
            self.log("train/mse", mse.detach(), on_step=True, on_epoch=False, batch_size=len(index))
        return mse

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        groups = [
            {"params": list(self.layers.parameters()), "weight_decay": hp.weight_decay},
            {"params": [self.H], "weight_decay": hp.feature_decay},
        ]
        return torch.optim.SGD(groups, lr=hp.lr, momentum=hp.momentum)

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self(batch[0])

    # ------------------------------------------------------------------ test: measured vs closed form
    def on_test_epoch_start(self) -> None:
        self.nc_paper.reset()
        self.nc_etf.reset()
        self._test_sq_err, self._test_correct = 0.0, 0

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        index, labels = batch
        features = self.H[index]
        logits = self.layers(features)
        self._test_sq_err += float((logits - F.one_hot(labels, self.num_classes).to(logits.dtype)).pow(2).sum())
        self._test_correct += int((logits.argmax(1) == labels).sum())
        self.nc_paper.update(features, labels)
        self.nc_etf.update(features, labels)

    def on_test_epoch_end(self) -> None:
        weight = self.classifier().detach()
        self.nc_paper.set_classifier(weight)
        self.nc_etf.set_classifier(weight)
        paper, etf = self.nc_paper.compute(), self.nc_etf.compute()
        with self.nc_paper.sync_context():
            counts, sums = self.nc_paper.counts.clone(), self.nc_paper.sums.clone()
        if counts.tolist() != list(self.hparams.class_counts):
            raise ValueError(f"the test data has class counts {counts.tolist()}, the model was built for {list(self.hparams.class_counts)}")
        theory = self.closed_form(counts.tolist())
        mean_rel = relative_sq_norms(class_means(counts, sums))
        cls_rel = relative_sq_norms(weight.double())
        mean_theory = torch.tensor(theory["mean_rel"], dtype=torch.float64, device=mean_rel.device)
        cls_theory = torch.tensor(theory["classifier_rel"], dtype=torch.float64, device=cls_rel.device)
        n = int(counts.sum())
        logs: dict[str, Any] = {
            **{f"test/{k}": v for k, v in paper.items()},
            **{f"test/ETF_{k}": v for k, v in etf.items() if k != "NC1"},
            "test/mean_norm_err": (mean_rel - mean_theory).abs().max(),
            "test/classifier_norm_err": (cls_rel - cls_theory).abs().max(),
            "test/means_max_cos": max_abs_cosine(class_means(counts, sums)),
            "test/classifier_max_cos": max_abs_cosine(weight.double()),
            "test/mse": self._test_sq_err / (2 * n),
            "test/acc": self._test_correct / n,
        }
        for k in range(self.num_classes if self.num_classes <= 10 else 0):
            logs[f"test/mean_rel_{k}"] = mean_rel[k]
            logs[f"test/classifier_rel_{k}"] = cls_rel[k]
        self.log_dict({k: float(v) for k, v in logs.items()})
