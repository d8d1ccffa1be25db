"""The exponential long-tail profile of CIFAR-LT (Cui et al. 2019), shared by every DataModule."""

from __future__ import annotations

import numpy as np

__all__ = ["longtail_counts", "longtail_indices"]


def longtail_counts(n_max: int, num_classes: int, imbalance_ratio: float) -> list[int]:
    """Per-class sizes ``n_k = n_max * ratio^(-k/(K-1))``: class 0 keeps ``n_max``, the last ``n_max/ratio``."""
    if imbalance_ratio < 1:
        raise ValueError(f"imbalance_ratio must be >= 1 (1 = balanced), got {imbalance_ratio}")
    if num_classes == 1:
        return [n_max]
    return [max(1, int(n_max * imbalance_ratio ** (-k / (num_classes - 1)))) for k in range(num_classes)]


def longtail_indices(labels: np.ndarray, imbalance_ratio: float, seed: int, num_classes: int | None = None) -> np.ndarray:
    """Indices of a seeded long-tailed subsample of ``labels`` (sorted, so order is stable).

    Class ``k`` keeps ``min(available, n_k)`` examples, ``n_k`` from :func:`longtail_counts` with
    ``n_max`` the size of the smallest class, so every class can meet its quota.
    """
    labels = np.asarray(labels)
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    if imbalance_ratio == 1:
        return np.arange(len(labels))
    per_class = [np.flatnonzero(labels == k) for k in range(num_classes)]
    n_max = min(len(idx) for idx in per_class)
    counts = longtail_counts(n_max, num_classes, imbalance_ratio)
    rng = np.random.default_rng(seed)
    keep = [rng.choice(idx, size=min(len(idx), n), replace=False) for idx, n in zip(per_class, counts)]
    return np.sort(np.concatenate(keep))
