"""Labels for the unconstrained feature model (UFM): the "inputs" are sample indices.

In the UFM every training sample ``i`` owns a free feature vector ``h_i`` (a parameter of the
model, see :class:`zoo.neural_collapse.DeepLinearUFM`), so the data is only which class each
index belongs to. Class ``k`` has ``class_counts[k]`` samples; the labels are shuffled with
``seed`` (as the official synthetic experiment does) and served as full batches of
``(index, label)`` for training and test alike (the UFM has no held-out data: the theory is
about the training set, so there is no validation loader).
"""

from __future__ import annotations

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

__all__ = ["UFMDataModule", "ufm_labels"]


def ufm_labels(class_counts: list[int], seed: int) -> Tensor:
    """``class_counts[k]`` copies of label ``k``, shuffled with ``seed`` (label of sample index ``i``)."""
    labels = torch.repeat_interleave(torch.arange(len(class_counts)), torch.tensor(class_counts))
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))]


class _Batches(Dataset):
    """Consecutive slices ``(index, label)`` of the samples; one item is a whole batch."""

    def __init__(self, labels: Tensor, batch_size: int) -> None:
        self.labels, self.batch_size = labels, batch_size
        self.index = torch.arange(len(labels))

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        sl = slice(i * self.batch_size, (i + 1) * self.batch_size)
        return self.index[sl], self.labels[sl]


class UFMDataModule(LightningDataModule):
    """Full batches of ``(sample index, label)`` for the unconstrained feature model.

    Args:
        class_counts: samples per class; the paper's imbalanced setting is ``[200, 100, 50, 50]``.
        seed: seeds the order of the labels.
        batch_size: samples per batch; None (the default) is one full batch, as in the paper.

    >>> dm = UFMDataModule(class_counts=[2, 1], seed=0)
    >>> dm.setup()
    >>> idx, y = next(iter(dm.train_dataloader()))
    >>> idx.tolist(), sorted(y.tolist()), dm.num_samples, dm.num_classes
    ([0, 1, 2], [0, 0, 1], 3, 2)
    """

    def __init__(self, class_counts: list[int] = [200, 100, 50, 50], seed: int = 0, batch_size: int | None = None) -> None:  # noqa: B006 - JSON-able default, never mutated
        super().__init__()
        if len(class_counts) < 2 or any(int(n) != n or n < 1 for n in class_counts):
            raise ValueError(f"class_counts must be at least 2 positive integers, got {class_counts}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be positive or None (full batch), got {batch_size}")
        self.save_hyperparameters()
        self.class_counts = [int(n) for n in class_counts]
        self.seed = seed
        self.batch_size = batch_size
        self.labels: Tensor | None = None

    @property
    def num_samples(self) -> int:
        return sum(self.class_counts)

    @property
    def num_classes(self) -> int:
        return len(self.class_counts)

    def setup(self, stage: str | None = None) -> None:
        if self.labels is None:
            self.labels = ufm_labels(self.class_counts, self.seed)

    def _loader(self) -> DataLoader:
        self.setup()
        assert self.labels is not None
        return DataLoader(_Batches(self.labels, self.batch_size or self.num_samples), batch_size=None)

    def train_dataloader(self) -> DataLoader:
        return self._loader()

    def test_dataloader(self) -> DataLoader:
        return self._loader()

    def predict_dataloader(self) -> DataLoader:
        return self._loader()
