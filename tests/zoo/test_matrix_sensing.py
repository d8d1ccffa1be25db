"""Matrix sensing (arXiv 2310.01769) against naive loops, autograd and closed forms."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer

from zoo.callbacks import OneStepRebalance
from zoo.datamodules import SensingDataModule
from zoo.datamodules.sensing import sensing_problem
from zoo.matrix_sensing import (
    MatrixSensingModule,
    asymmetric_gradients,
    factorized_gd,
    imbalance,
    rebalance,
    sense,
    sensing_loss,
    symmetric_gradient,
)

QUIET = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_sense_is_the_frobenius_inner_product_with_each_measurement_matrix() -> None:
    a, m = _rand(7, 4 * 3), _rand(4, 3, seed=1)
    naive = torch.stack([(a[i].reshape(4, 3) * m).sum() for i in range(7)])  # <A_i, M> = sum_jk A_i[j, k] M[j, k]
    torch.testing.assert_close(sense(a, m), naive)


def test_closed_form_gradients_match_autograd() -> None:
    a, y = _rand(30, 5 * 4), _rand(30, seed=1)
    f, g = _rand(5, 3, seed=2).requires_grad_(), _rand(4, 3, seed=3).requires_grad_()
    sensing_loss(a, y, f, g).backward()
    grad_f, grad_g = asymmetric_gradients(a, y, f.detach(), g.detach())
    torch.testing.assert_close(grad_f, f.grad)
    torch.testing.assert_close(grad_g, g.grad)
    x = _rand(5, 3, seed=4).requires_grad_()
    b = _rand(30, 25, seed=5)
    sensing_loss(b, y, x, x).backward()
    torch.testing.assert_close(symmetric_gradient(b, y, x.detach()), x.grad)


def test_sensing_problem_is_rank_r_unit_spectral_norm_and_noiseless() -> None:
    a, y, truth = sensing_problem(8, 8, 2, 100, psd=True, seed=3)
    assert torch.linalg.matrix_rank(truth) == 2 and torch.allclose(truth, truth.T)
    assert torch.linalg.eigvalsh(truth).min() > -1e-12  # PSD: X X^T can fit it
    assert abs(float(torch.linalg.matrix_norm(truth, ord=2)) - 1.0) < 1e-12
    torch.testing.assert_close(y, a @ truth.reshape(-1))
    a2, _, truth2 = sensing_problem(8, 6, 3, 100, psd=False, seed=3)
    assert truth2.shape == (8, 6) and torch.linalg.matrix_rank(truth2) == 3
    assert abs(float(a2.var()) * 100 - 1.0) < 0.1  # entries N(0, 1/m)
    with pytest.raises(ValueError, match="n1 == n2"):
        sensing_problem(8, 6, 2, 100, psd=True)


def test_rebalance_keeps_the_product_and_sets_the_gram_to_gamma_identity() -> None:
    f, g = 1e-2 * _rand(20, 4), 1e-2 * _rand(15, 4, seed=1)
    new_f, new_g = rebalance(f, g, gamma=0.5)
    torch.testing.assert_close(new_f @ new_g.T, f @ g.T, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(new_f.T @ new_f, 0.5 * torch.eye(4, dtype=torch.float64), rtol=0, atol=1e-12)
    # the columns of F span the same space; G absorbs (F^T F)^{1/2} (hand check on a diagonal Gram)
    f_diag = torch.zeros(5, 2, dtype=torch.float64)
    f_diag[0, 0], f_diag[1, 1] = 2.0, 3.0  # F^T F = diag(4, 9)
    g_diag = torch.ones(3, 2, dtype=torch.float64)
    nf, ng = rebalance(f_diag, g_diag, gamma=4.0)
    torch.testing.assert_close(nf[:2, :2], torch.diag(torch.tensor([2.0, 2.0], dtype=torch.float64)))  # 2 * F diag(1/2, 1/3)
    torch.testing.assert_close(ng, torch.tensor([[1.0, 1.5]] * 3, dtype=torch.float64))  # G diag(2, 3) / 2
    with pytest.raises(ValueError, match="gamma"):
        rebalance(f, g, gamma=0.0)


def test_one_gd_step_changes_the_imbalance_by_exactly_eta_squared_terms() -> None:
    """F' = F - eta S G, G' = G - eta S^T F gives D' = D + eta^2 (G^T S^T S G - F^T S S^T F) (expand by hand)."""
    a, y, truth = sensing_problem(10, 10, 2, 300, seed=0)
    f0, g0 = 0.3 * _rand(10, 4, seed=1), 0.3 * _rand(10, 4, seed=2)
    f, g, _ = factorized_gd(a, y, f0, g0, lr=0.1, steps=1, truth=truth)
    assert g is not None
    grad_f, grad_g = asymmetric_gradients(a, y, f0, g0)  # S G and S^T F
    expected = imbalance(f0, g0) + 0.1**2 * (grad_f.T @ grad_f - grad_g.T @ grad_g)
    torch.testing.assert_close(imbalance(f, g), expected, rtol=1e-10, atol=1e-13)
    f, g, _ = factorized_gd(a, y, 1e-2 * f0, 1e-2 * g0, lr=0.05, steps=300, truth=truth)  # small steps: nearly conserved
    assert g is not None
    drift = float(torch.linalg.matrix_norm(imbalance(f, g) - imbalance(1e-2 * f0, 1e-2 * g0)))
    assert drift < 1e-3 * float(torch.linalg.matrix_norm(f.T @ f))  # while the factors grew to fit M*


def test_the_curses_and_the_rebalance_on_a_small_problem() -> None:
    """The paper's picture at small scale: over-parameterised GD stalls; the one step restores the exact rate."""
    a, y, truth = sensing_problem(12, 12, 2, 300, seed=1)
    f0, g0 = 1e-2 * _rand(12, 4, seed=1) / 12**0.5, 1e-2 * _rand(12, 4, seed=2) / 12**0.5
    _, _, over = factorized_gd(a, y, f0, g0, lr=0.2, steps=800, truth=truth)
    _, _, fixed = factorized_gd(a, y, f0, g0, lr=0.2, steps=800, truth=truth, rebalance_at=300)
    _, _, exact = factorized_gd(a, y, f0[:, :2], g0[:, :2], lr=0.2, steps=800, truth=truth)
    _, _, sym = factorized_gd(a, y, f0, None, lr=0.2, steps=800, truth=truth)
    assert over[-1] > 1e-5 and sym[-1] > 1e-5
    assert exact[-1] < 1e-10 and fixed[-1] < 1e-8 and fixed[-1] < 1e-4 * over[-1]
    torch.testing.assert_close(fixed[:301], over[:301])  # identical up to the step (the product is kept at it)


def test_module_training_equals_the_plain_gd_loop() -> None:
    dm = SensingDataModule(n1=8, n2=8, rank=2, num_measurements=150, seed=4, steps_per_epoch=10)
    model = MatrixSensingModule(n1=8, n2=8, k=3, lr=0.2, seed=5)
    f0, g0 = model.F.detach().clone(), model.G.detach().clone()  # type: ignore[union-attr]
    trainer = Trainer(max_steps=40, max_epochs=-1, callbacks=[OneStepRebalance(at_step=15)], **QUIET)  # type: ignore[arg-type]
    trainer.fit(model, dm)
    f, g, errors = factorized_gd(dm.a, dm.y, f0, g0, lr=0.2, steps=40, truth=dm.ground_truth, rebalance_at=15)
    torch.testing.assert_close(model.F.detach(), f)
    torch.testing.assert_close(model.G.detach(), g)  # type: ignore[union-attr]
    assert float(trainer.callback_metrics["train/recovery_error"]) == pytest.approx(float(errors[-1]), rel=1e-9)
    sym = MatrixSensingModule(n1=8, n2=8, k=3, parameterization="symmetric", seed=5)
    x0 = sym.F.detach().clone()
    Trainer(max_steps=20, max_epochs=-1, **QUIET).fit(sym, dm)  # type: ignore[arg-type]
    x, _, _ = factorized_gd(dm.a, dm.y, x0, None, lr=0.2, steps=20, truth=dm.ground_truth)
    torch.testing.assert_close(sym.F.detach(), x)


def test_module_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="n1 == n2"):
        MatrixSensingModule(n1=5, n2=4, parameterization="symmetric")
    with pytest.raises(ValueError, match="parameterization"):
        MatrixSensingModule(parameterization="tied")
    with pytest.raises(TypeError, match="asymmetric"):
        MatrixSensingModule(parameterization="symmetric").factor_parameters()
