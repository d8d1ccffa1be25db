"""Synthetic least-squares, logistic and lasso problems for the block coordinate descent entry.

>>> from zoo.datamodules import BCDDataModule
>>> dm = BCDDataModule(n_samples=30, n_features=8, batch_size=16)
>>> [tuple(t.shape) for t in next(iter(dm.train_dataloader()))]
[(16, 8), (16,)]
"""

from __future__ import annotations

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, TensorDataset

from zoo.bcd.problems import PROBLEMS, make_problem_data

__all__ = ["BCDDataModule"]


class BCDDataModule(LightningDataModule):
    """The BCD entry's synthetic problem data generated with a seed (see :func:`zoo.bcd.make_problem_data`).

    Train, test and predict are the same table (no validation split: the solver has nothing to tune);
    batches are ``(x, y)`` float64 with ``batch_size`` rows (the module gathers them all at the start
    of fit).
    """

    def __init__(
        self, problem: str = "least_squares", n_samples: int = 300, n_features: int = 50, scale_sigma: float = 0.5,
        nonzeros: int = 10, noise: float = 0.1, batch_size: int = 1024, seed: int = 0,
    ) -> None:
        super().__init__()
        if problem not in PROBLEMS:
            raise ValueError(f"problem must be one of {PROBLEMS}, got {problem!r}")
        self.save_hyperparameters()
        self.data: TensorDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        a, b = make_problem_data(hp.problem, hp.n_samples, hp.n_features, hp.scale_sigma, hp.nonzeros, hp.noise, hp.seed)
        self.data = TensorDataset(torch.from_numpy(a), torch.from_numpy(b))

    def _loader(self) -> DataLoader:
        if self.data is None:
            self.setup()
        return DataLoader(self.data, batch_size=self.hparams.batch_size, shuffle=False)

    def train_dataloader(self) -> DataLoader:
        return self._loader()

    def test_dataloader(self) -> DataLoader:
        return self._loader()

    def predict_dataloader(self) -> DataLoader:
        return self._loader()
