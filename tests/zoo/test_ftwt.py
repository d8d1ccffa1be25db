"""FTWT: targets, straight-through mask, mask loss and FLOPs against hand-computed cases and torch's counter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from zoo.ftwt import (
    FLOPsReduction,
    FTWTClassifier,
    FTWTConv,
    binarize_ste,
    convert_to_ftwt,
    count_conv_flops,
    filter_saliency,
    flops_reduction,
    l1_keep_mask,
    mask_loss,
    mass_target,
    uniform_target,
)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _naive_mass(h: list[float], tau: float) -> list[float]:
    """Walk the filters by heat: take each while the mass taken so far is below tau."""
    p = [v / sum(h) for v in h]
    out, taken = [0.0] * len(h), 0.0
    for i in sorted(range(len(h)), key=lambda i: -p[i]):
        if taken < tau - 1e-5:
            out[i] = 1.0
        taken += p[i]
    return out


def test_mass_target_hand_cases() -> None:
    h = torch.tensor([[1.0, 4.0, 2.0, 3.0]])  # p = .1 .4 .2 .3
    assert mass_target(h, 0.7).tolist() == [[0.0, 1.0, 0.0, 1.0]]  # .4 + .3 reaches 0.7
    assert mass_target(h, 0.75).tolist() == [[0.0, 1.0, 1.0, 1.0]]
    assert mass_target(h, 0.3).tolist() == [[0.0, 1.0, 0.0, 0.0]]  # the top filter alone
    assert mass_target(torch.tensor([[5.0, 0.0, 1.0]]), 1.0).tolist() == [[1.0, 0.0, 1.0]]  # tau = 1 drops dead filters only
    assert mass_target(torch.zeros(1, 3), 0.5).tolist() == [[1.0, 1.0, 1.0]]


def test_mass_target_matches_a_naive_loop() -> None:
    g = torch.Generator().manual_seed(0)
    h = torch.rand(20, 9, generator=g)
    for tau in (0.2, 0.5, 0.9, 1.0):
        expected = [_naive_mass(row, tau) for row in h.tolist()]
        assert mass_target(h, tau).tolist() == expected
    with pytest.raises(ValueError, match="mass_threshold"):
        mass_target(h, 0.0)


def test_saliency_uniform_target_and_l1_mask() -> None:
    o = torch.tensor([[[[1.0, -5.0]], [[2.0, 0.5]]]])  # (1, 2, 1, 2)
    assert filter_saliency(o).tolist() == [[5.0, 2.0]]
    assert uniform_target(torch.tensor([[3.0, 1.0, 2.0, 0.0]]), 0.5).tolist() == [[1.0, 0.0, 1.0, 0.0]]
    w = torch.zeros(3, 2, 1, 1)
    w[0] += 1.0
    w[1] -= 3.0
    w[2] += 2.0
    assert l1_keep_mask(w, 0.67).tolist() == [0.0, 1.0, 1.0]
    with pytest.raises(ValueError):
        filter_saliency(torch.ones(2, 3))


def test_binarize_ste_is_hard_forward_identity_backward() -> None:
    s = torch.tensor([-1.0, 0.5, 2.0], requires_grad=True)
    b = binarize_ste(s)
    assert b.tolist() == [0.0, 1.0, 1.0]
    (b * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert s.grad is not None and s.grad.tolist() == [1.0, 2.0, 3.0]


def test_mask_loss_is_the_layer_mean_of_summed_bce() -> None:
    s1, m1 = torch.tensor([[0.0, 2.0], [1.0, -1.0]]), torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    s2, m2 = torch.tensor([[3.0], [-3.0]]), torch.tensor([[1.0], [1.0]])

    def bce(s: float, m: float) -> float:
        p = torch.sigmoid(torch.tensor(s))
        return float(-(m * p.log() + (1 - m) * (1 - p).log()))

    layer1 = sum((bce(float(s1[0, c]), float(m1[0, c])) + bce(float(s1[1, c]), float(m1[1, c]))) / 2 for c in range(2))
    layer2 = (bce(3.0, 1.0) + bce(-3.0, 1.0)) / 2
    assert float(mask_loss([s1, s2], [m1, m2])) == pytest.approx((layer1 + layer2) / 2, rel=1e-6)


def test_dense_flops_match_torch_flop_counter() -> None:
    model = FTWTClassifier(backbone="digits_cnn").net
    x = torch.randn(2, 1, 8, 8)
    with count_conv_flops(model) as tape:
        model(x)
    with FlopCounterMode(display=False) as counter:
        model(x[:1])
    linear = 32 * 10  # the head's MACs: the tape counts convolutions only
    assert float(tape.dense[0]) == pytest.approx(counter.get_total_flops() / 2 - linear)  # type: ignore[index]
    assert torch.equal(tape.executed, tape.dense)  # dense state: nothing masked


def test_masked_flops_count_active_inputs_and_outputs() -> None:
    """Two 3x3 convs on 4x4 maps: the second's inputs are the first block's active filters."""
    net = nn.Sequential(
        nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2), nn.ReLU(), nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 3, 3, padding=1)
    )
    (block,) = convert_to_ftwt(net)  # the first triplet (the stem) is not masked
    block.state.fill_(2)
    block.static_mask.copy_(torch.tensor([1.0, 0.0, 1.0, 0.0]))
    with count_conv_flops(net) as tape:
        net(torch.randn(1, 2, 4, 4))
    stem, masked, last = 2 * 16 * 2, 2 * 16 * 2 * 9, 3 * 16 * 2 * 9  # active out x HW x active in x k^2
    assert float(tape.executed[0]) == stem + masked + last  # type: ignore[index]
    assert float(tape.dense[0]) == stem + 4 * 16 * 2 * 9 + 3 * 16 * 4 * 9  # type: ignore[index]


def test_flops_metric_against_the_functional() -> None:
    metric = FLOPsReduction()
    metric.update(torch.tensor([1.0, 3.0]), torch.tensor([4.0, 4.0]))
    metric.update(torch.tensor([2.0]), torch.tensor([4.0]))
    assert float(metric.compute()) == pytest.approx(1 - 6 / 12)
    assert float(metric.mean_flops()) == pytest.approx(2.0)
    assert float(flops_reduction(torch.tensor([6.0]), torch.tensor([12.0]))) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        metric.update(torch.ones(2), torch.ones(3))


def _block(mode: str) -> tuple[nn.Conv2d, FTWTConv]:
    stem = nn.Conv2d(1, 3, 3, padding=1)
    block = FTWTConv(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), mass_threshold=0.6, mode=mode)
    block.state.fill_(1)
    nn.init.normal_(block.predictor.weight)
    return stem, block


def test_decoupled_mask_loss_does_not_reach_the_backbone_and_joint_does() -> None:
    x = torch.randn(4, 1, 5, 5)
    for mode, reaches in (("decoupled", False), ("joint", True)):
        stem, block = _block(mode)
        block(stem(x))
        mask_loss([block.last_logits], [block.last_target]).backward()  # type: ignore[list-item]
        assert block.predictor.weight.grad is not None and block.predictor.weight.grad.abs().sum() > 0
        assert (stem.weight.grad is not None and bool(stem.weight.grad.abs().sum() > 0)) is reaches
        assert block.last_target is not None and block.last_target.sum(1).min() >= 1


def test_block_output_is_masked_and_target_from_the_dense_output() -> None:
    _, block = _block("decoupled")
    block.eval()
    x = torch.randn(3, 3, 5, 5)
    out = block(x)
    dense = block.act(block.bn(block.conv(x)))
    assert torch.allclose(out, dense * block.last_mask[:, :, None, None])  # type: ignore[index]
    assert torch.equal(block.last_target, mass_target(filter_saliency(dense), 0.6))  # type: ignore[arg-type]


def test_convert_timm_resnet_masks_each_block() -> None:
    model = FTWTClassifier(backbone="resnet18", in_chans=3, cifar_stem=True, pretrain_epochs=0)
    assert len(model.blocks) == 8  # conv1 of each BasicBlock; the stem is skipped
    for b in model.blocks:
        b.state.fill_(1)
    with count_conv_flops(model.net) as tape:
        assert model(torch.randn(2, 3, 16, 16)).shape == (2, 10)
    assert bool((tape.executed <= tape.dense).all())  # type: ignore[operator]
    with pytest.raises(ValueError, match="already"):
        convert_to_ftwt(model.net)


def test_bad_arguments_say_what_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="pruning"):
        FTWTClassifier(pruning="magnitude")
    with pytest.raises(ValueError, match="mode"):
        FTWTClassifier(mode="coupled")
    model = FTWTClassifier(pruning="static", static_keep=str(tmp_path / "missing.json"))
    with pytest.raises(FileNotFoundError, match="keep_out"):
        model._static_keep()
    (tmp_path / "keep.json").write_text(json.dumps([0.5, 0.5]))
    with pytest.raises(ValueError, match="3 masked layers"):
        FTWTClassifier(pruning="static", static_keep=str(tmp_path / "keep.json"))._static_keep()


def test_schedule_switches_from_dense_to_pruning() -> None:
    model = FTWTClassifier(pretrain_epochs=2, pruning="static", static_keep=0.5, milestones=[0.5])
    assert model._lrs(0) == (pytest.approx(0.05), 0.0)
    model._set_state(1)
    assert int(model.blocks[0].state) == 0
    model._set_state(2)
    assert all(int(b.state) == 2 and float(b.static_mask.sum()) == 16 for b in model.blocks)
    dynamic = FTWTClassifier(pretrain_epochs=2, milestones=[0.5])  # 3 epochs in all without a trainer
    assert dynamic._lrs(2) == (pytest.approx(0.01), pytest.approx(0.1))
    x = torch.randn(5, 1, 8, 8)
    dynamic._set_state(2)
    loss = F.cross_entropy(dynamic(x), torch.zeros(5, dtype=torch.long))
    assert loss.isfinite() and all(b.last_logits is not None for b in dynamic.blocks)
