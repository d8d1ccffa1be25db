"""``ClassifierModule``: the classifier base whose default metrics are what this zoo studies.

Every val/test loader gets one confusion matrix (``torchmetrics``' ``MulticlassConfusionMatrix``,
summed over batches and, under DDP, over processes), from which the epoch's metrics are read:

- ``{stage}/acc``: accuracy over all examples (micro);
- ``{stage}/balanced_acc``: balanced accuracy, the mean over classes of per-class recall;
- ``{stage}/worst_class_acc``: the lowest per-class recall;
- ``{stage}/acc_class{k}``: the recall of class ``k`` (``class_metrics_limit`` caps how many);
- ``{stage}/loss``: :meth:`ClassifierModule.eval_loss`, cross-entropy by default;
- ``{stage}/many_acc``, ``{stage}/medium_acc``, ``{stage}/few_acc``: the long-tailed split of
  Liu et al. (OLTR, CVPR 2019): mean recall over the classes with more than ``many`` training
  examples, fewer than ``few``, and in between. Logged once the groups are known: from
  :meth:`ClassifierModule.set_shot_groups`, or at setup from a DataModule that has a
  ``train_class_counts()`` method (thresholds ``shot_thresholds``, 100 and 20 by default).

As scikit-learn's ``balanced_accuracy_score``, a class with no example in the epoch's targets
is left out of the balanced and worst-class accuracy (its per-class value is NaN). With several
loaders, Lightning's suffix is appended (``val/acc/dataloader_idx_1``); override
:meth:`ClassifierModule.metric_key` to name them.

``predict_step`` returns class probabilities, ``softmax(forward(x))``, shape ``(N, C)``.

Subclasses supply ``forward`` (logits), ``training_step`` (the loss) and the optimizer, and
call ``super().__init__(num_classes)``. One that writes its own ``validation_step`` or
``test_step`` feeds the base with :meth:`ClassifierModule.update_metrics` and keeps the
``on_*_epoch_end`` hooks (or calls them through ``super()``).

>>> import torch
>>> import torch.nn.functional as F
>>> class Linear(ClassifierModule):
...     def __init__(self, num_features: int = 4, num_classes: int = 3, lr: float = 0.1) -> None:
...         super().__init__(num_classes)
...         self.save_hyperparameters()
...         self.net = torch.nn.Linear(num_features, num_classes)
...     def forward(self, x):
...         return self.net(x)
...     def training_step(self, batch, batch_idx):
...         x, y = batch
...         return F.cross_entropy(self(x), y)
...     def configure_optimizers(self):
...         return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)
>>> model = Linear()
>>> model.update_metrics("val", torch.tensor([[2.0, 0, 0], [0, 2, 0], [2, 0, 0]]), torch.tensor([0, 1, 1]))
>>> {k: round(float(v), 3) for k, v in model.compute_metrics("val").items()}
{'val/acc': 0.667, 'val/balanced_acc': 0.75, 'val/worst_class_acc': 0.5, 'val/acc_class0': 1.0, 'val/acc_class1': 0.5, 'val/acc_class2': nan}
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassConfusionMatrix

from zoo.hub import ZooModule

__all__ = ["ClassifierModule", "classification_metrics", "shot_groups"]

STAGES = ("val", "test")


SHOT_GROUPS = ("many", "medium", "few")


def shot_groups(train_counts: Tensor | list[int], many: int = 100, few: int = 20) -> Tensor:
    """Each class's long-tail group from its training count: 0 many (``> many``), 2 few (``< few``), 1 medium."""
    counts = torch.as_tensor(train_counts)
    if counts.ndim != 1 or counts.numel() == 0 or bool((counts < 0).any()):
        raise ValueError(f"train_counts must be a non-empty 1-D sequence of non-negative counts, got {train_counts!r}")
    if not 0 < few <= many:
        raise ValueError(f"shot thresholds need 0 < few <= many, got few={few}, many={many}")
    groups = torch.ones(counts.numel(), dtype=torch.long)
    groups[counts > many] = 0
    groups[counts < few] = 2
    return groups


def classification_metrics(confusion: Tensor, prefix: str, max_classes: int | None = None, groups: Tensor | None = None) -> dict[str, Tensor]:
    """Accuracy, balanced, worst-class and per-class accuracy from a ``(C, C)`` confusion matrix.

    ``confusion[i, j]`` counts examples of true class ``i`` predicted as ``j``. Recall of class
    ``i`` is ``confusion[i, i] / confusion[i].sum()``; classes without examples are NaN and left
    out of the mean and the minimum (as ``sklearn.metrics.balanced_accuracy_score``). Per-class
    keys are written for the first ``max_classes`` classes (all when None). With ``groups`` (see
    :func:`shot_groups`), the mean recall of each Many / Medium / Few group (NaN for an empty one).
    """
    cm = confusion.double()
    support = cm.sum(1)
    present = support > 0
    recall = torch.where(present, cm.diagonal() / support.clamp_min(1), torch.full_like(support, float("nan")))
    total = cm.sum()
    nan = cm.new_tensor(float("nan"))
    out = {
        f"{prefix}/acc": cm.diagonal().sum() / total if total > 0 else nan,
        f"{prefix}/balanced_acc": recall[present].mean() if present.any() else nan,
        f"{prefix}/worst_class_acc": recall[present].min() if present.any() else nan,
    }
    limit = len(recall) if max_classes is None else min(max_classes, len(recall))
    out.update({f"{prefix}/acc_class{k}": recall[k] for k in range(limit)})
    if groups is not None:
        if groups.shape != recall.shape:
            raise ValueError(f"groups has shape {tuple(groups.shape)}, expected ({len(recall)},): one group per class")
        for g, name in enumerate(SHOT_GROUPS):
            member = present & (groups.to(recall.device) == g)
            out[f"{prefix}/{name}_acc"] = recall[member].mean() if member.any() else nan
    return out


class ClassifierModule(ZooModule):
    """A :class:`zoo.hub.ZooModule` classifier with accuracy, balanced, worst-class and per-class accuracy.

    Args:
        num_classes: C, the number of logits ``forward`` returns.

    Class attributes: ``class_metrics_limit`` (log ``acc_class{k}`` for at most this many
    classes; ``None`` for all), ``prog_bar_metric`` (shown in the progress bar during validation).
    """

    class_metrics_limit: int | None = 100
    prog_bar_metric: str = "acc"
    shot_thresholds: tuple[int, int] = (100, 20)  # (many, few): the OLTR split of CIFAR-LT / ImageNet-LT

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        # the first loader of each stage exists from the start (moved with the module); more are added on use
        self.class_metrics = nn.ModuleDict({f"{stage}_0": MulticlassConfusionMatrix(self.num_classes) for stage in STAGES})
        self.shot_groups: Tensor | None = None  # per-class Many/Medium/Few group; None: not logged

    def set_shot_groups(self, train_counts: Tensor | list[int], many: int | None = None, few: int | None = None) -> None:
        """Log Many / Medium / Few accuracy from now on, grouping classes by their training counts."""
        if len(train_counts) != self.num_classes:
            raise ValueError(f"train_counts has {len(train_counts)} classes, the model {self.num_classes}")
        default_many, default_few = self.shot_thresholds
        self.shot_groups = shot_groups(train_counts, default_many if many is None else many, default_few if few is None else few)

    def setup(self, stage: str) -> None:
        """Take the Many / Medium / Few groups from a DataModule with ``train_class_counts()``, unless already set."""
        super().setup(stage)
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        counts = getattr(datamodule, "train_class_counts", None)
        if self.shot_groups is None and callable(counts):
            self.set_shot_groups(counts())

    # ------------------------------------------------------------------------------ metrics
    def _confusion(self, stage: str, dataloader_idx: int) -> MulticlassConfusionMatrix:
        key = f"{stage}_{dataloader_idx}"
        if key not in self.class_metrics:
            self.class_metrics[key] = MulticlassConfusionMatrix(self.num_classes).to(self.device)
        return self.class_metrics[key]  # type: ignore[return-value]

    def update_metrics(self, stage: str, logits: Tensor, y: Tensor, dataloader_idx: int = 0) -> None:
        """Add a batch of ``(N, C)`` logits (or probabilities) and ``(N,)`` labels to ``stage``'s metrics."""
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        self._confusion(stage, dataloader_idx).update(logits.detach(), y)

    def metric_key(self, key: str, dataloader_idx: int, num_loaders: int) -> str:
        """The logged name of ``key`` (``val/acc``) for one loader: Lightning's suffix when there are several.

        Override to name loaders (e.g. ``test/ood/acc``).
        """
        return f"{key}/dataloader_idx_{dataloader_idx}" if num_loaders > 1 else key

    def compute_metrics(self, stage: str) -> dict[str, Tensor]:
        """The epoch's metrics of every ``stage`` loader (synchronised across processes), then reset them."""
        indices = sorted(int(k.rsplit("_", 1)[1]) for k in self.class_metrics if k.startswith(f"{stage}_"))
        out: dict[str, Tensor] = {}
        for idx in indices:
            metric = self.class_metrics[f"{stage}_{idx}"]
            if not metric.update_called:
                continue
            values = classification_metrics(metric.compute(), stage, self.class_metrics_limit, self.shot_groups)
            out.update({self.metric_key(k, idx, len(indices)): v for k, v in values.items()})
            metric.reset()
        return out

    def log_metrics(self, stage: str) -> None:
        """Log :meth:`compute_metrics` (already reduced over processes: no ``sync_dist``)."""
        for key, value in self.compute_metrics(stage).items():
            bar = stage == "val" and key == f"val/{self.prog_bar_metric}"
            self.log(key, value.float(), prog_bar=bar, add_dataloader_idx=False)

    def eval_loss(self, logits: Tensor, y: Tensor) -> Tensor | None:
        """The loss logged as ``{stage}/loss``: cross-entropy; return None to log none."""
        return F.cross_entropy(logits, y)

    # -------------------------------------------------------------------------------- steps
    def _eval_step(self, batch: Any, stage: str, dataloader_idx: int) -> Tensor:
        x, y = batch[0], batch[1]
        logits = self(x)
        self.update_metrics(stage, logits, y, dataloader_idx)
        loss = self.eval_loss(logits, y)
        if loss is not None:
            self.log(f"{stage}/loss", loss, add_dataloader_idx=True)
        return logits

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, "val", dataloader_idx)

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, "test", dataloader_idx)

    def on_validation_epoch_end(self) -> None:
        self.log_metrics("val")

    def on_test_epoch_end(self) -> None:
        self.log_metrics("test")

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        """Class probabilities ``softmax(forward(x))``, shape ``(N, C)``; ``batch`` is ``x`` or ``(x, ...)``."""
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(x).softmax(-1)
