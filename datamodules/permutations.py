"""Permutations of nonzero binary inputs: train on the k basis vectors, test on all ``2^k - 1`` inputs.

>>> from zoo.datamodules import PermutationDataModule
>>> dm = PermutationDataModule(k=4, seed=0)
>>> [tuple(t.shape) for t in next(iter(dm.train_dataloader()))], len(dm.test_dataloader().dataset)
([(4, 4), (4, 4)], 15)
"""

from __future__ import annotations

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, TensorDataset

from zoo.permutations import all_nonzero_inputs, permutation_matrix

__all__ = ["PermutationDataModule"]


class PermutationDataModule(LightningDataModule):
    """A seeded permutation ``pi`` of ``k`` positions; targets ``y = x P`` with ``P[i, pi(i)] = 1``.

    Train: the ``k`` standard basis vectors ``e_i`` with labels ``e_pi(i)`` (the rows of ``P``), one
    batch. Test and predict: every nonzero ``x in {0,1}^k`` with ``x P`` (float64). ``pi`` is
    ``torch.randperm(k)`` drawn from ``seed``; :attr:`pi` and :attr:`matrix` expose it.
    """

    def __init__(self, k: int = 8, batch_size: int = 4096, seed: int = 0) -> None:
        super().__init__()
        if k < 1 or k > 20 or batch_size < 1:
            raise ValueError(f"k must be in 1..20 (the test set has 2^k - 1 inputs) and batch_size positive, got k={k}")
        self.save_hyperparameters()
        self.pi = torch.randperm(k, generator=torch.Generator().manual_seed(seed))
        self.matrix = permutation_matrix(self.pi)

    def train_dataloader(self) -> DataLoader:
        eye = torch.eye(self.hparams.k, dtype=torch.float64)
        return DataLoader(TensorDataset(eye, eye @ self.matrix), batch_size=self.hparams.k, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        x = all_nonzero_inputs(self.hparams.k)
        return DataLoader(TensorDataset(x, x @ self.matrix), batch_size=self.hparams.batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()
