"""Imbalanced binary tabular data generated with a seed (scikit-learn's ``make_classification``).

The AnyLoss paper benchmarks on imbalanced binary tables; this is its embedded stand-in.
"""

from __future__ import annotations

import torch
from lightning.pytorch import LightningDataModule
from sklearn.datasets import make_classification
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, TensorDataset

__all__ = ["SyntheticBinaryDataModule"]


class SyntheticBinaryDataModule(LightningDataModule):
    """A seeded imbalanced binary problem, stratified 70/15/15 and standardized on train.

    Args:
        n_samples / n_features / n_informative: as in ``make_classification``.
        positive_fraction: share of the positive class (0.05 = 5 % positives).
        class_sep: larger is easier.
        batch_fraction: training batch as a share of the train split (the AnyLoss paper uses
            5 %, so that every batch holds positives); ``batch_size`` overrides it.
        seed: seeds the data and the split.
    """

    def __init__(
        self,
        n_samples: int = 5000,
        n_features: int = 20,
        n_informative: int = 10,
        positive_fraction: float = 0.05,
        class_sep: float = 0.8,
        batch_fraction: float = 0.05,
        batch_size: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not 0 < positive_fraction < 1:
            raise ValueError(f"positive_fraction must be in (0, 1), got {positive_fraction}")
        if not 0 < batch_fraction <= 1:
            raise ValueError(f"batch_fraction must be in (0, 1], got {batch_fraction}")
        self.save_hyperparameters()
        self.train_set: TensorDataset | None = None

    @property
    def num_classes(self) -> int:
        return 2

    @property
    def input_dim(self) -> int:
        return int(self.hparams["n_features"])

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        hp = self.hparams
        x, y = make_classification(
            n_samples=hp.n_samples,
            n_features=hp.n_features,
            n_informative=hp.n_informative,
            n_redundant=min(2, hp.n_features - hp.n_informative),
            weights=[1 - hp.positive_fraction],
            class_sep=hp.class_sep,
            random_state=hp.seed,
        )
        x_tr, x_rest, y_tr, y_rest = train_test_split(x, y, test_size=0.3, stratify=y, random_state=hp.seed)
        x_va, x_te, y_va, y_te = train_test_split(x_rest, y_rest, test_size=0.5, stratify=y_rest, random_state=hp.seed)
        mean, std = x_tr.mean(0), x_tr.std(0) + 1e-8
        self.train_set, self.val_set, self.test_set = (
            TensorDataset(torch.tensor((a - mean) / std, dtype=torch.float32), torch.tensor(b, dtype=torch.long))
            for a, b in ((x_tr, y_tr), (x_va, y_va), (x_te, y_te))
        )

    @property
    def train_batch_size(self) -> int:
        self.setup()
        assert self.train_set is not None
        if self.hparams["batch_size"] is not None:
            return int(self.hparams["batch_size"])
        return max(1, int(round(self.hparams["batch_fraction"] * len(self.train_set))))

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.hparams["seed"])
        return DataLoader(self.train_set, self.train_batch_size, shuffle=True, generator=generator)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, 1024)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, 1024)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()
