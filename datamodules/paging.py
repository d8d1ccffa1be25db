"""Page-request traces for ``zoo.paging``: a phase-shifting Zipf mixture, causal features and ground-truth bits.

Each trace is ``length`` requests over ``num_pages`` pages drawn from Zipf(``alpha``) whose popularity
permutation is redrawn every ``shift_every`` requests, all from a seed. Train batches are
``(features, discard_bits)`` of ``train_traces`` traces (seeds apart from the test trace) for the bit
predictor; the test loader yields the test trace in order as ``(pages, discard_bits, phase_bits,
features)``. Features at request ``t`` use requests ``<= t`` only (the algorithm never sees the future).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, TensorDataset

from zoo.paging import belady, phase_bits

__all__ = ["PagingDataModule", "causal_features", "zipf_trace"]

NUM_FEATURES = 6


def zipf_trace(length: int, num_pages: int, alpha: float, shift_every: int, seed: int | list[int]) -> list[int]:
    """``length`` requests from Zipf(``alpha``) over ``num_pages`` pages, popularity reshuffled every ``shift_every``."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, num_pages + 1) ** alpha
    weights /= weights.sum()
    out: list[int] = []
    while len(out) < length:
        perm = rng.permutation(num_pages)
        ranks = rng.choice(num_pages, size=min(shift_every, length - len(out)), p=weights)
        out.extend(perm[ranks].tolist())
    return out


def causal_features(requests: list[int], window: int = 500, horizon: int | None = None) -> np.ndarray:
    """Per request, from the past only: log gap since the page's last request, first-seen flag, log count,
    log stack distance (distinct pages since its last request), log count in the last ``window`` requests
    and log previous gap; each log scaled by ``1 / log(horizon)`` (the trace's length by default)."""
    n = len(requests)
    feats = np.zeros((n, NUM_FEATURES), dtype=np.float32)
    scale = 1.0 / math.log(max(horizon or n, 3))
    tree = [0] * (n + 1)  # Fenwick tree: 1 at the latest position of every page seen

    def add(i: int, v: int) -> None:
        i += 1
        while i <= n:
            tree[i] += v
            i += i & -i

    def prefix(i: int) -> int:  # sum of positions < i
        s = 0
        while i > 0:
            s += tree[i]
            i -= i & -i
        return s

    last: dict[int, int] = {}
    prev_gap: dict[int, int] = {}
    count: dict[int, int] = {}
    recent: dict[int, int] = {}
    for t, page in enumerate(requests):
        if t >= window:
            old = requests[t - window]
            recent[old] -= 1
        if page in last:
            gap = t - last[page]
            distinct = prefix(t) - prefix(last[page] + 1)
            feats[t, 0] = math.log1p(gap) * scale
            feats[t, 3] = math.log1p(distinct) * scale
            feats[t, 5] = math.log1p(prev_gap.get(page, gap)) * scale
            prev_gap[page] = gap
            add(last[page], -1)
        else:
            feats[t, 0] = feats[t, 3] = feats[t, 5] = 1.0
            feats[t, 1] = 1.0
        count[page] = count.get(page, 0) + 1
        recent[page] = recent.get(page, 0) + 1
        feats[t, 2] = math.log1p(count[page]) * scale
        feats[t, 4] = math.log1p(recent[page]) * scale
        last[page] = t
        add(t, 1)
    return feats


@lru_cache(maxsize=16)
def _trace_tensors(length: int, num_pages: int, alpha: float, shift_every: int, k: int, seed: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
    """Pages, discard bits, phase bits and features of one trace (cached: claim arms share traces)."""
    pages = zipf_trace(length, num_pages, alpha, shift_every, list(seed))
    _, dbits = belady(pages, k)
    return (
        torch.tensor(pages, dtype=torch.long),
        torch.tensor(dbits, dtype=torch.long),
        torch.tensor(phase_bits(pages, k), dtype=torch.long),
        torch.from_numpy(causal_features(pages)),
    )


class PagingDataModule(LightningDataModule):
    """Train: ``(features, discard_bits)`` of ``train_traces`` traces; test: one trace in request order."""

    def __init__(
        self,
        k: int = 32,
        num_pages: int = 500,
        length: int = 20000,
        alpha: float = 0.8,
        shift_every: int = 2500,
        train_traces: int = 2,
        batch_size: int = 512,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if k < 1 or num_pages <= k or length < 1 or shift_every < 1 or train_traces < 1:
            raise ValueError("need k >= 1, num_pages > k, length >= 1, shift_every >= 1 and train_traces >= 1")
        self.k, self.num_pages, self.length, self.alpha = k, num_pages, length, alpha
        self.shift_every, self.train_traces, self.batch_size, self.seed = shift_every, train_traces, batch_size, seed

    def trace(self, *seed: int) -> tuple[torch.Tensor, ...]:
        return _trace_tensors(self.length, self.num_pages, self.alpha, self.shift_every, self.k, (self.seed, *seed))

    def train_dataloader(self) -> DataLoader:
        traces = [self.trace(1, j) for j in range(self.train_traces)]
        x = torch.cat([t[3] for t in traces])
        y = torch.cat([t[1] for t in traces])
        g = torch.Generator().manual_seed(self.seed)
        return DataLoader(TensorDataset(x, y), batch_size=self.batch_size, shuffle=True, generator=g)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(*self.trace(0)), batch_size=4096)
