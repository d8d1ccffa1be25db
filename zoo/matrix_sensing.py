"""How Over-Parameterization Slows Down Gradient Descent in Matrix Sensing: The Curses of Symmetry
and Initialization (Xiong, Ding, Du; ICLR 2024). arXiv 2310.01769. No official code was found.

Matrix sensing: recover a rank-``r`` matrix ``M*`` from ``m`` Gaussian measurements
``y_i = <A_i, M*>`` by gradient descent on a factorisation, with loss
``L = 1/2 sum_i (<A_i, F G^T> - y_i)^2`` (asymmetric, ``F (n1, k)``, ``G (n2, k)``) or
``L = 1/2 sum_i (<A_i, X X^T> - y_i)^2`` (symmetric, ``X (n, k)``). The paper shows that with
``k > r`` (over-parameterised) symmetric GD slows to a ``1/T^2`` rate (the curse of symmetry),
asymmetric GD from a small initialisation ``alpha`` converges linearly but at a rate
``exp(-Omega(alpha^2 T))`` (the curse of initialisation: the imbalance ``F^T F - G^T G`` is nearly
conserved by GD and its size, about ``alpha^2``, sets how fast the ``k - r`` spurious directions
decay), and that one extra step, applied once, makes the rate independent of ``alpha``.

This file holds the maths as functions (the sensing operator, the loss and its closed-form
gradients, the one-step rebalance, a plain GD loop) and :class:`MatrixSensingModule`, the
factorised model trained by full-batch ``torch.optim.SGD`` (no momentum) under Lightning. The
callback ``zoo.callbacks.OneStepRebalance`` applies :func:`rebalance` once at a chosen step.

Deviations and guesses:

- The one-step modification is implemented as ``F <- sqrt(gamma) F (F^T F)^{-1/2}``,
  ``G <- G (F^T F)^{1/2} / sqrt(gamma)``: the product ``F G^T`` is unchanged and afterwards
  ``F^T F = gamma I``, a large, well-conditioned imbalance. This is our reading of the paper's
  Section 6 step, not checked line by line against its text; it reproduces the behaviour the
  paper reports (the rebalanced run reaches the exactly parameterised linear rate).
- The Gram's eigenvalues are floored at ``eps`` before the inverse square root (a guess; the paper
  assumes ``F`` has full column rank).
- Initialisation: entries i.i.d. ``alpha * N(0, 1/n)`` (``n = n1`` for ``F``, ``n2`` for ``G``),
  ``F`` and ``G`` drawn independently (``G = F`` would bring back the curse of symmetry).
- Everything runs in float64: the claim measures errors down to ``1e-10`` and below.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from lightning.pytorch.utilities.types import OptimizerLRScheduler
from torch import Tensor, nn

from zoo.hub import ZooModule

__all__ = [
    "sense",
    "sensing_loss",
    "sensing_residual_matrix",
    "asymmetric_gradients",
    "symmetric_gradient",
    "imbalance",
    "rebalance",
    "factorized_gd",
    "MatrixSensingModule",
]

PARAMETERIZATIONS = ("asymmetric", "symmetric")


# ----------------------------------------------------------------------------------------- the maths
def sense(a: Tensor, m: Tensor) -> Tensor:
    """The sensing operator ``A(M)_i = <A_i, M>``: ``a (m, n1 * n2)`` (each ``A_i`` row-major flattened), ``m (n1, n2)``."""
    return a @ m.reshape(-1)


def sensing_loss(a: Tensor, y: Tensor, f: Tensor, g: Tensor) -> Tensor:
    """The paper's loss ``L(F, G) = 1/2 ||A(F G^T) - y||^2`` (Section 2); the symmetric case passes ``g = f``."""
    return 0.5 * (sense(a, f @ g.T) - y).pow(2).sum()


def sensing_residual_matrix(a: Tensor, y: Tensor, f: Tensor, g: Tensor) -> Tensor:
    """``S = A^*(A(F G^T) - y) = sum_i (<A_i, F G^T> - y_i) A_i``, shape ``(n1, n2)``."""
    return ((sense(a, f @ g.T) - y) @ a).reshape(f.shape[0], g.shape[0])


def asymmetric_gradients(a: Tensor, y: Tensor, f: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
    """The asymmetric GD direction (Section 2): ``grad_F L = S G``, ``grad_G L = S^T F``."""
    s = sensing_residual_matrix(a, y, f, g)
    return s @ g, s.T @ f


def symmetric_gradient(a: Tensor, y: Tensor, x: Tensor) -> Tensor:
    """The symmetric GD direction: ``grad_X 1/2 ||A(X X^T) - y||^2 = (S + S^T) X``."""
    s = sensing_residual_matrix(a, y, x, x)
    return (s + s.T) @ x


def imbalance(f: Tensor, g: Tensor) -> Tensor:
    """``F^T F - G^T G`` (k x k): conserved by gradient flow, nearly conserved by small-step GD (Section 4)."""
    return f.T @ f - g.T @ g


def rebalance(f: Tensor, g: Tensor, gamma: float = 0.5, eps: float = 1e-12) -> tuple[Tensor, Tensor]:
    """The one-step modification (Section 6): ``F <- sqrt(gamma) F (F^T F)^{-1/2}``, ``G <- G (F^T F)^{1/2} / sqrt(gamma)``.

    ``F G^T`` is unchanged (the two factors ``(F^T F)^{-1/2}`` and ``(F^T F)^{1/2}`` cancel) and
    afterwards ``F^T F = gamma I``. The Gram's eigenvalues are floored at ``eps``.
    """
    if gamma <= 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    evals, evecs = torch.linalg.eigh(f.T @ f)
    evals = evals.clamp_min(eps)
    root = (evecs * evals.sqrt()) @ evecs.T  # (F^T F)^{1/2}
    inv_root = (evecs / evals.sqrt()) @ evecs.T  # (F^T F)^{-1/2}
    scale = math.sqrt(gamma)
    return scale * (f @ inv_root), (g @ root) / scale


def factorized_gd(
    a: Tensor,
    y: Tensor,
    f: Tensor,
    g: Tensor | None,
    lr: float,
    steps: int,
    truth: Tensor,
    rebalance_at: int | None = None,
    gamma: float = 0.5,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Plain GD (``g=None``: symmetric, ``X = f``), optionally rebalanced once before step ``rebalance_at``.

    Returns the final factors and ``||F_t G_t^T - M*||_F`` for ``t = 0 .. steps``.
    """
    errors = []
    for t in range(steps + 1):
        product = f @ (f if g is None else g).T
        errors.append(torch.linalg.matrix_norm(product - truth))
        if t == steps:
            break
        if g is None:
            f = f - lr * symmetric_gradient(a, y, f)  # X <- X - eta grad_X L(X X^T)
            continue
        if rebalance_at is not None and t == rebalance_at:
            f, g = rebalance(f, g, gamma)
        grad_f, grad_g = asymmetric_gradients(a, y, f, g)
        f, g = f - lr * grad_f, g - lr * grad_g  # F <- F - eta S G, G <- G - eta S^T F (simultaneous)
    return f, g, torch.stack(errors)


# ---------------------------------------------------------------------------------------- the module
class MatrixSensingModule(ZooModule):
    """A factorised matrix ``F G^T`` (or ``X X^T``) fitted to sensing measurements by full-batch GD.

    Batches are ``(x, y)`` with ``x (m, n1 * n2)`` the flattened sensing matrices and ``y (m,)`` the
    measurements; ``forward(x)`` returns ``<A_i, F G^T>``. When the DataModule exposes
    ``ground_truth`` (``SensingDataModule`` does), ``train/recovery_error = ||F G^T - M*||_F`` is
    logged after every step. ``factor_parameters()`` gives ``(F, G)`` to ``OneStepRebalance``.

    >>> model = MatrixSensingModule(n1=5, n2=4, k=3)
    >>> model(torch.zeros(2, 20, dtype=torch.float64)).shape
    torch.Size([2])
    """

    def __init__(
        self,
        n1: int = 20,
        n2: int = 20,
        k: int = 4,
        parameterization: str = "asymmetric",
        init_scale: float = 1e-2,
        lr: float = 0.2,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"parameterization must be one of {PARAMETERIZATIONS}, got {parameterization!r}")
        if parameterization == "symmetric" and n1 != n2:
            raise ValueError(f"the symmetric parameterization X X^T needs n1 == n2, got {n1} and {n2}")
        if min(n1, n2, k) < 1 or init_scale <= 0 or lr <= 0:
            raise ValueError("n1, n2 and k must be >= 1; init_scale and lr must be > 0")
        self.save_hyperparameters()
        gen = torch.Generator().manual_seed(seed)
        self.F = nn.Parameter(init_scale * torch.randn(n1, k, generator=gen, dtype=torch.float64) / math.sqrt(n1))
        self.G: nn.Parameter | None = None
        if parameterization == "asymmetric":  # drawn independently of F (G = F is the curse of symmetry)
            self.G = nn.Parameter(init_scale * torch.randn(n2, k, generator=gen, dtype=torch.float64) / math.sqrt(n2))
        self._truth: Tensor | None = None

    def product(self) -> Tensor:
        """The estimate ``F G^T`` (``X X^T`` when symmetric)."""
        return self.F @ (self.F if self.G is None else self.G).T

    def factor_parameters(self) -> tuple[nn.Parameter, nn.Parameter]:
        """``(F, G)``, the two factors ``OneStepRebalance`` transforms (asymmetric only)."""
        if self.G is None:
            raise TypeError("the symmetric parameterization X X^T has one factor; the one-step rebalance needs parameterization='asymmetric'")
        return self.F, self.G

    def forward(self, x: Tensor) -> Tensor:
        return sense(x.to(self.F.dtype), self.product())

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = 0.5 * (self(x) - y.to(self.F.dtype)).pow(2).sum()  # L = 1/2 ||A(F G^T) - y||^2
        self.log("train/loss", loss, on_step=True, on_epoch=False, batch_size=1)
        return loss

    def on_train_start(self) -> None:
        truth = getattr(self.trainer.datamodule, "ground_truth", None) if self.trainer.datamodule is not None else None
        self._truth = None if truth is None else truth.to(device=self.device, dtype=self.F.dtype)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._truth is not None:
            with torch.no_grad():
                error = torch.linalg.matrix_norm(self.product() - self._truth)
            self.log("train/recovery_error", error, on_step=True, on_epoch=False, batch_size=1)

    def configure_optimizers(self) -> OptimizerLRScheduler:
        return torch.optim.SGD(self.parameters(), lr=self.hparams["lr"], momentum=0.0)  # plain full-batch GD
