"""Neural collapse metrics (NC1, NC2, NC3) and a drop-in Callback that logs them during training.

Paper: *Neural Collapse in Deep Linear Networks: From Balanced to Imbalanced Data*, Dang, Tran,
Osher, Tran-The, Ho, Nguyen (ICML 2023), arXiv 2301.00437. Official code (reference only):
https://github.com/Fsoft-AIC/Neural-Collapse-in-Deep-Linear-Networks.

At the end of training a classifier, the last-layer features of the training samples collapse to
their class means (NC1), the class means and the classifier rows settle into a fixed geometry
(NC2) and the two align (NC3, self-duality). With a last-layer bias and balanced classes the
geometry is the simplex equiangular tight frame (ETF). The paper proves that for a *bias-free*
deep linear head ``W = W_M ... W_1`` trained with MSE and weight decay on imbalanced data the
geometry is different: class means are orthogonal and classifier rows are orthogonal, with
lengths fixed by the class sizes through a closed form (the paper's imbalanced-data theorem for
the bias-free MSE deep linear UFM, its "General Orthogonal Frame": the per-class equation for
``x_k`` and ``s_k^{2M} = N lambda_H x_k^M``; theorem numbers differ between arXiv versions). Classes too
small to beat the regularisation collapse to zero ("minority collapse", ``x_k = 0``).

Definitions (``K`` classes, ``n_k`` samples of class ``k``, ``N = sum n_k``, features ``h_i``):

- ``mu_k`` class means, ``mu_G`` the global mean, ``H_bar = [mu_1 ... mu_K]`` (``d x K``),
  centred (``mu_k - mu_G``) for the ETF geometry and non-centred for the bias-free geometry.
- ``Sigma_W = (1/N) sum_k sum_{i in k} (h_i - mu_k)(h_i - mu_k)^T
  = (1/N) (sum_i h_i h_i^T - sum_k n_k mu_k mu_k^T)``,
  ``Sigma_B = (1/K) sum_k (mu_k - mu_G)(mu_k - mu_G)^T``.
- ``NC1 = (1/K) tr(Sigma_W Sigma_B^+)`` (pseudo-inverse with a relative tolerance).
- ``NC2_W = || W W^T / ||W W^T||_F - T_W / ||T_W||_F ||_F`` and ``NC2_H`` likewise for
  ``H_bar^T H_bar``; ``T = (I - 11^T/K) / sqrt(K-1)`` for the ETF, and for the imbalanced
  geometry ``T_W = diag(s_k^{2M})``, ``T_H = diag(s_k^{2M} / (s_k^{2M} + N lambda_H)^2)``.
- ``NC3 = || W / ||W||_F - D H_bar^T / ||D H_bar^T||_F ||_F`` with ``D = I`` (ETF,
  self-duality) or ``D = diag(s_k^{2M} + N lambda_H)`` (imbalanced: ``W ∝ D H_bar^T``).

The maths lives in pure functions at module level; :class:`NeuralCollapseMetrics` accumulates
exact sufficient statistics (per-class counts and feature sums, and one ``d x d`` second
moment, all summed across DDP processes) and :class:`NeuralCollapseMonitor` hooks a layer of
any LightningModule and logs ``nc/NC1``, ``nc/NC2_W``, ``nc/NC2_H``, ``nc/NC3``.

Choices and guesses: one total second moment replaces the per-class ones (the same
``Sigma_W``, exactly, at ``1/K`` of the memory); statistics are accumulated in float64; NC1 is
computed from the ``K x K`` Gram of the centred means (:func:`nc1_from_means`, equal to the
``d x d`` pseudo-inverse formula of :func:`nc1` at ``O(K d^2)`` cost); the
per-class equation is solved with ``scipy.optimize.brentq`` on the decreasing branch of
``M x^{M-1} / (x^M + 1)^2`` (the largest positive root, as the official code's sympy ``solve``
then ``max``); ``Sigma_B`` uses the classes that have samples; a class with no sample has a
zero mean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from scipy.optimize import brentq
from torch import Tensor, nn
from torchmetrics import Metric
from typing_extensions import override

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "GEOMETRIES",
    "ClosedForm",
    "NeuralCollapseMetrics",
    "NeuralCollapseMonitor",
    "between_class_covariance",
    "class_means",
    "closed_form",
    "closed_form_relative_norms",
    "closed_form_s",
    "closed_form_x",
    "etf_target",
    "geometry_targets",
    "max_abs_cosine",
    "nc1",
    "nc1_from_means",
    "nc2",
    "nc3",
    "neural_collapse",
    "relative_sq_norms",
    "within_class_covariance",
]

Geometry = Literal["etf", "imbalanced_orthogonal"]
GEOMETRIES: tuple[str, ...] = ("etf", "imbalanced_orthogonal")
NC_KEYS: tuple[str, ...] = ("NC1", "NC2_W", "NC2_H", "NC3")


# ============================================================================ closed form
def _check_closed_form_args(class_counts: Sequence[float], depth: int, weight_decay: float, feature_decay: float) -> np.ndarray:
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
    counts = _check_closed_form_args(class_counts, depth, weight_decay, feature_decay)
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
        out[k] = brentq(lambda x: f(x) - c, x_star, hi, xtol=1e-14, rtol=4 * np.finfo(float).eps, maxiter=500)
    return out


def closed_form_s(class_counts: Sequence[float], depth: int, weight_decay: float, feature_decay: float) -> np.ndarray:
    """Singular values ``s_k = (N lambda_H x_k^M)^{1/(2M)}`` of each layer ``W_l`` along class ``k``."""
    counts = _check_closed_form_args(class_counts, depth, weight_decay, feature_decay)
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
    counts = _check_closed_form_args(class_counts, depth, weight_decay, feature_decay)
    x = closed_form_x(counts, depth, weight_decay, feature_decay)
    n_lambda_h = counts.sum() * feature_decay
    s2m = n_lambda_h * x**depth  # s_k^{2M}
    s = s2m ** (1.0 / (2 * depth))
    return ClosedForm(x=x, s=s, ww=s2m, hh=s2m / (s2m + n_lambda_h) ** 2, wh=s2m / (s2m + n_lambda_h), dual=s2m + n_lambda_h)


def _relative(v: np.ndarray) -> np.ndarray:
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


# ============================================================================ statistics
def class_means(counts: Tensor, sums: Tensor) -> Tensor:
    """Class means ``(K, d)`` from counts ``(K,)`` and feature sums ``(K, d)``; zero for empty classes."""
    return sums / counts.clamp_min(1).to(sums.dtype).unsqueeze(1)


def within_class_covariance(counts: Tensor, sums: Tensor, second_moment: Tensor) -> Tensor:
    """``Sigma_W = (1/N) (sum_i h_i h_i^T - sum_k n_k mu_k mu_k^T)`` from the sufficient statistics."""
    n = counts.to(sums.dtype)
    means = class_means(counts, sums)
    sigma_w = (second_moment - means.T @ (n.unsqueeze(1) * means)) / n.sum()
    return (sigma_w + sigma_w.T) / 2


def between_class_covariance(counts: Tensor, sums: Tensor) -> Tensor:
    """``Sigma_B = (1/K) sum_k (mu_k - mu_G)(mu_k - mu_G)^T`` over the classes that have samples."""
    present = counts > 0
    mu_g = sums.sum(0) / counts.sum().to(sums.dtype)
    diff = class_means(counts, sums)[present] - mu_g
    return diff.T @ diff / present.sum().to(sums.dtype)


def nc1(sigma_w: Tensor, sigma_b: Tensor, num_classes: int, rtol: float = 1e-6) -> Tensor:
    """``NC1 = (1/K) tr(Sigma_W Sigma_B^+)``; ``rtol`` cuts eigenvalues of ``Sigma_B`` below ``rtol * max``.

    ``Sigma_B`` has rank at most ``K - 1``; the relative cut keeps round-off (and classes that have
    collapsed onto the global mean) out of the inverse. Returns ``inf`` if ``Sigma_B = 0`` while
    ``Sigma_W != 0`` (no class separation at all) and ``0`` if both vanish.
    """
    if not torch.any(sigma_b != 0):
        return sigma_w.new_tensor(math.inf if torch.any(sigma_w != 0) else 0.0)
    pinv = torch.linalg.pinv(sigma_b, rtol=rtol, hermitian=True)
    return torch.trace(sigma_w @ pinv) / num_classes


def nc1_from_means(sigma_w: Tensor, centred_means: Tensor, rtol: float = 1e-6) -> Tensor:
    """NC1 with ``Sigma_B = D^T D / K`` given by the centred class means ``D (K, d)``, in ``O(K d^2)``.

    The same value as :func:`nc1` without a ``d x d`` pseudo-inverse: with ``D D^T / K = U diag(l) U^T``
    (the non-zero spectrum of ``Sigma_B``), ``Sigma_B^+ = D^T U diag(l^-2) U^T D / K``, so
    ``NC1 = (1/K^2) sum_j u_j^T D Sigma_W D^T u_j / l_j^2`` over ``l_j > rtol * max(l)``.
    """
    k = centred_means.shape[0]
    evals, evecs = torch.linalg.eigh(centred_means @ centred_means.T / k)
    top = evals.max()
    if not top > 0:
        return sigma_w.new_tensor(math.inf if torch.any(sigma_w != 0) else 0.0)
    keep = evals > rtol * top
    proj = evecs[:, keep].T @ centred_means  # (r, d): u_j^T D
    quad = ((proj @ sigma_w) * proj).sum(1)
    return (quad / evals[keep] ** 2).sum() / k**2


def _unit(a: Tensor) -> Tensor:
    norm = torch.linalg.matrix_norm(a)
    return a / norm if norm > 0 else torch.zeros_like(a)


def nc2(gram: Tensor, target: Tensor) -> Tensor:
    """``|| gram / ||gram||_F - target / ||target||_F ||_F`` (a zero matrix stays zero)."""
    return torch.linalg.matrix_norm(_unit(gram) - _unit(target.to(gram)))


def nc3(weight: Tensor, means: Tensor, dual: Tensor | None = None) -> Tensor:
    """``|| W / ||W||_F - D M / ||D M||_F ||_F`` for classifier ``W (K, d)`` and class means ``M (K, d)``.

    ``M = H_bar^T``; ``D = diag(dual)`` or the identity (self-duality) when ``dual`` is None.
    """
    target = means if dual is None else dual.to(means).unsqueeze(1) * means
    return torch.linalg.matrix_norm(_unit(weight.to(means)) - _unit(target))


def relative_sq_norms(rows: Tensor) -> Tensor:
    """Squared row norms divided by the largest one (all zeros stay zeros)."""
    sq = rows.pow(2).sum(1)
    top = sq.max()
    return sq / top if top > 0 else torch.zeros_like(sq)


def max_abs_cosine(rows: Tensor) -> Tensor:
    """The largest ``|cos|`` between two distinct non-zero rows (0 = mutually orthogonal)."""
    norms = rows.norm(dim=1)
    keep = norms > norms.max() * 1e-8 if norms.numel() else norms > 0
    unit = rows[keep] / norms[keep].unsqueeze(1)
    if len(unit) < 2:
        return rows.new_zeros(())
    cos = unit @ unit.T
    return (cos - torch.diag(torch.diag(cos))).abs().max()


def _statistics(features: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor, Tensor]:
    f = features.detach().to(torch.float64)
    counts = torch.bincount(labels, minlength=num_classes)
    sums = torch.zeros(num_classes, f.shape[1], dtype=torch.float64, device=f.device).index_add_(0, labels, f)
    return counts, sums, f.T @ f


def _compute(
    counts: Tensor,
    sums: Tensor,
    second_moment: Tensor,
    weight: Tensor,
    geometry: str,
    depth: int,
    weight_decay: float | None,
    feature_decay: float | None,
    center_means: bool,
    rtol: float,
) -> dict[str, Tensor]:
    num_classes = counts.numel()
    if counts.sum() == 0:
        raise ValueError("no samples were accumulated: call update(features, labels) before compute()")
    sigma_w = within_class_covariance(counts, sums, second_moment)
    means = class_means(counts, sums)
    present = counts > 0
    global_mean = sums.sum(0) / counts.sum()
    centred = means[present] - global_mean  # Sigma_B = centred^T centred / K
    if center_means:
        means = torch.where(present.unsqueeze(1), means - global_mean, means)
    w = weight.detach().to(sums)
    t_w, t_h, dual = geometry_targets(
        geometry, num_classes, counts, depth, weight_decay, feature_decay, dtype=sums.dtype, device=sums.device
    )
    return {
        "NC1": nc1_from_means(sigma_w, centred, rtol),
        "NC2_W": nc2(w @ w.T, t_w),
        "NC2_H": nc2(means @ means.T, t_h),
        "NC3": nc3(w, means, dual),
    }


def _check_inputs(features: Tensor, labels: Tensor, num_classes: int, feature_dim: int | None) -> tuple[Tensor, Tensor]:
    if features.ndim != 2:
        raise ValueError(f"features must be (batch, feature_dim), got shape {tuple(features.shape)}")
    if feature_dim is not None and features.shape[1] != feature_dim:
        raise ValueError(f"features have dimension {features.shape[1]}, expected feature_dim={feature_dim}")
    labels = labels.reshape(-1)
    if labels.dtype.is_floating_point or labels.shape[0] != features.shape[0]:
        raise ValueError(f"labels must be {features.shape[0]} integer class indices, got {labels.dtype} {tuple(labels.shape)}")
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got [{int(labels.min())}, {int(labels.max())}]")
    return features, labels.long()


def _resolve_center(geometry: str, center_means: bool | None) -> bool:
    return geometry == "etf" if center_means is None else bool(center_means)


def neural_collapse(
    features: Tensor,
    labels: Tensor,
    weight: Tensor,
    geometry: str = "etf",
    depth: int = 1,
    weight_decay: float | None = None,
    feature_decay: float | None = None,
    center_means: bool | None = None,
    rtol: float = 1e-6,
) -> dict[str, Tensor]:
    """Functional twin of :class:`NeuralCollapseMetrics` on one set of features.

    Args:
        features: ``(N, d)`` features of the measured layer.
        labels: ``(N,)`` class indices in ``[0, K)``.
        weight: ``(K, d)`` classifier ``W = W_M ... W_1`` of the linear layers above the features.

    Returns:
        ``{"NC1", "NC2_W", "NC2_H", "NC3"}`` as float64 scalars (see the module docstring).
    """
    num_classes = weight.shape[0]
    features, labels = _check_inputs(features, labels, num_classes, weight.shape[1])
    counts, sums, second = _statistics(features, labels, num_classes)
    return _compute(counts, sums, second, weight, geometry, depth, weight_decay, feature_decay, _resolve_center(geometry, center_means), rtol)


# ============================================================================ metric
class NeuralCollapseMetrics(Metric):
    """NC1, NC2 (of ``W`` and of the class means) and NC3, accumulated over batches and processes.

    ``update(features, labels)`` adds per-class counts and feature sums and the total second moment
    (all summed across DDP processes, so the result is exact, not an average of per-process values).
    The classifier ``W = W_M ... W_1`` (``(K, d)``, the product of the linear layers above the
    measured layer) is set with :meth:`set_classifier` before :meth:`compute`, which returns
    ``{"NC1", "NC2_W", "NC2_H", "NC3"}``.

    Args:
        num_classes: ``K``.
        feature_dim: ``d``.
        geometry: ``"etf"`` (simplex ETF, self-duality; the with-bias / balanced geometry) or
            ``"imbalanced_orthogonal"`` (the paper's bias-free MSE geometry; class sizes are the
            accumulated counts).
        depth: ``M``, the number of linear layers in ``W`` (imbalanced geometry only).
        weight_decay: ``lambda_W`` on each of those layers (imbalanced geometry only).
        feature_decay: ``lambda_H`` on the features (imbalanced geometry only).
        center_means: subtract the global mean from the class means in NC2_H and NC3. None: yes for
            ``"etf"``, no for ``"imbalanced_orthogonal"`` (bias-free models use non-centred means).
        rtol: relative tolerance of the pseudo-inverse of ``Sigma_B`` in NC1.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> metric = NeuralCollapseMetrics(num_classes=3, feature_dim=3)
        >>> means = torch.eye(3) - 1 / 3
        >>> labels = torch.arange(3).repeat(4)
        >>> metric.update(means[labels], labels)
        >>> metric.set_classifier(means)
        >>> {k: round(float(v), 6) for k, v in metric.compute().items()}
        {'NC1': 0.0, 'NC2_W': 0.0, 'NC2_H': 0.0, 'NC3': 0.0}
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    counts: Tensor
    sums: Tensor
    second_moment: Tensor

    def __init__(
        self,
        num_classes: int,
        feature_dim: int,
        geometry: Geometry = "etf",
        depth: int = 1,
        weight_decay: float | None = None,
        feature_decay: float | None = None,
        center_means: bool | None = None,
        rtol: float = 1e-6,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        if feature_dim < 1:
            raise ValueError(f"feature_dim must be positive, got {feature_dim}")
        if geometry not in GEOMETRIES:
            raise ValueError(f"geometry must be one of {GEOMETRIES}, got {geometry!r}")
        if geometry == "imbalanced_orthogonal":
            _check_closed_form_args([1.0, 1.0], depth, weight_decay or 0.0, feature_decay or 0.0)
        self.num_classes, self.feature_dim = num_classes, feature_dim
        self.geometry, self.depth = geometry, depth
        self.weight_decay, self.feature_decay = weight_decay, feature_decay
        self.center_means = _resolve_center(geometry, center_means)
        self.rtol = rtol
        self.classifier_weight: Tensor | None = None
        self.add_state("counts", torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("sums", torch.zeros(num_classes, feature_dim, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("second_moment", torch.zeros(feature_dim, feature_dim, dtype=torch.float64), dist_reduce_fx="sum")

    def set_classifier(self, weight: Tensor) -> None:
        """Set ``W = W_M ... W_1`` (``(K, d)``) for the next :meth:`compute`."""
        if weight.shape != (self.num_classes, self.feature_dim):
            raise ValueError(f"classifier must be ({self.num_classes}, {self.feature_dim}), got {tuple(weight.shape)}")
        self.classifier_weight = weight.detach().clone()
        self._computed = None  # compute() caches its value; a new W invalidates it

    @override
    def update(self, features: Tensor, labels: Tensor) -> None:
        features, labels = _check_inputs(features, labels, self.num_classes, self.feature_dim)
        counts, sums, second = _statistics(features, labels, self.num_classes)
        self.counts += counts
        self.sums += sums
        self.second_moment += second

    @override
    def compute(self) -> dict[str, Tensor]:
        if self.classifier_weight is None:
            raise RuntimeError("set the classifier W = W_M...W_1 with metric.set_classifier(W) before compute()")
        return _compute(
            self.counts,
            self.sums,
            self.second_moment,
            self.classifier_weight,
            self.geometry,
            self.depth,
            self.weight_decay,
            self.feature_decay,
            self.center_means,
            self.rtol,
        )


# ============================================================================ callback
def _linear_product(layers: Sequence[nn.Linear]) -> Tensor:
    """``W_M ... W_1`` of linear layers given in forward order."""
    weight = layers[0].weight
    for layer in layers[1:]:
        weight = layer.weight @ weight
    return weight.detach()


class NeuralCollapseMonitor(Callback):
    """Log NC1, NC2_W, NC2_H and NC3 of the training set every ``every_n_epochs`` epochs.

    Drops into any LightningModule whose batches are ``(x, y, ...)`` and whose ``forward(x)``
    returns logits. At the end of every ``every_n_epochs``-th training epoch it runs the model in
    eval mode without gradients over the train dataloader (then restores train mode), records the
    input of the feature layer, and logs ``{prefix}/NC1`` ... ``{prefix}/NC3`` (with
    ``sync_dist``; the statistics are summed over DDP processes before the metrics are computed).

    Args:
        every_n_epochs: measure after epochs ``n, 2n, ...`` (1-based).
        layer: name (as in ``named_modules``) of the module whose *input* is the feature; default
            the first classifier layer.
        classifier: names of the ``nn.Linear`` layers whose weight product is ``W``, in forward
            order (``W = W_M ... W_1``); an int ``n`` takes the last ``n`` ``nn.Linear`` modules in
            registration order; default the last ``nn.Linear``.
        geometry, depth, weight_decay, feature_decay, center_means, rtol: as in
            :class:`NeuralCollapseMetrics`; ``depth`` defaults to the number of classifier layers.
        prefix: log key prefix.
        max_batches: measure on at most this many batches (all by default).

    Its state (``history``: one dict of values per measured epoch, and ``last_epoch``) is saved
    in checkpoints, so a resumed run continues the same history; :meth:`plot` draws it.

    Example:
        >>> monitor = NeuralCollapseMonitor(every_n_epochs=5)
        >>> trainer = Trainer(callbacks=[monitor])  # doctest: +SKIP
    """

    def __init__(
        self,
        every_n_epochs: int = 10,
        layer: str | None = None,
        classifier: list[str] | int | None = None,
        geometry: Geometry = "etf",
        depth: int | None = None,
        weight_decay: float | None = None,
        feature_decay: float | None = None,
        center_means: bool | None = None,
        rtol: float = 1e-6,
        prefix: str = "nc",
        max_batches: int | None = None,
    ) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be positive, got {every_n_epochs}")
        if geometry not in GEOMETRIES:
            raise ValueError(f"geometry must be one of {GEOMETRIES}, got {geometry!r}")
        if geometry == "imbalanced_orthogonal" and not (weight_decay and feature_decay and weight_decay > 0 and feature_decay > 0):
            raise ValueError("geometry 'imbalanced_orthogonal' needs weight_decay > 0 and feature_decay > 0 (the model's lambda_W, lambda_H)")
        if isinstance(classifier, int) and classifier < 1:
            raise ValueError(f"classifier as an int is the number of trailing nn.Linear layers; got {classifier}")
        if max_batches is not None and max_batches < 1:
            raise ValueError(f"max_batches must be positive or None, got {max_batches}")
        self.every_n_epochs = every_n_epochs
        self.layer = layer
        self.classifier = classifier
        self.geometry = geometry
        self.depth = depth
        self.weight_decay, self.feature_decay = weight_decay, feature_decay
        self.center_means = center_means
        self.rtol = rtol
        self.prefix = prefix
        self.max_batches = max_batches
        self.history: list[dict[str, float]] = []
        self.last_epoch: int = -1
        self._feature_module: nn.Module | None = None
        self._classifier_layers: list[nn.Linear] = []
        self._metric: NeuralCollapseMetrics | None = None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(prefix=self.prefix, layer=self.layer, geometry=self.geometry)

    # ------------------------------------------------------------------ setup: resolve the layers
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        modules = dict(pl_module.named_modules())
        linears = [name for name, m in modules.items() if isinstance(m, nn.Linear)]
        where = type(pl_module).__qualname__
        if self.classifier is None or isinstance(self.classifier, int):
            n = 1 if self.classifier is None else self.classifier
            if len(linears) < n:
                raise RuntimeError(
                    f"NeuralCollapseMonitor needs {'an' if n == 1 else n} nn.Linear classifier layer(s) in {where}, found "
                    f"{len(linears)}; pass classifier=[names of the nn.Linear layers whose product is W] (forward order)"
                )
            names = linears[-n:]
        else:
            names = list(self.classifier)
            for name in names:
                if not isinstance(modules.get(name), nn.Linear):
                    found = "not found" if name not in modules else f"a {type(modules[name]).__name__}"
                    raise RuntimeError(f"NeuralCollapseMonitor: classifier layer {name!r} is {found} in {where}; nn.Linear layers: {linears}")
        layers: list[nn.Linear] = [modules[n] for n in names]  # type: ignore[misc]
        for prev, nxt, a, b in zip(layers, layers[1:], names, names[1:]):
            if nxt.in_features != prev.out_features:
                raise RuntimeError(
                    f"NeuralCollapseMonitor: classifier layers must chain in forward order; {b!r} takes "
                    f"{nxt.in_features} inputs but {a!r} gives {prev.out_features}"
                )
        feature_name = self.layer if self.layer is not None else names[0]
        if feature_name not in modules:
            raise RuntimeError(f"NeuralCollapseMonitor: feature layer {feature_name!r} not found in {where}")
        self._classifier_layers = layers
        self._classifier_names = names
        self._feature_module = modules[feature_name]
        if self.geometry == "imbalanced_orthogonal" and layers[-1].bias is not None:
            rank_zero_warn(
                f"NeuralCollapseMonitor: the imbalanced_orthogonal geometry is the bias-free theory, but {names[-1]!r} has a bias"
            )
        self._metric = NeuralCollapseMetrics(
            num_classes=layers[-1].out_features,
            feature_dim=layers[0].in_features,
            geometry=self.geometry,
            depth=self.depth if self.depth is not None else len(layers),
            weight_decay=self.weight_decay,
            feature_decay=self.feature_decay,
            center_means=self.center_means,
            rtol=self.rtol,
        )

    # ------------------------------------------------------------------ measuring
    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        epoch = trainer.current_epoch
        if (epoch + 1) % self.every_n_epochs != 0 or epoch <= self.last_epoch:
            return
        values = self.measure(trainer, pl_module)
        for key, value in values.items():
            pl_module.log(f"{self.prefix}/{key}", value, on_step=False, on_epoch=True, sync_dist=True)
        self.history.append({"epoch": float(epoch), "step": float(trainer.global_step), **values})
        self.last_epoch = epoch

    def measure(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, float]:
        """Run the model over the train dataloader and return the NC metrics (all processes must call it)."""
        if self._metric is None or self._feature_module is None:
            raise RuntimeError("NeuralCollapseMonitor.measure() called before setup()")
        loader = trainer.train_dataloader
        if loader is None:
            raise RuntimeError("NeuralCollapseMonitor: the trainer has no train dataloader to measure on")
        if isinstance(loader, (list, tuple, dict)):
            raise RuntimeError("NeuralCollapseMonitor measures a single train dataloader; this run has several")
        metric = self._metric.to(pl_module.device)
        metric.reset()
        metric.set_classifier(_linear_product(self._classifier_layers))
        captured: list[Tensor] = []

        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            captured.append(args[0].detach())

        handle = self._feature_module.register_forward_pre_hook(hook)
        was_training = pl_module.training
        pl_module.eval()
        try:
            with torch.no_grad():
                for i, batch in enumerate(loader):
                    if self.max_batches is not None and i >= self.max_batches:
                        break
                    batch = trainer.strategy.batch_to_device(batch, pl_module.device)
                    x, y = _split_batch(batch)
                    captured.clear()
                    pl_module(x)
                    if len(captured) != 1:
                        raise RuntimeError(
                            f"NeuralCollapseMonitor: the feature layer ran {len(captured)} times in one forward; "
                            "name a layer that runs once per forward with layer=..."
                        )
                    features = captured[0]
                    if features.ndim != 2:
                        raise RuntimeError(
                            f"NeuralCollapseMonitor: the feature layer's input has shape {tuple(features.shape)}; "
                            "it must be (batch, features). Name another module with layer=..."
                        )
                    metric.update(features, y)
            values = metric.compute()
        finally:
            handle.remove()
            pl_module.train(was_training)
        return {k: float(v) for k, v in values.items()}

    # ------------------------------------------------------------------ state
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": [dict(h) for h in self.history], "last_epoch": self.last_epoch}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [dict(h) for h in state_dict.get("history", [])]
        self.last_epoch = int(state_dict.get("last_epoch", -1))

    # ------------------------------------------------------------------ plot
    def plot(self, path: str | None = None) -> Figure:
        """Plot the history (log scale) against the epoch; save it to ``path`` if given."""
        from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

        fig = Figure(figsize=(5, 3.5))
        ax = fig.add_subplot()
        epochs = [h["epoch"] + 1 for h in self.history]
        for key in NC_KEYS:
            ax.plot(epochs, [max(h[key], 1e-16) for h in self.history], marker="o", label=key)
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_title(f"neural collapse ({self.geometry})")
        ax.legend()
        fig.tight_layout()
        if path is not None:
            fig.savefig(path)
        return fig


def _split_batch(batch: Any) -> tuple[Any, Tensor]:
    if isinstance(batch, (list, tuple)) and len(batch) >= 2 and isinstance(batch[1], Tensor):
        return batch[0], batch[1]
    raise RuntimeError(
        f"NeuralCollapseMonitor expects train batches (x, y, ...) with integer labels y; got a {type(batch).__name__}"
    )
