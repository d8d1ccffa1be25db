"""Online matching with stochastic rewards: seeded bipartite graph families, online vertices as the stream.

An arrival is a row ``[|U|]`` of success probabilities ``p_uv`` (0: no edge). Vanishing probabilities
are emulated as in the literature's hard instances: each online *type* arrives ``copies`` times in a
row with a small ``p`` (``copies * p = 1`` fills one offline vertex in the matching LP). Families:

- ``triangular`` (upper-triangular, the classical hard case for greedy): ``n`` offline and ``n`` online
  types, type ``j`` adjacent to ``u_i`` for ``i >= j``, all ``p`` equal; the matching LP is ``n``.
- ``kvv``: ``n/2`` types each with a private neighbour ``u_j`` plus the shared block
  ``u_{n/2} .. u_{n-1}``, then ``n/2`` types adjacent to the shared block only; the LP is ``n``.
- ``random``: ``n`` offline vertices, ``arrivals`` online vertices each with ``degree`` distinct
  uniform neighbours and ``p ~ U[p_low, p_high]``, in a seeded random order (one copy each).
"""

from __future__ import annotations

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

__all__ = ["FAMILIES", "MatchingDataModule", "kvv_graph", "random_graph", "triangular_graph"]

FAMILIES = ("triangular", "kvv", "random")


def triangular_graph(n: int, p: float) -> torch.Tensor:
    """Types ``[n, n]``: row ``j`` has ``p`` on columns ``i >= j``."""
    return torch.triu(torch.full((n, n), p, dtype=torch.float64))


def kvv_graph(n: int, p: float) -> torch.Tensor:
    """Types ``[n, n]`` (``n`` even): ``n/2`` rows on a private vertex plus the shared half, then ``n/2`` on the shared half."""
    if n % 2:
        raise ValueError(f"the kvv family needs an even n, got {n}")
    h = n // 2
    types = torch.zeros(n, n, dtype=torch.float64)
    types[:, h:] = p
    types[torch.arange(h), torch.arange(h)] = p
    return types


def random_graph(n: int, arrivals: int, degree: int, p_low: float, p_high: float, seed: int) -> torch.Tensor:
    """Rows ``[arrivals, n]``: each with ``degree`` distinct uniform neighbours, ``p ~ U[p_low, p_high]``."""
    if not 1 <= degree <= n:
        raise ValueError(f"degree must be in [1, n={n}], got {degree}")
    g = torch.Generator().manual_seed(seed)
    neighbours = torch.rand(arrivals, n, generator=g).argsort(1)[:, :degree]
    p = p_low + (p_high - p_low) * torch.rand(arrivals, degree, generator=g, dtype=torch.float64)
    return torch.zeros(arrivals, n, dtype=torch.float64).scatter_(1, neighbours, p)


class _Arrivals(Dataset):
    """Arrival ``t`` is the row of type ``order[t]`` (types are shared, not copied)."""

    def __init__(self, types: torch.Tensor, order: torch.Tensor) -> None:
        self.types, self.order = types, order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, t: int) -> torch.Tensor:
        return self.types[self.order[t]]


class MatchingDataModule(LightningDataModule):
    """The arrival stream of one seeded instance; batches are ``[chunk, num_offline]`` rows in arrival order.

    The train and test streams are the same instance (an online algorithm has nothing to fit; the
    test stream is served from a fresh state and compared with the matching-LP bound).
    """

    def __init__(
        self,
        family: str = "triangular",
        num_offline: int = 200,
        p: float = 0.01,
        copies: int = 100,
        arrivals: int = 4000,
        degree: int = 5,
        p_low: float = 0.005,
        p_high: float = 0.02,
        chunk: int = 1000,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
        if num_offline < 1 or copies < 1 or chunk < 1 or not 0 < p <= 1 or not 0 < p_low <= p_high <= 1:
            raise ValueError("num_offline, copies and chunk must be >= 1, and 0 < p <= 1, 0 < p_low <= p_high <= 1")
        self.family, self.num_offline, self.p, self.copies = family, num_offline, p, copies
        self.arrivals, self.degree, self.p_low, self.p_high = arrivals, degree, p_low, p_high
        self.chunk, self.seed = chunk, seed

    def instance(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(types [K, num_offline], order [T])``: arrival ``t`` is ``types[order[t]]``."""
        if self.family == "random":
            types = random_graph(self.num_offline, self.arrivals, self.degree, self.p_low, self.p_high, self.seed)
            return types, torch.arange(len(types))
        types = triangular_graph(self.num_offline, self.p) if self.family == "triangular" else kvv_graph(self.num_offline, self.p)
        return types, torch.arange(len(types)).repeat_interleave(self.copies)  # each type's copies in a row

    def _loader(self) -> DataLoader:
        return DataLoader(_Arrivals(*self.instance()), batch_size=self.chunk)

    def train_dataloader(self) -> DataLoader:
        return self._loader()

    def test_dataloader(self) -> DataLoader:
        return self._loader()
