"""learning-to-relax: SOR counts against naive loops, Tsallis-INF against its closed form, the module's metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import scipy.sparse as sp
import torch
from lightning.pytorch import Trainer

from tests.conftest import resume_mid_pass
from zoo.datamodules import LinearSystemsDataModule
from zoo.datamodules.linear_systems import laplacian_2d
from zoo.learning_to_relax import (
    LearningToRelaxModule,
    LinearSystem,
    TsallisINF,
    TsallisINFCB,
    context_bin,
    omega_grid,
    omega_opt,
    sor_iteration_table,
    sor_iterations,
    tsallis_inf_normaliser,
    tsallis_inf_probabilities,
    tsallis_inf_update,
)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _system(n: int = 16, seed: int = 0) -> tuple[sp.csr_matrix, np.ndarray]:
    """A random sparse SPD matrix (diagonally dominant, irregular pattern) and a right-hand side."""
    rng = np.random.default_rng(seed)
    off = sp.random(n, n, density=0.2, random_state=seed, data_rvs=lambda k: -rng.random(k))
    off = off + off.T
    off.setdiag(0)
    diag = np.asarray(abs(off).sum(1)).ravel() + 0.05 + rng.random(n)
    return sp.csr_matrix(off + sp.diags(diag)), rng.standard_normal(n)


def _naive_sor(A: sp.csr_matrix, b: np.ndarray, omega: float, tol: float, max_iter: int) -> int:
    """Row-by-row SOR on the dense matrix: x_i <- (1 - w) x_i + w (b_i - sum_{j != i} a_ij x_j) / a_ii."""
    dense, x = A.toarray(), np.zeros(len(b))
    for k in range(1, max_iter + 1):
        for i in range(len(b)):
            s = b[i] - dense[i] @ x + dense[i, i] * x[i]
            x[i] = (1 - omega) * x[i] + omega * s / dense[i, i]
        if np.linalg.norm(b - dense @ x) / np.linalg.norm(b) < tol:
            return k
    return max_iter


def _splitting_sor(A: sp.csr_matrix, b: np.ndarray, omega: float, tol: float, max_iter: int) -> int:
    """The official sor.m form: x <- x + (D / w + L)^{-1} (b - A x), with a dense triangular solve."""
    dense = A.toarray()
    M, x = np.diag(np.diag(dense)) / omega + np.tril(dense, -1), np.zeros(len(b))
    for k in range(1, max_iter + 1):
        x = x + scipy.linalg.solve_triangular(M, b - dense @ x, lower=True)
        if np.linalg.norm(b - dense @ x) / np.linalg.norm(b) < tol:
            return k
    return max_iter


@pytest.mark.parametrize("omega", [0.8, 1.0, 1.3, 1.7])
def test_sor_iterations_match_a_naive_row_loop_and_the_splitting_form(omega: float) -> None:
    for seed in range(3):
        A, b = _system(seed=seed)
        count = sor_iterations(A, b, omega, tol=1e-8)
        assert abs(count - _naive_sor(A, b, omega, 1e-8, 10_000)) <= 1
        assert abs(count - _splitting_sor(A, b, omega, 1e-8, 10_000)) <= 1
        assert count > 3


def test_omega_one_is_gauss_seidel_and_sor_beats_it_on_the_laplacian() -> None:
    A, b = sp.csr_matrix(laplacian_2d(6)), np.random.default_rng(0).standard_normal(36)
    dense, x, gs = A.toarray(), np.zeros(36), 0
    lower, upper = np.tril(dense), np.triu(dense, 1)
    while np.linalg.norm(b - dense @ x) / np.linalg.norm(b) >= 1e-8:  # (D + L) x_{k+1} = b - U x_k
        x, gs = scipy.linalg.solve_triangular(lower, b - upper @ x, lower=True), gs + 1
    assert abs(sor_iterations(A, b, 1.0) - gs) <= 1
    assert sor_iterations(A, b, omega_opt(A)) < gs / 3


def test_the_batched_table_equals_one_system_at_a_time_and_the_cap_holds() -> None:
    systems = [LinearSystem(*_system(n=10 + s, seed=s)) for s in range(4)]  # different sizes in one block matrix
    grid = [0.9, 1.0, 1.45]
    table = sor_iteration_table(systems, grid)
    assert table.shape == (4, 3)
    for t, s in enumerate(systems):
        assert [sor_iterations(s.A, s.b, w) for w in grid] == table[t].tolist()
    assert sor_iterations(systems[0].A, systems[0].b, 1.0, tol=1e-12, max_iter=3) == 3
    assert sor_iterations(systems[0].A, np.zeros(10), 1.0) == 0


def test_omega_opt_matches_the_laplacian_closed_form() -> None:
    beta = math.cos(math.pi / 9)  # Jacobi radius of the 8 x 8 interior Laplacian
    assert omega_opt(laplacian_2d(8)) == pytest.approx(2 / (1 + math.sqrt(1 - beta**2)), rel=1e-10)


def _bisection_root(losses: torch.Tensor, eta: float) -> float:
    lo, hi = float(losses.min()) - 10 * math.sqrt(len(losses)) / eta, float(losses.min()) - 1e-12
    for _ in range(200):
        mid = (lo + hi) / 2
        if float((4 * (eta * (losses - mid)) ** -2).sum()) > 1:
            hi = mid
        else:
            lo = mid
    return (lo + hi) / 2


def test_tsallis_inf_probabilities_match_the_closed_form() -> None:
    # round 1, equal losses: 2 * 4 / (2 x)^2 = 1  ->  x = -sqrt(2), p = (1/2, 1/2)
    assert tsallis_inf_normaliser(torch.zeros(2, dtype=torch.float64), 2.0) == pytest.approx(-math.sqrt(2), abs=1e-12)
    assert torch.allclose(tsallis_inf_probabilities(torch.zeros(2, dtype=torch.float64), 1.0, 1), torch.tensor([0.5, 0.5], dtype=torch.float64))
    # round 4 (eta = 1), k = (0, 6, 30) at scale 2: losses (0, 3, 15); the normaliser solved by bisection
    k = torch.tensor([0.0, 6.0, 30.0], dtype=torch.float64)
    x = _bisection_root(k / 2, 1.0)
    p = tsallis_inf_probabilities(k, 2.0, 4)
    assert torch.allclose(p, 4 * (k / 2 - x) ** -2, atol=1e-10) and float(p.sum()) == pytest.approx(1.0)
    assert p[0] > p[1] > p[2]
    # late rounds with estimates growing like t (the official start x = -1 jumps past the pole here)
    k = torch.tensor([900.0, 1000.0, 1200.0, 5000.0], dtype=torch.float64)
    x = _bisection_root(k, 2 / math.sqrt(1000))
    assert torch.allclose(tsallis_inf_probabilities(k, 1.0, 1000), 4 * ((2 / math.sqrt(1000)) * (k - x)) ** -2, atol=1e-9)


def test_update_is_importance_weighted_on_the_played_arm_only() -> None:
    k = torch.zeros(3, dtype=torch.float64)
    tsallis_inf_update(k, 1, 0.25, 11.0)
    assert k.tolist() == [0.0, 40.0, 0.0]


def test_context_bins_are_the_nearest_centre() -> None:
    # centres -0.07, 0.09, 0.25, 0.41, 0.57
    assert [context_bin(c, 5, -0.15, 0.65) for c in (-0.15, 0.0, 0.2, 0.34, 0.5, 0.65)] == [0, 0, 2, 3, 4, 4]


def test_tsallis_inf_finds_the_best_arm_and_resumes_from_its_state() -> None:
    costs = [30.0, 12.0, 5.0, 20.0]
    learner = TsallisINF(omega_grid(1.0, 1.6, 4), cost_fn=lambda s, w: costs[round((w - 1.0) / 0.2)], seed=3)
    system = LinearSystem(sp.identity(2, format="csr"), np.ones(2))
    for _ in range(400):
        learner.serve(system)
    assert float(learner.probabilities()[2]) > 0.9
    saved = learner.state_dict()
    after = [learner.serve(system) for _ in range(20)]
    resumed = TsallisINF(omega_grid(1.0, 1.6, 4), cost_fn=learner.cost_fn, seed=0)
    resumed.load_state_dict(saved)
    assert [resumed.serve(system) for _ in range(20)] == after
    assert torch.equal(resumed.state["k"], learner.state["k"])


def test_the_contextual_learner_keeps_one_learner_per_bin() -> None:
    learner = TsallisINFCB(omega_grid(1.0, 1.6, 4), cost_fn=lambda s, w: 2.0, n_bins=5)
    for c in (-0.1, -0.1, 0.6):
        learner.serve(LinearSystem(sp.identity(2, format="csr"), np.ones(2), context=c))
    assert learner.state["rounds"].tolist() == [2.0, 0.0, 0.0, 0.0, 1.0]


def test_the_family_is_seeded_and_as_specified() -> None:
    a, b = LinearSystemsDataModule(side=5, systems=30, seed=4), LinearSystemsDataModule(side=5, systems=30, seed=4)
    sa, sb = a.sequence("train"), b.sequence("train")
    assert all(np.array_equal(x.b, y.b) and x.context == y.context for x, y in zip(sa, sb))
    base = laplacian_2d(5).toarray()
    for s in sa:
        assert -0.15 <= s.context <= 0.45 and np.linalg.norm(s.b) <= 5.0
        assert np.allclose(s.A.toarray(), base + s.context * np.eye(25))
    assert base[0, :7].tolist() == [4, -1, 0, 0, 0, -1, 0]  # delsq(numgrid('S', 7)): grid neighbours 1 and side away


def test_the_module_logs_true_totals_against_gauss_seidel_and_the_best_fixed_omega(tmp_path) -> None:
    data = LinearSystemsDataModule(side=4, systems=40, test_systems=10, chunk=16, seed=1)
    model = LearningToRelaxModule(grid_size=5, omega_high=1.8, seed=1)
    trainer = Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=data)
    m = trainer.callback_metrics
    systems = data.sequence("train")
    table = np.array([[sor_iterations(s.A, s.b, w) for w in model.grid] for s in systems])
    paid = [c for _, _, c in model.algorithm.history]
    assert len(paid) == 40 and float(m["train/total"]) == sum(paid) == model.cumulative_cost
    assert float(m["train/gauss_seidel"]) == table[:, 0].sum()
    assert float(m["train/best_fixed"]) == table.sum(0).min()
    assert float(m["train/last"]) == sum(paid[-8:]) and float(m["train/best_fixed_last"]) == table[-8:].sum(0).min()
    for (_, arm, cost), s in zip(model.algorithm.history, systems):
        assert cost == table[systems.index(s), arm]  # the learner paid the real count of the omega it chose
    assert float(model.rounds.sum()) == 40  # the learner's state is in the module's buffers
    test = trainer.test(model, datamodule=data, verbose=False)[0]
    assert test["test/ratio"] == pytest.approx(test["test/cost"] / test["test/benchmark"])


def test_a_run_resumed_mid_sequence_equals_an_uninterrupted_one(tmp_path) -> None:
    runs = resume_mid_pass(
        tmp_path,
        lambda: LearningToRelaxModule(grid_size=4, omega_high=1.6, seed=2),
        lambda: LinearSystemsDataModule(side=4, systems=30, chunk=10, seed=2),
        crash_batch=1,
    )
    full, resumed = runs.full, runs.resumed
    assert resumed.algorithm.history == full.algorithm.history and resumed.cumulative_cost == full.cumulative_cost
    assert torch.equal(resumed.k, full.k) and torch.equal(resumed.algorithm.state["k"], resumed.k)
