"""What the benchmarks share: a model that knows nothing of this project, a bare Trainer, quiet logs."""

from __future__ import annotations

import logging
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer
from torch import nn

__all__ = ["PlainClassifier", "bare_trainer", "quiet_lightning"]


class PlainClassifier(LightningModule):
    """A plain classifier: ``(x, y)`` batches, cross-entropy, SGD with momentum 0.9."""

    def __init__(self, net: nn.Module, lr: float = 0.05) -> None:
        super().__init__()
        self.net, self.lr = net, lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def bare_trainer(**kwargs: Any) -> Trainer:
    """A one-CPU Trainer with no logger, progress bar, summary or checkpoints: only the training."""
    defaults: dict[str, Any] = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    return Trainer(**{**defaults, **kwargs})


def quiet_lightning() -> None:
    """Hide Lightning's per-run advice, which would bury the printed ratios."""
    for message in (".*does not have many workers.*", ".*but have no `validation_step`.*"):
        warnings.filterwarnings("ignore", message=message)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
