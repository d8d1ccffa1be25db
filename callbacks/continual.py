"""``ContinualEvaluation``: the accuracy matrix of a continual run, with average accuracy and forgetting.

After training task ``i`` it measures ``A[i][j]``, the accuracy on task ``j``'s evaluation set,
for every task ``j`` (unseen ones too, so forward transfer is visible), and logs

- ``cl/avg_acc``: mean of ``A[i][j]`` over ``j <= i`` (average accuracy so far);
- ``cl/forgetting``: mean over ``j < i`` of ``max_{k<i} A[k][j] - A[i][j]`` (Chaudhry et al. 2018);
- ``cl/acc_task{j}``: the row itself.

The measurement runs after every ``on_train_epoch_end`` hook of the task's last epoch has
finished (at the next epoch's start, and at the end of training for the last task), so
callbacks that change the weights at a task end (CoIN's EMA replacement, AdaB²N's task
counter) are accounted for whatever their order in the callback list. At the end of fit the
matrix is drawn to ``accuracy_matrix.png`` in the run's log folder. Accuracies are in percent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only
from typing_extensions import override

from zoo.datamodules.continual import TaskSchedule, task_schedule

__all__ = ["ContinualEvaluation", "average_accuracy", "average_forgetting"]


def average_accuracy(matrix: torch.Tensor, task: int) -> float:
    """Mean accuracy over tasks ``0..task`` after training ``task``."""
    return float(matrix[task, : task + 1].mean())


def average_forgetting(matrix: torch.Tensor, task: int) -> float:
    """Mean drop from each earlier task's best accuracy to its accuracy after ``task``."""
    if task == 0:
        return 0.0
    best = matrix[:task, :task].max(dim=0).values
    return float((best - matrix[task, :task]).mean())


class ContinualEvaluation(Callback):
    """Fills the accuracy matrix of a run on a continual DataModule (:class:`zoo.datamodules.continual.SplitTasks`).

    Args:
        eval_mode: measure with the model in eval mode (BatchNorm's running statistics), as
            the papers report; the model's mode is restored afterwards.
        plot: save the matrix as ``accuracy_matrix.png`` in the log folder at the end of fit.
    """

    def __init__(self, eval_mode: bool = True, plot: bool = True) -> None:
        self.eval_mode, self.plot = eval_mode, plot
        self.matrix: torch.Tensor | None = None
        self._pending_task: int | None = None

    def _schedule(self, trainer: Trainer) -> TaskSchedule:
        schedule = task_schedule(trainer)
        if schedule is None:
            raise RuntimeError(
                "ContinualEvaluation needs a continual DataModule (e.g. zoo.datamodules.continual.SplitTasks) "
                "that exposes num_tasks, task_of_epoch, is_task_end and task_classes"
            )
        return schedule

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        schedule = self._schedule(trainer)
        if self.matrix is None:
            self.matrix = torch.full((schedule.num_tasks, schedule.num_tasks), float("nan"))

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        schedule = self._schedule(trainer)
        if schedule.is_task_end(trainer.current_epoch):
            self._pending_task = schedule.task_of_epoch(trainer.current_epoch)

    @override
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._pending_task is not None:
            self._log_row(trainer, pl_module, self._measure(trainer, pl_module))

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._pending_task is not None:
            values = self._measure(trainer, pl_module)
            # self.log is not allowed here: put the final row where loggers and sweeps read it
            trainer.callback_metrics.update({k: torch.tensor(v) for k, v in values.items()})
            for logger in trainer.loggers:
                logger.log_metrics(values, step=trainer.global_step)
        if self.plot and self.matrix is not None:
            self._save_plot(trainer)

    def _measure(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, float]:
        """Row ``A[task]`` on every task's evaluation loader."""
        assert self.matrix is not None and self._pending_task is not None
        task, self._pending_task = self._pending_task, None
        schedule = self._schedule(trainer)
        loaders = trainer.datamodule.val_dataloader()  # type: ignore[union-attr]
        was_training = pl_module.training
        pl_module.train(not self.eval_mode)
        with torch.no_grad():
            for j, loader in enumerate(loaders):
                self.matrix[task, j] = self._accuracy(pl_module, loader, schedule, j, trainer)
        pl_module.train(was_training)
        values = {f"cl/acc_task{j}": float(self.matrix[task, j]) for j in range(schedule.num_tasks)}
        values["cl/avg_acc"] = average_accuracy(self.matrix, task)
        values["cl/forgetting"] = average_forgetting(self.matrix, task)
        values["cl/task"] = float(task)
        return values

    @staticmethod
    def _accuracy(pl_module: LightningModule, loader: Any, schedule: TaskSchedule, task: int, trainer: Trainer) -> float:
        correct = total = 0
        masked = getattr(schedule, "scenario", "class") == "task"
        classes = torch.tensor(schedule.task_classes(task))
        for x, y in loader:
            x, y = x.to(pl_module.device), y.to(pl_module.device)
            logits = pl_module(x)
            if masked:  # task-incremental: only the task's own classes compete
                keep = torch.full_like(logits, float("-inf"))
                keep[:, classes] = 0.0
                logits = logits + keep
            correct += int((logits.argmax(-1) == y).sum())
            total += len(y)
        counts = trainer.strategy.reduce(torch.tensor([correct, total], dtype=torch.float64, device=pl_module.device), reduce_op="sum")
        return float(100.0 * counts[0] / counts[1].clamp_min(1))

    def _log_row(self, trainer: Trainer, pl_module: LightningModule, values: dict[str, float]) -> None:
        for key, value in values.items():
            pl_module.log(key, value, on_step=False, on_epoch=True)

    @rank_zero_only
    def _save_plot(self, trainer: Trainer) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        assert self.matrix is not None
        fig, ax = plt.subplots(figsize=(4.5, 4))
        image = ax.imshow(self.matrix.numpy(), vmin=0, vmax=100, cmap="viridis")
        ax.set(xlabel="evaluated on task j", ylabel="after training task i", title="accuracy A[i][j] (%)")
        for i, row in enumerate(self.matrix.tolist()):
            for j, value in enumerate(row):
                if value == value:  # skip NaN (not measured)
                    ax.text(j, i, f"{value:.0f}", ha="center", va="center", color="w", fontsize=8)
        fig.colorbar(image)
        path = Path(trainer.log_dir or trainer.default_root_dir) / "accuracy_matrix.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"matrix": self.matrix, "pending_task": self._pending_task}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.matrix = state_dict["matrix"]
        self._pending_task = state_dict["pending_task"]
