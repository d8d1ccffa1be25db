"""RobustnessEvaluation on a plain LightningModule: counts per class against a direct computation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from tests.conftest import TRAINER_KWARGS, ForeignClassifier, Job, blob_loader, run_ddp
from zoo.callbacks.robustness import RobustnessEvaluation, per_class_accuracy
from zoo.datamodules.digits import DigitsDataModule
from zoo.nn.attacks import PGD


def test_per_class_accuracy_by_hand() -> None:
    got = per_class_accuracy(torch.tensor([3.0, 0.0, 0.0]), torch.tensor([4.0, 2.0, 0.0]))
    assert got[:2].tolist() == [75.0, 0.0] and torch.isnan(got[2])


def test_logs_clean_and_robust_accuracy_per_class() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    dm = DigitsDataModule(normalize=False)  # pixels in [0, 1]
    model = ForeignClassifier(in_features=64, hidden=32, num_classes=10, lr=0.1)
    callback = RobustnessEvaluation(eps=0.1, steps=10, random_start=False, tail_classes=[7, 8, 9])
    trainer = Trainer(max_epochs=3, callbacks=[callback], enable_checkpointing=False, limit_val_batches=0, **TRAINER_KWARGS)
    trainer.fit(model, dm)
    trainer.test(model, dm, verbose=False)
    x, y = dm.test_set.tensors
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float()
    x_adv = PGD(eps=0.1, alpha=0.025, steps=10, random_start=False)(model, x, y)
    with torch.no_grad():
        robust = (model(x_adv).argmax(1) == y).float()
    m = trainer.callback_metrics
    assert float(m["robust/clean_acc"]) == pytest.approx(100 * clean.mean().item(), abs=1e-3)
    assert float(m["robust/pgd_acc"]) == pytest.approx(100 * robust.mean().item(), abs=1e-3)
    per_class = [100 * robust[y == c].mean().item() for c in range(10)]
    assert float(m["robust/pgd_class3"]) == pytest.approx(per_class[3], abs=1e-3)
    assert float(m["robust/pgd_mpc"]) == pytest.approx(sum(per_class) / 10, abs=1e-3)
    assert float(m["robust/pgd_tail"]) == pytest.approx(sum(per_class[7:]) / 3, abs=1e-3)
    assert float(m["robust/cw_acc"]) < float(m["robust/clean_acc"])


def test_any_test_loader_works() -> None:
    torch.manual_seed(0)
    callback = RobustnessEvaluation(eps=0.1, steps=2, num_classes=3, clip=None, random_start=False)  # None: unbounded (issue 9)
    trainer = Trainer(callbacks=[callback], enable_checkpointing=False, **TRAINER_KWARGS)
    trainer.test(ForeignClassifier(), dataloaders=blob_loader(), verbose=False)
    assert 0.0 <= callback.last["robust/pgd_acc"] <= callback.last["robust/clean_acc"] <= 100.0


# ------------------------------------------------------------ a linear model on standardised data
class LinearProbe(LightningModule):
    """A fixed two-class linear model (lr 0): its robust accuracy under an L-inf ball has a closed form."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 2)
        with torch.no_grad():
            self.linear.weight.copy_(torch.tensor([[1.0, -0.5, 0.25, 0.0], [-1.0, 0.5, -0.25, 0.5]]))
            self.linear.bias.copy_(torch.tensor([0.1, -0.1]))

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return F.cross_entropy(self(batch[0]), batch[1])

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        pass

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        pass

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


def standardised_data(n: int = 64, seed: int = 0) -> TensorDataset:
    """Features far outside [0, 1], standardised to mean 0 and std 1; labels from a noisy linear rule."""
    g = torch.Generator().manual_seed(seed)
    raw = 3.0 * torch.randn(n, 4, generator=g) + 5.0
    x = (raw - raw.mean(0)) / raw.std(0)
    y = ((x @ torch.tensor([1.0, -0.5, 0.5, -0.25]) + 0.5 * torch.randn(n, generator=g)) < 0).long()
    return TensorDataset(x, y)


def closed_form_robust(model: LinearProbe, x: Tensor, y: Tensor, eps: float) -> Tensor:
    """1 where the example stays correct everywhere in the L-inf ball: margin > eps * ||w_y - w_other||_1."""
    w, b = model.linear.weight.detach(), model.linear.bias.detach()
    diff = w[y] - w[1 - y]
    return ((diff * x).sum(1) + b[y] - b[1 - y] - eps * diff.abs().sum(1) > 0).double()


class Probe(Callback):
    """Records, after RobustnessEvaluation, the model's mode and the grad state it finds at each batch."""

    def __init__(self) -> None:
        self.seen: list[tuple[bool, bool, bool]] = []

    def on_test_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: object) -> None:
        grads = all(p.grad is None for p in pl_module.parameters())
        self.seen.append((pl_module.training, torch.is_inference_mode_enabled(), grads))


@pytest.mark.parametrize("attack", ["pgd", "cw"])
def test_closed_form_robust_accuracy_of_a_linear_model_on_standardised_data(attack: str) -> None:
    torch.set_num_threads(1)
    data, model, eps = standardised_data(), LinearProbe(), 0.3
    x, y = data.tensors
    assert x.min() < -1 and x.max() > 2  # clipping to [0, 1] would change the answer
    callback = RobustnessEvaluation(eps=eps, alpha=eps / 4, steps=20, attacks=[attack], clip=None, random_start=False, tail_classes=[1])
    probe = Probe()
    trainer = Trainer(callbacks=[callback, probe], enable_checkpointing=False, **TRAINER_KWARGS)
    trainer.test(model, dataloaders=DataLoader(data, batch_size=16), verbose=False)
    robust = closed_form_robust(model, x, y, eps)
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).double()
    got = callback.last
    assert got["robust/examples"] == len(y)
    assert got["robust/clean_acc"] == pytest.approx(100 * clean.mean().item(), abs=1e-9)
    assert got[f"robust/{attack}_acc"] == pytest.approx(100 * robust.mean().item(), abs=1e-9)
    for c in (0, 1):
        assert got[f"robust/{attack}_class{c}"] == pytest.approx(100 * robust[y == c].mean().item(), abs=1e-9)
    assert got[f"robust/{attack}_tail"] == got[f"robust/{attack}_class1"]
    assert 0 < got[f"robust/{attack}_acc"] < got["robust/clean_acc"]  # the attack bites, not everywhere
    assert probe.seen == [(False, True, True)] * 4  # eval mode and inference mode as Lightning left them, no parameter grads


def test_max_batches_and_bad_clip() -> None:
    torch.set_num_threads(1)
    data, model = standardised_data(), LinearProbe()
    callback = RobustnessEvaluation(eps=0.3, steps=2, attacks=["pgd"], clip=None, max_batches=2)
    trainer = Trainer(callbacks=[callback], enable_checkpointing=False, **TRAINER_KWARGS)
    trainer.test(model, dataloaders=DataLoader(data, batch_size=16), verbose=False)
    assert callback.last["robust/examples"] == 32
    with pytest.raises(ValueError, match="clip"):
        RobustnessEvaluation(clip=[1.0, 0.0])


def build_linear_ddp() -> Job:
    """Module-level (pickled into the DDP workers): validation on 64 standardised examples, 32 per rank."""
    callback = RobustnessEvaluation(eps=0.3, alpha=0.075, steps=20, attacks=["pgd"], clip=None, random_start=False, stage="validate")
    loader = DataLoader(standardised_data(), batch_size=16)
    return Job(LinearProbe(), [callback], {"train_dataloaders": loader, "val_dataloaders": loader})


@pytest.mark.timeout(300)
def test_ddp_shards_the_loader_and_ranks_agree_with_the_closed_form(tmp_path: Path) -> None:
    records = run_ddp(tmp_path, {"linear": build_linear_ddp}, max_epochs=1)["linear"]
    assert not isinstance(records, str), records
    x, y = standardised_data().tensors
    robust = closed_form_robust(LinearProbe(), x, y, 0.3)
    for rank in records:
        assert rank["metrics"]["robust/examples"] == 64  # each example once: 32 per rank, summed
        assert rank["metrics"]["robust/pgd_acc"] == pytest.approx(100 * robust.mean().item(), abs=1e-4)
    assert records[0]["metrics"] == records[1]["metrics"]
