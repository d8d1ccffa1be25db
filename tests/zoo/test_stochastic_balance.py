"""Stochastic Balance, its baselines and the matching-LP bound against brute force and hand-computed cases."""

from __future__ import annotations

import itertools
from functools import cache

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer

from tests.conftest import resume_mid_pass
from zoo.datamodules.matching import MatchingDataModule, kvv_graph, random_graph, triangular_graph
from zoo.stochastic_balance import (
    ALGORITHMS,
    Greedy,
    StochasticBalance,
    StochasticBalanceModule,
    aggregate_arrivals,
    assign,
    choose_greedy,
    choose_random,
    choose_ranking,
    choose_stochastic_balance,
    configuration_lp_upper_bound,
    matching_lp_upper_bound,
)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


# ------------------------------------------------------------------ brute force, written here
def _max_matching(adj: np.ndarray) -> int:
    """Largest matching by enumerating every injective assignment of arrivals to neighbours or nothing."""
    best = 0
    options = [[None, *np.flatnonzero(row)] for row in adj]
    for pick in itertools.product(*options):
        used = [u for u in pick if u is not None]
        if len(used) == len(set(used)):
            best = max(best, len(used))
    return best


def _clairvoyant(rows: np.ndarray) -> float:
    """The stochastic benchmark: the best adaptive policy knowing the sequence and ``p``, not the outcomes.

    Exact by recursion over (arrival, set of unmatched offline vertices) and both outcomes of every assignment.
    """

    @cache
    def value(t: int, free: frozenset[int]) -> float:
        if t == len(rows):
            return 0.0
        skip = value(t + 1, free)
        best = skip
        for u in free:
            p = rows[t, u]
            if p > 0:
                best = max(best, p * (1 + value(t + 1, free - {u})) + (1 - p) * skip)
        return best

    return value(0, frozenset(range(rows.shape[1])))


def _greedy_exact(rows: np.ndarray) -> float:
    """Greedy's exact expected reward, enumerating every outcome (loads do not matter to greedy)."""

    def value(t: int, free: frozenset[int]) -> float:
        if t == len(rows):
            return 0.0
        cand = [u for u in free if rows[t, u] > 0]
        if not cand:
            return value(t + 1, free)
        u = max(cand, key=lambda c: (rows[t, c], c))  # largest p, ties to the highest index
        p = rows[t, u]
        return p * (1 + value(t + 1, free - {u})) + (1 - p) * value(t + 1, free)

    return value(0, frozenset(range(rows.shape[1])))


def _balance_exact(rows: np.ndarray, rank: np.ndarray) -> float:
    """Stochastic Balance's (psi = exp) exact expected reward for one fixed tie-break priority."""

    def value(t: int, free: frozenset[int], load: tuple[float, ...]) -> float:
        if t == len(rows):
            return 0.0
        cand = [u for u in free if rows[t, u] > 0]
        if not cand:
            return value(t + 1, free, load)
        u = max(cand, key=lambda c: (round(rows[t, c] * np.exp(-load[c]), 12), rank[c]))
        p = rows[t, u]
        failed = tuple(load[c] + (p if c == u else 0.0) for c in range(len(load)))
        return p * (1 + value(t + 1, free - {u}, load)) + (1 - p) * value(t + 1, free, failed)

    return value(0, frozenset(range(rows.shape[1])), (0.0,) * rows.shape[1])


def _tiny(seed: int, arrivals: int = 5, offline: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = rng.uniform(0.1, 0.9, (arrivals, offline)) * (rng.random((arrivals, offline)) < 0.6)
    return rows


# ------------------------------------------------------------------ the LP bound
@pytest.mark.parametrize("seed", range(6))
def test_lp_is_the_maximum_matching_when_every_assignment_succeeds(seed: int) -> None:
    adj = (np.random.default_rng(seed).random((5, 4)) < 0.45).astype(float)
    assert matching_lp_upper_bound(adj) == pytest.approx(_max_matching(adj), abs=1e-7)


@pytest.mark.parametrize("seed", range(8))
def test_lp_bounds_the_clairvoyant_stochastic_benchmark(seed: int) -> None:
    rows = _tiny(seed)
    lp, opt = matching_lp_upper_bound(rows), _clairvoyant(rows)
    assert opt <= lp + 1e-9
    assert opt > 0


def test_lp_hand_case_capacity_binds() -> None:
    # one offline vertex, three arrivals with p = 0.5: sum_v p x_v <= 1 binds at 1; x_v <= 1 would allow 1.5
    assert matching_lp_upper_bound(np.full((3, 1), 0.5)) == pytest.approx(1.0)
    # two arrivals with p = 0.25 and 0.5 on one vertex: 0.25 + 0.5 = 0.75 < 1, both whole
    assert matching_lp_upper_bound(np.array([[0.25], [0.5]])) == pytest.approx(0.75)


def test_copies_aggregate_to_the_same_lp() -> None:
    types = triangular_graph(6, 0.25)
    rows = [types[j] for j in torch.arange(6).repeat_interleave(4)]
    distinct, counts = aggregate_arrivals(rows)
    assert distinct.shape == (6, 6) and counts.tolist() == [4.0] * 6
    assert matching_lp_upper_bound(distinct, counts) == pytest.approx(matching_lp_upper_bound(torch.stack(rows).numpy()))
    assert matching_lp_upper_bound(distinct, counts) == pytest.approx(6.0)  # u_j filled by type j


def test_family_lps_are_n() -> None:
    for types in (triangular_graph(20, 0.1), kvv_graph(20, 0.1)):
        assert matching_lp_upper_bound(types.numpy(), np.full(20, 10.0)) == pytest.approx(20.0)


# ------------------------------------------------------------------ the choice rules by hand
def test_stochastic_balance_picks_the_least_loaded_for_equal_p_and_weighs_by_psi_otherwise() -> None:
    rank = np.array([[0.1, 0.2, 0.3]])
    avail = np.array([[True, True, False]])
    assert choose_stochastic_balance(np.full(3, 0.5), avail, np.array([[0.3, 0.1, 0.0]]), rank).tolist() == [1]
    # 0.6 e^-1 = 0.221 < 0.3 e^0: the loaded high-p vertex loses; unloaded it wins
    p, avail2 = np.array([0.6, 0.3]), np.ones((1, 2), bool)
    assert choose_stochastic_balance(p, avail2, np.array([[1.0, 0.0]]), rank[:, :2]).tolist() == [1]
    assert choose_stochastic_balance(p, avail2, np.zeros((1, 2)), rank[:, :2]).tolist() == [0]
    # psi = 1 - e^(l-1): 0.6 (1 - e^0) = 0 at load 1
    assert choose_stochastic_balance(p, avail2, np.array([[1.0, 0.5]]), rank[:, :2], "one-minus-exp").tolist() == [1]
    # ties go to the higher rank; nothing available -> -1
    tie = choose_stochastic_balance(np.full(2, 0.5), np.ones((2, 2), bool), np.zeros((2, 2)), np.array([[0.9, 0.1], [0.1, 0.9]]))
    assert tie.tolist() == [0, 1]
    assert choose_stochastic_balance(np.full(2, 0.5), np.zeros((1, 2), bool), np.zeros((1, 2)), rank[:, :2]).tolist() == [-1]


def test_greedy_ranking_and_random_by_hand() -> None:
    p = np.array([0.2, 0.5, 0.5])
    avail = np.array([[True, True, True], [True, True, False], [True, False, False], [False, False, False]])
    assert choose_greedy(p, avail).tolist() == [2, 1, 0, -1]  # largest p, ties to the highest index
    rank = np.array([[0.1, 0.9, 0.5]] * 4)
    assert choose_ranking(avail, rank).tolist() == [1, 1, 0, -1]
    many = np.tile(np.array([[True, False, True]]), (6000, 1))
    picks = choose_random(many, np.random.default_rng(0))
    assert set(picks.tolist()) == {0, 2} and abs((picks == 0).mean() - 0.5) < 0.03


def test_assign_removes_on_success_and_adds_load_on_failure() -> None:
    neighbours, p = np.array([1, 3]), np.array([0.4, 0.7])
    available, load = np.ones((3, 4), bool), np.zeros((3, 4))
    success = assign(neighbours, p, np.array([0, 1, -1]), available, load, np.array([0.5, 0.6, 0.0]))
    # sample 0: u1 with p 0.4, draw 0.5 fails -> load 0.4; sample 1: u3 with 0.7, draw 0.6 succeeds; sample 2 skips
    assert success.tolist() == [False, True, False]
    assert available.tolist() == [[True] * 4, [True, True, True, False], [True] * 4]
    assert load[0].tolist() == [0.0, 0.4, 0.0, 0.0] and load[1:].sum() == 0


# ------------------------------------------------------------------ expectations against exact enumeration
@pytest.mark.parametrize("seed", range(3))
def test_monte_carlo_matches_exact_expectations_below_the_benchmark(seed: int) -> None:
    rows = _tiny(seed + 10)
    samples = 20000
    greedy = Greedy(3, samples, seed).serve_all(list(rows))
    exact_greedy = _greedy_exact(rows)
    assert greedy == pytest.approx(exact_greedy, abs=4 * np.sqrt(len(rows) / samples))
    rank = np.array([0.2, 0.7, 0.5])
    exact_sb = _balance_exact(rows, rank)
    mc = StochasticBalance(3, samples, seed)
    mc.rank[:] = rank  # the same tie-break priority in every realisation
    assert mc.serve_all(list(rows)) == pytest.approx(exact_sb, abs=4 * np.sqrt(len(rows) / samples))
    opt = _clairvoyant(rows)
    assert exact_greedy <= opt + 1e-9 and exact_sb <= opt + 1e-9


def test_two_by_two_triangle_with_certain_success() -> None:
    # v0 ~ {u0, u1}, v1 ~ {u1}, p = 1. Greedy (ties high) takes u1 then v1 finds nothing: 1. Balance and
    # Random take u0 with probability 1/2: 1.5. LP = 2.
    rows = list(triangular_graph(2, 1.0))
    assert Greedy(2, 100, 0).serve_all(rows) == pytest.approx(1.0)
    for name in ("stochastic-balance", "ranking", "random"):
        assert ALGORITHMS[name](2, 8000, 0).serve_all(rows) == pytest.approx(1.5, abs=0.03), name
    assert matching_lp_upper_bound(torch.stack(rows).numpy()) == pytest.approx(2.0)


@pytest.mark.parametrize("family", ["triangular", "kvv", "random"])
def test_every_ratio_is_at_most_one(family: str) -> None:
    dm = MatchingDataModule(family=family, num_offline=20, p=0.1, copies=10, arrivals=200, seed=3)
    types, order = dm.instance()
    rows = [types[i] for i in order]
    lp = matching_lp_upper_bound(*aggregate_arrivals(rows))
    for name, cls in ALGORITHMS.items():
        ratio = cls(20, 50, 0).serve_all(rows) / lp
        assert 0 < ratio <= 1.0, (family, name, ratio)


# ------------------------------------------------------------------ state, stream and module
def test_state_dict_resumes_the_same_realisations() -> None:
    rows = [r for r in random_graph(10, 60, 3, 0.1, 0.5, 0)]
    whole = StochasticBalance(10, 16, 4).serve_all(rows)
    first = StochasticBalance(10, 16, 4)
    half = first.serve_all(rows[:30])
    state = first.state_dict()
    second = StochasticBalance(10, 16, 99)
    second.load_state_dict(state)
    assert half + second.serve_all(rows[30:]) == pytest.approx(whole, abs=1e-12)


def test_datamodule_families() -> None:
    tri = MatchingDataModule(family="triangular", num_offline=4, p=0.5, copies=2)
    types, order = tri.instance()
    assert types.tolist()[1] == [0.0, 0.5, 0.5, 0.5] and order.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    kvv, _ = MatchingDataModule(family="kvv", num_offline=4, p=0.5, copies=2).instance()
    assert kvv.tolist() == [[0.5, 0, 0.5, 0.5], [0, 0.5, 0.5, 0.5], [0, 0, 0.5, 0.5], [0, 0, 0.5, 0.5]]
    rnd = random_graph(8, 50, 3, 0.1, 0.2, 5)
    assert ((rnd > 0).sum(1) == 3).all() and rnd[rnd > 0].min() >= 0.1 and rnd.max() <= 0.2
    assert torch.equal(rnd, random_graph(8, 50, 3, 0.1, 0.2, 5))
    batch = next(iter(tri.test_dataloader()))
    assert batch.shape == (8, 4)


def test_module_fits_and_tests_with_the_lp_benchmark(tmp_path) -> None:
    dm = MatchingDataModule(family="triangular", num_offline=10, p=0.1, copies=10, chunk=25)
    module = StochasticBalanceModule(num_offline=10, samples=20)
    trainer = Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False, max_epochs=1, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=dm)
    assert module.served == 100
    metrics = trainer.test(module, datamodule=dm, verbose=False)[0]
    assert metrics["test/benchmark"] == pytest.approx(10.0)
    assert 0.5 < metrics["test/ratio"] <= 1.0 and metrics["test/requests"] == 100
    assert metrics["test/regret"] == pytest.approx(10.0 - metrics["test/cost"])
    with pytest.raises(ValueError, match="algorithm must be one of"):
        StochasticBalanceModule(algorithm="balance")


def test_a_stream_resumed_from_a_checkpoint_continues_the_same_realisations(tmp_path) -> None:
    dm = MatchingDataModule(family="random", num_offline=12, arrivals=120, degree=3, p_low=0.1, p_high=0.4, chunk=20, seed=1)
    runs = resume_mid_pass(tmp_path, lambda: StochasticBalanceModule(num_offline=12, samples=16, seed=2), lambda: dm, crash_batch=2)
    full, resumed = runs.full, runs.resumed
    assert resumed.served == full.served == 120
    assert resumed.cumulative_cost == pytest.approx(full.cumulative_cost, abs=1e-12)
    assert np.array_equal(resumed.algorithm.load, full.algorithm.load)


def _best_fixed_assignment(rows: np.ndarray) -> float:
    """Brute force over every assignment of arrivals to a neighbour or nothing, fixed in advance."""
    best = 0.0
    for pick in itertools.product(*[[None, *np.flatnonzero(r)] for r in rows]):
        fail = np.ones(rows.shape[1])
        for v, u in enumerate(pick):
            if u is not None:
                fail[u] *= 1 - rows[v, u]
        best = max(best, float((1 - fail).sum()))
    return best


@pytest.mark.parametrize("seed", range(6))
def test_configuration_lp_sits_between_the_best_fixed_assignment_and_the_matching_lp(seed: int) -> None:
    rows = _tiny(seed + 20)
    config = configuration_lp_upper_bound(rows)
    assert _best_fixed_assignment(rows) <= config + 1e-9
    assert config <= matching_lp_upper_bound(rows) + 1e-9


def test_configuration_lp_by_hand_and_with_certain_success() -> None:
    # one vertex, three arrivals with p = 0.5: the configuration of all three is worth 1 - 0.125 = 0.875,
    # below the matching LP's 1
    assert configuration_lp_upper_bound(np.full((3, 1), 0.5)) == pytest.approx(0.875)
    adj = (np.random.default_rng(4).random((5, 4)) < 0.45).astype(float)
    assert configuration_lp_upper_bound(adj) == pytest.approx(_max_matching(adj), abs=1e-7)
    with pytest.raises(ValueError, match="max_degree"):
        configuration_lp_upper_bound(np.full((20, 1), 0.1))


def test_configuration_lp_bounds_fixed_assignments_not_the_adaptive_clairvoyant() -> None:
    # with large p, adapting to outcomes beats every fixed assignment: here the clairvoyant's 2.12 exceeds
    # the configuration LP's 2.04, while the matching LP (2.44) still bounds it
    rows = _tiny(3, arrivals=6, offline=3)
    assert configuration_lp_upper_bound(rows) < _clairvoyant(rows) - 0.05
    assert _clairvoyant(rows) <= matching_lp_upper_bound(rows)
