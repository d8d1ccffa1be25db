"""BCD's block selection rules and block updates, as pure functions on a gradient and a partition.

Paper: Nutini, Laradji, Schmidt, arXiv 1712.08859: Gauss-Southwell (GS), Gauss-Southwell-Lipschitz
(GSL), the diagonal rule (GSD) and the matrix rule (GSH) on fixed blocks, variable blocks, and the
``Lb``, ``Hb`` and proximal block updates. ``gs_scores`` uses ``||grad_b||_2`` as the paper (the
official code uses the l1 norm).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "block_indices",
    "gs_scores",
    "gsd_scores",
    "gsh_scores",
    "gsl_scores",
    "hb_update",
    "lb_update",
    "partition",
    "prox_lb_update",
    "soft_threshold",
    "variable_block",
]


def partition(n: int, block_size: int, seed: int | None = 0) -> tuple[np.ndarray, np.ndarray]:
    """Fixed blocks: ``(perm, starts)``; block ``j`` is ``perm[starts[j]:starts[j+1]]``.

    A seeded permutation (``seed=None``: the identity) cut into ``ceil(n / block_size)`` blocks whose
    sizes differ by at most one.
    """
    if not 1 <= block_size <= n:
        raise ValueError(f"block_size must be in [1, n={n}], got {block_size}")
    perm = np.arange(n) if seed is None else np.random.default_rng(seed).permutation(n)
    nb = math.ceil(n / block_size)
    sizes = np.full(nb, n // nb)
    sizes[: n % nb] += 1
    return perm, np.concatenate([[0], np.cumsum(sizes)[:-1]])


def block_indices(perm: np.ndarray, starts: np.ndarray, j: int) -> np.ndarray:
    end = starts[j + 1] if j + 1 < len(starts) else len(perm)
    return perm[starts[j] : end]


def _block_sum(v: np.ndarray, perm: np.ndarray, starts: np.ndarray) -> np.ndarray:
    return np.add.reduceat(v[perm], starts)


def gs_scores(g: np.ndarray, perm: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Gauss-Southwell: ``||grad_b f||_2`` per block."""
    return np.sqrt(_block_sum(g * g, perm, starts))


def gsl_scores(g: np.ndarray, perm: np.ndarray, starts: np.ndarray, block_l: np.ndarray) -> np.ndarray:
    """Gauss-Southwell-Lipschitz: ``||grad_b f||^2 / L_b`` per block."""
    return _block_sum(g * g, perm, starts) / block_l


def gsd_scores(g: np.ndarray, perm: np.ndarray, starts: np.ndarray, coord_l: np.ndarray) -> np.ndarray:
    """Gauss-Southwell-diagonal: ``sum_{i in b} grad_i^2 / L_i`` per block."""
    return _block_sum(g * g / coord_l, perm, starts)


def gsh_scores(g: np.ndarray, perm: np.ndarray, starts: np.ndarray, h_inv: list[np.ndarray]) -> np.ndarray:
    """Matrix Gauss-Southwell: ``grad_b^T H_b^{-1} grad_b`` per block (``h_inv[j] = H_j^{-1}``)."""
    out = np.empty(len(starts))
    for j, hi in enumerate(h_inv):
        gb = g[block_indices(perm, starts, j)]
        out[j] = gb @ hi @ gb
    return out


def variable_block(coord_scores: np.ndarray, tau: int) -> np.ndarray:
    """Variable blocks: the ``tau`` coordinates with the largest scores (ties: lower index), sorted."""
    tau = min(tau, len(coord_scores))
    top = np.argpartition(-coord_scores, tau - 1, kind="introselect")[:tau] if tau < len(coord_scores) else np.arange(len(coord_scores))
    return np.sort(top)


# ============================================================================ block updates
def lb_update(g_b: np.ndarray, l_b: float) -> np.ndarray:
    """The ``Lb`` step: ``d = -grad_b / L_b``."""
    return -g_b / l_b


def hb_update(g_b: np.ndarray, h_b: np.ndarray) -> np.ndarray:
    """The matrix step: ``d = -H_b^{-1} grad_b`` (``H_b`` symmetric positive definite)."""
    return -np.linalg.solve(h_b, g_b)


def prox_lb_update(x_b: np.ndarray, g_b: np.ndarray, l_b: float | np.ndarray, lam: float) -> np.ndarray:
    """The proximal ``Lb`` step for ``lam ||x||_1``: ``prox_{lam/L_b}(x_b - grad_b / L_b) - x_b``."""
    return soft_threshold(x_b - g_b / l_b, lam / l_b) - x_b


def _prox_progress(x: np.ndarray, g: np.ndarray, l: np.ndarray, lam: float) -> np.ndarray:  # noqa: E741 - the paper's L_i
    """Per-coordinate decrease ``-(g d + l/2 d^2 + lam (|x + d| - |x|))`` of the proximal step with constants ``l``."""
    d = prox_lb_update(x, g, l, lam)
    return -(g * d + 0.5 * l * d * d + lam * (np.abs(x + d) - np.abs(x)))


def soft_threshold(v: np.ndarray, t: float | np.ndarray) -> np.ndarray:
    """``sign(v) max(|v| - t, 0)``: the proximal operator of ``t ||.||_1``."""
    return np.sign(v) * np.maximum(np.abs(v) - t, 0.0)
