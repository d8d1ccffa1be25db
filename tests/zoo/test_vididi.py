"""ViDiDi: derivative views against hand formulas, the round-robin schedule, lightly's losses wired per pair, kNN vs scikit-learn."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightly.loss import NegativeCosineSimilarity, NTXentLoss, VICRegLoss
from lightning.pytorch import Trainer, seed_everything
from sklearn.neighbors import KNeighborsClassifier

from zoo.datamodules import MovingDigitsDataModule
from zoo.vididi import TemporalDerivatives, ViDiDi, derivative_view, knn_accuracy, order_pairs, pair_for_step, standardize_clips, temporal_derivative


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _trainer(steps: int, root: Path | None = None, **kwargs: object) -> Trainer:
    return Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=root is not None,
        default_root_dir=root,
        limit_val_batches=0,
        **kwargs,  # type: ignore[arg-type]
    )


def _data() -> MovingDigitsDataModule:
    return MovingDigitsDataModule(batch_size=4, num_train=16, num_val=4, num_test=8, frames=10, clip_len=6)


def test_derivatives_match_finite_differences_of_a_polynomial() -> None:
    t = torch.arange(7.0)
    clip = (3 * t**2 + t).view(1, 1, 7, 1, 1).expand(2, 1, 7, 2, 2)
    d1 = temporal_derivative(clip, 1)[0, 0, :, 0, 0]
    d2 = temporal_derivative(clip, 2, length=5)[0, 0, :, 0, 0]
    assert torch.equal(d1, 3 * (2 * t[:6] + 1) + 1)  # x_{t+1} - x_t = 3(2t + 1) + 1
    assert torch.equal(d2, torch.full((5,), 6.0))  # x_{t+2} - 2 x_{t+1} + x_t = 6
    assert torch.equal(temporal_derivative(clip, 0), clip)


def test_derivative_views_share_frames_and_are_standardised() -> None:
    clips = torch.randn(3, 2, 10, 4, 4)
    views = TemporalDerivatives((0, 1, 2))(clips)
    for view in views.values():
        assert view.shape == (3, 2, 8, 4, 4)  # every order cropped to T - 2 frames
        assert torch.allclose(view.mean((1, 2, 3, 4)), torch.zeros(3), atol=1e-5)
        assert torch.allclose(view.std((1, 2, 3, 4), unbiased=False), torch.ones(3), atol=1e-3)
    naive = clips[:, :, 2:] - 2 * clips[:, :, 1:-1] + clips[:, :, :-2]
    assert torch.allclose(views[2], standardize_clips(naive[:, :, :8]), atol=1e-5)
    with pytest.raises(ValueError, match="order"):
        temporal_derivative(clips, 3)
    with pytest.raises(ValueError, match=r"\(B, C, T, H, W\)"):
        temporal_derivative(clips[0], 1)


def test_balanced_alternation_is_a_fixed_round_robin() -> None:
    pairs = order_pairs([2, 0, 1])
    assert pairs == [(0, 1), (1, 2), (0, 2)]
    assert order_pairs([0]) == [(0, 0)]  # the plain base method
    schedule = [pair_for_step(s, pairs) for s in range(30)]
    assert all(schedule.count(p) == 10 for p in pairs)  # balanced
    assert schedule[:4] == [(0, 1), (1, 2), (0, 2), (0, 1)]
    with pytest.raises(ValueError, match="subset"):
        order_pairs([0, 3])


def test_knn_accuracy_matches_scikit_learn() -> None:
    g = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(60, 5, generator=g), torch.randn(25, 5, generator=g)
    bank_y, y = torch.randint(0, 3, (60,), generator=g), torch.randint(0, 3, (25,), generator=g)
    knn = KNeighborsClassifier(n_neighbors=5, metric="cosine").fit(bank.numpy(), bank_y.numpy())
    expected = float((torch.from_numpy(knn.predict(queries.numpy())) == y).float().mean())
    assert float(knn_accuracy(bank, bank_y, queries, y, k=5)) == pytest.approx(expected)


@pytest.mark.parametrize(("method", "loss"), [("vicreg", VICRegLoss), ("simclr", NTXentLoss)])
def test_pair_loss_is_lightlys_loss_on_the_two_orders(method: str, loss: type) -> None:
    torch.manual_seed(0)
    model = ViDiDi(base_method=method, width=8, proj_dims=[16, 8]).train()
    assert isinstance(model.criterion, loss)
    v1, v2 = torch.randn(6, 1, 8, 8, 8), torch.randn(6, 1, 8, 8, 8)
    d1 = v1[:, :, 1:] - v1[:, :, :-1]
    d2 = v2[:, :, 2:] - 2 * v2[:, :, 1:-1] + v2[:, :, :-2]
    za = model.projector(model.encoder(standardize_clips(d1[:, :, :6])))
    zb = model.projector(model.encoder(standardize_clips(d2[:, :, :6])))
    assert torch.allclose(model.pair_loss(v1, v2, (1, 2)), model.criterion(za, zb), atol=1e-5)


def test_byol_target_is_an_ema_of_the_one_encoder() -> None:
    seed_everything(0)
    model = ViDiDi(base_method="byol", width=8, proj_dims=[16, 8], tau=0.5)
    assert isinstance(model.criterion, NegativeCosineSimilarity)
    assert not any(p.requires_grad for p in model.target_encoder.parameters())
    before = [p.clone() for p in model.target_encoder.parameters()]
    _trainer(2).fit(model, datamodule=_data())
    for old, target, online in zip(before, model.target_encoder.parameters(), model.encoder.parameters()):
        assert not torch.equal(old, target) and not torch.equal(target, online)  # moved towards, not onto, the encoder


def test_training_follows_the_schedule_and_resumes_at_its_position(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[int, int]] = []
    original = ViDiDi.pair_loss

    def record(self: ViDiDi, v1: torch.Tensor, v2: torch.Tensor, pair: tuple[int, int]) -> torch.Tensor:
        seen.append(pair)
        return original(self, v1, v2, pair)

    monkeypatch.setattr(ViDiDi, "pair_loss", record)
    seed_everything(0)
    trainer = _trainer(4, tmp_path)
    trainer.fit(ViDiDi(width=8, proj_dims=[16, 8]), datamodule=_data())  # one epoch: 16 videos / batch 4
    trainer.save_checkpoint(tmp_path / "crash.ckpt")
    _trainer(5, tmp_path).fit(ViDiDi(width=8, proj_dims=[16, 8]), datamodule=_data(), ckpt_path=tmp_path / "crash.ckpt")
    assert seen == [(0, 1), (1, 2), (0, 2), (0, 1), (1, 2)]  # the resumed step 4 continues the round-robin


def test_sum_pairing_averages_every_pair_and_the_baseline_uses_order_zero() -> None:
    torch.manual_seed(0)
    model = ViDiDi(width=8, proj_dims=[16, 8], pairing="sum").eval()
    v1, v2 = torch.randn(6, 1, 8, 8, 8), torch.randn(6, 1, 8, 8, 8)
    with torch.no_grad():
        expected = torch.stack([model.pair_loss(v1, v2, p) for p in [(0, 1), (1, 2), (0, 2)]]).mean()
        model._trainer = None
        assert model.pairs == [(0, 1), (1, 2), (0, 2)]
        assert torch.allclose(torch.stack([model.pair_loss(v1, v2, p) for p in model.pairs]).mean(), expected)
    assert ViDiDi(orders=[0]).pairs == [(0, 0)]


def test_knn_metric_is_logged_on_original_frames() -> None:
    seed_everything(0)
    model, dm = ViDiDi(width=8, proj_dims=[16, 8]), _data()
    trainer = _trainer(2)
    trainer.fit(model, datamodule=dm)
    result = trainer.test(model, datamodule=dm, verbose=False)[0]
    assert 0.0 <= result["test/knn_acc"] <= 1.0
    assert model(torch.randn(2, 1, 6, 16, 16)).shape == (2, 8)


def test_bad_arguments_say_what_to_use() -> None:
    with pytest.raises(ValueError, match="base_method"):
        ViDiDi(base_method="moco")
    with pytest.raises(ValueError, match="pairing"):
        ViDiDi(pairing="random")
    with pytest.raises(ValueError, match="video backbone"):
        ViDiDi(backbone="resnet18")
    with pytest.raises(ValueError, match="spare frames"):
        derivative_view(torch.randn(1, 1, 2, 4, 4), 0)


def test_torchvision_video_backbone_builds() -> None:
    model = ViDiDi(backbone="r3d_18", in_chans=1, proj_dims=[32, 16]).eval()
    assert model(torch.randn(1, 1, 4, 16, 16)).shape == (1, 512)
