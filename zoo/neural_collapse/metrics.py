"""Neural collapse metrics NC1, NC2 and NC3: pure functions and a torchmetrics ``Metric``.

Paper: Dang et al. (ICML 2023), arXiv 2301.00437, Section 2 (definitions of NC1-NC3). Official code
(reference only): https://github.com/Fsoft-AIC/Neural-Collapse-in-Deep-Linear-Networks.

Definitions (``K`` classes, ``n_k`` samples of class ``k``, ``N = sum n_k``, features ``h_i``):

- ``mu_k`` class means, ``mu_G`` the global mean, ``H_bar = [mu_1 ... mu_K]`` (``d x K``),
  centred (``mu_k - mu_G``) for the ETF geometry and non-centred for the bias-free geometry.
- ``Sigma_W = (1/N) sum_k sum_{i in k} (h_i - mu_k)(h_i - mu_k)^T
  = (1/N) (sum_i h_i h_i^T - sum_k n_k mu_k mu_k^T)``,
  ``Sigma_B = (1/K) sum_k (mu_k - mu_G)(mu_k - mu_G)^T``.
- ``NC1 = (1/K) tr(Sigma_W Sigma_B^+)`` (pseudo-inverse with a relative tolerance).
- ``NC2_W = || W W^T / ||W W^T||_F - T_W / ||T_W||_F ||_F`` and ``NC2_H`` likewise for
  ``H_bar^T H_bar``; ``T = (I - 11^T/K) / sqrt(K-1)`` for the ETF, and for the imbalanced
  geometry ``T_W = diag(s_k^{2M})``, ``T_H = diag(s_k^{2M} / (s_k^{2M} + N lambda_H)^2)``
  (:mod:`zoo.neural_collapse.geometry`).
- ``NC3 = || W / ||W||_F - D H_bar^T / ||D H_bar^T||_F ||_F`` with ``D = I`` (ETF,
  self-duality) or ``D = diag(s_k^{2M} + N lambda_H)`` (imbalanced: ``W ∝ D H_bar^T``).

:class:`NeuralCollapseMetrics` accumulates sufficient statistics (per-class counts and feature
sums, summed across DDP processes) and keeps the features themselves; :func:`neural_collapse` is its
functional twin. Choices: NC1 is computed from the ``K x K`` Gram of the centred means
(:func:`_between_spectrum`): ``Sigma_B^+`` lives in the span of the centred means, so ``Sigma_W``
enters only through its projection on ``r <= K - 1`` directions, and with the features at hand
(:func:`nc1_from_features`) that costs ``O(N d K)`` with exact float64 centring, equal to the ``d x d``
pseudo-inverse formula of :func:`nc1`. Beyond ``max_held`` feature numbers per process, and under
DDP (where ranks must hold summable states), features are folded into one total ``d x d`` second
moment instead (``O(N d^2)``, the same ``Sigma_W`` as per-class moments at ``1/K`` of the memory;
:func:`nc1_from_means`); on a CPU its product of float32 features is taken in float32 after subtracting
each chunk's class means (:func:`_second_moment`; NC1 of the collapsed UFM claim moved by under 2e-5
relative). ``Sigma_B`` uses the classes that have samples; a class with no sample has a zero mean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from typing_extensions import override

from zoo.neural_collapse.geometry import GEOMETRIES, Geometry, check_closed_form_args, geometry_targets

__all__ = [
    "NC_KEYS",
    "NeuralCollapseMetrics",
    "between_class_covariance",
    "class_means",
    "max_abs_cosine",
    "nc1",
    "nc1_from_features",
    "nc1_from_means",
    "nc2",
    "nc3",
    "neural_collapse",
    "relative_sq_norms",
    "within_class_covariance",
]

NC_KEYS: tuple[str, ...] = ("NC1", "NC2_W", "NC2_H", "NC3")


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


def _between_spectrum(centred_means: Tensor, rtol: float) -> tuple[Tensor, Tensor] | None:
    """``(V, l)``: the kept eigenvalues ``l`` of ``D D^T / K`` and the rows ``V = U^T D`` (``(r, d)``), or None if ``Sigma_B = 0``.

    ``Sigma_B^+ = V^T diag(l^-2) V / K``, so ``Sigma_W`` enters NC1 only through ``V Sigma_W V^T`` (the span of the means).
    """
    k = centred_means.shape[0]
    evals, evecs = torch.linalg.eigh(centred_means @ centred_means.T / k)
    top = evals.max()
    if not top > 0:
        return None
    keep = evals > rtol * top
    return evecs[:, keep].T @ centred_means, evals[keep]


def nc1_from_means(sigma_w: Tensor, centred_means: Tensor, rtol: float = 1e-6) -> Tensor:
    """NC1 with ``Sigma_B = D^T D / K`` given by the centred class means ``D (K, d)``, in ``O(K d^2)``.

    The same value as :func:`nc1` without a ``d x d`` pseudo-inverse: with ``D D^T / K = U diag(l) U^T``
    (the non-zero spectrum of ``Sigma_B``), ``Sigma_B^+ = D^T U diag(l^-2) U^T D / K``, so
    ``NC1 = (1/K^2) sum_j u_j^T D Sigma_W D^T u_j / l_j^2`` over ``l_j > rtol * max(l)``.
    """
    spectrum = _between_spectrum(centred_means, rtol)
    if spectrum is None:
        return sigma_w.new_tensor(math.inf if torch.any(sigma_w != 0) else 0.0)
    proj, evals = spectrum
    quad = ((proj @ sigma_w) * proj).sum(1)
    return (quad / evals**2).sum() / centred_means.shape[0] ** 2


def nc1_from_features(
    features: Sequence[Tensor], labels: Sequence[Tensor], means: Tensor, centred_means: Tensor, rtol: float = 1e-6
) -> Tensor:
    """NC1 of features given in chunks, with class means ``(K, d)`` and centred means ``D``, in ``O(N d K)``.

    The value of :func:`nc1_from_means` without ``Sigma_W``: ``u_j^T D Sigma_W D^T u_j = (1/N) sum_i
    (v_j . (h_i - mu_{y_i}))^2`` with ``v_j = D^T u_j``; the centring is exact (float64), no second moment.
    """
    spectrum = _between_spectrum(centred_means, rtol)
    n = sum(len(y) for y in labels)
    if spectrum is None:
        spread = any(bool(torch.any(f.to(means) != means[y])) for f, y in zip(features, labels))
        return means.new_tensor(math.inf if spread else 0.0)
    proj, evals = spectrum
    scatter = proj.new_zeros(proj.shape[0])
    for f, y in zip(features, labels):
        p = (f.to(means) - means[y]) @ proj.T  # (rows, r): v_j . (h_i - mu_{y_i})
        scatter += (p * p).sum(0)
    return (scatter / n / evals**2).sum() / centred_means.shape[0] ** 2


def _unit(a: Tensor) -> Tensor:
    """``a / ||a||_F``; a zero matrix stays zero."""
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


def _class_sums(features: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Per-class counts ``(K,)`` and float64 feature sums ``(K, d)``."""
    counts = torch.bincount(labels, minlength=num_classes)
    sums = torch.zeros(num_classes, features.shape[1], dtype=torch.float64, device=features.device)
    return counts, sums.index_add_(0, labels, features.detach().to(torch.float64))


def _second_moment(features: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """The total second moment ``sum_i h_i h_i^T`` ``(d, d)`` in float64, at ``O(N d^2)``.

    Taken as ``sum_k n_k m_k m_k^T`` (float64, chunk class means ``m_k``) plus the scatter of the
    class-centred features: centred, a float32 product stays accurate where features collapse, and on
    a CPU it is twice as fast as float64. On other devices the product is float64 (TF32 may be on there).
    """
    h = features.detach()
    h = h.to(torch.promote_types(h.dtype, torch.float32) if h.device.type == "cpu" else torch.float64)
    counts, sums = _class_sums(h, labels, num_classes)
    means = class_means(counts, sums)
    centred = h - means.to(h.dtype)[labels]
    between = means.T @ (counts.to(sums.dtype).unsqueeze(1) * means)
    return (centred.T @ centred).to(torch.float64) + between


def _chunks(state: Tensor | list[Tensor]) -> list[Tensor]:
    """A list state as its non-empty tensors (after a DDP sync it is one tensor, possibly empty)."""
    return [state] if isinstance(state, Tensor) and state.numel() else [t for t in state if t.numel()] if isinstance(state, list) else []


def _compute(
    counts: Tensor,
    sums: Tensor,
    second_moment: Tensor | None,
    held: tuple[list[Tensor], list[Tensor]],
    weight: Tensor,
    geometry: str,
    depth: int,
    weight_decay: float | None,
    feature_decay: float | None,
    center_means: bool,
    rtol: float,
) -> dict[str, Tensor]:
    """NC1, NC2_W, NC2_H and NC3 from the accumulated statistics, the held features and the classifier ``W``.

    ``second_moment`` covers the samples that were folded into it; ``held`` (feature and label chunks)
    the rest. With every sample held NC1 comes from the features in ``O(N d K)`` (:func:`nc1_from_features`),
    otherwise the held ones are folded in and NC1 comes from ``Sigma_W`` (:func:`nc1_from_means`).
    """
    num_classes = counts.numel()
    if counts.sum() == 0:
        raise ValueError("no samples were accumulated: call update(features, labels) before compute()")
    means = class_means(counts, sums)
    present = counts > 0
    global_mean = sums.sum(0) / counts.sum()
    centred = means[present] - global_mean  # Sigma_B = centred^T centred / K
    features, labels = held
    if sum(len(y) for y in labels) == int(counts.sum()):
        nc1_value = nc1_from_features(features, labels, means, centred, rtol)
    else:
        second = sums.new_zeros(sums.shape[1], sums.shape[1]) if second_moment is None else second_moment
        for f, y in zip(features, labels):
            second = second + _second_moment(f, y, num_classes)
        nc1_value = nc1_from_means(within_class_covariance(counts, sums, second), centred, rtol)
    if center_means:
        means = torch.where(present.unsqueeze(1), means - global_mean, means)
    w = weight.detach().to(sums)
    t_w, t_h, dual = geometry_targets(
        geometry, num_classes, counts, depth, weight_decay, feature_decay, dtype=sums.dtype, device=sums.device
    )
    return {
        "NC1": nc1_value,
        "NC2_W": nc2(w @ w.T, t_w),
        "NC2_H": nc2(means @ means.T, t_h),
        "NC3": nc3(w, means, dual),
    }


def _check_inputs(features: Tensor, labels: Tensor, num_classes: int, feature_dim: int | None) -> tuple[Tensor, Tensor]:
    """``(features, labels as long)`` after checking shapes and label range, with errors that name the problem."""
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
    """``center_means`` or, when None, the geometry's default (centred for the ETF only)."""
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
    counts, sums = _class_sums(features, labels, num_classes)
    center = _resolve_center(geometry, center_means)
    return _compute(counts, sums, None, ([features], [labels]), weight, geometry, depth, weight_decay, feature_decay, center, rtol)


class NeuralCollapseMetrics(Metric):
    """NC1, NC2 (of ``W`` and of the class means) and NC3, accumulated over batches and processes.

    ``update(features, labels)`` adds per-class counts and feature sums and keeps the features (up to
    ``max_held`` numbers per process) for NC1 in ``O(N d K)``; beyond that, and always under DDP, it
    folds them into a ``d x d`` second moment (``O(N d^2)``). Statistics are summed across DDP
    processes, so the result is exact, not an average of per-process values.
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
        max_held: feature numbers (rows x ``d``) kept per process before they are folded into the
            second moment (the memory bound; either way the metrics are the same).

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
    held_features: list[Tensor]
    held_labels: list[Tensor]

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
        max_held: int = 2**23,
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
            check_closed_form_args([1.0, 1.0], depth, weight_decay or 0.0, feature_decay or 0.0)
        self.num_classes, self.feature_dim = num_classes, feature_dim
        self.geometry, self.depth = geometry, depth
        self.weight_decay, self.feature_decay = weight_decay, feature_decay
        self.center_means = _resolve_center(geometry, center_means)
        self.rtol = rtol
        self.max_held = max_held
        self.classifier_weight: Tensor | None = None
        self.add_state("counts", torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("sums", torch.zeros(num_classes, feature_dim, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("second_moment", torch.zeros(feature_dim, feature_dim, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("held_features", [], dist_reduce_fx="cat")  # never filled under DDP (see update)
        self.add_state("held_labels", [], dist_reduce_fx="cat")

    def set_classifier(self, weight: Tensor) -> None:
        """Set ``W = W_M ... W_1`` (``(K, d)``) for the next :meth:`compute`."""
        if weight.shape != (self.num_classes, self.feature_dim):
            raise ValueError(f"classifier must be ({self.num_classes}, {self.feature_dim}), got {tuple(weight.shape)}")
        self.classifier_weight = weight.detach().clone()
        self._computed = None  # compute() caches its value; a new W invalidates it

    @override
    def update(self, features: Tensor, labels: Tensor) -> None:
        features, labels = _check_inputs(features, labels, self.num_classes, self.feature_dim)
        counts, sums = _class_sums(features, labels, self.num_classes)
        self.counts += counts
        self.sums += sums
        self.held_features.append(features.detach())  # kept by reference, as torchmetrics' list states do
        self.held_labels.append(labels)
        held = sum(f.numel() for f in self.held_features)
        if held > self.max_held or self.distributed_available_fn():  # DDP: ranks keep equal, summable states
            for f, y in zip(self.held_features, self.held_labels):
                self.second_moment += _second_moment(f, y, self.num_classes)
            self.held_features.clear()
            self.held_labels.clear()

    @override
    def compute(self) -> dict[str, Tensor]:
        if self.classifier_weight is None:
            raise RuntimeError("set the classifier W = W_M...W_1 with metric.set_classifier(W) before compute()")
        return _compute(
            self.counts,
            self.sums,
            self.second_moment,
            (_chunks(self.held_features), _chunks(self.held_labels)),
            self.classifier_weight,
            self.geometry,
            self.depth,
            self.weight_decay,
            self.feature_decay,
            self.center_means,
            self.rtol,
        )
