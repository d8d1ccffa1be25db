"""Robust alternating minimisation for low-rank matrix completion.

Paper: *Low Rank Matrix Completion via Robust Alternating Minimization in Nearly Linear Time*
(Gu, Song, Yin, Zhang; ICLR 2024; arXiv 2302.11068). No official code (a theory paper). The
baseline is exact alternating minimisation, AltMinComplete of Jain, Netrapalli and Sanghavi
(STOC 2013, arXiv 1212.0467).

What it does: from the observed entries ``P_Omega(M)`` of a rank-``k`` matrix, start from the top-``k``
left singular vectors of ``P_Omega(M) / p`` (rows clipped, then QR), then alternate two least-squares
problems, ``V = argmin ||P_Omega(U V^T - M)||_F`` and ``U = argmin ||P_Omega(U V^T - M)||_F``, each a set
of independent ``k x k`` normal equations, one per column (row). The paper's point is that each of
these may be solved only approximately and the iteration still converges ("robust" alternating
minimisation): with a sketching preconditioner and a few iterations of a Krylov solver a half-step
costs ``O~(|Omega| k)`` instead of the ``O(|Omega| k^2)`` of forming the normal equations.

Here: ``solver="exact"`` forms and Cholesky-solves every ``k x k`` system (JNS13); ``solver="cg"`` runs
``cg_iters`` conjugate-gradient iterations on all the normal equations at once, each matvec costing
``4 |Omega| k`` flops; ``solver="sketch_cg"`` preconditions that CG with ``R^T R`` where ``R`` comes from the
QR of a CountSketch (``sketch_factor * k`` rows) of each column's design matrix. Iterative solves are
warm-started from the current estimate carried into the new basis after each QR (the paper's
analysis needs the per-step error to shrink with the iterate; a cold start from zero does not).

Deviations and guesses:
- no sample splitting by default (``sample_split=True`` splits Omega into ``2 T + 1`` random parts as
  in the analysis); the practical algorithm reuses all entries every step;
- the incoherence clip of the initial rows uses ``2 x`` the median row norm (the paper's ``2 mu sqrt(k/m)``
  needs the unknown ``mu``), and clips rows to that norm instead of zeroing them;
- the sketch is CountSketch with ``ceil(sketch_factor * k)`` rows per column (the paper allows SRHT or
  CountSketch with ``O(k log k)`` rows) and the QR adds ``sqrt(ridge)`` rows so columns with fewer than
  ``k`` observations stay solvable; the inner solver is CG on the normal equations (the paper's
  analysis uses a high-accuracy solver; its constants are not used);
- a ridge ``ridge * mean diagonal`` keeps the exact ``k x k`` systems positive definite;
- flops are counted from the operation counts (a multiply-add is 2 flops), not measured.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from zoo.templates.solver import SolverModule

__all__ = [
    "SOLVERS",
    "spectral_init",
    "normal_equations",
    "normal_matvec",
    "exact_solve",
    "sketch_preconditioner",
    "cg_solve",
    "altmin_round",
    "round_flops",
    "relative_error",
    "altmin_complete",
    "RobustAltMinCompletion",
    "ExactAltMin",
]

SOLVERS = ("exact", "cg", "sketch_cg")


# ---------------------------------------------------------------------- Algorithm step 1: initialisation
def spectral_init(rows: Tensor, cols: Tensor, vals: Tensor, m: int, n: int, rank: int, p: float, clip_rows: bool = True) -> Tensor:
    """Top-``rank`` left singular vectors of ``P_Omega(M) / p``, rows clipped to 2x the median row norm, QR (``(m, rank)``)."""
    y = torch.zeros(m, n, dtype=vals.dtype)
    y[rows, cols] = vals / p
    u = torch.linalg.svd(y, full_matrices=False)[0][:, :rank]
    if clip_rows:  # incoherence projection (JNS13 Alg. 2 step 3): no row far above sqrt(k/m)
        norms = u.norm(dim=1)
        tau = 2.0 * norms.median()
        u = u * torch.clamp(tau / norms.clamp_min(1e-300), max=1.0)[:, None]
    return torch.linalg.qr(u)[0]


# ---------------------------------------------------------------------- Algorithm step 2: one least-squares half-step
def _by_column(rows: Tensor, cols: Tensor, values: Tensor, n: int, m: int) -> Tensor:
    """The observations as a sparse CSR ``(n, m)`` matrix, entry ``(j, i)`` = ``values`` at ``(i, j)``."""
    with warnings.catch_warnings():  # torch flags sparse CSR as beta; products are all it is used for
        warnings.simplefilter("ignore", UserWarning)
        coo = torch.sparse_coo_tensor(torch.stack([cols, rows]), values, (n, m), check_invariants=False)
        return coo.coalesce().to_sparse_csr()


def normal_equations(u: Tensor, rows: Tensor, cols: Tensor, vals: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """Per column ``j``: ``G_j = sum_{i:(i,j) in Omega} u_i u_i^T`` (``(n, k, k)``) and ``b_j = sum_i M_ij u_i`` (``(n, k)``)."""
    m, k = u.shape
    outer = (u[:, :, None] * u[:, None, :]).reshape(m, k * k)
    gram = (_by_column(rows, cols, torch.ones_like(vals), n, m) @ outer).reshape(n, k, k)  # 2 |Omega| k^2 flops
    rhs = _by_column(rows, cols, vals, n, m) @ u
    return gram, rhs


def normal_matvec(pattern: Tensor, u: Tensor, v: Tensor) -> Tensor:
    """``G_j v_j`` for every column without forming ``G``: ``sum_{i in Omega_j} u_i <u_i, v_j>`` (``4 |Omega| k`` flops).

    ``pattern`` is the ``(n, m)`` CSR pattern of Omega (:func:`_by_column` of ones): ``<u_i, v_j>`` on it
    (a sampled product), then that sparse matrix times ``U``.
    """
    pred = torch.sparse.sampled_addmm(pattern, v, u.T, beta=0.0)
    return pred @ u


def exact_solve(u: Tensor, rows: Tensor, cols: Tensor, vals: Tensor, n: int, ridge: float = 1e-10) -> Tensor:
    """JNS13's exact step: ``v_j = G_j^{-1} b_j`` for every column (batched Cholesky), ``(n, k)``."""
    gram, rhs = normal_equations(u, rows, cols, vals, n)
    k = u.shape[1]
    lam = ridge * max(float(gram.diagonal(dim1=1, dim2=2).mean()), 1e-300)
    chol = torch.linalg.cholesky(gram + lam * torch.eye(k, dtype=u.dtype))
    return torch.cholesky_solve(rhs[:, :, None], chol)[:, :, 0]


def sketch_preconditioner(u: Tensor, rows: Tensor, cols: Tensor, n: int, sketch_rows: int, generator: torch.Generator, ridge: float = 1e-10) -> Tensor:
    """``R_j`` (``(n, k, k)``, upper) from the QR of a CountSketch ``S_j X_j`` of each column's design matrix ``X_j = U[Omega_j]``.

    Each observation goes to one of ``sketch_rows`` buckets with a random sign; ``R_j^T R_j`` approximates
    ``G_j = X_j^T X_j`` (the paper's sketching preconditioner, Section 5).
    """
    k = u.shape[1]
    bucket = torch.randint(0, sketch_rows, (len(rows),), generator=generator)
    sign = torch.randint(0, 2, (len(rows),), generator=generator).to(u.dtype) * 2 - 1
    sx = torch.zeros(n * sketch_rows, k, dtype=u.dtype).index_add_(0, cols * sketch_rows + bucket, u[rows] * sign[:, None])
    scale = math.sqrt(ridge) * max(float(u.pow(2).sum(1).mean()) * len(rows) / n, 1e-300) ** 0.5
    pad = (scale * torch.eye(k, dtype=u.dtype)).expand(n, k, k)
    return torch.linalg.qr(torch.cat([sx.reshape(n, sketch_rows, k), pad], dim=1), mode="r")[1]


def _apply_preconditioner(r_factor: Tensor | None, res: Tensor) -> Tensor:
    if r_factor is None:
        return res
    z = torch.linalg.solve_triangular(r_factor.transpose(1, 2), res[:, :, None], upper=False)
    return torch.linalg.solve_triangular(r_factor, z, upper=True)[:, :, 0]


def cg_solve(u: Tensor, rows: Tensor, cols: Tensor, vals: Tensor, v0: Tensor, iters: int, r_factor: Tensor | None = None) -> Tensor:
    """``iters`` (preconditioned) CG iterations on every column's normal equations ``G_j v_j = b_j`` at once, from ``v0``."""
    n, m = v0.shape[0], u.shape[0]
    pattern = _by_column(rows, cols, torch.ones_like(vals), n, m)
    rhs = _by_column(rows, cols, vals, n, m) @ u
    v = v0.clone()
    res = rhs - normal_matvec(pattern, u, v)
    z = _apply_preconditioner(r_factor, res)
    d = z.clone()
    rz = (res * z).sum(1)
    for _ in range(iters):
        gd = normal_matvec(pattern, u, d)
        curv = (d * gd).sum(1)
        alpha = torch.where(curv > 0, rz / torch.where(curv > 0, curv, 1.0), 0.0)
        v = v + alpha[:, None] * d
        res = res - alpha[:, None] * gd
        z = _apply_preconditioner(r_factor, res)
        rz_new = (res * z).sum(1)
        beta = torch.where(rz > 0, rz_new / torch.where(rz > 0, rz, 1.0), 0.0)
        d = z + beta[:, None] * d
        rz = rz_new
    return v


def _half_step(
    u: Tensor,
    rows: Tensor,
    cols: Tensor,
    vals: Tensor,
    n: int,
    warm: Tensor,
    solver: str,
    cg_iters: int,
    sketch_rows: int,
    generator: torch.Generator,
    ridge: float,
) -> Tensor:
    if solver == "exact":
        return exact_solve(u, rows, cols, vals, n, ridge)
    r_factor = sketch_preconditioner(u, rows, cols, n, sketch_rows, generator, ridge) if solver == "sketch_cg" else None
    return cg_solve(u, rows, cols, vals, warm, cg_iters, r_factor)


def altmin_round(
    u: Tensor,
    v: Tensor,
    obs: tuple[Tensor, Tensor, Tensor],
    obs_u: tuple[Tensor, Tensor, Tensor] | None = None,
    *,
    solver: str = "cg",
    cg_iters: int = 4,
    warm_start: bool = True,
    sketch_rows: int = 20,
    generator: torch.Generator | None = None,
    ridge: float = 1e-10,
) -> tuple[Tensor, Tensor]:
    """One round of Algorithm step 2 on the estimate ``X = U V^T`` (``U`` orthonormal): solve ``V``, QR, solve ``U``, QR.

    ``obs = (rows, cols, vals)`` are the entries the ``V`` step uses, ``obs_u`` those of the ``U`` step
    (default the same; sample splitting passes disjoint parts). Returns ``(Q_U, Q_V R_U^T)``, whose
    product is the new estimate ``U_{t+1} Q_V^T``; the scaled ``V`` is the next warm start. Warm starts:
    the ``V`` solve starts from ``v`` (the current estimate's right factor), the ``U`` solve from
    ``U R_V^T`` (the same estimate in the basis ``Q_V``); with ``warm_start=False`` both start from 0.
    """
    m, n = u.shape[0], v.shape[0]
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    rows, cols, vals = obs
    rows_u, cols_u, vals_u = obs_u if obs_u is not None else obs
    v_raw = _half_step(u, rows, cols, vals, n, v if warm_start else torch.zeros_like(v), solver, cg_iters, sketch_rows, gen, ridge)
    q_v, r_v = torch.linalg.qr(v_raw)
    warm_u = u @ r_v.T if warm_start else torch.zeros_like(u)
    u_raw = _half_step(q_v, cols_u, rows_u, vals_u, m, warm_u, solver, cg_iters, sketch_rows, gen, ridge)
    q_u, r_u = torch.linalg.qr(u_raw)
    return q_u, q_v @ r_u.T


def round_flops(solver: str, nnz: int, m: int, n: int, k: int, cg_iters: int = 4, sketch_rows: int = 20) -> float:
    """Flops of one :func:`altmin_round` (a multiply-add = 2), counted from the operations, for ``|Omega| = nnz``."""
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")

    def half(out: int) -> float:
        rhs = 2.0 * nnz * k
        if solver == "exact":  # Gram 2|Omega|k^2, Cholesky k^3/3 and two triangular solves 2k^2 per system
            return 2.0 * nnz * k * k + rhs + out * (k**3 / 3 + 2 * k * k)
        cost = rhs + (cg_iters + 1) * 4.0 * nnz * k + cg_iters * 10.0 * out * k
        if solver == "sketch_cg":  # sketch |Omega|k adds, Householder QR of (s + k) x k, 2 triangular solves per application
            cost += nnz * k + out * 2.0 * (sketch_rows + k) * k * k + (cg_iters + 1) * out * 2.0 * k * k
        return cost

    qr_and_carry = 2.0 * (m + n) * k * k + 2.0 * (m + n) * k * k  # the two QRs, then U R_V^T and Q_V R_U^T
    return half(n) + half(m) + qr_and_carry


def relative_error(u: Tensor, v: Tensor, a: Tensor, b: Tensor) -> float:
    """``||U V^T - A B^T||_F / ||A B^T||_F`` (the dense matrices, float64)."""
    truth = a @ b.T
    return float((u @ v.T - truth).norm() / truth.norm())


def altmin_complete(
    rows: Tensor,
    cols: Tensor,
    vals: Tensor,
    m: int,
    n: int,
    rank: int,
    *,
    rounds: int = 30,
    solver: str = "cg",
    cg_iters: int = 4,
    warm_start: bool = True,
    sketch_factor: float = 2.0,
    clip_rows: bool = True,
    p_obs: float | None = None,
    ridge: float = 1e-10,
    seed: int = 0,
    truth: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor, list[float]]:
    """Standalone fit (no sample splitting): ``(U, V, history)`` with ``M ~ U V^T``; history = relative errors when ``truth`` is given."""
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    rows, cols, vals = rows.long(), cols.long(), vals.double()
    p = p_obs if p_obs is not None else len(vals) / (m * n)
    u = spectral_init(rows, cols, vals, m, n, rank, p, clip_rows)
    v = _initial_right(u, rows, cols, vals, n, p)
    gen = torch.Generator().manual_seed(int(seed))
    history: list[float] = []
    for _ in range(rounds):
        u, v = altmin_round(
            u,
            v,
            (rows, cols, vals),
            solver=solver,
            cg_iters=cg_iters,
            warm_start=warm_start,
            sketch_rows=max(1, math.ceil(sketch_factor * rank)),
            generator=gen,
            ridge=ridge,
        )
        if truth is not None:
            history.append(relative_error(u, v, *truth))
    return u, v, history


def _initial_right(u: Tensor, rows: Tensor, cols: Tensor, vals: Tensor, n: int, p: float) -> Tensor:
    """The spectral estimate's right factor ``(P_Omega(M) / p)^T U``: the first warm start."""
    return torch.zeros(n, u.shape[1], dtype=u.dtype).index_add_(0, cols, u[rows] * (vals / p)[:, None])


# ---------------------------------------------------------------------- the Lightning wrapper
class RobustAltMinCompletion(SolverModule):
    """Matrix completion ``M ~ U V^T`` by (robust) alternating minimisation; ``forward(x)`` predicts ``M[x[:, 0], x[:, 1]]``.

    A :class:`~zoo.templates.solver.SolverModule`: fit gathers the observed entries (``x = (row, col)``,
    ``y = M[row, col]``), one solver iteration is one round of :func:`altmin_round`. Logs
    ``train/rel_error`` (on the whole matrix, when the datamodule exposes the true ``factors``),
    ``train/rel_error_r10`` (the same after round 10), ``train/obs_rel_error`` (on the observed entries),
    ``train/flops_per_round`` (:func:`round_flops`) and ``train/seconds_per_round``.

    Args:
        m, n, rank: the matrix's shape and the fitted rank.
        p_obs: the sampling rate of the initial ``P_Omega(M) / p``; ``None`` estimates ``|Omega| / (m n)``.
        iters: rounds; ``solver``: ``exact``, ``cg`` or ``sketch_cg``; ``cg_iters``: CG iterations per half-step.
        warm_start: start each CG from the current estimate (False: from 0, the negative control).
        sketch_factor: CountSketch rows per column, in units of ``rank``; ``clip_rows``: the initial clip.
        sample_split: split Omega into ``2 iters + 1`` random parts (the analysis' scheme).
        ridge: relative ridge of the exact systems and of the sketch; ``tol``: stop when the observed
            relative residual is below it (0: run all ``iters``); ``seed``: sketches and the split.
    """

    def __init__(
        self,
        m: int = 500,
        n: int = 500,
        rank: int = 10,
        p_obs: float | None = None,
        iters: int = 30,
        solver: str = "cg",
        cg_iters: int = 4,
        warm_start: bool = True,
        sketch_factor: float = 2.0,
        clip_rows: bool = True,
        sample_split: bool = False,
        ridge: float = 1e-10,
        tol: float = 0.0,
        iters_per_step: int = 1,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
        if min(m, n, rank, iters, iters_per_step) < 1 or cg_iters < 0 or sketch_factor <= 0 or rank > min(m, n):
            raise ValueError("need m, n, iters, iters_per_step >= 1, 1 <= rank <= min(m, n), cg_iters >= 0, sketch_factor > 0")
        self.save_hyperparameters()
        self.u = nn.Parameter(torch.zeros(m, rank, dtype=torch.float64), requires_grad=False)
        self.v = nn.Parameter(torch.zeros(n, rank, dtype=torch.float64), requires_grad=False)
        self.rounds = 0
        self._obs: Any = None

    def forward(self, x: Tensor) -> Tensor:
        idx = x.long()
        return (self.u[idx[:, 0]] * self.v[idx[:, 1]]).sum(1)

    @property
    def max_iters(self) -> int:
        return int(self.hparams.iters)

    @property
    def iterations(self) -> int:
        return self.rounds

    def start_solver(self, x: Tensor, y: Tensor) -> None:
        hp = self.hparams
        rows, cols, vals = x[:, 0].long().cpu(), x[:, 1].long().cpu(), y.double().cpu()
        if len(vals) == 0 or int(rows.max()) >= hp.m or int(cols.max()) >= hp.n or int(x.min()) < 0:
            raise ValueError(f"the entries must index an {hp.m} x {hp.n} matrix (set model m, n to the data's shape)")
        self._vals_norm = float(vals.norm())
        self._gen = torch.Generator().manual_seed(int(hp.seed))
        parts = 2 * hp.iters + 1 if hp.sample_split else 1
        part = torch.randint(0, parts, (len(vals),), generator=self._gen) if parts > 1 else torch.zeros(len(vals), dtype=torch.long)
        self._parts = [(rows[part == i], cols[part == i], vals[part == i]) for i in range(parts)]
        self._all = (rows, cols, vals)
        p = hp.p_obs if hp.p_obs is not None else len(vals) / (hp.m * hp.n)
        p0 = p / parts
        r0, c0, v0 = self._parts[0]
        u = spectral_init(r0, c0, v0, hp.m, hp.n, hp.rank, p0, hp.clip_rows)
        v = _initial_right(u, r0, c0, v0, hp.n, p0)
        with torch.no_grad():
            self.u.copy_(u)
            self.v.copy_(v)
        dm = getattr(self.trainer, "datamodule", None)
        self._truth = getattr(dm, "factors", None)
        self.rounds, self._round_seconds, self._err_r10 = 0, 0.0, float("nan")

    def solver_iterate(self, iterations: int) -> bool:
        hp = self.hparams
        for _ in range(iterations):
            t = self.rounds
            obs_v = self._parts[2 * t + 1] if hp.sample_split else self._all
            obs_u = self._parts[2 * t + 2] if hp.sample_split else self._all
            start = time.perf_counter()
            u, v = altmin_round(
                self.u.detach().cpu(),
                self.v.detach().cpu(),
                obs_v,
                obs_u,
                solver=hp.solver,
                cg_iters=hp.cg_iters,
                warm_start=hp.warm_start,
                sketch_rows=self.sketch_rows,
                generator=self._gen,
                ridge=hp.ridge,
            )
            self._round_seconds += time.perf_counter() - start
            with torch.no_grad():
                self.u.copy_(u)
                self.v.copy_(v)
            self.rounds += 1
            if self.rounds == 10:
                self._err_r10 = self.rel_error()
            if hp.tol > 0 and self.obs_rel_error() < hp.tol:
                return True
        return False

    @property
    def sketch_rows(self) -> int:
        return max(1, math.ceil(self.hparams.sketch_factor * self.hparams.rank))

    def rel_error(self) -> float:
        """Relative error on the whole matrix (NaN without the true factors)."""
        if self._truth is None:
            return float("nan")
        return relative_error(self.u.detach().cpu(), self.v.detach().cpu(), *self._truth)

    def obs_rel_error(self) -> float:
        rows, cols, vals = self._all
        return float((self(torch.stack([rows, cols], 1)).cpu() - vals).norm() / max(self._vals_norm, 1e-300))

    def solver_metrics(self, final: bool) -> dict[str, float]:
        hp = self.hparams
        return {
            "train/rel_error": self.rel_error(),
            "train/rel_error_r10": self._err_r10,
            "train/obs_rel_error": self.obs_rel_error(),
            "train/flops_per_round": round_flops(hp.solver, len(self._all[2]), hp.m, hp.n, hp.rank, hp.cg_iters, self.sketch_rows),
            "train/seconds_per_round": self._round_seconds / max(self.rounds, 1),
        }

    def test_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("test/mse", (self(x) - y.double()).pow(2).mean(), batch_size=len(y))


class ExactAltMin(RobustAltMinCompletion):
    """The baseline, exact alternating minimisation (Jain, Netrapalli, Sanghavi 2013): every ``k x k`` system solved exactly."""

    def __init__(
        self,
        m: int = 500,
        n: int = 500,
        rank: int = 10,
        p_obs: float | None = None,
        iters: int = 30,
        solver: str = "exact",
        cg_iters: int = 4,
        warm_start: bool = True,
        sketch_factor: float = 2.0,
        clip_rows: bool = True,
        sample_split: bool = False,
        ridge: float = 1e-10,
        tol: float = 0.0,
        iters_per_step: int = 1,
        seed: int = 0,
    ) -> None:
        super().__init__(m, n, rank, p_obs, iters, solver, cg_iters, warm_start, sketch_factor, clip_rows, sample_split, ridge, tol, iters_per_step, seed)
