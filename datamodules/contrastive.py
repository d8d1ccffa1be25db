"""Two-view long-tailed DataModules for supervised contrastive training (SupCon, SBCL).

Training batches are ``(view1, view2, y, index)``: two independent augmentations of the same
images, their labels, and each image's position in ``eval_train_dataloader()`` (the training set,
in order, without augmentation), so a callback can attach per-sample state (subclass labels) and
the module can look it up. Validation and test batches are the usual ``(x, y)``; both stay
balanced. ``train_class_counts()`` gives the long-tailed training counts (Many / Medium / Few).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchvision.transforms import v2

from zoo.datamodules.cifar import CIFAR_STATS, CIFARDataModule
from zoo.datamodules.digits import DigitsDataModule

__all__ = ["ContrastiveCIFARDataModule", "ContrastiveDigitsDataModule", "shift_and_noise"]


def shift_and_noise(x: Tensor, noise: float = 0.1, generator: torch.Generator | None = None) -> Tensor:
    """A random shift of at most one pixel (zero fill) per image, plus N(0, noise^2): ``(B, H, W)`` -> same shape."""
    b, h, w = x.shape
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    dy = torch.randint(0, 3, (b,), generator=generator)
    dx = torch.randint(0, 3, (b,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, :, None].expand(b, h, w)
    cols = (dx[:, None] + torch.arange(w))[:, None, :].expand(b, h, w)
    shifted = padded[torch.arange(b)[:, None, None], rows, cols]
    return shifted + noise * torch.randn(shifted.shape, generator=generator)


class ContrastiveDigitsDataModule(DigitsDataModule):
    """Long-tailed digits with two views per training image (1-pixel shift + Gaussian noise).

    Args: those of :class:`zoo.datamodules.DigitsDataModule` (``imbalance_ratio`` 20 by default:
    counts 120 ... 6 with the default split), plus ``noise``, the views' noise std in standardised
    pixel units. Views are drawn batch-wise from torch's global RNG (seeded by ``seed_everything``).
    """

    def __init__(
        self,
        batch_size: int = 256,
        seed: int = 0,
        val_fraction: float = 0.15,
        test_fraction: float = 0.25,
        imbalance_ratio: float = 20.0,
        noise: float = 0.1,
        flatten: bool = True,
        num_workers: int = 0,
    ) -> None:
        if noise < 0:
            raise ValueError(f"noise must be >= 0, got {noise}")
        super().__init__(batch_size, seed, val_fraction, test_fraction, imbalance_ratio, None, True, flatten, num_workers)
        self.save_hyperparameters()
        self.noise = noise

    def train_class_counts(self) -> list[int]:
        """Training images per class (after the long-tail profile)."""
        return self.class_counts

    def _two_views(self, batch: list[tuple[Tensor, Tensor, Tensor]]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        x = torch.stack([b[0] for b in batch])
        y, index = torch.stack([b[1] for b in batch]), torch.stack([b[2] for b in batch])
        images = x.view(-1, 8, 8)
        shape = x.shape
        return shift_and_noise(images, self.noise).view(shape), shift_and_noise(images, self.noise).view(shape), y, index

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None, "call setup() first"
        x, y = self.train_set.tensors
        indexed = TensorDataset(x, y, torch.arange(len(y)))
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(indexed, self.batch_size, shuffle=True, generator=generator, collate_fn=self._two_views, num_workers=self.num_workers)

    def eval_train_dataloader(self) -> DataLoader:
        """The training set in order, without augmentation: position i is the sample whose batches carry index i."""
        return DataLoader(self.train_set, 512, shuffle=False, num_workers=self.num_workers)


class _TwoViews(Dataset):
    """``(t(img), t(img), label, i)`` for image ``i`` of a CIFAR subset."""

    def __init__(self, base: Any, indices: np.ndarray, transform: v2.Compose) -> None:
        self.base, self.indices, self.transform = base, indices, transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, int, int]:
        image, label = self.base[int(self.indices[i])]
        return self.transform(image), self.transform(image), int(label), i

    @property
    def targets(self) -> np.ndarray:
        return np.asarray(self.base.targets)[self.indices]


class ContrastiveCIFARDataModule(CIFARDataModule):
    """CIFAR-100-LT (or CIFAR-10-LT) with two SimCLR-style views per training image.

    The views are the official SupCon/SBCL CIFAR augmentation: random resized crop 32 (scale 0.2-1),
    horizontal flip, colour jitter (0.4, 0.4, 0.4, 0.1) with p 0.8, grayscale with p 0.2, normalised.
    Other arguments as :class:`zoo.datamodules.CIFARDataModule`; ratio 100 on CIFAR-100 by default.
    """

    def __init__(
        self,
        root: str = "data",
        dataset: Literal["cifar10", "cifar100"] = "cifar100",
        imbalance_ratio: float = 100.0,
        val_fraction: float = 0.0,
        batch_size: int = 512,
        normalize: bool = True,
        seed: int = 0,
        num_workers: int = 0,
        download: bool = False,
    ) -> None:
        super().__init__(root, dataset, imbalance_ratio, val_fraction, batch_size, True, normalize, seed, num_workers, download)

    def view_transform(self) -> v2.Compose:
        """One random view of a PIL image (the official two-crop transform applies it twice)."""
        steps: list[Any] = [
            v2.ToImage(),
            v2.RandomResizedCrop(32, scale=(0.2, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            v2.RandomGrayscale(p=0.2),
            v2.ToDtype(torch.float32, scale=True),
        ]
        if self.normalize:
            steps.append(v2.Normalize(*CIFAR_STATS[self.dataset]))
        return v2.Compose(steps)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        super().setup(stage)
        assert self.train_set is not None
        self.train_set = _TwoViews(self.train_set.dataset, self.train_set.indices, self.view_transform())  # type: ignore[assignment]

    def train_class_counts(self) -> list[int]:
        """Training images per class (after the long-tail profile)."""
        self.setup()
        return np.bincount(self.eval_train_set.targets, minlength=self.num_classes).tolist()
