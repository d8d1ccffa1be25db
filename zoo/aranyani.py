"""Aranyani: group fairness online with a soft oblique decision forest and node-level aggregate gradients.

Paper: Basu Roy Chowdhury, Monath, Beirami, Kidambi, Dubey, Ahmed, Chaturvedi, "Enhancing Group Fairness in
Online Settings Using Oblique Decision Forests" (Aranyani), ICLR 2024, arXiv 2310.11401 (Sections 2, 3.3, 3.4).
Official code: github.com/brcsomnath/Aranyani (TensorFlow 2): ``src/fdt.py`` (one soft oblique tree),
``src/forest.py`` (the mean of trees), ``src/aranyani.py`` (``train_online``: the fairness update),
``src/utils.py`` (``get_demographic_parity``).

What it does. Each tree of depth ``h`` has ``2^h - 1`` internal nodes with oblique soft splits
``n_j(x) = sigmoid(w_j^T x + b_j)`` and ``2^h`` leaves with class scores ``Theta_l``; a leaf's routing
probability is the product over its ancestors of ``n_j`` (leaf in ``j``'s left subtree) or ``1 - n_j``
(right subtree); the tree outputs ``sum_l P(l | x) softmax(Theta_l)`` and the forest the mean over trees,
a probability vector trained with cross-entropy on probabilities. Samples ``(x_t, y_t, a_t)`` arrive one at a
time; the forest predicts first (prequential accuracy and demographic parity over all predictions so far),
then takes one Adam step on the task gradient plus ``lambda`` times a fairness gradient on the split
parameters only. Demographic parity is imposed per node: ``F_j = E[n_j | a = 1] - E[n_j | a = 0]``,
estimated by running aggregates of past node decisions per group, and its gradient by running aggregates
of each node's own ``dn_j / d(w_j, b_j)`` per group, so no past sample is stored and no extra pass is made.
The Huber-smoothed ``|F_j|`` gives the weight ``F_j`` when ``|F_j| < delta`` and ``sign(F_j - delta/2)``
otherwise (official ``train_online``).

Deviations and guesses:

- the per-node gradients are the analytic ``n (1 - n) x`` and ``n (1 - n)`` (exact for sigmoid splits;
  tested against autograd), not one autograd call per sample; only the sigmoid activation is built;
- only the ``node`` constraint is built (the official ``leaf`` mode takes the gradient of the sum of the
  forest's class probabilities, which is about zero);
- underflow guard: as the official tree, ``1e-8`` is added to every routing factor, and the leaf path
  product is clipped at ``1e-300`` in float64 (an independent CPU check saw NaN updates at large lambda
  without a guard); the predicted probability in the cross-entropy is clipped at the same floor;
- the fairness term is skipped until both groups have been seen (the official loop skips the whole
  update then, task gradient included: at most a few samples);
- Adam as the official Keras default (``lr = 2e-3``, ``eps = 1e-7``); float64 throughout.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from zoo.templates.online import OnlineAlgorithm, OnlineModule

__all__ = [
    "AranyaniModule",
    "FairOnlineLearner",
    "ObliqueForest",
    "demographic_parity",
    "fairness_gradient",
    "forest_output",
    "leaf_mask",
    "leaf_probabilities",
    "node_decision_gradients",
    "node_decisions",
    "update_group_average",
]

GRAD_AVG = ("vanilla", "momentum", "ema")
LEAF_FLOOR = 1e-300


# ---------------------------------------------------------------------------------------------- maths
def leaf_mask(depth: int) -> Tensor:
    """``(2^h - 1, 2^h)``: +1 where the leaf is in the node's left subtree, -1 in its right one, 0 elsewhere.

    Nodes in heap order (children of ``k`` are ``2k + 1`` left and ``2k + 2`` right), leaves left to right
    (the official ``construct_mask_matrix``).
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    nodes, leaves = 2**depth - 1, 2**depth
    mask = torch.zeros(nodes, leaves, dtype=torch.float64)
    for leaf in range(leaves):
        heap = leaf + nodes  # the leaf's heap index
        while heap > 0:
            parent = (heap - 1) // 2
            mask[parent, leaf] = 1.0 if heap == 2 * parent + 1 else -1.0
            heap = parent
    return mask


def node_decisions(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """Oblique soft splits ``n_j(x) = sigmoid(w_j^T x + b_j)``: ``x (B, d)``, ``W (T, d, K)``, ``b (T, K)`` -> ``(T, B, K)``."""
    return torch.sigmoid(torch.einsum("bd,tdk->tbk", x, weight) + bias[:, None, :])


def leaf_probabilities(n: Tensor, mask: Tensor, eps: float = 1e-8, floor: float = LEAF_FLOOR) -> Tensor:
    """``P(l | x) = prod_j factor_jl``: ``n_j`` (left subtree), ``1 - n_j`` (right), 1 (not an ancestor).

    ``n (..., K)`` -> ``(..., L)``. Every factor gets ``+eps`` (official ``fdt.py``); the product is clipped
    at ``floor`` (the underflow guard).
    """
    left, right = (mask > 0).to(n.dtype), (mask < 0).to(n.dtype)
    nj = n[..., :, None]
    factors = left * nj + right * (1.0 - nj) + (1.0 - left - right) + eps
    return factors.prod(dim=-2).clamp_min(floor)


def forest_output(leaf_p: Tensor, theta: Tensor) -> Tensor:
    """Forest class probabilities: mean over trees of ``sum_l P(l | x) softmax(Theta_l)``; ``(T, B, L)`` -> ``(B, C)``."""
    return torch.einsum("tbl,tlc->tbc", leaf_p, theta.softmax(-1)).mean(0)


def node_decision_gradients(n: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """Each node's own gradient (parameter isolation): ``dn_j/dw_j = n_j (1 - n_j) x``, ``dn_j/db_j = n_j (1 - n_j)``.

    ``n (T, K)`` for one sample ``x (d,)`` -> ``(T, d, K)`` and ``(T, K)`` (official: ``tape.gradient`` of the
    node decisions w.r.t. W and B, per sample).
    """
    s = n * (1.0 - n)
    return s[:, None, :] * x[None, :, None], s


def update_group_average(avg: Tensor, grad: Tensor, count: int, mode: str = "vanilla", gamma: float = 0.9) -> Tensor:
    """The group's aggregate of node gradients after its ``count``-th sample (``count`` includes this one).

    ``vanilla``: running mean ``G <- (1 - 1/N) G + g / N``; ``momentum`` and ``ema``: ``G <- gamma G + g``
    (``ema`` is bias-corrected when used, :func:`ema_correction`).
    """
    if mode == "vanilla":
        return avg * (1.0 - 1.0 / count) + grad / count
    if mode in ("momentum", "ema"):
        return gamma * avg + grad
    raise ValueError(f"grad_avg must be one of {GRAD_AVG}, got {mode!r}")


def ema_correction(count: int, mode: str, gamma: float) -> float:
    """``(1 - gamma) / (1 - gamma^N)`` for ``ema``, 1 otherwise."""
    return (1.0 - gamma) / (1.0 - gamma**count) if mode == "ema" else 1.0


def fairness_gradient(f: Tensor, grad_1: Tensor, grad_0: Tensor, delta: float = 0.01) -> Tensor:
    """Gradient of the Huber-smoothed node DP ``sum_j |F_j|``: ``w_j (G_1 - G_0)_j`` per node.

    ``w_j = F_j`` if ``|F_j| < delta`` else ``sign(F_j - delta/2)`` (official ``train_online``); ``f (T, K)``;
    ``grad_a`` ``(T, K)`` (bias) or ``(T, d, K)`` (weights).
    """
    w = torch.where(f.abs() < delta, f, torch.sign(f - delta / 2))
    if grad_1.dim() == 3:
        w = w[:, None, :]
    return w * (grad_1 - grad_0)


def demographic_parity(positives: Tensor, counts: Tensor) -> float:
    """``|P(yhat = 1 | a = 1) - P(yhat = 1 | a = 0)|`` from per-group positive-prediction counts (0 if a group is empty)."""
    if bool((counts == 0).any()):
        return 0.0
    rate = positives / counts
    return float((rate[1] - rate[0]).abs())


# ---------------------------------------------------------------------------------------------- modules
class ObliqueForest(nn.Module):
    """``num_trees`` soft oblique trees of depth ``depth``; W, b ~ N(0, 1), Theta ~ U(0, 1) (official init)."""

    def __init__(self, in_dim: int = 10, num_classes: int = 2, num_trees: int = 3, depth: int = 4, seed: int = 0, eps: float = 1e-8) -> None:
        super().__init__()
        nodes, leaves = 2**depth - 1, 2**depth
        g = torch.Generator().manual_seed(seed)
        f64 = torch.float64
        self.weight = nn.Parameter(torch.randn(num_trees, in_dim, nodes, generator=g, dtype=f64))
        self.bias = nn.Parameter(torch.randn(num_trees, nodes, generator=g, dtype=f64))
        self.theta = nn.Parameter(torch.rand(num_trees, leaves, num_classes, generator=g, dtype=f64))
        self.register_buffer("mask", leaf_mask(depth), persistent=False)
        self.eps = eps

    def routing(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(node decisions (T, B, K), leaf probabilities (T, B, L))``."""
        n = node_decisions(x.to(self.weight.dtype), self.weight, self.bias)
        return n, leaf_probabilities(n, self.mask, self.eps)

    def forward(self, x: Tensor) -> Tensor:
        """Class probabilities ``(B, C)`` (not logits)."""
        _, leaf_p = self.routing(x)
        return forest_output(leaf_p, self.theta)


class FairOnlineLearner(OnlineAlgorithm):
    """Serve ``(x, y, a)``: predict (prequential metrics), then one Adam step on CE + lambda x node fairness.

    State (in :meth:`state_dict`): per group ``a`` the node-decision sums ``S_a``, counts ``N_a``, the
    gradient aggregates ``G_a`` for W and b, and the prequential counts (correct, positives per group).
    The cost of a request is the 0-1 loss of the prediction made before the update.
    """

    def __init__(
        self,
        forest: ObliqueForest,
        lambda_fair: float = 0.1,
        lr: float = 2e-3,
        huber_delta: float = 0.01,
        grad_avg: str = "vanilla",
        gamma: float = 0.9,
    ) -> None:
        if grad_avg not in GRAD_AVG:
            raise ValueError(f"grad_avg must be one of {GRAD_AVG}, got {grad_avg!r}")
        self.forest, self.lambda_fair, self.lr, self.huber_delta = forest, float(lambda_fair), lr, huber_delta
        self.grad_avg, self.gamma = grad_avg, gamma
        self.optimizer: Any = None  # the module hands over Lightning's; standalone use makes its own Adam
        self.reset()

    def reset(self) -> None:
        w = self.forest.weight
        t, d, k = w.shape
        self.node_sums = torch.zeros(2, t, k, dtype=w.dtype)
        self.group_counts = torch.zeros(2, dtype=torch.long)
        self.grad_w = torch.zeros(2, t, d, k, dtype=w.dtype)
        self.grad_b = torch.zeros(2, t, k, dtype=w.dtype)
        self.correct = 0
        self.served = 0
        self.positives = torch.zeros(2, dtype=torch.float64)

    # metrics ---------------------------------------------------------------------------------
    @property
    def accuracy(self) -> float:
        return self.correct / max(self.served, 1)

    @property
    def dp(self) -> float:
        return demographic_parity(self.positives, self.group_counts.double())

    # the update ------------------------------------------------------------------------------
    def serve(self, request: Any) -> float:
        x, y, a = request
        x, y, a = torch.as_tensor(x, dtype=self.forest.weight.dtype), int(y), int(a)
        forest = self.forest
        with torch.enable_grad():
            n, leaf_p = forest.routing(x[None])
            probs = forest_output(leaf_p, forest.theta)[0]
            pred = int(probs.argmax())  # prequential: predict before learning from (x, y)
            loss = -probs[y].clamp_min(LEAF_FLOOR).log()  # CE on probabilities
            g_w, g_b, g_theta = torch.autograd.grad(loss, (forest.weight, forest.bias, forest.theta))
        self.served += 1
        self.correct += int(pred == y)
        self.positives[a] += float(pred == 1)
        # node aggregates of the sample's group: S_a += n(x), N_a += 1, G_a <- running average of dn/dtheta
        n = n.detach()[:, 0, :]
        self.group_counts[a] += 1
        self.node_sums[a] += n
        count = int(self.group_counts[a])
        dn_w, dn_b = node_decision_gradients(n, x)
        self.grad_w[a] = update_group_average(self.grad_w[a], dn_w, count, self.grad_avg, self.gamma)
        self.grad_b[a] = update_group_average(self.grad_b[a], dn_b, count, self.grad_avg, self.gamma)
        if self.lambda_fair != 0.0 and bool((self.group_counts > 0).all()):
            n0, n1 = int(self.group_counts[0]), int(self.group_counts[1])
            f = self.node_sums[1] / n1 - self.node_sums[0] / n0  # F = m_1 - m_0 per node
            c0, c1 = ema_correction(n0, self.grad_avg, self.gamma), ema_correction(n1, self.grad_avg, self.gamma)
            # total gradient on split parameters = task + lambda * fairness; leaves get the task gradient only
            g_w = g_w + self.lambda_fair * fairness_gradient(f, c1 * self.grad_w[1], c0 * self.grad_w[0], self.huber_delta)
            g_b = g_b + self.lambda_fair * fairness_gradient(f, c1 * self.grad_b[1], c0 * self.grad_b[0], self.huber_delta)
        if self.optimizer is None:
            self.optimizer = torch.optim.Adam(forest.parameters(), lr=self.lr, eps=1e-7)
        for p, g in zip((forest.weight, forest.bias, forest.theta), (g_w, g_b, g_theta)):
            p.grad = g
        self.optimizer.step()
        self.optimizer.zero_grad()
        return float(pred != y)

    def state_dict(self) -> dict[str, Any]:
        return {
            "node_sums": self.node_sums.clone(),
            "group_counts": self.group_counts.clone(),
            "grad_w": self.grad_w.clone(),
            "grad_b": self.grad_b.clone(),
            "correct": self.correct,
            "served": self.served,
            "positives": self.positives.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("node_sums", "group_counts", "grad_w", "grad_b", "positives"):
            setattr(self, key, state[key].clone())
        self.correct, self.served = int(state["correct"]), int(state["served"])


class AranyaniModule(OnlineModule):
    """Aranyani on a stream of ``(x, y, a)`` chunks: each sample is predicted, then learned from (batch size 1).

    Logs while fitting ``train/accuracy`` and ``train/dp`` (prequential, hard predictions over the stream so
    far) and ``train/nan_params`` (1 if any parameter is not finite). Test: the frozen forest on the test
    stream, ``test/accuracy`` and ``test/dp``.
    """

    def __init__(
        self,
        in_dim: int = 10,
        num_classes: int = 2,
        num_trees: int = 3,
        depth: int = 4,
        lambda_fair: float = 0.1,
        lr: float = 2e-3,
        huber_delta: float = 0.01,
        grad_avg: str = "vanilla",
        gamma: float = 0.9,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if grad_avg not in GRAD_AVG:
            raise ValueError(f"grad_avg must be one of {GRAD_AVG}, got {grad_avg!r}")
        if lambda_fair < 0 or not math.isfinite(lambda_fair):
            raise ValueError(f"lambda_fair must be a finite non-negative number, got {lambda_fair}")
        self.save_hyperparameters()
        self.forest = ObliqueForest(in_dim, num_classes, num_trees, depth, seed)
        self._test_counts = torch.zeros(3, dtype=torch.float64)

    def forward(self, x: Tensor) -> Tensor:
        return self.forest(x)

    def build_algorithm(self) -> FairOnlineLearner:
        hp = self.hparams
        return FairOnlineLearner(self.forest, hp.lambda_fair, hp.lr, hp.huber_delta, hp.grad_avg, hp.gamma)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.forest.parameters(), lr=self.hparams.lr, eps=1e-7)  # Keras Adam defaults

    def requests_of(self, batch: Any) -> list[Any]:
        x, y, a = batch
        return list(zip(x, y.tolist(), a.tolist()))

    def on_train_start(self) -> None:
        super().on_train_start()
        self.algorithm.optimizer = self.optimizers()  # checkpointed by Lightning

    def training_step(self, batch: Any, batch_idx: int) -> None:
        super().training_step(batch, batch_idx)
        learner = self.algorithm
        nan = float(not all(bool(torch.isfinite(p).all()) for p in self.forest.parameters()))
        logs = {"train/accuracy": learner.accuracy, "train/dp": learner.dp, "train/nan_params": nan}
        self.log_dict({k: torch.tensor(v, dtype=torch.float64) for k, v in logs.items()}, on_step=True, on_epoch=False, batch_size=1)

    # the test stream: the frozen forest (no learning) ------------------------------------------
    def on_test_epoch_start(self) -> None:
        self._test_cost, self._test_requests = 0.0, []
        self._test_counts = torch.zeros(2, 2, dtype=torch.float64)  # [group, (count, positives)]

    def test_step(self, batch: Any, batch_idx: int) -> None:
        x, y, a = batch
        with torch.no_grad():
            pred = self.forest(x).argmax(-1)
        self._test_cost += float((pred != y).sum())
        self._test_requests.extend(range(len(y)))
        for group in (0, 1):
            mask = a == group
            self._test_counts[group, 0] += float(mask.sum())
            self._test_counts[group, 1] += float((pred[mask] == 1).sum())

    def on_test_epoch_end(self) -> None:
        total = max(len(self._test_requests), 1)
        logs = {"test/accuracy": 1.0 - self._test_cost / total, "test/dp": demographic_parity(self._test_counts[:, 1], self._test_counts[:, 0])}
        self.log_dict({k: torch.tensor(v, dtype=torch.float64) for k, v in logs.items()})
        super().on_test_epoch_end()
