"""Digits with a "foundation" pre-training split and a long-tailed downstream split (foundation-lt).

Each digit class is split, seeded, into a balanced test set, a balanced validation set, a
pre-training pool and a downstream pool. ``stage="pretrain"`` trains on a long-tailed draw of the
pre-training pool whose class order (which digits are rare) is set by ``pretrain_order``: members
pre-trained with different orders inherit different class biases (the paper's "parameter
imbalance"), members with the same order but other ``pretrain_draw`` values share the bias but not
the data. ``stage="downstream"`` trains on a long-tailed draw of the downstream pool with its own
order. Pixels are scaled to ``x / 16`` in every stage, so an encoder sees the same inputs in both.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

from zoo.datamodules.longtail import longtail_counts

__all__ = ["FoundationDigitsDataModule", "class_order"]

_DOWNSTREAM = 1_000_003  # the downstream order's stream, apart from every pre-training order


def class_order(seed: int, order: int, num_classes: int = 10) -> np.ndarray:
    """The seeded permutation of classes from most to least frequent (``order`` picks the stream)."""
    return np.random.default_rng([int(seed), int(order)]).permutation(num_classes)


class FoundationDigitsDataModule(LightningDataModule):
    """Digits split into test / validation / pre-training / downstream pools, long-tailed per stage.

    Args:
        stage: ``"pretrain"`` or ``"downstream"``: which pool the train loader draws from.
        seed: seeds the pool split, the class orders and the draws.
        pretrain_order: which seeded class order the pre-training long tail follows.
        pretrain_draw: which seeded draw of the pre-training pool (same order, other examples).
        pretrain_ratio / downstream_ratio: head-to-tail ratios of the two long tails.
        pretrain_max / downstream_max: examples of the head class in each stage.
        test_per_class / val_per_class / pretrain_per_class: balanced sizes per class.
        shuffle_seed: seeds the training shuffle (None: ``seed``); a seed ensemble varies it.
        batch_size: training batch size.
    """

    def __init__(
        self,
        stage: Literal["pretrain", "downstream"] = "downstream",
        seed: int = 0,
        pretrain_order: int = 0,
        pretrain_draw: int = 0,
        pretrain_ratio: float = 20.0,
        downstream_ratio: float = 10.0,
        pretrain_max: int = 70,
        downstream_max: int = 50,
        test_per_class: int = 40,
        val_per_class: int = 10,
        pretrain_per_class: int = 70,
        shuffle_seed: int | None = None,
        batch_size: int = 32,
    ) -> None:
        super().__init__()
        if stage not in ("pretrain", "downstream"):
            raise ValueError(f"stage must be 'pretrain' or 'downstream', got {stage!r}")
        if pretrain_ratio < 1 or downstream_ratio < 1:
            raise ValueError(f"imbalance ratios must be >= 1 (1 = balanced), got {pretrain_ratio}, {downstream_ratio}")
        if pretrain_max > pretrain_per_class:
            raise ValueError(f"pretrain_max ({pretrain_max}) cannot exceed pretrain_per_class ({pretrain_per_class})")
        if min(test_per_class, val_per_class, pretrain_per_class, downstream_max, batch_size) < 1:
            raise ValueError("per-class sizes, downstream_max and batch_size must be positive")
        self.save_hyperparameters()
        self.train_set: TensorDataset | None = None

    @property
    def num_classes(self) -> int:
        return 10

    def _pools(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Seeded per-class split of all 1,797 digits into test, val, pretrain and downstream pools."""
        hp = self.hparams
        x, y = load_digits(return_X_y=True)
        rng = np.random.default_rng([int(hp.seed), 7])
        sizes = (hp.test_per_class, hp.val_per_class, hp.pretrain_per_class)
        parts: dict[str, list[np.ndarray]] = {"test": [], "val": [], "pretrain": [], "downstream": []}
        for k in range(10):
            idx = rng.permutation(np.flatnonzero(y == k))
            if len(idx) < sum(sizes) + hp.downstream_max:
                raise ValueError(f"digit {k} has {len(idx)} images; the split asks {sum(sizes) + hp.downstream_max}: lower the sizes")
            cuts = np.cumsum(sizes)
            for name, part in zip(parts, np.split(idx, cuts)):
                parts[name].append(part)
        return {name: (x[np.concatenate(p)], y[np.concatenate(p)]) for name, p in parts.items()}

    def _longtail(self, y: np.ndarray, order: np.ndarray, n_max: int, ratio: float, draw: int) -> np.ndarray:
        """Indices keeping ``longtail_counts(n_max)[r]`` examples of the class ranked ``r`` in ``order``."""
        counts = longtail_counts(n_max, 10, ratio)
        rng = np.random.default_rng([int(self.hparams.seed), 11, int(draw)])
        keep = [rng.choice(np.flatnonzero(y == k), size=counts[rank], replace=False) for rank, k in enumerate(order)]
        return np.sort(np.concatenate(keep))

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        hp = self.hparams
        pools = self._pools()
        if hp.stage == "pretrain":
            x, y = pools["pretrain"]
            order = class_order(hp.seed, hp.pretrain_order)
            keep = self._longtail(y, order, hp.pretrain_max, hp.pretrain_ratio, draw=hp.pretrain_draw)
        else:
            x, y = pools["downstream"]
            order = class_order(hp.seed, _DOWNSTREAM)
            keep = self._longtail(y, order, hp.downstream_max, hp.downstream_ratio, draw=_DOWNSTREAM)
        self.train_set = self._dataset(x[keep], y[keep])
        self.val_set = self._dataset(*pools["val"])
        self.test_set = self._dataset(*pools["test"])

    @staticmethod
    def _dataset(x: np.ndarray, y: np.ndarray) -> TensorDataset:
        return TensorDataset(torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y, dtype=torch.long))

    def train_class_counts(self) -> list[int]:
        """Training examples per class in this stage (the prior of the logit-adjusted loss)."""
        self.setup()
        assert self.train_set is not None
        return torch.bincount(self.train_set.tensors[1], minlength=10).tolist()

    def train_dataloader(self) -> DataLoader:
        shuffle_seed = self.hparams.seed if self.hparams.shuffle_seed is None else self.hparams.shuffle_seed
        generator = torch.Generator().manual_seed(int(shuffle_seed))
        return DataLoader(self.train_set, self.hparams.batch_size, shuffle=True, generator=generator)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, 512)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, 512)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()
