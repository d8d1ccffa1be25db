"""NeuralCollapseMetrics / NeuralCollapseMonitor against hand-built features, numpy references and DDP."""

from __future__ import annotations

import math
import random
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, WeightedRandomSampler

from tests.conftest import CrashAt, ForeignClassifier, Job, SimulatedCrash, run_ddp
from zoo.callbacks.neural_collapse import NeuralCollapseMonitor
from zoo.neural_collapse import (
    NeuralCollapseMetrics,
    between_class_covariance,
    closed_form,
    closed_form_relative_norms,
    closed_form_x,
    etf_target,
    nc1,
    nc1_from_means,
    neural_collapse,
    within_class_covariance,
)

torch.set_num_threads(1)

TRAINER_KWARGS = dict(
    accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0
)


# ------------------------------------------------------------------------------ references
def ref_closed_form_x(counts: list[int], M: int, lam_w: float, lam_h: float) -> np.ndarray:
    """Largest positive real root of c (x^M + 1)^2 - M x^(M-1) = 0, c = b / n_k, by numpy.roots."""
    N = sum(counts)
    b = M * N * (N * lam_w**M * lam_h) ** (1 / M)
    out = []
    for n in counts:
        c = b / n
        coef = np.zeros(2 * M + 1)
        coef[0] += c
        coef[M] += 2 * c
        coef[2 * M] += c
        coef[M + 1] -= M
        roots = np.roots(coef)
        real = roots[(np.abs(roots.imag) < 1e-7) & (roots.real > 0)].real
        out.append(real.max() if len(real) else 0.0)
    return np.array(out)


def ref_nc(feats: np.ndarray, labels: np.ndarray, W: np.ndarray, t_w: np.ndarray, t_h: np.ndarray, dual=None, center=True):
    """A naive loop over samples, written apart from the module (float64 numpy)."""
    K = W.shape[0]
    N = len(labels)
    mus = np.stack([feats[labels == k].mean(0) for k in range(K)])
    mu_g = feats.mean(0)
    sw = sum(np.outer(h - mus[y], h - mus[y]) for h, y in zip(feats, labels)) / N
    sb = sum(np.outer(m - mu_g, m - mu_g) for m in mus) / K
    out = {"NC1": np.trace(sw @ np.linalg.pinv(sb, rcond=1e-6, hermitian=True)) / K}
    H = mus - mu_g if center else mus

    def unit(a):
        return a / np.linalg.norm(a)

    out["NC2_W"] = np.linalg.norm(unit(W @ W.T) - unit(t_w))
    out["NC2_H"] = np.linalg.norm(unit(H @ H.T) - unit(t_h))
    D = np.eye(K) if dual is None else np.diag(dual)
    out["NC3"] = np.linalg.norm(unit(W) - unit(D @ H))
    return out


def blobs(n_per_class: list[int], dim: int = 8, noise: float = 0.5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(len(n_per_class), dim, generator=g) * 2
    y = torch.repeat_interleave(torch.arange(len(n_per_class)), torch.tensor(n_per_class))
    x = centers[y] + noise * torch.randn(len(y), dim, generator=g)
    return x, y


# ------------------------------------------------------------------------------ closed form
def test_closed_form_matches_hand_computed_norms_depth_1():
    means, rows = closed_form_relative_norms([200, 100, 50, 50], 1, 5e-4, 5e-4)
    np.testing.assert_allclose(means, [0.507, 0.713, 1, 1], atol=1e-3)
    np.testing.assert_allclose(rows, [1, 0.703, 0.493, 0.493], atol=1e-3)
    # M = 1 has the explicit root x_k = sqrt(n_k / b) - 1 with b = N^2 lambda_W lambda_H
    b = 400**2 * 5e-4 * 5e-4
    np.testing.assert_allclose(closed_form_x([200, 100, 50, 50], 1, 5e-4, 5e-4), np.sqrt(np.array([200, 100, 50, 50]) / b) - 1, rtol=1e-12)


def test_closed_form_matches_hand_computed_norms_depth_3():
    means, rows = closed_form_relative_norms([200, 100, 50, 50], 3, 5e-4, 5e-4)
    np.testing.assert_allclose(means, [0.355, 0.596, 1, 1], atol=1.5e-3)
    np.testing.assert_allclose(rows, [1, 0.592, 0.350, 0.350], atol=1.5e-3)
    # non-monotone in n_k: the largest class has the shortest class mean
    assert means[0] < means[1] < means[2]


@pytest.mark.parametrize("M", [1, 2, 3, 6])
@pytest.mark.parametrize("counts", [[200, 100, 50, 50], [100, 100, 100, 100], [500, 40, 7]])
def test_closed_form_x_is_the_largest_root(M, counts):
    lam = 5e-4 if M < 6 else 2e-3
    np.testing.assert_allclose(closed_form_x(counts, M, lam, lam), ref_closed_form_x(counts, M, lam, lam), rtol=1e-6, atol=1e-9)


def test_minority_collapse_gives_zero_and_finite_metrics():
    counts = [200, 100, 50, 5]
    x = closed_form_x(counts, 3, 5e-3, 5e-3)
    assert x[3] == 0 and (x[:3] > 0).all()
    np.testing.assert_allclose(x, ref_closed_form_x(counts, 3, 5e-3, 5e-3), rtol=1e-6)
    cf = closed_form(counts, 3, 5e-3, 5e-3)
    assert cf.ww[3] == 0 and cf.hh[3] == 0 and np.isfinite(cf.dual).all()
    # features that follow the collapsed geometry give finite metrics, ~0 for the paper's target
    K, d = 4, 6
    basis = torch.linalg.qr(torch.randn(d, K, dtype=torch.float64))[0].T  # orthonormal rows
    means = basis * torch.tensor(np.sqrt(cf.hh)).unsqueeze(1)
    W = means * torch.tensor(cf.dual).unsqueeze(1)
    y = torch.repeat_interleave(torch.arange(K), torch.tensor(counts))
    out = neural_collapse(means[y], y, W, "imbalanced_orthogonal", 3, 5e-3, 5e-3)
    assert all(math.isfinite(float(v)) for v in out.values())
    assert float(out["NC2_W"]) < 1e-9 and float(out["NC2_H"]) < 1e-9 and float(out["NC3"]) < 1e-9


def test_closed_form_rejects_missing_regularisation():
    with pytest.raises(ValueError, match="weight_decay > 0"):
        closed_form_x([2, 1], 1, 0.0, 1e-3)
    with pytest.raises(ValueError, match="geometry"):
        NeuralCollapseMetrics(3, 4, geometry="simplex")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="weight_decay"):
        NeuralCollapseMetrics(3, 4, geometry="imbalanced_orthogonal")


# ------------------------------------------------------------------------------ metrics
def test_nc1_by_hand():
    # d = 1: class 0 = {0, 2}, class 1 = {4, 6}: Sigma_W = 1, Sigma_B = ((1-3)^2 + (5-3)^2)/2 = 4, NC1 = (1/2)(1/4)
    feats = torch.tensor([[0.0], [2.0], [4.0], [6.0]])
    y = torch.tensor([0, 0, 1, 1])
    out = neural_collapse(feats, y, torch.ones(2, 1))
    assert float(out["NC1"]) == pytest.approx(0.125, rel=1e-12)
    assert float(nc1(torch.tensor([[1.0]]), torch.tensor([[4.0]]), 2)) == pytest.approx(0.125)


@pytest.mark.parametrize("dim", [2, 6, 40])
def test_fast_nc1_equals_the_pseudo_inverse_formula(dim):
    """NC1 from the K x K Gram of the centred means == tr(Sigma_W pinv(Sigma_B)) / K, also rank-deficient."""
    x, y = blobs([30, 20, 10, 10, 5], dim=dim, seed=2)
    x = x.double()
    x[y == 4] = x[y == 4] - x[y == 4].mean(0) + x.mean(0)  # a class whose mean sits near the global mean
    counts, sums = torch.bincount(y), torch.zeros(5, dim, dtype=torch.float64).index_add_(0, y, x)
    sigma_w = within_class_covariance(counts, sums, x.T @ x)
    centred = sums / counts.unsqueeze(1) - x.mean(0)
    slow = nc1(sigma_w, between_class_covariance(counts, sums), 5)
    assert float(nc1_from_means(sigma_w, centred)) == pytest.approx(float(slow), rel=1e-8)


def test_exact_collapse_to_an_etf_is_zero():
    K, d = 5, 7
    basis = torch.linalg.qr(torch.randn(d, K, dtype=torch.float64))[0].T
    centred = 3.0 * etf_target(K) @ basis  # rows: a simplex ETF (they sum to zero)
    means = centred + torch.randn(d, dtype=torch.float64)  # ... around a global mean
    y = torch.arange(K).repeat(4)  # balanced, so the global mean is the ETF's centre
    W = 0.5 * centred
    out = neural_collapse(means[y], y, W, geometry="etf")
    for key in ("NC1", "NC2_W", "NC2_H", "NC3"):
        assert float(out[key]) < 1e-10, (key, out)
    # the same features are far from the bias-free imbalanced target (orthogonal, non-centred)
    bad = neural_collapse(means[y], y, W, "imbalanced_orthogonal", 1, 5e-4, 5e-4)
    assert float(bad["NC2_H"]) > 0.3


def test_paper_geometry_is_zero_on_its_own_solution_and_the_etf_is_not():
    counts = [200, 100, 50, 50]
    cf = closed_form(counts, 3, 5e-4, 5e-4)
    basis = torch.linalg.qr(torch.randn(10, 4, dtype=torch.float64))[0].T
    means = basis * torch.tensor(np.sqrt(cf.hh)).unsqueeze(1)
    W = means * torch.tensor(cf.dual).unsqueeze(1)
    y = torch.repeat_interleave(torch.arange(4), torch.tensor(counts))
    paper = neural_collapse(means[y], y, W, "imbalanced_orthogonal", 3, 5e-4, 5e-4)
    etf = neural_collapse(means[y], y, W, "etf")
    for key in ("NC1", "NC2_W", "NC2_H", "NC3"):
        assert float(paper[key]) < 1e-10, (key, paper)
    assert float(etf["NC2_W"]) > 0.3 and float(etf["NC2_H"]) > 0.3
    # scale invariance: NC2/NC3 only see directions and ratios
    scaled = neural_collapse(5 * means[y], y, 0.1 * W, "imbalanced_orthogonal", 3, 5e-4, 5e-4)
    assert float(scaled["NC3"]) < 1e-10


@pytest.mark.parametrize("geometry", ["etf", "imbalanced_orthogonal"])
def test_against_numpy_reference(geometry):
    counts = [30, 20, 10]
    x, y = blobs(counts, dim=6)
    x = x.double()
    W = torch.randn(3, 6, dtype=torch.float64)
    kwargs = dict(depth=2, weight_decay=1e-3, feature_decay=1e-3) if geometry != "etf" else {}
    out = neural_collapse(x, y, W, geometry, **kwargs)
    if geometry == "etf":
        t_w = t_h = etf_target(3).numpy()
        dual, center = None, True
    else:
        cf = closed_form(counts, 2, 1e-3, 1e-3)
        t_w, t_h, dual, center = np.diag(cf.ww), np.diag(cf.hh), cf.dual, False
    ref = ref_nc(x.numpy(), y.numpy(), W.numpy(), t_w, t_h, dual, center)
    for key, value in ref.items():
        assert float(out[key]) == pytest.approx(value, rel=1e-8, abs=1e-12), key


def test_batched_accumulation_equals_one_shot():
    x, y = blobs([40, 25, 15, 10], dim=5, seed=1)
    x = x.double()  # float64 features: batching changes nothing beyond float64 round-off
    W = torch.randn(4, 5)
    perm = torch.randperm(len(y))
    x, y = x[perm], y[perm]
    metric = NeuralCollapseMetrics(4, 5, "imbalanced_orthogonal", depth=2, weight_decay=1e-3, feature_decay=2e-3)
    for xb, yb in zip(x.split(7), y.split(7)):
        metric.update(xb, yb)
    metric.set_classifier(W)
    batched = metric.compute()
    one_shot = neural_collapse(x, y, W, "imbalanced_orthogonal", 2, 1e-3, 2e-3)
    for key in one_shot:
        assert float(batched[key]) == pytest.approx(float(one_shot[key]), rel=1e-10)
    assert metric.counts.tolist() == [40, 25, 15, 10]
    # a new classifier invalidates the cached value
    metric.set_classifier(2 * W + 1)
    assert float(metric.compute()["NC2_W"]) != pytest.approx(float(batched["NC2_W"]))
    metric.reset()
    with pytest.raises(ValueError, match="no samples"):
        metric.compute()


def test_float32_statistics_stay_accurate_on_collapsed_features():
    """Features near collapse (spread 1e-3 around means of norm ~100): float32 in, NC1 as from float64."""
    x, y = blobs([40, 25, 15, 10], dim=32, seed=4)
    x64 = (100 * x[torch.tensor([0, 40, 65, 80])][y] + 1e-3 * torch.randn(len(y), 32)).double()
    W = torch.randn(4, 32)
    reference = neural_collapse(x64, y, W)
    metric = NeuralCollapseMetrics(4, 32)
    for xb, yb in zip(x64.float().split(16), y.split(16)):
        metric.update(xb, yb)
    metric.set_classifier(W)
    got = metric.compute()
    for key in reference:  # the float32 rounding of the inputs is the only difference left
        assert float(got[key]) == pytest.approx(float(neural_collapse(x64.float().double(), y, W)[key]), rel=1e-5), key
    assert float(got["NC1"]) == pytest.approx(float(reference["NC1"]), rel=1e-3)


def test_metric_input_errors():
    metric = NeuralCollapseMetrics(3, 4)
    with pytest.raises(ValueError, match="feature_dim"):
        metric.update(torch.randn(5, 3), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        metric.update(torch.randn(2, 4), torch.tensor([0, 3]))
    metric.update(torch.randn(2, 4), torch.tensor([0, 1]))
    with pytest.raises(RuntimeError, match="set_classifier"):
        metric.compute()


# ------------------------------------------------------------------------------ the callback
def TinyMLP(lr: float = 0.1) -> ForeignClassifier:
    """The shared foreign classifier (8 -> 16 -> 3, SGD): a plain module that knows nothing of balance-zoo."""
    return ForeignClassifier(in_features=8, hidden=16, num_classes=3, lr=lr)


def loader(n_per_class=(24, 24, 16), batch_size=16, shuffle=False):
    x, y = blobs(list(n_per_class))
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle)


def expected_from_model(model: ForeignClassifier, dl: DataLoader) -> dict[str, float]:
    x, y = dl.dataset.tensors
    with torch.no_grad():
        feats = model.net[1](model.net[0](x))
    out = neural_collapse(feats, y, model.net[2].weight)
    return {k: float(v) for k, v in out.items()}


class _AssertTrainMode(Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        assert pl_module.training


def test_monitor_drops_into_a_plain_module():
    seed_everything(0)
    model, dl = TinyMLP(), loader(shuffle=True)
    monitor = NeuralCollapseMonitor(every_n_epochs=2)
    trainer = Trainer(max_epochs=5, callbacks=[monitor, _AssertTrainMode()], enable_checkpointing=False, **TRAINER_KWARGS)
    trainer.fit(model, dl)
    assert [h["epoch"] for h in monitor.history] == [1, 3]  # after epochs 2 and 4 (1-based)
    for key in ("NC1", "NC2_W", "NC2_H", "NC3"):
        assert f"nc/{key}" in trainer.callback_metrics
    # it trained one more epoch since the last measurement: measure the final model directly
    values = monitor.measure(trainer, model)
    expected = expected_from_model(model, dl)
    for key, value in expected.items():
        assert values[key] == pytest.approx(value, rel=1e-5, abs=1e-8), key
    assert model.training  # restored
    fig = monitor.plot()
    assert len(fig.axes[0].lines) == 4


def test_monitor_logs_the_last_measurement():
    seed_everything(0)
    model, dl = TinyMLP(), loader()
    monitor = NeuralCollapseMonitor(every_n_epochs=3, prefix="collapse")
    trainer = Trainer(max_epochs=3, callbacks=[monitor], enable_checkpointing=False, **TRAINER_KWARGS)
    trainer.fit(model, dl)
    expected = expected_from_model(model, dl)  # measured after the last epoch: the final model
    for key, value in expected.items():
        assert float(trainer.callback_metrics[f"collapse/{key}"]) == pytest.approx(value, rel=1e-5, abs=1e-8)
        assert monitor.history[-1][key] == pytest.approx(value, rel=1e-5, abs=1e-8)


class NoLinear(LightningModule):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 3, 8)

    def forward(self, x):
        return self.conv(x.unsqueeze(1)).squeeze(-1)

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_one_clear_error_at_setup():
    trainer = Trainer(max_epochs=1, callbacks=[NeuralCollapseMonitor()], enable_checkpointing=False, **TRAINER_KWARGS)
    with pytest.raises(RuntimeError, match="needs an nn.Linear classifier"):
        trainer.fit(NoLinear(), loader())
    trainer = Trainer(max_epochs=1, callbacks=[NeuralCollapseMonitor(classifier=["net.1"])], enable_checkpointing=False, **TRAINER_KWARGS)
    with pytest.raises(RuntimeError, match="'net.1' is a ReLU"):
        trainer.fit(TinyMLP(), loader())
    trainer = Trainer(max_epochs=1, callbacks=[NeuralCollapseMonitor(classifier=["net.2", "net.0"])], enable_checkpointing=False, **TRAINER_KWARGS)
    with pytest.raises(RuntimeError, match="chain in forward order"):
        trainer.fit(TinyMLP(), loader())


def test_named_layers_and_product_classifier():
    """Features at the input of net.0 and W = net.2 @ net.0 on a model without the ReLU (deep linear)."""
    seed_everything(0)
    model = TinyMLP()
    model.net[1] = nn.Identity()
    dl = loader()
    monitor = NeuralCollapseMonitor(every_n_epochs=1, classifier=["net.0", "net.2"])
    trainer = Trainer(max_epochs=1, callbacks=[monitor], enable_checkpointing=False, **TRAINER_KWARGS)
    trainer.fit(model, dl)
    x, y = dl.dataset.tensors
    W = model.net[2].weight @ model.net[0].weight
    expected = neural_collapse(x, y, W.detach())
    for key, value in expected.items():
        assert monitor.history[-1][key] == pytest.approx(float(value), rel=1e-5, abs=1e-8), key


# ------------------------------------------------------------------------------ leaves the run alone
class Jittered(TensorDataset):
    """Blobs with a random jitter per access from torch, numpy and Python RNGs: an augmenting dataset."""

    def __getitem__(self, i):
        x, y = super().__getitem__(i)
        return x + 0.1 * torch.randn_like(x) + 0.01 * float(np.random.randn()) + 0.01 * random.random(), y


def _shuffled(kind: str) -> DataLoader:
    """A shuffled train loader that draws from its own generator or the global RNG, augments, or resamples."""
    x, y = blobs([24, 24, 16])
    if kind == "generator":
        return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(3))
    if kind == "class-balanced":  # draws with replacement from the global RNG, as imbalanced recipes do
        return DataLoader(TensorDataset(x, y), batch_size=16, sampler=WeightedRandomSampler(1.0 / torch.bincount(y)[y], len(y)))
    return DataLoader((Jittered if kind == "augmented" else TensorDataset)(x, y), batch_size=16, shuffle=True)


@pytest.mark.parametrize("kind", ["generator", "global", "augmented", "class-balanced"])
def test_a_seeded_run_is_bit_identical_with_and_without_the_monitor(kind):
    def final_weights(monitor: bool) -> dict[str, torch.Tensor]:
        seed_everything(0)
        model = TinyMLP()
        callbacks = [NeuralCollapseMonitor(every_n_epochs=1, classifier=["net.2"])] if monitor else []
        Trainer(max_epochs=4, callbacks=callbacks, enable_checkpointing=False, **TRAINER_KWARGS).fit(model, _shuffled(kind))
        return {k: v.clone() for k, v in model.state_dict().items()}

    without, with_monitor = final_weights(False), final_weights(True)
    for key, value in without.items():
        assert torch.equal(with_monitor[key], value), (key, float((with_monitor[key] - value).abs().max()))


class CleanAndJittered(LightningDataModule):
    """Trains on jittered blobs; ``eval_train_dataloader`` gives the same samples clean, in order."""

    def __init__(self, hook: bool = True) -> None:
        super().__init__()
        self.x, self.y = blobs([24, 24, 16])
        if hook:
            self.eval_train_dataloader = lambda: DataLoader(TensorDataset(self.x, self.y), batch_size=64)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(Jittered(self.x, self.y), batch_size=16, shuffle=True)


def test_measures_unaugmented_features_when_the_datamodule_gives_them():
    seed_everything(0)
    model, monitor = TinyMLP(), NeuralCollapseMonitor(every_n_epochs=2, classifier=["net.2"])
    Trainer(max_epochs=2, callbacks=[monitor], enable_checkpointing=False, **TRAINER_KWARGS).fit(model, CleanAndJittered())
    expected = expected_from_model(model, loader())  # the clean blobs through the final model
    for key, value in expected.items():
        assert monitor.history[-1][key] == pytest.approx(value, rel=1e-5, abs=1e-8), key


def test_without_the_hook_it_measures_the_train_dataset_in_order():
    """No ``eval_train_dataloader``: the train dataset itself, each sample once, unshuffled."""
    seed_everything(0)
    model, monitor = TinyMLP(), NeuralCollapseMonitor(every_n_epochs=2, classifier=["net.2"], max_batches=3)
    trainer = Trainer(max_epochs=2, callbacks=[monitor], enable_checkpointing=False, **TRAINER_KWARGS)
    trainer.fit(model, DataLoader(TensorDataset(*blobs([24, 24, 16])), batch_size=16, shuffle=True))
    x, y = blobs([24, 24, 16])
    with torch.no_grad():
        feats = model.net[1](model.net[0](x[:48]))  # max_batches=3: the first 48 samples, in dataset order
    expected = neural_collapse(feats, y[:48], model.net[2].weight)
    for key, value in expected.items():
        assert monitor.history[-1][key] == pytest.approx(float(value), rel=1e-5, abs=1e-8), key


def test_the_default_classifier_is_a_stated_guess():
    trainer = Trainer(max_epochs=1, callbacks=[NeuralCollapseMonitor()], enable_checkpointing=False, **TRAINER_KWARGS)
    with pytest.warns(UserWarning, match=r"no classifier named: W is the last registered nn\.Linear 'net\.2'.*classifier=\['net\.2'\]"):
        trainer.fit(TinyMLP(), loader())
    trainer = Trainer(max_epochs=1, callbacks=[NeuralCollapseMonitor(classifier=["net.2"])], enable_checkpointing=False, **TRAINER_KWARGS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(TinyMLP(), loader())
    assert not [w for w in caught if "NeuralCollapseMonitor" in str(w.message)]


def test_crash_and_resume_continues_the_history(tmp_path):
    def run(max_epochs, extra, ckpt_path=None, dirpath=tmp_path / "run"):
        seed_everything(0)
        model, monitor = TinyMLP(), NeuralCollapseMonitor(every_n_epochs=2)
        ckpt = ModelCheckpoint(dirpath=dirpath, save_last=True, every_n_epochs=1)
        trainer = Trainer(max_epochs=max_epochs, callbacks=[monitor, ckpt, *extra], **TRAINER_KWARGS)
        trainer.fit(model, loader(), ckpt_path=ckpt_path)
        return monitor

    reference = run(6, [], dirpath=tmp_path / "reference")
    with pytest.raises(SimulatedCrash):
        run(6, [CrashAt(4)])  # dies at the start of epoch 5 (1-based), after measuring epochs 2 and 4
    saved = torch.load(tmp_path / "run" / "last.ckpt", weights_only=False)["callbacks"]
    state = next(v for k, v in saved.items() if k.startswith("NeuralCollapseMonitor"))
    assert [h["epoch"] for h in state["history"]] == [1, 3] and state["last_epoch"] == 3
    resumed = run(6, [], ckpt_path=tmp_path / "run" / "last.ckpt")
    assert [h["epoch"] for h in resumed.history] == [1, 3, 5]
    assert resumed.last_epoch == 5
    for got, want in zip(resumed.history, reference.history):
        for key in ("NC1", "NC2_W", "NC2_H", "NC3", "step"):
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-8), key


def test_state_dict_round_trip():
    monitor = NeuralCollapseMonitor()
    monitor.history = [{"epoch": 9.0, "step": 90.0, "NC1": 0.5, "NC2_W": 0.1, "NC2_H": 0.2, "NC3": 0.3}]
    monitor.last_epoch = 9
    other = NeuralCollapseMonitor()
    other.load_state_dict(monitor.state_dict())
    assert other.history == monitor.history and other.last_epoch == 9
    assert "prefix" in monitor.state_key


def _nc_job() -> Job:
    """lr 0: the same weights in both runs, so the metric is what is compared; 64 = 2 ranks x 2 batches x 16, no padding."""
    return Job(TinyMLP(lr=0.0), [NeuralCollapseMonitor(every_n_epochs=1)], {"train_dataloaders": loader(n_per_class=(24, 24, 16), batch_size=16)})


def _summary(record: dict) -> dict:
    metrics = {k: v for k, v in record["metrics"].items() if k.startswith("nc/")}  # train_loss is each rank's own
    return {"history": record["callbacks"]["NeuralCollapseMonitor"]["history"], "metrics": metrics, "world": record["world"]}


@pytest.mark.timeout(120)
def test_ddp_two_processes_equal_one_process(tmp_path):
    seed_everything(0)
    job = _nc_job()
    trainer = Trainer(max_epochs=1, callbacks=job.callbacks, enable_checkpointing=False, **TRAINER_KWARGS)
    trainer.fit(job.model, **job.fit)
    single = {"history": job.callbacks[0].history, "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()}, "world": 1}
    records = run_ddp(tmp_path, {"nc": _nc_job}, max_epochs=1)["nc"]
    assert not isinstance(records, str), records
    ddp = _summary(records[0])
    assert _summary(records[1]) == ddp  # both ranks measured the same
    assert ddp["world"] == 2 and single["world"] == 1
    for key in ("NC1", "NC2_W", "NC2_H", "NC3"):
        assert ddp["history"][-1][key] == pytest.approx(single["history"][-1][key], rel=1e-6, abs=1e-10), key
        assert ddp["metrics"][f"nc/{key}"] == pytest.approx(single["metrics"][f"nc/{key}"], rel=1e-5, abs=1e-8), key
    # and both equal the one-shot computation on the untrained model
    seed_everything(0)
    expected = expected_from_model(TinyMLP(lr=0.0), loader())
    for key, value in expected.items():
        assert single["history"][-1][key] == pytest.approx(value, rel=1e-5, abs=1e-8), key
