"""Gaussian matrix-sensing problems generated from a seed (the setting of arXiv 2310.01769, Section 2).

``M*`` is a rank-``rank`` matrix normalised to spectral norm 1: ``U U^T`` (positive semidefinite,
so the symmetric parameterisation ``X X^T`` can fit it) when ``psd``, else ``U V^T``. The
measurements are ``y_i = <A_i, M*> + noise * N(0, 1)`` with ``A_i`` i.i.d. ``N(0, 1/m)`` entries
(a RIP operator with high probability when ``m`` is a few times ``(n1 + n2) r``).
"""

from __future__ import annotations

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

__all__ = ["SensingDataModule", "sensing_problem"]


def sensing_problem(n1: int, n2: int, rank: int, num_measurements: int, psd: bool = True, noise: float = 0.0, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """``(A (m, n1 * n2), y (m,), M* (n1, n2))`` in float64, all drawn from ``seed``."""
    if psd and n1 != n2:
        raise ValueError(f"a positive semidefinite M* needs n1 == n2, got {n1} and {n2}")
    if not 1 <= rank <= min(n1, n2) or num_measurements < 1:
        raise ValueError(f"need 1 <= rank <= min(n1, n2) and num_measurements >= 1, got rank={rank}, m={num_measurements}")
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(n1, rank, generator=gen, dtype=torch.float64)
    v = u if psd else torch.randn(n2, rank, generator=gen, dtype=torch.float64)
    truth = u @ v.T
    truth = truth / torch.linalg.matrix_norm(truth, ord=2)  # ||M*||_2 = 1
    a = torch.randn(num_measurements, n1 * n2, generator=gen, dtype=torch.float64) / num_measurements**0.5
    y = a @ truth.reshape(-1) + noise * torch.randn(num_measurements, generator=gen, dtype=torch.float64)
    return a, y, truth


class _FullBatch(Dataset):
    """The whole problem as one batch, served ``steps`` times per epoch (full-batch GD, fewer epoch boundaries)."""

    def __init__(self, a: Tensor, y: Tensor, steps: int) -> None:
        self.a, self.y, self.steps = a, y, steps

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.a, self.y


class SensingDataModule(LightningDataModule):
    """A seeded Gaussian sensing problem; each train batch is all ``m`` measurements ``(A, y)``.

    ``ground_truth`` (``M*``) is exposed so a model can log its recovery error.

    >>> dm = SensingDataModule(n1=6, n2=6, rank=2, num_measurements=50, steps_per_epoch=3)
    >>> x, y = next(iter(dm.train_dataloader()))
    >>> tuple(x.shape), tuple(y.shape), len(dm.train_dataloader())
    ((50, 36), (50,), 3)
    """

    def __init__(
        self,
        n1: int = 20,
        n2: int = 20,
        rank: int = 2,
        num_measurements: int = 600,
        psd: bool = True,
        noise: float = 0.0,
        seed: int = 0,
        steps_per_epoch: int = 100,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.a, self.y, self.ground_truth = sensing_problem(n1, n2, rank, num_measurements, psd, noise, seed)
        self.steps_per_epoch = steps_per_epoch

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_FullBatch(self.a, self.y, self.steps_per_epoch), batch_size=None, shuffle=False)
