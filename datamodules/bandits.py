"""Best-arm identification instances for ``zoo.lal``: Bernoulli means drawn inside complexity classes.

The learned policy trains against its own adversary; these seeded random instances (uniform class,
random best arm, random complexity shares) only drive the steps and feed ``forward`` and prediction.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, TensorDataset

from zoo.lal import in_class_instances

__all__ = ["BestArmDataModule"]


class BestArmDataModule(LightningDataModule):
    """Batches ``(theta (B, n), best (B,))`` of instances with ``C(theta) = r``, ``r`` drawn from ``classes``."""

    def __init__(
        self, num_arms: int = 8, classes: Sequence[float] = (10.0, 20.0, 40.0), batch_size: int = 32, steps_per_epoch: int = 1000, seed: int = 0
    ) -> None:
        super().__init__()
        if num_arms < 2 or batch_size < 1 or steps_per_epoch < 1:
            raise ValueError("num_arms >= 2, batch_size >= 1 and steps_per_epoch >= 1 are required")
        self.num_arms, self.classes = num_arms, [float(r) for r in classes]
        self.batch_size, self.steps_per_epoch, self.seed = batch_size, steps_per_epoch, seed

    def _instances(self, count: int, seed: int) -> TensorDataset:
        g = torch.Generator().manual_seed(seed)
        r = torch.tensor(self.classes)[torch.randint(len(self.classes), (count,), generator=g)]
        best = torch.randint(self.num_arms, (count,), generator=g)
        mu, w = torch.randn(count, generator=g), torch.randn(count, self.num_arms - 1, generator=g)
        theta = torch.cat([in_class_instances(mu[i : i + 1], w[i : i + 1], best[i : i + 1], float(r[i])) for i in range(count)])
        return TensorDataset(theta, best)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self._instances(self.batch_size * self.steps_per_epoch, self.seed), batch_size=self.batch_size)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self._instances(self.batch_size, self.seed + 1), batch_size=self.batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()
