"""NC1 from the held features in O(N d K) against the d x d pseudo-inverse formula, the folded second moment and numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer, seed_everything

from tests.callbacks.test_neural_collapse import TRAINER_KWARGS, TinyMLP, expected_from_model, loader
from zoo.callbacks.neural_collapse import NeuralCollapseMonitor
from zoo.neural_collapse import NeuralCollapseMetrics, neural_collapse
from zoo.neural_collapse import metrics as nc_metrics

torch.set_num_threads(1)


def numpy_nc1(x: np.ndarray, y: np.ndarray, k: int, rtol: float = 1e-6) -> float:
    """``tr(Sigma_W pinv(Sigma_B)) / K`` with explicitly centred features (float64 numpy, no shortcut)."""
    mus = np.stack([x[y == c].mean(0) for c in range(k)])
    centred = x - mus[y]
    sw = centred.T @ centred / len(y)
    diff = mus - x.mean(0)
    sb = diff.T @ diff / k
    return float(np.trace(sw @ np.linalg.pinv(sb, rcond=rtol, hermitian=True)) / k)


def features(n: int, d: int, k: int, seed: int, plane: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` float64 features of ``k`` classes in ``d`` dimensions; with ``plane``, the class means span only that many directions."""
    g = torch.Generator().manual_seed(seed)
    means = 3 * torch.randn(k, d, generator=g, dtype=torch.float64)
    if plane is not None:  # rank-deficient: every class mean is a combination of `plane` directions
        means = torch.randn(k, plane, generator=g, dtype=torch.float64) @ torch.randn(plane, d, generator=g, dtype=torch.float64)
    y = torch.arange(k).repeat(n // k + 1)[:n]
    return means[y] + 0.7 * torch.randn(n, d, generator=g, dtype=torch.float64), y


CASES = {
    "d>N": (40, 300, 5, None),
    "d<N": (500, 12, 4, None),
    "rank-deficient means": (120, 30, 6, 2),
    "K-1 > d": (90, 3, 9, None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_held_nc1_equals_the_pseudo_inverse_formula_and_the_second_moment_path(case):
    n, d, k, plane = CASES[case]
    x, y = features(n, d, k, seed=len(case), plane=plane)
    w = torch.randn(k, d, dtype=torch.float64)
    reference = numpy_nc1(x.numpy(), y.numpy(), k)
    held = NeuralCollapseMetrics(k, d)  # the default keeps every feature: O(N d K)
    folded = NeuralCollapseMetrics(k, d, max_held=0)  # folds each chunk into the d x d second moment at once
    for xb, yb in zip(x.split(17), y.split(17)):
        held.update(xb, yb)
        folded.update(xb, yb)
    assert len(held.held_features) == len(x.split(17)) and not folded.held_features
    for metric in (held, folded):
        metric.set_classifier(w)
    got_held, got_folded = held.compute(), folded.compute()
    assert float(got_held["NC1"]) == pytest.approx(reference, rel=1e-10)
    for key in got_held:  # NC2/NC3 use the same class sums either way
        assert float(got_held[key]) == pytest.approx(float(got_folded[key]), rel=1e-10, abs=1e-14), key


def test_a_class_at_the_global_mean_is_cut_the_same_way():
    """A class mean on the global mean gives a near-zero eigenvalue of Sigma_B that rtol removes in both formulas."""
    x, y = features(200, 10, 5, seed=3)
    x[y == 4] += x.mean(0) - x[y == 4].mean(0)
    x[y == 4] += x.mean(0) - x[y == 4].mean(0)  # again: round-off of the first shift
    out = neural_collapse(x, y, torch.randn(5, 10, dtype=torch.float64))
    assert float(out["NC1"]) == pytest.approx(numpy_nc1(x.numpy(), y.numpy(), 5), rel=1e-8)


def test_partly_folded_statistics_give_the_same_value():
    """Past max_held the held chunks are folded into the second moment; the rest stay held, the value is the same."""
    x, y = features(300, 8, 4, seed=5)
    w = torch.randn(4, 8, dtype=torch.float64)
    metric = NeuralCollapseMetrics(4, 8, max_held=8 * 100)
    for xb, yb in zip(x.split(64), y.split(64)):
        metric.update(xb, yb)
    assert 0 < sum(len(t) for t in metric.held_labels) < 300 and torch.any(metric.second_moment != 0)
    metric.set_classifier(w)
    one_shot = neural_collapse(x, y, w)
    for key, value in metric.compute().items():
        assert float(value) == pytest.approx(float(one_shot[key]), rel=1e-10), key


def test_no_class_separation_is_inf_or_zero_on_held_features():
    y = torch.tensor([0, 0, 1, 1])
    spread = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])  # equal class means, non-zero spread
    assert math.isinf(float(neural_collapse(spread, y, torch.ones(2, 2))["NC1"]))
    assert float(neural_collapse(torch.ones(4, 2), y, torch.ones(2, 2))["NC1"]) == 0.0


def test_the_monitor_never_forms_the_d_by_d_second_moment(monkeypatch):
    """On one process and within max_held the monitor's NC1 costs O(N d K): the O(N d^2) product is never taken."""

    def forbidden(*args, **kwargs):
        raise AssertionError("the d x d second moment was formed")

    monkeypatch.setattr(nc_metrics, "_second_moment", forbidden)
    seed_everything(0)
    model, dl = TinyMLP(), loader()
    monitor = NeuralCollapseMonitor(every_n_epochs=1)
    trainer = Trainer(max_epochs=2, callbacks=[monitor], enable_checkpointing=False, **TRAINER_KWARGS)
    trainer.fit(model, dl)
    assert len(monitor.history) == 2
    expected = expected_from_model(model, dl)
    for key, value in monitor.measure(trainer, model).items():
        assert value == pytest.approx(expected[key], rel=1e-12, abs=1e-15), key
