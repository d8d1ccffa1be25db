"""A seeded synthetic stream with a protected attribute, for online group-fairness entries (``aranyani``).

Each sample is ``(x, y, a)``: ``a ~ Bernoulli(p_group)``; ``x = N(0, I_dim) + shift * a`` on the first
``shifted`` coordinates; ``y = 1[sum_{j < informative} x_j + noise * N(0, 1) > 0]``. The label loads on the
shifted coordinates, so the label itself differs across groups (label DP about 0.41 at ``shift = 1``) and an
accurate unconstrained classifier is unfair.

>>> from zoo.datamodules import FairStreamDataModule
>>> dm = FairStreamDataModule(num_samples=8, test_samples=4, chunk=4)
>>> [tuple(t.shape) for t in next(iter(dm.train_dataloader()))]
[(4, 10), (4,), (4,)]
"""

from __future__ import annotations

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

__all__ = ["FairStreamDataModule", "fair_stream"]


def fair_stream(
    num_samples: int,
    dim: int = 10,
    shift: float = 1.0,
    shifted: int = 3,
    informative: int = 5,
    noise: float = 0.5,
    p_group: float = 0.5,
    seed: int = 0,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(x (n, dim) float64, y (n,) int64, a (n,) int64)`` drawn from one ``torch.Generator`` seeded with ``seed``."""
    if not 0 < shifted <= dim or not 0 < informative <= dim:
        raise ValueError(f"shifted ({shifted}) and informative ({informative}) must be in 1..dim ({dim})")
    g = torch.Generator().manual_seed(seed)
    a = (torch.rand(num_samples, generator=g, dtype=torch.float64) < p_group).long()
    x = torch.randn(num_samples, dim, generator=g, dtype=torch.float64)
    x[:, :shifted] += shift * a[:, None].double()
    score = x[:, :informative].sum(1) + noise * torch.randn(num_samples, generator=g, dtype=torch.float64)
    return x, (score > 0).long(), a


class FairStreamDataModule(LightningDataModule):
    """Train: a stream of ``num_samples`` samples served in order; test: ``test_samples`` fresh ones (seed + 1).

    Loader batches are chunks ``(x (chunk, dim), y (chunk,), a (chunk,))``; an online module serves the
    samples of a chunk one at a time. Nothing is shuffled: the stream order is the seed's.
    """

    def __init__(
        self,
        num_samples: int = 5000,
        test_samples: int = 2000,
        dim: int = 10,
        shift: float = 1.0,
        shifted: int = 3,
        informative: int = 5,
        noise: float = 0.5,
        p_group: float = 0.5,
        chunk: int = 50,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if min(num_samples, test_samples, chunk) < 1:
            raise ValueError("num_samples, test_samples and chunk must be positive")
        self.save_hyperparameters()
        self.train: TensorDataset | None = None
        self.test: TensorDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        kw = dict(dim=hp.dim, shift=hp.shift, shifted=hp.shifted, informative=hp.informative, noise=hp.noise, p_group=hp.p_group)
        self.train = TensorDataset(*fair_stream(hp.num_samples, seed=hp.seed, **kw))
        self.test = TensorDataset(*fair_stream(hp.test_samples, seed=hp.seed + 1, **kw))

    def train_dataloader(self) -> DataLoader:
        if self.train is None:
            self.setup()
        return DataLoader(self.train, batch_size=self.hparams.chunk, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        if self.test is None:
            self.setup()
        return DataLoader(self.test, batch_size=self.hparams.chunk, shuffle=False)
