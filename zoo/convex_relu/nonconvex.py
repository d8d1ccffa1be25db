"""The back-propagation baseline: the equivalent non-convex network trained by full-batch Adam.

Several random starts are trained at once (batched); with ``epsilon > 0`` each step trains on L-inf
PGD examples (Madry et al.), the paper's adversarial-training baseline.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.convex_relu.patterns import DTYPE
from zoo.convex_relu.problem import loss_scale, to_sequential

__all__ = ["AdamRun", "sequential_from_restart", "train_nonconvex"]


def _init_restarts(input_dim: int, width: int, restarts: int, bias: bool, seed: int) -> list[Tensor]:
    """``restarts`` independent ``nn.Linear``-style initialisations (uniform, ``1/sqrt(fan_in)``), batched."""
    gen = torch.Generator().manual_seed(int(seed))
    a1, a2 = 1 / math.sqrt(input_dim), 1 / math.sqrt(width)
    w1 = (torch.rand(restarts, input_dim, width, generator=gen, dtype=DTYPE) * 2 - 1) * a1
    b1 = (torch.rand(restarts, 1, width, generator=gen, dtype=DTYPE) * 2 - 1) * a1 if bias else None
    w2 = (torch.rand(restarts, width, 1, generator=gen, dtype=DTYPE) * 2 - 1) * a2
    return [t for t in (w1, b1, w2) if t is not None]


class _BatchedNets(nn.Module):
    """``R`` two-layer nets evaluated at once: ``(R, n, d) -> (R, n)``; ``logits`` for the shared PGD."""

    def __init__(self, params: list[Tensor], bias: bool) -> None:
        super().__init__()
        self.params, self.bias = params, bias

    def forward(self, x: Tensor) -> Tensor:
        w1, w2 = self.params[0], self.params[-1]
        h = x @ w1 + (self.params[1] if self.bias else 0)
        return (h.clamp_min(0) @ w2)[..., 0]

    def logits(self, x: Tensor) -> Tensor:
        f = self(x).reshape(-1)
        return torch.stack([torch.zeros_like(f), f], 1)


class AdamRun:
    """Full-batch Adam (cosine learning rate) on ``R`` random starts of the non-convex objective at once."""

    def __init__(
        self, x: Tensor, y: Tensor, width: int, beta: float, loss: str, reduction: str, restarts: int, steps: int, lr: float,
        bias: bool, seed: int, epsilon: float = 0.0, attack_steps: int = 10,
    ) -> None:
        self.x, self.y = x.to(DTYPE), y.to(DTYPE)
        self.beta, self.loss, self.scale, self.bias = beta, loss, loss_scale(len(y), reduction), bias
        self.params = [p.to(x.device).requires_grad_(True) for p in _init_restarts(x.shape[1], width, restarts, bias, seed)]
        self.nets = _BatchedNets(self.params, bias)
        self.opt = torch.optim.Adam(self.params, lr=lr)
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=max(1, steps))
        self.steps, self.done, self.epsilon = steps, 0, epsilon
        self.labels = ((self.y > 0).long()).repeat(restarts)
        if epsilon > 0:
            from zoo.nn.attacks import PGD

            self.attack = PGD(eps=epsilon, alpha=2.5 * epsilon / attack_steps, steps=attack_steps, clip=None)

    def objectives(self, x: Tensor | None = None) -> Tensor:
        """Per-restart objective ``scale * l(f(x), y) + beta/2 ||theta||^2`` (``(R,)``)."""
        x = self.x if x is None else x
        pred = self.nets(x.expand(len(self.params[0]), *x.shape[-2:]))
        y = self.y.expand_as(pred)
        if self.loss == "squared":
            data = 0.5 * (pred - y).pow(2).sum(1)
        elif self.loss == "hinge":
            data = (1 - y * pred).clamp_min(0).sum(1)
        else:
            data = F.softplus(-y * pred).sum(1)
        penalty = sum(p.pow(2).flatten(1).sum(1) for p in self.params)
        return self.scale * data + self.beta / 2 * penalty

    def step(self, iterations: int) -> bool:
        """Up to ``iterations`` Adam steps (never past ``steps`` in all); True once all are done."""
        for _ in range(min(iterations, self.steps - self.done)):
            x = self.x
            if self.epsilon > 0:  # PGD adversarial training (Madry et al.) of every start
                xb = x.expand(len(self.params[0]), *x.shape).contiguous()
                x = self.attack(_LogitsOf(self.nets), xb, self.labels).detach()
            self.opt.zero_grad(set_to_none=True)
            self.objectives(x).sum().backward()
            self.opt.step()
            self.sched.step()
            self.done += 1
        return self.done >= self.steps

    def best(self) -> tuple[int, Tensor]:
        """``(index of the best start, every start's objective)``: the clean objective, or for PGD adversarial
        training the objective it trains, on PGD examples of the training points (the same attack)."""
        x = None
        if self.epsilon > 0:
            x = self.attack(_LogitsOf(self.nets), self.x.expand(len(self.params[0]), *self.x.shape).contiguous(), self.labels).detach()
        with torch.no_grad():
            values = self.objectives(x)
        return int(values.argmin()), values


class _LogitsOf(nn.Module):
    """The batched nets' two-class logits as a module, for the shared PGD attack."""

    def __init__(self, nets: _BatchedNets) -> None:
        super().__init__()
        self.nets = nets

    def forward(self, x: Tensor) -> Tensor:
        return self.nets.logits(x)


def train_nonconvex(
    x: Tensor, y: Tensor, width: int, beta: float, loss: str = "squared", reduction: str = "sum", restarts: int = 10,
    steps: int = 4000, lr: float = 1e-2, bias: bool = True, seed: int = 0, epsilon: float = 0.0,
) -> tuple[nn.Sequential, Tensor]:
    """The equivalent non-convex network trained by full-batch Adam from ``restarts`` random starts.

    Returns the best start as an ``nn.Sequential`` and every start's final objective (``(restarts,)``).
    ``x`` raw inputs, ``y`` targets in {-1, +1}; ``epsilon > 0`` trains on L-inf PGD examples.
    """
    run = AdamRun(x, y, width, beta, loss, reduction, restarts, steps, lr, bias, seed, epsilon)
    run.step(steps)
    idx, values = run.best()
    return sequential_from_restart(run.params, idx, bias), values


def sequential_from_restart(params: list[Tensor], idx: int, bias: bool) -> nn.Sequential:
    """Start ``idx`` of the batched parameters as an ordinary ``nn.Sequential(Linear, ReLU, Linear)``."""
    w1, w2 = params[0][idx].detach(), params[-1][idx].detach()
    u = torch.cat([w1.T, params[1][idx].detach().T], 1) if bias else w1.T
    return to_sequential(u, w2[:, 0], w1.shape[0], bias=bias)
