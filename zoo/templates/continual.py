"""``ContinualClassifier``: the classifier continual-learning entries train on a task sequence.

It holds a backbone (an MLP, the small CNN of the CPU checks, or any timm model by name), a
reservoir replay buffer and one of three rehearsal methods:

- ``finetune``: cross-entropy on the stream batch only (the lower bound);
- ``er``: Experience Replay, cross-entropy on the stream batch joined with a replay batch;
- ``er_ace``: ER with Asymmetric Cross-Entropy (Caccia et al. 2022, as in mammoth's
  ``er_ace.py``): on stream samples the logits of classes absent from the stream batch are
  masked (classes never seen yet stay in), replay samples get the full cross-entropy.
  ``joint_forward=False`` is the official two-forward version; ``True`` runs stream and
  replay batches through one forward, as AdaB²N's ``er_ace_ada`` does (it matters for
  BatchNorm, whose batch statistics then mix tasks).

Before every training forward the labels of the whole forward batch are announced to the
callbacks that define ``on_train_forward_labels(trainer, pl_module, labels)`` (AdaB²N needs
the per-task counts of the joint batch). The current task comes from the DataModule
(:func:`zoo.datamodules.continual.task_schedule`); without one, everything is task 0.
Validation and testing log :class:`zoo.templates.ClassifierModule`'s metrics for every task's
loader (``val/acc/dataloader_idx_k``, ``val/balanced_acc/...``, ``val/worst_class_acc/...``).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from zoo.nn.backbones import build_backbone
from zoo.nn.replay import ReservoirBuffer
from zoo.templates.classifier import ClassifierModule

__all__ = ["ContinualClassifier", "ace_mask", "Method"]

Method = Literal["finetune", "er", "er_ace"]


def ace_mask(logits: Tensor, stream_labels: Tensor, largest_seen: int) -> Tensor:
    """ER-ACE's stream logits: classes absent from the stream batch are masked.

    As in mammoth's ``er_ace.py``: while some classes are unseen, the largest seen label and
    every label above it stay in too.
    """
    mask = torch.zeros_like(logits, dtype=torch.bool)
    mask[:, stream_labels.unique()] = True
    if largest_seen < logits.shape[1] - 1:
        mask[:, largest_seen:] = True
    return logits.masked_fill(~mask, torch.finfo(logits.dtype).min)


class ContinualClassifier(ClassifierModule):
    """A classifier trained on a task sequence with fine-tuning, ER or ER-ACE (SGD, as in mammoth).

    The replay buffer is saved in Lightning checkpoints (a resumed run replays the same
    examples) but not published to the hub (``hub_ignore``): it is training data.

    Args:
        backbone: ``mlp`` | ``cnn`` | a timm model name (e.g. ``resnet18`` for Split CIFAR).
        num_classes: output head size (all classes of the sequence).
        input_dim / hidden_dims: MLP sizes; in_chans: CNN / timm input channels
            (:func:`zoo.nn.backbones.build_backbone`).
        norm: ``batchnorm`` or ``none`` in the MLP and CNN.
        method: ``finetune`` | ``er`` | ``er_ace``; buffer_size: reservoir capacity;
        replay_batch_size: replayed examples per step; joint_forward: ER-ACE with one forward.
        lr / momentum / weight_decay: SGD settings.
    """

    def __init__(
        self,
        backbone: str = "mlp",
        num_classes: int = 10,
        input_dim: int = 64,
        hidden_dims: list[int] | None = None,
        in_chans: int = 1,
        norm: str = "none",
        method: Method = "finetune",
        buffer_size: int = 0,
        replay_batch_size: int = 10,
        joint_forward: bool = False,
        lr: float = 0.1,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(num_classes)
        if method not in ("finetune", "er", "er_ace"):
            raise ValueError(f"method must be 'finetune', 'er' or 'er_ace', got {method!r}")
        if method != "finetune" and buffer_size < 1:
            raise ValueError(f"method {method!r} replays examples: set buffer_size > 0")
        self.save_hyperparameters()
        hidden = [256] if hidden_dims is None else hidden_dims
        self.net = build_backbone(backbone, num_classes, input_dim=input_dim, hidden_dims=hidden, in_chans=in_chans, norm=norm)
        self.buffer = ReservoirBuffer(buffer_size, seed=torch.initial_seed() % 2**31)  # follows seed_everything
        self.register_buffer("largest_seen", torch.zeros((), dtype=torch.long))

    hub_ignore = ("buffer.",)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    @property
    def current_task(self) -> int:
        from zoo.datamodules.continual import task_schedule  # here, not at import: zoo.datamodules imports zoo's entries

        schedule = task_schedule(self.trainer) if self._trainer is not None else None
        return schedule.task_of_epoch(self.trainer.current_epoch) if schedule is not None else 0

    def _announce_labels(self, labels: Tensor) -> None:
        """Tell label-aware callbacks (AdaB²N) what the next training forward holds."""
        if self._trainer is None:
            return
        for callback in self.trainer.callbacks:  # type: ignore[attr-defined]
            hook = getattr(callback, "on_train_forward_labels", None)
            if hook is not None:
                hook(self.trainer, self, labels)

    def _forward_train(self, x: Tensor, y: Tensor) -> Tensor:
        self._announce_labels(y)
        return self(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        method = self.hparams["method"]
        replay = method != "finetune" and self.current_task > 0 and len(self.buffer) > 0
        bx, by = self.buffer.sample(self.hparams["replay_batch_size"]) if replay else (x[:0], y[:0])
        self.largest_seen = torch.maximum(self.largest_seen, y.max())
        if method == "er" or (not replay and method == "finetune"):
            xa, ya = (torch.cat([x, bx]), torch.cat([y, by])) if replay else (x, y)
            loss = F.cross_entropy(self._forward_train(xa, ya), ya)
        elif self.hparams["joint_forward"] and replay:
            logits = self._forward_train(torch.cat([x, bx]), torch.cat([y, by]))
            loss = self._ace_loss(logits[: len(y)], y) + F.cross_entropy(logits[len(y) :], by)
        else:
            loss = self._ace_loss(self._forward_train(x, y), y)
            if replay:
                loss = loss + F.cross_entropy(self._forward_train(bx, by), by)
        if method != "finetune":
            self.buffer.add(x, y)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def _ace_loss(self, logits: Tensor, y: Tensor) -> Tensor:
        if self.hparams["method"] == "er_ace" and self.current_task > 0:
            logits = ace_mask(logits, y, int(self.largest_seen))
        return F.cross_entropy(logits, y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        return torch.optim.SGD(self.parameters(), lr=hp["lr"], momentum=hp["momentum"], weight_decay=hp["weight_decay"])
