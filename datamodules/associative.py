"""Heavy-tailed facts for the one-layer associative memory of ``zoo.muon_tail``.

The data of the paper's theory model (Wang et al. 2025, Section 5) is a set of ``K`` facts
``s_k -> o_k`` and a class distribution ``p``: the loss is the population cross-entropy
``-sum_k p_k log f_W(E_k)_k``. There is nothing to download: this module generates ``p`` in code
and serves the whole population as one weighted batch per step (``steps_per_epoch`` of them
per epoch).

Distributions:

- ``"two_level"`` (the paper's Assumption 5.2): ``L = round(head_frac * K)`` head classes share
  ``head_mass`` of the probability equally (``p_k = alpha / L``), the other ``K - L`` tail classes
  share the rest (``(1 - alpha) / (K - L)``).
- ``"zipf"``: ``p_k ~ rank^-zipf_exponent`` (a smoother heavy tail); the head is the
  ``round(head_frac * K)`` most frequent classes.

Which class indices are the head is a random permutation drawn with ``seed``. A batch is
``(x, y, weight, is_head)``: the fact index ``x``, its object ``y = x``, ``p_x`` and the head flag.
"""

from __future__ import annotations

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

__all__ = ["AssociativeMemoryDataModule", "class_frequencies"]

DISTRIBUTIONS = ("two_level", "zipf")


def class_frequencies(
    num_classes: int,
    head_frac: float = 0.1,
    head_mass: float = 0.9,
    distribution: str = "two_level",
    zipf_exponent: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """``(p, is_head)`` in rank order (class 0 is the most frequent); ``p`` sums to 1.

    >>> p, head = class_frequencies(10, head_frac=0.2, head_mass=0.8)
    >>> [round(v, 3) for v in p.tolist()], head.tolist()[:3]
    ([0.4, 0.4, 0.025, 0.025, 0.025, 0.025, 0.025, 0.025, 0.025, 0.025], [True, True, False])
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
    n_head = round(head_frac * num_classes)
    if not 1 <= n_head < num_classes:
        raise ValueError(f"head_frac={head_frac} gives {n_head} head classes of {num_classes}; need at least 1 head and 1 tail class")
    is_head = torch.arange(num_classes) < n_head
    if distribution == "two_level":
        if not 0.0 < head_mass < 1.0:
            raise ValueError(f"head_mass must be in (0, 1), got {head_mass}")
        p = torch.where(is_head, head_mass / n_head, (1.0 - head_mass) / (num_classes - n_head)).double()
    else:
        p = torch.arange(1, num_classes + 1, dtype=torch.float64) ** -float(zipf_exponent)
        p = p / p.sum()
    return p.float(), is_head


class _FullBatch(Dataset):
    def __init__(self, weight: Tensor, is_head: Tensor, length: int) -> None:
        self.weight, self.is_head, self.length = weight, is_head, length
        self.index = torch.arange(len(weight))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.index, self.index, self.weight, self.is_head


class AssociativeMemoryDataModule(LightningDataModule):
    """The population of ``K`` facts with heavy-tailed frequencies, as one full batch per step.

    Args:
        num_classes: ``K``, the number of facts (must match the model's ``num_classes``).
        head_frac: ``beta``, the fraction of head classes.
        head_mass: ``alpha``, the probability mass of the head (``two_level`` only).
        distribution: ``"two_level"`` (the paper's) or ``"zipf"``.
        zipf_exponent: exponent of the ``zipf`` distribution.
        seed: seeds which class indices are the head.
        steps_per_epoch: how many times an epoch repeats the full batch (train loader only).

    >>> dm = AssociativeMemoryDataModule(num_classes=4, head_frac=0.25, head_mass=0.7, seed=0)
    >>> x, y, w, head = next(iter(dm.train_dataloader()))
    >>> x.tolist() == y.tolist() == [0, 1, 2, 3], round(float(w.sum()), 6), int(head.sum())
    (True, 1.0, 1)
    """

    def __init__(
        self,
        num_classes: int = 64,
        head_frac: float = 0.1,
        head_mass: float = 0.9,
        distribution: str = "two_level",
        zipf_exponent: float = 1.0,
        seed: int = 0,
        steps_per_epoch: int = 1,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        p, is_head = class_frequencies(num_classes, head_frac, head_mass, distribution, zipf_exponent)
        perm = torch.randperm(num_classes, generator=torch.Generator().manual_seed(seed))
        self.weight = torch.empty_like(p)
        self.is_head = torch.empty_like(is_head)
        self.weight[perm], self.is_head[perm] = p, is_head  # class perm[r] has rank r
        self.num_classes = num_classes
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}")
        self.steps_per_epoch = steps_per_epoch

    def _loader(self, length: int = 1) -> DataLoader:
        return DataLoader(_FullBatch(self.weight, self.is_head, length), batch_size=None)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.steps_per_epoch)

    def test_dataloader(self) -> DataLoader:
        return self._loader()

    def predict_dataloader(self) -> DataLoader:
        return self._loader()
