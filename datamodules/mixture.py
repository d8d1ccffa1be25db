"""Data groups mixed by proportions that can change during training (the Aioli entry's data).

:class:`MixtureSampler` draws whole batches from ``k`` groups: batch ``b`` takes its group counts
from a multinomial over the proportions that ``mixture_fn(b)`` returns (fixed ``proportions``
when unset: stratified sampling is the uniform default). A batch depends only on the seed, the
rank, the step and the proportions, so a resumed run draws the same batches. The loader yields
placeholders that the DataModule draws in ``on_before_batch_transfer`` with the step about to
run: Lightning prefetches a batch, and this keeps a new mixture exact from its first step.
Outside a fit, the loader yields drawn batches.
:class:`MarkovMixtureDataModule` builds the CPU check's groups from bigram Markov chains.

>>> dm = MarkovMixtureDataModule(pool_size=16, val_size=4, test_size=4, batch_size=4, steps_per_epoch=2)
>>> dm.setup("fit")
>>> x, y = next(iter(dm.train_dataloader()))
>>> tuple(x.shape), tuple(y.shape)
((4, 32), (4, 32))
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

__all__ = ["MixtureSampler", "MixtureDataModule", "MarkovMixtureDataModule", "markov_chain", "sample_chain"]


class MixtureSampler(IterableDataset):
    """``num_batches`` batches per pass, each drawn from the groups ``(x_g, y_g)`` with the current proportions.

    ``mixture_fn(b) -> (k,)`` (set by a callback such as :class:`zoo.callbacks.AioliMixing`) overrides
    ``proportions``. :meth:`batch` draws batch ``b``; iterating draws ``num_batches`` of them, or
    yields placeholders (``placeholders=True``) for a DataModule to draw at the step.
    """

    def __init__(
        self, groups: Sequence[tuple[Tensor, Tensor]], batch_size: int, num_batches: int, proportions: Sequence[float] | None = None, seed: int = 0
    ) -> None:
        if len(groups) < 2:
            raise ValueError(f"a mixture needs at least 2 groups, got {len(groups)}")
        self.groups = list(groups)
        self.k, self.batch_size, self.num_batches, self.seed = len(groups), batch_size, num_batches, seed
        p = torch.full((self.k,), 1.0 / self.k) if proportions is None else torch.as_tensor(proportions, dtype=torch.float64)
        if p.shape != (self.k,) or (p < 0).any() or float(p.sum()) <= 0:
            raise ValueError(f"proportions must be {self.k} non-negative numbers, got {proportions}")
        self.proportions = (p / p.sum()).double()
        self.mixture_fn: Callable[[int], Tensor] | None = None
        self.rank = 0
        self.placeholders = False
        self._passes = 0
        self.drawn = torch.zeros(self.k, dtype=torch.long)  # samples drawn per group (for logging)

    def __len__(self) -> int:
        return self.num_batches

    def batch(self, b: int) -> tuple[Tensor, Tensor]:
        """Batch ``b``: group counts ~ Multinomial(batch_size, p), then uniform draws within each group."""
        p = self.proportions if self.mixture_fn is None else self.mixture_fn(b)
        g = torch.Generator().manual_seed(hash((self.seed, self.rank, b)) % (2**63))
        which = torch.multinomial(p.double(), self.batch_size, replacement=True, generator=g)
        xs, ys = [], []
        for j in range(self.k):
            n = int((which == j).sum())
            if n:
                x, y = self.groups[j]
                idx = torch.randint(len(x), (n,), generator=g)
                xs.append(x[idx])
                ys.append(y[idx])
                self.drawn[j] += n
        return torch.cat(xs), torch.cat(ys)

    def __iter__(self) -> Iterator[Tensor | tuple[Tensor, Tensor]]:
        if self.placeholders:  # a Trainer is fitting: the DataModule draws each batch for its step
            yield from (torch.tensor(i) for i in range(self.num_batches))
            return
        start, self._passes = self._passes * self.num_batches, self._passes + 1
        yield from (self.batch(start + i) for i in range(self.num_batches))


def markov_chain(vocab: int, kind: str, generator: torch.Generator) -> Tensor:
    """A bigram transition matrix: ``"easy"`` = 2 successors per token (0.7 / 0.3), ``"hard"`` = rows ~ Dirichlet(0.1)."""
    if kind == "easy":
        T = torch.zeros(vocab, vocab)
        for t in range(vocab):
            a, b = torch.randperm(vocab, generator=generator)[:2]
            T[t, a], T[t, b] = 0.7, 0.3
        return T
    if kind == "hard":
        gamma = torch._standard_gamma(torch.full((vocab, vocab), 0.1))  # noqa: SLF001 (no generator arg in Dirichlet)
        return gamma / gamma.sum(1, keepdim=True)
    raise ValueError(f"kind must be 'easy' or 'hard', got {kind!r}")


def sample_chain(T: Tensor, n: int, length: int, tag: int, generator: torch.Generator) -> Tensor:
    """``n`` sequences of ``length`` tokens: the group's tag token, then a walk on ``T`` from a uniform start."""
    seq = torch.empty(n, length, dtype=torch.long)
    seq[:, 0] = tag
    seq[:, 1] = torch.randint(T.shape[0], (n,), generator=generator)
    for t in range(2, length):
        seq[:, t] = torch.multinomial(T[seq[:, t - 1]], 1, generator=generator).squeeze(1)
    return seq


class MixtureDataModule(LightningDataModule):
    """Training groups mixed by a :class:`MixtureSampler`; fixed validation batches and test sets per group.

    Give the groups as ``(x, y)`` tensor pairs, or subclass and override :meth:`build_groups`.
    ``val_groups()`` are the fixed per-group batches Aioli's LearnParams reads; tests are one loader per group.
    """

    def __init__(
        self,
        groups: Sequence[tuple[Tensor, Tensor]] | None = None,
        val_groups: Sequence[tuple[Tensor, Tensor]] | None = None,
        test_groups: Sequence[tuple[Tensor, Tensor]] | None = None,
        batch_size: int = 16,
        steps_per_epoch: int = 100,
        proportions: Sequence[float] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self._given = (list(groups or []), list(val_groups or []), list(test_groups or []))
        self.batch_size, self.steps_per_epoch, self.proportions, self.seed = batch_size, steps_per_epoch, proportions, seed
        self.sampler: MixtureSampler | None = None

    def build_groups(self) -> tuple[list[tuple[Tensor, Tensor]], list[tuple[Tensor, Tensor]], list[tuple[Tensor, Tensor]]]:
        """``(train, val, test)`` groups; by default the ones given to ``__init__``."""
        return self._given

    def setup(self, stage: str | None = None) -> None:
        if self.sampler is not None:
            return
        self.train_groups, self._val, self._test = self.build_groups()
        if self._val and len(self._val) != len(self.train_groups):
            raise ValueError(f"{len(self.train_groups)} training groups but {len(self._val)} validation groups")
        self.sampler = MixtureSampler(self.train_groups, self.batch_size, self.steps_per_epoch, self.proportions, seed=self.seed)

    def val_groups(self) -> list[tuple[Tensor, Tensor]]:
        """The fixed held-out batch of each group (the same every time: LearnParams's noise floor)."""
        return self._val

    def train_dataloader(self) -> DataLoader:
        assert self.sampler is not None, "call setup() first"
        self.sampler.placeholders = self.trainer is not None and self.trainer.training
        return DataLoader(self.sampler, batch_size=None)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Draw a training placeholder's batch now, for the step about to run (``trainer.global_step``)."""
        if isinstance(batch, Tensor) and batch.dim() == 0 and self.sampler is not None:
            return self.sampler.batch(self.trainer.global_step if self.trainer is not None else int(batch))
        return batch

    def val_dataloader(self) -> list[DataLoader]:
        return [DataLoader(TensorDataset(x, y), batch_size=256) for x, y in self._val]

    def test_dataloader(self) -> list[DataLoader]:
        return [DataLoader(TensorDataset(x, y), batch_size=256) for x, y in self._test]


class MarkovMixtureDataModule(MixtureDataModule):
    """Groups of token sequences from bigram chains (default: easy, hard, and a copy of easy's chain: redundant).

    Tokens ``0..vocab-1``, tags ``vocab..vocab+k-1``; ``x = seq[:-1]``, ``y = seq[1:]``. The seed sets chains and data.
    """

    def __init__(
        self,
        kinds: Sequence[str] = ("easy", "hard", "easy"),
        same_chain_as: Sequence[int | None] = (None, None, 0),
        vocab: int = 64,
        context: int = 32,
        pool_size: int = 8000,
        val_size: int = 128,
        test_size: int = 1024,
        batch_size: int = 16,
        steps_per_epoch: int = 100,
        proportions: Sequence[float] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, steps_per_epoch=steps_per_epoch, proportions=proportions, seed=seed)
        if len(same_chain_as) != len(kinds):
            raise ValueError(f"same_chain_as needs one entry per group ({len(kinds)}), got {len(same_chain_as)}")
        self.save_hyperparameters()

    def build_groups(self) -> tuple[list[tuple[Tensor, Tensor]], list[tuple[Tensor, Tensor]], list[tuple[Tensor, Tensor]]]:
        h = self.hparams
        g = torch.Generator().manual_seed(int(h.seed))
        chains: list[Tensor] = []
        for kind, same in zip(h.kinds, h.same_chain_as, strict=True):
            chains.append(chains[same] if same is not None else markov_chain(h.vocab, kind, g))
        n = h.pool_size + h.val_size + h.test_size
        splits: list[list[tuple[Tensor, Tensor]]] = [[], [], []]
        for j, T in enumerate(chains):
            seq = sample_chain(T, n, h.context + 1, h.vocab + j, g)
            for s, part in enumerate(seq.split([h.pool_size, h.val_size, h.test_size])):
                splits[s].append((part[:, :-1].contiguous(), part[:, 1:].contiguous()))
        return splits[0], splits[1], splits[2]
