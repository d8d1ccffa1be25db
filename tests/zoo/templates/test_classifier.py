"""ClassifierModule's metrics against scikit-learn on hand-made batch sequences, and in a Trainer."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer
from sklearn.metrics import accuracy_score, balanced_accuracy_score, recall_score
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from zoo.templates import ClassifierModule, classification_metrics


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


class Tiny(ClassifierModule):
    """A linear classifier: the smallest subclass (forward, loss, optimizer)."""

    def __init__(self, num_features: int = 4, num_classes: int = 4) -> None:
        super().__init__(num_classes)
        self.save_hyperparameters()
        self.net = torch.nn.Linear(num_features, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def logits_for(pred: list[int], num_classes: int) -> Tensor:
    return F.one_hot(torch.tensor(pred), num_classes).float() * 3.0 - 1.0


# (targets, predictions) per batch: class 3 is absent from the first two batches, class 2
# from the last; class 0 is predicted for a class-3 example
BATCHES = [
    ([0, 0, 1, 2], [0, 1, 1, 2]),
    ([1, 1, 2, 0], [1, 0, 2, 0]),
    ([3, 3, 0, 1], [3, 0, 0, 1]),
]


def test_metrics_match_sklearn_over_a_batch_sequence() -> None:
    model = Tiny()
    for y, pred in BATCHES:
        model.update_metrics("val", logits_for(pred, 4), torch.tensor(y))
    out = model.compute_metrics("val")
    y_all = [t for y, _ in BATCHES for t in y]
    p_all = [p for _, pred in BATCHES for p in pred]
    recalls = recall_score(y_all, p_all, average=None, labels=[0, 1, 2, 3])
    assert float(out["val/acc"]) == pytest.approx(accuracy_score(y_all, p_all))
    assert float(out["val/balanced_acc"]) == pytest.approx(balanced_accuracy_score(y_all, p_all))
    assert float(out["val/worst_class_acc"]) == pytest.approx(min(recalls))
    for k in range(4):
        assert float(out[f"val/acc_class{k}"]) == pytest.approx(recalls[k])
    assert float(out["val/acc_class3"]) == 0.5 and float(out["val/worst_class_acc"]) == 0.5  # by hand: 1 of 2
    assert not model.class_metrics["val_0"].update_called  # reset after compute
    assert model.compute_metrics("val") == {}


def test_a_class_absent_from_the_whole_epoch_is_left_out_as_sklearn_does() -> None:
    model = Tiny(num_classes=5)
    y, pred = [0, 0, 1, 2, 2], [0, 4, 1, 2, 1]  # class 4 predicted but never a target; class 3 never seen
    model.update_metrics("test", logits_for(pred, 5), torch.tensor(y))
    out = model.compute_metrics("test")
    with pytest.warns(UserWarning):  # sklearn warns about the predicted-only class
        expected = balanced_accuracy_score(y, pred)
    assert float(out["test/balanced_acc"]) == pytest.approx(expected) == pytest.approx((0.5 + 1 + 0.5) / 3)
    assert math.isnan(float(out["test/acc_class3"])) and math.isnan(float(out["test/acc_class4"]))
    assert float(out["test/worst_class_acc"]) == 0.5


def test_functional_twin_and_class_limit() -> None:
    cm = torch.tensor([[3, 1], [0, 0]])
    out = classification_metrics(cm, "val", max_classes=1)
    assert set(out) == {"val/acc", "val/balanced_acc", "val/worst_class_acc", "val/acc_class0"}
    assert float(out["val/acc"]) == 0.75 and float(out["val/balanced_acc"]) == 0.75
    assert all(math.isnan(float(v)) for v in classification_metrics(torch.zeros(2, 2), "val").values())
    with pytest.raises(ValueError, match="stage"):
        Tiny().update_metrics("train", torch.zeros(1, 4), torch.zeros(1, dtype=torch.long))


def test_in_a_trainer_with_two_test_loaders_and_predict(tmp_path) -> None:
    torch.manual_seed(0)
    x, y = torch.randn(24, 4), torch.arange(24) % 4
    model = Tiny()
    trainer = Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path)
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    trainer.fit(model, loader, loader)
    assert {"val/acc", "val/balanced_acc", "val/worst_class_acc", "val/acc_class3", "val/loss"} <= set(trainer.callback_metrics)
    second = DataLoader(TensorDataset(x[:8], y[:8]), batch_size=8)
    results = trainer.test(model, [loader, second], verbose=False)
    with torch.no_grad():
        pred = model(x).argmax(-1)
    assert results[0]["test/acc/dataloader_idx_0"] == pytest.approx(accuracy_score(y, pred))
    assert results[1]["test/balanced_acc/dataloader_idx_1"] == pytest.approx(balanced_accuracy_score(y[:8], pred[:8]))
    probs = trainer.predict(model, DataLoader(TensorDataset(x), batch_size=8))
    assert torch.allclose(torch.cat(probs).sum(-1), torch.ones(24))
    assert not any(k.startswith("class_metrics") for k in model.state_dict())  # metrics are not weights


def test_shot_groups_follow_the_oltr_thresholds() -> None:
    """> many: Many (0); < few: Few (2); the rest, both thresholds included, Medium (1)."""
    from zoo.templates.classifier import shot_groups

    assert shot_groups([500, 101, 100, 20, 19, 0]).tolist() == [0, 0, 1, 1, 2, 2]
    assert shot_groups([30, 10, 5], many=20, few=10).tolist() == [0, 1, 2]
    for bad, kwargs in (([], {}), ([[1, 2]], {}), ([-1, 3], {}), ([5, 5], {"many": 10, "few": 20})):
        with pytest.raises(ValueError):
            shot_groups(bad, **kwargs)


def test_many_medium_few_accuracy_is_the_mean_recall_of_each_group() -> None:
    model = Tiny()
    model.set_shot_groups([200, 150, 50, 5])  # classes 0, 1 Many; 2 Medium; 3 Few
    for y, pred in BATCHES:
        model.update_metrics("val", logits_for(pred, 4), torch.tensor(y))
    out = model.compute_metrics("val")
    y_all = [t for y, _ in BATCHES for t in y]
    p_all = [p for _, pred in BATCHES for p in pred]
    recall = recall_score(y_all, p_all, average=None, labels=[0, 1, 2, 3])
    assert float(out["val/many_acc"]) == pytest.approx((recall[0] + recall[1]) / 2)
    assert float(out["val/medium_acc"]) == pytest.approx(recall[2])
    assert float(out["val/few_acc"]) == pytest.approx(recall[3])
    model.update_metrics("val", logits_for([0], 4), torch.tensor([0]))  # the Few class absent: NaN, as sklearn leaves it out
    assert math.isnan(float(model.compute_metrics("val")["val/few_acc"]))
    with pytest.raises(ValueError, match="has 3 classes, the model 4"):
        model.set_shot_groups([1, 2, 3])
    plain = Tiny()  # no groups known: no group keys
    plain.update_metrics("val", logits_for([0], 4), torch.tensor([0]))
    assert not {"val/many_acc", "val/medium_acc", "val/few_acc"} & set(plain.compute_metrics("val"))


def test_shot_groups_come_from_a_datamodule_with_train_class_counts(tmp_path) -> None:
    from lightning.pytorch import LightningDataModule

    class LongTailed(LightningDataModule):
        def __init__(self) -> None:
            super().__init__()
            self.x, self.y = torch.randn(24, 4), torch.arange(24) % 4

        def train_class_counts(self) -> list[int]:
            return [300, 120, 40, 8]

        def train_dataloader(self) -> DataLoader:
            return DataLoader(TensorDataset(self.x, self.y), batch_size=8)

        val_dataloader = test_dataloader = train_dataloader

    model = Tiny()
    trainer = Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=LongTailed())
    assert model.shot_groups.tolist() == [0, 0, 1, 2]
    assert {"val/many_acc", "val/medium_acc", "val/few_acc"} <= set(trainer.callback_metrics)
