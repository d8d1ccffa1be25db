"""The state space of a multi-objective hypergrid: every state of a ``height^ndim`` grid, for MOGFN-PC.

A GFlowNet trainer samples its own trajectories; what it takes from data is the environment: here the
grid's states (the terminal states a GFlowNet can generate), enumerated in row-major order, from which
the trainer computes the objectives and the true Pareto set. Nothing is random, so there is no seed.

>>> from zoo.datamodules import ParetoGridDataModule
>>> x, y = next(iter(ParetoGridDataModule(ndim=2, height=3).train_dataloader()))
>>> x.shape, y[:4].tolist(), x[:4].tolist()
(torch.Size([9, 2]), [0, 1, 2, 3], [[0, 0], [0, 1], [0, 2], [1, 0]])
"""

from __future__ import annotations

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, TensorDataset

__all__ = ["ParetoGridDataModule"]


class ParetoGridDataModule(LightningDataModule):
    """All ``height^ndim`` grid states as one batch ``(x (n, ndim) int64 coordinates, y (n,) state index)``."""

    def __init__(self, ndim: int = 2, height: int = 8) -> None:
        super().__init__()
        if ndim < 1 or height < 2:
            raise ValueError(f"need ndim >= 1 and height >= 2, got ndim={ndim}, height={height}")
        self.save_hyperparameters()

    def train_dataloader(self) -> DataLoader:
        ndim, height = self.hparams.ndim, self.hparams.height
        states = torch.cartesian_prod(*[torch.arange(height)] * ndim).reshape(-1, ndim)
        data = TensorDataset(states, torch.arange(len(states)))
        return DataLoader(data, batch_size=len(states), shuffle=False)
