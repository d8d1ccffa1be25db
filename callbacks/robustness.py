"""``RobustnessEvaluation``: clean, PGD-k and CW-k accuracy, per class, for any classifier.

Under class imbalance the mean over classes hides the tail, so besides overall accuracy it
logs the accuracy of every class, the mean per class (``_mpc``) and the mean over
``tail_classes``: ``{prefix}/{clean|pgd|cw}_{acc|mpc|tail|class<k>}``, and ``{prefix}/examples``.
It attacks the batches the Trainer feeds to the test (or validation) loop (the first loader if
there are several), so any loader works and DDP shards them; each batch is attacked with
:class:`zoo.nn.attacks.PGD`, which turns gradients back on inside Lightning's inference mode.
Counts are summed over DDP processes at the end of the epoch, so every rank logs the same numbers
(``{prefix}/examples`` says how many were attacked: Lightning's DistributedSampler pads a split
that the world size does not divide, so a few examples then count twice).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor
from typing_extensions import override

from zoo.nn.attacks import PGD, as_clip

__all__ = ["RobustnessEvaluation", "per_class_accuracy"]


def per_class_accuracy(correct: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """Accuracy (%) of each class from its counts; NaN for a class with no examples."""
    return torch.where(total > 0, 100.0 * correct / total.clamp_min(1), torch.full_like(correct, float("nan")))


class RobustnessEvaluation(Callback):
    """Clean and adversarial accuracy per class over the test (or validation) batches.

    Args:
        eps / alpha / steps / norm: the attack's threat model (``alpha`` defaults to ``eps/4``).
        attacks: any of ``pgd`` (cross-entropy) and ``cw`` (Carlini-Wagner margin).
        num_classes: classes to report (default: the DataModule's ``num_classes``, else the
            width of the model's logits).
        tail_classes: the classes averaged into ``_tail`` (default: the last 30 %).
        stage: ``test`` or ``validate``; max_batches: cap the evaluated batches (per process).
        clip: the valid input range (pixels in [0, 1] by default), or None for unbounded
            (e.g. standardised) inputs.
        random_start / prefix: the attacks' random start; the metrics' prefix.
    """

    def __init__(
        self,
        eps: float = 8 / 255,
        alpha: float | None = None,
        steps: int = 20,
        norm: Literal["linf", "l2"] = "linf",
        attacks: list[str] | None = None,
        num_classes: int | None = None,
        tail_classes: list[int] | None = None,
        stage: Literal["test", "validate"] = "test",
        max_batches: int | None = None,
        clip: tuple[float, float] | None = (0.0, 1.0),
        random_start: bool = True,
        prefix: str = "robust",
    ) -> None:
        attacks = ["pgd", "cw"] if attacks is None else attacks
        if not set(attacks) <= {"pgd", "cw"}:
            raise ValueError(f"attacks must be among ['pgd', 'cw'], got {attacks}")
        if stage not in ("test", "validate"):
            raise ValueError(f"stage must be 'test' or 'validate', got {stage!r}")
        bounds = as_clip(clip)
        self.attacks = {
            name: PGD(eps, alpha or eps / 4, steps, norm, random_start, loss="ce" if name == "pgd" else "cw", clip=bounds, model_mode="eval")  # type: ignore[arg-type]
            for name in attacks
        }
        self.num_classes, self.tail_classes = num_classes, tail_classes
        self.stage, self.max_batches, self.prefix = stage, max_batches, prefix
        self.last: dict[str, float] = {}
        self._correct: Tensor | None = None  # (1 + len(attacks), K) counts of this process, this epoch
        self._total: Tensor | None = None  # (K,)

    # ------------------------------------------------------------------------ Lightning hooks
    @override
    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._correct = self._total = None

    @override
    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._correct = self._total = None

    @override
    def on_test_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self.stage == "test":
            self._accumulate(trainer, pl_module, batch, batch_idx, dataloader_idx)

    @override
    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self.stage == "validate" and not trainer.sanity_checking:
            self._accumulate(trainer, pl_module, batch, batch_idx, dataloader_idx)

    @override
    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.stage == "test":
            self._finish(trainer, pl_module)

    @override
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.stage == "validate" and not trainer.sanity_checking:
            self._finish(trainer, pl_module)

    # ------------------------------------------------------------------------ the evaluation
    def _accumulate(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int) -> None:
        """Count the clean and attacked hits of one batch, per class, on this process."""
        if dataloader_idx != 0 or (self.max_batches is not None and batch_idx >= self.max_batches):
            return
        if not isinstance(batch, Sequence) or len(batch) < 2:
            raise TypeError(f"RobustnessEvaluation needs (x, y) batches; got {type(batch).__name__}")
        x, y = batch[0], batch[1]
        was_training = pl_module.training
        pl_module.eval()
        try:
            with torch.no_grad():
                logits = pl_module(x)
            if self._total is None:
                k = self.num_classes or getattr(trainer.datamodule, "num_classes", None) or logits.shape[-1]
                self._correct = torch.zeros(1 + len(self.attacks), int(k), dtype=torch.float64, device=y.device)
                self._total = torch.zeros(int(k), dtype=torch.float64, device=y.device)
            assert self._correct is not None
            k = self._total.numel()
            if y.numel() and int(y.max()) >= k:
                raise ValueError(f"label {int(y.max())} out of range for num_classes={k}: set RobustnessEvaluation(num_classes=...)")
            self._total += torch.bincount(y, minlength=k).double()
            for row, attack in enumerate([None, *self.attacks.values()]):
                if attack is not None:
                    with torch.no_grad():
                        logits = pl_module(attack(pl_module, x, y))
                hit = logits.argmax(-1) == y
                self._correct[row] += torch.bincount(y[hit], minlength=k).double()
        finally:
            pl_module.train(was_training)

    def _finish(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Sum the counts over processes and log the accuracies (every rank logs the same)."""
        if self._correct is None or self._total is None:
            return
        correct = trainer.strategy.reduce(self._correct, reduce_op="sum")
        total = trainer.strategy.reduce(self._total, reduce_op="sum")
        self._correct = self._total = None
        self._log(pl_module, ["clean", *self.attacks], correct, total, total.numel())

    def _log(self, pl_module: LightningModule, names: list[str], correct: torch.Tensor, total: torch.Tensor, k: int) -> None:
        tail = self.tail_classes if self.tail_classes is not None else list(range(k - max(1, round(0.3 * k)), k))
        values: dict[str, float] = {f"{self.prefix}/examples": float(total.sum())}
        for row, name in enumerate(names):
            per_class = per_class_accuracy(correct[row], total)
            values[f"{self.prefix}/{name}_acc"] = float(100.0 * correct[row].sum() / total.sum().clamp_min(1))
            values[f"{self.prefix}/{name}_mpc"] = float(per_class.nanmean())
            values[f"{self.prefix}/{name}_tail"] = float(per_class[tail].nanmean())
            values.update({f"{self.prefix}/{name}_class{c}": float(per_class[c]) for c in range(k)})
        self.last = values
        pl_module.log_dict(values)
