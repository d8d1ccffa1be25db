"""COMIC's losses against naive loops written here, closed forms and scikit-learn; the three-branch step."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score

from zoo.comic import (
    COMICModule,
    HeadTailBalancerLoss,
    MultiFocalModifierLoss,
    ReflectiveLabelCorrector,
    asl_loss,
    class_prior_weight,
    cooccurrence_attention,
    htb_weights,
    mfm_loss,
    rlc_correct,
    rlc_loss,
    shot_groups,
)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _batch(seed: int = 0, n: int = 6, c: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, c, generator=g) < 0.4).float()
    y[0] = 0  # a sample without positives
    return torch.randn(n, c, generator=g, dtype=torch.float64) * 2, y.double()


def test_class_prior_weight_hand_computed() -> None:
    w = class_prior_weight(torch.tensor([100, 10, 1]))
    expected = [(1 - math.log(r)) ** (1 / 3) for r in (1.0, 0.1, 0.01)]
    assert w.tolist() == pytest.approx(expected, rel=1e-6)
    assert class_prior_weight(torch.tensor([4, 2]), 1 / 6)[1] == pytest.approx((1 + math.log(2)) ** (1 / 6))
    with pytest.raises(ValueError, match="non-negative"):
        class_prior_weight(torch.tensor([-1, 2]))


def test_cooccurrence_attention_matches_the_official_loop() -> None:
    co = torch.tensor([[9.0, 3, 1, 0], [3, 5, 2, 1], [1, 2, 4, 0], [0, 1, 0, 2]])
    y = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 0], [0, 1, 0, 0]])
    a = co.clone().fill_diagonal_(0)
    a = a / a.sum(0)
    for k in range(3):
        rows = a[y[k] == 1]
        expected = torch.zeros(4) if len(rows) == 0 else rows.mean(0) / rows.mean(0).sum()
        torch.testing.assert_close(cooccurrence_attention(co, y)[k], expected)


def _naive_focal(xs_pos, xs_neg, y, w, g_pos, g_neg):  # noqa: ANN001, ANN202
    total = 0.0
    for i in range(y.shape[0]):
        for c in range(y.shape[1]):
            if y[i, c] == 1:
                total -= w[c] * math.log(max(xs_pos[i, c], 1e-8)) * (1 - xs_pos[i, c]) ** g_pos
            else:
                total -= w[c] * math.log(max(xs_neg[i, c], 1e-8)) * (1 - xs_neg[i, c]) ** g_neg[c]
    return total


def test_mfm_loss_matches_a_naive_loop() -> None:
    x, y = _batch()
    w = class_prior_weight(torch.tensor([50, 20, 5, 1])).double()
    att = cooccurrence_attention(torch.tensor([[9.0, 3, 1, 0], [3, 5, 2, 1], [1, 2, 4, 0], [0, 1, 0, 2]]), y).double()
    p = torch.sigmoid(x)
    xs_pos = p * (1 - att)
    xs_neg = torch.where(att == 0, (1 - p + 0.05).clamp(max=1), ((1 - p + 0.05).clamp(max=1) * 1.2).clamp(max=1))
    expected = _naive_focal(xs_pos, xs_neg, y, w.tolist(), 0.0, [3 + v for v in w.tolist()])
    assert float(mfm_loss(x, y, w, att)) == pytest.approx(float(expected), rel=1e-9)


def test_mfm_without_attention_and_unit_weights_is_asl_with_one_more_negative_focus() -> None:
    x, y = _batch(1)
    ones, zero = torch.ones(4, dtype=torch.float64), torch.zeros(6, 4, dtype=torch.float64)
    torch.testing.assert_close(mfm_loss(x, y, ones, zero, gamma_neg=3.0), asl_loss(x, y, gamma_neg=4.0))


def test_asl_without_focusing_or_clip_is_summed_bce() -> None:
    x, y = _batch(2)
    torch.testing.assert_close(asl_loss(x, y, 0.0, 0.0, 0.0), F.binary_cross_entropy_with_logits(x, y, reduction="sum"))


def test_focusing_factors_carry_no_gradient() -> None:
    x, y = _batch(3)
    x.requires_grad_(True)
    asl_loss(x, y, 0.0, 4.0, 0.0).backward()
    p = torch.sigmoid(x.detach())
    focus = torch.where(y == 1, torch.ones_like(p), p**4)  # (1 - (1 - p))^4 for negatives
    expected = torch.where(y == 1, -(1 - p), p) * focus  # d/dx of -log p = -(1-p); of -log(1-p) = p
    torch.testing.assert_close(x.grad, expected)


def test_rlc_correct_hand_case() -> None:
    logits = torch.tensor([[3.0, 3.0, -2.0], [3.0, 1.0, -2.0], [0.0, -3.0, 4.0]])
    y = torch.tensor([[1.0, 0, 0], [0, 0, 0], [0, 0, 0]])
    p, corrected = rlc_correct(logits, y, margin=1.0, tau=0.7)
    torch.testing.assert_close(p[0, 0], torch.sigmoid(torch.tensor(2.0)))  # margin on the observed positive
    # column 0: p = s(2), s(3), s(0) -> mean 0.70; s(3) = 0.95 recalled, s(2) = 0.88 already positive
    # column 1: p = s(3), s(1), s(-3) = 0.95, 0.73, 0.05, mean 0.58: both above 0.7 and the mean -> recalled
    # column 2: s(4) = 0.98 recalled
    assert corrected.tolist() == [[1, 1, 0], [1, 1, 0], [0, 0, 1]]


def test_rlc_loss_is_scaled_by_batch_over_positives() -> None:
    p = torch.tensor([[0.9, 0.2], [0.3, 0.6]], dtype=torch.float64)
    t = torch.tensor([[1.0, 0], [0, 0]], dtype=torch.float64)
    w = torch.ones(2, dtype=torch.float64)
    xs_neg = (1 - p + 0.05).clamp(max=1)
    expected = _naive_focal(p, xs_neg, t, [1.0, 1.0], 0.0, [4.0, 4.0]) * 2 / 1
    assert float(rlc_loss(p, t, w)) == pytest.approx(expected)


def test_rlc_starts_at_its_epoch_and_forgets_recalled_counts_each_epoch() -> None:
    rlc = ReflectiveLabelCorrector(2, start_epoch=1)
    rlc.set_statistics(torch.tensor([10.0, 2.0]))
    logits = torch.tensor([[5.0, 5.0], [-5.0, -5.0]])
    y = torch.zeros(2, 2)
    assert float(rlc(logits, y, epoch=0)) == 0.0
    rlc(logits, y, epoch=1)
    assert rlc.counts.tolist() == [11.0, 3.0]  # one pseudo-positive per class recalled
    rlc(logits, y, epoch=1)
    assert rlc.counts.tolist() == [12.0, 4.0]
    rlc(logits, y, epoch=2)
    assert rlc.counts.tolist() == [11.0, 3.0]


def test_htb_weights_and_gradient_reach_the_balanced_branch_only() -> None:
    wh, wt = htb_weights(torch.tensor(3.0), torch.tensor(1.0), gamma=2)
    assert (float(wh), float(wt)) == pytest.approx((0.9, 0.1))
    mfm = MultiFocalModifierLoss(3)
    mfm.set_statistics(torch.tensor([30, 10, 2]), torch.tensor([[30, 4, 1], [4, 10, 0], [1, 0, 2]]))
    head, tail, bal = (torch.randn(4, 3, requires_grad=True) for _ in range(3))
    y = torch.tensor([[1.0, 0, 0], [0, 1, 0], [1, 0, 1], [0, 0, 1]])
    loss = HeadTailBalancerLoss(gamma=2)(head, tail, bal, y, mfm)
    loss.backward()
    assert head.grad is None and tail.grad is None and bal.grad is not None and bal.grad.abs().sum() > 0
    qh, qt = mfm(head.detach(), y) ** 2, mfm(tail.detach(), y) ** 2
    pb = F.softmax(bal.detach(), -1)
    expected = (qh * mfm(F.softmax(head.detach(), -1) * pb, y) + qt * mfm(F.softmax(tail.detach(), -1) * pb, y)) / (qh + qt)
    torch.testing.assert_close(loss.detach(), expected)


def test_shot_groups_by_threshold_and_by_rank() -> None:
    counts = torch.tensor([150, 5, 60, 20, 19, 101])
    g = shot_groups(counts, many=100, few=20)
    assert g["many"].tolist() == [True, False, False, False, False, True]
    assert g["few"].tolist() == [False, True, False, False, True, False]
    thirds = shot_groups(counts)
    assert [torch.nonzero(thirds[k]).flatten().tolist() for k in ("many", "medium", "few")] == [[0, 5], [2, 3], [1, 4]]
    with pytest.raises(ValueError, match="both"):
        shot_groups(counts, many=100)


def test_map_and_group_metrics_match_sklearn() -> None:
    model = COMICModule(num_classes=6, input_dim=5, hidden_dims=[8])
    model.set_statistics([60, 50, 40, 30, 20, 10], np.ones((6, 6)))
    g = torch.Generator().manual_seed(0)
    y = (torch.rand(40, 6, generator=g) < 0.5).long()
    scores = torch.rand(40, 6, generator=g)
    model.ap["test"].update(scores, y)
    out = model.compute_metrics("test")
    ap = average_precision_score(y.numpy(), scores.numpy(), average=None)
    assert float(out["test/mAP"]) == pytest.approx(ap.mean(), abs=1e-6)
    assert float(out["test/few_mAP"]) == pytest.approx(ap[4:].mean(), abs=1e-6)
    assert float(out["test/many_mAP"]) == pytest.approx(ap[:2].mean(), abs=1e-6)
    assert float(out["test/worst_class_ap"]) == pytest.approx(ap.min(), abs=1e-6)


@pytest.mark.parametrize("mode", ["paper", "released"])
def test_three_branch_step_trains_every_branch(mode: str) -> None:
    torch.manual_seed(0)
    model = COMICModule(num_classes=4, input_dim=5, hidden_dims=[8], balance_mode=mode)
    model.set_statistics([20, 10, 5, 2], np.full((4, 4), 2.0))
    batch = [t for _ in range(3) for t in (torch.randn(8, 5), (torch.rand(8, 4) < 0.4).float())]
    loss = model.training_step(batch, 0)
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    torch.testing.assert_close(model(batch[0]), model.branch_logits(batch[0], 2))


def test_single_branch_baselines_and_bad_arguments() -> None:
    x, y = torch.randn(6, 5), (torch.rand(6, 3) < 0.5).float()
    for loss in ("bce", "asl", "mfm", "mfm_rlc"):
        model = COMICModule(num_classes=3, input_dim=5, branches=1, branch_loss=loss)
        assert len(model.features) == 1 and torch.isfinite(model.training_step((x, y), 0))
    with pytest.raises(ValueError, match="branches must be 1 or 3"):
        COMICModule(branches=2)
    with pytest.raises(ValueError, match="unknown branch_loss"):
        COMICModule(branch_loss="focal")
    with pytest.raises(ValueError, match="unknown balance_mode"):
        COMICModule(balance_mode="irm")
    with pytest.raises(ValueError, match="three-branch COMIC needs"):
        COMICModule(num_classes=3, input_dim=5).training_step((x, y), 0)
    with pytest.raises(ValueError, match="class counts must have 3"):
        COMICModule(num_classes=3, input_dim=5).set_statistics([1, 2], np.ones((3, 3)))
