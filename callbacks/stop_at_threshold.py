"""Stop training after the training step at which a logged metric crosses a threshold.

Lightning's ``EarlyStopping(stopping_threshold=...)`` checks only at the end of an epoch or of
validation; runs made of full-batch steps (one epoch of many steps, as the muon-tail entry's
associative memory) need the check after every batch, so that the metrics at the stop are those
of the weights that reached the threshold.

>>> from zoo.callbacks import StopAtThreshold
>>> stop = StopAtThreshold("train/head_p", 0.9)  # Trainer(callbacks=[stop]); stop.stopped_step after fit
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from typing_extensions import override

__all__ = ["StopAtThreshold"]


class StopAtThreshold(Callback):
    """Stop training after the step at which a logged metric reaches ``threshold``.

    Lightning's ``EarlyStopping(stopping_threshold=...)`` checks only at the end of an epoch (or
    of validation); this checks after every training batch, so a run of full-batch steps can be
    one epoch. The metric must be logged with ``on_step=True`` (it is read from
    ``trainer.callback_metrics``). ``mode="max"`` stops at ``value >= threshold``, ``"min"`` at
    ``value <= threshold``. ``stopped_step`` records the global step of the stop (-1: none).
    """

    def __init__(self, monitor: str = "train/head_p", threshold: float = 0.9, mode: str = "max") -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.monitor, self.threshold, self.mode = monitor, threshold, mode
        self.stopped_step = -1

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, threshold=self.threshold, mode=self.mode)

    @override
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        reached = value is not None and ((float(value) >= self.threshold) if self.mode == "max" else (float(value) <= self.threshold))
        if trainer.world_size > 1:  # a step-level metric is each rank's own: all stop when one does, or DDP hangs
            reached = trainer.strategy.reduce_boolean_decision(reached, all=False)
        if reached:
            trainer.should_stop = True
            self.stopped_step = trainer.global_step

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"stopped_step": self.stopped_step}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.stopped_step = int(state_dict.get("stopped_step", -1))
