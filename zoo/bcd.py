"""Greedy block coordinate descent: Gauss-Southwell rules, variable blocks and Newton block updates.

Paper: *Let's Make Block Coordinate Descent Converge Faster: Faster Greedy Rules, Message-Passing,
Active-Set Complexity, and Superlinear Convergence*, Nutini, Laradji, Schmidt (JMLR 2022),
arXiv 1712.08859. Official code: ``IssamLaradji/BlockCoordinateDescent`` (read for the rule
definitions, not copied).

One iteration picks a block ``b`` of coordinates and updates ``x_b`` only. This module has

* three problems (:class:`LeastSquares`, :class:`Logistic`, :class:`Lasso`), each keeping ``z = A x``
  up to date so an iteration costs one ``A^T`` product (the full gradient the greedy rules need) plus
  ``O(m |b|)`` for the update;
* pure selection rules on a partition: :func:`gs_scores` (``||grad_b||_2``, the paper's GS; the official
  code uses the l1 norm), :func:`gsl_scores` (``||grad_b||^2 / L_b``), :func:`gsd_scores`
  (``sum_{i in b} grad_i^2 / L_i``), :func:`gsh_scores` (``grad_b^T H_b^{-1} grad_b``), and
  :func:`variable_block` (the top-``tau`` coordinates of a per-coordinate score: the paper's variable
  blocks), plus random, cyclic and Lipschitz sampling;
* pure block updates: :func:`lb_update` (``-grad_b / L_b``), :func:`hb_update` (``-H_b^{-1} grad_b``),
  :func:`prox_lb_update` (the proximal ``L_b`` step for the L1 term) and the damped Newton step
  (exact block Hessian, Armijo backtracking) inside :class:`BlockCoordinateDescent`;
* :class:`BlockCoordinateDescent`, the solver, and :class:`BCDModule`, its Lightning wrapper (manual
  optimization: each training step runs ``iters_per_step`` iterations on the whole training set and
  logs the relative suboptimality and the iterations needed to reach ``tol``), with
  :class:`BCDDataModule`, the paper's synthetic problems generated with a seed.

Suboptimality is relative: ``(f(x_k) - f*) / (f(x_0) - f*)`` with ``x_0 = 0`` and ``f*`` from an
independent solver (least squares: ``numpy.linalg.lstsq``; logistic: full Newton to gradient norm
1e-12; lasso: scikit-learn's ``Lasso`` at tol 1e-14).

Deviations and guesses (also in the card): the solver is a plain object, not a
``torch.optim.Optimizer`` (the registry builds it with no arguments, and every rule needs the full
gradient and the data, not a closure); it works in float64 numpy; fixed blocks are a contiguous
partition of a seeded permutation (sizes differ by at most one); for the lasso, GS scores blocks by
the norm of the proximal-gradient step with the largest block constant, GSL by the model decrease of
the proximal ``L_b`` step (the paper's proximal GS-q flavour), GSD by the same per coordinate with
``L_i``; ``Hb`` and ``Newton`` are not offered for the lasso (no active-set Newton); variable-block GSH
takes the top coordinates by ``grad_i^2 / H_ii``; the logistic loss is summed over samples plus
``lam/2 ||x||^2`` (no intercept); message passing / tree blocks and softmax / label propagation
problems are not implemented.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from zoo.hub import ZooModule

__all__ = [
    "PROBLEMS",
    "SELECTIONS",
    "UPDATES",
    "BCDDataModule",
    "BCDModule",
    "BCDResult",
    "BlockCoordinateDescent",
    "Lasso",
    "LeastSquares",
    "Logistic",
    "gs_scores",
    "gsd_scores",
    "gsh_scores",
    "gsl_scores",
    "hb_update",
    "lb_update",
    "make_problem",
    "make_problem_data",
    "partition",
    "prox_lb_update",
    "reference_solution",
    "soft_threshold",
    "variable_block",
]

PROBLEMS = ("least_squares", "logistic", "lasso")
SELECTIONS = ("random", "cyclic", "lipschitz", "GS", "GSL", "GSD", "GSH")
UPDATES = ("Lb", "Hb", "Newton")


# ============================================================================ problems
class _Problem:
    """``f(x)`` on data ``A (m x n)``; keeps ``z = A x`` so the gradient is one ``A^T`` product."""

    name = ""
    smooth = True

    def __init__(self, a: np.ndarray, b: np.ndarray, lam: float = 0.0) -> None:
        self.a = np.ascontiguousarray(a, dtype=np.float64)
        self.b = np.asarray(b, dtype=np.float64).reshape(-1)
        self.lam = float(lam)
        self.m, self.n = self.a.shape
        self.col_sq = (self.a**2).sum(0)
        self._gram: np.ndarray | None = None

    @property
    def gram(self) -> np.ndarray:
        if self._gram is None:
            self._gram = self.a.T @ self.a
        return self._gram

    def value(self, x: np.ndarray) -> float:
        return self.value_z(self.a @ x, x)

    def grad(self, x: np.ndarray) -> np.ndarray:
        return self.grad_z(self.a @ x, x)

    # per-problem: value_z, grad_z, coordinate_lipschitz, block_bound (H_b >= Hessian), block_hessian
    def block_lipschitz(self, idx: np.ndarray) -> float:
        """``L_b = lambda_max(H_b)`` of the block's constant Hessian bound."""
        return float(np.linalg.eigvalsh(self.block_bound(idx))[-1])

    def block_bound(self, idx: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def block_hessian(self, z: np.ndarray, x: np.ndarray, idx: np.ndarray) -> np.ndarray:
        return self.block_bound(idx)


class LeastSquares(_Problem):
    """``f(x) = 1/2 ||A x - b||^2``; ``L_i = ||A_i||^2``, ``H_b = A_b^T A_b`` (exact)."""

    name = "least_squares"

    def value_z(self, z: np.ndarray, x: np.ndarray) -> float:
        r = z - self.b
        return 0.5 * float(r @ r)

    def grad_z(self, z: np.ndarray, x: np.ndarray) -> np.ndarray:
        return self.a.T @ (z - self.b)

    def grad_block_z(self, z: np.ndarray, x: np.ndarray, idx: np.ndarray) -> np.ndarray:
        return self.a[:, idx].T @ (z - self.b)

    def coordinate_lipschitz(self) -> np.ndarray:
        return self.col_sq.copy()

    def block_bound(self, idx: np.ndarray) -> np.ndarray:
        return self.gram[np.ix_(idx, idx)]


class Logistic(_Problem):
    """``f(x) = sum_i log(1 + exp(-y_i a_i^T x)) + lam/2 ||x||^2`` with ``y`` in {-1, +1}.

    ``L_i = ||A_i||^2 / 4 + lam``; ``H_b = A_b^T A_b / 4 + lam I`` bounds the block Hessian everywhere;
    the exact block Hessian is ``A_b^T diag(s (1 - s)) A_b + lam I``.
    """

    name = "logistic"

    def __init__(self, a: np.ndarray, b: np.ndarray, lam: float = 1.0) -> None:
        super().__init__(a, np.where(np.asarray(b) > 0, 1.0, -1.0), lam)

    def value_z(self, z: np.ndarray, x: np.ndarray) -> float:
        return float(np.logaddexp(0.0, -self.b * z).sum()) + 0.5 * self.lam * float(x @ x)

    def _sig(self, z: np.ndarray) -> np.ndarray:
        return 0.5 * (1.0 + np.tanh(0.5 * self.b * z))  # sigmoid(y z), stable

    def grad_z(self, z: np.ndarray, x: np.ndarray) -> np.ndarray:
        return self.a.T @ (-self.b * (1.0 - self._sig(z))) + self.lam * x

    def grad_block_z(self, z: np.ndarray, x: np.ndarray, idx: np.ndarray) -> np.ndarray:
        return self.a[:, idx].T @ (-self.b * (1.0 - self._sig(z))) + self.lam * x[idx]

    def coordinate_lipschitz(self) -> np.ndarray:
        return self.col_sq / 4.0 + self.lam

    def block_bound(self, idx: np.ndarray) -> np.ndarray:
        return self.gram[np.ix_(idx, idx)] / 4.0 + self.lam * np.eye(len(idx))

    def block_hessian(self, z: np.ndarray, x: np.ndarray, idx: np.ndarray) -> np.ndarray:
        s = self._sig(z)
        ab = self.a[:, idx]
        return (ab * (s * (1.0 - s))[:, None]).T @ ab + self.lam * np.eye(len(idx))


class Lasso(LeastSquares):
    """``F(x) = 1/2 ||A x - b||^2 + lam ||x||_1``: ``grad`` is the smooth part's; updates are proximal."""

    name = "lasso"
    smooth = False

    def value_z(self, z: np.ndarray, x: np.ndarray) -> float:
        return super().value_z(z, x) + self.lam * float(np.abs(x).sum())


def make_problem(name: str, a: np.ndarray, b: np.ndarray, lam: float) -> _Problem:
    if name == "least_squares":
        return LeastSquares(a, b)
    if name == "logistic":
        return Logistic(a, b, lam)
    if name == "lasso":
        return Lasso(a, b, lam)
    raise ValueError(f"problem must be one of {PROBLEMS}, got {name!r}")


def make_problem_data(
    problem: str = "least_squares", n_samples: int = 300, n_features: int = 50, scale_sigma: float = 0.5,
    nonzeros: int = 10, noise: float = 0.1, seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """The brief's synthetic data: Gaussian ``A`` with log-normal column scales (heterogeneous ``L_i``),
    a ``nonzeros``-sparse ``x*``; ``b = A x* + noise`` (regression) or ``1[A x* + noise > 0]`` (logistic)."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n_samples, n_features)) * np.exp(scale_sigma * rng.standard_normal(n_features))
    x_star = np.zeros(n_features)
    support = rng.choice(n_features, size=min(nonzeros, n_features), replace=False)
    x_star[support] = rng.standard_normal(len(support))
    z = a @ x_star
    if problem == "logistic":
        z = z / max(z.std(), 1e-12)
        return a, (z + noise * rng.standard_normal(n_samples) > 0).astype(np.float64)
    return a, z + noise * rng.standard_normal(n_samples)


def soft_threshold(v: np.ndarray, t: float | np.ndarray) -> np.ndarray:
    return np.sign(v) * np.maximum(np.abs(v) - t, 0.0)


def reference_solution(problem: _Problem) -> tuple[np.ndarray, float]:
    """``(x*, f*)`` from an independent solver (see the module notes)."""
    if isinstance(problem, Lasso):
        from sklearn.linear_model import Lasso as SkLasso

        model = SkLasso(alpha=problem.lam / problem.m, fit_intercept=False, tol=1e-14, max_iter=200_000)
        model.fit(problem.a, problem.b)
        x = model.coef_.astype(np.float64)
    elif isinstance(problem, Logistic):
        x = np.zeros(problem.n)
        for _ in range(100):  # full Newton with backtracking
            z = problem.a @ x
            g = problem.grad_z(z, x)
            if np.linalg.norm(g) < 1e-12 * max(1.0, problem.m):
                break
            h = problem.block_hessian(z, x, np.arange(problem.n))
            d = -np.linalg.solve(h, g)
            step, f0 = 1.0, problem.value_z(z, x)
            while problem.value(x + step * d) > f0 + 1e-4 * step * float(g @ d) and step > 1e-10:
                step *= 0.5
            x = x + step * d
    else:
        x = np.linalg.lstsq(problem.a, problem.b, rcond=None)[0]
    return x, problem.value(x)


# ============================================================================ selection rules
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


def _prox_progress(x: np.ndarray, g: np.ndarray, l: np.ndarray, lam: float) -> np.ndarray:
    """Per-coordinate decrease ``-(g d + l/2 d^2 + lam (|x + d| - |x|))`` of the proximal step with constants ``l``."""
    d = prox_lb_update(x, g, l, lam)
    return -(g * d + 0.5 * l * d * d + lam * (np.abs(x + d) - np.abs(x)))


# ============================================================================ the solver
@dataclass
class BCDState:
    x: np.ndarray
    z: np.ndarray
    g: np.ndarray
    value: float
    iteration: int = 0
    rng: np.random.Generator = field(default_factory=np.random.default_rng)
    last_block: np.ndarray | None = None


@dataclass
class BCDResult:
    x: np.ndarray
    values: np.ndarray  # f(x_k), k = 0..iterations
    iterations: int
    seconds: float
    iters_to_tol: int | None = None  # first k with relative suboptimality <= tol (None: not reached)


class BlockCoordinateDescent:
    """Block coordinate descent with the paper's selection and update rules.

    Args:
        selection: ``random`` (uniform), ``cyclic``, ``lipschitz`` (``P(b) ~ L_b``), ``GS``, ``GSL``,
            ``GSD``, ``GSH`` (see the score functions).
        update: ``Lb`` (gradient step with the block Lipschitz constant), ``Hb`` (matrix step with the
            constant block bound ``H_b``), ``Newton`` (exact block Hessian, Armijo backtracking).
        blocks: ``fixed`` (a partition) or ``variable`` (each iteration the top-``block_size``
            coordinates of the rule's per-coordinate score; random picks ``block_size`` coordinates at
            random, lipschitz samples them ``~ L_i``; cyclic walks the fixed partition).
        block_size: coordinates per block.
        seed: the partition's permutation and the random rules.

    >>> from zoo.bcd import LeastSquares, make_problem_data
    >>> a, b = make_problem_data(n_samples=40, n_features=10, seed=0)
    >>> res = BlockCoordinateDescent("GSL", block_size=2).run(LeastSquares(a, b), max_iter=2000)
    >>> bool(res.values[-1] <= res.values[0])
    True
    """

    def __init__(self, selection: str = "GSL", update: str = "Lb", blocks: str = "fixed", block_size: int = 5, seed: int = 0) -> None:
        if selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
        if update not in UPDATES:
            raise ValueError(f"update must be one of {UPDATES}, got {update!r}")
        if blocks not in ("fixed", "variable"):
            raise ValueError(f"blocks must be 'fixed' or 'variable', got {blocks!r}")
        if block_size < 1:
            raise ValueError(f"block_size must be positive, got {block_size}")
        self.selection, self.update, self.blocks, self.block_size, self.seed = selection, update, blocks, int(block_size), int(seed)
        #: greedy rules need the full gradient every iteration; random, cyclic and Lipschitz sampling only
        #: the chosen block's (``O(m |b|)``), and then ``BCDState.g`` is the gradient at ``x_0``, not kept up to date
        self.full_gradient = selection not in ("random", "cyclic", "lipschitz")
        self._problem: _Problem | None = None

    def __repr__(self) -> str:
        return f"BlockCoordinateDescent(selection={self.selection!r}, update={self.update!r}, blocks={self.blocks!r}, block_size={self.block_size})"

    # ------------------------------------------------------------------ setup
    def setup(self, problem: _Problem) -> None:
        """Precompute the partition and the constants the rules need for ``problem``."""
        if not problem.smooth and self.update != "Lb":
            raise ValueError("the lasso supports update='Lb' (proximal) only")
        self._problem = problem
        self.perm, self.starts = partition(problem.n, min(self.block_size, problem.n), self.seed)
        self.coord_l = problem.coordinate_lipschitz()
        nb = len(self.starts)
        self.block_idx = [block_indices(self.perm, self.starts, j) for j in range(nb)]
        self.block_h = [problem.block_bound(idx) for idx in self.block_idx]
        self.block_l = np.array([float(np.linalg.eigvalsh(h)[-1]) for h in self.block_h])
        self.block_h_inv = [np.linalg.inv(h) for h in self.block_h] if self.selection == "GSH" else []
        self.l_max = float(self.block_l.max())
        self.h_diag = np.array([problem.block_bound(np.array([i]))[0, 0] for i in range(problem.n)]) if self.selection == "GSH" else None

    def init(self, problem: _Problem, x0: np.ndarray | None = None) -> BCDState:
        self.setup(problem)
        x = np.zeros(problem.n) if x0 is None else np.array(x0, dtype=np.float64)
        z = problem.a @ x
        return BCDState(x, z, problem.grad_z(z, x), problem.value_z(z, x), rng=np.random.default_rng(self.seed))

    # ------------------------------------------------------------------ one iteration
    def select(self, state: BCDState) -> tuple[np.ndarray, int | None]:
        """The block of this iteration: ``(indices, fixed block number or None)``."""
        p, g, rule = self._problem, state.g, self.selection
        assert p is not None
        nb = len(self.starts)
        if rule == "cyclic":
            j = state.iteration % nb
            return self.block_idx[j], j
        if self.blocks == "variable":
            tau = min(self.block_size, p.n)
            if rule == "random":
                return np.sort(state.rng.choice(p.n, tau, replace=False)), None
            if rule == "lipschitz":
                return np.sort(state.rng.choice(p.n, tau, replace=False, p=self.coord_l / self.coord_l.sum())), None
            return variable_block(self._coord_scores(state), tau), None
        if rule == "random":
            j = int(state.rng.integers(nb))
        elif rule == "lipschitz":
            j = int(state.rng.choice(nb, p=self.block_l / self.block_l.sum()))
        else:
            j = int(np.argmax(self._block_scores(state)))
        return self.block_idx[j], j

    def _coord_scores(self, state: BCDState) -> np.ndarray:
        p, g = self._problem, state.g
        assert p is not None
        if not p.smooth:
            if self.selection == "GS":
                return np.abs(prox_lb_update(state.x, g, self.l_max, p.lam))
            return _prox_progress(state.x, g, self.coord_l, p.lam)
        if self.selection == "GS":
            return np.abs(g)
        if self.selection == "GSH":
            assert self.h_diag is not None
            return g * g / self.h_diag
        return g * g / self.coord_l  # GSL and GSD coincide coordinate-wise

    def _block_scores(self, state: BCDState) -> np.ndarray:
        p, g, rule = self._problem, state.g, self.selection
        assert p is not None
        if not p.smooth:
            if rule == "GS":
                return gs_scores(prox_lb_update(state.x, g, self.l_max, p.lam), self.perm, self.starts)
            if rule == "GSD":
                return _block_sum(_prox_progress(state.x, g, self.coord_l, p.lam), self.perm, self.starts)
            l_coord = np.empty(p.n)
            for j, idx in enumerate(self.block_idx):
                l_coord[idx] = self.block_l[j]
            return _block_sum(_prox_progress(state.x, g, l_coord, p.lam), self.perm, self.starts)
        if rule == "GS":
            return gs_scores(g, self.perm, self.starts)
        if rule == "GSL":
            return gsl_scores(g, self.perm, self.starts, self.block_l)
        if rule == "GSD":
            return gsd_scores(g, self.perm, self.starts, self.coord_l)
        return gsh_scores(g, self.perm, self.starts, self.block_h_inv)

    def direction(self, state: BCDState, idx: np.ndarray, j: int | None) -> tuple[np.ndarray, float]:
        """The block step ``d`` and the step length (Newton's backtracking; 1 otherwise)."""
        p = self._problem
        assert p is not None
        g_b = state.g[idx] if self.full_gradient else p.grad_block_z(state.z, state.x, idx)
        if self.update == "Lb":
            l_b = self.block_l[j] if j is not None else p.block_lipschitz(idx)
            if not p.smooth:
                return prox_lb_update(state.x[idx], g_b, l_b, p.lam), 1.0
            return lb_update(g_b, l_b), 1.0
        if self.update == "Hb":
            return hb_update(g_b, self.block_h[j] if j is not None else p.block_bound(idx)), 1.0
        d = hb_update(g_b, p.block_hessian(state.z, state.x, idx))
        if isinstance(p, LeastSquares):
            return d, 1.0  # the quadratic's Newton step is exact
        ad = p.a[:, idx] @ d
        slope, step = float(g_b @ d), 1.0
        while step > 1e-12:
            x_try = state.x.copy()
            x_try[idx] += step * d
            if p.value_z(state.z + step * ad, x_try) <= state.value + 1e-4 * step * slope:
                break
            step *= 0.5
        return d, step

    def step(self, state: BCDState) -> BCDState:
        """One iteration, in place."""
        p = self._problem
        assert p is not None
        idx, j = self.select(state)
        d, step = self.direction(state, idx, j)
        state.x[idx] += step * d
        state.z += p.a[:, idx] @ (step * d)
        if self.full_gradient:
            state.g = p.grad_z(state.z, state.x)
        state.value = p.value_z(state.z, state.x)
        state.iteration += 1
        state.last_block = idx
        return state

    def run(
        self, problem: _Problem, max_iter: int = 500, x0: np.ndarray | None = None, f_star: float | None = None, tol: float | None = None,
    ) -> BCDResult:
        """``max_iter`` iterations (fewer when ``tol`` and ``f_star`` are given and the relative suboptimality reaches ``tol``)."""
        start = time.perf_counter()
        state = self.init(problem, x0)
        values = [state.value]
        hit = None
        gap0 = state.value - f_star if f_star is not None else None
        while state.iteration < max_iter:
            self.step(state)
            values.append(state.value)
            if tol is not None and gap0 is not None and (state.value - f_star) <= tol * gap0:  # type: ignore[operator]
                hit = state.iteration
                break
        return BCDResult(state.x, np.asarray(values), state.iteration, time.perf_counter() - start, hit)


# ============================================================================ data
class BCDDataModule(LightningDataModule):
    """The brief's synthetic problem data generated with a seed (see :func:`make_problem_data`).

    Train, test and predict are the same table (no validation split: the solver has nothing to tune) (the solver's data); batches are ``(x, y)`` float64 with
    ``batch_size`` rows (the module gathers them all at the start of fit).
    """

    def __init__(
        self, problem: str = "least_squares", n_samples: int = 300, n_features: int = 50, scale_sigma: float = 0.5,
        nonzeros: int = 10, noise: float = 0.1, batch_size: int = 1024, seed: int = 0,
    ) -> None:
        super().__init__()
        if problem not in PROBLEMS:
            raise ValueError(f"problem must be one of {PROBLEMS}, got {problem!r}")
        self.save_hyperparameters()
        self.data: TensorDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        a, b = make_problem_data(hp.problem, hp.n_samples, hp.n_features, hp.scale_sigma, hp.nonzeros, hp.noise, hp.seed)
        self.data = TensorDataset(torch.from_numpy(a), torch.from_numpy(b))

    def _loader(self) -> DataLoader:
        if self.data is None:
            self.setup()
        return DataLoader(self.data, batch_size=self.hparams.batch_size, shuffle=False)

    def train_dataloader(self) -> DataLoader:
        return self._loader()

    def test_dataloader(self) -> DataLoader:
        return self._loader()

    def predict_dataloader(self) -> DataLoader:
        return self._loader()


# ============================================================================ the Lightning wrapper
TRAIN_METRICS = ("train/objective", "train/suboptimality", "train/iterations", "train/iters_to_tol", "train/reached", "train/solve_seconds")


class BCDModule(ZooModule):
    """A linear model (``forward(x) = x @ weight``: predictions or logits) fitted by block coordinate descent.

    ``zoo fit`` gathers the whole training set at the start of fit, computes ``f*`` with an independent
    solver, and every training step (manual optimization, no torch optimizer) runs ``iters_per_step``
    iterations of :class:`BlockCoordinateDescent`, copies ``x`` into ``weight`` and logs
    ``train/suboptimality`` (relative, see the module notes), ``train/objective``, ``train/iterations``
    and ``train/iters_to_tol`` (the first iteration with suboptimality ``<= tol``; ``max_iter + 1``
    while not reached, with ``train/reached`` 0). The fit stops itself at ``tol`` (when
    ``stop_at_tol``) or after ``max_iter`` iterations; set the trainer's ``max_epochs`` high enough.

    Args:
        problem: ``least_squares``, ``logistic`` (labels {0, 1}) or ``lasso``.
        n_features: columns of the data.
        lam: L2 weight (logistic) or L1 weight (lasso); unused for least squares.
        selection, update, blocks, block_size, seed: see :class:`BlockCoordinateDescent`.
        max_iter, iters_per_step, tol, stop_at_tol: the run.
    """

    def __init__(
        self, problem: str = "least_squares", n_features: int = 50, lam: float = 1.0, selection: str = "GSL", update: str = "Lb",
        blocks: str = "fixed", block_size: int = 5, max_iter: int = 5000, iters_per_step: int = 250, tol: float = 1e-6,
        stop_at_tol: bool = True, seed: int = 0,
    ) -> None:
        super().__init__()
        if problem not in PROBLEMS:
            raise ValueError(f"problem must be one of {PROBLEMS}, got {problem!r}")
        self.solver = BlockCoordinateDescent(selection, update, blocks, block_size, seed)
        if min(n_features, max_iter, iters_per_step) < 1 or lam < 0 or tol < 0:
            raise ValueError("n_features, max_iter, iters_per_step must be positive; lam, tol >= 0")
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.weight = nn.Parameter(torch.zeros(n_features, dtype=torch.float64))
        self._state: BCDState | None = None
        self._problem: _Problem | None = None

    def forward(self, x: Tensor) -> Tensor:
        return x.to(self.weight.dtype) @ self.weight

    def configure_optimizers(self) -> list:
        return []  # the solver updates the weights itself

    def _gather(self, loader: Any) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for batch in loader:
            xs.append(batch[0].reshape(len(batch[0]), -1))
            ys.append(batch[1].reshape(-1))
        x, y = torch.cat(xs).double().cpu().numpy(), torch.cat(ys).double().cpu().numpy()
        if x.shape[1] != self.hparams.n_features:
            raise ValueError(f"the data has {x.shape[1]} features, the model was built with n_features={self.hparams.n_features}")
        return x, y

    def on_train_start(self) -> None:
        loader = self.trainer.train_dataloader
        if loader is None and self.trainer.datamodule is not None:
            loader = self.trainer.datamodule.train_dataloader()
        a, b = self._gather(loader)
        hp = self.hparams
        self._problem = make_problem(hp.problem, a, b, hp.lam)
        self._x_star, self._f_star = reference_solution(self._problem)
        x0 = self.weight.detach().cpu().numpy().copy()
        self._state = self.solver.init(self._problem, x0)
        self._gap0 = max(self._state.value - self._f_star, 1e-300)
        self._hit: int | None = 0 if self._state.value - self._f_star <= hp.tol * self._gap0 else None
        self._seconds = 0.0

    def suboptimality(self) -> float:
        assert self._state is not None
        return max(self._state.value - self._f_star, 0.0) / self._gap0

    def training_step(self, batch: Any, batch_idx: int) -> None:
        hp = self.hparams
        assert self._state is not None, "BCDModule trains with trainer.fit (on_train_start gathers the data)"
        start = time.perf_counter()
        todo = min(hp.iters_per_step, hp.max_iter - self._state.iteration)
        for _ in range(todo):
            self.solver.step(self._state)
            if self._hit is None and self._state.value - self._f_star <= hp.tol * self._gap0:
                self._hit = self._state.iteration
                if hp.stop_at_tol:
                    break
        self._seconds += time.perf_counter() - start
        with torch.no_grad():
            self.weight.copy_(torch.from_numpy(self._state.x))
        logs = {
            "train/objective": self._state.value,
            "train/suboptimality": self.suboptimality(),
            "train/iterations": float(self._state.iteration),
            "train/iters_to_tol": float(self._hit if self._hit is not None else hp.max_iter + 1),
            "train/reached": float(self._hit is not None),
            "train/solve_seconds": self._seconds,
        }
        self.log_dict({k: torch.tensor(v, dtype=torch.float64) for k, v in logs.items()}, on_step=True, on_epoch=False, batch_size=1)
        if self._state.iteration >= hp.max_iter or (hp.stop_at_tol and self._hit is not None):
            self.trainer.should_stop = True

    def test_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        out = self(x)
        if self.hparams.problem == "logistic":
            metric = {"test/accuracy": ((out > 0).double() == (y > 0).double()).double().mean()}
        else:
            metric = {"test/mse": (out - y.double()).pow(2).mean()}
        self.log_dict(metric, batch_size=len(y))
