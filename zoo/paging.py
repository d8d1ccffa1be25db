"""Paging with 1-bit predictions: discard and phase predictions, Belady's optimum, LRU and Marking.

Paper: Antoniadis, Boyar, Eliáš, Favrholdt, Hoeksma, Larsen, Polak, Simon, "Paging with Succinct
Predictions", ICML 2023 (arXiv 2210.02775). Official code: none published.

With each request ``r_t`` the algorithm receives one bit. *Discard predictions* (Section 3): the bit says
whether it is safe to evict ``r_t`` before its next request, the ground truth being a fixed optimal
offline algorithm (Belady's furthest-in-the-future, FitF, with deterministic ties) evicting it before
then. Following the prediction (evict a page whose latest bit is 1) reproduces OPT's cost with perfect
bits, and the paper's bound is ``cost <= OPT + (k-1) eta0 + eta1`` ((1, k-1, 1)-competitive), ``eta0`` /
``eta1`` counting the wrong 0- / 1-bits. *Phase predictions* (Section 4): the input splits into k-phases
(maximal blocks with k distinct pages, the Marking phases, a property of the sequence alone); the bit
says whether ``r_t`` is requested again in the next phase, and a marking algorithm evicts first the
unmarked pages predicted absent from the current phase.

Functions: :func:`opt_faults` / :func:`belady` (FitF), :func:`discard_bits`, :func:`phases`,
:func:`phase_bits`, :func:`corrupt_bits` and :func:`prediction_errors`; algorithms as
:class:`~zoo.templates.online.OnlineAlgorithm` s (:class:`LRU`, :class:`Marking`,
:class:`FollowThePrediction`, :class:`RobustDiscard`, :class:`PhaseMarking`), each serving
``(page, bit)`` requests; :class:`PagingModule` trains a causal bit predictor with BCE and serves the
test trace with true, flipped, inverted or predicted bits.

Deviations and guesses (the paper's pseudo-code could not be read here; only its abstract and the
summary of its results were, so the rules below are our reading and are named as such):

- FtP evicts the least recently used page among those whose latest bit is 1, else the LRU page
  (the paper leaves the choice arbitrary).
- :class:`RobustDiscard` is our construction of the "robust version": marking phases defined on the
  sequence; evict an unmarked bit-1 page first, then a marked bit-1 page, then an unmarked page (LRU or
  uniform). A marked page that was evicted on its bit and requested again in the same phase has its bit
  ignored for the rest of the phase, so each page costs at most two faults a phase (O(k)-robust). It is
  not exactly 1-consistent (see the tests).
- :class:`PhaseMarking`: evict an unmarked page whose latest bit is 0 first, then any unmarked page.
  With perfect bits it pays exactly the new pages of each phase (tested), which is the marking optimum
  and within a factor 2 of OPT, not OPT itself.
- The learned predictor is an MLP over causal features (recency, stack distance, frequency);
  the paper has no learned predictor.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from zoo.templates.online import OnlineAlgorithm, OnlineModule

__all__ = [
    "LRU",
    "FollowThePrediction",
    "Marking",
    "PagingModule",
    "PhaseMarking",
    "RobustDiscard",
    "belady",
    "build_policy",
    "corrupt_bits",
    "discard_bits",
    "opt_faults",
    "phase_bits",
    "phases",
    "prediction_errors",
]

_NEVER = math.inf


def _next_use(requests: Sequence[int]) -> list[float]:
    """``nxt[t]``: the index of the next request of ``requests[t]``'s page (``inf`` if none)."""
    nxt: list[float] = [_NEVER] * len(requests)
    last: dict[int, int] = {}
    for t in range(len(requests) - 1, -1, -1):
        nxt[t] = last.get(requests[t], _NEVER)
        last[requests[t]] = t
    return nxt


def belady(requests: Sequence[int], k: int) -> tuple[int, list[int]]:
    """FitF (Belady): on a fault evict the page requested furthest in the future; faults and discard bits.

    Ties (pages never requested again) go to the smallest page id, so the bits are deterministic. The
    discard bit of request ``t`` is 1 when FitF evicts its page before the page's next request, or the
    page is never requested again (Section 3's ground truth for discard predictions).
    """
    requests = [int(r) for r in requests]
    nxt = _next_use(requests)
    bits = [0] * len(requests)
    cached: dict[int, tuple[float, int]] = {}  # page -> (its next use, the request that brought it)
    heap: list[tuple[float, int]] = []  # (-next use, page), stale entries skipped
    faults = 0
    for t, page in enumerate(requests):
        if page not in cached:
            faults += 1
            if len(cached) >= k:
                while True:
                    neg, victim = heapq.heappop(heap)
                    if victim in cached and cached[victim][0] == -neg:
                        break
                bits[cached.pop(victim)[1]] = 1  # evicted before its next request
        cached[page] = (nxt[t], t)
        heapq.heappush(heap, (-nxt[t], page))
    for t in range(len(requests)):
        if nxt[t] == _NEVER:
            bits[t] = 1  # never requested again: safe to discard
    return faults, bits


def opt_faults(requests: Sequence[int], k: int) -> int:
    """The offline optimum's number of faults (FitF, deterministic ties), cold cache of size ``k``."""
    return belady(requests, k)[0]


def discard_bits(requests: Sequence[int], k: int) -> list[int]:
    """Ground-truth discard bits (Section 3): 1 iff FitF evicts the page before its next request."""
    return belady(requests, k)[1]


def phases(requests: Sequence[int], k: int) -> list[int]:
    """The k-phase index of every request: a new phase starts at the (k+1)-th distinct page (Section 4)."""
    out, seen, phase = [], set(), 0
    for page in requests:
        if page not in seen and len(seen) == k:
            phase, seen = phase + 1, set()
        seen.add(page)
        out.append(phase)
    return out


def phase_bits(requests: Sequence[int], k: int) -> list[int]:
    """Ground-truth phase bits (Section 4): 1 iff request ``t``'s page is requested in the next k-phase."""
    idx = phases(requests, k)
    pages_of: dict[int, set[int]] = {}
    for page, i in zip(requests, idx):
        pages_of.setdefault(i, set()).add(page)
    return [int(page in pages_of.get(i + 1, ())) for page, i in zip(requests, idx)]


def corrupt_bits(bits: torch.Tensor, q: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip each bit independently with probability ``q`` (``q = 1`` inverts every bit)."""
    bits = bits.long()
    if q >= 1.0:
        return 1 - bits
    flips = (torch.rand(bits.shape, generator=generator) < q).long()
    return bits ^ flips


def prediction_errors(predicted: Sequence[int], truth: Sequence[int]) -> tuple[int, int]:
    """``(eta0, eta1)``: wrong 0-predictions (truth 1) and wrong 1-predictions (truth 0)."""
    eta0 = sum(1 for p, y in zip(predicted, truth) if p == 0 and y == 1)
    eta1 = sum(1 for p, y in zip(predicted, truth) if p == 1 and y == 0)
    return eta0, eta1


# ---------------------------------------------------------------------------------- algorithms
def _page_bit(request: Any) -> tuple[int, int]:
    if isinstance(request, (tuple, list)):
        return int(request[0]), int(request[1])
    return int(request), 0


class _Cache(OnlineAlgorithm):
    """A cache of ``k`` pages in LRU order; subclasses choose the victim. ``serve`` returns 1 on a fault."""

    def __init__(self, k: int = 32, seed: int = 0) -> None:
        if k < 1:
            raise ValueError(f"cache size k must be >= 1, got {k}")
        self.k, self.seed = k, seed
        self.reset()

    def reset(self) -> None:
        self.cache: OrderedDict[int, int] = OrderedDict()  # page -> latest bit, LRU first
        self.rng = random.Random(self.seed)
        self.faults = 0

    def victim(self) -> int:
        return next(iter(self.cache))  # LRU

    def on_request(self, page: int, bit: int, hit: bool) -> None:
        """Bookkeeping before the hit/eviction (marks, phases)."""

    def serve(self, request: Any) -> float:
        page, bit = _page_bit(request)
        hit = page in self.cache
        self.on_request(page, bit, hit)
        if hit:
            self.cache.move_to_end(page)
        else:
            self.faults += 1
            if len(self.cache) >= self.k:
                self.evict(self.victim())
        self.cache[page] = bit  # the bit refers to this request and overwrites the page's previous one
        self.after_request(page, bit)
        return 0.0 if hit else 1.0

    def evict(self, page: int) -> None:
        del self.cache[page]

    def after_request(self, page: int, bit: int) -> None:
        """Bookkeeping once ``page`` is cached."""

    def state_dict(self) -> dict[str, Any]:
        return {"cache": list(self.cache.items()), "faults": self.faults, "rng": self.rng.getstate()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cache = OrderedDict((int(p), int(b)) for p, b in state["cache"])
        self.faults = int(state["faults"])
        self.rng.setstate(state["rng"])


class LRU(_Cache):
    """Least recently used: evict the page whose last request is oldest (bits ignored)."""


class FollowThePrediction(_Cache):
    """FtP (Section 3, consistency): evict the LRU page whose latest bit is 1; none: the LRU page."""

    def reset(self) -> None:
        super().reset()
        self.ones: OrderedDict[int, None] = OrderedDict()  # cached pages with latest bit 1, LRU first

    def victim(self) -> int:
        return next(iter(self.ones)) if self.ones else next(iter(self.cache))

    def evict(self, page: int) -> None:
        super().evict(page)
        self.ones.pop(page, None)

    def after_request(self, page: int, bit: int) -> None:
        self.ones.pop(page, None)
        if bit:
            self.ones[page] = None

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "ones": list(self.ones)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.ones = OrderedDict((int(p), None) for p in state["ones"])


class Marking(_Cache):
    """Marking (Fiat et al.): phases of k distinct pages; evict an unmarked page, uniformly if ``randomized``."""

    def __init__(self, k: int = 32, randomized: bool = True, seed: int = 0) -> None:
        self.randomized = randomized
        super().__init__(k, seed)

    def reset(self) -> None:
        super().reset()
        self.marked: set[int] = set()  # pages requested in the current k-phase
        self.evicted_marked: set[int] = set()

    def on_request(self, page: int, bit: int, hit: bool) -> None:
        if page not in self.marked and len(self.marked) == self.k:
            self.marked, self.evicted_marked = set(), set()  # a new k-phase starts (Section 4's phases)
            self.on_new_phase()
        self.marked.add(page)

    def on_new_phase(self) -> None:
        """Hook at a phase boundary."""

    def _pick(self, pages: list[int]) -> int:
        return self.rng.choice(pages) if self.randomized else pages[0]  # pages are in LRU order

    def unmarked(self) -> list[int]:
        return [p for p in self.cache if p not in self.marked]

    def victim(self) -> int:
        return self._pick(self.unmarked())

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "marked": sorted(self.marked), "evicted_marked": sorted(self.evicted_marked)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.marked, self.evicted_marked = set(state["marked"]), set(state["evicted_marked"])


class RobustDiscard(Marking):
    """Discard predictions inside marking phases (our reading of the robust version, see the module docstring).

    Victim order: an unmarked page with bit 1; a marked page with bit 1 whose prediction was not proven
    wrong this phase; an unmarked page (LRU, or uniform if ``randomized``).
    """

    def __init__(self, k: int = 32, randomized: bool = False, seed: int = 0) -> None:
        super().__init__(k, randomized, seed)

    def reset(self) -> None:
        super().reset()
        self.distrusted: set[int] = set()  # evicted on a 1-bit while marked, then requested again this phase

    def on_new_phase(self) -> None:
        self.distrusted = set()

    def on_request(self, page: int, bit: int, hit: bool) -> None:
        super().on_request(page, bit, hit)
        if not hit and page in self.evicted_marked:
            self.distrusted.add(page)  # its 1-bit was proven wrong within the phase

    def victim(self) -> int:
        unmarked = self.unmarked()
        ones = [p for p in unmarked if self.cache[p]]
        if ones:
            return self._pick(ones)
        trusted = [p for p in self.cache if self.cache[p] and p in self.marked and p not in self.distrusted]
        if trusted:
            page = self._pick(trusted)
            self.evicted_marked.add(page)
            return page
        return self._pick(unmarked)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "distrusted": sorted(self.distrusted)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.distrusted = set(state["distrusted"])


class PhaseMarking(Marking):
    """Phase predictions (Section 4, our reading): marking that evicts first unmarked pages whose bit is 0.

    An unmarked page was requested in the previous phase; its latest bit predicts whether it comes back
    in the current one. With perfect bits only the phase's new pages fault.
    """

    def __init__(self, k: int = 32, randomized: bool = False, seed: int = 0) -> None:
        super().__init__(k, randomized, seed)

    def victim(self) -> int:
        unmarked = self.unmarked()
        zeros = [p for p in unmarked if not self.cache[p]]
        return self._pick(zeros or unmarked)


_POLICIES = ("lru", "marking", "ftp", "robust", "robust_random", "phase", "phase_random")
_BITS = ("true", "flip", "invert", "learned")


def build_policy(policy: str, k: int, seed: int = 0) -> _Cache:
    """The named algorithm with cache size ``k``."""
    table = {
        "lru": lambda: LRU(k, seed),
        "marking": lambda: Marking(k, True, seed),
        "ftp": lambda: FollowThePrediction(k, seed),
        "robust": lambda: RobustDiscard(k, False, seed),
        "robust_random": lambda: RobustDiscard(k, True, seed),
        "phase": lambda: PhaseMarking(k, False, seed),
        "phase_random": lambda: PhaseMarking(k, True, seed),
    }
    if policy not in table:
        raise ValueError(f"unknown policy {policy!r}; choose one of {', '.join(_POLICIES)}")
    return table[policy]()


class PagingModule(OnlineModule):
    """Fit: a causal bit predictor (MLP, BCE on discard bits). Test: the policy serves the test trace.

    The test loader yields ``(pages, discard_bits, phase_bits, features)``; the bit fed to the algorithm
    is the truth (``bits="true"``), each flipped with probability ``q`` (``"flip"``), all inverted
    (``"invert"``) or the predictor's (``"learned"``, discard policies only). Logs besides the base's:
    ``test/eta0``, ``test/eta1``, ``test/bit_accuracy`` and ``test/bound_slack`` =
    ``OPT + (k-1) eta0 + eta1 - cost`` (the paper's bound holds when it is >= 0).
    """

    def __init__(
        self,
        k: int = 32,
        policy: str = "ftp",
        bits: str = "true",
        q: float = 0.0,
        num_features: int = 6,
        hidden: int = 32,
        lr: float = 0.01,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if policy not in _POLICIES:
            raise ValueError(f"unknown policy {policy!r}; choose one of {', '.join(_POLICIES)}")
        if bits not in _BITS:
            raise ValueError(f"unknown bits {bits!r}; choose one of {', '.join(_BITS)}")
        if bits == "learned" and policy.startswith("phase"):
            raise ValueError("the learned predictor outputs discard bits; use a discard policy (ftp, robust)")
        self.save_hyperparameters()
        self.automatic_optimization = True  # the predictor learns by gradient; serving happens at test
        self.net = nn.Sequential(nn.Linear(num_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self._gen = torch.Generator().manual_seed(seed)
        self._opt_cache: tuple[int, int] | None = None

    def build_algorithm(self) -> OnlineAlgorithm:
        return build_policy(self.hparams.policy, self.hparams.k, self.hparams.seed)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits of the discard bit from causal features ``[N, num_features]``."""
        return self.net(features).squeeze(-1)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)

    def on_train_start(self) -> None:
        """Fitting trains the predictor only; the algorithm serves the test trace."""

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.binary_cross_entropy_with_logits(self(x), y.float())
        self.log("train/bce", loss, prog_bar=True)
        return loss

    def requests_of(self, batch: Any) -> list[Any]:
        pages, dbits, pbits, feats = batch
        truth = (pbits if self.hparams.policy.startswith("phase") else dbits).long()
        mode = self.hparams.bits
        if mode == "true":
            pred = truth
        elif mode == "flip":
            pred = corrupt_bits(truth, self.hparams.q, self._gen)
        elif mode == "invert":
            pred = 1 - truth
        else:
            with torch.no_grad():
                pred = (self(feats.float()) > 0).long()
        return list(zip(pages.tolist(), pred.tolist(), truth.tolist()))

    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        self._gen.manual_seed(self.hparams.seed)
        self._opt_cache = None

    def benchmark(self, requests: list[Any]) -> float:
        if self._opt_cache is None or self._opt_cache[0] != len(requests):
            self._opt_cache = (len(requests), opt_faults([r[0] for r in requests], self.hparams.k))
        return float(self._opt_cache[1])

    def on_test_epoch_end(self) -> None:
        requests = self._test_requests
        eta0, eta1 = prediction_errors([r[1] for r in requests], [r[2] for r in requests])
        opt = self.benchmark(requests)
        n = max(len(requests), 1)
        logs = {
            "test/eta0": float(eta0),
            "test/eta1": float(eta1),
            "test/bit_accuracy": 1.0 - (eta0 + eta1) / n,
            "test/bound_slack": opt + (self.hparams.k - 1) * eta0 + eta1 - self._test_cost,
        }
        self.log_dict({key: torch.tensor(v, dtype=torch.float64) for key, v in logs.items()})
        super().on_test_epoch_end()
