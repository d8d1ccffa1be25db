"""``OneStepRebalance``: the one-step modification of arXiv 2310.01769 (Section 6) as a drop-in callback.

Before optimizer step ``at_step`` it replaces the module's two factors ``(F, G)`` once by
:func:`zoo.matrix_sensing.rebalance` (``F G^T`` unchanged, ``F^T F = gamma I`` afterwards); plain
training continues from there. The maths lives in :mod:`zoo.matrix_sensing`; this file is glue.

What the module must provide: ``factor_parameters() -> (F, G)``, two parameters of shapes
``(n1, k)`` and ``(n2, k)`` whose product ``F G^T`` is the model. Use it with an optimizer without
state (plain SGD, as the paper): momentum or Adam statistics would not be transformed with the
factors.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from typing_extensions import override

from zoo.matrix_sensing import imbalance, rebalance

__all__ = ["OneStepRebalance"]


class OneStepRebalance(Callback):
    """Rebalance the factors ``(F, G)`` once, before optimizer step ``at_step``.

    Args:
        at_step: the ``trainer.global_step`` at which to apply it (the paper's ``T_1`` GD steps first).
        gamma: the imbalance it installs, ``F^T F = gamma I``; keep ``lr <~ 1 / (||M*||_2 + gamma)``.
        eps: floor on the eigenvalues of ``F^T F``.
    """

    def __init__(self, at_step: int = 300, gamma: float = 0.5, eps: float = 1e-12) -> None:
        if at_step < 0 or gamma <= 0 or eps <= 0:
            raise ValueError(f"need at_step >= 0, gamma > 0 and eps > 0, got {at_step}, {gamma}, {eps}")
        self.at_step, self.gamma, self.eps = at_step, gamma, eps
        self.applied_step: int | None = None
        self.imbalance_before: float | None = None  # ||F^T F - G^T G||_F just before the step

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        factors = getattr(pl_module, "factor_parameters", None)
        if not callable(factors):
            raise TypeError(
                f"OneStepRebalance needs a module with factor_parameters() -> (F, G), the two factors of F G^T; "
                f"add that method to {type(pl_module).__name__} (zoo.matrix_sensing.MatrixSensingModule has it)"
            )
        f, g = factors()
        if f.ndim != 2 or g.ndim != 2 or f.shape[1] != g.shape[1]:
            raise TypeError(f"OneStepRebalance needs factor_parameters() -> (F (n1, k), G (n2, k)), got {tuple(f.shape)}, {tuple(g.shape)}")

    @override
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self.applied_step is not None or trainer.global_step != self.at_step:
            return
        f, g = pl_module.factor_parameters()  # type: ignore[operator]
        with torch.no_grad():
            self.imbalance_before = float(torch.linalg.matrix_norm(imbalance(f, g)))
            new_f, new_g = rebalance(f, g, self.gamma, self.eps)
            f.copy_(new_f)
            g.copy_(new_g)
        self.applied_step = trainer.global_step

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"applied_step": self.applied_step, "imbalance_before": self.imbalance_before}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.applied_step = state_dict["applied_step"]
        self.imbalance_before = state_dict["imbalance_before"]
