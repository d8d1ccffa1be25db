"""``RobustnessEvaluation``: clean, PGD-k and CW-k accuracy, per class, for any classifier.

Under class imbalance the mean over classes hides the tail, so besides overall accuracy it
logs the accuracy of every class, the mean per class (``_mpc``) and the mean over
``tail_classes``: ``{prefix}/{clean|pgd|cw}_{acc|mpc|tail|class<k>}``. It runs at the end of
the test (or validation) epoch on the DataModule's loader of that stage (the first one if
there are several), outside Lightning's inference mode, with :class:`zoo.nn.attacks.PGD`.
Counts are summed over DDP processes.
"""

from __future__ import annotations

from typing import Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from typing_extensions import override

from zoo.nn.attacks import PGD

__all__ = ["RobustnessEvaluation", "per_class_accuracy"]


def per_class_accuracy(correct: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """Accuracy (%) of each class from its counts; NaN for a class with no examples."""
    return torch.where(total > 0, 100.0 * correct / total.clamp_min(1), torch.full_like(correct, float("nan")))


class RobustnessEvaluation(Callback):
    """Clean and adversarial accuracy per class at the end of the test (or validation) epoch.

    Args:
        eps / alpha / steps / norm: the attack's threat model (``alpha`` defaults to ``eps/4``).
        attacks: any of ``pgd`` (cross-entropy) and ``cw`` (Carlini-Wagner margin).
        num_classes: classes to report (default: the DataModule's ``num_classes``).
        tail_classes: the classes averaged into ``_tail`` (default: the last 30 %).
        stage: ``test`` or ``validate``; max_batches: cap the evaluated batches.
        clip: the valid input range, or None for unbounded inputs.
        model_mode: attack in ``eval`` mode (default) or ``keep`` the model's mode.
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
        clip: list[float] | None = None,
        random_start: bool = True,
        prefix: str = "robust",
    ) -> None:
        attacks = ["pgd", "cw"] if attacks is None else attacks
        if not set(attacks) <= {"pgd", "cw"}:
            raise ValueError(f"attacks must be among ['pgd', 'cw'], got {attacks}")
        if stage not in ("test", "validate"):
            raise ValueError(f"stage must be 'test' or 'validate', got {stage!r}")
        bounds = (0.0, 1.0) if clip is None else (tuple(clip) if clip else None)
        self.attacks = {
            name: PGD(eps, alpha or eps / 4, steps, norm, random_start, loss="ce" if name == "pgd" else "cw", clip=bounds, model_mode="eval")  # type: ignore[arg-type]
            for name in attacks
        }
        self.num_classes, self.tail_classes = num_classes, tail_classes
        self.stage, self.max_batches, self.prefix = stage, max_batches, prefix
        self.last: dict[str, float] = {}

    @override
    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.stage == "test":
            self._evaluate(trainer, pl_module, trainer.datamodule.test_dataloader())  # type: ignore[union-attr]

    @override
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.stage == "validate" and not trainer.sanity_checking:
            self._evaluate(trainer, pl_module, trainer.datamodule.val_dataloader())  # type: ignore[union-attr]

    def _num_classes(self, trainer: Trainer) -> int:
        k = self.num_classes or getattr(trainer.datamodule, "num_classes", None)
        if k is None:
            raise RuntimeError("RobustnessEvaluation needs num_classes (or a DataModule with num_classes)")
        return int(k)

    def _evaluate(self, trainer: Trainer, pl_module: LightningModule, loaders: object) -> None:
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        k = self._num_classes(trainer)
        names = ["clean", *self.attacks]
        correct = torch.zeros(len(names), k, dtype=torch.float64, device=pl_module.device)
        total = torch.zeros(k, dtype=torch.float64, device=pl_module.device)
        was_training = pl_module.training
        pl_module.eval()
        for i, (x, y) in enumerate(loader):
            if self.max_batches is not None and i >= self.max_batches:
                break
            x, y = x.to(pl_module.device), y.to(pl_module.device)
            total += torch.bincount(y, minlength=k).double()
            for row, name in enumerate(names):
                x_eval = x if name == "clean" else self.attacks[name](pl_module, x, y)
                with torch.no_grad():
                    hit = pl_module(x_eval).argmax(-1) == y
                correct[row] += torch.bincount(y[hit], minlength=k).double()
        pl_module.train(was_training)
        correct = trainer.strategy.reduce(correct, reduce_op="sum")
        total = trainer.strategy.reduce(total, reduce_op="sum")
        self._log(pl_module, names, correct, total, k)

    def _log(self, pl_module: LightningModule, names: list[str], correct: torch.Tensor, total: torch.Tensor, k: int) -> None:
        tail = self.tail_classes if self.tail_classes is not None else list(range(k - max(1, round(0.3 * k)), k))
        values: dict[str, float] = {}
        for row, name in enumerate(names):
            per_class = per_class_accuracy(correct[row], total)
            values[f"{self.prefix}/{name}_acc"] = float(100.0 * correct[row].sum() / total.sum().clamp_min(1))
            values[f"{self.prefix}/{name}_mpc"] = float(per_class.nanmean())
            values[f"{self.prefix}/{name}_tail"] = float(per_class[tail].nanmean())
            values.update({f"{self.prefix}/{name}_class{c}": float(per_class[c]) for c in range(k)})
        self.last = values
        pl_module.log_dict(values)
