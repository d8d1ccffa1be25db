"""scikit-learn's digits (1,797 real 8x8 images, 10 classes): the zoo's embedded benchmark.

It needs no download anywhere, so demos, tests and claim checks run on it. The split is
seeded and stratified; the long-tail profile (``imbalance_ratio``) and the one-vs-rest view
(``binary_positive``) apply to the training split only, so validation and test stay balanced.
"""

from __future__ import annotations

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, TensorDataset

from zoo.datamodules.longtail import longtail_indices

__all__ = ["DigitsDataModule", "split_digits"]


def split_digits(
    seed: int, val_fraction: float, test_fraction: float
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Seeded stratified train/val/test split of the raw digits (pixels 0..16, labels 0..9)."""
    x, y = load_digits(return_X_y=True)
    x_rest, x_test, y_rest, y_test = train_test_split(x, y, test_size=test_fraction, stratify=y, random_state=seed)
    val_of_rest = val_fraction / (1 - test_fraction)
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=val_of_rest, stratify=y_rest, random_state=seed
    )
    return (x_train, y_train), (x_val, y_val), (x_test, y_test)


class SeededSplitLoaders:
    """Loaders over in-memory ``train_set`` / ``val_set`` / ``test_set``: seeded shuffle for training, batches of 512 otherwise."""

    seed: int
    batch_size: int
    num_workers: int

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.train_set, self.batch_size, shuffle=True, generator=generator, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, 512, num_workers=self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, 512, num_workers=self.num_workers)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()


class DigitsDataModule(SeededSplitLoaders, LightningDataModule):
    """Digits as flat 64-vectors (or ``1x8x8`` images), optionally long-tailed or binary.

    Args:
        batch_size: examples per training batch.
        seed: seeds the split and the long-tail subsample.
        val_fraction / test_fraction: fractions of all 1,797 images.
        imbalance_ratio: exponential long-tail profile over digits 0..9 on the train split
            (digit 0 keeps the most, digit 9 ``1/imbalance_ratio`` of that); 1 = as is.
        binary_positive: if set, label 1 for that digit and 0 for the rest (after the profile).
        normalize: standardize pixels with the train split's mean and std.
        flatten: ``(64,)`` vectors if True, ``(1, 8, 8)`` images if False.
    """

    def __init__(
        self,
        batch_size: int = 64,
        seed: int = 0,
        val_fraction: float = 0.15,
        test_fraction: float = 0.25,
        imbalance_ratio: float = 1.0,
        binary_positive: int | None = None,
        normalize: bool = True,
        flatten: bool = True,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if not 0 < val_fraction < 1 or not 0 < test_fraction < 1 or val_fraction + test_fraction >= 1:
            raise ValueError(f"val_fraction and test_fraction must be in (0, 1) and sum below 1, got {val_fraction}, {test_fraction}")
        if binary_positive is not None and binary_positive not in range(10):
            raise ValueError(f"binary_positive must be a digit 0..9 or None, got {binary_positive}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not imbalance_ratio >= 1:
            raise ValueError(f"imbalance_ratio must be >= 1 (1 = balanced), got {imbalance_ratio}")
        self.save_hyperparameters()
        self.batch_size = batch_size
        self.seed = seed
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.imbalance_ratio = imbalance_ratio
        self.binary_positive = binary_positive
        self.normalize, self.flatten = normalize, flatten
        self.num_workers = num_workers
        self.train_set: TensorDataset | None = None

    @property
    def num_classes(self) -> int:
        return 2 if self.binary_positive is not None else 10

    @property
    def input_dim(self) -> int:
        return 64

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = split_digits(self.seed, self.val_fraction, self.test_fraction)
        keep = longtail_indices(y_tr, self.imbalance_ratio, self.seed, num_classes=10)
        x_tr, y_tr = x_tr[keep], y_tr[keep]
        mean, std = (x_tr.mean(), x_tr.std()) if self.normalize else (0.0, 16.0)
        self.train_set = self._dataset(x_tr, y_tr, mean, std)
        self.val_set = self._dataset(x_va, y_va, mean, std)
        self.test_set = self._dataset(x_te, y_te, mean, std)

    def _dataset(self, x: np.ndarray, y: np.ndarray, mean: float, std: float) -> TensorDataset:
        xt = torch.tensor((x - mean) / std, dtype=torch.float32)
        if not self.flatten:
            xt = xt.view(-1, 1, 8, 8)
        if self.binary_positive is not None:
            y = (y == self.binary_positive).astype(np.int64)
        return TensorDataset(xt, torch.tensor(y, dtype=torch.long))

    @property
    def class_counts(self) -> list[int]:
        """Training examples per class (after the long-tail profile)."""
        self.setup()
        assert self.train_set is not None
        return torch.bincount(self.train_set.tensors[1], minlength=self.num_classes).tolist()

