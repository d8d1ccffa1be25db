"""SRAT: class-balanced weights by hand, the separation loss against a naive loop and hand cases,
the deferred schedule under training and checkpoint resume, and adversarial training steps."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from zoo.datamodules.digits import DigitsDataModule
from zoo.srat import (
    DeferredReweighting,
    SeparationLoss,
    SRATModule,
    class_balanced_weights,
    focal_loss,
    inverse_frequency_weights,
    ldam_margins,
    separation_loss,
)

COUNTS = [122, 87, 62, 44, 32, 23, 16, 11, 8, 6]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


# ----------------------------------------------------------------------------- class weights
def hand_cb_weights(counts: list[int], beta: float) -> list[float]:
    """Cui et al.: effective number E_n = (1 - beta^n) / (1 - beta), weight 1 / E_n, scaled to sum K."""
    raw = [(1 - beta) / (1 - beta**n) for n in counts]
    return [len(counts) * r / sum(raw) for r in raw]


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9, 0.999, 0.9999])
def test_class_balanced_weights_match_hand_computation(beta: float) -> None:
    got = class_balanced_weights(COUNTS, beta)
    assert got.tolist() == pytest.approx(hand_cb_weights(COUNTS, beta), rel=1e-12)
    assert float(got.mean()) == pytest.approx(1.0, rel=1e-12)  # normalised: mean 1, sum K


def test_class_balanced_weights_exact_small_case() -> None:
    # beta = 1/2, counts 3 and 1: raw weights 0.5/0.875 = 4/7 and 0.5/0.5 = 1, sum 11/7, scaled by 2 -> 8/11, 14/11
    assert class_balanced_weights([3, 1], 0.5).tolist() == pytest.approx([8 / 11, 14 / 11], rel=1e-14)
    assert class_balanced_weights([5, 5, 5]).tolist() == pytest.approx([1.0, 1.0, 1.0])  # balanced: all 1
    # beta = 0 gives no reweighting; the CPU check's beta = 0.9999 is close to inverse frequency at n <= 122
    assert class_balanced_weights(COUNTS, 0.0).tolist() == pytest.approx([1.0] * 10)
    inv = [1 / n for n in COUNTS]
    assert inverse_frequency_weights(COUNTS).tolist() == pytest.approx([10 * v / sum(inv) for v in inv], rel=1e-12)
    assert class_balanced_weights(COUNTS, 0.9999).tolist() == pytest.approx(inverse_frequency_weights(COUNTS).tolist(), rel=0.01)


def test_class_weights_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="count >= 1"):
        class_balanced_weights([10, 0])
    with pytest.raises(ValueError, match="beta"):
        class_balanced_weights([10, 1], beta=1.0)
    with pytest.raises(ValueError, match="2 classes"):
        DeferredReweighting(2).set_counts([1, 2, 3])


def test_deferred_reweighting_switches_at_start_epoch() -> None:
    rw = DeferredReweighting(10, start_epoch=20, class_counts=COUNTS)
    target = class_balanced_weights(COUNTS).float()
    for epoch in (0, 1, 19):
        assert torch.equal(rw(epoch), torch.ones(10)) and not rw.active(epoch)
    for epoch in (20, 21, 39):
        assert torch.allclose(rw(epoch), target) and rw.active(epoch)
    assert torch.allclose(DeferredReweighting(10, 0, class_counts=COUNTS)(0), target)  # from the start
    assert torch.equal(DeferredReweighting(10, 0, scheme="none", class_counts=COUNTS)(30), torch.ones(10))
    assert "reweighting.target" in SRATModule(class_counts=COUNTS).state_dict()  # saved with the model


# -------------------------------------------------------------------------- separation loss
def naive_separation_loss(features: torch.Tensor, labels: torch.Tensor, tau: float) -> float:
    """The SupCon formula of separation_loss written as loops over anchors, positives and the denominator."""
    z = [[v / math.sqrt(sum(u * u for u in f)) for v in f] for f in features.double().tolist()]
    y = labels.tolist()
    n = len(z)
    dot = lambda a, b: sum(u * v for u, v in zip(a, b))  # noqa: E731
    total = 0.0
    for i in range(n):
        positives = [p for p in range(n) if p != i and y[p] == y[i]]
        if not positives:
            continue  # an anchor without positives contributes 0 (still counted in 1/B)
        denom = sum(math.exp(dot(z[i], z[a]) / tau) for a in range(n) if a != i)
        total += sum(math.log(math.exp(dot(z[i], z[p]) / tau) / denom) for p in positives) / len(positives)
    return -total / n


@pytest.mark.parametrize(("tau", "seed"), [(0.5, 0), (0.1, 1), (1.0, 2)])
def test_separation_loss_matches_naive_loop(tau: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(12, 5, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 3, 4, 5])  # classes 3-5 have no positive in the batch
    got = separation_loss(features, labels, tau)
    assert float(got) == pytest.approx(naive_separation_loss(features, labels, tau), rel=1e-10)
    assert float(SeparationLoss(tau)(features, labels)) == pytest.approx(float(got), rel=1e-12)


def test_separation_loss_hand_cases() -> None:
    # two classes on orthogonal axes, features of any length: every anchor sees one positive at
    # cosine 1 and two negatives at cosine 0, so L = -log(e^{1/tau} / (e^{1/tau} + 2)) = log(1 + 2 e^{-1/tau})
    z = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 3.0]], dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 1])
    for tau in (0.5, 0.1, 2.0):
        assert float(separation_loss(z, y, tau)) == pytest.approx(math.log(1 + 2 * math.exp(-1 / tau)), rel=1e-12)
    # three samples, the third alone in its class: (2 log(1 + e^{-1/tau}) + 0) / 3
    z3 = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    assert float(separation_loss(z3, torch.tensor([0, 0, 1]), 0.5)) == pytest.approx(2 * math.log(1 + math.exp(-2)) / 3, rel=1e-12)
    # separated classes give a lower loss than mixed ones (what the loss rewards)
    mixed = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    assert float(separation_loss(mixed, y, 0.5)) > float(separation_loss(z, y, 0.5))


def test_separation_loss_degenerate_batches_have_finite_gradients() -> None:
    for features, labels in [(torch.randn(1, 4), torch.tensor([3])), (torch.randn(4, 4), torch.tensor([0, 1, 2, 3]))]:
        features.requires_grad_(True)
        loss = separation_loss(features, labels, 0.5)
        loss.backward()
        assert float(loss.detach()) == 0.0 and torch.isfinite(features.grad).all()
    with pytest.raises(ValueError, match="temperature"):
        separation_loss(torch.randn(2, 2), torch.tensor([0, 0]), 0.0)


# -------------------------------------------------------------------------------- base losses
def test_focal_and_ldam_by_hand() -> None:
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]], dtype=torch.float64)
    y = torch.tensor([0, 2])
    ce = F.cross_entropy(logits, y, reduction="none")
    assert torch.allclose(focal_loss(logits, y, gamma=0.0), ce)
    p = logits.softmax(1)[[0, 1], [0, 2]]
    assert torch.allclose(focal_loss(logits, y, gamma=2.0), -((1 - p) ** 2) * p.log())
    m = ldam_margins([16, 1, 81], max_margin=0.5)  # n^-1/4 = 1/2, 1, 1/3, scaled so the largest is 0.5
    assert m.tolist() == pytest.approx([0.25, 0.5, 0.5 / 3])
    model = SRATModule(num_classes=3, input_dim=4, hidden_dims=[6], class_counts=[16, 1, 81], base_loss="ldam", ldam_scale=30.0)
    adjusted = logits.float().clone()
    adjusted[0, 0] -= 0.25
    adjusted[1, 2] -= 0.5 / 3
    want = F.cross_entropy(30.0 * adjusted, y, reduction="none")
    assert torch.allclose(model.base_loss(logits.float(), y), want, atol=1e-5)


# ------------------------------------------------------------------------ the training objective
def small_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    dm = DigitsDataModule(normalize=False, imbalance_ratio=20, val_fraction=0.05, seed=seed)
    dm.setup()
    x, y = dm.train_set.tensors
    return x[:48], y[:48]


def test_objective_is_the_weighted_loss_plus_separation_on_adversarial_examples() -> None:
    torch.manual_seed(0)
    model = SRATModule(class_counts=COUNTS, reweight_start_epoch=20, sep_weight=0.3, sep_temperature=0.5, attack_steps=5)
    x, y = small_batch()
    weights = class_balanced_weights(COUNTS).float()
    for epoch, w in ((19, torch.ones(10)), (20, weights)):
        torch.manual_seed(epoch)
        parts = model.objective(x, y, epoch)
        torch.manual_seed(epoch)  # the same random start: the same adversarial batch
        x_adv = model.attack(model, x, y)
        feats = model.embed(x_adv)
        ce_terms = F.cross_entropy(model.head(feats), y, reduction="none")
        want_ce = (w[y] * ce_terms).sum() / len(y)  # (1/N) sum_i w_{y_i} CE_i
        want_sep = naive_separation_loss(feats.detach(), y, 0.5)
        assert float(parts["ce"]) == pytest.approx(float(want_ce), rel=1e-5)
        assert float(parts["sep"]) == pytest.approx(want_sep, rel=1e-5)
        assert float(parts["loss"]) == pytest.approx(float(want_ce) + 0.3 * want_sep, rel=1e-5)
    # the switch matters: this batch is head-heavy, so the weighted CE differs from the plain one
    torch.manual_seed(1)
    before = model.objective(x, y, 19)["ce"]
    torch.manual_seed(1)
    after = model.objective(x, y, 20)["ce"]
    assert not torch.isclose(before, after, rtol=1e-3)


def test_training_uses_adversarial_examples_and_the_attack_leaves_gradients_clean() -> None:
    torch.manual_seed(0)
    model = SRATModule(class_counts=COUNTS, reweight="none", sep_weight=0.0, attack_steps=7, epsilon=0.1, step_size=0.025)
    x, y = small_batch()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(3)
    x_adv = model.attack(model, x, y)
    assert all(p.grad is None for p in model.parameters())  # the attack differentiates w.r.t. the input only
    assert model.training
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert not torch.allclose(x_adv, x)
    clean = F.cross_entropy(model(x), y)
    adv = F.cross_entropy(model(x_adv), y)
    assert float(adv) > float(clean)  # PGD increased the loss
    # one training step: its loss and its gradients are those of the loss on x_adv alone
    torch.manual_seed(3)
    loss = model.objective(x, y, epoch=0)["loss"]
    assert float(loss) == pytest.approx(float(adv), rel=1e-6) and float(loss) != pytest.approx(float(clean), rel=1e-3)
    loss.backward()
    want = torch.autograd.grad(F.cross_entropy(model(x_adv), y), list(model.parameters()))
    for p, g in zip(model.parameters(), want):
        assert torch.allclose(p.grad, g, atol=1e-6)
    # natural training (attack_steps=0) trains on x itself
    natural = SRATModule(class_counts=COUNTS, reweight="none", sep_weight=0.0, attack_steps=0)
    natural.load_state_dict(model.state_dict())
    assert float(natural.objective(x, y, 0)["loss"]) == pytest.approx(float(clean), rel=1e-6)


def test_separation_term_changes_the_gradient_of_the_features() -> None:
    torch.manual_seed(0)
    x, y = small_batch()
    grads = []
    for sep_weight in (0.0, 1.0):
        torch.manual_seed(0)
        model = SRATModule(class_counts=COUNTS, sep_weight=sep_weight, attack_steps=0)
        model.objective(x, y, 0)["loss"].backward()
        grads.append(model.features[1].weight.grad.clone())
    assert not torch.allclose(grads[0], grads[1])


# --------------------------------------------------------------------- schedule under Trainer
class RecordWeights(Callback):
    """Writes down the class weights the module uses in each training epoch, and the attack calls."""

    def __init__(self) -> None:
        self.weights: dict[int, torch.Tensor] = {}

    def on_train_epoch_end(self, trainer: Trainer, pl_module: SRATModule) -> None:
        self.weights[trainer.current_epoch] = pl_module.class_weights(trainer.current_epoch).clone()
        assert float(trainer.callback_metrics["train/reweighted"]) == float(pl_module.reweighting.active(trainer.current_epoch))


def make_trainer(max_epochs: int, root: Path, callbacks: list[Callback]) -> Trainer:
    return Trainer(
        max_epochs=max_epochs,
        limit_train_batches=2,
        limit_val_batches=0,
        default_root_dir=root,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )


def tiny_module(**kwargs: object) -> SRATModule:
    return SRATModule(attack_steps=1, reweight_start_epoch=2, **kwargs)  # class counts from the DataModule


@pytest.mark.parametrize("stop_at", [1, 3])  # resume before and after the switch
def test_deferred_schedule_under_training_survives_checkpoint_resume(tmp_path: Path, stop_at: int) -> None:
    dm = DigitsDataModule(normalize=False, imbalance_ratio=20, val_fraction=0.05)
    target = class_balanced_weights(dm.class_counts).float()
    first, ckpt = RecordWeights(), ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)
    model = tiny_module()
    make_trainer(stop_at, tmp_path, [first, ckpt]).fit(model, dm)
    assert model.hparams["class_counts"] == dm.class_counts  # read from the DataModule, recorded for config.json
    second = RecordWeights()
    resumed = tiny_module()
    make_trainer(5, tmp_path, [second]).fit(resumed, dm, ckpt_path=str(tmp_path / "last.ckpt"))
    seen = {**first.weights, **second.weights}
    assert sorted(first.weights) == list(range(stop_at)) and sorted(second.weights) == list(range(stop_at, 5))
    for epoch, w in seen.items():
        assert torch.allclose(w, target if epoch >= 2 else torch.ones(10)), epoch
    assert torch.allclose(resumed.reweighting.target, model.reweighting.target)


def test_resume_restores_the_weight_buffer_from_the_checkpoint(tmp_path: Path) -> None:
    dm = DigitsDataModule(normalize=False, imbalance_ratio=20, val_fraction=0.05)
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)
    make_trainer(1, tmp_path, [ckpt]).fit(tiny_module(), dm)
    record = RecordWeights()
    wrong = tiny_module(class_counts=[1] * 10)  # built with other counts: the checkpoint's weights must win
    make_trainer(3, tmp_path, [record]).fit(wrong, dm, ckpt_path=str(tmp_path / "last.ckpt"))
    assert torch.allclose(record.weights[2], class_balanced_weights(dm.class_counts).float())


def test_fit_attacks_every_training_batch_only(tmp_path: Path) -> None:
    dm = DigitsDataModule(normalize=False, imbalance_ratio=20, val_fraction=0.05)
    model = tiny_module()
    calls: list[tuple[torch.Tensor, bool]] = []
    attack = model.attack

    def recording(net: SRATModule, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_adv = attack(net, x, y)
        calls.append((x_adv - x, net.training))
        return x_adv

    model.attack = recording
    trainer = make_trainer(2, tmp_path, [])
    trainer.limit_val_batches = 1
    trainer.fit(model, dm)
    assert len(calls) == 4 and all(training for _, training in calls)  # 2 epochs x 2 batches, none in validation
    assert all(0 < float(d.abs().max()) <= 0.1 + 1e-6 for d, _ in calls)


def test_setup_without_counts_names_the_fix(tmp_path: Path) -> None:
    from lightning.pytorch import LightningDataModule
    from torch.utils.data import DataLoader, TensorDataset

    class NoCounts(LightningDataModule):
        def train_dataloader(self) -> DataLoader:
            return DataLoader(TensorDataset(torch.rand(8, 64), torch.randint(0, 10, (8,))), batch_size=4)

    with pytest.raises(ValueError, match="class_counts"):
        make_trainer(1, tmp_path, []).fit(SRATModule(), NoCounts())
    make_trainer(1, tmp_path, []).fit(SRATModule(reweight="none", attack_steps=1), NoCounts())  # PGD-AT needs no counts


def test_timm_backbone_with_cifar_stem_normalises_inside() -> None:
    model = SRATModule(
        backbone="resnet18", cifar_stem=True, input_mean=[0.5, 0.5, 0.5], input_std=[0.25, 0.25, 0.25], class_counts=COUNTS
    ).eval()
    assert model.features.conv1.stride == (1, 1) and isinstance(model.features.maxpool, torch.nn.Identity)
    x = torch.rand(2, 3, 32, 32)
    assert model(x).shape == (2, 10) and model.embed(x).shape == (2, 512)
    with torch.no_grad():
        direct = model.head(model.features((x - 0.5) / 0.25))
    assert torch.allclose(model(x), direct)
    with pytest.raises(ValueError, match="timm model name"):
        SRATModule(backbone="no_such_net")


def test_setup_refuses_standardised_data_when_the_attack_clips_to_pixels(tmp_path: Path) -> None:
    standardised = DigitsDataModule(normalize=True, imbalance_ratio=20)
    with pytest.raises(ValueError, match="normalize=True") as raised:
        make_trainer(1, tmp_path, []).fit(SRATModule(attack_steps=1), standardised)
    assert any(entry.name == "setup" for entry in raised.traceback)
    model = SRATModule(attack_steps=1, clip=None)  # unbounded inputs: the attack stays in the eps-ball only
    assert model.attack is not None and model.attack.clip is None
    make_trainer(1, tmp_path, []).fit(model, standardised)
    assert SRATModule(attack_steps=1).attack.clip == (0.0, 1.0)  # type: ignore[union-attr]
