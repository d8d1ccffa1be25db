"""``BlockCoordinateDescent``: one iteration picks a block by the chosen rule and updates it.

Paper: Nutini, Laradji, Schmidt, arXiv 1712.08859. The solver is a plain object, not a
``torch.optim.Optimizer`` (every rule needs the full gradient and the data, not a closure); it works
in float64 numpy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from zoo.bcd.problems import LeastSquares, Problem
from zoo.bcd.rules import (
    _block_sum,
    _prox_progress,
    block_indices,
    gs_scores,
    gsd_scores,
    gsh_scores,
    gsl_scores,
    hb_update,
    lb_update,
    partition,
    prox_lb_update,
    variable_block,
)

__all__ = ["SELECTIONS", "UPDATES", "BCDResult", "BCDState", "BlockCoordinateDescent"]

SELECTIONS = ("random", "cyclic", "lipschitz", "GS", "GSL", "GSD", "GSH")
UPDATES = ("Lb", "Hb", "Newton")


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
        self._problem: Problem | None = None

    def __repr__(self) -> str:
        return f"BlockCoordinateDescent(selection={self.selection!r}, update={self.update!r}, blocks={self.blocks!r}, block_size={self.block_size})"

    # ------------------------------------------------------------------ setup
    def setup(self, problem: Problem) -> None:
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

    def init(self, problem: Problem, x0: np.ndarray | None = None) -> BCDState:
        self.setup(problem)
        x = np.zeros(problem.n) if x0 is None else np.array(x0, dtype=np.float64)
        z = problem.a @ x
        return BCDState(x, z, problem.grad_z(z, x), problem.value_z(z, x), rng=np.random.default_rng(self.seed))

    # ------------------------------------------------------------------ one iteration
    def select(self, state: BCDState) -> tuple[np.ndarray, int | None]:
        """The block of this iteration: ``(indices, fixed block number or None)``."""
        p, rule = self._problem, self.selection
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
        self, problem: Problem, max_iter: int = 500, x0: np.ndarray | None = None, f_star: float | None = None, tol: float | None = None,
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
