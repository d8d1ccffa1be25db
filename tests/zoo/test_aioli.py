"""Aioli's maths against hand-computed cases and numpy, the tiny GPT's causality, and the mixture data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zoo.aioli import TinyGPT, exponentiated_gradient, learn_params_plan, normalize_mixing_matrix, one_hot_mixtures, unmix
from zoo.datamodules.mixture import MarkovMixtureDataModule, MixtureSampler, markov_chain

torch.set_num_threads(1)


def test_one_hot_mixtures_rows() -> None:
    W = one_hot_mixtures(3, 0.625)
    assert torch.allclose(W.sum(1), torch.ones(3, dtype=W.dtype))
    assert torch.allclose(W.diagonal(), torch.full((3,), 0.625, dtype=W.dtype)) and W[0, 1] == pytest.approx(0.1875)
    with pytest.raises(ValueError, match="one_hot_factor"):
        one_hot_mixtures(3, 0.3)
    with pytest.raises(ValueError, match="at least 2"):
        one_hot_mixtures(1, 1.0)


def test_unmix_recovers_the_law_matrix_like_a_per_row_numpy_solve() -> None:
    rng = np.random.default_rng(0)
    A = rng.normal(size=(4, 4))
    W = one_hot_mixtures(4, 0.5).numpy()
    A_hat = np.array([[A[i] @ W[j] for j in range(4)] for i in range(4)])  # loss drop of group i on mixture j
    got = unmix(torch.from_numpy(A_hat), torch.from_numpy(W)).numpy()
    want = np.stack([np.linalg.solve(W, A_hat[i]) for i in range(4)])
    np.testing.assert_allclose(got, want, atol=1e-12)
    np.testing.assert_allclose(got, A, atol=1e-12)


def test_normalize_shifts_by_the_minimum_then_sums_to_one() -> None:
    A = torch.tensor([[1.0, -1.0], [0.0, 2.0]])
    # shift by +1: [[2, 0], [1, 3]], total 6
    torch.testing.assert_close(normalize_mixing_matrix(A), torch.tensor([[2.0, 0.0], [1.0, 3.0]]) / 6)
    torch.testing.assert_close(normalize_mixing_matrix(torch.tensor([[1.0, 3.0]])), torch.tensor([[0.25, 0.75]]))
    torch.testing.assert_close(normalize_mixing_matrix(torch.zeros(2, 2)), torch.full((2, 2), 0.25))


def test_exponentiated_gradient_without_ema_is_multiplicative_on_column_sums() -> None:
    A = torch.tensor([[0.1, 0.3], [0.2, 0.4]], dtype=torch.float64)  # column sums 0.3, 0.7
    p_prev = torch.tensor([0.8, 0.2], dtype=torch.float64)
    p, A_bar = exponentiated_gradient(A, p_prev, eta=2.0, ema=None)
    want = np.array([0.8 * np.exp(0.6), 0.2 * np.exp(1.4)])
    np.testing.assert_allclose(p.numpy(), want / want.sum(), rtol=1e-12)
    assert A_bar is A


def test_exponentiated_gradient_with_ema_restarts_from_uniform() -> None:
    A1 = torch.tensor([[0.5, 0.0], [0.5, 0.0]], dtype=torch.float64)
    A2 = torch.tensor([[0.0, 0.5], [0.0, 0.5]], dtype=torch.float64)
    p1, bar1 = exponentiated_gradient(A1, torch.tensor([0.5, 0.5], dtype=torch.float64), eta=1.0, ema=0.1)
    np.testing.assert_allclose(p1.numpy(), np.exp([1.0, 0.0]) / np.exp([1.0, 0.0]).sum())  # first round: A_bar = A
    p2, bar2 = exponentiated_gradient(A2, torch.tensor([0.99, 0.01], dtype=torch.float64), eta=1.0, ema=0.1, A_bar_prev=bar1)
    torch.testing.assert_close(bar2, 0.9 * A2 + 0.1 * A1)
    want = np.exp([0.1, 0.9])  # column sums of A_bar; p_prev plays no part
    np.testing.assert_allclose(p2.numpy(), want / want.sum(), rtol=1e-12)
    with pytest.raises(ValueError, match="ema"):
        exponentiated_gradient(A1, p1, eta=1.0, ema=1.5)


def test_learn_params_plan_is_seeded_permutations() -> None:
    plan = learn_params_plan(3, 4, seed=7, round_index=2)
    assert len(plan) == 12 and all(sorted(plan[i : i + 3]) == [0, 1, 2] for i in range(0, 12, 3))
    assert plan == learn_params_plan(3, 4, seed=7, round_index=2)
    assert {tuple(learn_params_plan(3, 4, seed=7, round_index=r)) for r in range(5)} != {tuple(plan)}


def test_tiny_gpt_is_causal_and_shaped() -> None:
    torch.manual_seed(0)
    model = TinyGPT(vocab_size=10, context=8, d_model=16, n_heads=2).eval()
    x = torch.randint(10, (2, 8))
    x2 = x.clone()
    x2[:, 5:] = (x2[:, 5:] + 1) % 10
    out, out2 = model(x), model(x2)
    assert out.shape == (2, 8, 10)
    torch.testing.assert_close(out[:, :5], out2[:, :5])
    assert not torch.allclose(out[:, 5:], out2[:, 5:])
    with pytest.raises(ValueError, match="context"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_markov_groups_easy_hard_and_redundant() -> None:
    g = torch.Generator().manual_seed(0)
    T = markov_chain(8, "easy", g)
    assert ((T > 0).sum(1) == 2).all() and torch.allclose(T.sum(1), torch.ones(8))
    dm = MarkovMixtureDataModule(vocab=8, context=6, pool_size=50, val_size=4, test_size=4, steps_per_epoch=2)
    dm.setup("fit")
    (x0, y0), (x1, _), (x2, _) = dm.train_groups
    assert (x0[:, 0] == 8).all() and (x1[:, 0] == 9).all() and (x2[:, 0] == 10).all()  # tag tokens
    torch.testing.assert_close(x0[:, 1:], y0[:, :-1])  # y is x shifted by one
    easy = {(int(a), int(b)) for s in x0 for a, b in zip(s[1:-1], s[2:], strict=True)}
    redundant = {(int(a), int(b)) for s in x2 for a, b in zip(s[1:-1], s[2:], strict=True)}
    successors = {a: {b for a2, b in easy | redundant if a2 == a} for a in range(8)}
    assert all(len(v) <= 2 for v in successors.values())  # one shared chain with 2 successors per token


def test_mixture_sampler_follows_proportions_and_is_deterministic() -> None:
    groups = [(torch.full((10, 1), j), torch.full((10, 1), j)) for j in range(3)]
    s = MixtureSampler(groups, batch_size=300, num_batches=2, proportions=[1, 0, 3])
    x, _ = s.batch(5)
    counts = torch.bincount(x.flatten(), minlength=3)
    assert counts[1] == 0 and 40 < counts[0] < 110 and counts.sum() == 300
    torch.testing.assert_close(s.batch(5)[0], x)
    s.mixture_fn = lambda b: torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    assert (s.batch(0)[0] == 1).all() and len(list(iter(s))) == 2
    with pytest.raises(ValueError, match="proportions"):
        MixtureSampler(groups, 4, 2, proportions=[1, -1, 0])
