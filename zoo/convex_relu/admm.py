"""The paper's ADMM for the exact or sampled convex program with the squared loss (its Algorithm 1)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from zoo.convex_relu.patterns import DTYPE

__all__ = ["ADMMSolver", "ADMMState"]


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
