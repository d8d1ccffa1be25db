"""LightningDataModules: the papers' benchmark loaders and the embedded defaults."""

from datamodules.digits import DigitsDataModule
from datamodules.longtail import longtail_counts, longtail_indices
from datamodules.tabular import SyntheticBinaryDataModule

__all__ = ["DigitsDataModule", "SyntheticBinaryDataModule", "longtail_counts", "longtail_indices"]
