"""Robustness of an exported network: exact certified margins and PGD accuracy.

Paper: Bai, Gautam, Sojoudi, arXiv 2201.01965: the robust convex program keeps every neuron stable on
an L-inf ball around each training point, where the network is linear and its worst case exact.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from zoo.convex_relu.patterns import DTYPE

__all__ = ["ScoreLogits", "certified_margins", "pgd_accuracy"]


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


class ScoreLogits(nn.Module):
    """A score network ``f`` as two-class logits ``[0, f]`` for the shared (cross-entropy) PGD."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        f = self.net(x.to(DTYPE)).reshape(-1)
        return torch.stack([torch.zeros_like(f), f], 1)


def pgd_accuracy(net: nn.Module, x: Tensor, y: Tensor, epsilon: float, steps: int) -> float:
    """Accuracy of the score network ``net`` under L-inf PGD-``steps`` of radius ``epsilon`` (step ``2.5 eps / steps``); ``y`` in {-1, +1}."""
    from zoo.nn.attacks import PGD

    attack = PGD(eps=epsilon, alpha=2.5 * epsilon / steps, steps=steps, clip=None)
    x_adv = attack(ScoreLogits(net), x.to(DTYPE), (y > 0).long())
    with torch.no_grad():
        return float(((net(x_adv.to(DTYPE)).reshape(-1) > 0) == (y > 0)).double().mean())
