"""A tiny top-k mixture-of-experts model whose router has a selection-only bias, for ALF-LB.

Paper: arXiv 2512.03915 (ALF-LB theory); method Wang et al. 2024 (arXiv 2408.15664); the router
follows DeepSeek-V3's ``Gate``: sigmoid affinities ``s = sigmoid(h W^T)`` to the expert centroids,
experts chosen by ``TopK(s + b)``, gate weights the **unbiased** ``s`` of the chosen experts,
renormalised over the ``k``. The bias ``b`` is a persistent buffer that only
:class:`zoo.callbacks.alf_lb.AuxFreeLoadBalancing` changes; no gradient reaches it.

- :class:`BiasedTopKRouter` implements the callback's router protocol (``expert_bias``,
  ``pop_expert_load``).
- :class:`MoEFeedForward`: routed expert MLPs (``num_experts`` x ``d -> d_hidden -> d``), sparse
  dispatch, residual.
- :class:`TinyMoE` (ZooModule): two tokens of a Zipf stream, embedded and summed, one MoE layer,
  a linear head; the target is a fixed random function of the two tokens. ``balance`` is
  ``"bias"`` (ALF-LB: add the callback), ``"aux_loss"`` (Switch-style ``alpha * E * sum f_i P_i``)
  or ``"none"``. Logs ``train/maxvio`` (per epoch: the mean over its batches of the batch MaxVio),
  ``train/loss``, ``val/ce``, ``test/ce`` and ``test/maxvio``.
- :class:`ZipfTokenDataModule`: the data, generated in code from a seed; ``zipf`` is the skew knob.
- :func:`synthetic_router_run`: the brief's fixed synthetic router (no training) for the
  order-of-magnitude claim.

Deviations/guesses: no shared experts (DeepSeekMoE has them; they do not take part in routing);
one MoE layer; the aux-loss variant uses the raw sigmoid scores normalised per token as ``P``;
the bias is applied (zero) in every arm, so ``balance="none"`` and ``"bias"`` are the same model
and differ only by the callback.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from zoo.hub import ZooModule

__all__ = ["BALANCES", "BiasedTopKRouter", "MoEFeedForward", "TinyMoE", "ZipfTokenDataModule", "synthetic_router_run", "zipf_probs"]

BALANCES: tuple[str, ...] = ("bias", "aux_loss", "none")


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

    # -------------------------------------------------------------- router protocol (zoo.callbacks.alf_lb)
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


def zipf_probs(vocab_size: int, exponent: float) -> np.ndarray:
    p = 1.0 / np.arange(1, vocab_size + 1, dtype=np.float64) ** exponent
    return p / p.sum()


class _Batches(Dataset):
    """A dataset whose items are whole batches (no per-sample collation)."""

    def __init__(self, x: Tensor, y: Tensor, batch_size: int) -> None:
        self.x, self.y, self.batch_size = x, y, batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        s = slice(i * self.batch_size, (i + 1) * self.batch_size)
        return self.x[s], self.y[s]


class ZipfTokenDataModule(LightningDataModule):
    """Pairs of tokens drawn i.i.d. from Zipf(``zipf``) over ``vocab_size``; target ``(g[a] + h[b]) mod C``.

    ``zipf`` is the skew knob: 0 is uniform, 0.6 mild (the top token is ~2 % of positions), 1.2 strong
    (~27 %). A training epoch is ``steps_per_epoch`` fixed batches of ``tokens_per_batch`` positions
    (the same batches every epoch, in order); validation and test are fresh draws of ``eval_tokens``.
    """

    def __init__(
        self,
        vocab_size: int = 512,
        num_classes: int = 16,
        zipf: float = 0.6,
        tokens_per_batch: int = 4096,
        steps_per_epoch: int = 100,
        eval_tokens: int = 16384,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.vocab_size, self.num_classes, self.zipf = vocab_size, num_classes, zipf
        self.tokens_per_batch, self.steps_per_epoch, self.eval_tokens, self.seed = tokens_per_batch, steps_per_epoch, eval_tokens, seed
        self._data: dict[str, tuple[Tensor, Tensor]] = {}

    def setup(self, stage: str | None = None) -> None:
        if self._data:
            return
        rng = np.random.default_rng(self.seed)
        g, h = rng.integers(0, self.num_classes, self.vocab_size), rng.integers(0, self.num_classes, self.vocab_size)
        p = zipf_probs(self.vocab_size, self.zipf)
        perm = rng.permutation(self.vocab_size)  # frequent tokens are not the small ids
        for split, n in (("train", self.tokens_per_batch * self.steps_per_epoch), ("val", self.eval_tokens), ("test", self.eval_tokens)):
            tok = perm[rng.choice(self.vocab_size, size=(n, 2), p=p)]
            y = (g[tok[:, 0]] + h[tok[:, 1]]) % self.num_classes
            self._data[split] = (torch.as_tensor(tok, dtype=torch.long), torch.as_tensor(y, dtype=torch.long))

    def _loader(self, split: str) -> DataLoader:
        self.setup()
        return DataLoader(_Batches(*self._data[split], self.tokens_per_batch), batch_size=None, shuffle=False)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")


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

    def on_fit_start(self) -> None:
        from zoo.callbacks.alf_lb import AuxFreeLoadBalancing

        has_cb = any(isinstance(c, AuxFreeLoadBalancing) for c in self.trainer.callbacks)
        if self.hparams.balance == "bias" and not has_cb:
            rank_zero_warn("TinyMoE(balance='bias') without an AuxFreeLoadBalancing callback: the bias stays at zero (no balancing)")

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
    """The brief's fixed synthetic router: scores ``sigmoid(N(0,1) + mu_i)``, ``mu_i ~ N(0,1)`` fixed per expert.

    Routes ``batches`` batches with ``TopK(s + b)``, updating ``b`` after each with
    :func:`zoo.callbacks.alf_lb.bias_update` (``rule=None``: no balancing). Returns the mean MaxVio of
    the last ``last`` batches.
    """
    from zoo.callbacks.alf_lb import bias_update, max_violation, step_size

    gen = torch.Generator().manual_seed(seed)
    mu = torch.randn(num_experts, generator=gen)
    bias = torch.zeros(num_experts)
    vio = []
    for n in range(batches):
        s = torch.sigmoid(torch.randn(tokens, num_experts, generator=gen) + mu)
        idx = torch.topk(s + bias, top_k, dim=-1).indices
        loads = torch.bincount(idx.flatten(), minlength=num_experts).float()
        vio.append(float(max_violation(loads)))
        if rule is not None:
            bias += bias_update(loads, step_size(update_rate, schedule, n), rule)
    return float(np.mean(vio[-last:]))

