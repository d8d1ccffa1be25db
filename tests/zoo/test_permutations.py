"""Tests of the permutations entry against hand-computed cases, autograd, Monte Carlo and a per-member loop."""

from __future__ import annotations

import math

import pytest
import torch
from lightning.pytorch import Trainer

from zoo.datamodules import PermutationDataModule
from zoo.permutations import (
    PermutationEnsemble,
    all_nonzero_inputs,
    ensemble_forward,
    ensemble_gd_step,
    exact_match,
    init_ensemble,
    ntk_mean,
    ntk_relu,
    permutation_matrix,
    round_outputs,
    threshold_levels,
)

D = torch.float64


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def test_permutation_direction_hand_case() -> None:
    pi = torch.tensor([2, 0, 1])  # bit 0 -> position 2, bit 1 -> 0, bit 2 -> 1
    p = permutation_matrix(pi)
    assert torch.equal(torch.tensor([[1.0, 0, 0]], dtype=D) @ p, torch.tensor([[0.0, 0, 1]], dtype=D))
    assert torch.equal(torch.tensor([[1.0, 1, 0]], dtype=D) @ p, torch.tensor([[1.0, 0, 1]], dtype=D))
    x = all_nonzero_inputs(3)
    assert x.shape == (7, 3) and torch.equal(x[4], torch.tensor([1.0, 0, 1], dtype=D))  # 5 = 0b101


def test_datamodule_trains_on_basis_vectors_with_rows_of_p() -> None:
    dm = PermutationDataModule(k=5, seed=3)
    x, y = next(iter(dm.train_dataloader()))
    assert torch.equal(x, torch.eye(5, dtype=D))
    for i in range(5):  # e_i -> e_pi(i)
        assert y[i].argmax() == dm.pi[i] and y[i].sum() == 1
    xt, yt = next(iter(dm.test_dataloader()))
    assert len(xt) == 31 and torch.equal(yt.sum(1), xt.sum(1))
    assert torch.equal(yt[:, dm.pi], xt)  # bit i lands at pi(i)


def test_ntk_closed_form_matches_the_empirical_kernel_of_a_wide_net() -> None:
    gen = torch.Generator().manual_seed(0)
    m = 200_000
    w = torch.randn(m, 4, generator=gen, dtype=D)
    a = torch.randn(m, generator=gen, dtype=D)
    xs = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [1.0, 1, 1, 0], [0, 1.0, 1, 1]], dtype=D)
    pre = xs @ w.T  # (n, m)
    # gradient of a^T relu(W x)/sqrt(m) wrt a: relu(Wx)/sqrt(m); wrt w_j: a_j 1[w_j x > 0] x / sqrt(m)
    feat_a = torch.relu(pre) / math.sqrt(m)
    gate = (pre > 0) * a / math.sqrt(m)
    empirical = feat_a @ feat_a.T + (gate @ gate.T) * (xs @ xs.T)
    assert torch.allclose(empirical, ntk_relu(xs, xs), rtol=0.02, atol=0.01)
    assert ntk_relu(xs[:1], xs[:1]).item() == pytest.approx(1.0)  # 1/2 + 1/2
    assert ntk_relu(xs[:1], xs[1:2]).item() == pytest.approx(1 / (2 * math.pi))


def test_threshold_levels_are_the_two_values_of_the_ntk_mean() -> None:
    k = 6
    dm = PermutationDataModule(k=k, seed=1)
    eye = torch.eye(k, dtype=D)
    x = all_nonzero_inputs(k)
    mu = ntk_mean(x, eye, eye @ dm.matrix)
    alpha, beta = threshold_levels(k, x.sum(1))
    target = x @ dm.matrix
    assert torch.allclose(mu[target == 1], alpha.unsqueeze(1).expand_as(mu)[target == 1])
    assert torch.allclose(mu[target == 0], beta.unsqueeze(1).expand_as(mu)[target == 0])
    assert (alpha > beta).all()  # the mean separates ones from zeros (the sign-based features)
    # the infinite ensemble (the mean alone) is exact with either rounding that follows the mean separation
    assert exact_match(round_outputs(mu, x, "topk_weight"), target) == 1.0
    assert exact_match(round_outputs(mu, x, "threshold"), target) == 1.0


def test_rounding_hand_case() -> None:
    out = torch.tensor([[0.1, 0.9, 0.3, 0.2], [0.6, 0.5, 0.7, 0.0]], dtype=D)
    x = torch.tensor([[1.0, 0, 0, 0], [1.0, 1, 0, 1]], dtype=D)
    assert torch.equal(round_outputs(out, x, "topk_weight"), torch.tensor([[0.0, 1, 0, 0], [1.0, 1, 1, 0]], dtype=D))
    assert torch.equal(round_outputs(out, x, "half"), torch.tensor([[0.0, 1, 0, 0], [1.0, 0, 1, 0]], dtype=D))
    with pytest.raises(ValueError, match="rounding must be one of"):
        round_outputs(out, x, "nearest")


def test_closed_form_gradients_match_autograd() -> None:
    w, a = init_ensemble(3, 4, 16, torch.Generator().manual_seed(0))
    x = all_nonzero_inputs(4)[:9]
    y = torch.rand(9, 4, dtype=D, generator=torch.Generator().manual_seed(1))
    w_req, a_req = w.clone().requires_grad_(), a.clone().requires_grad_()
    loss = (0.5 * (ensemble_forward(w_req, a_req, x) - y).pow(2).sum(dim=(1, 2)) / 9).sum()
    loss.backward()
    w_new, a_new, per_member = ensemble_gd_step(w, a, x, y, lr=0.1)
    assert per_member.sum().item() == pytest.approx(loss.item())
    assert torch.allclose(w_new, w - 0.1 * w_req.grad) and torch.allclose(a_new, a - 0.1 * a_req.grad)


def test_batched_training_equals_training_each_member_alone() -> None:
    w, a = init_ensemble(4, 5, 32, torch.Generator().manual_seed(2))
    eye = torch.eye(5, dtype=D)
    y = eye @ permutation_matrix(torch.tensor([1, 2, 3, 4, 0]))
    wb, ab = w, a
    for _ in range(20):
        wb, ab, _ = ensemble_gd_step(wb, ab, eye, y, 1.0)
    for j in range(4):
        wj, aj = w[j : j + 1], a[j : j + 1]
        for _ in range(20):
            wj, aj, _ = ensemble_gd_step(wj, aj, eye, y, 1.0)
        assert torch.allclose(wj[0], wb[j]) and torch.allclose(aj[0], ab[j])


def test_wide_member_follows_the_linearised_ntk_prediction() -> None:
    """At large width the trained net is mu(x) + f0(x) - Theta(x, E) Theta(E, E)^-1 f0(E)."""
    k, width = 4, 20_000
    eye = torch.eye(k, dtype=D)
    y = eye @ permutation_matrix(torch.tensor([3, 0, 1, 2]))
    w, a = init_ensemble(1, k, width, torch.Generator().manual_seed(5))
    x = all_nonzero_inputs(k)
    f0_x, f0_e = ensemble_forward(w, a, x)[0], ensemble_forward(w, a, eye)[0]
    for _ in range(200):
        w, a, loss = ensemble_gd_step(w, a, eye, y, 1.0)
    assert loss.item() < 1e-12
    predicted = ntk_mean(x, eye, y) + f0_x - ntk_relu(x, eye) @ torch.linalg.solve(ntk_relu(eye, eye), f0_e)
    assert torch.allclose(ensemble_forward(w, a, x)[0], predicted, atol=0.05)


def _fit(model: PermutationEnsemble, dm: PermutationDataModule) -> dict[str, float]:
    trainer = Trainer(
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(model, datamodule=dm)
    return {k: float(v) for k, v in trainer.test(model, datamodule=dm, verbose=False)[0].items()}


def test_ensemble_is_exact_and_guards_against_a_transposed_permutation() -> None:
    k = 6
    dm = PermutationDataModule(k=k, seed=0)
    assert not torch.equal(dm.matrix, dm.matrix.T)  # a permutation that is not its own inverse
    model = PermutationEnsemble(k=k, width=256, num_models=64, seed=0)
    logs = _fit(model, dm)
    assert model.iterations == 200
    assert logs["test/exact"] >= 0.99 and logs["test/exact_topk_weight"] == logs["test/exact"]
    assert logs["test/exact_single"] < logs["test/exact"]
    x = all_nonzero_inputs(k)
    pred = model.predict_step(x, 0)
    assert exact_match(pred, x @ dm.matrix) >= 0.99
    assert exact_match(pred, x @ dm.matrix.T) <= 0.5  # a transposed P would score this low


def test_module_validates_arguments() -> None:
    with pytest.raises(ValueError, match="rounding"):
        PermutationEnsemble(rounding="nearest")
    with pytest.raises(ValueError, match="positive"):
        PermutationEnsemble(num_models=0)
