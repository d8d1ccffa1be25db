"""DeepLinearUFM, UFMDataModule and DeepLinearHeadClassifier against the paper's objective and closed form."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch import Trainer, seed_everything

import zoo
from zoo.callbacks.neural_collapse import NeuralCollapseMonitor
from zoo.cards import render_card
from zoo.datamodules.ufm import UFMDataModule, ufm_labels
from zoo.neural_collapse import DeepLinearHeadClassifier, DeepLinearUFM, closed_form

torch.set_num_threads(1)

CARD = Path(__file__).resolve().parents[2] / "cards" / "neural-collapse"
TRAINER_KWARGS = dict(
    accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False
)


def test_defaults_build_and_hparams_are_json():
    model = DeepLinearUFM()
    assert model.H.shape == (400, 64) and len(model.layers) == 3
    assert all(layer.bias is None for layer in model.layers)
    assert json.loads(json.dumps(model.init_args()))["class_counts"] == [200, 100, 50, 50]
    assert model(torch.tensor([0, 5, 399])).shape == (3, 4)
    assert model.zoo_entry().name == "neural-collapse"


def test_closed_form_method_matches_the_theorem_values():
    cf = DeepLinearUFM(depth=3).closed_form()
    np.testing.assert_allclose(cf["mean_rel"], [0.355, 0.596, 1, 1], atol=1.5e-3)
    np.testing.assert_allclose(cf["classifier_rel"], [1, 0.592, 0.35, 0.35], atol=1.5e-3)
    cf1 = DeepLinearUFM(depth=1).closed_form()
    np.testing.assert_allclose(cf1["mean_rel"], [0.507, 0.713, 1, 1], atol=1e-3)
    np.testing.assert_allclose(cf1["classifier_rel"], [1, 0.703, 0.493, 0.493], atol=1e-3)


def test_training_step_is_the_papers_objective():
    """mse + SGD weight decay in two groups == plain SGD on the paper's full objective."""
    seed_everything(0)
    a = DeepLinearUFM(class_counts=[6, 3, 3], hidden=5, depth=2, weight_decay=1e-2, feature_decay=3e-2)
    b = DeepLinearUFM(class_counts=[6, 3, 3], hidden=5, depth=2, weight_decay=1e-2, feature_decay=3e-2)
    b.load_state_dict(a.state_dict())
    idx, y = torch.arange(12), ufm_labels([6, 3, 3], seed=0)
    # independent objective: (1/2N)||W2 W1 H^T - Y||^2 + lw/2 (||W1||^2 + ||W2||^2) + lh/2 ||H||^2
    W = b.layers[1].weight @ b.layers[0].weight
    Y = torch.nn.functional.one_hot(y, 3).float()
    ref = (W @ b.H.T - Y.T).pow(2).sum() / 24 + 1e-2 / 2 * sum(m.weight.pow(2).sum() for m in b.layers) + 3e-2 / 2 * b.H.pow(2).sum()
    assert float(b.objective(idx, y)[1]) == pytest.approx(float(ref), rel=1e-6)
    opt_a = a.configure_optimizers()
    opt_b = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        opt_a.zero_grad()
        mse = (a(idx) - Y).pow(2).sum() / 24
        mse.backward()
        opt_a.step()
        opt_b.zero_grad()
        b.objective(idx, y)[1].backward()
        opt_b.step()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-7, msg=name)


def test_datamodule_full_batches_and_seeds():
    dm = UFMDataModule(class_counts=[200, 100, 50, 50], seed=3)
    dm.setup()
    batches = list(dm.train_dataloader())
    assert len(batches) == 1
    idx, y = batches[0]
    assert torch.equal(idx, torch.arange(400))
    assert torch.bincount(y).tolist() == [200, 100, 50, 50]
    assert torch.equal(y, ufm_labels([200, 100, 50, 50], 3))
    assert not torch.equal(y, ufm_labels([200, 100, 50, 50], 4))
    small = UFMDataModule(class_counts=[5, 4], batch_size=4)
    assert [len(b[0]) for b in small.train_dataloader()] == [4, 4, 1]
    with pytest.raises(ValueError, match="class_counts"):
        UFMDataModule(class_counts=[3])


def _set_closed_form_solution(model: DeepLinearUFM, labels: torch.Tensor) -> None:
    """Depth 1: h_i = mu_{y_i}, orthogonal means with norms^2 = hh, W = diag(dual) M."""
    hp = model.hparams
    cf = closed_form(hp.class_counts, 1, hp.weight_decay, hp.feature_decay)
    basis = torch.linalg.qr(torch.randn(hp.hidden, len(hp.class_counts), dtype=torch.float64))[0].T
    means = basis * torch.tensor(np.sqrt(cf.hh)).unsqueeze(1)
    with torch.no_grad():
        model.H.copy_(means[labels].float())
        model.layers[0].weight.copy_((means * torch.tensor(cf.dual).unsqueeze(1)).float())


def test_test_step_logs_zero_error_on_the_closed_form_solution():
    seed_everything(0)
    dm = UFMDataModule(class_counts=[200, 100, 50, 50], seed=1)
    dm.setup()
    model = DeepLinearUFM(depth=1, hidden=8)
    _set_closed_form_solution(model, dm.labels)
    out = Trainer(**TRAINER_KWARGS).test(model, dm, verbose=False)[0]
    for key in ("test/NC1", "test/NC2_W", "test/NC2_H", "test/NC3", "test/mean_norm_err", "test/classifier_norm_err", "test/means_max_cos"):
        assert out[key] < 1e-5, (key, out[key])
    assert out["test/ETF_NC2_W"] > 0.3 and out["test/ETF_NC2_H"] > 0.3 and out["test/ETF_NC3"] > 0.3
    np.testing.assert_allclose([out[f"test/mean_rel_{k}"] for k in range(4)], [0.507, 0.713, 1, 1], atol=1e-3)
    assert out["test/acc"] == 1.0
    # every metric the claim reads from the test step is logged
    claim = yaml.safe_load((CARD / "claim.yaml").read_text())
    test_keys = {v for v in claim["metrics"].values() if v.startswith("test/")}
    assert test_keys <= set(out)


def test_test_step_rejects_mismatched_data():
    model = DeepLinearUFM(class_counts=[300, 50, 25, 25], hidden=8)
    with pytest.raises(ValueError, match="class counts"):
        Trainer(**TRAINER_KWARGS).test(model, UFMDataModule(class_counts=[200, 100, 50, 50]), verbose=False)


def test_short_training_approaches_the_closed_form():
    """400 full-batch steps of the depth-1 UFM: NC1 falls and the norms head to the closed form."""
    seed_everything(0)
    model, dm = DeepLinearUFM(depth=1, hidden=16), UFMDataModule(seed=0)
    monitor = NeuralCollapseMonitor(every_n_epochs=100, geometry="imbalanced_orthogonal", weight_decay=5e-4, feature_decay=5e-4)
    trainer = Trainer(max_epochs=400, callbacks=[monitor], log_every_n_steps=50, **TRAINER_KWARGS)
    trainer.fit(model, dm)
    nc1 = [h["NC1"] for h in monitor.history]
    assert len(nc1) == 4 and nc1[-1] < nc1[0] and nc1[-1] < 5e-3
    out = trainer.test(model, dm, verbose=False)[0]
    assert out["test/NC1"] == pytest.approx(nc1[-1], rel=1e-4)  # the monitor and the module agree
    assert out["test/mean_norm_err"] < 0.08 and out["test/classifier_norm_err"] < 0.08
    assert out["test/ETF_NC2_H"] > 5 * out["test/NC2_H"]


def test_hub_round_trip(tmp_path):
    model = DeepLinearUFM(class_counts=[3, 2], hidden=4, depth=2).eval()
    model.save_pretrained(tmp_path)
    loaded = zoo.load(tmp_path)
    assert type(loaded) is DeepLinearUFM
    idx = torch.arange(5)
    assert torch.equal(model(idx), loaded(idx))
    assert "nc_paper.counts" not in model.state_dict()  # metric states are not weights


def test_card_renders():
    card = render_card(zoo.get_entry("neural-collapse"), DeepLinearUFM().init_args(), metrics={"test/NC1": 1e-4})
    assert card.data.library_name == "balance-zoo" and "{{" not in str(card)


def test_head_classifier_with_the_monitor():
    """The full.yaml model on random images: one epoch with the monitor over its 3 bias-free head layers."""
    seed_everything(0)
    model = DeepLinearHeadClassifier(num_classes=3, in_features=12, width=8, depth_relu=2, depth_linear=3, lr=1e-3)
    assert all(m.bias is None for m in model.head)
    x, y = torch.randn(24, 3, 2, 2), torch.arange(3).repeat(8)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=24)
    monitor = NeuralCollapseMonitor(every_n_epochs=1, classifier=3, geometry="imbalanced_orthogonal", weight_decay=1e-5, feature_decay=1e-5)
    trainer = Trainer(max_epochs=1, callbacks=[monitor], **TRAINER_KWARGS)
    trainer.fit(model, loader)
    assert monitor._classifier_names == ["head.0", "head.1", "head.2"]
    assert np.isfinite([monitor.history[0][k] for k in ("NC1", "NC2_W", "NC2_H", "NC3")]).all()
    with pytest.raises(ValueError, match="loss"):
        DeepLinearHeadClassifier(loss="hinge")
