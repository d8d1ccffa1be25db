"""The deep linear unconstrained feature model (UFM) of neural collapse and the real-network recipe.

Paper: *Neural Collapse in Deep Linear Networks: From Balanced to Imbalanced Data*, Dang, Tran,
Osher, Tran-The, Ho, Nguyen (ICML 2023), arXiv 2301.00437. Official code (reference only):
https://github.com/Fsoft-AIC/Neural-Collapse-in-Deep-Linear-Networks
(``synthetic_experiment_imbalanced.py``).

The UFM treats the last-layer features ``H = [h_1 ... h_N]`` of a very expressive network as
free parameters and puts ``M`` bias-free linear layers on top. The paper trains it with the
regularised MSE objective of its deep linear UFM (as in the official ``synthetic_experiment_imbalanced.py``)
``(1/2N) ||W_M ... W_1 H - Y||_F^2 + (lambda_W/2) sum_l ||W_l||_F^2 + (lambda_H/2) ||H||_F^2``
and proves (its imbalanced-data theorem, bias-free MSE case) that every global minimiser has
collapsed features (NC1), orthogonal class means and orthogonal classifier rows whose lengths
follow the class sizes ``n_k`` through ``x_k`` and ``s_k`` (see
:func:`zoo.neural_collapse.geometry.closed_form`), which is not the simplex ETF of the balanced
with-bias case. This module trains that model with full-batch SGD (lr 0.1, momentum 0.9) and,
at test time, logs the NC metrics for both geometries and the gap between the measured relative
squared norms of the class means / classifier rows and the closed form.

Choices: the two decays are applied as SGD ``weight_decay`` of two parameter groups
(``lambda_W`` on every ``W_l``, ``lambda_H`` on ``H``), which gives exactly the gradient of the
paper's penalty terms at a fraction of the autograd cost; the logged ``train/loss`` is the full
objective. Initialisation is ``N(0, 0.1^2)`` for ``H`` and every ``W_l`` as in the official code.
The UFM is meant for one process and full batches (its test-time ``mse``/``acc`` are per process;
the NC metrics are summed over processes). :class:`DeepLinearHeadClassifier` is the real-network
recipe (a backbone plus bias-free linear layers, the official ``--sep_decay`` MSE) used by
``cards/neural-collapse/full.yaml``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.hub import ZooModule
from zoo.neural_collapse.geometry import closed_form, closed_form_relative_norms
from zoo.neural_collapse.metrics import NeuralCollapseMetrics, class_means, max_abs_cosine, relative_sq_norms
from zoo.nn.backbones import build_backbone, feature_dim

__all__ = ["DeepLinearHeadClassifier", "DeepLinearUFM"]


class DeepLinearUFM(ZooModule):
    """Free features ``H (N x d)`` and ``M`` bias-free linear layers, trained with regularised MSE.

    ``forward(index)`` returns the logits ``W_M ... W_1 h_index`` of those samples; batches are
    ``(index, label)`` (:class:`zoo.datamodules.ufm.UFMDataModule`).

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


class DeepLinearHeadClassifier(ZooModule):
    """A backbone, then ``depth_linear`` (bias-free) linear layers: the paper's real-network setting.

    The features measured by :class:`zoo.callbacks.NeuralCollapseMonitor` are the
    backbone's output (the input of ``head.0``) and ``W`` is the product of the head layers
    (``classifier: <depth_linear>`` in the monitor). With ``loss="mse"`` it trains the paper's
    objective with separate decays, as the official ``--sep_decay`` recipe does:
    ``(1/2B) ||out - Y||^2 + (lambda_W/2) sum_l ||W_l||^2 + (lambda_H/2) sum_batch ||h_i||^2``,
    and no weight decay on the backbone.

    Args:
        num_classes: ``K``.
        backbone: ``"mlp"`` (the official MLP: ``depth_relu`` ReLU layers of ``width`` units, then a
            linear layer with bias) or a timm model name (e.g. ``"resnet18"``, its pooled features).
        in_features: flattened input size for the MLP (3072 for CIFAR).
        width: MLP width (feature dimension ``d``); a timm backbone sets ``d`` itself.
        depth_relu: ReLU layers of the MLP.
        depth_linear: ``M``, linear layers in the head.
        bias: a bias on the last head layer (the with-bias, ETF setting).
        loss: ``"mse"`` (one-hot targets) or ``"ce"``.
        optimizer: ``"adam"`` or ``"sgd"`` (momentum 0.9).
        lr: learning rate; ``lr_step_epochs``/``lr_gamma``: step decay (None: constant).
        weight_decay: ``lambda_W`` on each head layer; feature_decay: ``lambda_H`` on the features.

    Guess: the feature penalty sums over the batch, as the official code; it equals the paper's
    ``(lambda_H/2) ||H||^2`` for full-batch training (the official imbalanced recipe), and with
    batches of ``B`` of ``N`` samples the effective ``lambda_H`` is ``feature_decay * B / N``.
    The MSE is ``(1/2B)``, the paper's normalisation (the official real-network code also divides
    by ``K``).
    """

    def __init__(
        self,
        num_classes: int = 10,
        backbone: str = "mlp",
        in_features: int = 3072,
        width: int = 2048,
        depth_relu: int = 6,
        depth_linear: int = 3,
        bias: bool = False,
        loss: str = "mse",
        optimizer: str = "adam",
        lr: float = 1e-4,
        lr_step_epochs: int | None = None,
        lr_gamma: float = 0.1,
        weight_decay: float = 1e-5,
        feature_decay: float = 1e-5,
    ) -> None:
        super().__init__()
        if loss not in ("mse", "ce"):
            raise ValueError(f"loss must be 'mse' or 'ce', got {loss!r}")
        if optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
        if depth_linear < 1 or num_classes < 2:
            raise ValueError(f"depth_linear must be >= 1 and num_classes >= 2, got {depth_linear}, {num_classes}")
        self.save_hyperparameters()
        if backbone == "mlp":  # the official MLP: its last layer is a plain Linear(width, width), the features
            self.backbone: nn.Module = build_backbone("mlp", width, input_dim=in_features, hidden_dims=[width] * depth_relu)
            dim = width
        else:
            self.backbone = build_backbone(backbone, 0)
            dim = feature_dim(self.backbone)
        widths = [dim] * depth_linear + [num_classes]
        self.head = nn.Sequential(
            *(nn.Linear(a, b, bias=bias and i == depth_linear - 1) for i, (a, b) in enumerate(zip(widths, widths[1:])))
        )
        for module in [*self.backbone.modules(), *self.head.modules()] if backbone == "mlp" else self.head.modules():
            if isinstance(module, nn.Linear):
                nn.init.orthogonal_(module.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))

    def _loss(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        x, y = batch
        features = self.backbone(x)
        logits = self.head(features)
        hp = self.hparams
        if hp.loss == "ce":
            return F.cross_entropy(logits, y), logits
        mse = (logits - F.one_hot(y, hp.num_classes).to(logits.dtype)).pow(2).sum() / (2 * len(y))
        penalty = hp.weight_decay / 2 * sum(m.weight.pow(2).sum() for m in self.head)
        return mse + penalty + hp.feature_decay / 2 * features.pow(2).sum(), logits

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss, logits = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc", (logits.argmax(1) == batch[1]).float().mean())
        return loss

    def _evaluate(self, batch: tuple[Tensor, Tensor], stage: str) -> None:
        loss, logits = self._loss(batch)
        self.log(f"{stage}/loss", loss)
        self.log(f"{stage}/acc", (logits.argmax(1) == batch[1]).float().mean())

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self(batch[0] if isinstance(batch, (list, tuple)) else batch)

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        params = self.parameters()
        opt: torch.optim.Optimizer = (
            torch.optim.Adam(params, lr=hp.lr) if hp.optimizer == "adam" else torch.optim.SGD(params, lr=hp.lr, momentum=0.9)
        )
        if hp.lr_step_epochs is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, hp.lr_step_epochs, hp.lr_gamma)}
