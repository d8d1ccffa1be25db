"""LightningDataModules: the papers' benchmark loaders and the embedded defaults."""

from datamodules.cifar import (
    CIFAR10DataModule,
    CIFAR10LTDataModule,
    CIFAR100DataModule,
    CIFAR100LTDataModule,
    CIFARDataModule,
)
from datamodules.continual import SplitTasks
from datamodules.digits import DigitsDataModule
from datamodules.longtail import longtail_counts, longtail_indices
from datamodules.moons import MoonsDataModule
from datamodules.multicolor import MultiColorDigitsDataModule
from datamodules.tabular import SyntheticBinaryDataModule

__all__ = [
    "MoonsDataModule",
    "SplitTasks",
    "MultiColorDigitsDataModule",
    "CIFAR10DataModule",
    "CIFAR10LTDataModule",
    "CIFAR100DataModule",
    "CIFAR100LTDataModule",
    "CIFARDataModule",
    "DigitsDataModule",
    "SyntheticBinaryDataModule",
    "longtail_counts",
    "longtail_indices",
]
