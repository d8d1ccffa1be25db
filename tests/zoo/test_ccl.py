"""Counter-current learning: the local losses by hand, locality of every gradient, the modes and a short fit."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from zoo.ccl import (
    CounterCurrentAutoencoder,
    CounterCurrentClassifier,
    CounterCurrentMLP,
    ccl_autoencoder_loss,
    ccl_classification_loss,
    confident_mask,
    similarity_loss,
)
from zoo.datamodules.digits import DigitsDataModule


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def test_similarity_loss_matches_a_hand_loop() -> None:
    torch.manual_seed(0)
    a, c, y = torch.randn(5, 3), torch.randn(4, 3), torch.tensor([0, 3, 1, 1, 2])
    target = F.one_hot(y, 4).float()
    total = 0.0
    for i in range(5):
        for k in range(4):
            s = sum(float(a[i, j] * c[k, j]) for j in range(3))
            total += (s - float(target[i, k])) ** 2
    expected = 256 * 0.5 * total / 20 / 3
    assert float(similarity_loss(a, c, target, 0.5)) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="share d"):
        similarity_loss(a, torch.randn(4, 2), target)
    with pytest.raises(ValueError, match="target"):
        similarity_loss(a, c, target[:, :3])


def test_feedback_net_runs_the_identity_down_the_transposed_shapes() -> None:
    torch.manual_seed(0)
    net = CounterCurrentMLP([6, 5, 4, 3])
    sigs = net.reverse_all(torch.eye(3))
    layers = net.layers
    c2 = F.elu(torch.eye(3) @ layers[2].backward_layer.weight.T)
    c1 = F.elu(c2 @ layers[1].backward_layer.weight.T)
    c0 = c1 @ layers[0].backward_layer.weight.T  # bottom feedback layer is linear
    for got, want in zip(sigs, [c0, c1, c2, torch.eye(3)]):
        torch.testing.assert_close(got, want)
    acts = net.forward_all(torch.randn(2, 6))
    assert [a.shape[1] for a in acts] == [6, 5, 4, 3]


def _grad_owners(net: CounterCurrentMLP, loss: torch.Tensor) -> list[str]:
    net.zero_grad()
    loss.backward()
    return [name for name, p in net.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]


def test_no_gradient_crosses_a_layer() -> None:
    """Each pair's loss reaches exactly W_l and B_{l+1}; pair 0 only B_1; CE only W_L (the paper's locality)."""
    torch.manual_seed(0)
    net = CounterCurrentMLP([6, 5, 4, 3])
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    target = F.one_hot(y, 3).float()
    for layer in range(3):  # pair (a_l, c_l)
        acts, sigs = net.forward_all(x), net.reverse_all(torch.eye(3))
        owners = _grad_owners(net, similarity_loss(acts[layer], sigs[layer], target))
        want = [f"layers.{layer - 1}.forward_layer.weight"] if layer > 0 else []
        want.append(f"layers.{layer}.backward_layer.weight")
        assert sorted(owners) == sorted(want), layer
    acts = net.forward_all(x)
    assert _grad_owners(net, F.cross_entropy(acts[-1], y)) == ["layers.2.forward_layer.weight"]
    # the whole CCL loss: W_1's gradient is that of its own pair alone, nothing from the layers above
    acts, sigs = net.forward_all(x), net.reverse_all(torch.eye(3))
    assert len(_grad_owners(net, ccl_classification_loss(acts, sigs, y))) == 6
    whole = net.layers[0].forward_layer.weight.grad.clone()
    acts, sigs = net.forward_all(x), net.reverse_all(torch.eye(3))
    _grad_owners(net, similarity_loss(acts[1], sigs[1], target))
    torch.testing.assert_close(whole, net.layers[0].forward_layer.weight.grad)
    # backprop mode does cross layers (the test would catch a missing detach the other way round)
    acts = net.forward_all(x, detach=False)
    assert len(_grad_owners(net, F.cross_entropy(acts[-1], y))) == 3


def test_classification_loss_is_the_sum_of_local_terms_and_ce() -> None:
    torch.manual_seed(1)
    net = CounterCurrentMLP([6, 5, 3])
    x, y = torch.randn(4, 6), torch.tensor([0, 1, 2, 0])
    acts, sigs = net.forward_all(x), net.reverse_all(torch.eye(3))
    t = F.one_hot(y, 3).float()
    want = sum(256 * 0.5 * F.mse_loss(a @ c.T, t) / a.shape[1] for a, c in zip(acts[:2], sigs[:2])) + F.cross_entropy(acts[2], y)
    torch.testing.assert_close(ccl_classification_loss(acts, sigs, y, 0.5), want)
    with pytest.raises(ValueError, match="anti-parallel"):
        ccl_classification_loss(acts, sigs[1:], y)


def test_confident_mask_drops_samples_already_learnt() -> None:
    logits = torch.tensor([[10.0, 0.0], [0.0, 0.0], [0.0, 10.0]])
    y = torch.tensor([0, 0, 0])
    assert confident_mask(logits, y, 0.1).flatten().tolist() == [0.0, 1.0, 1.0]
    assert confident_mask(logits, y, 0.0).flatten().tolist() == [1.0, 1.0, 1.0]
    # p_y = 0.85: still learnt from, whatever the switch's value (the official 0.1 is fixed)
    p85 = torch.tensor([[0.85, 0.15]]).log()
    assert confident_mask(p85, torch.tensor([0]), 0.2).item() == 1.0
    assert confident_mask(torch.tensor([[0.95, 0.05]]).log(), torch.tensor([0]), 0.2).item() == 0.0


def test_autoencoder_loss_by_hand_and_locality() -> None:
    torch.manual_seed(2)
    net = CounterCurrentMLP([6, 4, 6])
    x = torch.randn(3, 6)
    acts, sigs = net.forward_all(x), net.reverse_all(x)
    unit = [(v - v.mean(-1, keepdim=True)) / ((v - v.mean(-1, keepdim=True)).norm(dim=-1, keepdim=True) + 1e-8) for v in (acts[1], sigs[1])]
    want = 2 * F.mse_loss(acts[1], sigs[1]) + 3 * F.mse_loss(*unit) + 2 * (F.mse_loss(x, sigs[0]) + F.mse_loss(acts[2], x))
    torch.testing.assert_close(ccl_autoencoder_loss(acts, sigs, 2.0, 3.0), want)
    assert sorted(_grad_owners(net, F.mse_loss(acts[2], x))) == ["layers.1.forward_layer.weight"]


def test_bad_arguments_say_what_to_fix() -> None:
    with pytest.raises(ValueError, match="mode"):
        CounterCurrentClassifier([4, 2], mode="fa")
    with pytest.raises(ValueError, match="learning rates"):
        CounterCurrentClassifier([4, 2], lr_F=0)
    with pytest.raises(ValueError, match="activation"):
        CounterCurrentClassifier([4, 2], act="gelu2")
    with pytest.raises(ValueError, match="at least two"):
        CounterCurrentMLP([4])
    with pytest.raises(ValueError, match="input width"):
        CounterCurrentAutoencoder([4, 2, 3])


def _fit(model: L.LightningModule, epochs: int) -> L.Trainer:
    trainer = L.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, DigitsDataModule(64, 0, 0.05, 0.3, normalize=False))
    return trainer


def test_top_only_leaves_hidden_layers_and_the_feedback_net_unchanged() -> None:
    L.seed_everything(0)
    model = CounterCurrentClassifier([64, 16, 10], mode="top_only")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _fit(model, 1)
    after = model.state_dict()
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    assert changed == ["net.layers.1.forward_layer.weight"]


def test_ccl_learns_digits_and_trains_both_nets() -> None:
    L.seed_everything(0)
    model = CounterCurrentClassifier([64, 32, 10])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = _fit(model, 3)
    assert all(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    trainer.test(model, DigitsDataModule(64, 0, 0.05, 0.3, normalize=False), verbose=False)
    assert float(trainer.callback_metrics["test/acc"]) > 0.8  # chance is 0.1


def test_autoencoder_reconstructs_better_than_at_init() -> None:
    L.seed_everything(0)
    model = CounterCurrentAutoencoder([64, 32, 16, 32, 64])
    x = DigitsDataModule(64, 0, 0.05, 0.3, normalize=False)
    x.setup()
    data = x.val_set.tensors[0]
    with torch.no_grad():
        start = float(F.mse_loss(model(data), data))
    _fit(model, 5)
    with torch.no_grad():
        assert float(F.mse_loss(model(data), data)) < 0.8 * start


def _first_update(**kwargs: float) -> tuple[float, float]:
    """Norms of the forward and feedback nets' change after one training batch."""
    L.seed_everything(0)
    model = CounterCurrentClassifier([64, 16, 10], momentum_F=0.0, momentum_B=0.0, **kwargs)
    f0 = torch.cat([p.detach().flatten().clone() for p in model.net.forward_params()])
    b0 = torch.cat([p.detach().flatten().clone() for p in model.net.backward_params()])
    trainer = L.Trainer(
        max_epochs=1, limit_train_batches=1, limit_val_batches=0,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(model, DigitsDataModule(64, 0, 0.05, 0.3, normalize=False))
    f1 = torch.cat([p.detach().flatten() for p in model.net.forward_params()])
    b1 = torch.cat([p.detach().flatten() for p in model.net.backward_params()])
    return float((f1 - f0).norm()), float((b1 - b0).norm())


def test_each_net_is_clipped_on_its_own_and_warmup_scales_the_loss() -> None:
    f, b = _first_update(lr_F=1.0, lr_B=1.0, grad_clip_F=1e-3, grad_clip_B=2e-3)
    assert f == pytest.approx(1e-3, rel=1e-3) and b == pytest.approx(2e-3, rel=1e-3)  # SGD step = lr * clipped gradient
    full = _first_update(lr_F=0.01, lr_B=0.01, grad_clip_F=0.0, grad_clip_B=0.0)
    warm = _first_update(lr_F=0.01, lr_B=0.01, grad_clip_F=0.0, grad_clip_B=0.0, warmup_steps=4)
    assert warm[0] == pytest.approx(full[0] / 4, rel=1e-4) and warm[1] == pytest.approx(full[1] / 4, rel=1e-4)
