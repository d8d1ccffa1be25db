"""ADMM for the hinge-loss convex program and the robust (L-inf) hinge program, by extra splitting.

Paper: Bai, Gautam, Sojoudi, arXiv 2201.01965. Its ADMM for general convex losses keeps the squared-loss
splitting (``u = v`` for the group lasso, ``G u = s`` for the cones) and handles the loss inside the
``u``-step; its robust program adds the ``epsilon ||.||_1`` terms. Here every non-smooth piece gets
its own copy so that each ADMM step is closed form and the ``x``-step is one constant linear system:

    min  sum_k (1 - z_k)_+ + beta sum_g ||v_g|| + 1(s >= 0)   s.t.  u = v,  A x = z,  B x = s

with ``x = [u (2P x d), t (2P x k), r (n x k)]``: ``u`` the stacked ``[v_i; w_i]`` groups, ``t >= |u[:, :k]|``
(the ``||u_g||_1`` of the robust cones), ``r >= |slope|`` (each sample's ``||sum_i d_ik (v_i - w_i)[:k]||_1``),
``A x`` each sample's robust margin ``y_k f_k - epsilon sum_j r_kj`` and ``B x >= 0`` the linear constraints
(robust cones ``(2 D_i - I) X~ u_g - epsilon 1 1^T t_g``, ``t -+ u >= 0``, ``r -+ slope >= 0``). With
``epsilon = 0`` there are no ``t`` and ``r`` (``k = 0``) and this is the plain hinge program. The system
matrix ``I_u + A^T A + B^T B`` is dense (``N = 2P (d + k) + n k`` unknowns), factored once by Cholesky.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from scipy.optimize import linprog
from torch import Tensor

from zoo.convex_relu.patterns import DTYPE

__all__ = ["HingeADMM", "HingeADMMState", "INTERIOR_TOL", "MAX_UNKNOWNS", "hinge_prox", "robust_cone_depth"]

#: Largest dense system (unknowns) the hinge/robust ADMM factors; beyond it use fewer hyperplanes or Clarabel.
MAX_UNKNOWNS = 8000
#: A robust cone whose depth (:func:`robust_cone_depth`) is at most this has no interior; ADMM drops its pattern.
INTERIOR_TOL = 1e-7


def robust_cone_depth(x: np.ndarray, mask: np.ndarray, epsilon: float, k: int) -> float:
    """``max s`` s.t. ``(2 D - I) X~ u - epsilon ||u[:k]||_1 >= s`` (every row), ``||u||_inf <= 1``: 0 iff the cone has no interior.

    An LP in ``(u, t, s)`` with ``t >= |u[:k]|``; ``u = 0`` is feasible, so the depth is >= 0."""
    n, d = x.shape
    e = (2 * mask.astype(float) - 1)[:, None] * x  # rows (2 D_i - I) x~_i
    cone = np.hstack([-e, np.full((n, k), epsilon), np.ones((n, 1))])  # -(e u) + eps 1^T t + s <= 0
    eye = np.eye(d)[:k]
    absval = np.vstack([np.hstack([eye, -np.eye(k), np.zeros((k, 1))]), np.hstack([-eye, -np.eye(k), np.zeros((k, 1))])])
    cost = np.zeros(d + k + 1)
    cost[-1] = -1.0
    bounds = [(-1.0, 1.0)] * d + [(0.0, None)] * k + [(None, None)]
    res = linprog(cost, A_ub=np.vstack([cone, absval]), b_ub=np.zeros(n + 2 * k), bounds=bounds, method="highs")
    if res.status != 0:
        raise RuntimeError(f"the robust-cone depth LP failed ({res.message}); check the inputs for NaN/inf")
    return float(-res.fun)


def hinge_prox(q: Tensor, rho: float | Tensor) -> Tensor:
    """``argmin_z (1 - z)_+ + rho/2 (z - q)^2`` elementwise: ``q`` above 1, ``q + 1/rho`` below ``1 - 1/rho``, else 1."""
    return torch.where(q >= 1, q, torch.where(q <= 1 - 1 / rho, q + 1 / rho, torch.ones_like(q)))


@dataclass
class HingeADMMState:
    """Iterates: ``x`` (all primal unknowns), copies ``v`` (groups), ``z`` (margins), ``s >= 0`` (constraints) and scaled duals."""

    x: Tensor
    v: Tensor
    z: Tensor
    s: Tensor
    lam: Tensor
    mu: Tensor
    nu: Tensor
    iterations: int = 0
    primal_residual: float = float("inf")
    dual_residual: float = float("inf")


def _operators(x: np.ndarray, y: np.ndarray, masks: np.ndarray, epsilon: float, k: int) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """The sparse maps ``A`` (robust margins, ``n x N``) and ``B`` (constraints ``>= 0``, ``m x N``) of the split program."""
    n, d = x.shape
    p2 = 2 * len(masks)
    dm = np.concatenate([masks, masks]).T.astype(float)  # (n, 2P)
    sign = np.concatenate([np.ones(len(masks)), -np.ones(len(masks))])
    dms, e = dm * sign, 2 * dm - 1
    nu_, nt = p2 * d, p2 * k
    n_unknowns = nu_ + nt + n * k
    uidx = np.arange(nu_).reshape(p2, d)
    tidx = nu_ + np.arange(nt).reshape(p2, k)
    ridx = nu_ + nt + np.arange(n * k).reshape(n, k)
    rows, cols, vals = [], [], []

    def add(r: np.ndarray, c: np.ndarray, v: np.ndarray) -> None:
        r, c, v = np.broadcast_arrays(r, c, v)
        rows.append(r.ravel())
        cols.append(c.ravel())
        vals.append(v.ravel())

    # A: margin_i = y_i sum_g dms[i, g] x_i . u_g - epsilon sum_j r_ij
    add(np.arange(n)[:, None, None], uidx[None], (y[:, None] * dms)[:, :, None] * x[:, None, :])
    if k:
        add(np.arange(n)[:, None], ridx, np.full((n, k), -epsilon))
    a = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n_unknowns))
    rows, cols, vals = [], [], []
    cone = (np.arange(n)[:, None] * p2 + np.arange(p2)[None])  # row of (sample i, group g)
    add(cone[:, :, None], uidx[None], e[:, :, None] * x[:, None, :])  # (2 D_i - I) X~ u_g ...
    m = n * p2
    if k:
        add(cone[:, :, None], tidx[None], np.full((n, p2, k), -epsilon))  # ... - epsilon sum_j t_gj >= 0
        trow = m + np.arange(2 * nt).reshape(2, p2, k)  # t - u >= 0, t + u >= 0
        for half, s in ((0, -1.0), (1, 1.0)):
            add(trow[half], tidx, np.ones((p2, k)))
            add(trow[half], uidx[:, :k], np.full((p2, k), s))
        m += 2 * nt
        rrow = m + np.arange(2 * n * k).reshape(2, n, k)  # r - slope >= 0, r + slope >= 0
        for half, s in ((0, -1.0), (1, 1.0)):
            add(rrow[half], ridx, np.ones((n, k)))
            add(rrow[half][:, None, :], uidx[None, :, :k], s * dms[:, :, None] * np.ones((1, 1, k)))
        m += 2 * n * k
    b = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(m, n_unknowns))
    return a, b


class HingeADMM:
    """ADMM for the (robust, ``epsilon > 0``) hinge-loss convex program on the summed scale.

    One iteration (scaled form, penalty ``rho`` on every split, dual step ``dual_step``):

    1. ``x <- (I_u + A^T A + B^T B)^{-1} (I_u^T (v - lam) + A^T (z - mu) + B^T (s - nu))``: the matrix does not
       depend on ``rho`` and is inverted once;
    2. ``v <- `` group soft-threshold of ``u + lam`` at ``beta / rho`` (as the squared-loss Algorithm 1);
    3. ``z <- `` :func:`hinge_prox` of ``A x + mu`` (row-scaled); ``s <- max(0, B x + nu)``;
    4. ``lam += dual_step (u - v)``, ``mu += dual_step (A x - z)``, ``nu += dual_step (B x - s)``.

    With ``epsilon > 0``, patterns whose robust cone has no interior (:func:`robust_cone_depth` at most
    ``interior_tol``) are dropped before the splitting and their groups stay 0 (``dropped_patterns`` counts
    them): on such cones ADMM settles at an infeasible point below the optimum instead of converging.
    Rows of ``A`` and ``B`` are scaled to unit norm (the same constraints, better conditioned) and steps 2-4
    use over-relaxation ``relax`` (Boyd et al. 2011, Sec. 3.4.3; 1: none).
    ``x`` includes the bias column; the robust terms cover its first ``n_features`` columns (the inputs).
    """

    def __init__(
        self, x: Tensor, y: Tensor, masks: Tensor, beta: float, rho: float = 1.0, dual_step: float = 1.0, epsilon: float = 0.0,
        n_features: int | None = None, relax: float = 1.6, interior_tol: float = INTERIOR_TOL,
    ) -> None:
        if rho <= 0 or beta < 0 or dual_step <= 0 or epsilon < 0 or not 0 < relax < 2:
            raise ValueError(
                f"need rho > 0, beta >= 0, dual_step > 0, epsilon >= 0 and 0 < relax < 2; got {rho}, {beta}, {dual_step}, {epsilon}, {relax}"
            )
        n, d = x.shape
        k = (n_features if n_features is not None else d) if epsilon > 0 else 0
        if not 0 <= k <= d:
            raise ValueError(f"n_features must be in [0, {d}], got {n_features}")
        self.num_patterns, self.d, self.k, self.n = len(masks), d, k, n
        self.beta, self.rho, self.dual_step, self.epsilon = float(beta), float(rho), float(dual_step), float(epsilon)
        self.relax = float(relax)
        xn, yn, mn = x.detach().cpu().double().numpy(), y.detach().cpu().double().numpy(), masks.detach().cpu().numpy()
        keep_pattern = np.ones(len(mn), dtype=bool)
        if k:  # drop the patterns whose robust cone has an empty interior (their groups stay 0)
            keep_pattern = np.array([robust_cone_depth(xn, m, self.epsilon, k) > interior_tol for m in mn], dtype=bool)
        self.kept = torch.from_numpy(np.flatnonzero(keep_pattern)).to(x.device)
        self.dropped_patterns = int((~keep_pattern).sum())
        mn = mn[keep_pattern]
        self.num_unknowns = 2 * len(mn) * (d + k) + n * k
        if self.num_unknowns > MAX_UNKNOWNS:
            raise ValueError(
                f"the hinge/robust ADMM factors a dense {self.num_unknowns}-unknown system (limit {MAX_UNKNOWNS}): "
                "use arrangements='sampled' with fewer num_hyperplanes, or solver='clarabel'"
            )
        a, b = _operators(xn, yn, mn, self.epsilon, k)
        a_norm = np.sqrt(np.asarray(a.multiply(a).sum(1))).ravel()
        b_norm = np.sqrt(np.asarray(b.multiply(b).sum(1))).ravel()
        keep = b_norm > 0
        a = sp.diags(1 / np.maximum(a_norm, 1e-300)) @ a
        b = (sp.diags(1 / np.maximum(b_norm, 1e-300)) @ b)[keep]
        system = (a.T @ a + b.T @ b).toarray()
        self.nu_ = 2 * len(mn) * d
        system[np.arange(self.nu_), np.arange(self.nu_)] += 1.0
        device = x.device
        self.scale = torch.from_numpy(a_norm).to(device)  # margin_i = scale_i * (A^ x)_i
        self.inverse = torch.linalg.inv(torch.from_numpy(system)).to(device)
        self.a = torch.from_numpy(a.toarray()).to(device)  # n x N, dense (n rows)
        self.b, self.bt = (_csr(m).to(device) for m in (b.tocsr(), b.T.tocsr()))

    def init_state(self) -> HingeADMMState:
        zeros = lambda *shape: torch.zeros(*shape, dtype=DTYPE, device=self.a.device)  # noqa: E731
        p2, m = 2 * len(self.kept), self.b.shape[0]
        return HingeADMMState(zeros(self.num_unknowns), zeros(p2, self.d), zeros(self.n), zeros(m), zeros(p2, self.d), zeros(self.n), zeros(m))

    def _prox_margin(self, q: Tensor) -> Tensor:
        """Step 3 for the scaled margins: ``z_i = w_i / c_i`` with ``w_i`` the hinge prox at ``c_i q_i``, penalty ``rho / c_i^2``."""
        c = self.scale
        return hinge_prox(c * q, self.rho / (c * c)) / c

    def iterate(self, state: HingeADMMState, iterations: int) -> HingeADMMState:
        """Run ``iterations`` iterations from ``state`` (a new state; residuals of the last one, Boyd et al. 2011 Sec. 3.3)."""
        x, v, z, s, lam, mu, nu = state.x, state.v, state.z, state.s, state.lam, state.mu, state.nu
        step, alpha, primal, dual = self.dual_step, self.relax, state.primal_residual, state.dual_residual
        for it in range(iterations):
            rhs = self.a.T @ (z - mu) + self.bt @ (s - nu)
            rhs[: self.nu_] += (v - lam).reshape(-1)
            x = self.inverse @ rhs  # step 1
            u = x[: self.nu_].reshape(v.shape)
            ax, bx = self.a @ x, self.b @ x
            hu, ha, hb = alpha * u + (1 - alpha) * v, alpha * ax + (1 - alpha) * z, alpha * bx + (1 - alpha) * s  # relaxation
            q = hu + lam
            v_new = q * (1 - self.beta / self.rho / q.norm(dim=1, keepdim=True).clamp_min(1e-300)).clamp_min(0)  # step 2
            z_new, s_new = self._prox_margin(ha + mu), (hb + nu).clamp_min(0)  # step 3
            lam, mu, nu = lam + step * (hu - v_new), mu + step * (ha - z_new), nu + step * (hb - s_new)  # step 4
            if it == iterations - 1:
                primal = float(((u - v_new).pow(2).sum() + (ax - z_new).pow(2).sum() + (bx - s_new).pow(2).sum()).sqrt())
                change = self.a.T @ (z_new - z) + self.bt @ (s_new - s)
                change[: self.nu_] += (v_new - v).reshape(-1)
                dual = self.rho * float(change.norm())
            v, z, s = v_new, z_new, s_new
        return HingeADMMState(x, v, z, s, lam, mu, nu, state.iterations + iterations, primal, dual)

    def split(self, groups: Tensor) -> tuple[Tensor, Tensor]:
        """``(v, w)``: the stacked groups of the kept patterns back into two ``(P, d)`` halves (dropped patterns: 0)."""
        half = len(self.kept)
        v, w = (groups.new_zeros(self.num_patterns, self.d) for _ in range(2))
        v[self.kept], w[self.kept] = groups[:half], groups[half:]
        return v, w


def _csr(m: sp.csr_matrix) -> Tensor:
    """A scipy CSR matrix as a torch CSR tensor (float64)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's "sparse CSR is beta" notice
        return torch.sparse_csr_tensor(
            torch.from_numpy(m.indptr).long(), torch.from_numpy(m.indices).long(), torch.from_numpy(m.data), size=m.shape
        )
