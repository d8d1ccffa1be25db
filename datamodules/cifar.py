"""CIFAR-10/100 and their long-tailed versions CIFAR-10-LT / CIFAR-100-LT, via torchvision.

The long-tailed sets follow Cui et al. 2019 ("Class-Balanced Loss Based on Effective Number
of Samples", arXiv:1901.05555) and LDAM (Cao et al. 2019, arXiv:1906.07413): class ``k`` of
the training split keeps ``n_max * imbalance_ratio^(-k/(K-1))`` images, a seeded subsample
(:func:`zoo.datamodules.longtail.longtail_indices`); validation and test stay balanced. With the
defaults (no validation holdout) the train sets are the papers' ones in size: CIFAR-10-LT at
ratio 100 has 12,406 images, CIFAR-100-LT 10,847.

The files are read by ``torchvision.datasets.CIFAR10`` / ``CIFAR100`` from
``<root>/cifar-10-batches-py`` or ``<root>/cifar-100-python``; ``download=True`` fetches them
(in ``prepare_data``, so once per node). Training images get the standard augmentation (random
crop 32 with 4-pixel padding, horizontal flip); all images are normalized with the dataset's
per-channel mean and std.

Guesses and choices: ``val_fraction=0`` (the default, as in the papers) holds out nothing and
validates on the test split; a positive ``val_fraction`` takes a seeded stratified holdout from
the train split *before* the long-tail profile, so the validation set is balanced and the profile
starts from the remaining images. Normalization uses the true per-channel statistics of each
training set (LDAM's code uses CIFAR-10's mean with std 0.2023/0.1994/0.2010 for both).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset
from torchvision import datasets
from torchvision.transforms import v2

from zoo.datamodules.longtail import longtail_indices

__all__ = [
    "CIFAR_STATS",
    "CIFAR100DataModule",
    "CIFAR100LTDataModule",
    "CIFAR10DataModule",
    "CIFAR10LTDataModule",
    "CIFARDataModule",
]

#: Per-channel (mean, std) of each training set, pixels scaled to [0, 1].
CIFAR_STATS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}

_DATASETS: dict[str, tuple[type[datasets.CIFAR10], str, int]] = {
    "cifar10": (datasets.CIFAR10, "CIFAR-10", 10),
    "cifar100": (datasets.CIFAR100, "CIFAR-100", 100),
}


class _Transformed(Dataset):
    """``dataset[indices[i]]`` with ``transform`` applied to the image (a view, no copy)."""

    def __init__(self, dataset: datasets.CIFAR10, indices: np.ndarray, transform: Callable[[Any], torch.Tensor]) -> None:
        self.dataset, self.indices, self.transform = dataset, indices, transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image, label = self.dataset[int(self.indices[i])]
        return self.transform(image), int(label)

    @property
    def targets(self) -> np.ndarray:
        return np.asarray(self.dataset.targets)[self.indices]


class CIFARDataModule(LightningDataModule):
    """CIFAR-10 or CIFAR-100 as ``(3, 32, 32)`` float images, optionally long-tailed.

    Args:
        root: folder holding ``cifar-10-batches-py`` / ``cifar-100-python`` (or receiving them).
        dataset: ``"cifar10"`` or ``"cifar100"``.
        imbalance_ratio: exponential long-tail profile on the train split (class 0 keeps the
            most, the last class ``1/imbalance_ratio`` of that); 1 = balanced, as is.
        val_fraction: seeded stratified holdout from the train split, taken before the profile;
            0 validates on the test split (the papers' protocol).
        batch_size: examples per batch (training and evaluation).
        augment: random crop 32 with padding 4 and horizontal flip on training images.
        normalize: subtract the dataset's per-channel mean and divide by its std.
        seed: seeds the holdout, the long-tail subsample and the training shuffle.
        num_workers: DataLoader worker processes.
        download: fetch the dataset into ``root`` if it is not there.
    """

    def __init__(
        self,
        root: str = "data",
        dataset: Literal["cifar10", "cifar100"] = "cifar10",
        imbalance_ratio: float = 1.0,
        val_fraction: float = 0.0,
        batch_size: int = 128,
        augment: bool = True,
        normalize: bool = True,
        seed: int = 0,
        num_workers: int = 0,
        download: bool = False,
    ) -> None:
        super().__init__()
        if dataset not in _DATASETS:
            raise ValueError(f"dataset must be one of {sorted(_DATASETS)}, got {dataset!r}")
        if not imbalance_ratio >= 1:
            raise ValueError(f"imbalance_ratio must be >= 1 (1 = balanced, CIFAR-LT uses 10 to 200), got {imbalance_ratio}")
        if not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1) (0 = validate on the test split), got {val_fraction}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        # A named subclass fixes ``dataset`` and does not take it: keep hparams to its own arguments,
        # so ``type(dm)(**dm.hparams)`` (and load_from_checkpoint) rebuilds it.
        own_args = inspect.signature(type(self).__init__).parameters
        self.save_hyperparameters(ignore=[] if "dataset" in own_args else ["dataset"])
        self.root, self.dataset = root, dataset
        self.imbalance_ratio, self.val_fraction = float(imbalance_ratio), float(val_fraction)
        self.batch_size, self.augment, self.normalize = batch_size, augment, normalize
        self.seed, self.num_workers, self.download = seed, num_workers, download
        self.train_set: _Transformed | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    @property
    def num_classes(self) -> int:
        return _DATASETS[self.dataset][2]

    @property
    def class_counts(self) -> list[int]:
        """Training examples per class (after the holdout and the long-tail profile)."""
        self.setup()
        assert self.train_set is not None
        return np.bincount(self.train_set.targets, minlength=self.num_classes).tolist()

    def transforms(self, train: bool) -> v2.Compose:
        """PIL image -> normalized float tensor ``(3, 32, 32)``; with augmentation if ``train`` and ``augment``."""
        steps: list[Any] = [v2.ToImage()]
        if train and self.augment:
            steps += [v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()]
        steps.append(v2.ToDtype(torch.float32, scale=True))
        if self.normalize:
            mean, std = CIFAR_STATS[self.dataset]
            steps.append(v2.Normalize(mean, std))
        return v2.Compose(steps)

    def _load(self, train: bool) -> datasets.CIFAR10:
        cls, name, _ = _DATASETS[self.dataset]
        try:
            return cls(self.root, train=train, download=self.download)
        except RuntimeError:  # torchvision's "Dataset not found or corrupted"
            folder = os.path.join(os.path.abspath(os.path.expanduser(self.root)), cls.base_folder)
            files = ", ".join(f for f, _ in cls.train_list + cls.test_list) + ", " + cls.meta["filename"]
            if os.path.isdir(folder):
                problem = f"{name} files in {folder} are incomplete or corrupted (md5 check failed; expected {files})"
                fix = "delete that folder and pass download=True (--data.download=true) to fetch it again"
            else:
                problem = f"{name} not found: no folder {folder} under root={self.root!r}"
                fix = (
                    f"pass download=True (--data.download=true) to fetch it, or set root (--data.root) to the "
                    f"folder that holds {cls.base_folder}/"
                )
            raise FileNotFoundError(f"{problem}; {fix}") from None

    def prepare_data(self) -> None:
        if self.download:
            self._load(train=False)  # one archive holds both splits

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        train_base, test_base = self._load(train=True), self._load(train=False)
        labels = np.asarray(train_base.targets)
        pool = np.arange(len(labels))
        val_idx = None
        if self.val_fraction > 0:
            pool, val_idx = train_test_split(pool, test_size=self.val_fraction, stratify=labels, random_state=self.seed)
            pool, val_idx = np.sort(pool), np.sort(val_idx)
        train_idx = pool[longtail_indices(labels[pool], self.imbalance_ratio, self.seed, num_classes=self.num_classes)]
        evaluate = self.transforms(train=False)
        self.train_set = _Transformed(train_base, train_idx, self.transforms(train=True))
        self.eval_train_set = _Transformed(train_base, train_idx, evaluate)
        self.test_set = _Transformed(test_base, np.arange(len(test_base)), evaluate)
        self.val_set = self.test_set if val_idx is None else _Transformed(train_base, val_idx, evaluate)

    def _loader(self, dataset: Dataset | None, shuffle: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(
            dataset,
            self.batch_size,
            shuffle=shuffle,
            generator=generator,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def eval_train_dataloader(self) -> DataLoader:
        """The train split with the evaluation transforms (no augmentation), in order: what
        ``NeuralCollapseMonitor`` measures, so NC metrics describe the features, not the crops."""
        return self._loader(self.eval_train_set, shuffle=False)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()


class CIFAR10DataModule(CIFARDataModule):
    """CIFAR-10 (50,000 train / 10,000 test images, 10 classes); see :class:`CIFARDataModule`."""

    def __init__(
        self,
        root: str = "data",
        imbalance_ratio: float = 1.0,
        val_fraction: float = 0.0,
        batch_size: int = 128,
        augment: bool = True,
        normalize: bool = True,
        seed: int = 0,
        num_workers: int = 0,
        download: bool = False,
    ) -> None:
        super().__init__(root, "cifar10", imbalance_ratio, val_fraction, batch_size, augment, normalize, seed, num_workers, download)


class CIFAR100DataModule(CIFARDataModule):
    """CIFAR-100 (50,000 train / 10,000 test images, 100 fine classes); see :class:`CIFARDataModule`."""

    def __init__(
        self,
        root: str = "data",
        imbalance_ratio: float = 1.0,
        val_fraction: float = 0.0,
        batch_size: int = 128,
        augment: bool = True,
        normalize: bool = True,
        seed: int = 0,
        num_workers: int = 0,
        download: bool = False,
    ) -> None:
        super().__init__(root, "cifar100", imbalance_ratio, val_fraction, batch_size, augment, normalize, seed, num_workers, download)


class CIFAR10LTDataModule(CIFARDataModule):
    """CIFAR-10-LT: CIFAR-10 with the exponential profile, ratio 100 by default (12,406 train images)."""

    def __init__(
        self,
        root: str = "data",
        imbalance_ratio: float = 100.0,
        val_fraction: float = 0.0,
        batch_size: int = 128,
        augment: bool = True,
        normalize: bool = True,
        seed: int = 0,
        num_workers: int = 0,
        download: bool = False,
    ) -> None:
        super().__init__(root, "cifar10", imbalance_ratio, val_fraction, batch_size, augment, normalize, seed, num_workers, download)


class CIFAR100LTDataModule(CIFARDataModule):
    """CIFAR-100-LT: CIFAR-100 with the exponential profile, ratio 100 by default (10,847 train images)."""

    def __init__(
        self,
        root: str = "data",
        imbalance_ratio: float = 100.0,
        val_fraction: float = 0.0,
        batch_size: int = 128,
        augment: bool = True,
        normalize: bool = True,
        seed: int = 0,
        num_workers: int = 0,
        download: bool = False,
    ) -> None:
        super().__init__(root, "cifar100", imbalance_ratio, val_fraction, batch_size, augment, normalize, seed, num_workers, download)
