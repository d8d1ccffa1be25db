"""Convex training of two-layer ReLU networks: hyperplane arrangements, ADMM, sampled and robust programs.

Paper: *Efficient Global Optimization of Two-layer ReLU Networks: Quadratic-time Algorithms and
Adversarial Training*, Bai, Gautam, Sojoudi (SIAM J. Math. Data Science), arXiv 2201.01965, which
builds on the convex reformulation of Pilanci & Ergen (ICML 2020). No official ADMM code; the first
author's CVXPY/MOSEK reference formulation (``Bai-YT/Convex-NN-Training``) was read, not copied.

A two-layer ReLU network ``f(x) = sum_j alpha_j (x~^T u_j)_+`` (``x~ = [x, 1]``: the first layer's bias
is the last coordinate of ``u_j``) trained with weight decay,
``min l(f(X), y) + beta/2 (||U||_F^2 + ||alpha||^2)``, equals the group-lasso program over all
activation patterns ``D_i = diag(1[X~ h >= 0])`` of the data (the paper's convex training program)::

    min_{v_i, w_i}  l( sum_i D_i X~ (v_i - w_i), y ) + beta sum_i (||v_i||_2 + ||w_i||_2)
    s.t.            (2 D_i - I) X~ v_i >= 0,  (2 D_i - I) X~ w_i >= 0

whenever the network is wide enough (``m >= m*``). Its solution is turned back into a network by the
square-root split ``u = v / sqrt(||v||)``, ``alpha = +-sqrt(||v||)`` (:func:`recover_network`), whose
non-convex objective equals the convex one exactly. This module has:

* :func:`enumerate_arrangements` (the exact formulation: every pattern, by the extreme rays of the
  arrangement) and :func:`sample_arrangements` (the approximate formulation: ``P`` random ``h ~ N(0, I)``);
* :class:`ADMMSolver`, the paper's ADMM for the squared loss (its Algorithm 1: ``u``, ``v``, ``s``
  and dual updates), with the ``u``-system solved exactly by Woodbury (``O(n d P)`` per iteration);
* :func:`fista_gated`, the sampled convex program without cone constraints (the "gated ReLU" model
  ``f(x) = sum_i 1[x~^T h_i >= 0] x~^T u_i``), solved by FISTA with group soft-thresholding;
* :func:`solve_cvxpy`, the reference solver (CVXPY + Clarabel), also for the hinge/logistic losses
  and the robust L-inf program (the paper's robust convex training: constraints
  ``(2 D_i - I) X~ v_i >= eps ||v_i||_1`` and the hinge loss with ``+ eps ||sum_i d_ik (v_i - w_i)||_1``);
* :func:`train_nonconvex`, the equivalent non-convex network trained by full-batch Adam from several
  random starts (the paper's back-propagation baseline; with ``epsilon > 0`` PGD adversarial training);
* :func:`certified_margins`, an exact worst-case margin for inputs at which no neuron can flip, and
  :class:`ConvexReLU`, the Lightning wrapper (``zoo fit`` runs the solver, the result is an ordinary
  ``nn.Sequential(Linear, ReLU, Linear)``).

Normalisation: ``reduction="sum"`` uses ``1/2 ||f - y||^2`` (the paper's loss), ``"mean"`` divides the
loss by ``n``. The solvers always work on the summed scale (``beta`` multiplied by ``n`` for ``"mean"``,
the objective divided back), so ``rho`` means the same thing under both; a ``rho`` tuned for one scale
diverges or crawls on the other (the brief's ``rho = 0.01`` diverges on the summed loss).

Deviations and guesses (also in the card): the ``u``-update uses Woodbury instead of a dense
``2dP x 2dP`` Cholesky (same solution, linear in ``P``); ``dual_step`` is the scaled dual step
(``gamma_a / rho`` in the paper's notation; 1 is standard ADMM); the default ``rho = 2`` was measured
best on the exact moons program (the brief suggests 1; 0.01 diverges on the summed loss); the robust
program and the hinge and logistic losses are solved with Clarabel only (no ADMM-RBCD, no robust ADMM);
the sampled convex program is published as a gated model (no cone decomposition to a ReLU network);
the regulariser includes the first layer's bias, which is part of ``u`` in the reformulation; the
robust constraints and the ``epsilon ||.||_1`` terms exclude the bias coordinate (only inputs are
attacked); the solvers work in float64.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.hub import ZooModule

__all__ = [
    "ADMMSolver",
    "ConvexReLU",
    "GatedReLU",
    "LOSSES",
    "SOLVERS",
    "add_bias",
    "certified_margins",
    "cone_violation",
    "convex_objective",
    "count_arrangements",
    "enumerate_arrangements",
    "fista_gated",
    "network_objective",
    "recover_network",
    "sample_arrangements",
    "solve_cvxpy",
    "to_sequential",
    "train_nonconvex",
]

LOSSES = ("squared", "hinge", "logistic")
SOLVERS = ("admm", "clarabel", "scp", "adam")
DTYPE = torch.float64
#: Clarabel's tolerances for the reference optimum: tight enough that the pruned exported network
#: matches the optimal value to ~1e-9 (the defaults leave ~1e-9-norm groups that add up to ~5e-7).
CLARABEL_SETTINGS: dict[str, float] = {"tol_gap_abs": 1e-10, "tol_gap_rel": 1e-10, "tol_feas": 1e-10, "tol_ktratio": 1e-8}
#: Every metric the training step logs (NaN where it does not apply), so arms are comparable.
TRAIN_METRICS = (
    "train/objective", "train/convex_objective", "train/objective_gap", "train/objective_median", "train/objective_worst",
    "train/width", "train/num_patterns", "train/cone_violation", "train/dropped_neurons", "train/primal_residual",
    "train/dual_residual", "train/iterations", "train/solve_seconds", "train/acc", "train/pgd_acc", "train/certified_acc",
)


# ============================================================================ data and patterns
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


# ============================================================================ objectives
def _loss_sum(pred: Tensor, y: Tensor, loss: str) -> Tensor:
    """Summed loss on targets ``y`` in {-1, +1}: ``1/2 sum (f - y)^2``, ``sum (1 - y f)_+`` or ``sum log(1 + e^{-y f})``."""
    if loss == "squared":
        return 0.5 * (pred - y).pow(2).sum()
    if loss == "hinge":
        return (1 - y * pred).clamp_min(0).sum()
    if loss == "logistic":
        return F.softplus(-y * pred).sum()
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")


def _scale(n: int, reduction: str) -> float:
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    return 1.0 if reduction == "sum" else 1.0 / n


def _groups(masks: Tensor, v: Tensor, w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Stack ``u = [v; w]`` (``2P x d``) with their masks (``n x 2P``) and output signs (``+1`` for v, ``-1`` for w)."""
    dm = torch.cat([masks, masks]).T.to(v.dtype)
    sign = torch.cat([torch.ones(len(v), dtype=v.dtype), -torch.ones(len(w), dtype=w.dtype)]).to(v.device)
    return torch.cat([v, w]), dm, sign


def convex_objective(
    x: Tensor, y: Tensor, masks: Tensor, v: Tensor, w: Tensor, beta: float, loss: str = "squared", reduction: str = "sum",
    epsilon: float = 0.0, n_features: int | None = None,
) -> float:
    """The convex program's objective at ``(v, w)`` (rows per pattern, ``P x d``), in the given normalisation.

    ``l(sum_i D_i X~ (v_i - w_i), y) + beta sum_i (||v_i|| + ||w_i||)``; with ``epsilon > 0`` the robust
    hinge loss adds ``epsilon ||sum_i d_ik (v_i - w_i)[:n_features]||_1`` inside each sample's hinge.
    """
    u, dm, sign = _groups(masks.to(x.device), v, w)
    pred = ((x @ u.T) * dm) @ sign
    if epsilon > 0:
        if loss != "hinge":
            raise ValueError("the robust program is written for the hinge loss")
        k = n_features if n_features is not None else x.shape[1]
        slope = (dm * sign) @ u  # (n, d): the linear piece each sample sits on
        value = (1 - y * pred + epsilon * slope[:, :k].abs().sum(1)).clamp_min(0).sum()
    else:
        value = _loss_sum(pred, y, loss)
    return float(_scale(len(y), reduction) * value + beta * u.norm(dim=1).sum())


def cone_violation(x: Tensor, masks: Tensor, v: Tensor, w: Tensor, epsilon: float = 0.0, n_features: int | None = None) -> float:
    """Largest violation of ``(2 D_i - I) X~ u_i >= epsilon ||u_i[:n_features]||_1`` over all groups (0 if feasible)."""
    u, dm, _ = _groups(masks.to(x.device), v, w)
    k = n_features if n_features is not None else x.shape[1]
    lhs = (x @ u.T) * (2 * dm - 1) - epsilon * u[:, :k].abs().sum(1)
    return float((-lhs).clamp_min(0).max()) if lhs.numel() else 0.0


def recover_network(v: Tensor, w: Tensor, rel_tol: float = 0.0) -> tuple[Tensor, Tensor]:
    """First-layer rows ``U (m x d)`` and output weights ``alpha (m,)`` from the convex solution.

    The square-root split of the paper's weight recovery: ``u = v / sqrt(||v||)``, ``alpha = sqrt(||v||)``
    for every non-zero ``v_i`` and ``alpha = -sqrt(||w||)`` for every ``w_i``, so that
    ``alpha u = v`` and ``beta/2 (||u||^2 + alpha^2) = beta ||v||``. Groups with norm at most
    ``rel_tol`` times the largest are dropped (interior-point solutions are not exactly sparse).
    """
    groups = torch.cat([v, w])
    sign = torch.cat([torch.ones(len(v), dtype=v.dtype), -torch.ones(len(w), dtype=w.dtype)]).to(v.device)
    norms = groups.norm(dim=1)
    keep = norms > rel_tol * norms.max() if len(norms) and norms.max() > 0 else torch.zeros_like(norms, dtype=torch.bool)
    root = norms[keep].sqrt()
    return groups[keep] / root[:, None], sign[keep] * root


def to_sequential(u: Tensor, alpha: Tensor, input_dim: int, bias: bool = True, width: int | None = None) -> nn.Sequential:
    """An ordinary ``nn.Sequential(Linear(input_dim, width), ReLU(), Linear(width, 1, bias=False))`` in float64.

    ``u`` holds one neuron per row (its last column is the bias when ``bias``); extra neurons are zero.
    """
    m = len(alpha)
    width = max(m, 1) if width is None else width
    if m > width:
        raise ValueError(f"the solution has {m} neurons, more than width={width}; raise width")
    net = nn.Sequential(nn.Linear(input_dim, width, bias=bias), nn.ReLU(), nn.Linear(width, 1, bias=False)).to(DTYPE)
    _load_network(net, u, alpha, bias)
    return net


def _load_network(net: nn.Sequential, u: Tensor, alpha: Tensor, bias: bool) -> None:
    m, d = len(alpha), net[0].in_features
    with torch.no_grad():
        net[0].weight.zero_()
        net[2].weight.zero_()
        net[0].weight[:m] = u[:, :d].to(net[0].weight)
        if bias:
            net[0].bias.zero_()
            net[0].bias[:m] = u[:, d].to(net[0].bias)
        net[2].weight[0, :m] = alpha.to(net[2].weight)


def network_objective(
    net: nn.Module, x: Tensor, y: Tensor, beta: float, loss: str = "squared", reduction: str = "sum", epsilon: float = 0.0
) -> float:
    """The non-convex objective ``l(f(x), y) + beta/2 (||W1||^2 + ||b1||^2 + ||W2||^2)`` of a two-layer net.

    ``x`` holds raw inputs (no bias column), ``y`` targets in {-1, +1}. With ``epsilon > 0`` (hinge loss)
    the loss is the exact worst case over the L-inf ball, ``sum_k (1 - min_d y_k f(x_k + d))_+``, from
    :func:`certified_margins` (``inf`` if a neuron can flip at some sample: the robust program rules
    that out). For a :class:`GatedReLU` the penalty is the gated program's ``beta sum_i ||u_i||``.
    """
    with torch.no_grad():
        dtype = next(net.parameters()).dtype
        y = y.to(dtype)
        if epsilon > 0:
            if loss != "hinge" or isinstance(net, GatedReLU):
                raise ValueError("the worst-case objective is defined for the hinge loss of a ReLU network")
            data = (1 - certified_margins(net, x, y, epsilon)).clamp_min(0).sum()  # type: ignore[arg-type]
        else:
            data = _loss_sum(net(x.to(dtype)).reshape(-1), y, loss)
        if isinstance(net, GatedReLU):
            penalty = beta * net.weight.norm(dim=1).sum()
        else:
            penalty = beta / 2 * sum(p.pow(2).sum() for p in net.parameters())
        return float(_scale(len(y), reduction) * data + penalty)


class GatedReLU(nn.Module):
    """The sampled convex program's model ``f(x) = sum_i 1[x~^T h_i >= 0] x~^T u_i`` (fixed gates ``h_i``).

    Not a ReLU network: the gates are fixed hyperplanes, the linear pieces are free. Rows of zeros
    (``h_i = 0``, ``u_i = 0``) are padding and contribute nothing.
    """

    def __init__(self, input_dim: int, num_gates: int, bias: bool = True) -> None:
        super().__init__()
        self.bias = bias
        d = input_dim + int(bias)
        self.register_buffer("gates", torch.zeros(num_gates, d, dtype=DTYPE))
        self.weight = nn.Parameter(torch.zeros(num_gates, d, dtype=DTYPE))

    def forward(self, x: Tensor) -> Tensor:
        xt = add_bias(x.to(self.weight.dtype), self.bias)
        return (((xt @ self.gates.T) >= 0).to(xt.dtype) * (xt @ self.weight.T)).sum(1, keepdim=True)


# ============================================================================ ADMM (Algorithm 1)
@dataclass
class ADMMState:
    """Iterates of the scaled-form ADMM: ``u`` (the loss copy), ``v`` (the group-lasso copy), slacks ``s >= 0``
    for the cone constraints, scaled duals ``lam`` (for ``u = v``) and ``nu`` (for ``G u = s``)."""

    u: Tensor
    v: Tensor
    s: Tensor
    lam: Tensor
    nu: Tensor
    iterations: int = 0
    primal_residual: float = float("inf")
    dual_residual: float = float("inf")


class ADMMSolver:
    """The paper's ADMM (Algorithm 1) for the cone-constrained group-lasso program with the squared loss.

    Splitting ``min 1/2 ||F u - y||^2 + beta ||v||_{2,1} + 1(s >= 0)  s.t.  u = v, G u = s`` with
    ``F = [D_1 X~ ... D_P X~, -D_1 X~ ... -D_P X~]`` and ``G = blockdiag((2 D_i - I) X~)``. One iteration:

    1. ``u <- (I + G^T G + F^T F / rho)^{-1} (F^T y / rho + v - lam + G^T (s - nu))``: the matrix is
       constant; ``G^T G = blockdiag(X~^T X~)``, so ``I + G^T G`` is one ``d x d`` block repeated and
       Woodbury leaves an ``n x n`` system ``rho I + K o (D D^T)`` (``K = X~ (I + X~^T X~)^{-1} X~^T``),
       factored once;
    2. ``v <- `` group soft-threshold of ``u + lam`` at ``beta / rho``;
    3. ``s <- max(0, G u + nu)``;
    4. ``lam += dual_step (u - v)``, ``nu += dual_step (G u - s)`` (``dual_step = gamma_a / rho``).

    Arguments are on the summed-loss scale (pass ``beta * n`` for a mean loss); ``x`` includes the
    bias column, ``y`` the targets, ``masks`` the ``(P, n)`` patterns.
    """

    def __init__(self, x: Tensor, y: Tensor, masks: Tensor, beta: float, rho: float = 1.0, dual_step: float = 1.0) -> None:
        if rho <= 0 or beta < 0 or dual_step <= 0:
            raise ValueError(f"need rho > 0, beta >= 0 and dual_step > 0; got {rho}, {beta}, {dual_step}")
        self.x, self.y = x.to(DTYPE), y.to(DTYPE)
        self.beta, self.rho, self.dual_step = float(beta), float(rho), float(dual_step)
        n, d = self.x.shape
        self.num_patterns = len(masks)
        dm = torch.cat([masks, masks]).T.to(self.x)  # (n, 2P)
        sign = torch.cat([torch.ones(len(masks)), -torch.ones(len(masks))]).to(self.x)
        self.dms = (dm * sign).contiguous()
        self.dms_t = self.dms.T.contiguous()
        self.e = (2 * dm - 1).contiguous()
        eye = torch.eye(d, dtype=DTYPE, device=self.x.device)
        self.m_inv = torch.linalg.inv(eye + self.x.T @ self.x)
        kernel = self.x @ self.m_inv @ self.x.T
        inner = self.rho * torch.eye(n, dtype=DTYPE, device=self.x.device) + kernel * (dm @ dm.T)
        self.inner_chol = torch.linalg.cholesky(inner)
        self.fty = self.ft(self.y)

    # ----- the linear maps, applied without forming F or G (block j of u is row j). F and F^T are
    # written as products with the signed masks ``dms = D o sign`` so that no n x 2P temporary is formed.
    def f(self, u: Tensor) -> Tensor:
        return ((u.T @ self.dms_t).T * self.x).sum(1)

    def ft(self, r: Tensor) -> Tensor:
        return ((self.x * r[:, None]).T @ self.dms).T

    def g(self, u: Tensor) -> Tensor:
        return (self.x @ u.T) * self.e

    def gt(self, z: Tensor) -> Tensor:
        return (self.x.T @ (self.e * z)).T

    def solve_u(self, rhs: Tensor) -> Tensor:
        """``(I + G^T G + F^T F / rho)^{-1} rhs`` by Woodbury around ``B = blockdiag(I + X~^T X~)``."""
        z = rhs @ self.m_inv
        t = torch.cholesky_solve(self.f(z)[:, None], self.inner_chol)[:, 0]
        return z - self.ft(t) @ self.m_inv

    def init_state(self) -> ADMMState:
        p2, d = 2 * self.num_patterns, self.x.shape[1]
        zeros_u = torch.zeros(p2, d, dtype=DTYPE, device=self.x.device)
        zeros_s = torch.zeros(len(self.x), p2, dtype=DTYPE, device=self.x.device)
        return ADMMState(zeros_u, zeros_u.clone(), zeros_s, zeros_u.clone(), zeros_s.clone())

    def iterate(self, state: ADMMState, iterations: int) -> ADMMState:
        """Run ``iterations`` ADMM iterations from ``state`` (returns a new state; residuals of the last one)."""
        u, v, s, lam, nu = state.u, state.v, state.s, state.lam, state.nu
        kappa, step = self.beta / self.rho, self.dual_step
        s_minus_nu = s - nu
        primal, dual = state.primal_residual, state.dual_residual
        for it in range(iterations):
            u = self.solve_u(self.fty / self.rho + (v - lam) + self.gt(s_minus_nu))  # step 1
            gu = self.g(u)
            z = u + lam
            v_new = z * (1 - kappa / z.norm(dim=1, keepdim=True).clamp_min(1e-300)).clamp_min(0)  # step 2
            q = gu + nu
            last = it == iterations - 1
            if last:
                s = s_minus_nu + nu  # the previous iterate's slack (the fast path below does not keep it)
            if step == 1.0:  # steps 3-4: s = max(0, q), nu + (G u - s) = min(0, q), so s - nu = |q|
                nu = q.clamp_max(0)
                s_minus_nu = q.abs()
                s_new = q.clamp_min(0) if last else s  # only needed for the residuals
            else:
                s_new = q.clamp_min(0)  # step 3
                nu = nu + step * (gu - s_new)  # step 4
                s_minus_nu = s_new - nu
            lam = lam + step * (u - v_new)
            if last:  # residuals (Boyd et al. 2011, Sec. 3.3) of the last iteration
                primal = float(((u - v_new).pow(2).sum() + (gu - s_new).pow(2).sum()).sqrt())
                dual = self.rho * float(((v_new - v).pow(2).sum() + self.gt(s_new - s).pow(2).sum()).sqrt())
            v, s = v_new, s_new
        return ADMMState(u, v, s, lam, nu, state.iterations + iterations, primal, dual)

    def split(self, groups: Tensor) -> tuple[Tensor, Tensor]:
        """``(v, w)``: the ``2P`` stacked groups back into the two halves."""
        return groups[: self.num_patterns], groups[self.num_patterns :]


# ============================================================================ SCP: gated ReLU by FISTA
def fista_gated(
    x: Tensor, y: Tensor, masks: Tensor, beta: float, iterations: int = 2000, init: Tensor | None = None, tol: float = 0.0
) -> tuple[Tensor, int]:
    """The sampled convex program without cone constraints, ``min 1/2 ||sum_i D_i X~ u_i - y||^2 + beta sum ||u_i||``.

    FISTA (accelerated proximal gradient with the group soft-threshold as proximal step, adaptive
    restart on objective increase), step ``1 / L`` with ``L = ||F||_2^2`` from power iteration.
    Summed scale, as :class:`ADMMSolver`. Returns ``(u (P x d), iterations run)``.
    """
    x, y = x.to(DTYPE), y.to(DTYPE)
    dm = masks.T.to(x)

    def fwd(u: Tensor) -> Tensor:
        return ((x @ u.T) * dm).sum(1)

    def adj(r: Tensor) -> Tensor:
        return (x.T @ (dm * r[:, None])).T

    def obj(u: Tensor) -> float:
        return float(0.5 * (fwd(u) - y).pow(2).sum() + beta * u.norm(dim=1).sum())

    probe = torch.randn(len(masks), x.shape[1], dtype=DTYPE, generator=torch.Generator().manual_seed(0)).to(x.device)
    for _ in range(100):
        probe = adj(fwd(probe))
        probe = probe / probe.norm().clamp_min(1e-300)
    lipschitz = float(fwd(probe).pow(2).sum()) * 1.01 + 1e-12
    u = torch.zeros(len(masks), x.shape[1], dtype=DTYPE, device=x.device) if init is None else init.to(x)
    z, t, last = u.clone(), 1.0, obj(u)
    done = 0
    for done in range(1, iterations + 1):
        step = z - adj(fwd(z) - y) / lipschitz
        norms = step.norm(dim=1, keepdim=True)
        u_new = step * (1 - beta / lipschitz / norms.clamp_min(1e-300)).clamp_min(0)
        value = obj(u_new)
        if value > last:  # adaptive restart (O'Donoghue & Candes)
            z, t = u.clone(), 1.0
            continue
        t_new = (1 + math.sqrt(1 + 4 * t * t)) / 2
        z = u_new + (t - 1) / t_new * (u_new - u)
        change = float((u_new - u).norm()) / max(1.0, float(u.norm()))
        u, t, last = u_new, t_new, value
        if tol > 0 and change < tol:
            break
    return u, done


# ============================================================================ reference: CVXPY + Clarabel
def solve_cvxpy(
    x: Tensor, y: Tensor, masks: Tensor, beta: float, loss: str = "squared", epsilon: float = 0.0,
    n_features: int | None = None, solver: str = "CLARABEL", info: dict[str, Any] | None = None, **solver_kwargs: Any,
) -> tuple[Tensor, Tensor, float]:
    """The convex (or robust convex) training program solved by CVXPY, on the summed scale.

    Returns ``(v, w, optimal value)``; ``v, w`` have one row per pattern. With ``epsilon > 0`` (hinge
    loss only) the constraints become ``(2 D_i - I) X~ v_i >= epsilon ||v_i[:n_features]||_1`` and each
    sample's hinge gets ``+ epsilon ||sum_i d_ik (v_i - w_i)[:n_features]||_1``: the paper's robust
    convex program for L-inf attacks of radius ``epsilon`` on the first ``n_features`` inputs.
    ``info``, if given, receives the solver's status and its own solve time (without CVXPY's compilation).
    """
    try:
        import cvxpy as cp
    except ImportError as err:  # pragma: no cover - cvxpy is a dependency of the zoo
        raise ImportError("solver='clarabel' needs cvxpy: pip install cvxpy") from err
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if epsilon > 0 and loss != "hinge":
        raise ValueError("the robust program (epsilon > 0) is written for the hinge loss")
    xn, yn = x.detach().cpu().double().numpy(), y.detach().cpu().double().numpy()
    dmat = masks.detach().cpu().numpy().T.astype(float)  # (n, P)
    n, d = xn.shape
    p = dmat.shape[1]
    k = n_features if n_features is not None else d
    v, w = cp.Variable((d, p)), cp.Variable((d, p))
    pred = cp.sum(cp.multiply(dmat, xn @ (v - w)), axis=1)
    constraints = []
    if epsilon > 0:
        tv, tw = cp.Variable((k, p)), cp.Variable((k, p))  # tv >= |v[:k]| elementwise
        slope = dmat @ (v - w).T  # (n, d)
        ts = cp.Variable((n, k))
        ones = np.ones((n, 1))
        constraints += [tv >= v[:k], tv >= -v[:k], tw >= w[:k], tw >= -w[:k], ts >= slope[:, :k], ts >= -slope[:, :k]]
        constraints += [
            cp.multiply(2 * dmat - 1, xn @ v) >= epsilon * (ones @ cp.sum(tv, axis=0, keepdims=True)),
            cp.multiply(2 * dmat - 1, xn @ w) >= epsilon * (ones @ cp.sum(tw, axis=0, keepdims=True)),
        ]
        data_term = cp.sum(cp.pos(1 - cp.multiply(yn, pred) + epsilon * cp.sum(ts, axis=1)))
    else:
        constraints += [cp.multiply(2 * dmat - 1, xn @ v) >= 0, cp.multiply(2 * dmat - 1, xn @ w) >= 0]
        if loss == "squared":
            data_term = 0.5 * cp.sum_squares(pred - yn)
        elif loss == "hinge":
            data_term = cp.sum(cp.pos(1 - cp.multiply(yn, pred)))
        else:
            data_term = cp.sum(cp.logistic(-cp.multiply(yn, pred)))
    reg = beta * (cp.sum(cp.norm(v, 2, axis=0)) + cp.sum(cp.norm(w, 2, axis=0)))
    problem = cp.Problem(cp.Minimize(data_term + reg), constraints)
    problem.solve(solver=getattr(cp, solver), **solver_kwargs)
    if info is not None:
        info.update(status=problem.status, solve_time=float(problem.solver_stats.solve_time or float("nan")))
    if problem.status not in ("optimal", "optimal_inaccurate"):
        raise RuntimeError(f"{solver} returned status {problem.status!r}")
    to_t = lambda a: torch.from_numpy(np.asarray(a, dtype=float).T.copy())  # noqa: E731
    return to_t(v.value), to_t(w.value), float(problem.value)


# ============================================================================ the non-convex baseline
def _init_restarts(input_dim: int, width: int, restarts: int, bias: bool, seed: int) -> list[Tensor]:
    """``restarts`` independent ``nn.Linear``-style initialisations (uniform, ``1/sqrt(fan_in)``), batched."""
    gen = torch.Generator().manual_seed(int(seed))
    a1, a2 = 1 / math.sqrt(input_dim), 1 / math.sqrt(width)
    w1 = (torch.rand(restarts, input_dim, width, generator=gen, dtype=DTYPE) * 2 - 1) * a1
    b1 = (torch.rand(restarts, 1, width, generator=gen, dtype=DTYPE) * 2 - 1) * a1 if bias else None
    w2 = (torch.rand(restarts, width, 1, generator=gen, dtype=DTYPE) * 2 - 1) * a2
    return [t for t in (w1, b1, w2) if t is not None]


class _BatchedNets(nn.Module):
    """``R`` two-layer nets evaluated at once: ``(R, n, d) -> (R, n)``; ``logits`` for the shared PGD."""

    def __init__(self, params: list[Tensor], bias: bool) -> None:
        super().__init__()
        self.params, self.bias = params, bias

    def forward(self, x: Tensor) -> Tensor:
        w1, w2 = self.params[0], self.params[-1]
        h = x @ w1 + (self.params[1] if self.bias else 0)
        return (h.clamp_min(0) @ w2)[..., 0]

    def logits(self, x: Tensor) -> Tensor:
        f = self(x).reshape(-1)
        return torch.stack([torch.zeros_like(f), f], 1)


class _AdamRun:
    """Full-batch Adam (cosine learning rate) on ``R`` random starts of the non-convex objective at once."""

    def __init__(
        self, x: Tensor, y: Tensor, width: int, beta: float, loss: str, reduction: str, restarts: int, steps: int, lr: float,
        bias: bool, seed: int, epsilon: float = 0.0, attack_steps: int = 10,
    ) -> None:
        self.x, self.y = x.to(DTYPE), y.to(DTYPE)
        self.beta, self.loss, self.scale, self.bias = beta, loss, _scale(len(y), reduction), bias
        self.params = [p.to(x.device).requires_grad_(True) for p in _init_restarts(x.shape[1], width, restarts, bias, seed)]
        self.nets = _BatchedNets(self.params, bias)
        self.opt = torch.optim.Adam(self.params, lr=lr)
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=max(1, steps))
        self.steps, self.done, self.epsilon = steps, 0, epsilon
        self.labels = ((self.y > 0).long()).repeat(restarts)
        if epsilon > 0:
            from zoo.nn.attacks import PGD

            self.attack = PGD(eps=epsilon, alpha=2.5 * epsilon / attack_steps, steps=attack_steps, clip=None)

    def objectives(self, x: Tensor | None = None) -> Tensor:
        """Per-restart objective ``scale * l(f(x), y) + beta/2 ||theta||^2`` (``(R,)``)."""
        x = self.x if x is None else x
        pred = self.nets(x.expand(len(self.params[0]), *x.shape[-2:]))
        y = self.y.expand_as(pred)
        if self.loss == "squared":
            data = 0.5 * (pred - y).pow(2).sum(1)
        elif self.loss == "hinge":
            data = (1 - y * pred).clamp_min(0).sum(1)
        else:
            data = F.softplus(-y * pred).sum(1)
        penalty = sum(p.pow(2).flatten(1).sum(1) for p in self.params)
        return self.scale * data + self.beta / 2 * penalty

    def step(self, iterations: int) -> bool:
        for _ in range(min(iterations, self.steps - self.done)):
            x = self.x
            if self.epsilon > 0:  # PGD adversarial training (Madry et al.) of every start
                xb = x.expand(len(self.params[0]), *x.shape).contiguous()
                x = self.attack(_LogitsOf(self.nets), xb, self.labels).detach()
            self.opt.zero_grad(set_to_none=True)
            self.objectives(x).sum().backward()
            self.opt.step()
            self.sched.step()
            self.done += 1
        return self.done >= self.steps

    def best(self) -> tuple[int, Tensor]:
        with torch.no_grad():
            values = self.objectives()
        return int(values.argmin()), values


class _LogitsOf(nn.Module):
    def __init__(self, nets: _BatchedNets) -> None:
        super().__init__()
        self.nets = nets

    def forward(self, x: Tensor) -> Tensor:
        return self.nets.logits(x)


def train_nonconvex(
    x: Tensor, y: Tensor, width: int, beta: float, loss: str = "squared", reduction: str = "sum", restarts: int = 10,
    steps: int = 4000, lr: float = 1e-2, bias: bool = True, seed: int = 0, epsilon: float = 0.0,
) -> tuple[nn.Sequential, Tensor]:
    """The equivalent non-convex network trained by full-batch Adam from ``restarts`` random starts.

    Returns the best start as an ``nn.Sequential`` and every start's final objective (``(restarts,)``).
    ``x`` raw inputs, ``y`` targets in {-1, +1}; ``epsilon > 0`` trains on L-inf PGD examples.
    """
    run = _AdamRun(x, y, width, beta, loss, reduction, restarts, steps, lr, bias, seed, epsilon)
    run.step(steps)
    idx, values = run.best()
    return _sequential_from_restart(run.params, idx, bias), values


def _sequential_from_restart(params: list[Tensor], idx: int, bias: bool) -> nn.Sequential:
    w1, w2 = params[0][idx].detach(), params[-1][idx].detach()
    u = torch.cat([w1.T, params[1][idx].detach().T], 1) if bias else w1.T
    return to_sequential(u, w2[:, 0], w1.shape[0], bias=bias)


# ============================================================================ certificates
def certified_margins(net: nn.Sequential, x: Tensor, y: Tensor, epsilon: float) -> Tensor:
    """Exact worst-case margins ``min_{||d||_inf <= eps} y f(x + d)`` where no neuron can change state, else ``-inf``.

    If ``|x^T u_j + b_j| >= eps ||u_j||_1`` for every neuron, each neuron is either on or off over the
    whole ball, ``f`` is linear there and the worst case is ``y f(x) - eps ||sum_{j on} alpha_j u_j||_1``.
    A sample with a positive value is certifiably robust; the robust convex program enforces the
    stability on its training points. ``y`` in {-1, +1}.
    """
    with torch.no_grad():
        lin1, lin2 = net[0], net[2]
        dtype = lin1.weight.dtype
        x, y = x.to(dtype), y.to(dtype)
        pre = x @ lin1.weight.T + (lin1.bias if lin1.bias is not None else 0)  # (n, m)
        radius = epsilon * lin1.weight.abs().sum(1)  # (m,)
        stable = (pre.abs() >= radius - 1e-9).all(1)
        on = (pre > 0).to(dtype)
        slope = (on * lin2.weight[0]) @ lin1.weight  # (n, d): gradient of f on each sample's piece
        f = (pre.clamp_min(0) @ lin2.weight.T)[:, 0]
        worst = y * f - epsilon * slope.abs().sum(1)
        return torch.where(stable, worst, torch.full_like(worst, float("-inf")))


# ============================================================================ the Lightning wrapper
class ConvexReLU(ZooModule):
    """A two-layer ReLU classifier trained to global optimality through its convex reformulation.

    ``zoo fit`` runs the chosen solver on the whole training set (gathered from the DataModule's
    train loader at the start of fit; labels {0, 1} become targets {-1, +1}): every training step
    performs ``iters_per_step`` solver iterations and exports the current solution into ``self.net``,
    an ordinary ``nn.Sequential(Linear(input_dim, width), ReLU(), Linear(width, 1))`` (float64), and
    the fit stops itself after ``max_iters`` iterations (or at ``tol``). ``forward(x)`` returns the
    score ``f(x)`` (``(N,)``); class 1 when positive.

    Args:
        input_dim: input features (the bias column is added inside).
        width: neurons of the exported network; unused neurons are zero. A sparsest optimum of the exact
            program needs at most ``n + 1`` (Caratheodory), but ADMM's iterates keep many small groups
            (75-393 on moons with n = 40), hence the default 512; truncation keeps the largest neurons
            and is logged as ``train/dropped_neurons``.
        solver: ``"admm"`` (the paper's Algorithm 1, squared loss), ``"clarabel"`` (CVXPY + Clarabel,
            the reference; any loss, the robust program), ``"scp"`` (gated sampled convex program by
            FISTA; publishes a :class:`GatedReLU`) or ``"adam"`` (the non-convex network by Adam,
            the back-propagation baseline).
        arrangements: ``"exact"`` (all patterns of the training data) or ``"sampled"`` (``num_hyperplanes``
            random ones: the approximate formulation, whose optimum bounds the true one from above).
        num_hyperplanes: ``P_s`` for ``"sampled"``.
        loss / reduction: ``squared | hinge | logistic``; ``sum`` (the paper) or ``mean`` (divided by n).
        beta: weight decay / group-lasso weight.
        rho, dual_step: ADMM penalty (on the summed-loss scale, see the module notes) and scaled dual step.
        max_iters, tol, iters_per_step: solver iterations (Adam steps), early stop on relative residuals.
        epsilon: L-inf radius of the robust convex program (``clarabel``, hinge) or of PGD adversarial
            training (``adam``); 0 for standard training.
        lr, restarts: Adam's learning rate (cosine schedule over ``max_iters``) and number of random starts
            (the best is exported; all are reported).
        attack_epsilon, attack_steps: PGD-k evaluation radius (0: none) for the robust metrics; ``attack_steps``
            is also the k of adam's PGD training.
        bias: first-layer bias (a column of ones in the convex program).
        seed: hyperplane sampling and Adam initialisation.

    >>> model = ConvexReLU(width=4)
    >>> model(torch.zeros(3, 2)).shape
    torch.Size([3])
    """

    def __init__(
        self,
        input_dim: int = 2,
        width: int = 512,
        solver: str = "admm",
        arrangements: str = "exact",
        num_hyperplanes: int = 100,
        loss: str = "squared",
        reduction: str = "sum",
        beta: float = 1.0,
        rho: float = 2.0,
        dual_step: float = 1.0,
        max_iters: int = 2000,
        tol: float = 0.0,
        iters_per_step: int = 500,
        epsilon: float = 0.0,
        lr: float = 0.01,
        restarts: int = 10,
        attack_epsilon: float = 0.0,
        attack_steps: int = 20,
        bias: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
        if arrangements not in ("exact", "sampled"):
            raise ValueError(f"arrangements must be 'exact' or 'sampled', got {arrangements!r}")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        _scale(1, reduction)
        if solver in ("admm", "scp") and (loss != "squared" or epsilon > 0):
            raise ValueError(f"solver={solver!r} handles the squared loss without epsilon; use solver='clarabel' for {loss}/robust")
        if solver == "scp" and arrangements != "sampled":
            raise ValueError("solver='scp' is the sampled convex program: set arrangements='sampled'")
        if epsilon > 0 and loss != "hinge" and solver == "clarabel":
            raise ValueError("the robust convex program (epsilon > 0) is written for the hinge loss: set loss='hinge'")
        if min(input_dim, width, max_iters, iters_per_step, restarts, num_hyperplanes) < 1 or beta < 0 or epsilon < 0:
            raise ValueError("input_dim, width, max_iters, iters_per_step, restarts, num_hyperplanes must be positive; beta, epsilon >= 0")
        self.save_hyperparameters()
        self.automatic_optimization = False
        if solver == "scp":
            self.net: nn.Module = GatedReLU(input_dim, num_hyperplanes, bias)
        else:
            self.net = nn.Sequential(nn.Linear(input_dim, width, bias=bias), nn.ReLU(), nn.Linear(width, 1, bias=False)).to(DTYPE)
            for p in self.net.parameters():
                nn.init.zeros_(p)
        self._run: Any = None
        self._data: tuple[Tensor, Tensor] | None = None

    # ------------------------------------------------------------------ model
    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.to(DTYPE)).reshape(-1)

    def to_sequential(self) -> nn.Module:
        """A standalone copy of the exported network (``nn.Sequential``, or the gated model for ``scp``)."""
        import copy

        return copy.deepcopy(self.net).cpu()

    def configure_optimizers(self) -> list:
        return []  # the solver is not SGD (solver='adam' keeps its batched Adam inside the run)

    # ------------------------------------------------------------------ fit = run the solver
    def _gather_train_data(self) -> tuple[Tensor, Tensor]:
        loader = self.trainer.train_dataloader
        if loader is None and self.trainer.datamodule is not None:
            loader = self.trainer.datamodule.train_dataloader()
        xs, ys = [], []
        for batch in loader:
            xs.append(batch[0].reshape(len(batch[0]), -1))
            ys.append(batch[1].reshape(-1))
        x, y = torch.cat(xs).to(self.device, DTYPE), torch.cat(ys).to(self.device)
        if x.shape[1] != self.hparams.input_dim:
            raise ValueError(f"the data has {x.shape[1]} features, the model was built with input_dim={self.hparams.input_dim}")
        labels = torch.unique(y)
        if not set(labels.tolist()) <= {0, 1}:
            raise ValueError(f"ConvexReLU is a binary classifier: labels must be 0/1, got {labels.tolist()[:5]}")
        return x, y.to(DTYPE) * 2 - 1

    def on_train_start(self) -> None:
        hp = self.hparams
        x, y = self._gather_train_data()
        self._data = (x, y)
        self._seconds, self._dropped, self._violation = 0.0, 0, float("nan")
        self._masks: Tensor | None = None
        self._state: Any = None
        self._iterations = 0
        start = time.perf_counter()
        if hp.solver == "adam":
            self._run = _AdamRun(
                x, y, hp.width, hp.beta, hp.loss, hp.reduction, hp.restarts, hp.max_iters, hp.lr, hp.bias, hp.seed, hp.epsilon, hp.attack_steps
            )
        else:
            xt = add_bias(x, hp.bias)
            if hp.arrangements == "exact":
                self._masks = enumerate_arrangements(xt).to(self.device)
            else:
                masks, gates = sample_arrangements(xt, hp.num_hyperplanes, hp.seed)
                self._masks, self._gates = masks.to(self.device), gates.to(self.device)
            if hp.solver == "admm":
                self._run = ADMMSolver(xt, y, self._masks, self._beta_sum(), hp.rho, hp.dual_step)
                self._state = self._run.init_state()
        self._seconds += time.perf_counter() - start

    def _beta_sum(self) -> float:
        """``beta`` on the summed-loss scale the solvers work on (``beta * n`` for a mean loss)."""
        assert self._data is not None
        return self.hparams.beta / _scale(len(self._data[1]), self.hparams.reduction)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        hp = self.hparams
        assert self._data is not None, "ConvexReLU trains with trainer.fit (on_train_start gathers the data)"
        x, y = self._data
        xt = add_bias(x, hp.bias)
        nan = float("nan")
        logs = dict.fromkeys(TRAIN_METRICS, nan)
        start = time.perf_counter()
        if hp.solver == "adam":
            done = self._run.step(hp.iters_per_step)
            idx, values = self._run.best()
            self.net.load_state_dict(_sequential_from_restart(self._run.params, idx, hp.bias).state_dict())
            values = values.sort().values
            logs["train/objective_median"], logs["train/objective_worst"] = float(values.median()), float(values[-1])
            self._iterations = self._run.done
        elif hp.solver == "admm":
            self._state = self._run.iterate(self._state, min(hp.iters_per_step, hp.max_iters - self._state.iterations))
            v, w = self._run.split(self._state.v)
            self._export(v, w)
            self._iterations = self._state.iterations
            rel = max(self._state.primal_residual, self._state.dual_residual) / max(1.0, float(self._state.u.norm()))
            done = (hp.tol > 0 and rel < hp.tol) or self._iterations >= hp.max_iters
            logs["train/primal_residual"], logs["train/dual_residual"] = self._state.primal_residual, self._state.dual_residual
            logs["train/convex_objective"] = convex_objective(xt, y, self._masks, v, w, hp.beta, hp.loss, hp.reduction)
        elif hp.solver == "scp":
            todo = min(hp.iters_per_step, hp.max_iters - self._iterations)
            self._state, ran = fista_gated(xt, y, self._masks, self._beta_sum(), todo, init=self._state, tol=hp.tol)
            self._iterations += ran
            with torch.no_grad():
                self.net.gates.zero_()
                self.net.weight.zero_()
                self.net.gates[: len(self._gates)] = self._gates
                self.net.weight[: len(self._state)] = self._state
            done = self._iterations >= hp.max_iters or ran < todo
        else:
            v, w, value = solve_cvxpy(xt, y, self._masks, self._beta_sum(), hp.loss, hp.epsilon, n_features=hp.input_dim, **CLARABEL_SETTINGS)
            self._export(v.to(self.device), w.to(self.device), rel_tol=1e-7)
            logs["train/convex_objective"] = value * _scale(len(y), hp.reduction)
            self._iterations, done = 1, True
        self._seconds += time.perf_counter() - start
        logs.update(self._train_metrics(x, y, final=done))
        if hp.solver == "scp":
            logs["train/convex_objective"] = logs["train/objective"]  # the gated program is the model's own objective
        logs["train/objective_gap"] = logs["train/objective"] - logs["train/convex_objective"]
        if hp.solver != "adam":
            logs["train/objective_median"] = logs["train/objective_worst"] = logs["train/objective"]
        logs.update({"train/iterations": float(self._iterations), "train/solve_seconds": self._seconds})
        self.log_dict({k: torch.tensor(v, dtype=DTYPE) for k, v in logs.items()}, on_step=True, on_epoch=False, batch_size=len(y))
        if done:
            self.trainer.should_stop = True

    def _export(self, v: Tensor, w: Tensor, rel_tol: float = 0.0) -> None:
        hp = self.hparams
        u, alpha = recover_network(v, w, rel_tol)
        self._dropped = max(0, len(alpha) - hp.width)
        if self._dropped:  # keep the largest neurons; reported as train/dropped_neurons
            keep = alpha.abs().argsort(descending=True)[: hp.width]
            u, alpha = u[keep], alpha[keep]
        _load_network(self.net, u, alpha, hp.bias)  # type: ignore[arg-type]
        assert self._data is not None and self._masks is not None
        self._violation = cone_violation(add_bias(self._data[0], hp.bias), self._masks, v, w, hp.epsilon, hp.input_dim)

    def _train_metrics(self, x: Tensor, y: Tensor, final: bool) -> dict[str, float]:
        hp = self.hparams
        gated = isinstance(self.net, GatedReLU)
        active = self.net.weight.norm(dim=1) > 0 if gated else self.net[2].weight[0] != 0  # type: ignore[index]
        out = {
            # the objective of the program the solver targets: for the robust convex program, the exported
            # net's exact worst-case hinge loss (adam's PGD training reports the clean objective)
            "train/objective": network_objective(
                self.net, x, y, hp.beta, hp.loss, hp.reduction, hp.epsilon if hp.solver == "clarabel" else 0.0
            ),
            "train/acc": float(((self(x) > 0) == (y > 0)).double().mean()),
            "train/width": float(active.sum()),
            "train/num_patterns": float(len(self._masks)) if self._masks is not None else float("nan"),
            "train/cone_violation": self._violation,
            "train/dropped_neurons": float(self._dropped),
        }
        if final:
            out.update({f"train/{k}": v for k, v in self._robust_metrics(x, y).items()})
        return out

    # ------------------------------------------------------------------ evaluation
    def _robust_metrics(self, x: Tensor, y: Tensor) -> dict[str, float]:
        """PGD-k accuracy (L-inf, ``attack_epsilon``) of the exported net, and its certified accuracy; NaN when off."""
        from zoo.nn.attacks import PGD

        hp = self.hparams
        eps = hp.attack_epsilon
        if eps <= 0:
            return {"pgd_acc": float("nan"), "certified_acc": float("nan")}
        attack = PGD(eps=eps, alpha=2.5 * eps / hp.attack_steps, steps=hp.attack_steps, clip=None)
        x_adv = attack(_ScoreLogits(self.net), x.to(DTYPE), (y > 0).long())
        with torch.no_grad():
            robust = ((self(x_adv) > 0) == (y > 0)).double().mean()
        certified = float("nan")
        if not isinstance(self.net, GatedReLU):
            certified = float((certified_margins(self.net, x, y, eps) > 0).double().mean())  # type: ignore[arg-type]
        return {"pgd_acc": float(robust), "certified_acc": certified}

    def _eval_step(self, batch: Any, stage: str) -> None:
        x, labels = batch[0].reshape(len(batch[0]), -1).to(DTYPE), batch[1].reshape(-1)
        y = labels.to(DTYPE) * 2 - 1
        logs = {"acc": float(((self(x) > 0) == (labels > 0)).double().mean()), **self._robust_metrics(x, y)}
        self.log_dict({f"{stage}/{k}": torch.tensor(v, dtype=DTYPE) for k, v in logs.items()}, batch_size=len(y))

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self(batch[0].reshape(len(batch[0]), -1))


class _ScoreLogits(nn.Module):
    """A score network ``f`` as two-class logits ``[0, f]`` for the shared (cross-entropy) PGD."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        f = self.net(x.to(DTYPE)).reshape(-1)
        return torch.stack([torch.zeros_like(f), f], 1)
