"""SBCL's periodic subclass re-clustering (Hou et al., ICCV 2023, arXiv 2306.15925), as a Callback.

After the warm-up and then every ``every_n_epochs`` epochs, at the start of the epoch, it embeds
the training set with the current model (eval mode, no augmentation), splits every head class
into ``M_c`` tail-sized subclasses by k-means and computes the class temperatures; the maths is
:func:`zoo.sbcl.subclass_counts`, :func:`zoo.sbcl.cluster_subclasses` and
:func:`zoo.sbcl.class_temperature_scales`. The result goes to the module through its one
extension point, ``set_subclasses(subclass_targets, temperature_scales)``
(:class:`zoo.sbcl.SBCLModule` has it), and is kept in the checkpoint.

What it needs, checked at ``setup``: a module with ``set_subclasses`` (and ``embed(x)``, else
``forward(x)`` is embedded), and a DataModule with ``eval_train_dataloader()``: the training set
in order, without augmentation, whose position ``i`` is the sample that training batches index
as ``i``. Under DDP every rank embeds the whole set and rank 0's result is broadcast.

>>> from zoo.callbacks import SubclassClustering
>>> cb = SubclassClustering(cluster_min_size=10, every_n_epochs=10, warmup_epochs=10)
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor
from typing_extensions import override

from zoo.sbcl import class_temperature_scales, cluster_subclasses, subclass_counts

__all__ = ["SubclassClustering"]


class SubclassClustering(Callback):
    """Re-cluster head classes into tail-sized subclasses every few epochs and hand them to the module.

    Args:
        cluster_min_size: k, the smallest subclass size (Sec. 3.2: M_c = n_c // max(n_min, k)).
        every_n_epochs: epochs between re-clusterings (the official ``--step``).
        warmup_epochs: epochs of plain SupCon before the first clustering.
        kmeans_iters / tol: k-means iteration limit and tolerance (35 and 1e-3 as the official code).
        percentiles: the class-temperature clip range (20th-80th as the official code).
        seed: seeds k-means (class c uses ``seed + c``).
    """

    def __init__(
        self,
        cluster_min_size: int = 10,
        every_n_epochs: int = 10,
        warmup_epochs: int = 10,
        kmeans_iters: int = 35,
        tol: float = 1e-3,
        percentiles: tuple[float, float] = (20.0, 80.0),
        seed: int = 0,
    ) -> None:
        if cluster_min_size < 1 or every_n_epochs < 1 or warmup_epochs < 0 or kmeans_iters < 1:
            raise ValueError(
                "need cluster_min_size >= 1, every_n_epochs >= 1, warmup_epochs >= 0, kmeans_iters >= 1; got "
                f"{cluster_min_size}, {every_n_epochs}, {warmup_epochs}, {kmeans_iters}"
            )
        if not 0 <= percentiles[0] <= percentiles[1] <= 100:
            raise ValueError(f"percentiles must be 0 <= low <= high <= 100, got {percentiles}")
        self.cluster_min_size, self.every_n_epochs, self.warmup_epochs = cluster_min_size, every_n_epochs, warmup_epochs
        self.kmeans_iters, self.tol, self.percentiles, self.seed = kmeans_iters, tol, tuple(percentiles), seed
        self.subclass_targets: Tensor | None = None
        self.temperature_scales: Tensor | None = None
        self.counts: list[int] = []
        self.clustered_epochs: list[int] = []
        self.last_seconds = 0.0  # wall time of the last clustering (benchmarks/sbcl.py); not state

    def should_cluster(self, epoch: int) -> bool:
        """The extension point: re-cluster at the start of ``epoch``? (warm-up, then every ``every_n_epochs``)."""
        return epoch >= self.warmup_epochs and (epoch - self.warmup_epochs) % self.every_n_epochs == 0

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not callable(getattr(pl_module, "set_subclasses", None)):
            raise TypeError(
                f"SubclassClustering needs a module with set_subclasses(subclass_targets, temperature_scales) to train on "
                f"subclasses; {type(pl_module).__name__} has none (zoo.sbcl.SBCLModule has it)"
            )
        if stage == "fit" and not callable(getattr(trainer.datamodule, "eval_train_dataloader", None)):
            raise RuntimeError(
                "SubclassClustering needs a DataModule with eval_train_dataloader() (the training set in order, without "
                "augmentation) to embed and cluster; zoo.datamodules.ContrastiveDigitsDataModule has one"
            )

    @override
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.should_cluster(trainer.current_epoch) and trainer.current_epoch not in self.clustered_epochs:
            start = time.perf_counter()
            self.recluster(trainer, pl_module)
            self.last_seconds = time.perf_counter() - start
            self.clustered_epochs.append(trainer.current_epoch)
        if self.subclass_targets is not None and self.temperature_scales is not None:
            pl_module.set_subclasses(self.subclass_targets, self.temperature_scales)  # type: ignore[operator]

    def recluster(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Embed the training set, cluster each class, compute the temperatures; rank 0's result on every rank."""
        z, y = _embed_training_set(trainer, pl_module)
        class_counts = torch.bincount(y).tolist()
        self.counts = subclass_counts(class_counts, self.cluster_min_size)
        targets = cluster_subclasses(z, y, self.counts, self.kmeans_iters, self.tol, self.seed)
        scales = class_temperature_scales(z, y, self.counts, *self.percentiles)
        targets, scales = trainer.strategy.broadcast((targets, scales), src=0)
        self.subclass_targets, self.temperature_scales = targets, scales
        pl_module.log("sbcl/num_subclasses", float(sum(self.counts)))

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "subclass_targets": self.subclass_targets,
            "temperature_scales": self.temperature_scales,
            "counts": list(self.counts),
            "clustered_epochs": list(self.clustered_epochs),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.subclass_targets = state_dict["subclass_targets"]
        self.temperature_scales = state_dict["temperature_scales"]
        self.counts = list(state_dict["counts"])
        self.clustered_epochs = list(state_dict["clustered_epochs"])


def _embed_training_set(trainer: Trainer, pl_module: LightningModule) -> tuple[Tensor, Tensor]:
    """Normalised ``embed(x)`` (or ``forward(x)``) of every training sample, in order, and its labels.

    Eval mode, no gradient, and the RNG left untouched (the loader's seed draw), so a resumed run
    sees the same random numbers as an uninterrupted one.
    """
    loader = trainer.datamodule.eval_train_dataloader()  # type: ignore[union-attr]
    embed = getattr(pl_module, "embed", None) or pl_module
    was_training = pl_module.training
    pl_module.eval()
    zs, ys = [], []
    devices = [pl_module.device] if pl_module.device.type == "cuda" else []
    with torch.no_grad(), torch.random.fork_rng(devices=devices):
        for batch in loader:
            x, y = batch[0], batch[1]
            zs.append(F.normalize(embed(x.to(pl_module.device)).float(), dim=1).cpu())
            ys.append(y.cpu())
    pl_module.train(was_training)
    return torch.cat(zs), torch.cat(ys).long()
