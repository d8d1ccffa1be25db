"""OneStepRebalance: fires once at its step, keeps F G^T, sets F^T F = gamma I, and says what it needs."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer

from zoo.callbacks import OneStepRebalance
from zoo.datamodules import SensingDataModule
from zoo.matrix_sensing import MatrixSensingModule, factorized_gd

QUIET = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


class _Recorder(OneStepRebalance):
    """Records F G^T and F^T F just before and just after the callback's hook at the chosen step."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # type: ignore[no-untyped-def,override]
        if trainer.global_step == self.at_step:
            self.before = pl_module.product().detach().clone()
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        if trainer.global_step == self.at_step:
            self.after = pl_module.product().detach().clone()
            self.gram = (pl_module.F.T @ pl_module.F).detach().clone()


def test_fires_once_at_its_step_and_keeps_the_product() -> None:
    dm = SensingDataModule(n1=8, n2=8, rank=2, num_measurements=150, seed=0, steps_per_epoch=5)
    model = MatrixSensingModule(n1=8, n2=8, k=3, seed=0)
    callback = _Recorder(at_step=7, gamma=0.3)
    Trainer(max_steps=12, max_epochs=-1, callbacks=[callback], **QUIET).fit(model, dm)  # type: ignore[arg-type]
    assert callback.applied_step == 7 and callback.imbalance_before is not None and callback.imbalance_before < 1e-2
    torch.testing.assert_close(callback.after, callback.before, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(callback.gram, 0.3 * torch.eye(3, dtype=torch.float64), rtol=0, atol=1e-12)
    assert callback.state_dict() == {"applied_step": 7, "imbalance_before": callback.imbalance_before}


def test_resumed_state_does_not_fire_twice() -> None:
    dm = SensingDataModule(n1=8, n2=8, rank=2, num_measurements=150, seed=0, steps_per_epoch=5)
    model = MatrixSensingModule(n1=8, n2=8, k=3, seed=0)
    f0, g0 = model.F.detach().clone(), model.G.detach().clone()  # type: ignore[union-attr]
    callback = OneStepRebalance(at_step=0)
    callback.load_state_dict({"applied_step": 0, "imbalance_before": 1.0})  # as if restored from a checkpoint
    Trainer(max_steps=5, max_epochs=-1, callbacks=[callback], **QUIET).fit(model, dm)  # type: ignore[arg-type]
    f, _, _ = factorized_gd(dm.a, dm.y, f0, g0, lr=0.2, steps=5, truth=dm.ground_truth)  # plain GD, no rebalance
    torch.testing.assert_close(model.F.detach(), f)


def test_symmetric_module_gets_one_clear_error_at_setup() -> None:
    dm = SensingDataModule(n1=8, n2=8, rank=2, num_measurements=150, seed=0, steps_per_epoch=5)
    trainer = Trainer(max_steps=5, max_epochs=-1, callbacks=[OneStepRebalance(at_step=1)], **QUIET)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="parameterization='asymmetric'"):
        trainer.fit(MatrixSensingModule(n1=8, n2=8, parameterization="symmetric"), dm)
    assert trainer.global_step == 0


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="gamma"):
        OneStepRebalance(gamma=0.0)
