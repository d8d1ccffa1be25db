"""The reference solver: the convex (or robust convex) program written in CVXPY and solved by Clarabel.

The robust L-inf program is the paper's robust convex training (arXiv 2201.01965); the first author's
CVXPY/MOSEK formulation (``Bai-YT/Convex-NN-Training``) was read, not copied.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from zoo.convex_relu.problem import LOSSES

__all__ = ["CLARABEL_SETTINGS", "solve_cvxpy"]

#: Clarabel's tolerances for the reference optimum: tight enough that the pruned exported network
#: matches the optimal value to ~1e-9 (the defaults leave ~1e-9-norm groups that add up to ~5e-7).
CLARABEL_SETTINGS: dict[str, float] = {"tol_gap_abs": 1e-10, "tol_gap_rel": 1e-10, "tol_feas": 1e-10, "tol_ktratio": 1e-8}


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
