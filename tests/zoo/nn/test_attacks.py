"""Attacks against a linear classifier, whose worst-case perturbation has a closed form."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from zoo.nn.attacks import FGSM, PGD, cw_margin_loss


def linear_pair(seed: int = 0) -> tuple[nn.Linear, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = nn.Linear(6, 2)
    x = torch.randn(32, 6)
    y = torch.randint(0, 2, (32,))
    return model, x, y


def closed_form_delta(model: nn.Linear, y: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """For two classes the loss grows with the margin (w_other - w_y) . x: push along it."""
    w = model.weight.detach()
    direction = w[1 - y] - w[y]
    if norm == "linf":
        return eps * direction.sign()
    return eps * direction / direction.norm(dim=1, keepdim=True)


def test_linf_pgd_finds_the_closed_form_vertex() -> None:
    model, x, y = linear_pair()
    x_adv = PGD(eps=0.3, alpha=0.1, steps=10, clip=None)(model, x, y)
    assert torch.allclose(x_adv - x, closed_form_delta(model, y, 0.3, "linf"), atol=1e-6)


def test_l2_pgd_finds_the_closed_form_direction() -> None:
    model, x, y = linear_pair(1)
    x_adv = PGD(eps=0.5, alpha=0.2, steps=10, norm="l2", random_start=False, clip=None)(model, x, y)
    assert torch.allclose(x_adv - x, closed_form_delta(model, y, 0.5, "l2"), atol=1e-5)


@pytest.mark.parametrize("loss", ["ce", "cw"])
def test_robust_accuracy_matches_the_closed_form(loss: str) -> None:
    model, x, y = linear_pair(2)
    eps = 0.2
    w, b = model.weight.detach(), model.bias.detach()
    margin = ((w[y] - w[1 - y]) * x).sum(1) + b[y] - b[1 - y]  # z_y - z_other
    robust_closed = (margin - eps * (w[y] - w[1 - y]).abs().sum(1) > 0).float().mean()
    x_adv = PGD(eps=eps, alpha=eps / 4, steps=20, loss=loss, clip=None)(model, x, y)
    robust_pgd = (model(x_adv).argmax(1) == y).float().mean()
    assert float(robust_pgd) == pytest.approx(float(robust_closed))
    assert robust_pgd < (model(x).argmax(1) == y).float().mean()  # the attack does something


def test_fgsm_is_one_signed_step() -> None:
    model, x, y = linear_pair(3)
    x01 = torch.sigmoid(x)  # inside [0, 1]
    x_adv = FGSM(0.05, clip=None)(model, x01, y)
    assert torch.allclose(x_adv - x01, closed_form_delta(model, y, 0.05, "linf"), atol=1e-6)


def test_ball_clip_mode_and_gradients_are_respected() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    x, y = torch.rand(8, 10), torch.randint(0, 3, (8,))
    model.train()
    for norm, eps in (("linf", 0.1), ("l2", 0.5)):
        x_adv = PGD(eps=eps, alpha=eps / 4, steps=5, norm=norm, model_mode="eval")(model, x, y)
        size = (x_adv - x).abs().amax(1) if norm == "linf" else (x_adv - x).norm(dim=1)
        assert (size <= eps + 1e-5).all() and x_adv.min() >= 0 and x_adv.max() <= 1
    assert model.training  # restored after running in eval mode
    assert all(p.grad is None for p in model.parameters())  # only the input was differentiated
    with torch.inference_mode():  # inside an evaluation loop
        x_adv = PGD(eps=0.1, alpha=0.05, steps=2)(model.eval(), x, y)
    assert not torch.equal(x_adv, x)


def test_normal_start_and_bad_arguments() -> None:
    model, x, y = linear_pair(4)
    torch.manual_seed(0)
    start = PGD(eps=0.1, alpha=0.01, steps=1, init="normal", init_std=0.001, clip=None)._start(x)
    assert 0 < (start - x).abs().max() < 0.01
    for kwargs in ({"eps": -1.0}, {"steps": 0}, {"norm": "l1"}, {"loss": "hinge"}):
        with pytest.raises(ValueError):
            PGD(**{"eps": 0.1, "alpha": 0.01, "steps": 1, **kwargs})


def test_cw_margin_by_hand() -> None:
    logits = torch.tensor([[2.0, 5.0, 1.0], [4.0, 0.0, 3.5]])
    y = torch.tensor([0, 0])
    # margins 3 and -0.5; a misclassified example saturates at kappa
    assert float(cw_margin_loss(logits, y)) == pytest.approx((0 + -0.5) / 2)
    assert float(cw_margin_loss(logits, y, kappa=0.2)) == pytest.approx((0.2 + -0.5) / 2)
    assert float(cw_margin_loss(logits, y, kappa=10.0)) == pytest.approx((3 + -0.5) / 2)


def test_as_clip_and_the_data_check() -> None:
    from types import SimpleNamespace

    from zoo.nn.attacks import as_clip, check_clip_matches_data

    assert as_clip([0, 1]) == (0.0, 1.0) and as_clip(None) is None
    with pytest.raises(ValueError, match="low < high"):
        as_clip([1.0, 0.0])
    check_clip_matches_data(SimpleNamespace(normalize=False), (0.0, 1.0), "PGD-AT")
    check_clip_matches_data(SimpleNamespace(normalize=True), None, "PGD-AT")
    check_clip_matches_data(None, (0.0, 1.0), "PGD-AT")  # plain dataloaders: nothing to check
    with pytest.raises(ValueError, match="normalize=False .* clip=None"):
        check_clip_matches_data(SimpleNamespace(normalize=True), (0.0, 1.0), "PGD-AT")
