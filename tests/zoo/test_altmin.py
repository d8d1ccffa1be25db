"""Robust AltMin: the normal equations against naive loops, CG against the exact solve, the sketch against
an explicit CountSketch, the flop count by hand, convergence on small problems, the Lightning wrapper."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer

from zoo.altmin import (
    ExactAltMin,
    RobustAltMinCompletion,
    altmin_complete,
    altmin_round,
    cg_solve,
    exact_solve,
    normal_equations,
    normal_matvec,
    relative_error,
    round_flops,
    sketch_preconditioner,
    spectral_init,
)
from zoo.datamodules import CompletionDataModule
from zoo.datamodules.completion import make_completion_problem


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _problem(m: int = 30, n: int = 25, k: int = 3, p: float = 0.5, seed: int = 0) -> tuple:
    a, b, mask = make_completion_problem(m, n, k, p, seed)
    idx = mask.nonzero()
    rows, cols = idx[:, 0], idx[:, 1]
    return a, b, rows, cols, (a[rows] * b[cols]).sum(1)


def test_normal_equations_match_a_loop_over_columns() -> None:
    a, b, rows, cols, vals = _problem()
    u = torch.randn(30, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    gram, rhs = normal_equations(u, rows, cols, vals, 25)
    for j in range(25):
        sel = cols == j
        x = u[rows[sel]]
        torch.testing.assert_close(gram[j], x.T @ x)
        torch.testing.assert_close(rhs[j], x.T @ vals[sel])
    v = torch.randn(25, 3, dtype=torch.float64)
    pattern = torch.sparse_coo_tensor(torch.stack([cols, rows]), torch.ones_like(vals), (25, 30), check_invariants=False).coalesce().to_sparse_csr()
    torch.testing.assert_close(normal_matvec(pattern, u, v), torch.einsum("jab,jb->ja", gram, v))


def test_exact_solve_is_each_columns_least_squares() -> None:
    a, b, rows, cols, vals = _problem()
    u = torch.randn(30, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    v = exact_solve(u, rows, cols, vals, 25, ridge=0.0)
    for j in range(25):
        sel = cols == j
        ref = torch.linalg.lstsq(u[rows[sel]], vals[sel][:, None]).solution[:, 0]
        torch.testing.assert_close(v[j], ref, rtol=1e-8, atol=1e-10)


def test_cg_with_k_iterations_is_exact_and_fewer_are_not() -> None:
    a, b, rows, cols, vals = _problem(k=3)
    u = torch.randn(30, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    exact = exact_solve(u, rows, cols, vals, 25, ridge=0.0)
    v0 = torch.zeros(25, 3, dtype=torch.float64)
    torch.testing.assert_close(cg_solve(u, rows, cols, vals, v0, iters=3), exact, rtol=1e-7, atol=1e-9)
    assert (cg_solve(u, rows, cols, vals, v0, iters=1) - exact).norm() > 1e-3 * exact.norm()
    # preconditioned: also exact after k iterations, and exact from any warm start
    r = sketch_preconditioner(u, rows, cols, 25, 6, torch.Generator().manual_seed(0))
    torch.testing.assert_close(cg_solve(u, rows, cols, vals, torch.randn_like(v0), iters=3, r_factor=r), exact, rtol=1e-7, atol=1e-9)
    # a warm start at the solution stays there with zero iterations
    torch.testing.assert_close(cg_solve(u, rows, cols, vals, exact, iters=0), exact)


def test_sketch_preconditioner_is_the_qr_of_an_explicit_countsketch() -> None:
    a, b, rows, cols, vals = _problem(k=3)
    u = torch.randn(30, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    s = 6
    r = sketch_preconditioner(u, rows, cols, 25, s, torch.Generator().manual_seed(7), ridge=0.0)
    gen = torch.Generator().manual_seed(7)  # the same draws, rebuilt by hand
    bucket = torch.randint(0, s, (len(rows),), generator=gen)
    sign = torch.randint(0, 2, (len(rows),), generator=gen).double() * 2 - 1
    for j in range(25):
        sk = torch.zeros(s, 3, dtype=torch.float64)
        for t in (cols == j).nonzero()[:, 0].tolist():
            sk[bucket[t]] += sign[t] * u[rows[t]]
        torch.testing.assert_close(r[j].T @ r[j], sk.T @ sk, rtol=1e-9, atol=1e-10)
        assert torch.allclose(r[j], r[j].triu())


def test_spectral_init_spans_the_column_space_when_fully_observed() -> None:
    a, b, rows, cols, vals = _problem(m=40, n=30, k=3, p=1.0)
    u = spectral_init(rows, cols, vals, 40, 30, 3, 1.0, clip_rows=False)
    torch.testing.assert_close(u.T @ u, torch.eye(3, dtype=torch.float64))
    assert float((a - u @ (u.T @ a)).norm() / a.norm()) < 1e-10


def test_spectral_init_clips_a_coherent_row() -> None:
    a, b, rows, cols, vals = _problem(m=40, n=30, k=1, p=1.0)
    vals = torch.where(rows == 0, vals * 1e3, vals)  # row 0 dominates the top singular vector
    plain = spectral_init(rows, cols, vals, 40, 30, 1, 1.0, clip_rows=False)
    clipped = spectral_init(rows, cols, vals, 40, 30, 1, 1.0, clip_rows=True)
    assert plain[0].abs().item() > 0.9
    norms = clipped.norm(dim=1)
    assert norms[0] <= 2.0 * norms.median() * 1.0001  # the clip at 2 x the median row norm survives the QR's rescaling


def test_round_is_the_two_exact_least_squares_steps() -> None:
    a, b, rows, cols, vals = _problem(m=30, n=25, k=2, p=0.6)
    u = torch.linalg.qr(torch.randn(30, 2, dtype=torch.float64))[0]
    v = torch.randn(25, 2, dtype=torch.float64)
    q_u, v_new = altmin_round(u, v, (rows, cols, vals), solver="exact", ridge=0.0)
    v_raw = exact_solve(u, rows, cols, vals, 25, ridge=0.0)
    q_v = torch.linalg.qr(v_raw)[0]
    u_raw = exact_solve(q_v, cols, rows, vals, 30, ridge=0.0)
    torch.testing.assert_close(q_u @ v_new.T, u_raw @ q_v.T)
    torch.testing.assert_close(q_u.T @ q_u, torch.eye(2, dtype=torch.float64))
    # CG with k iterations per half-step is the same round
    q_u2, v_new2 = altmin_round(u, v, (rows, cols, vals), solver="cg", cg_iters=2)
    torch.testing.assert_close(q_u2 @ v_new2.T, u_raw @ q_v.T, rtol=1e-7, atol=1e-9)


def test_round_flops_by_hand() -> None:
    # nnz 100, m = n = 10, k = 2: exact half = Gram 2*100*4 + rhs 2*100*2 + 10 * (8/3 + 8); QRs and carries 4 * 20 * 4
    assert round_flops("exact", 100, 10, 10, 2) == pytest.approx(2 * (800 + 400 + 10 * (8 / 3 + 8)) + 320)
    # CG, 4 iterations: rhs 400 + 5 matvecs of 4*100*2 + 4 * 10 * 10 * 2 vector ops
    assert round_flops("cg", 100, 10, 10, 2, cg_iters=4) == pytest.approx(2 * (400 + 5 * 800 + 800) + 320)
    # CG-4 below exact from k = 50 on at |Omega| = 3e5, 1000 x 1000
    assert round_flops("cg", 300_000, 1000, 1000, 50) < round_flops("exact", 300_000, 1000, 1000, 50) / 3
    with pytest.raises(ValueError, match="solver must be one of"):
        round_flops("lsqr", 1, 1, 1, 1)


def test_warm_inexact_altmin_tracks_exact_and_cold_start_stalls() -> None:
    a, b, rows, cols, vals = _problem(m=80, n=70, k=3, p=0.3, seed=5)
    errs = {}
    for name, solver, warm in (("exact", "exact", True), ("cg", "cg", True), ("sketch", "sketch_cg", True), ("cold", "cg", False)):
        errs[name] = altmin_complete(rows, cols, vals, 80, 70, 3, rounds=25, solver=solver, cg_iters=2, warm_start=warm, truth=(a, b))[2]
    assert errs["exact"][-1] < 1e-8
    assert errs["cg"][-1] < 1e-7 and errs["sketch"][-1] < 1e-7
    assert errs["cold"][-1] > 100 * errs["cg"][-1]


def test_datamodule_observed_and_held_out_entries() -> None:
    dm = CompletionDataModule(m=20, n=15, rank=2, p_obs=0.3, n_test=50, batch_size=16, seed=3)
    xs, ys = zip(*dm.train_dataloader())
    x, y = torch.cat(xs), torch.cat(ys)
    a, b = dm.factors
    torch.testing.assert_close(y, (a[x[:, 0]] * b[x[:, 1]]).sum(1))
    xt = torch.cat([batch[0] for batch in dm.test_dataloader()])
    assert len(xt) == 50 and not set(map(tuple, xt.tolist())) & set(map(tuple, x.tolist()))
    a2, b2, mask = make_completion_problem(20, 15, 2, 0.3, 3)
    assert int(mask.sum()) == len(x) and torch.equal(a, a2)


@pytest.mark.parametrize("cls, kwargs", [(RobustAltMinCompletion, {}), (ExactAltMin, {}), (RobustAltMinCompletion, {"solver": "sketch_cg"})])
def test_module_fits_and_predicts(cls: type, kwargs: dict) -> None:
    dm = CompletionDataModule(m=60, n=50, rank=2, p_obs=0.4, n_test=100, seed=1)
    model = cls(m=60, n=50, rank=2, iters=15, seed=1, **kwargs)
    trainer = Trainer(max_epochs=100, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, dm)
    assert model.rounds == 15
    metrics = trainer.callback_metrics
    assert float(metrics["train/rel_error"]) < 1e-6
    assert float(metrics["train/flops_per_round"]) == pytest.approx(round_flops(model.hparams.solver, len(dm.train), 60, 50, 2, 4, 4))
    x, y = next(iter(dm.test_dataloader()))
    assert float((model(x) - y).norm() / y.norm()) < 1e-5
    assert relative_error(model.u, model.v, *dm.factors) == pytest.approx(float(metrics["train/rel_error"]))


def test_module_sample_split_and_bad_shapes() -> None:
    dm = CompletionDataModule(m=40, n=30, rank=2, p_obs=0.9, seed=2)
    model = RobustAltMinCompletion(m=40, n=30, rank=2, iters=3, sample_split=True, seed=2)
    trainer = Trainer(max_epochs=10, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, dm)
    assert model.rounds == 3 and sum(len(p[2]) for p in model._parts) == len(dm.train)
    with pytest.raises(ValueError, match="solver must be one of"):
        RobustAltMinCompletion(solver="lsqr")
    small = RobustAltMinCompletion(m=10, n=10, rank=2)
    with pytest.raises(ValueError, match="must index an 10 x 10 matrix"):
        Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False).fit(small, dm)
