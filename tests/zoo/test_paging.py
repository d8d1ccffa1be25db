"""zoo.paging: Belady against brute force, LRU/Marking against naive loops, consistency, the error bound."""

from __future__ import annotations

import random
from functools import cache

import pytest
import torch
from lightning.pytorch import Trainer

from zoo.datamodules.paging import PagingDataModule, causal_features, zipf_trace
from zoo.paging import (
    LRU,
    FollowThePrediction,
    Marking,
    PagingModule,
    PhaseMarking,
    RobustDiscard,
    belady,
    build_policy,
    corrupt_bits,
    discard_bits,
    opt_faults,
    phase_bits,
    phases,
    prediction_errors,
)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _brute_opt(requests: list[int], k: int) -> int:
    """The fewest faults over every eviction choice (demand paging), by memoised search over cache sets."""

    @cache
    def best(t: int, cache: frozenset[int]) -> int:
        if t == len(requests):
            return 0
        page = requests[t]
        if page in cache:
            return best(t + 1, cache)
        if len(cache) < k:
            return 1 + best(t + 1, cache | {page})
        return 1 + min(best(t + 1, (cache - {v}) | {page}) for v in cache)

    return best(0, frozenset())


def _random_traces(count: int, seed: int, max_len: int = 10, max_pages: int = 5) -> list[tuple[list[int], int]]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        pages = rng.randint(2, max_pages)
        out.append(([rng.randrange(pages) for _ in range(rng.randint(1, max_len))], rng.randint(1, 3)))
    return out


def test_opt_faults_equals_brute_force_over_all_eviction_choices() -> None:
    for requests, k in _random_traces(300, seed=0):
        assert opt_faults(requests, k) == _brute_opt(requests, k), (requests, k)


def test_belady_hand_case_faults_and_discard_bits() -> None:
    # k = 2, requests a b c a b. At c: a is next at 3, b at 4, so b goes (bit of t=1 is 1). At the last b:
    # a and c are never requested again, the tie goes to the smaller id a (bit of t=3 is 1). Requests with
    # no next request (t = 2, 3, 4) are safe to discard; a@0 stays until its request at 3 (bit 0).
    faults, bits = belady([0, 1, 2, 0, 1], 2)
    assert faults == 4
    assert bits == [0, 1, 1, 1, 1]
    assert discard_bits([0, 1, 2, 0, 1], 2) == bits


def test_lru_matches_a_naive_list_loop() -> None:
    for requests, k in _random_traces(200, seed=1, max_len=30, max_pages=7):
        cache: list[int] = []
        naive = 0
        for p in requests:
            if p in cache:
                cache.remove(p)
            else:
                naive += 1
                if len(cache) == k:
                    cache.pop(0)
            cache.append(p)
        assert LRU(k).serve_all(requests) == naive


def test_randomized_marking_matches_a_naive_loop_with_the_same_draws() -> None:
    for requests, k in _random_traces(200, seed=2, max_len=30, max_pages=7):
        rng = random.Random(5)
        cache: list[int] = []  # LRU order
        marked: set[int] = set()
        naive = 0
        for p in requests:
            if p not in marked and len(marked) == k:
                marked = set()
            marked.add(p)
            if p in cache:
                cache.remove(p)
            else:
                naive += 1
                if len(cache) == k:
                    cache.remove(rng.choice([q for q in cache if q not in marked]))
            cache.append(p)
        assert Marking(k, randomized=True, seed=5).serve_all(requests) == naive


def test_follow_the_prediction_with_perfect_bits_pays_opt() -> None:
    for requests, k in _random_traces(300, seed=3, max_len=25, max_pages=7):
        bits = discard_bits(requests, k)
        assert FollowThePrediction(k).serve_all(zip(requests, bits)) == opt_faults(requests, k)
    trace = zipf_trace(5000, 200, 0.8, 500, 7)
    assert FollowThePrediction(16).serve_all(zip(trace, discard_bits(trace, 16))) == opt_faults(trace, 16)


@pytest.mark.parametrize("algo", [FollowThePrediction, RobustDiscard])
def test_error_bound_cost_at_most_opt_plus_k_minus_1_eta0_plus_eta1(algo: type) -> None:
    rng = random.Random(4)
    for requests, k in _random_traces(400, seed=4, max_len=25, max_pages=7):
        truth = discard_bits(requests, k)
        q = rng.choice([0.05, 0.2, 0.5, 1.0])
        pred = [b ^ int(rng.random() < q) for b in truth]
        eta0, eta1 = prediction_errors(pred, truth)
        cost = algo(k).serve_all(zip(requests, pred))
        assert cost <= opt_faults(requests, k) + (k - 1) * eta0 + eta1, (requests, k, pred)


def test_robust_discard_pays_at_most_two_k_per_phase_whatever_the_bits() -> None:
    rng = random.Random(6)
    for requests, k in _random_traces(300, seed=6, max_len=40, max_pages=8):
        bits = [rng.randrange(2) for _ in requests]
        num_phases = phases(requests, k)[-1] + 1
        for randomized in (False, True):
            assert RobustDiscard(k, randomized, seed=1).serve_all(zip(requests, bits)) <= 2 * k * num_phases


def test_phases_and_phase_bits_hand_case() -> None:
    requests = [0, 1, 0, 2, 1, 3, 0]  # k = 2: phases [0 1 0] [2 1] [3 0]
    assert phases(requests, 2) == [0, 0, 0, 1, 1, 2, 2]
    assert phase_bits(requests, 2) == [0, 1, 0, 0, 0, 0, 0]


def test_phase_marking_with_perfect_bits_pays_only_each_phases_new_pages() -> None:
    for requests, k in _random_traces(300, seed=7, max_len=40, max_pages=8):
        idx = phases(requests, k)
        sets: list[set[int]] = [set() for _ in range(idx[-1] + 1)]
        for p, i in zip(requests, idx):
            sets[i].add(p)
        expected = len(sets[0]) + sum(len(sets[i] - sets[i - 1]) for i in range(1, len(sets)))
        for randomized in (False, True):
            assert PhaseMarking(k, randomized, seed=2).serve_all(zip(requests, phase_bits(requests, k))) == expected


def test_corrupt_bits_and_prediction_errors() -> None:
    bits = torch.tensor([0, 1, 1, 0, 1])
    assert torch.equal(corrupt_bits(bits, 0.0), bits)
    assert torch.equal(corrupt_bits(bits, 1.0), 1 - bits)
    assert prediction_errors([0, 0, 1, 1, 1], [0, 1, 1, 0, 0]) == (1, 2)


def test_features_never_look_ahead() -> None:
    trace = zipf_trace(600, 50, 0.8, 100, 3)
    full = causal_features(trace)
    for cut in (1, 57, 300):  # the features of a prefix are the prefix of the features
        assert (causal_features(trace[:cut], horizon=len(trace)) == full[:cut]).all()


def _fit_test(tmp_path, **model_kw) -> dict[str, float]:
    dm = PagingDataModule(k=8, num_pages=60, length=3000, shift_every=500, train_traces=1, batch_size=256, seed=11)
    model = PagingModule(k=8, num_features=6, **model_kw)
    trainer = Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=dm)
    trainer.test(model, datamodule=dm, verbose=False)
    return {key: float(v) for key, v in trainer.callback_metrics.items()}


def test_module_true_bits_reach_opt_and_inverted_bits_keep_the_bound(tmp_path) -> None:
    metrics = _fit_test(tmp_path, policy="ftp", bits="true")
    assert metrics["test/ratio"] == 1.0 and metrics["test/eta0"] == 0 and metrics["test/bit_accuracy"] == 1.0
    metrics = _fit_test(tmp_path, policy="ftp", bits="invert")
    assert metrics["test/bit_accuracy"] == 0.0 and metrics["test/bound_slack"] >= 0 and metrics["test/ratio"] > 1.0


def test_module_learned_bits_beat_chance(tmp_path) -> None:
    metrics = _fit_test(tmp_path, policy="ftp", bits="learned")
    assert metrics["test/bit_accuracy"] > 0.6 and metrics["test/bound_slack"] >= 0


def test_module_rejects_unknown_settings() -> None:
    with pytest.raises(ValueError, match="unknown policy"):
        PagingModule(policy="fifo")
    with pytest.raises(ValueError, match="discard policy"):
        PagingModule(policy="phase", bits="learned")


@pytest.mark.parametrize("policy", ["lru", "marking", "ftp", "robust_random", "phase_random"])
def test_state_dict_resumes_mid_stream_exactly(policy: str, tmp_path) -> None:
    trace = zipf_trace(2000, 60, 0.8, 300, 9)
    stream = list(zip(trace, discard_bits(trace, 8)))
    whole = build_policy(policy, 8, seed=3).serve_all(stream)
    first = build_policy(policy, 8, seed=3)
    cost = first.serve_all(stream[:777])
    torch.save(first.state_dict(), tmp_path / "state.pt")
    resumed = build_policy(policy, 8, seed=3)
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert cost + resumed.serve_all(stream[777:]) == whole
