"""Activation patterns ``D_i = diag(1[X~ h >= 0])`` of the data: all of them, or a random sample.

Paper: Bai, Gautam, Sojoudi, arXiv 2201.01965 (after Pilanci & Ergen, ICML 2020): the exact convex
program has one pair of groups per pattern of the training data, the approximate one a random subset.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from torch import Tensor

__all__ = ["DTYPE", "add_bias", "count_arrangements", "enumerate_arrangements", "sample_arrangements"]

#: The solvers work in float64 (the convex program is ill-conditioned in float32).
DTYPE = torch.float64


def add_bias(x: Tensor, bias: bool = True) -> Tensor:
    """``X~ = [X, 1]``: the column of ones that carries the first layer's bias."""
    return torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype, device=x.device)], 1) if bias else x


def _unique_patterns(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct rows of a ``(K, n)`` boolean array in first-seen order, without the all-zero pattern."""
    _, first = np.unique(masks, axis=0, return_index=True)
    first = np.sort(first)
    keep = first[masks[first].any(1)]
    return masks[keep], keep


def count_arrangements(n: int, d: int) -> int:
    """Patterns ``1[X~ h >= 0]`` of ``n`` points in general position with a bias column (``d`` columns), all-zero excluded.

    Cover's count of the cells of a central arrangement, ``2 sum_{k<d} C(n-1, k)``, minus the all-zero
    cell (with a bias column both the all-zero and the all-ones patterns are cells).
    """
    return 2 * sum(math.comb(n - 1, k) for k in range(d)) - 1


def enumerate_arrangements(x: Tensor, max_candidates: int = 5_000_000) -> Tensor:
    """Every activation pattern ``1[x h >= 0]`` of the rows of ``x`` (``n x d``, rank ``d``): ``(P, n)`` bool.

    The exact formulation needs all of them. Each cell of the central arrangement
    ``{h : x_k^T h = 0}`` is a pointed cone; one of its extreme rays is orthogonal to ``d - 1`` rows,
    and the cell's pattern is that ray's sign pattern with those ``d - 1`` entries set to the cell's
    side. So enumerating ``+-`` the null vector of every ``(d-1)``-subset of rows with all ``2^(d-1)``
    assignments of its own rows yields every pattern (points in general position assumed, as the
    count in :func:`count_arrangements`). ``h = 0`` adds the all-ones pattern (already a cell when ``x``
    has a bias column); the all-zero pattern is dropped (it adds nothing).
    """
    xn = x.detach().to("cpu", DTYPE).numpy()
    n, d = xn.shape
    if d < 2:
        raise ValueError(f"exact enumeration needs d >= 2 columns (add the bias column), got d={d}")
    if np.linalg.matrix_rank(xn) < d:
        raise ValueError("exact enumeration needs X of full column rank d; drop redundant features")
    n_sets = math.comb(n, d - 1)
    if n_sets * 2**d > max_candidates:
        raise ValueError(
            f"exact enumeration of n={n} points in d={d} would visit {n_sets * 2**d:,} candidates; "
            f"use arrangements='sampled' (the approximate formulation) instead"
        )
    subsets = np.array(list(itertools.combinations(range(n), d - 1)), dtype=np.int64).reshape(n_sets, d - 1)
    _, _, vh = np.linalg.svd(xn[subsets], full_matrices=True)  # (S, d-1, d) -> null vector vh[:, -1]
    rays = vh[:, -1, :]
    signs = rays @ xn.T >= 0  # (S, n)
    out = []
    for assignment in itertools.product([False, True], repeat=d - 1):
        for flip in (False, True):
            pattern = ~signs if flip else signs.copy()
            pattern[np.arange(n_sets)[:, None], subsets] = np.array(assignment)
            out.append(pattern)
    out.append(np.ones((1, n), dtype=bool))  # h = 0: the all-ones pattern (a cell too when there is a bias column)
    masks, _ = _unique_patterns(np.concatenate(out, 0))
    return torch.from_numpy(masks)


def sample_arrangements(x: Tensor, num: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``num`` random hyperplanes ``h ~ N(0, I_d)`` and their distinct non-zero patterns.

    The approximate formulation (the paper's sampled convex program): returns ``masks (P, n)`` bool and
    the hyperplanes ``(P, d)`` that produced them (``P <= num`` after removing duplicates).
    """
    gen = torch.Generator().manual_seed(int(seed))
    h = torch.randn(num, x.shape[1], generator=gen, dtype=DTYPE)
    masks = (x.detach().to("cpu", DTYPE) @ h.T >= 0).T.numpy()
    masks, keep = _unique_patterns(masks)
    return torch.from_numpy(masks), h[torch.from_numpy(keep)]
