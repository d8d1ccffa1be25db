"""Exact learning of permutations from the k basis vectors with an NTK-regime ensemble.

Paper: Giapitzakis, Back de Luca, Fountoulakis, "Exact Learning of Permutations for Nonzero Binary
Inputs with Logarithmic Training Complexity" (arXiv 2502.16763, 2025). No official code was found.

The task: a fixed unknown permutation pi of k positions acts on nonzero binary inputs x in {0,1}^k;
the target is the permuted bit vector ``y = x P`` with ``P[i, pi(i)] = 1``. Training sees only the k
standard basis vectors ``e_i`` with labels ``e_pi(i)`` (the rows of ``P``). Each member is a two-layer
network in the NTK parameterisation, ``f(x) = A^T relu(W x) / sqrt(m)`` with ``W, A ~ N(0, 1)``,
trained by full-batch gradient descent on the squared loss. In the infinite-width limit the trained
output is a Gaussian process whose mean is the NTK regression ``mu(x) = Theta(x, E) Theta(E, E)^-1 P``;
that mean takes one value on the coordinates ``pi(i)`` with ``x_i = 1`` and a strictly smaller one on
the others, so averaging independently trained members (the ensemble) and rounding recovers ``x P``
exactly on all ``2^k - 1`` inputs once the random part is small enough (O(k^2) members for all inputs).

All members are trained as one batched tensor (weights ``(M, m, k)``, gradients in closed form with
``einsum``), which is the same arithmetic as training each member on its own (tested).

Rounding (turning the averaged output into bits):
- ``"topk_weight"``: a permutation keeps the Hamming weight, so the ``s = |x|_1`` largest coordinates
  are set to 1 (exact whenever the mean-separation holds, with no kernel constant needed);
- ``"threshold"``: the mean-separation threshold, the midpoint of the two NTK mean levels for inputs of
  weight ``s`` (computed from the closed-form ReLU NTK). The paper rounds with a threshold derived from
  the kernel's levels; this midpoint is our reading of it (we could not check the exact form);
- ``"half"``: the naive 0.5 threshold, which the paper's analysis shows is wrong (the levels move
  with ``s``); kept as a control.

Deviations / guesses: no biases (the paper's network is written without them here); the input layer is
not scaled by ``1/sqrt(k)`` (inputs are binary and k is small); the loss is ``1/(2n) sum_i |f(x_i) -
y_i|^2`` with step 1.0 for 200 steps (train MSE about 1e-20 at k = 8); float64 throughout.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from zoo.templates.solver import SolverModule

__all__ = [
    "ROUNDINGS",
    "PermutationEnsemble",
    "all_nonzero_inputs",
    "ensemble_forward",
    "ensemble_gd_step",
    "exact_match",
    "init_ensemble",
    "ntk_mean",
    "ntk_relu",
    "permutation_matrix",
    "round_outputs",
    "threshold_levels",
]

ROUNDINGS = ("topk_weight", "threshold", "half")
DTYPE = torch.float64


# ---------------------------------------------------------------------------------------------- the task
def permutation_matrix(pi: Tensor) -> Tensor:
    """``P[i, pi(i)] = 1`` (Section 2): then ``x P`` moves bit ``i`` to position ``pi(i)`` and ``e_i P = e_pi(i)``."""
    k = len(pi)
    p = torch.zeros(k, k, dtype=DTYPE)
    p[torch.arange(k), pi.long()] = 1.0
    return p


def all_nonzero_inputs(k: int) -> Tensor:
    """Every ``x in {0,1}^k \\ {0}`` (the test set), ``(2^k - 1, k)``, row ``j`` the bits of ``j + 1``."""
    codes = torch.arange(1, 2**k).unsqueeze(1)
    return ((codes >> torch.arange(k)) & 1).to(DTYPE)


# ---------------------------------------------------------------------------------------------- the NTK
def ntk_relu(x1: Tensor, x2: Tensor) -> Tensor:
    """Closed-form NTK of ``A^T relu(W x) / sqrt(m)`` (both layers trained, ``W, A ~ N(0,1)``, no bias).

    ``Theta(x, x') = x.x' (pi - t) / (2 pi) + |x||x'| (sin t + (pi - t) cos t) / (2 pi)``, ``t`` the angle:
    the first term is the first layer's (``E[relu'(w.x) relu'(w.x')]``), the second the output layer's
    (the arc-cosine kernel of degree 1). Returns ``(n1, n2)``; the kernel is the same for each output.
    """
    x1, x2 = x1.to(DTYPE), x2.to(DTYPE)
    dot = x1 @ x2.T
    norms = x1.norm(dim=1, keepdim=True) * x2.norm(dim=1).unsqueeze(0)
    cos = (dot / norms.clamp_min(1e-300)).clamp(-1.0, 1.0)
    t = torch.arccos(cos)
    return dot * (math.pi - t) / (2 * math.pi) + norms * (torch.sin(t) + (math.pi - t) * cos) / (2 * math.pi)


def ntk_mean(x: Tensor, train_x: Tensor, train_y: Tensor) -> Tensor:
    """The infinite-width, infinitely-trained mean ``mu(x) = Theta(x, E) Theta(E, E)^-1 Y`` (Section 3)."""
    gram = ntk_relu(train_x, train_x)
    return ntk_relu(x, train_x) @ torch.linalg.solve(gram, train_y.to(DTYPE))


def threshold_levels(k: int, s: Tensor) -> tuple[Tensor, Tensor]:
    """The two NTK mean levels for an input of weight ``s`` trained on the ``k`` basis vectors (Section 3).

    For the coordinates that should be 1 the mean is ``alpha(s)``, for the others ``beta(s)``, with
    ``alpha(s) > beta(s)``; they do not depend on the permutation. ``Theta(E, E) = (a - b) I + b 1 1^T``
    and ``Theta(x, e_i)`` is ``c1(s)`` when ``x_i = 1`` and ``c0(s)`` when ``x_i = 0``.
    """
    s = s.to(DTYPE)
    one = torch.ones((), dtype=DTYPE)
    unit = torch.eye(2, dtype=DTYPE)
    a = ntk_relu(unit[:1], unit[:1])[0, 0]  # Theta(e_i, e_i)
    b = ntk_relu(unit[:1], unit[1:])[0, 0]  # Theta(e_i, e_j), i != j
    # x of weight s against a basis vector inside (angle acos(1/sqrt s)) or outside (orthogonal) its support
    cos_in = one / s.sqrt()
    t_in = torch.arccos(cos_in)
    c1 = (math.pi - t_in) / (2 * math.pi) + s.sqrt() * (torch.sin(t_in) + (math.pi - t_in) * cos_in) / (2 * math.pi)
    c0 = s.sqrt() / (2 * math.pi)
    # Theta(E,E)^-1 = (I - b/(a - b + k b) 1 1^T) / (a - b); v^T Theta^-1 has entries (v_i - b S / (a - b + k b)) / (a - b)
    total = s * c1 + (k - s) * c0
    shift = b * total / (a - b + k * b)
    return (c1 - shift) / (a - b), (c0 - shift) / (a - b)


# ---------------------------------------------------------------------------------------------- the ensemble
def init_ensemble(num_models: int, k: int, width: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """NTK initialisation of ``M`` independent members: ``W (M, m, k)`` and ``A (M, m, k)``, all ``N(0, 1)``."""
    w = torch.randn(num_models, width, k, generator=generator, dtype=DTYPE)
    a = torch.randn(num_models, width, k, generator=generator, dtype=DTYPE)
    return w, a


def ensemble_forward(w: Tensor, a: Tensor, x: Tensor) -> Tensor:
    """Every member's output ``f_m(x) = A_m^T relu(W_m x) / sqrt(m)``: ``(M, n, k)`` for ``x (n, k)``."""
    hidden = torch.relu(w @ x.to(w.dtype).T)  # (M, m, n)
    return hidden.transpose(1, 2) @ a / math.sqrt(w.shape[1])


def ensemble_gd_step(w: Tensor, a: Tensor, x: Tensor, y: Tensor, lr: float) -> tuple[Tensor, Tensor, Tensor]:
    """One full-batch GD step of every member on ``L_m = 1/(2n) sum_i |f_m(x_i) - y_i|^2``, gradients in closed form.

    Returns the new ``(W, A)`` and the per-member loss before the step (``(M,)``).
    """
    n, width = x.shape[0], w.shape[1]
    x = x.to(w.dtype)
    pre = w @ x.T  # (M, m, n), every member in one batched matmul
    hidden = torch.relu(pre)
    scale = 1.0 / math.sqrt(width)
    resid = hidden.transpose(1, 2) @ a * scale - y.to(w.dtype)  # (M, n, k)
    loss = 0.5 * resid.pow(2).sum(dim=(1, 2)) / n
    resid = resid * (scale / n)
    grad_a = hidden @ resid  # dL/dA (M, m, k)
    grad_w = ((a @ resid.transpose(1, 2)) * (pre > 0)) @ x  # dL/dW through relu' (M, m, k)
    return w - lr * grad_w, a - lr * grad_a, loss


def round_outputs(out: Tensor, x: Tensor, rounding: str) -> Tensor:
    """Bits from the averaged output ``out (n, k)`` for inputs ``x (n, k)`` by one of :data:`ROUNDINGS`."""
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
    weight = x.sum(dim=1).round().long()
    if rounding == "half":
        return (out > 0.5).to(DTYPE)
    if rounding == "threshold":  # midpoint of the two NTK mean levels for weight s
        alpha, beta = threshold_levels(x.shape[1], weight)
        return (out > ((alpha + beta) / 2).to(out.dtype).unsqueeze(1)).to(DTYPE)
    # topk_weight: the s largest coordinates (permutations keep the Hamming weight)
    rank = out.argsort(dim=1, descending=True).argsort(dim=1)
    return (rank < weight.unsqueeze(1)).to(DTYPE)


def exact_match(pred: Tensor, target: Tensor) -> float:
    """Fraction of rows whose every bit is right."""
    return float((pred == target.to(pred.dtype)).all(dim=1).to(DTYPE).mean())


# ---------------------------------------------------------------------------------------------- the module
class PermutationEnsemble(SolverModule):
    """``num_models`` two-layer NTK networks trained together by full-batch GD; forward gives their mean.

    A :class:`~zoo.templates.solver.SolverModule`: fit gathers the ``k`` training pairs ``(e_i, e_pi(i))``
    once and runs ``steps`` GD steps of every member at once (``iters_per_step`` per training step).
    ``forward(x)`` is the ensemble's averaged output ``(n, k)``; ``predict_step`` rounds it with
    ``rounding``. The test step logs the exact-match accuracy (every bit right) of the chosen rounding
    (``test/exact``), of each rounding (``test/exact_<rounding>``) and of the first member alone
    (``test/exact_single``), on the DataModule's test set (all ``2^k - 1`` nonzero inputs).

    Args:
        k: bits (input and output width).
        width: hidden neurons per member (NTK regime: wide).
        num_models: ensemble size M.
        lr, steps, iters_per_step: full-batch GD.
        rounding: one of :data:`ROUNDINGS`.
        seed: the members' initialisation.

    >>> model = PermutationEnsemble(k=4, width=8, num_models=2)
    >>> model(torch.eye(4)).shape
    torch.Size([4, 4])
    """

    def __init__(
        self,
        k: int = 8,
        width: int = 512,
        num_models: int = 16,
        lr: float = 1.0,
        steps: int = 200,
        iters_per_step: int = 200,
        rounding: str = "topk_weight",
        seed: int = 0,
    ) -> None:
        super().__init__()
        if rounding not in ROUNDINGS:
            raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
        if min(k, width, num_models, steps, iters_per_step) < 1 or lr <= 0:
            raise ValueError("k, width, num_models, steps, iters_per_step must be positive and lr > 0")
        self.save_hyperparameters()
        w, a = init_ensemble(num_models, k, width, torch.Generator().manual_seed(seed))
        self.w = nn.Parameter(w, requires_grad=False)
        self.a = nn.Parameter(a, requires_grad=False)
        self.done_steps = 0
        self._x: Tensor | None = None
        self._y: Tensor | None = None
        self._loss = float("nan")

    def forward(self, x: Tensor) -> Tensor:
        return ensemble_forward(self.w, self.a, x).mean(dim=0)

    # ------------------------------------------------------------------ SolverModule hooks
    @property
    def iterations(self) -> int:
        return self.done_steps

    @property
    def max_iters(self) -> int:
        return int(self.hparams.steps)

    def start_solver(self, x: Tensor, y: Tensor) -> None:
        k = self.hparams.k
        if x.shape[1] != k:
            raise ValueError(f"the data has {x.shape[1]} bits, the model was built with k={k}")
        self._x, self._y = x.to(DTYPE), y.reshape(len(x), -1).to(DTYPE)
        self.done_steps = 0

    def solver_iterate(self, iterations: int) -> bool:
        assert self._x is not None and self._y is not None
        w, a = self.w.data, self.a.data
        for _ in range(iterations):
            w, a, loss = ensemble_gd_step(w, a, self._x, self._y, self.hparams.lr)
            self.done_steps += 1
            self._loss = float(loss.mean())
        self.w.data.copy_(w)
        self.a.data.copy_(a)
        return False

    def solver_metrics(self, final: bool) -> dict[str, float]:
        assert self._x is not None and self._y is not None
        out = ensemble_forward(self.w, self.a, self._x)
        mse = float((out - self._y).pow(2).mean())
        return {"train/loss": self._loss, "train/mse": mse}

    # ------------------------------------------------------------------ evaluation
    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch[0].to(DTYPE), batch[1].to(DTYPE)
        members = ensemble_forward(self.w, self.a, x)
        mean = members.mean(dim=0)
        logs = {f"test/exact_{r}": exact_match(round_outputs(mean, x, r), y) for r in ROUNDINGS}
        logs["test/exact"] = logs[f"test/exact_{self.hparams.rounding}"]
        logs["test/exact_single"] = exact_match(round_outputs(members[0], x, self.hparams.rounding), y)
        self.log_dict({k: torch.tensor(v, dtype=DTYPE) for k, v in logs.items()}, batch_size=len(x))

    def predict_step(self, batch: tuple[Tensor, Tensor] | Tensor, batch_idx: int) -> Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return round_outputs(self(x), x.to(DTYPE), self.hparams.rounding)
