"""Continual learning on any classification DataModule: a sequence of tasks inside one ``zoo fit``.

:class:`SplitTasks` wraps a DataModule whose ``setup`` leaves ``train_set`` and ``test_set``
(and optionally ``val_set``) datasets of ``(x, y)`` pairs, and serves one task at a time:

- ``scenario="class"``: class-incremental splits of ``classes_per_task`` classes (seeded
  class order); labels are renumbered so task ``t`` holds labels ``t*cpt .. (t+1)*cpt - 1``,
  hence ``task = label // classes_per_task`` as the AdaB²N and mammoth code assume;
  evaluation uses the full head.
- ``scenario="task"``: the same splits, evaluated task-incrementally (logits masked to the
  task's classes; see :meth:`SplitTasks.task_classes`).
- ``scenario="domain"``: every task holds all classes with a seeded input permutation
  (task 0 is the identity): Permuted Digits / Permuted MNIST.

An optional per-task input shift ``x' = scale_t * x + offset_t`` makes the input statistics
(and so BatchNorm's) differ between tasks. Task ``t`` is trained during epochs
``t*epochs_per_task .. (t+1)*epochs_per_task - 1``: the Trainer needs
``max_epochs = num_tasks * epochs_per_task`` and ``reload_dataloaders_every_n_epochs=1``,
which :meth:`SplitTasks.setup` checks. ``online=True`` is one pass per task;
``iters_per_batch=k`` serves each incoming batch ``k`` times in a row (``k`` SGD steps per
incoming batch, as online continual-learning code's "iterations per incoming batch").

Callbacks see tasks through :func:`task_schedule` (current task, task ends), and
``val_dataloader`` / ``test_dataloader`` return one loader per task so the accuracy matrix
can be filled (:class:`zoo.callbacks.continual.ContinualEvaluation`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import torch
from lightning.pytorch import LightningDataModule, Trainer
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset

from zoo.datamodules.digits import DigitsDataModule

__all__ = ["SplitTasks", "TaskSchedule", "task_schedule", "dataset_targets", "INTENSITY_SHIFT"]

Scenario = Literal["class", "task", "domain"]

#: The per-task (scale, offset) intensity shift of the adab2n claim check (cards/adab2n/claim.yaml).
INTENSITY_SHIFT: list[list[float]] = [[1.0, 0.0], [0.4, 0.3], [2.0, -0.5], [0.6, 0.6], [1.5, -0.2]]


@runtime_checkable
class TaskSchedule(Protocol):
    """What a callback may ask of a continual DataModule."""

    num_tasks: int
    epochs_per_task: int

    def task_of_epoch(self, epoch: int) -> int: ...

    def is_task_end(self, epoch: int) -> bool: ...

    def task_classes(self, task: int) -> list[int]: ...


def task_schedule(trainer: Trainer) -> TaskSchedule | None:
    """The trainer's continual DataModule, or None when the run is not continual."""
    dm = getattr(trainer, "datamodule", None)
    return dm if isinstance(dm, TaskSchedule) else None


def dataset_targets(dataset: Dataset) -> np.ndarray:
    """Integer labels of a dataset without loading its inputs, where the dataset allows it."""
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1].numpy()
    if hasattr(dataset, "targets"):
        return np.asarray(dataset.targets)
    return np.asarray([int(dataset[i][1]) for i in range(len(dataset))])  # type: ignore[arg-type]


class _TaskView(Dataset):
    """Task ``t``'s view of a dataset: a subset, relabelled, with the task's input transform."""

    def __init__(self, base: Dataset, indices: np.ndarray, label_map: np.ndarray, permutation: Tensor | None, shift: tuple[float, float]) -> None:
        self.base, self.indices, self.label_map = base, indices, label_map
        self.permutation, (self.scale, self.offset) = permutation, shift

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        x, y = self.base[int(self.indices[i])]
        if self.permutation is not None:
            x = x.reshape(-1)[self.permutation].reshape(x.shape)
        if self.scale != 1.0 or self.offset != 0.0:
            x = self.scale * x + self.offset
        return x, int(self.label_map[int(y)])


@dataclass(frozen=True)
class _Split:
    train: list[_TaskView]
    val: list[_TaskView]
    test: list[_TaskView]


class SplitTasks(LightningDataModule):
    """A sequence of tasks over ``base`` (default: digits), one task per ``epochs_per_task`` epochs.

    Args:
        base: the classification DataModule to split (digits, CIFAR-10, CIFAR-100, ...).
        scenario: ``class`` / ``task`` incremental splits or ``domain`` (permuted inputs).
        num_tasks: tasks in the sequence (class/task scenarios: ``num_tasks * classes_per_task``
            classes are used, in ``class_order``).
        classes_per_task: classes per task in the class/task scenarios.
        class_order: explicit class order; default ``0..K-1``, shuffled by ``seed`` if
            ``shuffle_classes``.
        input_shift: per-task ``[scale, offset]`` applied to inputs of every split.
        online: one pass over each task (sets ``epochs_per_task`` to 1).
        epochs_per_task: passes over each task in the offline setting.
        batch_size: training batch (online continual learning uses ~10).
        iters_per_batch: how many times each incoming training batch is served, consecutively
            (several SGD steps per batch of the stream; the stream is still seen once).
        seed: seeds the class order, the permutations and the shuffling.
    """

    def __init__(
        self,
        base: LightningDataModule | None = None,
        scenario: Scenario = "class",
        num_tasks: int = 5,
        classes_per_task: int = 2,
        class_order: list[int] | None = None,
        shuffle_classes: bool = False,
        input_shift: list[list[float]] | None = None,
        online: bool = False,
        epochs_per_task: int = 1,
        batch_size: int = 16,
        eval_batch_size: int = 512,
        iters_per_batch: int = 1,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if scenario not in ("class", "task", "domain"):
            raise ValueError(f"scenario must be 'class', 'task' or 'domain', got {scenario!r}")
        if num_tasks < 1 or classes_per_task < 1 or epochs_per_task < 1 or batch_size < 1 or iters_per_batch < 1:
            raise ValueError("num_tasks, classes_per_task, epochs_per_task, batch_size and iters_per_batch must be positive")
        if input_shift is not None and (len(input_shift) != num_tasks or any(len(s) != 2 for s in input_shift)):
            raise ValueError(f"input_shift needs one [scale, offset] pair per task ({num_tasks}), got {input_shift}")
        self.base = base if base is not None else DigitsDataModule(seed=seed)
        self.scenario = scenario
        self.num_tasks = num_tasks
        self.classes_per_task = classes_per_task
        self.class_order_arg, self.shuffle_classes = class_order, shuffle_classes
        self.input_shift = input_shift
        self.online = online
        self.epochs_per_task = 1 if online else epochs_per_task
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.iters_per_batch = iters_per_batch
        self.seed = seed
        self._split: _Split | None = None

    # --------------------------------------------------------------------- the schedule
    @property
    def max_epochs(self) -> int:
        """The Trainer's ``max_epochs`` for the whole sequence."""
        return self.num_tasks * self.epochs_per_task

    def task_of_epoch(self, epoch: int) -> int:
        return min(epoch // self.epochs_per_task, self.num_tasks - 1)

    def is_task_end(self, epoch: int) -> bool:
        return (epoch + 1) % self.epochs_per_task == 0

    @property
    def current_task(self) -> int:
        """The task being trained (0 before fitting starts)."""
        trainer = self._trainer_or_none()
        return self.task_of_epoch(trainer.current_epoch) if trainer is not None else 0

    def _trainer_or_none(self) -> Trainer | None:
        return getattr(self, "_trainer", None) or getattr(self, "trainer", None)

    @property
    def num_classes(self) -> int:
        """Size of the output head: all classes seen over the sequence."""
        if self.scenario == "domain":
            return int(self.base.num_classes)  # type: ignore[attr-defined]
        return self.num_tasks * self.classes_per_task

    def task_classes(self, task: int) -> list[int]:
        """The (renumbered) labels task ``task`` trains on."""
        if self.scenario == "domain":
            return list(range(self.num_classes))
        return list(range(task * self.classes_per_task, (task + 1) * self.classes_per_task))

    def class_order(self) -> list[int]:
        """Original class ids in the order tasks take them."""
        k = int(self.base.num_classes)  # type: ignore[attr-defined]
        if self.class_order_arg is not None:
            order = list(self.class_order_arg)
        else:
            order = list(range(k))
            if self.shuffle_classes:
                order = np.random.default_rng(self.seed).permutation(k).tolist()
        needed = self.num_classes if self.scenario != "domain" else 0
        if len(order) < needed or len(set(order)) != len(order) or not set(order) <= set(range(k)):
            raise ValueError(f"class_order must list {needed} distinct classes of 0..{k - 1}, got {order}")
        return order

    # ------------------------------------------------------------------------ the data
    def setup(self, stage: str | None = None) -> None:
        trainer = self._trainer_or_none()
        if trainer is not None and stage == "fit":
            self._check_trainer(trainer)
        if self._split is not None:
            return
        self.base.setup("fit")
        self.base.setup("test")
        test = self.base.test_set  # type: ignore[attr-defined]
        val = getattr(self.base, "val_set", None) or test
        self._split = _Split(*(self._views(ds) for ds in (self.base.train_set, val, test)))  # type: ignore[attr-defined]

    def _check_trainer(self, trainer: Trainer) -> None:
        if trainer.max_epochs is not None and trainer.max_epochs != self.max_epochs and not trainer.fast_dev_run:
            raise ValueError(
                f"SplitTasks trains {self.num_tasks} tasks x {self.epochs_per_task} epochs: "
                f"set trainer.max_epochs={self.max_epochs} (got {trainer.max_epochs})"
            )
        if trainer.reload_dataloaders_every_n_epochs != 1:
            raise ValueError("SplitTasks switches tasks between epochs: set trainer.reload_dataloaders_every_n_epochs=1")

    def _views(self, dataset: Dataset) -> list[_TaskView]:
        targets = dataset_targets(dataset)
        views = []
        for task in range(self.num_tasks):
            shift = tuple(self.input_shift[task]) if self.input_shift else (1.0, 0.0)
            if self.scenario == "domain":
                indices, label_map = np.arange(len(targets)), np.arange(int(targets.max()) + 1)
                permutation = None if task == 0 else self._permutation(task, dataset)
            else:
                order = self.class_order()
                label_map = np.full(int(targets.max()) + 1, -1)
                label_map[order[: self.num_classes]] = np.arange(self.num_classes)
                classes = order[task * self.classes_per_task : (task + 1) * self.classes_per_task]
                indices, permutation = np.flatnonzero(np.isin(targets, classes)), None
            views.append(_TaskView(dataset, indices, label_map, permutation, shift))  # type: ignore[arg-type]
        return views

    def _permutation(self, task: int, dataset: Dataset) -> Tensor:
        numel = dataset[0][0].numel()
        generator = torch.Generator().manual_seed(self.seed * 1000 + task)
        return torch.randperm(numel, generator=generator)

    @property
    def split(self) -> _Split:
        if self._split is None:
            self.setup()
        assert self._split is not None
        return self._split

    def task_dataset(self, task: int, stage: Literal["train", "val", "test"] = "test") -> Dataset:
        return getattr(self.split, stage)[task]

    def train_dataloader(self) -> DataLoader:
        trainer = self._trainer_or_none()
        epoch = trainer.current_epoch if trainer is not None else 0
        # a fresh order each epoch, the same one when a resumed run reloads that epoch
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        dataset = self.split.train[self.current_task]
        if self.iters_per_batch == 1:
            return DataLoader(dataset, self.batch_size, shuffle=True, generator=generator)
        sampler = _RepeatedBatches(len(dataset), self.batch_size, self.iters_per_batch, generator)  # type: ignore[arg-type]
        return DataLoader(dataset, batch_sampler=sampler, generator=generator)  # the loader's seed, not the global RNG

    def val_dataloader(self) -> list[DataLoader]:
        return [DataLoader(ds, self.eval_batch_size) for ds in self.split.val]

    def test_dataloader(self) -> list[DataLoader]:
        return [DataLoader(ds, self.eval_batch_size) for ds in self.split.test]


class _RepeatedBatches(Sampler[list[int]]):
    """A seeded shuffled order cut into batches, each batch yielded ``repeats`` times in a row."""

    def __init__(self, n: int, batch_size: int, repeats: int, generator: torch.Generator) -> None:
        self.n, self.batch_size, self.repeats, self.generator = n, batch_size, repeats, generator

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(self.n, generator=self.generator).tolist()
        for start in range(0, self.n, self.batch_size):
            batch = order[start : start + self.batch_size]
            for _ in range(self.repeats):
                yield batch

    def __len__(self) -> int:
        return -(-self.n // self.batch_size) * self.repeats
