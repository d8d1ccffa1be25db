"""Aioli: online data mixing by a linear dynamic mixing law (Chen, Hu, Lourie, Cho, Ré; arXiv 2411.05735).

Official code: HazyResearch/aioli, ``trainer/aioli_trainer.py`` (``learn_params_subroutine``, ``train``).

Every data-mixing method picks proportions ``p`` on the simplex to minimise the summed next-round
loss under a mixing law; Aioli's law is ``L_i^{t+1}(p) = L_i^t - sum_j A^t_ij p_j`` with ``A^t``
estimated online. Each round first spends ``k * lp_rounds * lp_steps`` real training steps on
near-one-hot mixtures to measure how training on group ``j`` lowers each group's validation loss
(LearnParams, Algorithm 2), un-mixes and normalises that estimate, then updates ``p`` by
exponentiated gradient on the column sums of ``A`` and trains the rest of the round with it.

The maths lives here as functions on tensors; :class:`zoo.callbacks.AioliMixing` applies them
during training, and :class:`zoo.datamodules.mixture.MixtureSampler` draws batches from ``p``.
:class:`TinyGPT` is the small causal language model of the CPU check.

Deviations and guesses: with EMA, ``A_bar = (1 - ema) * A + ema * A_bar_prev`` and ``p`` is
recomputed from uniform each round; without EMA ``p`` accumulates multiplicatively (this EMA form
was taken from a reading of the official code that was not re-checked line by line here). The
LearnParams order of groups is a seeded permutation per round, so a resumed run repeats it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.hub import ZooModule

__all__ = ["one_hot_mixtures", "unmix", "normalize_mixing_matrix", "exponentiated_gradient", "learn_params_plan", "TinyGPT"]


def one_hot_mixtures(k: int, one_hot_factor: float) -> Tensor:
    """The LearnParams mixtures ``W`` (Algorithm 2): row ``j`` puts ``f`` on group ``j`` and ``(1 - f) / (k - 1)`` on the rest.

    >>> one_hot_mixtures(2, 0.75)
    tensor([[0.7500, 0.2500],
            [0.2500, 0.7500]], dtype=torch.float64)
    """
    if k < 2:
        raise ValueError(f"Aioli mixes at least 2 groups, got k={k}")
    if not 1.0 / k < one_hot_factor <= 1.0:
        raise ValueError(f"one_hot_factor must lie in (1/k, 1] = ({1.0 / k:.3f}, 1], got {one_hot_factor}")
    W = torch.full((k, k), (1.0 - one_hot_factor) / (k - 1), dtype=torch.float64)
    W.fill_diagonal_(one_hot_factor)
    return W


def unmix(A_hat: Tensor, W: Tensor) -> Tensor:
    """Recover ``A`` from losses measured on mixtures: ``A_hat = A W^T``, so each row solves ``W a = A_hat[i, :]``.

    Without it (``f < 1``) the estimate is biased toward uniform columns.
    """
    if A_hat.shape != W.shape or A_hat.dim() != 2:
        raise ValueError(f"A_hat and W must both be (k, k), got {tuple(A_hat.shape)} and {tuple(W.shape)}")
    return torch.linalg.solve(W.to(A_hat.dtype), A_hat.T).T


def normalize_mixing_matrix(A: Tensor) -> Tensor:
    """Step 2 of a round: shift by ``min(A)`` when it is negative, then divide by the total (uniform if all zero)."""
    if A.min() < 0:
        A = A - A.min()
    total = A.sum()
    return A / total if total > 0 else torch.full_like(A, 1.0 / A.numel())


def exponentiated_gradient(A: Tensor, p_prev: Tensor, eta: float, ema: float | None = None, A_bar_prev: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Step 3: ``p`` from the column sums of ``A`` (group ``j``'s total loss decrease); returns ``(p, A_bar)``.

    With ``ema``: ``A_bar = (1 - ema) A + ema A_bar_prev`` (``A`` on the first round) and ``p ~ exp(eta * colsum(A_bar))``;
    without: ``p ~ p_prev * exp(eta * colsum(A))``.
    """
    if ema is not None and not 0.0 <= ema < 1.0:
        raise ValueError(f"ema must lie in [0, 1) or be None, got {ema}")
    A_bar = A if ema is None or A_bar_prev is None else (1.0 - ema) * A + ema * A_bar_prev
    gain = eta * A_bar.sum(0)  # axis 0: column j = trained on group j
    logits = gain if ema is not None else torch.log(p_prev) + gain
    return torch.softmax(logits, 0), A_bar


def learn_params_plan(k: int, lp_rounds: int, seed: int, round_index: int) -> list[int]:
    """The order of one-hot groups in round ``round_index``: ``lp_rounds`` random permutations of ``0..k-1``, seeded."""
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(round_index))
    return [int(j) for _ in range(lp_rounds) for j in torch.randperm(k, generator=g)]


# ------------------------------------------------------------------------------------ the CPU check's model
class _Block(nn.Module):
    """Pre-LN transformer block with causal self-attention."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn = nn.MultiheadAttention(d_model, n_heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))

    def forward(self, h: Tensor, mask: Tensor) -> Tensor:
        a = self.ln1(h)
        h = h + self.attn(a, a, a, attn_mask=mask, need_weights=False)[0]
        return h + self.mlp(self.ln2(h))


class TinyGPT(ZooModule):
    """A small pre-LN GPT: ``forward(x)`` maps token ids ``(N, T)`` to next-token logits ``(N, T, vocab)``.

    Trains with AdamW, linear warm-up then cosine decay and gradient clipping (set on the Trainer);
    logs ``test/ce`` as the mean over groups (one test loader per group) and ``test/ce_<i>`` per group.
    """

    def __init__(
        self,
        vocab_size: int = 67,
        context: int = 32,
        d_model: int = 64,
        n_layers: int = 2,
        n_heads: int = 4,
        lr: float = 3e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 50,
        total_steps: int = 600,
    ) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.save_hyperparameters()
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Parameter(torch.zeros(context, d_model))
        nn.init.normal_(self.pos, std=0.02)
        self.blocks = nn.ModuleList(_Block(d_model, n_heads) for _ in range(n_layers))
        self.ln = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)
        self._test_sums: dict[int, list[float]] = {}

    def forward(self, x: Tensor) -> Tensor:
        T = x.shape[1]
        if T > self.hparams.context:
            raise ValueError(f"sequence length {T} exceeds context {self.hparams.context}")
        mask = torch.triu(torch.ones(T, T, dtype=torch.bool, device=x.device), 1)
        h = self.tok(x) + self.pos[:T]
        for block in self.blocks:
            h = block(h, mask)
        return self.head(self.ln(h))

    def _ce(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        return F.cross_entropy(self(x).flatten(0, 1), y.flatten())

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss = self._ce(batch)
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self.log("val/ce", self._ce(batch), sync_dist=True, add_dataloader_idx=True)

    def on_test_epoch_start(self) -> None:
        self._test_sums = {}

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        s = self._test_sums.setdefault(dataloader_idx, [0.0, 0.0])
        s[0] += float(self._ce(batch)) * batch[1].numel()
        s[1] += batch[1].numel()

    def on_test_epoch_end(self) -> None:
        per_group = {i: s[0] / s[1] for i, s in sorted(self._test_sums.items())}
        for i, ce in per_group.items():
            self.log(f"test/ce_{i}", ce, sync_dist=True)
        self.log("test/ce", sum(per_group.values()) / max(len(per_group), 1), sync_dist=True)

    def configure_optimizers(self) -> dict:
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        warm, total = self.hparams.warmup_steps, max(self.hparams.total_steps, self.hparams.warmup_steps + 1)

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / (total - warm))))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
