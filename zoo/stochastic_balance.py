"""Stochastic Balance for online matching with stochastic rewards, its baselines and the matching-LP bound.

Paper: Huang, Jiang, Shen, Song, Wu, Zhang, "Online Matching with Stochastic Rewards: Advanced Analyses
Using Configuration Linear Programs", WINE 2023 (arXiv 2309.10289). Official code: none (a theory paper).
The algorithm it analyses is Stochastic Balance (Mehta and Panigrahi, FOCS 2012; Huang and Zhang,
arXiv 2002.01802); the paper proves it 0.611-competitive against the stochastic benchmark of Goyal and
Udwani for vanishing probabilities, 0.613 when they are also equal (abstract).

Model (Mehta and Panigrahi): offline vertices ``U``; online vertices arrive one at a time revealing their
edges and success probabilities ``p_uv``. An arrival may be assigned to one neighbour not yet matched;
the assignment succeeds with probability ``p_uv`` independently (``u`` is then gone), otherwise ``u``
stays available and its load grows. The reward is the number of successes. Stochastic Balance keeps the
load ``l_u``, the sum of ``p_uv'`` over earlier assignments to ``u``, and assigns ``v`` to the available
neighbour maximising ``p_uv psi(l_u)`` for a decreasing ``psi``; with equal probabilities that is the
least-loaded available neighbour, whatever ``psi``.

Everything is simulated over ``samples`` independent outcome realisations at once (one row of the state
per realisation), so a served arrival returns the Monte-Carlo mean of its successes and a stream's total
estimates the expected reward. The benchmark is the matching LP (a budgeted-allocation LP, valid upper
bound on the stochastic benchmark for vanishing probabilities), solved with HiGHS.

Deviations and guesses:

- ``psi``: the closed form of Huang and Zhang's function could not be read here (only abstracts were);
  ``psi(l) = exp(-l)`` (default) and ``psi(l) = 1 - exp(l - 1)`` are natural candidates, named as such.
  The claim's hard families have equal probabilities, where any decreasing ``psi`` gives the same rule.
- Ties (equal scores) are broken by a random priority over ``U`` drawn per realisation at ``reset``
  (the paper leaves ties arbitrary). Greedy breaks ties towards the highest index, the adversary's
  choice on the triangular graph (the classical hard case for greedy).
- The bound the module reports is the matching LP. The configuration LP (one variable per offline
  vertex and set of arrivals; our reading of Huang and Zhang's from their abstract) is
  :func:`configuration_lp_upper_bound`, for tiny graphs only (it enumerates sets). The paper's
  Stochastic Configuration LP is not implemented: its definition could not be read here.
- Ranking is the KVV-style random priority per realisation, ignoring ``p``; Random picks uniformly
  among the available neighbours.
- The arrays are numpy, not torch: an arrival touches ``samples x degree`` numbers, where numpy's
  per-call cost is several times smaller.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from scipy.optimize import linprog

from zoo.templates.online import OnlineAlgorithm, OnlineModule

__all__ = [
    "ALGORITHMS",
    "Greedy",
    "MatchingAlgorithm",
    "RandomChoice",
    "Ranking",
    "StochasticBalance",
    "StochasticBalanceModule",
    "aggregate_arrivals",
    "assign",
    "choose_greedy",
    "choose_random",
    "choose_ranking",
    "choose_stochastic_balance",
    "configuration_lp_upper_bound",
    "matching_lp_upper_bound",
    "psi",
]

PSI = ("exp", "one-minus-exp")
_TIE = 1e-12


# ----------------------------------------------------------------------------------- the maths
def psi(load: np.ndarray, kind: str = "exp") -> np.ndarray:
    """The decreasing discount of Stochastic Balance's score ``p_uv psi(l_u)`` (both forms are guesses)."""
    if kind == "exp":
        return np.exp(-load)
    if kind == "one-minus-exp":
        return 1.0 - np.exp(load - 1.0)
    raise ValueError(f"psi must be one of {PSI}, got {kind!r}")


def _pick(priority: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """Per row, the column of the largest ``priority`` (in ``[0, 1)``) among ``eligible`` ones; -1 where none is."""
    keyed = (priority + 1.0) * eligible  # eligible columns in [1, 2), the others 0
    choice = keyed.argmax(1)
    return np.where(keyed[np.arange(len(choice)), choice] > 0, choice, -1)


def choose_stochastic_balance(p: np.ndarray, available: np.ndarray, load: np.ndarray, rank: np.ndarray, kind: str = "exp") -> np.ndarray:
    """Stochastic Balance's choice: argmax over available neighbours of ``p_uv psi(l_u)``, ties by ``rank``.

    ``p [d]`` the arrival's probabilities on its ``d`` neighbours, ``available``/``load``/``rank [S, d]``
    per realisation (``rank`` in ``[0, 1)``); returns the neighbour's column per realisation (-1: none
    available). With equal ``p`` the rule is the least-loaded available neighbour for any decreasing
    ``psi`` (Mehta and Panigrahi's rule), computed without ``psi``.
    """
    if p.min() == p.max():
        score = np.where(available, -load, -np.inf)
    else:
        score = np.where(available, p[None, :] * psi(load, kind), -np.inf)
    best = score.max(1, keepdims=True)
    tied = available & (score >= best - _TIE * np.abs(best))
    return _pick(rank, tied)


def choose_greedy(p: np.ndarray, available: np.ndarray) -> np.ndarray:
    """Greedy: the available neighbour with the largest ``p_uv``, ties to the highest column."""
    d = p.shape[0]
    priority = p / (p.max() * (1 + 1e-9)) if p.size else p  # in (0, 1), order kept
    reversed_choice = _pick(np.broadcast_to(priority[::-1], available.shape), available[:, ::-1])
    return np.where(reversed_choice >= 0, d - 1 - reversed_choice, -1)


def choose_ranking(available: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """Ranking: the available neighbour of highest priority (one random priority over ``U`` per realisation)."""
    return _pick(rank, available)


def choose_random(available: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random: uniform among the available neighbours, independently per arrival and realisation."""
    return _pick(rng.random(available.shape), available)


def assign(neighbours: np.ndarray, p: np.ndarray, choice: np.ndarray, available: np.ndarray, load: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """The model's step (Mehta and Panigrahi): assign, succeed w.p. ``p_uv``, remove ``u`` or add ``p_uv`` to its load.

    ``neighbours [d]`` are the arrival's offline vertices, ``choice [S]`` columns into them (-1: skip),
    ``available``/``load [S, |U|]`` are updated in place; returns the successes ``[S]`` (bool).
    """
    rows = np.flatnonzero(choice >= 0)
    cols = neighbours[choice[rows]]
    prob = p[choice[rows]]
    success = np.zeros(choice.shape[0], dtype=bool)
    won = uniforms[rows] < prob
    success[rows[won]] = True
    available[rows[won], cols[won]] = False
    load[rows[~won], cols[~won]] += prob[~won]
    return success


def aggregate_arrivals(arrivals: Sequence[torch.Tensor | np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Distinct arrival rows ``[K, |U|]`` (first-seen order) and how often each arrives ``[K]``."""
    counts: dict[bytes, int] = {}
    rows: dict[bytes, np.ndarray] = {}
    for row in arrivals:
        a = np.ascontiguousarray(row.numpy() if isinstance(row, torch.Tensor) else row, dtype=np.float64)
        key = a.tobytes()
        counts[key] = counts.get(key, 0) + 1
        rows.setdefault(key, a)
    return np.stack(list(rows.values())), np.array(list(counts.values()), dtype=np.float64)


def matching_lp_upper_bound(types: np.ndarray, counts: np.ndarray | None = None) -> float:
    """The matching (budgeted-allocation) LP, solved with HiGHS:

    ``max sum p_ku x_ku  s.t.  sum_u x_ku <= m_k (each arrival type k),  sum_k p_ku x_ku <= 1 (each u),  x >= 0``.

    ``types [K, |U|]`` holds each arrival type's probabilities (0: no edge) and ``counts [K]`` how many
    copies arrive (1 each by default). Copies of a type share one variable per edge: by symmetry and
    convexity the LP over the copies has the same optimum.
    """
    types = np.asarray(types, dtype=np.float64)
    counts = np.ones(types.shape[0]) if counts is None else np.asarray(counts, dtype=np.float64)
    k, u = np.nonzero(types)
    if k.size == 0:
        return 0.0
    p = types[k, u]
    n = k.size
    cols = np.arange(n)
    a_type = sp.csr_matrix((np.ones(n), (k, cols)), shape=(types.shape[0], n))  # sum_u x_ku <= m_k
    a_offline = sp.csr_matrix((p, (u, cols)), shape=(types.shape[1], n))  # sum_k p_ku x_ku <= 1
    result = linprog(
        -p,
        A_ub=sp.vstack([a_type, a_offline]).tocsr(),
        b_ub=np.concatenate([counts, np.ones(types.shape[1])]),
        bounds=(0, None),
        method="highs-ipm",  # HiGHS interior point + crossover: 20x faster than its simplex on the random family
    )
    if result.status != 0:
        raise RuntimeError(f"HiGHS did not solve the matching LP: {result.message}")
    return float(-result.fun)


def configuration_lp_upper_bound(rows: np.ndarray, max_degree: int = 14) -> float:
    """The configuration LP (Huang and Zhang, arXiv 2002.01802), for tiny graphs, solved with HiGHS:

    ``max sum_u sum_S x_uS (1 - prod_{v in S} (1 - p_uv))  s.t.  sum_S x_uS <= 1 (each u),
    sum_u sum_{S ni v} x_uS <= 1 (each arrival v),  x >= 0``, ``S`` ranging over the non-empty sets of
    ``u``'s neighbouring arrivals (``rows [T, |U|]``, one row per arrival). A configuration's value is the
    chance that ``u`` is matched when every arrival of ``S`` is tried on it; the LP is at most the
    matching LP (``1 - prod (1 - p) <= min(1, sum p)``) and at least any fixed assignment's expected reward.
    With large ``p`` it can fall below the adaptive clairvoyant benchmark (tested), so it is not the
    module's bound.
    """
    rows = np.asarray(rows, dtype=np.float64)
    values: list[float] = []
    owner: list[int] = []
    members: list[np.ndarray] = []
    for u in range(rows.shape[1]):
        nbrs = np.flatnonzero(rows[:, u])
        if nbrs.size > max_degree:
            raise ValueError(
                f"offline vertex {u} has {nbrs.size} neighbouring arrivals; the configuration LP enumerates 2^{nbrs.size} sets (max_degree={max_degree})"
            )
        for mask in range(1, 1 << nbrs.size):
            subset = nbrs[[(mask >> i) & 1 == 1 for i in range(nbrs.size)]]
            values.append(1.0 - float(np.prod(1.0 - rows[subset, u])))
            owner.append(u)
            members.append(subset)
    if not values:
        return 0.0
    n = len(values)
    a_offline = sp.csr_matrix((np.ones(n), (owner, np.arange(n))), shape=(rows.shape[1], n))
    cols = np.concatenate([np.full(len(m), j) for j, m in enumerate(members)])
    a_arrival = sp.csr_matrix((np.ones(cols.size), (np.concatenate(members), cols)), shape=(rows.shape[0], n))
    result = linprog(
        -np.array(values),
        A_ub=sp.vstack([a_offline, a_arrival]).tocsr(),
        b_ub=np.ones(rows.shape[1] + rows.shape[0]),
        bounds=(0, None),
        method="highs",
    )
    if result.status != 0:
        raise RuntimeError(f"HiGHS did not solve the configuration LP: {result.message}")
    return float(-result.fun)


# ----------------------------------------------------------------------------------- the algorithms
class MatchingAlgorithm(OnlineAlgorithm):
    """An online matching policy simulated over ``samples`` outcome realisations; serve(row of p_uv) -> mean successes."""

    def __init__(self, num_offline: int, samples: int = 50, seed: int = 0) -> None:
        if num_offline < 1 or samples < 1:
            raise ValueError(f"num_offline and samples must be >= 1, got {num_offline} and {samples}")
        self.num_offline, self.samples, self.seed = num_offline, samples, seed
        self.reset()

    def reset(self) -> None:
        self.rng = np.random.Generator(np.random.PCG64(self.seed))
        self.available = np.ones((self.samples, self.num_offline), dtype=bool)
        self.load = np.zeros((self.samples, self.num_offline))
        self.rank = self.rng.random((self.samples, self.num_offline))  # tie-break / Ranking priority

    def choose(self, p: np.ndarray, neighbours: np.ndarray, available: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def serve(self, request: Any) -> float:
        row = np.asarray(request.numpy() if isinstance(request, torch.Tensor) else request, dtype=np.float64)
        if row.shape != (self.num_offline,):
            raise ValueError(f"an arrival is a row of {self.num_offline} probabilities (0: no edge), got shape {row.shape}")
        neighbours = np.flatnonzero(row)
        if neighbours.size == 0:
            return 0.0
        p = row[neighbours]
        choice = self.choose(p, neighbours, self.available[:, neighbours])
        success = assign(neighbours, p, choice, self.available, self.load, self.rng.random(self.samples))
        return float(success.sum()) / self.samples

    def scores(self, p: torch.Tensor) -> torch.Tensor:
        """The policy's priority of each offline vertex for arrival rows ``p [..., |U|]`` on an empty state."""
        return p.clone()

    def state_dict(self) -> dict[str, Any]:
        return {
            "available": torch.from_numpy(self.available.copy()),
            "load": torch.from_numpy(self.load.copy()),
            "rank": torch.from_numpy(self.rank.copy()),
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.available = state["available"].numpy().copy()
        self.load = state["load"].numpy().copy()
        self.rank = state["rank"].numpy().copy()
        self.rng.bit_generator.state = state["rng"]


class StochasticBalance(MatchingAlgorithm):
    """Stochastic Balance: argmax ``p_uv psi(l_u)`` over available neighbours (least-loaded for equal ``p``)."""

    def __init__(self, num_offline: int = 2, samples: int = 50, seed: int = 0, psi: str = "exp") -> None:
        if psi not in PSI:
            raise ValueError(f"psi must be one of {PSI}, got {psi!r}")
        self.psi = psi
        super().__init__(num_offline, samples, seed)

    def choose(self, p: np.ndarray, neighbours: np.ndarray, available: np.ndarray) -> np.ndarray:
        return choose_stochastic_balance(p, available, self.load[:, neighbours], self.rank[:, neighbours], self.psi)

    def scores(self, p: torch.Tensor) -> torch.Tensor:
        return p * float(psi(np.zeros(()), self.psi))


class Greedy(MatchingAlgorithm):
    """Greedy: the largest ``p_uv`` among available neighbours (ties: highest index)."""

    def choose(self, p: np.ndarray, neighbours: np.ndarray, available: np.ndarray) -> np.ndarray:
        return choose_greedy(p, available)


class Ranking(MatchingAlgorithm):
    """Ranking: one random priority over ``U`` per realisation; the highest-priority available neighbour."""

    def choose(self, p: np.ndarray, neighbours: np.ndarray, available: np.ndarray) -> np.ndarray:
        return choose_ranking(available, self.rank[:, neighbours])


class RandomChoice(MatchingAlgorithm):
    """Random: a uniformly random available neighbour."""

    def choose(self, p: np.ndarray, neighbours: np.ndarray, available: np.ndarray) -> np.ndarray:
        return choose_random(available, self.rng)


ALGORITHMS: dict[str, type[MatchingAlgorithm]] = {
    "stochastic-balance": StochasticBalance,
    "greedy": Greedy,
    "ranking": Ranking,
    "random": RandomChoice,
}


# ----------------------------------------------------------------------------------- the module
class StochasticBalanceModule(OnlineModule):
    """Serve a stream of arrivals (rows of ``p_uv``) with one policy; test logs reward / matching-LP bound.

    ``test/benchmark`` is the matching-LP bound over the whole test stream, ``test/ratio`` reward / bound;
    logged beyond the base: ``test/lp_seconds`` (aggregating the arrivals and solving the LP).
    """

    higher_is_better = True

    def __init__(self, num_offline: int = 200, algorithm: str = "stochastic-balance", psi: str = "exp", samples: int = 50, seed: int = 0) -> None:
        super().__init__()
        if algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {sorted(ALGORITHMS)}, got {algorithm!r}")
        if psi not in PSI:
            raise ValueError(f"psi must be one of {PSI}, got {psi!r}")
        self.save_hyperparameters()

    def build_algorithm(self) -> MatchingAlgorithm:
        h = self.hparams
        cls = ALGORITHMS[h.algorithm]
        if cls is StochasticBalance:
            return StochasticBalance(h.num_offline, h.samples, h.seed, h.psi)
        return cls(h.num_offline, h.samples, h.seed)

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        """The policy's priorities on an empty state for arrival rows ``p [..., |U|]``."""
        return self.algorithm.scores(p)  # type: ignore[attr-defined]

    def benchmark(self, requests: list[Any]) -> float | None:
        if not requests:
            return None
        start = time.perf_counter()
        types, counts = aggregate_arrivals(requests)
        value = matching_lp_upper_bound(types, counts)
        self._lp_seconds = time.perf_counter() - start
        return value

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        if hasattr(self, "_lp_seconds"):
            self.log("test/lp_seconds", torch.tensor(self._lp_seconds, dtype=torch.float64))
