"""SplitTasks: class/task/domain splits, relabelling, shifts, and task switching inside one fit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn

from zoo.datamodules.continual import INTENSITY_SHIFT, SplitTasks, dataset_targets, task_schedule
from zoo.datamodules.digits import DigitsDataModule


def labels(view) -> list[int]:
    return [int(view[i][1]) for i in range(len(view))]


def test_class_incremental_split_renumbers_labels_by_class_order() -> None:
    dm = SplitTasks(scenario="class", num_tasks=3, classes_per_task=2, class_order=[9, 3, 0, 5, 1, 7])
    dm.setup()
    raw = dataset_targets(dm.base.train_set)
    for task, original in enumerate([[9, 3], [0, 5], [1, 7]]):
        view = dm.split.train[task]
        assert sorted(set(labels(view))) == dm.task_classes(task) == [2 * task, 2 * task + 1]
        assert len(view) == int(np.isin(raw, original).sum())
        first = int(view.indices[0])  # the original label of the first example maps to its position
        assert labels(view)[0] == [9, 3, 0, 5, 1, 7].index(int(raw[first]))
    assert dm.num_classes == 6


def test_shuffled_class_order_is_seeded() -> None:
    a, b, c = (SplitTasks(shuffle_classes=True, seed=s).class_order() for s in (1, 1, 2))
    assert a == b != c and sorted(a) == list(range(10))


def test_domain_tasks_permute_inputs_and_keep_labels() -> None:
    dm = SplitTasks(scenario="domain", num_tasks=3, seed=4)
    dm.setup()
    x0, y0 = dm.split.test[0][5]
    x2, y2 = dm.split.test[2][5]
    assert y0 == y2 and not torch.equal(x0, x2)
    assert torch.equal(torch.sort(x0).values, torch.sort(x2).values)  # a permutation of the same pixels
    assert torch.equal(x0, dm.base.test_set[5][0])  # task 0 is the identity
    assert dm.task_classes(1) == list(range(10))


def test_input_shift_is_applied_per_task() -> None:
    dm = SplitTasks(input_shift=INTENSITY_SHIFT)
    dm.setup()
    i = int(dm.split.test[2].indices[0])
    scale, offset = INTENSITY_SHIFT[2]
    assert torch.allclose(dm.split.test[2][0][0], scale * dm.base.test_set[i][0] + offset)


@pytest.mark.parametrize(
    "kwargs", [{"scenario": "online"}, {"num_tasks": 0}, {"input_shift": [[1.0, 0.0]]}, {"class_order": [1, 1, 2]}]
)
def test_bad_arguments_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        SplitTasks(**kwargs).setup()


class _Recorder(Callback):
    """Records which labels each epoch trains on, and the schedule as a callback sees it."""

    def __init__(self) -> None:
        self.labels: dict[int, set[int]] = {}
        self.task_ends: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.labels.setdefault(trainer.current_epoch, set()).update(batch[1].tolist())

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if task_schedule(trainer).is_task_end(trainer.current_epoch):
            self.task_ends.append(trainer.current_epoch)


class _Linear(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(64, 10)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _trainer(max_epochs: int, reload: int = 1, callbacks: list | None = None) -> Trainer:
    return Trainer(
        max_epochs=max_epochs,
        reload_dataloaders_every_n_epochs=reload,
        callbacks=callbacks or [],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )


def test_tasks_switch_between_epochs_inside_one_fit() -> None:
    torch.set_num_threads(1)
    dm = SplitTasks(base=DigitsDataModule(), num_tasks=3, classes_per_task=2, epochs_per_task=2, batch_size=64)
    recorder = _Recorder()
    _trainer(dm.max_epochs, callbacks=[recorder]).fit(_Linear(), dm)
    assert [sorted(recorder.labels[e]) for e in range(6)] == [[0, 1], [0, 1], [2, 3], [2, 3], [4, 5], [4, 5]]
    assert recorder.task_ends == [1, 3, 5]


def test_trainer_settings_are_checked() -> None:
    dm = SplitTasks(num_tasks=3, online=True)
    with pytest.raises(ValueError, match="max_epochs=3"):
        _trainer(5).fit(_Linear(), dm)
    with pytest.raises(ValueError, match="reload_dataloaders_every_n_epochs=1"):
        _trainer(3, reload=0).fit(_Linear(), dm)


def test_iters_per_batch_serves_each_incoming_batch_k_times_in_a_row() -> None:
    dm = SplitTasks(online=True, batch_size=10, seed=3, iters_per_batch=3)
    dm.setup()
    batches = [x for x, _ in dm.train_dataloader()]
    task = dm.split.train[0]
    assert len(batches) == 3 * -(-len(task) // 10) == len(dm.train_dataloader())
    for k in range(0, len(batches), 3):  # each incoming batch 3 times in a row
        assert torch.equal(batches[k], batches[k + 1]) and torch.equal(batches[k], batches[k + 2])
    incoming = torch.cat(batches[::3])
    expected = torch.stack([task[i][0] for i in range(len(task))])
    assert torch.equal(torch.sort(incoming.flatten(1), dim=0).values, torch.sort(expected.flatten(1), dim=0).values)  # one pass
    again = [x for x, _ in dm.train_dataloader()]
    assert all(torch.equal(a, b) for a, b in zip(batches, again))  # seeded
    with pytest.raises(ValueError, match="iters_per_batch"):
        SplitTasks(iters_per_batch=0)
