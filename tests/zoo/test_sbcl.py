"""SBCL's maths against independent references: a per-anchor loop of the paper's formulas, the
SimCLR + SupCon identity, scikit-learn's balanced logistic regression, hand-computed counts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer, seed_everything
from sklearn.linear_model import LogisticRegression

from zoo.callbacks import SubclassClustering
from zoo.datamodules import ContrastiveDigitsDataModule
from zoo.datamodules.contrastive import shift_and_noise
from zoo.sbcl import (
    SBCLLoss,
    SBCLModule,
    class_temperature_scales,
    cluster_subclasses,
    fit_balanced_probe,
    head_class_spread,
    sbcl_loss,
    subclass_counts,
    supcon_loss,
)

torch.set_num_threads(1)


def _views(b: int = 6, d: int = 5, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(b, 2, d, generator=g, dtype=torch.float64), dim=-1)


def _naive_sbcl(z: torch.Tensor, y: torch.Tensor, s: torch.Tensor, taus: torch.Tensor, tau: float, base: float, gamma: float) -> float:
    """The loss anchor by anchor, straight from the paper's sets S+(i), C+(i), A(i)."""
    flat = torch.cat([z[:, 0], z[:, 1]])
    b = len(y)
    yy, ss = torch.cat([y, y]), torch.cat([s, s])
    total = 0.0
    for i in range(2 * b):
        partner = (i + b) % (2 * b)
        others = [a for a in range(2 * b) if a != i]
        sim = (flat @ flat[i]).tolist()  # sim[a] = z_i . z_a
        sub_pos = [p for p in others if ss[p] == ss[i]]
        denom = sum(math.exp(sim[a] / tau) for a in others)
        l_sub = -sum(math.log(math.exp(sim[p] / tau) / denom) for p in sub_pos) / len(sub_pos)
        t = float(taus[yy[i]])
        cls_set = [a for a in others if ss[a] != ss[i]] + [partner]
        cls_pos = [a for a in others if ss[a] != ss[i] and yy[a] == yy[i]] + [partner]
        denom_c = sum(math.exp(sim[a] / t) for a in cls_set)
        l_cls = -sum(math.log(math.exp(sim[p] / t) / denom_c) for p in cls_pos) / len(cls_pos)
        total += (tau / base) * l_sub + gamma * l_cls
    return total / (2 * b)


def test_subclass_counts_by_hand() -> None:
    # a ratio-20 digits profile: n_min = 6 < k = 10, so subclasses hold about 10 images
    assert subclass_counts([120, 86, 61, 44, 31, 22, 16, 11, 8, 6], 10) == [12, 8, 6, 4, 3, 2, 1, 1, 1, 1]
    assert subclass_counts([50, 20, 10], 5) == [5, 2, 1]  # n_min = 10 > k: subclasses of the tail's size
    with pytest.raises(ValueError, match="at least one"):
        subclass_counts([5, 0], 10)


def test_sbcl_loss_matches_a_per_anchor_loop() -> None:
    z = _views()
    y = torch.tensor([0, 0, 0, 0, 1, 2])
    s = torch.tensor([0, 0, 1, 1, 2, 3])
    taus = torch.tensor([0.12, 0.08, 0.1], dtype=torch.float64)
    got = sbcl_loss(z, y, s, taus, temperature=0.1, base_temperature=0.07, gamma=0.25)
    assert float(got) == pytest.approx(_naive_sbcl(z, y, s, taus, 0.1, 0.07, 0.25), rel=1e-9)


def test_every_sample_its_own_subclass_is_simclr_plus_supcon() -> None:
    """The unit check: S+(i) = the other view (SimCLR), the class term = SupCon at tau_{y_i}."""
    z = _views(8)
    y = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    s = torch.arange(8)
    taus = torch.full((3,), 0.2, dtype=torch.float64)
    got = sbcl_loss(z, y, s, taus, temperature=0.1, base_temperature=0.07, gamma=1.0)
    simclr = supcon_loss(z, s, temperature=0.1, base_temperature=0.07)
    supcon = supcon_loss(z, y, temperature=0.2, base_temperature=0.2)
    assert float(got) == pytest.approx(float(simclr + supcon), abs=1e-6)


def test_supcon_loss_matches_a_loop() -> None:
    z = _views(5)
    y = torch.tensor([0, 1, 0, 1, 1])
    flat, yy = torch.cat([z[:, 0], z[:, 1]]), torch.cat([y, y])
    want = 0.0
    for i in range(10):
        others = [a for a in range(10) if a != i]
        denom = sum(math.exp(float(flat[i] @ flat[a]) / 0.5) for a in others)
        pos = [p for p in others if yy[p] == yy[i]]
        want += -sum(float(flat[i] @ flat[p]) / 0.5 - math.log(denom) for p in pos) / len(pos)
    assert float(supcon_loss(z, y, 0.5, 0.5)) == pytest.approx(want / 10, rel=1e-9)


def test_loss_checks_shapes_and_arguments() -> None:
    with pytest.raises(ValueError, match=r"\(B, 2, D\)"):
        sbcl_loss(torch.randn(4, 8), torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long), torch.ones(1))
    with pytest.raises(ValueError, match="temperatures must be positive"):
        SBCLLoss(temperature=0)
    with pytest.raises(ValueError, match="unknown loss"):
        SBCLModule(loss="simclr")


def test_cluster_subclasses_finds_the_blobs_with_global_offsets() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.tensor([1.0, 0, 0]), torch.tensor([0, 1.0, 0])
    z0 = torch.cat([a + 0.05 * torch.randn(10, 3, generator=g), b + 0.05 * torch.randn(10, 3, generator=g)])
    z1 = torch.tensor([0, 0, 1.0]) + 0.05 * torch.randn(5, 3, generator=g)
    z, y = torch.cat([z0, z1]), torch.tensor([0] * 20 + [1] * 5)
    ids = cluster_subclasses(z, y, [2, 1])
    assert len(set(ids[:10].tolist())) == 1 and len(set(ids[10:20].tolist())) == 1
    assert set(ids[:20].tolist()) == {0, 1} and set(ids[20:].tolist()) == {2}


def test_class_temperatures_as_the_official_formula() -> None:
    g = torch.Generator().manual_seed(1)
    z = torch.randn(60, 4, generator=g, dtype=torch.float64)
    y = torch.tensor([0] * 20 + [1] * 15 + [2] * 10 + [3] * 10 + [4] * 5)
    counts = [2, 2, 1, 1, 1]
    zn = F.normalize(z, dim=1).numpy()
    d = np.array([np.linalg.norm(zn[y == c] - zn[y == c].mean(0), axis=1).mean() / np.log((y == c).sum() + 10) for c in range(5)])
    d = d.clip(np.percentile(d, 20), np.percentile(d, 80))
    want = d / d.mean()
    want[[2, 3, 4]] = 1.0
    np.testing.assert_allclose(class_temperature_scales(z, y, counts).numpy(), want, rtol=1e-6)


def test_head_class_spread() -> None:
    z = torch.tensor([[1.0, 0], [2.0, 0], [0, 1.0], [1.0, 1.0]])
    y = torch.tensor([0, 0, 1, 1])
    assert float(head_class_spread(z, y, [0])) == pytest.approx(0.0, abs=1e-7)  # collapsed onto one direction
    # class 1: unit vectors (0,1) and (1,1)/sqrt2; mean direction at 67.5 deg: 1 - cos(22.5 deg)
    assert float(head_class_spread(z, y, [1])) == pytest.approx(1 - math.cos(math.pi / 8), rel=1e-6)


def test_balanced_probe_matches_sklearn() -> None:
    g = torch.Generator().manual_seed(2)
    y = torch.tensor([0] * 40 + [1] * 12 + [2] * 6)
    x = torch.randn(len(y), 3, generator=g) + torch.eye(3)[y] * 1.5
    wd = 0.05
    w, b = fit_balanced_probe(x, y, 3, weight_decay=wd, steps=500)
    sk = LogisticRegression(C=1 / (len(y) * wd), class_weight="balanced", max_iter=5000, tol=1e-10).fit(x.numpy(), y.numpy())
    got = torch.softmax(x @ w.T + b, 1).numpy()
    np.testing.assert_allclose(got, sk.predict_proba(x.numpy()), atol=2e-3)


def test_shift_and_noise_is_a_one_pixel_shift() -> None:
    x = torch.arange(2 * 16, dtype=torch.float32).view(2, 4, 4) + 1
    out = shift_and_noise(x, noise=0.0, generator=torch.Generator().manual_seed(0))
    padded = F.pad(x, (1, 1, 1, 1))
    for i in range(2):
        shifts = [padded[i, dy : dy + 4, dx : dx + 4] for dy in range(3) for dx in range(3)]
        assert any(torch.equal(out[i], s) for s in shifts)


def test_two_view_batches_and_counts() -> None:
    dm = ContrastiveDigitsDataModule(batch_size=32)
    dm.setup()
    x1, x2, y, index = next(iter(dm.train_dataloader()))
    assert x1.shape == x2.shape == (32, 64) and not torch.equal(x1, x2)
    x_eval, y_eval = dm.train_set.tensors  # type: ignore[union-attr]
    assert torch.equal(y, y_eval[index])  # the index is the position in eval_train_dataloader()
    assert (x1 - x_eval[index]).abs().mean() < 1.0
    counts = dm.train_class_counts()
    assert counts == sorted(counts, reverse=True) and counts[0] / counts[-1] == pytest.approx(20, rel=0.2)


def test_fit_with_clustering_then_probe(tmp_path) -> None:
    """Warm-up, clustering, the SBCL loss and the stage-2 probe in one short run; Many/Medium/Few and spread logged."""
    seed_everything(0)
    dm = ContrastiveDigitsDataModule(batch_size=256)
    model = SBCLModule(many_shot=50, few_shot=12)
    cb = SubclassClustering(every_n_epochs=1, warmup_epochs=1)
    trainer = Trainer(
        max_epochs=3, callbacks=[cb], accelerator="cpu", logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(model, dm)
    assert cb.clustered_epochs == [1, 2]
    assert cb.counts == subclass_counts(dm.train_class_counts(), 10) and sum(cb.counts) > 10
    assert model.subclass_targets is not None and torch.equal(model.subclass_targets, cb.subclass_targets)
    metrics = trainer.test(model, dm, verbose=False)[0]
    for key in ("test/balanced_acc", "test/many_acc", "test/medium_acc", "test/few_acc", "test/head_spread"):
        assert key in metrics
    assert metrics["test/balanced_acc"] > 0.5  # the probe learned on frozen features


def test_module_without_eval_train_loader_is_refused(tmp_path) -> None:
    from tests.conftest import blob_loader

    trainer = Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    with pytest.raises(RuntimeError, match="eval_train_dataloader"):
        trainer.fit(SBCLModule(input_dim=8), blob_loader())
