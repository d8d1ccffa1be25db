"""Train on a selected subset of any classification DataModule's training pool (BIDS and its baselines).

``SubsetDataModule`` sets up the wrapped DataModule, computes LESS gradient features of a
softmax-regression warm-up model on its pool and validation set, scores the pool with
:func:`zoo.bids.select` (validation classes are the tasks) and serves only the selected
examples for training; validation and test are the wrapped module's own.
"""

from __future__ import annotations

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset

from zoo.bids import SELECTORS, BIDSSelector, LESSGradientFeatures
from zoo.datamodules.digits import DigitsDataModule
from zoo.nn.backbones import build_backbone

__all__ = ["SubsetDataModule", "symmetric_label_noise"]


def symmetric_label_noise(y: Tensor, rate: float, num_classes: int, seed: int) -> Tensor:
    """Replace a seeded ``rate`` share of labels by a uniformly drawn *other* class."""
    if not 0 <= rate < 1:
        raise ValueError(f"label noise rate must be in [0, 1), got {rate}")
    gen = torch.Generator().manual_seed(seed)
    flip = torch.rand(y.shape[0], generator=gen) < rate
    shift = torch.randint(1, num_classes, (y.shape[0],), generator=gen)
    return torch.where(flip, (y + shift) % num_classes, y)


def _stack(ds: Dataset) -> tuple[Tensor, Tensor]:
    if isinstance(ds, TensorDataset):
        return ds.tensors[0], ds.tensors[1]
    xs, ys = zip(*(ds[i] for i in range(len(ds))))  # type: ignore[arg-type]
    return torch.stack([torch.as_tensor(x) for x in xs]), torch.as_tensor(ys)


class SubsetDataModule(LightningDataModule):
    """The wrapped DataModule with its training pool cut to a BIDS (or baseline) selection.

    Args:
        data: any DataModule with ``train_set``/``val_set``/``test_set`` of ``(x, y)`` after ``setup``
            (default: digits with 20 validation images per class, as in the CPU check).
        selector: one of ``bids | bids_noiter | less | rawsum | random``.
        aggregate: BIDS per-task aggregation, ``mean`` (default) or ``max`` (unstable in the CPU check).
        budget_frac: selected share of the pool (the paper: 5, 10, 15 %).
        label_noise: symmetric noise put on the pool's labels before selection (the CPU check uses 0.5).
        warmup_frac / checkpoints / steps_per_checkpoint / warmup_lr / proj_dim: LESS feature settings.
        batch_size: training batch size on the subset.
        seed: seeds noise, warm-up subset, projection and random selection.
    """

    def __init__(
        self,
        data: LightningDataModule | None = None,
        selector: str = "bids",
        aggregate: str = "mean",
        budget_frac: float = 0.15,
        label_noise: float = 0.0,
        warmup_frac: float = 0.05,
        checkpoints: int = 4,
        steps_per_checkpoint: int = 25,
        warmup_lr: float = 0.05,
        proj_dim: int = 8192,
        batch_size: int = 32,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if selector not in SELECTORS:
            raise ValueError(f"unknown selector {selector!r}; choose one of {SELECTORS}")
        if not 0 <= label_noise < 1:
            raise ValueError(f"label_noise must be in [0, 1), got {label_noise}")
        self.data = data if data is not None else DigitsDataModule(seed=seed, val_fraction=0.1113, test_fraction=0.221)
        self.selection = BIDSSelector(budget_frac, selector, aggregate, seed)
        self.label_noise, self.batch_size, self.seed = label_noise, batch_size, seed
        self.feature_args = dict(
            warmup_frac=warmup_frac, checkpoints=checkpoints, steps_per_checkpoint=steps_per_checkpoint, lr=warmup_lr, proj_dim=proj_dim, seed=seed
        )
        self.train_set: Dataset | None = None
        self.selected: Tensor | None = None
        self.selected_class_counts: list[int] | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.data.setup("fit")
        x_tr, y_tr = _stack(self.data.train_set)
        x_va, y_va = _stack(self.data.val_set)
        num_classes = int(max(y_tr.max(), y_va.max())) + 1
        if self.label_noise > 0:
            y_tr = symmetric_label_noise(y_tr, self.label_noise, num_classes, self.seed)
        torch.manual_seed(self.seed)
        warm_model = build_backbone("mlp", num_classes, input_dim=x_tr[0].numel(), flatten=True)
        influence = LESSGradientFeatures(warm_model, **self.feature_args)(x_tr.float(), y_tr, x_va.float(), y_va)  # type: ignore[arg-type]
        self.selected = self.selection(influence, y_va, num_classes)
        self.train_set = TensorDataset(x_tr[self.selected], y_tr[self.selected])
        self.selected_class_counts = torch.bincount(y_tr[self.selected], minlength=num_classes).tolist()
        self.val_set, self.test_set = self.data.val_set, self.data.test_set

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.train_set, self.batch_size, shuffle=True, generator=generator)  # type: ignore[arg-type]

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, 512)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, 512)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()
