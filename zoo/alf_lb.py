"""ALF-LB: auxiliary-loss-free load balancing of top-k mixture-of-experts routers (the maths and the tiny MoE).

Papers: *A Theoretical Framework for Auxiliary-Loss-Free Load Balancing of Sparse Mixture-of-Experts
in Large-Scale AI Models* (arXiv 2512.03915), which reads ALF-LB as a primal-dual method for the
per-batch token-to-expert assignment problem; the method itself is Wang et al. 2024, *Auxiliary-Loss-
Free Load Balancing Strategy for Mixture-of-Experts* (arXiv 2408.15664, DeepSeek), Algorithm 1.

Each router adds a per-expert bias ``b_i`` to its affinities **for top-k selection only** (the gate
weights stay the unbiased scores; no gradient reaches ``b``). After each training batch the bias
moves towards balance with ``e_i = mean(c) - c_i`` (``c_i``: tokens expert ``i`` received;
under-loaded experts go up), :func:`bias_update`:

- ``rule="sign"`` (Wang et al.):            ``b_i <- b_i + u_n * sign(e_i)``
- ``rule="proportional"``:                  ``b_i <- b_i + u_n * e_i / mean(c)``

In the primal-dual reading ``b`` is the dual variable of the capacity constraint
``sum_t x_{i,t} = K T / E`` and each update is one (sign-)subgradient step on it.
Step sizes ``u_n`` (``n`` = updates so far), :func:`step_size`: ``schedule="constant"`` (``u``),
``"1/n"`` (``u * n0 / (n0 + n)``, the strongly-convex schedule behind the paper's logarithmic-regret
bound) and ``"1/sqrt(n)"`` (``u * sqrt(n0 / (n0 + n))``), with ``n0 = schedule_offset``.

The router protocol (:class:`BiasedRouter`), which any module can implement:

- ``expert_bias``: a float tensor of shape ``(num_experts,)``, registered as a **persistent buffer**
  (so checkpoints and ``from_pretrained`` restore it), added to the affinities only to pick the
  top-k experts;
- ``pop_expert_load() -> Tensor``: the number of tokens routed to each expert (shape
  ``(num_experts,)``) by training-mode forwards since the previous call, and reset the count.

The drop-in callback that applies the updates during training is
:class:`zoo.callbacks.alf_lb.AuxFreeLoadBalancing`; this module never imports it.

Parts:

- :class:`BiasedTopKRouter` implements the router protocol. It follows DeepSeek-V3's ``Gate``:
  sigmoid affinities ``s = sigmoid(h W^T)`` to the expert centroids, experts chosen by
  ``TopK(s + b)``, gate weights the **unbiased** ``s`` of the chosen experts, renormalised over the ``k``.
- :class:`MoEFeedForward`: routed expert MLPs (``num_experts`` x ``d -> d_hidden -> d``), sparse
  dispatch, residual.
- :class:`TinyMoE` (ZooModule): two tokens of a Zipf stream (:class:`zoo.datamodules.ZipfTokenDataModule`),
  embedded and summed, one MoE layer, a linear head; the target is a fixed random function of the two
  tokens. ``balance`` is ``"bias"`` (ALF-LB: the card's config attaches the callback), ``"aux_loss"``
  (Switch-style ``alpha * E * sum f_i P_i``) or ``"none"``. Logs ``train/maxvio`` (per epoch: the mean
  over its batches of the batch MaxVio), ``train/loss``, ``val/ce``, ``test/ce`` and ``test/maxvio``.
- :func:`synthetic_router_run`: a fixed synthetic router (no training), :func:`synthetic_scores` its
  affinities; :class:`SyntheticRouter` (ZooModule) runs the same router through Lightning and the
  callback, so ``zoo reproduce alf-lb`` checks the order-of-magnitude claim (``cards/alf-lb/synthetic.yaml``).

Guesses and deviations (the paper's full text was not read; see ``cards/alf-lb``): the proportional
rule is normalised by the mean load (so ``u`` is unitless); the ``"1/n"`` offset ``n0`` is a guess;
the paper's ``dual_subgradient`` variant is the proportional rule without normalisation and is not
offered separately. No shared experts (DeepSeekMoE has them; they do not take part in routing); one
MoE layer; the aux-loss variant uses the raw sigmoid scores normalised per token as ``P``; the bias
is applied (zero) in every arm, so ``balance="none"`` and ``"bias"`` are the same model and differ
only by the callback.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from zoo.hub import ZooModule

__all__ = [
    "BALANCES",
    "RULES",
    "SCHEDULES",
    "BiasedRouter",
    "BiasedTopKRouter",
    "MoEFeedForward",
    "TinyMoE",
    "bias_update",
    "find_routers",
    "is_biased_router",
    "max_violation",
    "step_size",
    "SyntheticRouter",
    "synthetic_router_run",
    "synthetic_scores",
]

BALANCES: tuple[str, ...] = ("bias", "aux_loss", "none")


Rule = Literal["sign", "proportional"]
Schedule = Literal["constant", "1/n", "1/sqrt(n)"]
RULES: tuple[str, ...] = ("sign", "proportional")
SCHEDULES: tuple[str, ...] = ("constant", "1/n", "1/sqrt(n)")


@runtime_checkable
class BiasedRouter(Protocol):
    """What :class:`zoo.callbacks.AuxFreeLoadBalancing` needs from a router (see the module docstring)."""

    expert_bias: Tensor

    def pop_expert_load(self) -> Tensor: ...


def is_biased_router(module: nn.Module) -> bool:
    """Whether ``module`` has a tensor ``expert_bias`` and a callable ``pop_expert_load`` (duck typing)."""
    return isinstance(getattr(module, "expert_bias", None), Tensor) and callable(getattr(module, "pop_expert_load", None))


def find_routers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every submodule (the module itself included, named ``""``) that implements the router protocol."""
    return [(name, m) for name, m in module.named_modules() if is_biased_router(m)]


def max_violation(loads: Tensor) -> Tensor:
    """MaxVio = (max_i c_i - mean c) / mean c (Wang et al.); 0 for perfect balance."""
    loads = loads.float()
    mean = loads.mean()
    return (loads.max() - mean) / mean.clamp_min(1e-12)


def step_size(update_rate: float, schedule: str, n: int, offset: float = 100.0) -> float:
    """The step size ``u_n`` of the ``n``-th update (``n`` = 0 for the first)."""
    if schedule == "constant":
        return update_rate
    if schedule == "1/n":
        return update_rate * offset / (offset + n)
    if schedule == "1/sqrt(n)":
        return update_rate * math.sqrt(offset / (offset + n))
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")


def bias_update(loads: Tensor, rate: float, rule: str = "sign") -> Tensor:
    """The bias increment from one batch's per-expert loads ``c``: ``e = mean(c) - c`` then the rule."""
    loads = loads.float()
    mean = loads.mean()
    err = mean - loads
    if rule == "sign":
        return rate * torch.sign(err)
    if rule == "proportional":
        return rate * err / mean.clamp_min(1e-12)
    raise ValueError(f"rule must be one of {RULES}, got {rule!r}")


class BiasedTopKRouter(nn.Module):
    """Top-k router with sigmoid (or softmax) affinities and a selection-only ``expert_bias`` buffer."""

    def __init__(self, d_model: int, num_experts: int = 8, top_k: int = 2, score_fn: str = "sigmoid", normalize_topk: bool = True) -> None:
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must lie in [1, num_experts={num_experts}], got {top_k}")
        if score_fn not in ("sigmoid", "softmax"):
            raise ValueError(f"score_fn must be 'sigmoid' or 'softmax', got {score_fn!r}")
        self.num_experts, self.top_k, self.score_fn, self.normalize_topk = num_experts, top_k, score_fn, normalize_topk
        self.weight = nn.Parameter(torch.randn(num_experts, d_model) / math.sqrt(d_model))
        self.register_buffer("expert_bias", torch.zeros(num_experts))
        self.register_buffer("_load", torch.zeros(num_experts), persistent=False)

    def scores(self, h: Tensor) -> Tensor:
        logits = F.linear(h, self.weight)
        return torch.sigmoid(logits) if self.score_fn == "sigmoid" else logits.softmax(-1)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``h (N, d)`` -> (chosen experts ``(N, k)``, gate weights ``(N, k)``, all scores ``(N, E)``)."""
        s = self.scores(h)
        with torch.no_grad():  # the bias picks the experts and nothing else
            idx = torch.topk(s + self.expert_bias, self.top_k, dim=-1).indices
        gates = s.gather(-1, idx)
        if self.normalize_topk:
            gates = gates / gates.sum(-1, keepdim=True).clamp_min(1e-20)
        if self.training:
            self._load += torch.bincount(idx.flatten(), minlength=self.num_experts).to(self._load)
        return idx, gates, s

    # -------------------------------------------------------------- router protocol (BiasedRouter)
    def pop_expert_load(self) -> Tensor:
        load = self._load.clone()
        self._load.zero_()
        return load

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, top_k={self.top_k}, score_fn={self.score_fn}"


class MoEFeedForward(nn.Module):
    """``h + sum_k g_k * expert_{i_k}(h)`` with ``num_experts`` two-layer GELU MLPs and a biased router."""

    def __init__(self, d_model: int, d_hidden: int, num_experts: int = 8, top_k: int = 2, score_fn: str = "sigmoid") -> None:
        super().__init__()
        self.router = BiasedTopKRouter(d_model, num_experts, top_k, score_fn)
        self.w1 = nn.Parameter(torch.randn(num_experts, d_model, d_hidden) / math.sqrt(d_model))
        self.b1 = nn.Parameter(torch.zeros(num_experts, d_hidden))
        self.w2 = nn.Parameter(torch.randn(num_experts, d_hidden, d_model) / math.sqrt(d_hidden))
        self.last_loads: Tensor | None = None
        self.last_scores: Tensor | None = None

    def forward(self, h: Tensor) -> Tensor:
        idx, gates, scores = self.router(h)
        E = self.router.num_experts
        flat_idx = idx.flatten()
        token = torch.arange(h.shape[0], device=h.device).repeat_interleave(idx.shape[1])
        order = torch.argsort(flat_idx, stable=True)
        counts = torch.bincount(flat_idx, minlength=E)
        out = torch.zeros_like(h)
        start = 0
        for e, n in enumerate(counts.tolist()):
            if n == 0:
                continue
            sel = order[start : start + n]
            start += n
            tok = token[sel]
            y = F.gelu(h[tok] @ self.w1[e] + self.b1[e]) @ self.w2[e]
            out = out.index_add(0, tok, y * gates.flatten()[sel, None])
        self.last_loads, self.last_scores = counts, scores
        return h + out


class TinyMoE(ZooModule):
    """Embed two tokens, sum, one top-k MoE feed-forward layer, a linear head; cross-entropy.

    ``forward(x)`` takes token ids ``(N, 2)`` and returns logits ``(N, num_classes)``.
    """

    def __init__(
        self,
        vocab_size: int = 512,
        num_classes: int = 16,
        d_model: int = 64,
        d_hidden: int = 64,
        num_experts: int = 8,
        top_k: int = 2,
        score_fn: str = "sigmoid",
        balance: str = "bias",
        aux_alpha: float = 1e-2,
        lr: float = 3e-3,
    ) -> None:
        super().__init__()
        if balance not in BALANCES:
            raise ValueError(f"balance must be one of {BALANCES}, got {balance!r}")
        self.save_hyperparameters()
        self.embed = nn.Embedding(vocab_size, d_model)
        self.moe = MoEFeedForward(d_model, d_hidden, num_experts, top_k, score_fn)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, num_classes)

    @property
    def router(self) -> BiasedTopKRouter:
        return self.moe.router

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x).sum(1)
        return self.head(self.norm(self.moe(h)))

    def aux_loss(self) -> Tensor:
        """Switch/DeepSeek auxiliary balance loss ``E * sum_i f_i P_i`` (``f_i``: fraction of the k*N choices)."""
        loads, s = self.moe.last_loads, self.moe.last_scores
        assert loads is not None and s is not None
        f = loads.float() / loads.sum()
        P = (s / s.sum(-1, keepdim=True)).mean(0)
        return self.router.num_experts * (f * P).sum()

    def on_train_epoch_end(self) -> None:
        # the bias only moves under a balancing callback; a run that forgot it would silently be "none"
        if self.hparams.balance == "bias" and self.current_epoch == 0 and not self.router.expert_bias.any():
            rank_zero_warn(
                "TinyMoE(balance='bias'): the router bias is still zero after an epoch, so nothing balanced the "
                "loads; add the callback: --trainer.callbacks+=zoo.callbacks.AuxFreeLoadBalancing"
            )

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        ce = F.cross_entropy(self(x), y)
        loss = ce
        if self.hparams.balance == "aux_loss":
            aux = self.aux_loss()
            loss = ce + self.hparams.aux_alpha * aux
            self.log("train/aux", aux, on_step=False, on_epoch=True)
        loads = self.moe.last_loads.float()  # type: ignore[union-attr]
        mv = (loads.max() - loads.mean()) / loads.mean()
        self.log("train/loss", ce, on_step=True, on_epoch=False, prog_bar=True)
        self.log("train/maxvio", mv, on_step=False, on_epoch=True, sync_dist=True)
        return loss

    def _eval(self, batch: tuple[Tensor, Tensor], split: str) -> None:
        x, y = batch
        self.log(f"{split}/ce", F.cross_entropy(self(x), y), sync_dist=True)
        loads = self.moe.last_loads.float()  # type: ignore[union-attr]
        self.log(f"{split}/maxvio", (loads.max() - loads.mean()) / loads.mean(), sync_dist=True)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval(batch, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def synthetic_scores(seed: int = 0, num_experts: int = 16, tokens: int = 4096, batches: int = 300) -> Iterator[Tensor]:
    """The synthetic router's affinity batches: ``sigmoid(N(0,1) + mu_i)``, ``mu_i ~ N(0,1)`` fixed per expert.

    One generator seeded with ``seed`` draws ``mu`` first, then each batch ``(tokens, num_experts)``, so
    :func:`synthetic_router_run` and :class:`zoo.datamodules.tokens.SyntheticRouterScores` see the same numbers.
    """
    gen = torch.Generator().manual_seed(seed)
    mu = torch.randn(num_experts, generator=gen)
    for _ in range(batches):
        yield torch.sigmoid(torch.randn(tokens, num_experts, generator=gen) + mu)


def synthetic_router_run(
    rule: str | None = "sign",
    update_rate: float = 1e-3,
    *,
    num_experts: int = 16,
    top_k: int = 2,
    tokens: int = 4096,
    batches: int = 300,
    last: int = 50,
    schedule: str = "constant",
    seed: int = 0,
) -> float:
    """A fixed synthetic router (:func:`synthetic_scores`), no training in the loop.

    Routes ``batches`` batches with ``TopK(s + b)``, updating ``b`` after each with
    :func:`bias_update` (``rule=None``: no balancing). Returns the mean MaxVio of the last ``last``
    batches; with no training in the loop it isolates the update rule's effect on balance.
    The claim check runs the same thing through Lightning: :class:`SyntheticRouter`.
    """
    bias = torch.zeros(num_experts)
    vio = []
    for n, s in enumerate(synthetic_scores(seed, num_experts, tokens, batches)):
        idx = torch.topk(s + bias, top_k, dim=-1).indices
        loads = torch.bincount(idx.flatten(), minlength=num_experts).float()
        vio.append(float(max_violation(loads)))
        if rule is not None:
            bias += bias_update(loads, step_size(update_rate, schedule, n), rule)
    return float(np.mean(vio[-last:]))


class SyntheticRouter(ZooModule):
    """The synthetic router as a model: top-k of ``scores + expert_bias``, nothing learned.

    It implements the router protocol, so :class:`zoo.callbacks.AuxFreeLoadBalancing` balances it in an
    ordinary ``fit``; with :class:`zoo.datamodules.tokens.SyntheticRouterScores` as data it logs the same
    number as :func:`synthetic_router_run`: ``synthetic/maxvio``, the mean MaxVio of the last ``last``
    training batches of the epoch (``test/maxvio`` at test time). ``forward(scores)`` returns the chosen experts.
    """

    def __init__(self, num_experts: int = 16, top_k: int = 2, last: int = 50) -> None:
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must lie in [1, num_experts={num_experts}], got {top_k}")
        if last < 1:
            raise ValueError(f"last must be >= 1, got {last}")
        self.save_hyperparameters()
        self.automatic_optimization = False  # nothing to learn: only the callback moves the bias
        self.register_buffer("expert_bias", torch.zeros(num_experts))
        self.register_buffer("_load", torch.zeros(num_experts), persistent=False)
        self._violations: list[float] = []

    def forward(self, scores: Tensor) -> Tensor:
        """``scores (N, E)`` -> chosen experts ``(N, k)``."""
        if scores.ndim != 2 or scores.shape[1] != self.hparams.num_experts:
            raise ValueError(
                f"SyntheticRouter(num_experts={self.hparams.num_experts}) got scores of shape {tuple(scores.shape)}; give the DataModule the same num_experts"
            )
        return torch.topk(scores + self.expert_bias, self.hparams.top_k, dim=-1).indices

    def _route(self, scores: Tensor) -> Tensor:
        loads = torch.bincount(self(scores).flatten(), minlength=self.hparams.num_experts).float()
        if self.training:
            self._load += loads.to(self._load)
        return max_violation(loads)

    def pop_expert_load(self) -> Tensor:
        load = self._load.clone()
        self._load.zero_()
        return load

    def on_train_epoch_start(self) -> None:
        self._violations = []

    def training_step(self, batch: Tensor, batch_idx: int) -> None:
        self._violations.append(float(self._route(batch)))

    def on_train_epoch_end(self) -> None:
        if self._violations:
            self.log("synthetic/maxvio", float(np.mean(self._violations[-self.hparams.last :])), batch_size=1)

    def test_step(self, batch: Tensor, batch_idx: int) -> None:
        self.log("test/maxvio", self._route(batch), batch_size=1)

    def configure_optimizers(self) -> None:
        return None
