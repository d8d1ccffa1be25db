"""ARL's maths against hand-computed cases and a naive re-implementation of the released
numpy sequence; the classifier's gradient scaling, clip folding and errors; a short fit."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from torch import nn

from zoo.arl import ARL, ARLClassifier, arl_loss, arl_modality_weights, dependence, grad_scale, prediction_entropy, shared_head_logits
from zoo.datamodules import MultimodalDigitsDataModule


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_grad_scale_multiplies_by_one_plus_c_read_at_backward_time() -> None:
    h = torch.randn(3, 4, requires_grad=True)
    c = torch.zeros(())
    out = grad_scale(h, c)
    assert torch.equal(out, h)
    c.fill_(0.7)  # set after the forward, as the classifier does
    g = torch.randn(3, 4)
    out.backward(g)
    torch.testing.assert_close(h.grad, 1.7 * g)


def test_shared_head_logits_zero_the_other_slot() -> None:
    head = nn.Linear(5, 3)
    h_a, h_v = torch.randn(4, 2), torch.randn(4, 3)
    z, z_a, z_v = shared_head_logits(head, h_a, h_v, "concat")
    w, b = head.weight.detach(), head.bias.detach()
    torch.testing.assert_close(z_a, h_a @ w[:, :2].T + b)
    torch.testing.assert_close(z_v, h_v @ w[:, 2:].T + b)
    torch.testing.assert_close(z, z_a + z_v - b)
    head2 = nn.Linear(3, 3)
    z, z_a, z_v = shared_head_logits(head2, torch.randn(4, 3), torch.randn(4, 3), "share")
    torch.testing.assert_close(z, z_a + z_v)
    with pytest.raises(ValueError, match="unknown fusion"):
        shared_head_logits(head, h_a, h_v, "film")


def test_weights_hand_computed_case() -> None:
    z_a = torch.tensor([[2.0, 0.0], [0.0, 2.0]])  # confident: low entropy
    z_v = torch.tensor([[1.0, 1.0], [1.0, 1.0]])  # uniform: entropy ln 2
    assert float(dependence(z_a)) == 2.0 and float(dependence(z_v)) == 2.0
    p = 1 / (1 + math.exp(-2))
    h_a = -(p * math.log(p) + (1 - p) * math.log(1 - p))
    assert abs(float(prediction_entropy(z_a)) - h_a) < 1e-6
    ha_n = h_a / (h_a + math.log(2))
    u_a = (1 / ha_n) / (1 / ha_n + 1 / (1 - ha_n))  # = 1 - ha_n
    s_a, s_v = 0.5 * u_a, 0.5 * (1 - u_a)
    c_a = math.exp(8 * s_a) / (math.exp(8 * s_a) + math.exp(8 * s_v))
    out = arl_modality_weights(z_a, z_v, T=8.0, entropy_floor=0.3)
    assert abs(float(out["c_a"]) - c_a) < 1e-5 and abs(c_a - 0.7752) < 1e-3
    assert abs(float(out["c_a"] + out["c_v"]) - 1) < 1e-6


def _released_numpy(out_a: np.ndarray, out_v: np.ndarray, T: float, floor: float) -> tuple[float, float]:
    """The released main_arl_variance.py sequence, step by step in numpy."""
    calc_a, calc_b = np.abs(out_a).mean(0).sum(), np.abs(out_v).mean(0).sum()

    def entropy(z: np.ndarray) -> float:
        e = np.exp(z - z.max(1, keepdims=True))
        p = e / e.sum(1, keepdims=True)
        return float(np.sum(-p * np.log(p + 1e-16), 1).mean())

    h_a, h_v = entropy(out_a), entropy(out_v)
    h_a, h_v = max(h_a / (h_a + h_v), floor), max(h_v / (h_a + h_v), floor)
    a_w, v_w = 1 / h_a, 1 / h_v
    calc_a, calc_b = calc_a / (calc_a + calc_b), calc_b / (calc_a + calc_b)
    a_w, v_w = a_w / (a_w + v_w), v_w / (a_w + v_w)
    s = np.array([calc_b * a_w * T, calc_a * v_w * T])
    e = np.exp(s - s.max())
    return tuple(e / e.sum())  # type: ignore[return-value]


@pytest.mark.parametrize("seed", range(4))
def test_weights_match_the_released_sequence(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    z_a, z_v = torch.randn(16, 6, generator=g) * 3, torch.randn(16, 6, generator=g) * 0.3  # floor active on v's side
    out = arl_modality_weights(z_a.double(), z_v.double(), T=4.0, entropy_floor=0.3)
    ref = _released_numpy(z_a.double().numpy(), z_v.double().numpy(), 4.0, 0.3)
    assert abs(float(out["c_a"]) - ref[0]) < 1e-9 and abs(float(out["c_v"]) - ref[1]) < 1e-9


def test_arl_loss_is_fused_plus_gamma_unimodal() -> None:
    z, z_a, z_v = torch.randn(5, 4), torch.randn(5, 4), torch.randn(5, 4)
    y = torch.tensor([0, 1, 2, 3, 0])

    def ce(logits: torch.Tensor) -> float:
        return float(-(logits.log_softmax(1)[torch.arange(5), y]).mean())

    loss, parts = arl_loss(z, z_a, z_v, y, gamma=4.0)
    assert abs(float(loss) - (ce(z) + 4 * (ce(z_a) + ce(z_v)))) < 1e-5
    assert abs(float(parts["loss_a"]) - ce(z_a)) < 1e-6


def test_arl_schedule_and_variants() -> None:
    za, zv = torch.tensor([[4.0, 0.0]]), torch.tensor([[0.5, 0.4]])
    paper, released, none = ARL(start_epoch=5), ARL(grad_scale="released"), ARL(grad_scale="none")
    assert float(paper.coefficients(za, zv, epoch=5)["c_a"]) == 0.5  # off until epoch > start
    assert float(paper.coefficients(za, zv, epoch=6)["c_a"]) != 0.5
    assert float(released.coefficients(za, zv, epoch=50)["c_a"]) == 0.5
    assert float(none.coefficients(za, zv, epoch=50)["c_a"]) == 0.0
    y = torch.tensor([0])
    assert abs(float(paper.loss(za, za, zv, y, 5)[0]) - float(arl_loss(za, za, zv, y, 1.0)[0])) < 1e-6  # warm-up weight 1
    assert abs(float(paper.loss(za, za, zv, y, 6)[0]) - float(arl_loss(za, za, zv, y, 4.0)[0])) < 1e-6
    with pytest.raises(ValueError, match="grad_scale"):
        ARL(grad_scale="half")
    with pytest.raises(ValueError, match="entropy_floor"):
        ARL(entropy_floor=0.7)


def test_classifier_scales_each_encoders_gradient() -> None:
    torch.manual_seed(0)
    model = ARLClassifier(num_classes=10)
    x = {"a": torch.randn(8, 64), "v": torch.randn(8, 16)}
    y = torch.randint(0, 10, (8,))

    def grads(c: tuple[float, float]) -> dict[str, torch.Tensor]:
        model.zero_grad()
        z, z_a, z_v = model.forward_all(x, (torch.tensor(c[0]), torch.tensor(c[1])))
        arl_loss(z, z_a, z_v, y, 4.0)[0].backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    base, scaled = grads((0.0, 0.0)), grads((0.7, 0.3))
    for name, g in scaled.items():
        factor = 1.7 if name.startswith("encoders.a") else 1.3 if name.startswith("encoders.v") else 1.0
        torch.testing.assert_close(g, factor * base[name])


def test_clip_input_is_frame_averaged_and_errors_are_clear() -> None:
    torch.manual_seed(0)
    enc = {"audio": {"backbone": "mlp", "input_dim": 6, "hidden_dims": [4]}, "visual": {"backbone": "cnn", "in_chans": 3}}
    model = ARLClassifier(num_classes=3, encoders=enc)
    clip = torch.randn(2, 3, 4, 8, 8)  # (B, C, T, H, W)
    h = model._encode("visual", clip, None)
    frames = torch.stack([model.encoders["visual"](clip[:, :, t]) for t in range(4)], 1).mean(1)
    torch.testing.assert_close(h, frames)
    assert model({"audio": torch.randn(2, 6), "visual": clip}).shape == (2, 3)
    with pytest.raises(ValueError, match="expects a dict with keys"):
        model({"audio": torch.randn(2, 6)})
    with pytest.raises(ValueError, match="exactly two modalities"):
        ARLClassifier(encoders={"a": enc["audio"]})
    with pytest.raises(ValueError, match="only must be one of"):
        ARLClassifier(only="z")


def test_unimodal_reference_ignores_the_other_modality() -> None:
    model = ARLClassifier(only="a").eval()
    x = {"a": torch.randn(4, 64), "v": torch.randn(4, 16)}
    torch.testing.assert_close(model(x), model({"a": x["a"], "v": 100 * torch.randn(4, 16)}))


def test_short_fit_logs_coefficients_and_unimodal_accuracies(tmp_path: object) -> None:
    torch.manual_seed(0)
    model = ARLClassifier(num_classes=10, start_epoch=0, lr=0.01)
    trainer = Trainer(max_epochs=2, limit_train_batches=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=str(tmp_path), limit_val_batches=0)
    dm = MultimodalDigitsDataModule(seed=0)
    trainer.fit(model, datamodule=dm)
    c_a = float(trainer.callback_metrics["train/c_a"])
    assert 0 < c_a < 1 and abs(c_a + float(trainer.callback_metrics["train/c_v"]) - 1) < 1e-5
    metrics = trainer.test(model, datamodule=dm, verbose=False)[0]
    assert {"test/acc", "test/acc_a", "test/acc_v", "test/balanced_acc"} <= set(metrics)
