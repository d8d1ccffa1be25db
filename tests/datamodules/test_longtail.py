"""The shared exponential long-tail profile, against hand computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zoo.datamodules.longtail import longtail_counts, longtail_indices

torch.set_num_threads(1)


def test_counts_by_hand() -> None:
    # n_k = n_max * ratio^(-k/(K-1)), floored, at least 1.
    assert longtail_counts(100, 3, 4) == [100, 50, 25]  # 100 * 4^0, 4^-1/2, 4^-1
    assert longtail_counts(10, 3, 10) == [10, 3, 1]  # 10 / sqrt(10) = 3.16 -> 3
    assert longtail_counts(8, 4, 8) == [8, 4, 2, 1]  # 8 * 8^(-k/3) = 8, 4, 2, 1
    assert longtail_counts(5, 2, 100) == [5, 1]  # 0.05 -> at least 1
    assert longtail_counts(7, 5, 1) == [7] * 5
    assert longtail_counts(7, 1, 50) == [7]


def test_counts_reject_ratio_below_one() -> None:
    with pytest.raises(ValueError, match="imbalance_ratio must be >= 1"):
        longtail_counts(10, 3, 0.5)


def test_indices_by_hand() -> None:
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2])  # 4 of each class
    keep = longtail_indices(labels, imbalance_ratio=4, seed=0)
    assert np.bincount(labels[keep]).tolist() == [4, 2, 1]
    assert np.all(np.diff(keep) > 0)  # sorted, no repeats
    assert np.array_equal(keep, longtail_indices(labels, 4, seed=0))


def test_indices_balanced_and_seeded() -> None:
    labels = np.repeat(np.arange(5), 40)
    assert np.array_equal(longtail_indices(labels, 1, seed=0), np.arange(200))
    a, b = longtail_indices(labels, 10, seed=0), longtail_indices(labels, 10, seed=1)
    assert np.bincount(labels[a]).tolist() == np.bincount(labels[b]).tolist() == longtail_counts(40, 5, 10)
    assert not np.array_equal(a, b)


def test_indices_quota_from_the_smallest_class() -> None:
    labels = np.array([0] * 10 + [1] * 6 + [2] * 8)
    keep = longtail_indices(labels, 4, seed=0, num_classes=3)
    assert np.bincount(labels[keep]).tolist() == [6, 3, 1]  # n_max = 6 (class 1)
