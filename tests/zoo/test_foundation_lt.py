"""foundation-lt: the logit-adjusted loss, cosine head and backdoor adjustment against naive
references; LIFT fine-tuning from a pre-trained member; the ensemble's loading, choice and hub
round trip; the foundation digits DataModule's pools and long tails."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer

import zoo
from zoo.datamodules import FoundationDigitsDataModule
from zoo.datamodules.foundation_digits import class_order
from zoo.datamodules.longtail import longtail_counts
from zoo.foundation_lt import (
    AdaptFormer,
    BackdoorAdjustedEnsemble,
    CosineClassifier,
    FoundationMember,
    LIFTFinetuner,
    backdoor_adjustment,
    cosine_logits,
    logit_adjusted_loss,
)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _trainer(tmp_path: Path, epochs: int = 1) -> Trainer:
    return Trainer(
        max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path,
    )  # fmt: skip


# ------------------------------------------------------------------------------------- maths
def test_logit_adjusted_loss_matches_a_naive_loop() -> None:
    torch.manual_seed(0)
    logits, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 3, 0])
    prior = torch.tensor([0.5, 0.3, 0.15, 0.05])
    tau = 0.7
    expected = 0.0
    for z, label in zip(logits.tolist(), y.tolist()):
        adjusted = [zi + tau * math.log(p) for zi, p in zip(z, prior.tolist())]
        expected += -(adjusted[label] - math.log(sum(math.exp(a) for a in adjusted)))
    got = logit_adjusted_loss(logits, y, prior.log(), tau)
    assert got.item() == pytest.approx(expected / len(y), rel=1e-5)
    assert logit_adjusted_loss(logits, y, prior.log(), 0.0).item() == pytest.approx(F.cross_entropy(logits, y).item())
    with pytest.raises(ValueError, match="log_prior has shape"):
        logit_adjusted_loss(logits, y, torch.zeros(3))


def test_logit_adjustment_pushes_the_head_class_margin() -> None:
    """With equal logits, the head class's loss is larger than the tail's (LA asks a margin of the head)."""
    log_prior = torch.tensor([0.9, 0.1]).log()
    zero = torch.zeros(1, 2)
    head = logit_adjusted_loss(zero, torch.tensor([0]), log_prior)
    tail = logit_adjusted_loss(zero, torch.tensor([1]), log_prior)
    assert head.item() == pytest.approx(-math.log(0.9)) and tail.item() == pytest.approx(-math.log(0.1))


def test_cosine_logits_are_scaled_cosine_similarities() -> None:
    torch.manual_seed(1)
    x, w = torch.randn(5, 7), torch.randn(3, 7)
    expected = torch.tensor([[25 * F.cosine_similarity(xi, wk, dim=0).item() for wk in w] for xi in x])
    torch.testing.assert_close(cosine_logits(x, w, 25.0), expected, rtol=1e-5, atol=1e-5)
    head = CosineClassifier(7, 3, scale=25.0)
    head.weight.data.copy_(w)
    torch.testing.assert_close(head(x), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="scale must be positive"):
        CosineClassifier(7, 3, scale=0)


def test_backdoor_adjustment_is_the_p_c_weighted_sum() -> None:
    torch.manual_seed(2)
    outs = [torch.randn(4, 5) for _ in range(3)]
    mean = (outs[0] + outs[1] + outs[2]) / 3
    torch.testing.assert_close(backdoor_adjustment(outs), mean)
    assert torch.equal(backdoor_adjustment(outs).argmax(-1), sum(outs).argmax(-1))  # the official sum of logits
    mixture = sum(o.softmax(-1) for o in outs) / 3
    torch.testing.assert_close(backdoor_adjustment(outs, combine="probs").exp(), mixture)
    w = torch.tensor([0.5, 0.25, 0.25])
    torch.testing.assert_close(backdoor_adjustment(outs, w), 0.5 * outs[0] + 0.25 * outs[1] + 0.25 * outs[2])
    with pytest.raises(ValueError, match="summing to 1"):
        backdoor_adjustment(outs, torch.tensor([0.5, 0.5, 0.5]))
    with pytest.raises(ValueError, match="combine"):
        backdoor_adjustment(outs, combine="vote")
    with pytest.raises(ValueError, match="at least one"):
        backdoor_adjustment([])


def test_adaptformer_starts_as_the_pretrained_vit_and_trains_only_adapters_and_head() -> None:
    torch.manual_seed(3)
    member = FoundationMember(4, backbone="test_vit", in_chans=3, peft="adaptformer", adapter_dim=8, resize_to=160)
    adapters = [m for m in member.encoder.modules() if isinstance(m, AdaptFormer)]
    assert adapters and len(adapters) == len(member.encoder.blocks)
    x = torch.randn(2, 3, 32, 32)  # resized to 160
    with torch.no_grad():
        plain = member.features(x)
        for block in member.encoder.blocks:  # the zero-initialised up-projection adds nothing at first
            block.mlp = block.mlp.mlp
        torch.testing.assert_close(member.features(x), plain)
    member = FoundationMember(4, backbone="test_vit", peft="adaptformer", adapter_dim=8)
    trainable = {id(p) for p in member.trainable_parameters()}
    names = [n for n, p in member.named_parameters() if id(p) in trainable]
    assert names and all(".down." in n or ".up." in n or n.startswith("head.") for n in names)
    with pytest.raises(ValueError, match="needs a timm ViT"):
        FoundationMember(4, backbone="mlp", peft="adaptformer")


# --------------------------------------------------------------------------------- DataModule
def test_foundation_digits_pools_are_disjoint_and_long_tailed_in_their_order() -> None:
    pre = FoundationDigitsDataModule(stage="pretrain", seed=3, pretrain_order=1)
    down = FoundationDigitsDataModule(stage="downstream", seed=3)
    pools = pre._pools()
    keys = {name: {tuple(row) for row in x} for name, (x, _) in pools.items()}
    assert sum(len(v) for v in keys.values()) >= 1790  # (a few digits images are duplicates)
    assert np.bincount(pools["test"][1]).tolist() == [40] * 10 and np.bincount(pools["val"][1]).tolist() == [10] * 10
    order = class_order(3, 1)
    assert [pre.train_class_counts()[k] for k in order] == longtail_counts(70, 10, 20.0)
    assert sorted(down.train_class_counts(), reverse=True) == longtail_counts(50, 10, 10.0)
    same_bias = FoundationDigitsDataModule(stage="pretrain", seed=3, pretrain_order=1, pretrain_draw=1)
    assert same_bias.train_class_counts() == pre.train_class_counts()
    assert not torch.equal(same_bias.train_set.tensors[0], pre.train_set.tensors[0])  # type: ignore[union-attr]
    other = FoundationDigitsDataModule(stage="pretrain", seed=3, pretrain_order=2)
    assert other.train_class_counts() != pre.train_class_counts()
    with pytest.raises(ValueError, match="stage"):
        FoundationDigitsDataModule(stage="finetune")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------- fine-tuning
def _pretrain(tmp_path: Path, order: int = 0) -> Path:
    torch.manual_seed(order)
    model = LIFTFinetuner(head="linear", loss="ce", lr=1e-2, init_stream=order + 1)
    _trainer(tmp_path, epochs=3).fit(model, datamodule=FoundationDigitsDataModule(stage="pretrain", pretrain_order=order, batch_size=256))
    model.save_pretrained(tmp_path / f"pre{order}")
    return tmp_path / f"pre{order}"


def test_finetuning_starts_from_the_pretrained_encoder_and_head(tmp_path: Path) -> None:
    source = _pretrain(tmp_path)
    pre = zoo.load(source)
    model = LIFTFinetuner(pretrained=str(source), lr=1e-12)
    dm = FoundationDigitsDataModule(stage="downstream")
    _trainer(tmp_path, epochs=1).fit(model, datamodule=dm)
    for key, value in pre.net.encoder.state_dict().items():
        torch.testing.assert_close(model.net.encoder.state_dict()[key], value, rtol=0, atol=1e-8)
    torch.testing.assert_close(model.net.head.weight, pre.net.head.weight, rtol=0, atol=1e-8)
    counts = torch.tensor(dm.train_class_counts(), dtype=torch.float64)
    torch.testing.assert_close(model.log_prior, (counts / counts.sum()).log().float())  # LA's prior from the DataModule
    x, y = next(iter(dm.train_dataloader()))
    model.log = lambda *args, **kwargs: None  # type: ignore[method-assign]  # outside a Trainer loop
    assert model.training_step((x, y), 0).item() == pytest.approx(F.cross_entropy(model(x) + model.log_prior, y).item(), rel=1e-5)
    with pytest.raises(FileNotFoundError, match="pre-train it first"):
        LIFTFinetuner(pretrained=str(tmp_path / "missing")).load_pretrained(str(tmp_path / "missing"))


def test_class_mean_head_is_the_normalised_class_mean_feature(tmp_path: Path) -> None:
    model = LIFTFinetuner(init_head="class_mean", lr=1e-12)
    dm = FoundationDigitsDataModule(stage="downstream")
    dm.setup()
    x, y = dm.train_set.tensors  # type: ignore[union-attr]
    with torch.no_grad():
        feats = F.normalize(model.net.features(x), dim=-1)
    expected = torch.stack([F.normalize(feats[y == k].mean(0), dim=0) for k in range(10)])
    _trainer(tmp_path, epochs=0).fit(model, datamodule=dm)
    torch.testing.assert_close(model.net.head.weight, expected, rtol=1e-5, atol=1e-6)


def test_init_streams_are_independent_and_reproducible() -> None:
    torch.manual_seed(5)
    a = LIFTFinetuner(init_stream=1).net.encoder.state_dict()
    torch.manual_seed(5)
    a_again = LIFTFinetuner(init_stream=1).net.encoder.state_dict()
    torch.manual_seed(5)
    b = LIFTFinetuner(init_stream=2).net.encoder.state_dict()
    assert all(torch.equal(a[k], a_again[k]) for k in a) and not torch.equal(a["1.weight"], b["1.weight"])
    for bad in ({"loss": "focal"}, {"init_head": "text"}, {"lr": 0.0}, {"init_stream": -1}, {"peft": "lora"}):
        with pytest.raises(ValueError):
            LIFTFinetuner(**bad)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------- ensemble
def _members(tmp_path: Path, n: int = 2) -> list[str]:
    paths = []
    for k in range(n):
        torch.manual_seed(10 + k)
        model = LIFTFinetuner(init_stream=k + 1)
        folder = tmp_path / f"member{k}"
        model.save_pretrained(folder)
        paths.append(str(folder))
    return paths


def test_ensemble_loads_sources_and_averages_their_logits(tmp_path: Path) -> None:
    sources = _members(tmp_path)
    ensemble = BackdoorAdjustedEnsemble(members=[{}, {}], sources=sources)
    dm = FoundationDigitsDataModule(stage="downstream")
    _trainer(tmp_path, epochs=0).fit(ensemble, datamodule=dm)
    x = dm.test_set.tensors[0][:8]  # type: ignore[union-attr]
    with torch.no_grad():
        members = [zoo.load(s).eval()(x) for s in sources]
        torch.testing.assert_close(ensemble.eval()(x), (members[0] + members[1]) / 2)
    ensemble.save_pretrained(tmp_path / "hub")  # the published ensemble carries its members' weights
    loaded = zoo.load(tmp_path / "hub")
    assert type(loaded) is BackdoorAdjustedEnsemble
    with torch.no_grad():
        assert torch.equal(loaded(x), ensemble(x))


def test_best_member_is_chosen_on_validation_and_published(tmp_path: Path) -> None:
    sources = _members(tmp_path, 1)
    pre = _pretrain(tmp_path)  # a trained member beats an untrained one
    trained = LIFTFinetuner(pretrained=str(pre))
    _trainer(tmp_path, epochs=3).fit(trained, datamodule=FoundationDigitsDataModule(stage="downstream"))
    trained.save_pretrained(tmp_path / "trained")
    ensemble = BackdoorAdjustedEnsemble(members=[{}, {}], sources=[sources[0], str(tmp_path / "trained")], combine="best_member")
    with pytest.raises(RuntimeError, match="no member chosen"):
        ensemble(torch.zeros(1, 64))
    _trainer(tmp_path, epochs=0).fit(ensemble, datamodule=FoundationDigitsDataModule(stage="downstream"))
    assert int(ensemble.selected) == 1
    ensemble.save_pretrained(tmp_path / "hub")
    assert int(zoo.load(tmp_path / "hub").selected) == 1


def test_ensemble_refuses_bad_members(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not architecture arguments"):
        BackdoorAdjustedEnsemble(members=[{"lr": 0.1}])
    with pytest.raises(ValueError, match="one per member"):
        BackdoorAdjustedEnsemble(members=[{}, {}], sources=["a"])
    with pytest.raises(ValueError, match="summing to 1"):
        BackdoorAdjustedEnsemble(members=[{}, {}], weights=[0.9, 0.9])
    sources = _members(tmp_path, 1)
    wide = BackdoorAdjustedEnsemble(members=[{"hidden_dims": [16]}], sources=sources)
    with pytest.raises(ValueError, match="another architecture"):
        wide.load_members(sources)
