"""Two interleaving half-moons (scikit-learn's ``make_moons``), generated with a seed.

The convex-ReLU entry's embedded problem: 2 features, binary labels {0, 1}, small enough for the
exact convex program (every hyperplane arrangement enumerated). Train, validation and test points
are drawn independently (different seeds derived from ``seed``) and served as full batches by default,
since the convex solvers work on the whole training set.
"""

from __future__ import annotations

import torch
from lightning.pytorch import LightningDataModule
from sklearn.datasets import make_moons
from torch.utils.data import DataLoader, TensorDataset

__all__ = ["MoonsDataModule"]


class MoonsDataModule(LightningDataModule):
    """Seeded ``make_moons`` splits of ``(x (float32, 2), y (long, 0/1))``.

    Args:
        n_train / n_val / n_test: points per split (each split a separate ``make_moons`` draw).
        noise: standard deviation of the Gaussian noise added to the points.
        seed: the train split uses ``seed``, validation ``seed + 10_000``, test ``seed + 20_000``.
        batch_size: training batch; None (the default) is one full batch.
        standardize: scale features to zero mean, unit variance with the training split's statistics.

    >>> dm = MoonsDataModule(n_train=10, n_val=4, n_test=6)
    >>> dm.setup()
    >>> x, y = next(iter(dm.train_dataloader()))
    >>> tuple(x.shape), y.dtype, len(dm.test_set)
    ((10, 2), torch.int64, 6)
    """

    def __init__(
        self,
        n_train: int = 40,
        n_val: int = 200,
        n_test: int = 1000,
        noise: float = 0.2,
        seed: int = 0,
        batch_size: int | None = None,
        standardize: bool = False,
    ) -> None:
        super().__init__()
        if min(n_train, n_val, n_test) < 2:
            raise ValueError(f"every split needs at least 2 points, got {n_train}, {n_val}, {n_test}")
        if noise < 0:
            raise ValueError(f"noise must be >= 0, got {noise}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be positive or None (full batch), got {batch_size}")
        self.save_hyperparameters()
        self.train_set: TensorDataset | None = None

    @property
    def num_classes(self) -> int:
        return 2

    @property
    def input_dim(self) -> int:
        return 2

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        hp = self.hparams
        splits = []
        for offset, n in ((0, hp.n_train), (10_000, hp.n_val), (20_000, hp.n_test)):
            x, y = make_moons(n_samples=n, noise=hp.noise, random_state=hp.seed + offset)
            splits.append((torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.long)))
        if hp.standardize:
            mean, std = splits[0][0].mean(0), splits[0][0].std(0) + 1e-8
            splits = [((x - mean) / std, y) for x, y in splits]
        self.train_set, self.val_set, self.test_set = (TensorDataset(x, y) for x, y in splits)

    def train_dataloader(self) -> DataLoader:
        self.setup()
        assert self.train_set is not None
        size = self.hparams.batch_size or len(self.train_set)
        generator = torch.Generator().manual_seed(self.hparams.seed)
        return DataLoader(self.train_set, size, shuffle=size < len(self.train_set), generator=generator)

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return DataLoader(self.val_set, len(self.val_set))

    def test_dataloader(self) -> DataLoader:
        self.setup()
        return DataLoader(self.test_set, len(self.test_set))

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()
