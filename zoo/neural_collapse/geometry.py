"""The closed-form neural collapse geometry of the bias-free deep linear UFM on imbalanced data.

Paper: Dang et al. (ICML 2023), arXiv 2301.00437, the imbalanced-data theorem for the bias-free MSE
deep linear UFM (its "General Orthogonal Frame": the per-class equation for ``x_k`` and
``s_k^{2M} = N lambda_H x_k^M``; theorem numbers differ between arXiv versions). Class means and
classifier rows are orthogonal, with lengths fixed by the class sizes; classes too small to beat the
regularisation collapse to zero ("minority collapse", ``x_k = 0``). The balanced with-bias geometry
is the simplex ETF (:func:`etf_target`).

The per-class equation is solved with ``scipy.optimize.brentq`` on the decreasing branch of
``M x^{M-1} / (x^M + 1)^2`` (the largest positive root, as the official code's sympy ``solve`` then
``max``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, NamedTuple

import numpy as np
import torch
from scipy.optimize import brentq
from torch import Tensor

__all__ = [
    "GEOMETRIES",
    "ClosedForm",
    "Geometry",
    "check_closed_form_args",
    "closed_form",
    "closed_form_relative_norms",
    "closed_form_s",
    "closed_form_x",
    "etf_target",
    "geometry_targets",
]

Geometry = Literal["etf", "imbalanced_orthogonal"]
GEOMETRIES: tuple[str, ...] = ("etf", "imbalanced_orthogonal")


def check_closed_form_args(class_counts: Sequence[float], depth: int, weight_decay: float, feature_decay: float) -> np.ndarray:
    """The class sizes as float64, after checking the theorem's conditions (``M >= 1``, both decays > 0)."""
    counts = np.asarray(class_counts, dtype=np.float64)
    if counts.ndim != 1 or len(counts) < 2 or (counts < 0).any() or counts.sum() <= 0:
        raise ValueError(f"class_counts must be >= 2 non-negative sizes with a positive total, got {list(class_counts)}")
    if int(depth) != depth or depth < 1:
        raise ValueError(f"depth (the number M of linear layers in W = W_M...W_1) must be a positive int, got {depth}")
    if not (weight_decay > 0 and feature_decay > 0):
        raise ValueError(
            f"the imbalanced closed form needs weight_decay > 0 and feature_decay > 0 (got {weight_decay}, {feature_decay}); "
            "without regularisation the norms grow without bound"
        )
    return counts


def closed_form_x(class_counts: Sequence[float], depth: int, weight_decay: float, feature_decay: float) -> np.ndarray:
    """The per-class ``x_k`` of the paper's imbalanced bias-free MSE theorem (General Orthogonal Frame).

    With ``b = M N (N lambda_W^M lambda_H)^{1/M}``, ``x_k`` is the largest positive root of
    ``b / n_k = M x^{M-1} / (x^M + 1)^2``, or 0 when there is none (minority collapse).

    >>> closed_form_x([200, 100, 50, 50], depth=1, weight_decay=5e-4, feature_decay=5e-4).round(3)
    array([69.711, 49.   , 34.355, 34.355])
    """
    counts = check_closed_form_args(class_counts, depth, weight_decay, feature_decay)
    M, N = int(depth), counts.sum()
    b = M * N * (N * weight_decay**M * feature_decay) ** (1.0 / M)

    def f(x: float) -> float:
        return M * x ** (M - 1) / (x**M + 1) ** 2

    x_star = ((M - 1) / (M + 1)) ** (1.0 / M)  # argmax of f on [0, inf); 0 for M = 1
    f_max = f(x_star)
    out = np.zeros(len(counts))
    for k, n_k in enumerate(counts):
        if n_k <= 0:
            continue
        c = b / n_k
        if c > f_max:  # no positive root: the class collapses to zero
            continue
        if c == f_max:
            out[k] = x_star
            continue
        hi = max(1.0, 2 * x_star)
        while f(hi) > c:  # f decreases to 0 past x_star
            hi *= 2
        out[k] = brentq(lambda x, c=c: f(x) - c, x_star, hi, xtol=1e-14, rtol=4 * np.finfo(float).eps, maxiter=500)
    return out


def closed_form_s(class_counts: Sequence[float], depth: int, weight_decay: float, feature_decay: float) -> np.ndarray:
    """Singular values ``s_k = (N lambda_H x_k^M)^{1/(2M)}`` of each layer ``W_l`` along class ``k``."""
    counts = check_closed_form_args(class_counts, depth, weight_decay, feature_decay)
    x = closed_form_x(counts, depth, weight_decay, feature_decay)
    return (counts.sum() * feature_decay * x**depth) ** (1.0 / (2 * depth))


class ClosedForm(NamedTuple):
    """Diagonals of the imbalanced bias-free MSE geometry (unnormalised, length ``K``).

    ``ww`` is ``W W^T`` (``s_k^{2M}``), ``hh`` is ``H_bar^T H_bar`` (``s_k^{2M} / (s_k^{2M} +
    N lambda_H)^2``), ``wh`` is ``W H_bar`` (``s_k^{2M} / (s_k^{2M} + N lambda_H)``) and ``dual`` is
    ``D`` in ``W ∝ D H_bar^T`` (``s_k^{2M} + N lambda_H``).
    """

    x: np.ndarray
    s: np.ndarray
    ww: np.ndarray
    hh: np.ndarray
    wh: np.ndarray
    dual: np.ndarray


def closed_form(class_counts: Sequence[float], depth: int, weight_decay: float, feature_decay: float) -> ClosedForm:
    """The whole imbalanced geometry of the paper's theorem for these class sizes and decays."""
    counts = check_closed_form_args(class_counts, depth, weight_decay, feature_decay)
    x = closed_form_x(counts, depth, weight_decay, feature_decay)
    n_lambda_h = counts.sum() * feature_decay
    s2m = n_lambda_h * x**depth  # s_k^{2M}
    s = s2m ** (1.0 / (2 * depth))
    return ClosedForm(x=x, s=s, ww=s2m, hh=s2m / (s2m + n_lambda_h) ** 2, wh=s2m / (s2m + n_lambda_h), dual=s2m + n_lambda_h)


def _relative(v: np.ndarray) -> np.ndarray:
    """``v / max(v)``; all zeros stay zeros."""
    top = float(np.max(v)) if len(v) else 0.0
    return v / top if top > 0 else np.zeros_like(v)


def closed_form_relative_norms(
    class_counts: Sequence[float], depth: int, weight_decay: float, feature_decay: float
) -> tuple[np.ndarray, np.ndarray]:
    """Predicted ``(||mu_k||^2, ||w_k||^2)`` divided by their largest value (class means, classifier rows).

    >>> means, rows = closed_form_relative_norms([200, 100, 50, 50], 1, 5e-4, 5e-4)
    >>> means.round(3), rows.round(3)
    (array([0.507, 0.713, 1.   , 1.   ]), array([1.   , 0.703, 0.493, 0.493]))
    """
    cf = closed_form(class_counts, depth, weight_decay, feature_decay)
    return _relative(cf.hh), _relative(cf.ww)


def etf_target(num_classes: int, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> Tensor:
    """The simplex ETF Gram matrix ``(I - 11^T/K) / sqrt(K-1)`` (unit Frobenius norm)."""
    if num_classes < 2:
        raise ValueError(f"the simplex ETF needs at least 2 classes, got {num_classes}")
    eye = torch.eye(num_classes, dtype=dtype, device=device)
    return (eye - 1.0 / num_classes) / math.sqrt(num_classes - 1)


def geometry_targets(
    geometry: str,
    num_classes: int,
    class_counts: Sequence[float] | Tensor | None = None,
    depth: int = 1,
    weight_decay: float | None = None,
    feature_decay: float | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Targets ``(T_W, T_H, D)`` of a geometry: the ``K x K`` Grams of ``W W^T`` and ``H_bar^T H_bar``,
    and the diagonal ``D`` of ``W ∝ D H_bar^T`` (None for the ETF, where ``D = I``)."""
    if geometry == "etf":
        target = etf_target(num_classes, dtype, device)
        return target, target, None
    if geometry != "imbalanced_orthogonal":
        raise ValueError(f"geometry must be one of {GEOMETRIES}, got {geometry!r}")
    if class_counts is None or weight_decay is None or feature_decay is None:
        raise ValueError("geometry 'imbalanced_orthogonal' needs class_counts, weight_decay and feature_decay")
    counts = class_counts.detach().cpu().double().numpy() if isinstance(class_counts, Tensor) else class_counts
    cf = closed_form(counts, depth, weight_decay, feature_decay)

    def as_tensor(v: np.ndarray) -> Tensor:
        return torch.as_tensor(v, dtype=dtype, device=device)

    return torch.diag(as_tensor(cf.ww)), torch.diag(as_tensor(cf.hh)), as_tensor(cf.dual)
