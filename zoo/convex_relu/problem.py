"""The convex training program's objective and constraints, and the map back to a ReLU network.

Paper: Bai, Gautam, Sojoudi, arXiv 2201.01965, the convex training program (group lasso over the
activation patterns with cone constraints) and its equivalence with the weight-decayed two-layer ReLU
network through the square-root split of each group (:func:`recover_network`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.convex_relu.patterns import DTYPE, add_bias
from zoo.convex_relu.robust import certified_margins

__all__ = [
    "LOSSES",
    "GatedReLU",
    "cone_violation",
    "convex_objective",
    "load_network",
    "loss_scale",
    "network_objective",
    "recover_network",
    "to_sequential",
]

LOSSES = ("squared", "hinge", "logistic")


def _loss_sum(pred: Tensor, y: Tensor, loss: str) -> Tensor:
    """Summed loss on targets ``y`` in {-1, +1}: ``1/2 sum (f - y)^2``, ``sum (1 - y f)_+`` or ``sum log(1 + e^{-y f})``."""
    if loss == "squared":
        return 0.5 * (pred - y).pow(2).sum()
    if loss == "hinge":
        return (1 - y * pred).clamp_min(0).sum()
    if loss == "logistic":
        return F.softplus(-y * pred).sum()
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")


def loss_scale(n: int, reduction: str) -> float:
    """The factor on the summed loss: 1 for ``"sum"`` (the paper's ``1/2 ||f - y||^2``), ``1/n`` for ``"mean"``."""
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
    return float(loss_scale(len(y), reduction) * value + beta * u.norm(dim=1).sum())


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
    load_network(net, u, alpha, bias)
    return net


def load_network(net: nn.Sequential, u: Tensor, alpha: Tensor, bias: bool) -> None:
    """Write neurons ``u (m x d~)`` and output weights ``alpha (m,)`` into the first ``m`` units of ``net``; zero the rest."""
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
        return float(loss_scale(len(y), reduction) * data + penalty)


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
