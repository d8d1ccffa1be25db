"""Low-rank matrix completion problems generated from a seed: ``M = A B^T`` observed entry-wise with probability ``p``.

>>> from zoo.datamodules import CompletionDataModule
>>> dm = CompletionDataModule(m=40, n=30, rank=2, p_obs=0.5, seed=0)
>>> x, y = next(iter(dm.train_dataloader()))
>>> x.shape[1], x.dtype, y.dtype
(2, torch.int64, torch.float64)
"""

from __future__ import annotations

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler, TensorDataset

__all__ = ["CompletionDataModule", "make_completion_problem"]


def make_completion_problem(m: int, n: int, rank: int, p_obs: float, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Gaussian factors ``A (m, k)``, ``B (n, k)`` and the observed mask ``(m, n)`` (each entry kept w.p. ``p_obs``), float64."""
    if min(m, n, rank) < 1 or not 0.0 < p_obs <= 1.0:
        raise ValueError(f"need m, n, rank >= 1 and 0 < p_obs <= 1, got m={m}, n={n}, rank={rank}, p_obs={p_obs}")
    gen = torch.Generator().manual_seed(int(seed))
    a = torch.randn(m, rank, generator=gen, dtype=torch.float64)
    b = torch.randn(n, rank, generator=gen, dtype=torch.float64)
    mask = torch.rand(m, n, generator=gen, dtype=torch.float64) < p_obs
    return a, b, mask


class CompletionDataModule(LightningDataModule):
    """Observed entries of a seeded rank-``rank`` matrix as ``(x, y)`` batches: ``x = (row, col)`` int64, ``y = M[row, col]``.

    Train holds the observed entries (row-major order); test holds up to ``n_test`` unobserved
    entries (held out). The true factors stay on the datamodule (:attr:`factors`) so a solver can
    report the relative error on the whole matrix; nothing else sees them.
    """

    def __init__(
        self,
        m: int = 500,
        n: int = 500,
        rank: int = 10,
        p_obs: float = 0.1,
        n_test: int = 10000,
        batch_size: int = 65536,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.factors: tuple[Tensor, Tensor] | None = None
        self.train: TensorDataset | None = None
        self.test: TensorDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train is not None:
            return
        hp = self.hparams
        a, b, mask = make_completion_problem(hp.m, hp.n, hp.rank, hp.p_obs, hp.seed)
        self.factors = (a, b)
        obs = mask.nonzero()
        held = (~mask).nonzero()
        gen = torch.Generator().manual_seed(int(hp.seed) + 1)
        held = held[torch.randperm(len(held), generator=gen)[: hp.n_test]]

        def _values(idx: Tensor) -> Tensor:
            return (a[idx[:, 0]] * b[idx[:, 1]]).sum(1)

        self.train = TensorDataset(obs, _values(obs))
        self.test = TensorDataset(held, _values(held))

    def _loader(self, data: TensorDataset | None) -> DataLoader:
        if data is None:
            self.setup()
            data = self.train
        # whole batches by slicing (TensorDataset takes a list of indices), not entry by entry through collate
        batches = BatchSampler(SequentialSampler(data), self.hparams.batch_size, drop_last=False)
        return DataLoader(data, batch_size=None, sampler=batches)

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.train)

    def test_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.test)

    def predict_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.test)
