"""BANG: WiSE-FT interpolation, FalseFalseTrue, temperature balancing and the BANG loss by hand."""

from __future__ import annotations

import math
from collections import OrderedDict

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from zoo.bang import (
    BANGClassifier,
    FalseFalseTrueRatio,
    LogitTemperature,
    balance_factors,
    false_false_true_ratio,
    logit_temperature,
    mixup_label_smoothing_loss,
    scale_head,
    smoothed_one_hot,
    weight_average,
    wise_ft,
)
from zoo.datamodules.multicolor import MultiColorDigitsDataModule

torch.set_num_threads(1)


# ----------------------------------------------------------------------------------- WiSE-FT
def _states() -> tuple[OrderedDict, OrderedDict]:
    a = OrderedDict(
        w=torch.tensor([[1.0, -2.0], [0.0, 4.0]]),
        running_mean=torch.tensor([0.0, 10.0]),
        num_batches_tracked=torch.tensor(3),
    )
    b = OrderedDict(
        w=torch.tensor([[3.0, 2.0], [-4.0, 4.0]]),
        running_mean=torch.tensor([2.0, 0.0]),
        num_batches_tracked=torch.tensor(8),
    )
    return a, b


def test_wise_ft_by_hand() -> None:
    a, b = _states()
    mid = wise_ft(a, b, 0.25)  # 0.75 a + 0.25 b, written out
    assert torch.equal(mid["w"], torch.tensor([[1.5, -1.0], [-1.0, 4.0]]))
    assert torch.equal(mid["running_mean"], torch.tensor([0.5, 7.5]))  # float buffers interpolated
    assert mid["num_batches_tracked"].item() == 3 and mid["num_batches_tracked"].dtype == torch.long
    assert wise_ft(a, b, 0.75)["num_batches_tracked"].item() == 8  # nearer endpoint
    for key in a:  # the endpoints exactly
        assert torch.equal(wise_ft(a, b, 0.0)[key], a[key])
        assert torch.equal(wise_ft(a, b, 1.0)[key], b[key])
    # linear in alpha; the K-way average with (1 - alpha, alpha) is the same thing
    for alpha in (0.1, 0.5, 0.9):
        out = wise_ft(a, b, alpha)
        assert torch.allclose(out["w"], (1 - alpha) * a["w"] + alpha * b["w"])
        assert torch.allclose(weight_average([a, b], [1 - alpha, alpha])["w"], out["w"])
    assert torch.equal(a["w"], torch.tensor([[1.0, -2.0], [0.0, 4.0]]))  # inputs untouched


def test_wise_ft_on_modules_with_batchnorm() -> None:
    torch.manual_seed(0)
    m0, m1 = (nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)) for _ in range(2))
    m1.train()(torch.randn(8, 3))  # moves m1's running statistics
    avg = wise_ft(m0, m1, 0.5)
    assert torch.allclose(avg["1.running_var"], (m0[1].running_var + m1[1].running_var) / 2)
    assert torch.allclose(avg["0.weight"], (m0[0].weight + m1[0].weight) / 2)
    assert avg["1.num_batches_tracked"].item() == 1
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    model.load_state_dict(avg)  # a loadable state dict


def test_wise_ft_refuses_bad_input() -> None:
    a, b = _states()
    with pytest.raises(ValueError, match="alpha"):
        wise_ft(a, b, 1.5)
    with pytest.raises(ValueError, match="other keys"):
        wise_ft(a, {"w": b["w"]}, 0.5)
    with pytest.raises(ValueError, match="shape"):
        wise_ft(a, {**b, "w": torch.zeros(3, 2)}, 0.5)
    with pytest.raises(ValueError, match="sum"):
        weight_average([a, b], [0.5, 0.6])


# ----------------------------------------------------------------------------- FalseFalseTrue
TARGET = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
MEMBER_A = torch.tensor([1, 1, 0, 2, 0, 2, 1, 0])
MEMBER_B = torch.tensor([2, 0, 1, 0, 2, 2, 2, 0])
AVERAGE = torch.tensor([0, 1, 2, 1, 1, 0, 2, 1])
# by hand: both wrong at 0, 2, 4, 6, 7; the average right at 0, 2, 4, 7 -> 4 of 8


def test_fft_by_hand_and_batched() -> None:
    members = torch.stack([MEMBER_A, MEMBER_B])
    assert false_false_true_ratio(members, AVERAGE, TARGET).item() == 0.5
    assert false_false_true_ratio([MEMBER_A, MEMBER_B], AVERAGE, TARGET).item() == 0.5
    logits = F.one_hot(members, 3).float() * 3.0  # logits give the same answer
    assert false_false_true_ratio(logits, F.one_hot(AVERAGE, 3).float(), TARGET).item() == 0.5
    metric = FalseFalseTrueRatio()
    for chunk in (slice(0, 3), slice(3, 4), slice(4, 8)):
        metric.update(members[:, chunk], AVERAGE[chunk], TARGET[chunk])
    assert metric.compute().item() == 0.5
    metric.reset()
    metric.update(members[:, :2], AVERAGE[:2], TARGET[:2])  # examples 0, 1: one FFT out of 2
    assert metric.compute().item() == 0.5
    metric.update(members[:, 5:6], AVERAGE[5:6], TARGET[5:6])  # member B right: not FFT
    assert math.isclose(metric.compute().item(), 1 / 3, rel_tol=1e-6)


def test_fft_random_against_a_loop() -> None:
    g = torch.Generator().manual_seed(0)
    members, avg, y = torch.randint(0, 4, (3, 200), generator=g), torch.randint(0, 4, (200,), generator=g), torch.randint(0, 4, (200,), generator=g)
    count = sum(all(members[k, i] != y[i] for k in range(3)) and avg[i] == y[i] for i in range(200))
    metric = FalseFalseTrueRatio()
    for i in range(0, 200, 37):
        metric.update(members[:, i : i + 37], avg[i : i + 37], y[i : i + 37])
    assert math.isclose(metric.compute().item(), count / 200, rel_tol=1e-6)
    assert math.isclose(false_false_true_ratio(members, avg, y).item(), count / 200, rel_tol=1e-6)
    with pytest.raises(ValueError, match="expected"):
        false_false_true_ratio(members, avg[:10], y)


# ---------------------------------------------------------------------- temperature balancing
def test_temperature_balancing_by_hand() -> None:
    a = torch.tensor([[2.0, 0.0], [0.0, 2.0]])  # entries 2, 0, 0, 2: mean 1, std 1
    b = 5.0 * a  # over-confident copy: std 5
    temps = torch.stack([logit_temperature(a), logit_temperature(b)])
    assert torch.allclose(temps, torch.tensor([1.0, 5.0]))
    factors = balance_factors(temps)  # mean(T) / T = 3 / [1, 5]
    assert torch.allclose(factors, torch.tensor([3.0, 0.6]))
    balanced = [logit_temperature(a * factors[0]), logit_temperature(b * factors[1])]
    assert torch.allclose(balanced[0], balanced[1]) and torch.allclose(balanced[0], torch.tensor(3.0))
    assert torch.allclose(balance_factors(torch.tensor([2.0, 2.0])), torch.ones(2))  # balanced: untouched
    with pytest.raises(ValueError):
        balance_factors(torch.tensor([1.0, 0.0]))


def test_streaming_temperature_matches_one_shot() -> None:
    z = torch.randn(50, 7, generator=torch.Generator().manual_seed(1)) * 3 + 1
    metric = LogitTemperature()
    for part in z.split(16):
        metric.update(part)
    assert torch.allclose(metric.compute(), logit_temperature(z), atol=1e-5)
    assert torch.allclose(logit_temperature(z), z.flatten().std(correction=0))


def test_scale_head_scales_the_logits_exactly() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    x = torch.randn(6, 4)
    scaled = scale_head(net.state_dict(), "2", 2.5)
    assert torch.allclose(functional_call(net, scaled, (x,)), 2.5 * net(x), atol=1e-6)
    assert torch.equal(scaled["0.weight"], net.state_dict()["0.weight"])
    with pytest.raises(KeyError):
        scale_head(net.state_dict(), "head", 2.0)


def test_model_balanced_scales_equalise_the_overconfident_pair() -> None:
    model = BANGClassifier(overconfidence=5.0)
    model.temperature.copy_(torch.tensor([2.0, 4.0]))
    scales = model.balanced_scales(overconfident=True)  # temps [2, 4 * 5] -> 11 / [2, 20], times the x5
    assert torch.allclose(scales, torch.tensor([5.5, 2.75]))
    assert torch.allclose(scales * model.temperature, torch.tensor([11.0, 11.0]))


# ------------------------------------------------------------------------------- BANG loss
def test_mixup_label_smoothing_loss_by_hand() -> None:
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
    y, perm, lam, eps = torch.tensor([0, 2]), torch.tensor([1, 0]), 0.7, 0.1
    on, off = 1 - eps + eps / 3, eps / 3
    targets = [
        [lam * on + (1 - lam) * off, off, lam * off + (1 - lam) * on],  # 0.7 ls(0) + 0.3 ls(2)
        [lam * off + (1 - lam) * on, off, lam * on + (1 - lam) * off],  # 0.7 ls(2) + 0.3 ls(0)
    ]
    want = 0.0
    for row, t in zip(logits.tolist(), targets):
        log_z = math.log(sum(math.exp(v) for v in row))
        want -= sum(ti * (v - log_z) for ti, v in zip(t, row))
    got = mixup_label_smoothing_loss(logits, y, 3, lam=lam, perm=perm, smoothing=eps)
    assert math.isclose(got.item(), want / 2, rel_tol=1e-6)
    # linear in the target: lam CE_ls(y) + (1 - lam) CE_ls(y[perm]); no mixup = torch's label smoothing
    ce = lambda t: F.cross_entropy(logits, t, label_smoothing=eps)  # noqa: E731
    assert torch.allclose(got, lam * ce(y) + (1 - lam) * ce(y[perm]))
    assert torch.allclose(mixup_label_smoothing_loss(logits, y, 3, smoothing=eps), ce(y))
    assert torch.allclose(smoothed_one_hot(y, 3, eps).sum(1), torch.ones(2))


# ---------------------------------------------------------------------------- the module
def _small_fit(steps: int = 40, **kwargs: object) -> tuple[BANGClassifier, pl.Trainer, MultiColorDigitsDataModule]:
    pl.seed_everything(0, verbose=False)
    model, dm = BANGClassifier(**kwargs), MultiColorDigitsDataModule(seed=0)
    trainer = pl.Trainer(
        max_epochs=steps,
        check_val_every_n_epoch=steps,
        num_sanity_val_steps=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        accelerator="cpu",
    )
    trainer.fit(model, datamodule=dm)
    return model, trainer, dm


def test_members_see_only_their_patches_and_average_is_the_logit_average() -> None:
    model, _, dm = _small_fit(mixup_alpha=0.4, label_smoothing=0.1)
    first = [m[0].weight for m in model.members]
    inv = 64
    # member 0 sees patches 0-15, member 1 patches 16-31: the unseen input weights are still 0
    assert torch.all(first[0][:, inv + 160 :] == 0) and torch.all(first[1][:, inv : inv + 160] == 0)
    assert first[0][:, inv : inv + 160].abs().sum() > 0 and first[1][:, inv + 160 :].abs().sum() > 0
    x = dm.test_ood_set.tensors[0]
    with torch.no_grad():
        za, zb = model.member_logits(x, 0), model.member_logits(x, 1)
        assert torch.allclose(model._average_logits(x, model.averaged_state()), (za + zb) / 2, atol=1e-5)
        overconf = model._average_logits(x, model.averaged_state(model._boost()))
        assert torch.allclose(overconf, (za + 5 * zb) / 2, atol=1e-4)
        # the temperatures are the members' logit std on the ID validation split
        xv = dm.val_set.tensors[0]
        want = torch.stack([logit_temperature(model.member_logits(xv, k)) for k in range(2)])
        assert torch.allclose(model.temperature, want, atol=1e-4)
        model.hparams["balance"] = False
        assert torch.allclose(model(x), (za + zb) / 2, atol=1e-5)


def test_test_step_logs_the_whole_argument() -> None:
    model, trainer, dm = _small_fit()
    assert {"val/acc", "val/balanced_acc", "val/worst_class_acc", "val/acc_avg"} <= set(trainer.callback_metrics)
    trainer.test(model, datamodule=dm, verbose=False)
    m = {k: float(v) for k, v in trainer.callback_metrics.items()}
    for split in ("id", "ood"):
        for name in ("acc_member0", "acc_member1", "acc_single", "acc_avg", "acc_ensemble", "gain", "fft", "acc_overconf", "acc_balanced", "fft_overconf"):
            assert f"test/{split}/{name}" in m, f"test/{split}/{name} not logged"
    o = "test/ood/"
    assert math.isclose(m[o + "acc_single"], (m[o + "acc_member0"] + m[o + "acc_member1"]) / 2, rel_tol=1e-6)
    assert math.isclose(m[o + "gain"], m[o + "acc_avg"] - m[o + "acc_single"], abs_tol=1e-6)
    assert m[o + "acc_avg"] == m[o + "acc_ensemble"]  # linear members: weight average = logit average
    # recompute the OOD numbers independently from the members' logits
    x, y = dm.test_ood_set.tensors
    with torch.no_grad():
        za, zb = model.member_logits(x, 0), model.member_logits(x, 1)
    acc = lambda z: (z.argmax(1) == y).float().mean().item()  # noqa: E731
    assert math.isclose(m[o + "acc_avg"], acc(za + zb), abs_tol=1e-6)
    assert math.isclose(m[o + "acc_overconf"], acc(za + 5 * zb), abs_tol=1e-6)
    ta, tb = model.temperature.tolist()
    assert math.isclose(m[o + "acc_balanced"], acc(za / ta + zb / tb), abs_tol=1e-6)
    wrong = (za.argmax(1) != y) & (zb.argmax(1) != y)
    assert math.isclose(m[o + "fft"], (wrong & ((za + zb).argmax(1) == y)).float().mean().item(), abs_tol=1e-6)
    assert m["test/id/acc_avg"] > m[o + "acc_avg"]  # the spurious colours help ID only
    # the base's metrics of the deployed model (the unboosted, temperature-balanced average), per named loader
    from sklearn.metrics import balanced_accuracy_score

    deployed = (za / ta + zb / tb).argmax(1)
    assert math.isclose(m[o + "acc"], acc(za / ta + zb / tb), abs_tol=1e-6)
    assert math.isclose(m[o + "balanced_acc"], balanced_accuracy_score(y, deployed), abs_tol=1e-6)
    assert "test/id/worst_class_acc" in m and "test/ood/acc_class9" in m


def test_single_member_baseline_and_argument_checks() -> None:
    model = BANGClassifier(member_patches=[list(range(32))])
    assert model.num_members == 1 and torch.equal(model.averaged_state()["0.weight"], model.members[0][0].weight)
    assert BANGClassifier(member_patches=[[0], [1], [2]]).averaging_weights() == [1 / 3] * 3
    assert BANGClassifier(hidden_dims=[8], shared_init=True).head_name == "2"
    with pytest.raises(ValueError, match="member_patches"):
        BANGClassifier(member_patches=[[0, 40]])
    with pytest.raises(ValueError, match="backbone"):
        BANGClassifier(backbone="resnet18", member_patches=[[0]])
    with pytest.raises(ValueError, match="wise_alpha"):
        BANGClassifier(wise_alpha=2.0)


def test_shared_init_and_probe_members_with_a_timm_backbone() -> None:
    model = BANGClassifier(backbone="resnet18", shared_init=True, probe_members=[0], num_classes=3)
    assert model.head_name == "fc" and model.masks is None
    trainable = {n for n, p in model.members[0].named_parameters() if p.requires_grad}
    assert trainable == {"fc.weight", "fc.bias"}
    assert all(p.requires_grad for p in model.members[1].parameters())
    for (_, p0), (_, p1) in zip(model.members[0].named_parameters(), model.members[1].named_parameters()):
        assert torch.equal(p0, p1)
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_train_temperature_makes_a_member_overconfident_by_training() -> None:
    base, _, _ = _small_fit()
    same, _, _ = _small_fit(train_temperature=[1.0, 1.0])  # T = 1: the old training exactly
    for p0, p1 in zip(base.parameters(), same.parameters()):
        assert torch.equal(p0, p1)
    hot, _, _ = _small_fit(train_temperature=[1.0, 10.0])  # member 1's loss sees z / 10: its raw logits grow
    assert torch.equal(hot.temperature[0], base.temperature[0])  # member 0 trains as before
    assert hot.temperature[1] > 2 * base.temperature[1]
    with pytest.raises(ValueError, match="train_temperature"):
        BANGClassifier(train_temperature=[1.0])
    with pytest.raises(ValueError, match="train_temperature"):
        BANGClassifier(train_temperature=[1.0, 0.0])
