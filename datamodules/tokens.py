"""A Zipf-distributed stream of token pairs, generated in code from a seed (the ALF-LB entry's data),
and the synthetic router's affinity batches (:class:`SyntheticRouterScores`).

The skew of the token frequencies is what unbalances a mixture-of-experts router, so ``zipf`` is the
knob that sets how much an entry like :class:`zoo.alf_lb.TinyMoE` has to balance.

>>> from zoo.datamodules import ZipfTokenDataModule
>>> dm = ZipfTokenDataModule(vocab_size=32, num_classes=4, tokens_per_batch=8, steps_per_epoch=2, eval_tokens=8)
>>> x, y = next(iter(dm.train_dataloader()))
>>> tuple(x.shape), tuple(y.shape)
((8, 2), (8,))
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset

__all__ = ["SyntheticRouterScores", "ZipfTokenDataModule", "zipf_probs"]


def zipf_probs(vocab_size: int, exponent: float) -> np.ndarray:
    """Zipf probabilities ``p_r ~ r^-exponent`` over ranks ``1..vocab_size`` (0 gives uniform)."""
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


class _ScoreStream(IterableDataset):
    """Batches ``skip .. skip + count - 1`` of :func:`zoo.alf_lb.synthetic_scores` (drawn afresh on every pass)."""

    def __init__(self, seed: int, num_experts: int, tokens: int, skip: int, count: int) -> None:
        self.seed, self.num_experts, self.tokens, self.skip, self.count = seed, num_experts, tokens, skip, count

    def __iter__(self) -> Iterator[Tensor]:
        from zoo.alf_lb import synthetic_scores

        stream = synthetic_scores(self.seed, self.num_experts, self.tokens, self.skip + self.count)
        return itertools.islice(stream, self.skip, None)


class SyntheticRouterScores(LightningDataModule):
    """A fixed synthetic router's affinities ``sigmoid(N(0,1) + mu_i)`` (:func:`zoo.alf_lb.synthetic_scores`).

    Data for :class:`zoo.alf_lb.SyntheticRouter`: a training epoch is the ``batches`` batches that
    :func:`zoo.alf_lb.synthetic_router_run` routes with the same ``seed``; the test split is the next
    ``eval_batches`` batches of the same stream (same ``mu``).
    """

    def __init__(self, num_experts: int = 16, tokens_per_batch: int = 4096, batches: int = 300, eval_batches: int = 10, seed: int = 0) -> None:
        super().__init__()
        if min(num_experts, tokens_per_batch, batches, eval_batches) < 1:
            raise ValueError("num_experts, tokens_per_batch, batches and eval_batches must all be >= 1")
        self.save_hyperparameters()
        self.num_experts, self.tokens_per_batch, self.batches, self.eval_batches, self.seed = num_experts, tokens_per_batch, batches, eval_batches, seed

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_ScoreStream(self.seed, self.num_experts, self.tokens_per_batch, 0, self.batches), batch_size=None)

    def test_dataloader(self) -> DataLoader:
        stream = _ScoreStream(self.seed, self.num_experts, self.tokens_per_batch, self.batches, self.eval_batches)
        return DataLoader(stream, batch_size=None)
