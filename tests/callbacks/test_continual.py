"""ContinualEvaluation: the accuracy matrix, average accuracy and forgetting, on a module not from this project."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from tests.conftest import CrashAt, ForeignClassifier, SimulatedCrash
from zoo.callbacks.continual import ContinualEvaluation, average_accuracy, average_forgetting
from zoo.datamodules.continual import SplitTasks


def test_average_accuracy_and_forgetting_by_hand() -> None:
    a = torch.tensor([[90.0, 10.0, 5.0], [60.0, 80.0, 7.0], [70.0, 40.0, 95.0]])
    assert average_accuracy(a, 0) == 90.0
    assert average_accuracy(a, 2) == pytest.approx((70 + 40 + 95) / 3)
    assert average_forgetting(a, 0) == 0.0
    assert average_forgetting(a, 1) == pytest.approx(30.0)
    # task 0: best 90 -> 70 (20); task 1: best 80 -> 40 (40)
    assert average_forgetting(a, 2) == pytest.approx(30.0)


def TinyMLP() -> ForeignClassifier:
    """The shared foreign classifier sized for 8x8 digits in 6 classes (64 -> 32 -> 6, SGD lr 0.1)."""
    return ForeignClassifier(in_features=64, hidden=32, num_classes=6, lr=0.1)


def fit(tmp_path: Path, ckpt_path: str | None = None, callbacks: list | None = None) -> tuple[Trainer, ContinualEvaluation, SplitTasks, ForeignClassifier]:
    torch.manual_seed(0)
    dm = SplitTasks(num_tasks=3, classes_per_task=2, batch_size=32)
    evaluation = ContinualEvaluation()
    model = TinyMLP()
    trainer = Trainer(
        max_epochs=dm.max_epochs,
        reload_dataloaders_every_n_epochs=1,
        callbacks=[evaluation, *(callbacks or [])],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
        enable_checkpointing=bool(callbacks),
    )
    trainer.fit(model, dm, ckpt_path=ckpt_path)
    return trainer, evaluation, dm, model


def accuracy(model: nn.Module, dataset) -> float:
    x = torch.stack([dataset[i][0] for i in range(len(dataset))])
    y = torch.tensor([dataset[i][1] for i in range(len(dataset))])
    with torch.no_grad():
        return float(100.0 * (model(x).argmax(-1) == y).float().mean())


def test_matrix_rows_logged_and_final_row_matches_direct_evaluation(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    trainer, evaluation, dm, model = fit(tmp_path)
    matrix = evaluation.matrix
    assert not torch.isnan(matrix).any()  # every row, unseen tasks included
    for j in range(3):
        assert matrix[2, j] == pytest.approx(accuracy(model.eval(), dm.split.val[j]), abs=1e-4)
    assert matrix[0, 0] > 90 and matrix[0, 2] == 0.0  # unseen classes are never predicted after task 0
    metrics = trainer.callback_metrics
    assert float(metrics["cl/avg_acc"]) == pytest.approx(average_accuracy(matrix, 2), abs=1e-4)
    assert float(metrics["cl/forgetting"]) == pytest.approx(average_forgetting(matrix, 2), abs=1e-4)
    assert (tmp_path / "accuracy_matrix.png").stat().st_size > 1000


def test_resume_continues_the_matrix(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    full = fit(tmp_path / "full")[1].matrix
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    with pytest.raises(SimulatedCrash):
        fit(tmp_path / "crash", callbacks=[checkpoint, CrashAt(epoch=2)])
    _, resumed, _, _ = fit(tmp_path / "resume", ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"), callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt2")])
    assert torch.allclose(resumed.matrix, full, atol=1e-4)


def test_needs_a_continual_datamodule() -> None:
    from zoo.datamodules.digits import DigitsDataModule

    trainer = Trainer(max_epochs=1, callbacks=[ContinualEvaluation()], logger=False, enable_progress_bar=False)
    with pytest.raises(RuntimeError, match="continual DataModule"):
        trainer.fit(TinyMLP(), DigitsDataModule())
