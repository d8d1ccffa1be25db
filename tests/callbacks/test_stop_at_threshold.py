"""StopAtThreshold: stops after the exact step that crosses the threshold, in both modes, and keeps its state."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from zoo.callbacks import StopAtThreshold

torch.set_num_threads(1)


class Counter(LightningModule):
    """Logs ``train/count`` = the number of steps taken so far (1 after the first) and ``train/down`` = 10 - count."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 1)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        count = float(self.global_step + 1)
        self.log("train/count", count, on_step=True, on_epoch=False)
        self.log("train/down", 10.0 - count, on_step=True, on_epoch=False)
        return self.lin(batch[0]).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _fit(stop: StopAtThreshold, steps: int = 20) -> Trainer:
    loader = DataLoader(TensorDataset(torch.zeros(steps, 2), torch.zeros(steps)), batch_size=1)
    trainer = Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[stop],
    )
    trainer.fit(Counter(), loader)
    return trainer


@pytest.mark.parametrize(("monitor", "threshold", "mode", "expected"), [("train/count", 7, "max", 7), ("train/down", 4.5, "min", 6)])
def test_stops_after_the_step_that_crosses(monitor: str, threshold: float, mode: str, expected: int) -> None:
    # "max": count >= 7 first at the 7th step; "min": 10 - count <= 4.5 first at count = 6
    stop = StopAtThreshold(monitor, threshold, mode)
    trainer = _fit(stop)
    assert stop.stopped_step == expected and trainer.global_step == expected


def test_missing_metric_never_stops_and_state_round_trips() -> None:
    stop = StopAtThreshold("train/not_logged", 0.0)
    trainer = _fit(stop, steps=5)
    assert stop.stopped_step == -1 and trainer.global_step == 5
    other = StopAtThreshold("train/not_logged", 0.0)
    other.load_state_dict({"stopped_step": 3})
    assert other.state_dict() == {"stopped_step": 3}
    with pytest.raises(ValueError, match="mode must be 'max' or 'min'"):
        StopAtThreshold(mode="above")
