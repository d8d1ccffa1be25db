"""AnyLoss against a hand-computed soft confusion matrix and scikit-learn's hard metrics."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, f1_score, fbeta_score, recall_score

from zoo.anyloss import AnyLoss, AnyLossClassifier, amplify, soft_confusion_matrix, weighted_bce

P = [0.9, 0.62, 0.55, 0.3, 0.05, 0.7, 0.45, 0.2]
Y = [1, 1, 0, 1, 0, 0, 1, 0]


def hand_confusion(p: list[float], y: list[int], L: float) -> tuple[float, float, float, float]:
    """TN, FP, FN, TP written out term by term, as in the paper's Eq. 2."""
    a = [1 / (1 + math.exp(-L * (pi - 0.5))) for pi in p]
    tp = sum(ai for ai, yi in zip(a, y) if yi == 1)
    fn = sum(1 - ai for ai, yi in zip(a, y) if yi == 1)
    fp = sum(ai for ai, yi in zip(a, y) if yi == 0)
    tn = sum(1 - ai for ai, yi in zip(a, y) if yi == 0)
    return tn, fp, fn, tp


@pytest.mark.parametrize("L", [1.0, 5.0, 73.0])
def test_soft_confusion_matrix_matches_hand_computation(L: float) -> None:
    got = soft_confusion_matrix(amplify(torch.tensor(P, dtype=torch.float64), L), torch.tensor(Y))
    for g, want in zip(got, hand_confusion(P, Y, L)):
        assert float(g) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize(
    ("metric", "formula"),
    [
        ("accuracy", lambda tn, fp, fn, tp: (tp + tn) / (tn + fp + fn + tp)),
        ("f1", lambda tn, fp, fn, tp: 2 * tp / (2 * tp + fp + fn)),
        ("fbeta", lambda tn, fp, fn, tp: 5 * tp / (5 * tp + 4 * fn + fp)),  # beta = 2
        ("gmean", lambda tn, fp, fn, tp: (tp / (tp + fn)) * (tn / (tn + fp))),
        ("balanced_accuracy", lambda tn, fp, fn, tp: (tp / (tp + fn) + tn / (tn + fp)) / 2),
    ],
)
def test_loss_is_one_minus_metric_of_soft_confusion(metric: str, formula) -> None:
    L = 5.0  # small L so the soft matrix differs clearly from the hard one
    loss = AnyLoss(metric, beta=2.0, L=L, eps=0.0)(torch.tensor(P, dtype=torch.float64), torch.tensor(Y))
    assert float(loss) == pytest.approx(1 - formula(*hand_confusion(P, Y, L)), rel=1e-10)


@pytest.mark.parametrize(
    ("metric", "reference"),
    [
        ("f1", f1_score),
        ("fbeta", lambda y, h: fbeta_score(y, h, beta=2.0)),
        ("balanced_accuracy", balanced_accuracy_score),
        ("gmean", lambda y, h: recall_score(y, h) * recall_score(y, h, pos_label=0)),
    ],
)
def test_large_amplifier_recovers_hard_metric(metric: str, reference) -> None:
    hard = [int(p > 0.5) for p in P]
    loss = AnyLoss(metric, beta=2.0, L=2000.0)(torch.tensor(P, dtype=torch.float64), torch.tensor(Y))
    assert 1 - float(loss) == pytest.approx(reference(Y, hard), abs=1e-6)


def test_gradients_flow_to_the_inputs() -> None:
    p = torch.tensor(P, requires_grad=True)
    AnyLoss("f1")(p, torch.tensor(Y)).backward()
    assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_from_logits_and_callable_metric() -> None:
    probs = torch.tensor(P)
    logits = torch.logit(probs)
    assert torch.allclose(AnyLoss("f1", from_logits=True)(logits, torch.tensor(Y)), AnyLoss("f1")(probs, torch.tensor(Y)))
    recall = AnyLoss(lambda tn, fp, fn, tp: tp / (tp + fn), L=2000.0)(probs, torch.tensor(Y))
    assert 1 - float(recall) == pytest.approx(recall_score(Y, [int(p > 0.5) for p in P]), abs=1e-6)


def test_batch_without_positives_stays_finite() -> None:
    loss = AnyLoss("f1")(torch.tensor([0.2, 0.7]), torch.tensor([0, 0]))
    assert torch.isfinite(loss)


@pytest.mark.parametrize("kwargs", [{"metric": "auc"}, {"L": 0.0}, {"beta": -1.0}])
def test_bad_arguments_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        AnyLoss(**kwargs)


def test_weighted_bce_matches_official_weights() -> None:
    p, y = torch.tensor(P, dtype=torch.float64), torch.tensor(Y)
    n, n1 = len(Y), sum(Y)
    w1, w0 = (n - n1) / n, n1 / n
    want = -sum(w1 * yi * math.log(pi + 1e-5) + w0 * (1 - yi) * math.log(1 - pi + 1e-5) for pi, yi in zip(P, Y)) / n
    assert float(weighted_bce(p, y)) == pytest.approx(want, rel=1e-10)


def test_classifier_heads_and_losses() -> None:
    slp = AnyLossClassifier(input_dim=5)
    assert len([m for m in slp.modules() if isinstance(m, torch.nn.Linear)]) == 1
    mlp = AnyLossClassifier(input_dim=5, hidden_dims=[8, 4])
    assert [m.out_features for m in mlp.modules() if isinstance(m, torch.nn.Linear)] == [8, 4, 1]
    x, y = torch.randn(16, 5), torch.tensor([0, 1] * 8)
    for loss in ("anyloss", "bce", "wbce", "mse"):
        model = AnyLossClassifier(input_dim=5, loss=loss)
        assert model(x).shape == (16,)
        assert torch.isfinite(model.loss_fn(model(x), y))
    with pytest.raises(ValueError, match="unknown loss"):
        AnyLossClassifier(loss="hinge")
