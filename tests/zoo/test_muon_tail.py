"""zoo.muon_tail: isotropy metric vs hand computation, embeddings, frequencies, a library Muon step."""

from __future__ import annotations

import math

import pytest
import torch
from lightning.pytorch import Trainer

from zoo.callbacks.stop_at_threshold import StopAtThreshold
from zoo.datamodules.associative import AssociativeMemoryDataModule, class_frequencies
from zoo.muon_tail import AssociativeMemory, SpectralIsotropy, build_optimizer, orthonormal_embeddings, spectral_isotropy


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _random_orthogonal(n: int, seed: int = 0) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


def test_orthogonal_update_is_perfectly_isotropic() -> None:
    values = spectral_isotropy(3.0 * _random_orthogonal(16))
    assert values["entropy"].item() == pytest.approx(1.0, abs=1e-9)
    assert values["erank"].item() == pytest.approx(16.0, abs=1e-7)
    assert values["top_energy"].item() == pytest.approx(1 / 16, abs=1e-9)
    assert values["q75_q25"].item() == pytest.approx(1.0, abs=1e-9)
    assert values["sv_ratio"].item() == pytest.approx(1.0, abs=1e-9)


def test_isotropy_matches_hand_computation() -> None:
    sigma = torch.tensor([4.0, 2.0, 1.0, 1.0], dtype=torch.float64)
    m = _random_orthogonal(6, 1)[:, :4] @ torch.diag(sigma) @ _random_orthogonal(4, 2).T  # 6 x 4, known singular values
    e = [16.0, 4.0, 1.0, 1.0]
    q = [v / 22.0 for v in e]
    h = -sum(v * math.log(v) for v in q)
    values = spectral_isotropy(m, top_k=2)
    assert values["entropy"].item() == pytest.approx(h / math.log(4))
    assert values["erank"].item() == pytest.approx(math.exp(h))
    assert values["top_energy"].item() == pytest.approx(20 / 22)
    # numpy-style linear-interpolation quantiles of sorted energies [1, 1, 4, 16]: q25 = 1, q75 = 4 + 0.25 * 12 = 7
    assert values["q75_q25"].item() == pytest.approx(7.0)
    assert values["sv_ratio"].item() == pytest.approx(0.25)
    rank_one = spectral_isotropy(torch.outer(torch.arange(1.0, 5.0), torch.ones(3)))
    assert rank_one["erank"].item() == pytest.approx(1.0) and rank_one["entropy"].item() == pytest.approx(0.0, abs=1e-9)


def test_isotropy_metric_averages_and_skips_zero_matrices() -> None:
    metric = SpectralIsotropy()
    metric.update(torch.eye(4))
    metric.update(torch.zeros(4, 4))  # no spectrum: skipped
    metric.update(torch.diag(torch.tensor([1.0, 0.0, 0.0, 0.0])))
    out = metric.compute()
    assert out["erank"].item() == pytest.approx(2.5)
    assert out["entropy"].item() == pytest.approx(0.5)
    assert metric.count.item() == 2


@pytest.mark.parametrize(("dim", "k"), [(64, 64), (32, 16)])
def test_rotated_embeddings_are_orthonormal_and_random(dim: int, k: int) -> None:
    e = orthonormal_embeddings(dim, k, "rotated", seed=3).double()
    assert e.shape == (dim, k)
    torch.testing.assert_close(e.T @ e, torch.eye(k, dtype=torch.float64), atol=1e-5, rtol=0)
    assert (e.abs() > 1e-3).float().mean() > 0.9  # dense: not disjoint supports
    assert not torch.equal(e, orthonormal_embeddings(dim, k, "rotated", seed=4))
    assert torch.equal(orthonormal_embeddings(dim, k, "identity"), torch.eye(dim)[:, :k])
    with pytest.raises(ValueError, match="num_classes <= dim"):
        orthonormal_embeddings(4, 8)


def test_model_embeddings_and_zero_init() -> None:
    model = AssociativeMemory(num_classes=16, dim=16)
    for emb in (model.query_embed, model.object_embed):
        torch.testing.assert_close(emb.T @ emb, torch.eye(16), atol=1e-5, rtol=0)
    assert not torch.allclose(model.query_embed, model.object_embed)
    assert torch.count_nonzero(model.weight) == 0
    w = torch.randn(16, 16)
    with torch.no_grad():
        model.weight.copy_(w)
    expected = model.object_embed.T @ w @ model.query_embed  # logits[j, k] = E~_j^T W E_k
    torch.testing.assert_close(model(torch.arange(16)), expected.T)


def test_two_level_heavy_tail_frequencies() -> None:
    p, head = class_frequencies(64, head_frac=0.1, head_mass=0.9)
    assert int(head.sum()) == 6 and p.sum().item() == pytest.approx(1.0)
    assert torch.allclose(p[head], torch.full((6,), 0.9 / 6))
    assert torch.allclose(p[~head], torch.full((58,), 0.1 / 58))
    z, zhead = class_frequencies(10, head_frac=0.2, distribution="zipf", zipf_exponent=1.0)
    harmonic = sum(1 / r for r in range(1, 11))
    torch.testing.assert_close(z, torch.tensor([1 / r / harmonic for r in range(1, 11)]))
    assert zhead.tolist() == [True, True] + [False] * 8


def test_datamodule_permutes_head_with_seed() -> None:
    a = AssociativeMemoryDataModule(num_classes=64, seed=0, steps_per_epoch=3)
    b = AssociativeMemoryDataModule(num_classes=64, seed=1)
    x, y, w, head = next(iter(a.train_dataloader()))
    assert torch.equal(x, torch.arange(64)) and torch.equal(x, y)
    assert w.sum().item() == pytest.approx(1.0) and int(head.sum()) == 6
    assert torch.allclose(w[head], torch.full((6,), 0.15))
    assert not torch.equal(a.is_head, b.is_head)
    assert len(a.train_dataloader()) == 3 and len(a.test_dataloader()) == 1


def test_timm_muon_step_is_near_orthogonal_and_uses_paper_settings() -> None:
    w = torch.nn.Parameter(torch.zeros(32, 32))
    opt = build_optimizer([w], "muon", lr=0.5)
    group = opt.param_groups[0]
    assert group["weight_decay"] == 0.0 and group["nesterov"] is False and group["adjust_lr_fn"] is None
    grad = torch.randn(32, 32, generator=torch.Generator().manual_seed(0)) @ torch.diag(torch.logspace(0, -1, 32))  # ill-conditioned
    w.grad = grad.clone()
    opt.step()
    update = -w.detach() / 0.5
    assert spectral_isotropy(grad)["entropy"] < 0.8
    iso = spectral_isotropy(update)
    assert iso["entropy"] > 0.97
    s = torch.linalg.svdvals(update.double())
    assert s.min() > 0.3 and s.max() < 1.3  # Newton-Schulz (bf16): singular values near 1
    # the update is the polar factor U V^T up to Newton-Schulz error, in the gradient's direction
    u, _, vh = torch.linalg.svd(grad.double())
    assert torch.nn.functional.cosine_similarity(update.double().flatten(), (u @ vh).flatten(), dim=0) > 0.95
    # an Adam step is elementwise (sign-like) and far less isotropic on the same gradient
    w2 = torch.nn.Parameter(torch.zeros(32, 32))
    adam = build_optimizer([w2], "adam", lr=0.5)
    w2.grad = grad.clone()
    adam.step()
    assert spectral_isotropy(w2.detach())["entropy"] < iso["entropy"]


def test_short_run_logs_and_stops(tmp_path) -> None:
    model = AssociativeMemory(num_classes=32, dim=32, lr=0.03)
    dm = AssociativeMemoryDataModule(num_classes=32, head_frac=0.125, steps_per_epoch=500)
    stop = StopAtThreshold("train/head_p", 0.9)
    trainer = Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[stop], default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=dm)
    m = trainer.callback_metrics
    assert m["train/head_p"] >= 0.9 and 0 < stop.stopped_step < 500 and trainer.global_step == stop.stopped_step
    assert m["train/tail_p"] > 0.8  # Muon learns the tail with the head
    assert 0.9 < m["update/entropy"] <= 1.0


def test_muon_fallback_params_get_the_scaled_lr() -> None:
    """Biases and norm weights take timm's AdamW fallback at ``lr * fallback_lr_scale``, not at Muon's lr."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.LayerNorm(8), torch.nn.Linear(8, 8))
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    opt = build_optimizer(net.parameters(), "muon", lr=0.1)
    assert opt.param_groups[0]["fallback_lr_scale"] == pytest.approx(0.1)  # the default
    net(torch.randn(4, 8)).square().sum().backward()
    opt.step()
    # a first AdamW step moves each entry by lr * m / sqrt(v) = lr * sign(g) (up to eps)
    for name in ("0.weight", "0.bias", "1.bias"):
        step = (dict(net.named_parameters())[name].detach() - before[name]).abs()
        torch.testing.assert_close(step, torch.full_like(step, 0.1 * 0.1), rtol=1e-4, atol=1e-6)
    assert float((net[1].weight.detach() - before["1.weight"]).abs().max()) > 0.02  # the matrix: Muon at lr 0.1
    model = AssociativeMemory(num_classes=8, dim=8, fallback_lr_scale=0.5)
    assert model.configure_optimizers().param_groups[0]["fallback_lr_scale"] == 0.5
    assert build_optimizer(net.parameters(), "muon", lr=0.1, fallback_lr_scale=1.0).param_groups[0]["fallback_lr_scale"] == 1.0
