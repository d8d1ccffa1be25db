"""Greedy BCD against independent references: scipy / scikit-learn optima, naive loops for the
selection rules, Lipschitz constants and block steps worked out by hand, and the Lightning wrapper."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import scipy.optimize
import torch
from lightning.pytorch import Trainer
from sklearn.linear_model import Lasso as SkLasso
from sklearn.linear_model import LogisticRegression

from zoo.bcd import (
    BCDModule,
    BlockCoordinateDescent,
    Lasso,
    LeastSquares,
    Logistic,
    block_indices,
    gs_scores,
    gsd_scores,
    gsh_scores,
    gsl_scores,
    hb_update,
    lb_update,
    make_problem_data,
    partition,
    prox_lb_update,
    reference_solution,
    variable_block,
)
from zoo.datamodules.least_squares import BCDDataModule


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _ls(seed: int = 0, m: int = 60, n: int = 12) -> LeastSquares:
    return LeastSquares(*make_problem_data("least_squares", m, n, 0.5, 4, 0.1, seed))


# ------------------------------------------------------------------ optima vs scipy / scikit-learn
@pytest.mark.parametrize("selection,update,blocks", [("GSL", "Lb", "variable"), ("GS", "Lb", "fixed"), ("GSH", "Hb", "fixed"), ("GSL", "Newton", "variable")])
def test_least_squares_reaches_scipy_lstsq(selection: str, update: str, blocks: str) -> None:
    p = _ls()
    x_ref = scipy.linalg.lstsq(p.a, p.b)[0]
    res = BlockCoordinateDescent(selection, update, blocks, 3).run(p, 20_000, f_star=p.value(x_ref), tol=1e-14)
    assert res.iters_to_tol is not None
    np.testing.assert_allclose(res.x, x_ref, atol=1e-6)


def test_logistic_matches_sklearn_and_scipy() -> None:
    a, y = make_problem_data("logistic", 80, 8, 0.5, 3, 0.5, 1)
    lam = 0.5
    p = Logistic(a, y, lam)
    res = BlockCoordinateDescent("GSL", "Newton", "variable", 3).run(p, 3000)
    # sklearn: C sum_i log(1 + exp(-y_i a_i^T w)) + 1/2 ||w||^2  ==  f / lam with C = 1/lam
    sk = LogisticRegression(C=1 / lam, fit_intercept=False, tol=1e-12, max_iter=10_000).fit(a, y)
    np.testing.assert_allclose(res.x, sk.coef_[0], atol=1e-5)
    sp = scipy.optimize.minimize(p.value, np.zeros(8), jac=p.grad, method="BFGS", options={"gtol": 1e-10})
    np.testing.assert_allclose(res.x, sp.x, atol=1e-5)
    assert abs(p.value(res.x) - reference_solution(p)[1]) < 1e-9
    lb = BlockCoordinateDescent("GSL", "Lb", "fixed", 2).run(p, 20_000)
    np.testing.assert_allclose(lb.x, sk.coef_[0], atol=1e-4)


@pytest.mark.parametrize("selection,blocks", [("GS", "fixed"), ("GSL", "fixed"), ("GSD", "variable"), ("cyclic", "fixed")])
def test_lasso_matches_sklearn(selection: str, blocks: str) -> None:
    a, b = make_problem_data("lasso", 60, 15, 0.5, 4, 0.1, 2)
    lam = 3.0
    p = Lasso(a, b, lam)
    sk = SkLasso(alpha=lam / len(b), fit_intercept=False, tol=1e-14, max_iter=100_000).fit(a, b)
    res = BlockCoordinateDescent(selection, "Lb", blocks, 3).run(p, 20_000)
    np.testing.assert_allclose(res.x, sk.coef_, atol=1e-6)
    assert (res.x == 0).sum() == (sk.coef_ == 0).sum() > 0  # the prox step gives exact zeros
    assert p.value(res.x) <= p.value(sk.coef_) + 1e-9


# ------------------------------------------------------------------ selection rules vs naive loops
def test_rules_pick_what_a_naive_loop_picks() -> None:
    rng = np.random.default_rng(0)
    n = 23
    for trial in range(20):
        g = rng.standard_normal(n) * np.exp(rng.standard_normal(n))
        coord_l = np.exp(rng.standard_normal(n))
        perm, starts = partition(n, 4, seed=trial)
        blocks = [block_indices(perm, starts, j) for j in range(len(starts))]
        assert sorted(np.concatenate(blocks).tolist()) == list(range(n))
        assert max(map(len, blocks)) - min(map(len, blocks)) <= 1
        block_l = np.exp(rng.standard_normal(len(blocks)))
        hs = []
        for blk in blocks:
            m = rng.standard_normal((len(blk), len(blk)))
            hs.append(m @ m.T + np.eye(len(blk)))
        naive = {"gs": [], "gsl": [], "gsd": [], "gsh": []}
        for j, blk in enumerate(blocks):
            naive["gs"].append(sum(g[i] ** 2 for i in blk) ** 0.5)
            naive["gsl"].append(sum(g[i] ** 2 for i in blk) / block_l[j])
            naive["gsd"].append(sum(g[i] ** 2 / coord_l[i] for i in blk))
            naive["gsh"].append(float(g[blk] @ np.linalg.solve(hs[j], g[blk])))
        got = {
            "gs": gs_scores(g, perm, starts),
            "gsl": gsl_scores(g, perm, starts, block_l),
            "gsd": gsd_scores(g, perm, starts, coord_l),
            "gsh": gsh_scores(g, perm, starts, [np.linalg.inv(h) for h in hs]),
        }
        for rule in naive:
            np.testing.assert_allclose(got[rule], naive[rule], rtol=1e-10)
            assert int(np.argmax(got[rule])) == max(range(len(blocks)), key=lambda j: naive[rule][j])
        scores = g * g / coord_l
        assert variable_block(scores, 5).tolist() == sorted(sorted(range(n), key=lambda i: -scores[i])[:5])


def test_solver_selects_the_naive_argmax_each_iteration() -> None:
    p = _ls(3)
    for selection in ("GS", "GSL", "GSD"):
        solver = BlockCoordinateDescent(selection, "Lb", "fixed", 3, seed=1)
        state = solver.init(p)
        for _ in range(25):
            g = p.grad(state.x)
            np.testing.assert_allclose(state.g, g, atol=1e-9)  # the incrementally kept z = A x
            best, best_score = None, -1.0
            for blk in solver.block_idx:
                score = {"GS": np.linalg.norm(g[blk]), "GSL": g[blk] @ g[blk] / np.linalg.eigvalsh(p.a[:, blk].T @ p.a[:, blk])[-1],
                         "GSD": sum(g[i] ** 2 / (p.a[:, i] @ p.a[:, i]) for i in blk)}[selection]
                if score > best_score:
                    best, best_score = blk, score
            solver.step(state)
            assert state.last_block is not None and state.last_block.tolist() == best.tolist()


def test_cyclic_walks_the_partition_and_random_is_seeded() -> None:
    p = _ls()
    solver = BlockCoordinateDescent("cyclic", block_size=4)
    state = solver.init(p)
    for k in range(7):
        solver.step(state)
        assert state.last_block.tolist() == solver.block_idx[k % len(solver.block_idx)].tolist()
    runs = [BlockCoordinateDescent("random", seed=5).run(p, 50).x for _ in range(2)]
    np.testing.assert_array_equal(*runs)


# ------------------------------------------------------------------ Lipschitz constants and steps by hand
def test_lipschitz_constants_by_hand() -> None:
    a = np.array([[1.0, 2.0], [0.0, 1.0], [2.0, 0.0]])
    p = LeastSquares(a, np.zeros(3))
    np.testing.assert_allclose(p.coordinate_lipschitz(), [5.0, 5.0])
    # A^T A = [[5, 2], [2, 5]]: eigenvalues 3 and 7
    assert p.block_lipschitz(np.array([0, 1])) == pytest.approx(7.0)
    lg = Logistic(a, np.array([1.0, 0.0, 1.0]), lam=0.5)
    np.testing.assert_allclose(lg.coordinate_lipschitz(), [5 / 4 + 0.5, 5 / 4 + 0.5])
    assert lg.block_lipschitz(np.array([0, 1])) == pytest.approx(7 / 4 + 0.5)
    # the bound dominates the true Hessian everywhere (sigma(1 - sigma) <= 1/4)
    for x in (np.zeros(2), np.array([3.0, -2.0])):
        gap = lg.block_bound(np.array([0, 1])) - lg.block_hessian(a @ x, x, np.array([0, 1]))
        assert np.linalg.eigvalsh(gap).min() >= -1e-12


def test_block_steps_by_hand() -> None:
    np.testing.assert_allclose(lb_update(np.array([2.0, -4.0]), 4.0), [-0.5, 1.0])
    np.testing.assert_allclose(hb_update(np.array([1.0, 1.0]), np.array([[2.0, 0.0], [0.0, 4.0]])), [-0.5, -0.25])
    # prox: x - g/L = [1 - 3/1, 0.5 - 0] = [-2, 0.5]; threshold lam/L = 1 -> [-1, 0]; minus x
    np.testing.assert_allclose(prox_lb_update(np.array([1.0, 0.5]), np.array([3.0, 0.0]), 1.0, 1.0), [-2.0, -0.5])
    # an Lb step never increases a quadratic (descent lemma); the Hb step minimises it over the block
    p = _ls(4)
    solver = BlockCoordinateDescent("GSL", "Lb")
    state = solver.init(p)
    for _ in range(30):
        before = state.value
        solver.step(state)
        assert state.value <= before + 1e-12
    idx = np.array([0, 3, 5])
    x = np.zeros(p.n)
    d = hb_update(p.grad(x)[idx], p.a[:, idx].T @ p.a[:, idx])
    x[idx] = d
    np.testing.assert_allclose(p.grad(x)[idx], 0, atol=1e-9)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="selection"):
        BlockCoordinateDescent("GSQQ")
    with pytest.raises(ValueError, match="update"):
        BlockCoordinateDescent(update="exact")
    with pytest.raises(ValueError, match="lasso"):
        BlockCoordinateDescent("GS", "Hb").init(Lasso(np.eye(3), np.ones(3), 1.0))
    with pytest.raises(ValueError, match="problem"):
        BCDModule(problem="softmax")


def test_greedy_beats_random_and_cyclic_on_the_claim_problem() -> None:
    p = LeastSquares(*make_problem_data(seed=0))
    f_star = reference_solution(p)[1]
    rules = ("GS", "GSL", "random", "cyclic")
    iters = {rule: BlockCoordinateDescent(rule, "Lb", "fixed", 5).run(p, 5000, f_star=f_star, tol=1e-6).iters_to_tol for rule in rules}
    assert None not in iters.values()
    assert max(iters["GS"], iters["GSL"]) * 1.5 < min(iters["random"], iters["cyclic"])


# ------------------------------------------------------------------ the Lightning wrapper
@pytest.mark.parametrize("problem,lam", [("least_squares", 0.0), ("logistic", 1.0), ("lasso", 5.0)])
def test_module_fits_to_tolerance_with_manual_optimization(problem: str, lam: float, tmp_path) -> None:
    dm = BCDDataModule(problem=problem, n_samples=120, n_features=20, batch_size=50, seed=1)
    model = BCDModule(problem=problem, n_features=20, lam=lam, selection="GSL", blocks="variable", block_size=4, iters_per_step=50, max_iter=20_000, tol=1e-8)
    assert model.automatic_optimization is False
    trainer = Trainer(accelerator="cpu", max_epochs=1000, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=dm)
    m = trainer.callback_metrics
    assert m["train/reached"] == 1 and m["train/suboptimality"] <= 1e-8
    assert m["train/iters_to_tol"] == m["train/iterations"] <= 20_000
    x_ref, _ = reference_solution(model._problem)
    np.testing.assert_allclose(model.weight.detach().numpy(), x_ref, atol=1e-3)
    trainer.test(model, datamodule=dm, verbose=False)
    assert ("test/accuracy" if problem == "logistic" else "test/mse") in trainer.callback_metrics
