"""Rounds of ``k`` individuals with one-sided labels for ``zoo.fair_one_sided``, drawn from a seed.

The synthetic protocol of the fair one-sided feedback entry (Bechavod and Roth, arXiv 2206.04475, have
no experiments; this is the CPU-scale check of the entry's card): ``x ~ N(0, I_2)`` and
``y = 1[x_1 + 0.5 x_2 + noise * N(0, 1) > 0]``, ``k`` individuals per round. The simulator holds every
label (for the regret); the learner only reads the labels of individuals it predicts 1.
"""

from __future__ import annotations

import numpy as np
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from zoo.fair_one_sided import FairRound

__all__ = ["FairRoundsDataModule", "fair_rounds"]


def fair_rounds(count: int, k: int, noise: float, rng: np.random.Generator) -> list[FairRound]:
    """``count`` rounds of ``k`` points ``x ~ N(0, I_2)`` with ``y = 1[x_1 + 0.5 x_2 + noise * N(0, 1) > 0]``."""
    x = rng.standard_normal((count, k, 2))
    y = (x[..., 0] + 0.5 * x[..., 1] + noise * rng.standard_normal((count, k)) > 0).astype(np.float64)
    return [FairRound(x[t], y[t]) for t in range(count)]


class FairRoundsDataModule(LightningDataModule):
    """A train stream of ``rounds`` rounds and a test stream of ``test_rounds``, served in chunks of ``chunk`` (lists)."""

    def __init__(self, rounds: int = 5000, test_rounds: int = 500, k: int = 5, noise: float = 0.3, chunk: int = 500, seed: int = 0) -> None:
        super().__init__()
        if rounds < 1 or test_rounds < 1 or k < 2 or chunk < 1:
            raise ValueError("rounds, test_rounds and chunk must be >= 1 and k >= 2")
        self.rounds, self.test_rounds, self.k, self.noise, self.chunk, self.seed = rounds, test_rounds, k, noise, chunk, seed
        self._cache: dict[str, list[FairRound]] = {}

    def sequence(self, split: str) -> list[FairRound]:
        """The seeded rounds of one split (``"train"`` or ``"test"``), built once."""
        if split not in self._cache:
            count, stream = (self.rounds, 0) if split == "train" else (self.test_rounds, 1)
            self._cache[split] = fair_rounds(count, self.k, self.noise, np.random.default_rng([self.seed, stream]))
        return self._cache[split]

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.sequence("train"), batch_size=self.chunk, collate_fn=list)  # type: ignore[arg-type]

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.sequence("test"), batch_size=self.chunk, collate_fn=list)  # type: ignore[arg-type]
