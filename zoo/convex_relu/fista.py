"""The sampled convex program without cone constraints (the gated ReLU model), solved by FISTA."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from zoo.convex_relu.patterns import DTYPE

__all__ = ["fista_gated"]


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
    for done in range(1, iterations + 1):  # noqa: B007 - the count is returned
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
