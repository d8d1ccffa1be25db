"""fair-one-sided: Exp2 against a hand-computed update, unbiased estimates, the panel rule, FTPL and the fair LP against brute force."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from scipy.optimize import linprog

from tests.conftest import resume_mid_pass
from zoo.datamodules import FairRoundsDataModule
from zoo.fair_one_sided import (
    AuditorPanel,
    ContextSemiBanditFTPL,
    Exp2SemiBandit,
    FairOneSidedModule,
    FairRound,
    best_fair_policy,
    exp2_policy,
    geometric_resampling,
    one_sided_losses,
    panel_reports,
    panel_tolerance,
    perturbed_leaders,
    predict_all,
    round_pairs,
    semi_bandit_estimate,
    separator_set,
    threshold_class,
)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def test_error_decomposes_into_a_constant_and_the_predicted_one_coordinates() -> None:
    y = np.array([1.0, 0.0, 1.0, 0.0])
    for action in itertools.product([0.0, 1.0], repeat=4):
        a = np.array(action)
        assert np.abs(a - y).sum() == y.sum() + a @ one_sided_losses(y, [], 0.0)
    # a reported pair (a favoured = 0, b = 3) adds C (h(x_0) - h(x_3))
    extra = one_sided_losses(y, [(0, 3)], 2.5) - one_sided_losses(y, [], 0.0)
    assert extra.tolist() == [2.5, 0.0, 0.0, -2.5]


def test_exp2_update_matches_a_hand_computed_round() -> None:
    # three hypotheses on two individuals: h0 = (1, 0), h1 = (1, 1), h2 = (0, 1)
    preds = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    learner = Exp2SemiBandit(1.0, AuditorPanel([1.0], 0.1, 1.0), np.zeros((3, 2)), np.zeros(3), seed=0, eta=0.5, gamma=0.3)
    learner.cumulative = np.zeros(3)
    p = learner.policy()
    assert np.allclose(p, [1 / 3] * 3)
    q = p @ preds  # [2/3, 2/3]
    # h1 played (both predicted 1), labels y = (1, 0) both seen; no reported pair
    learner.learn(preds, np.array([1.0, 0.0]), np.array([1.0, 1.0]), [], q)
    # estimates: (1 - 2*1) / (2/3) = -1.5 and (1 - 0) / (2/3) = 1.5; L_hat = (-1.5, 0, 1.5)
    assert np.allclose(learner.cumulative, [-1.5, 0.0, 1.5])
    z = [math.exp(0.75), 1.0, math.exp(-0.75)]
    expected = [0.7 * v / sum(z) + 0.1 for v in z]
    assert np.allclose(learner.policy(), expected)
    # the unseen label of a coordinate predicted 0 never enters the update
    a, b = (Exp2SemiBandit(1.0, AuditorPanel([1.0]), np.zeros((3, 2)), np.zeros(3), 0) for _ in range(2))
    a.learn(preds, np.array([1.0, 0.0]), np.array([1.0, 0.0]), [], q)
    b.learn(preds, np.array([1.0, 1.0]), np.array([1.0, 0.0]), [], q)
    assert np.array_equal(a.cumulative, b.cumulative)


def test_importance_weighted_estimates_are_exactly_unbiased() -> None:
    rng = np.random.default_rng(0)
    preds = rng.integers(0, 2, size=(6, 4)).astype(float)
    preds[0] = 1.0  # every coordinate has positive probability of being predicted 1
    p = exp2_policy(rng.standard_normal(6), 0.7, 0.2)
    q = p @ preds
    loss = one_sided_losses(np.array([1.0, 0.0, 0.0, 1.0]), [(1, 2)], 3.0)
    mean_coord = sum(p[h] * semi_bandit_estimate(loss, preds[h], 1 / q) for h in range(6))
    assert np.allclose(mean_coord, loss)
    mean_per_h = sum(p[h] * (preds @ semi_bandit_estimate(loss, preds[h], 1 / q)) for h in range(6))
    assert np.allclose(mean_per_h, preds @ loss)


def test_geometric_resampling_counts_the_first_draw_predicting_one() -> None:
    draws = np.array([[0, 1, 0], [1, 1, 0], [0, 0, 0], [1, 0, 0]], dtype=float)
    assert geometric_resampling(draws).tolist() == [2.0, 1.0, 4.0]  # the third never hits: capped at M = 4


def test_panel_rule_on_hand_cases_and_against_a_vote_count() -> None:
    x = np.array([[0.0, 0.0], [0.2, 0.0], [3.0, 0.0]])
    # scales 1, 2, 3 and quorum 1/2: two votes needed, so the bound is 2 d + alpha
    tol = panel_tolerance(x, [3.0, 1.0, 2.0], 0.1, 0.5)
    assert tol[0, 1] == pytest.approx(0.5) and tol[0, 2] == pytest.approx(6.1)
    assert panel_reports(np.array([0.3, 0.9, 0.0]), tol) == [(1, 0)]  # gap 0.6 > 0.5, the favoured first
    assert panel_reports(np.array([0.3, 0.75, 0.0]), tol) == []  # gap 0.45 passes
    panel = AuditorPanel([0.5, 1.0, 2.0, 4.0, 8.0], 0.05, 0.5)
    rng = np.random.default_rng(1)
    for _ in range(50):
        x, q = rng.standard_normal((5, 2)) * 0.3, rng.random(5)
        brute = []
        for i, j in itertools.combinations(range(5), 2):
            d = np.linalg.norm(x[i] - x[j])
            votes = sum(abs(q[i] - q[j]) > s * d + 0.05 for s in panel.scales)
            if votes >= 3:
                brute.append((i, j) if q[i] >= q[j] else (j, i))
        assert panel.report(x, q) == brute


def test_ftpl_leader_is_the_brute_force_argmin_with_fake_examples() -> None:
    rng = np.random.default_rng(2)
    w, b = threshold_class(4, 3, 1.0)
    sep = separator_set(w, b, 10, 0)
    assert len({row.tobytes() for row in predict_all(w, b, sep)}) == len(b)  # separates H
    learner = ContextSemiBanditFTPL(1.0, AuditorPanel([1.0]), w, b, 0, sep, noise_scale=2.0, resamples=8)
    history = []
    for _ in range(6):
        r = FairRound(rng.standard_normal((3, 2)), rng.integers(0, 2, 3).astype(float))
        learner.serve(r)
        history.append(r)
    noise = rng.laplace(0, 2.0, size=(5, len(sep)))
    leaders = perturbed_leaders(learner.cumulative, learner.separator_preds, noise)
    for m in range(5):
        scores = [learner.cumulative[h] + sum(float(w[h] @ s >= b[h]) * e for s, e in zip(sep, noise[m])) for h in range(len(b))]
        assert leaders[m] == int(np.argmin(scores))


def test_ftpl_estimates_are_its_played_semi_bandit_feedback() -> None:
    # with one hypothesis always predicting 1, geometric resampling gives K = 1: the estimate is the loss itself
    w, b = np.array([[1.0, 0.0]]), np.array([-100.0])
    learner = ContextSemiBanditFTPL(0.0, AuditorPanel([1.0]), w, b, 0, np.zeros((1, 2)), 1.0, 4)
    learner.serve(FairRound(np.zeros((3, 2)), np.array([1.0, 0.0, 1.0])))
    assert learner.cumulative.tolist() == [-1.0]


def test_best_fair_policy_equals_the_full_lp_and_passes_the_panel() -> None:
    rng = np.random.default_rng(3)
    w, b = threshold_class(6, 3, 1.0)
    rounds = [FairRound(rng.standard_normal((4, 2)), rng.integers(0, 2, 4).astype(float)) for _ in range(25)]
    scales, alpha, quorum = [0.2, 0.5, 1.0], 0.05, 0.5
    d, tau, errors = round_pairs(rounds, w, b, scales, alpha, quorum)
    brute_errors = np.array([sum(np.abs(predict_all(w, b, r.x)[h] - r.y).sum() for r in rounds) for h in range(len(b))])
    assert np.array_equal(errors, brute_errors)
    value, p = best_fair_policy(errors, d, tau, batch=3)
    n = len(b)
    full = linprog(errors, A_ub=np.concatenate([d, -d]), b_ub=np.concatenate([tau, tau]), A_eq=np.ones((1, n)), b_eq=[1.0], bounds=(0, None), method="highs")
    assert value == pytest.approx(full.fun, abs=1e-6)
    panel = AuditorPanel(scales, alpha, quorum)
    for r in rounds:  # no pair of any round is reported against the fair policy (up to the LP's tolerance)
        q, tol = p @ predict_all(w, b, r.x), panel.tolerance(r.x)
        assert all(abs(q[i] - q[j]) <= tol[i, j] + 1e-7 for i, j in itertools.combinations(range(4), 2))
    assert panel.report(rounds[0].x, predict_all(w, b, rounds[0].x)[int(errors.argmin())]) is not None
    assert value >= errors.min() - 1e-9  # fairness costs accuracy, never gains it


def test_the_rounds_are_seeded_and_as_specified() -> None:
    a, b = FairRoundsDataModule(rounds=20, k=4, seed=5), FairRoundsDataModule(rounds=20, k=4, seed=5)
    ra, rb = a.sequence("train"), b.sequence("train")
    assert len(ra) == 20 and ra[0].x.shape == (4, 2)
    assert all(np.array_equal(u.x, v.x) and np.array_equal(u.y, v.y) for u, v in zip(ra, rb))
    big = FairRoundsDataModule(rounds=4000, noise=0.0, seed=1).sequence("train")
    x, y = np.concatenate([r.x for r in big]), np.concatenate([r.y for r in big])
    assert np.array_equal(y, (x[:, 0] + 0.5 * x[:, 1] > 0).astype(float))


def test_the_module_logs_regret_against_the_benchmarks(tmp_path) -> None:
    data = FairRoundsDataModule(rounds=200, test_rounds=50, chunk=64, seed=1)
    model = FairOneSidedModule(learner="exp2", C=1.0, eta=0.1, n_directions=8, n_offsets=4, scales=[0.1, 0.2, 0.45], alpha=0.05, seed=1)
    trainer = Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=data)
    m = trainer.callback_metrics
    rounds, hist = data.sequence("train"), np.array(model.algorithm.history)
    p = model.panel
    d, tau, errors = round_pairs(rounds, model.w, model.b, p.scales, p.alpha, p.quorum)
    fair, _ = best_fair_policy(errors, d, tau)
    assert float(m["train/benchmark_error"]) == pytest.approx(fair) and float(m["train/best_h_error"]) == errors.min()
    assert float(m["train/regret"]) == pytest.approx(hist[:, 0].sum() + hist[:, 2].sum() - fair)
    assert float(m["train/violations"]) == hist[:, 2].sum() and float(m["train/sampled_error"]) + hist[:, 2].sum() == pytest.approx(model.cumulative_cost)
    assert float(m["train/error_regret"]) == pytest.approx(hist[:, 0].sum() - errors.min())
    assert torch.equal(model.cumulative, torch.from_numpy(model.algorithm.cumulative))  # the learner's state is the buffer
    policy = exp2_policy(model.cumulative.numpy(), 0.1, 0.05)
    assert torch.allclose(model(rounds[0]), torch.from_numpy(policy @ predict_all(model.w, model.b, rounds[0].x)))
    test = trainer.test(model, datamodule=data, verbose=False)[0]
    assert test["test/ratio"] == pytest.approx(test["test/cost"] / test["test/benchmark"])


@pytest.mark.parametrize("learner", ["exp2", "ftpl"])
def test_a_run_resumed_mid_stream_equals_an_uninterrupted_one(tmp_path, learner: str) -> None:
    runs = resume_mid_pass(
        tmp_path,
        lambda: FairOneSidedModule(learner=learner, n_directions=6, n_offsets=3, separator_size=10, resamples=4, seed=2),
        lambda: FairRoundsDataModule(rounds=60, chunk=20, seed=2),
        crash_batch=1,
    )
    full, resumed = runs.full, runs.resumed
    assert resumed.algorithm.history == full.algorithm.history and resumed.cumulative_cost == full.cumulative_cost
    assert torch.equal(resumed.cumulative, full.cumulative)
