"""AdaB2NCallback on a LightningModule that is not from this project, against a hand-written loop.

The reference :func:`reference_training` is the official ``er_ace_ada`` training loop reduced to
what the callback owns: ``set_counts(labels)`` before the forward, ``loss + lambd * sum of the
layers' regularizers`` from task 1 on (and from ``ada_t0``), ``end_task()`` after each task.
It also replays DDP by hand (each half of a global batch normalized on its own, gradients
averaged, rank 0's running statistics kept).
"""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from tests.conftest import CrashAt, Job, SimulatedCrash, run_ddp
from zoo.adab2n import AdaB2N, AdaB2NClassifier, adab2n_layers, convert_bn_to_adab2n
from zoo.callbacks.adab2n import AdaB2NCallback

torch.set_num_threads(1)

TRAINER_KWARGS = dict(
    accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0
)
LR, LAMBD, EPOCHS, N, BATCH = 0.1, 0.5, 3, 32, 8


# ------------------------------------------------------------------ a plain user project
class SmallCNN(LightningModule):
    """Plain LightningModule: (x, y) batches, forward(x) -> logits; its BatchNorm2d converted to AdaB2N."""

    def __init__(self, convert: bool = True, manual: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
            nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 6),
        )  # fmt: skip
        if convert:
            self.net = convert_bn_to_adab2n(self.net, num_tasks=3, kappa=0.4)
        self.automatic_optimization = not manual

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=LR)


def task_data(epoch: int) -> TensorDataset:
    """Epoch t trains task t (labels 2t, 2t+1) with every other sample replayed from an older task."""
    g = torch.Generator().manual_seed(100 + epoch)
    y = torch.randint(2 * epoch, 2 * epoch + 2, (N,), generator=g)
    if epoch > 0:
        old = torch.randint(0, 2 * epoch, (N,), generator=g)
        y = torch.where(torch.arange(N) % 2 == 1, old, y)
    x = torch.randn(N, 1, 6, 6, generator=g) * (1 + 0.5 * epoch) + y.view(-1, 1, 1, 1) * 0.3
    return TensorDataset(x, y)


class TaskData(LightningDataModule):
    """A plain DataModule (no task schedule): a new task's data every epoch."""

    def __init__(self, batch_size: int = BATCH) -> None:
        super().__init__()
        self.batch_size = batch_size

    def train_dataloader(self):
        return DataLoader(task_data(self.trainer.current_epoch), batch_size=self.batch_size, shuffle=False)


def run(tmp_path: Path, callbacks: list[Callback], max_epochs: int = EPOCHS, ckpt_path: str | None = None, **kwargs) -> SmallCNN:
    model = SmallCNN()
    batch_size = kwargs.pop("batch_size", BATCH)
    trainer = Trainer(
        max_epochs=max_epochs, reload_dataloaders_every_n_epochs=1, callbacks=callbacks, default_root_dir=tmp_path,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks), **TRAINER_KWARGS, **kwargs,
    )  # fmt: skip
    trainer.fit(model, TaskData(batch_size=batch_size), ckpt_path=ckpt_path)
    return model


# ------------------------------------------------------------------------- the reference
def reference_training(lambd: float = LAMBD, ada_t0: int = 0, ranks: int = 1, epochs: int = EPOCHS) -> SmallCNN:
    """The official loop by hand; ``ranks=2`` replays DDP (each rank's batch from its DistributedSampler)."""
    model = SmallCNN().train()
    layers = adab2n_layers(model)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    for task in range(epochs):
        data = task_data(task)
        order = [torch.arange(N)] if ranks == 1 else [torch.tensor(list(_sampler(data, ranks, r, task))) for r in range(ranks)]
        for start in range(0, N // ranks, BATCH):
            opt.zero_grad()
            kept = None
            for rank in range(ranks):
                before = copy.deepcopy([layer.state_dict() for layer in layers])
                x, y = data[order[rank][start : start + BATCH]]
                for layer in layers:
                    layer.set_counts(y, classes_per_task=2)
                loss = F.cross_entropy(model(x), y)
                if task > 0 and task >= ada_t0:
                    loss = loss + lambd * sum(layer.regularizer for layer in layers)
                (loss / ranks).backward()
                if rank == 0:  # DDP broadcasts rank 0's buffers before every forward
                    kept = copy.deepcopy([layer.state_dict() for layer in layers])
                if rank < ranks - 1:
                    for layer, state in zip(layers, before):
                        layer.load_state_dict(state)
            if ranks > 1:
                for layer, state in zip(layers, kept):
                    layer.load_state_dict(state)
            opt.step()
        for layer in layers:
            layer.end_task()
    return model


def _sampler(data: TensorDataset, ranks: int, rank: int, epoch: int) -> DistributedSampler:
    """What Lightning gives each rank for training: a shuffled DistributedSampler (seed 0), set to the epoch."""
    sampler = DistributedSampler(data, num_replicas=ranks, rank=rank, shuffle=True, seed=0)
    sampler.set_epoch(epoch)
    return sampler


def assert_same_state(got: nn.Module, want: nn.Module, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    for key, value in want.state_dict().items():
        torch.testing.assert_close(got.state_dict()[key], value, rtol=rtol, atol=atol, msg=key)


# ----------------------------------------------------------------------------- drop-in
def test_drop_in_equals_the_hand_written_loop(tmp_path: Path) -> None:
    seed_everything(0)
    callback = AdaB2NCallback(lambd=LAMBD, classes_per_task=2, epochs_per_task=1)
    model = run(tmp_path, [callback])
    reference = reference_training()
    assert_same_state(model, reference)
    layers = adab2n_layers(model)
    assert all(int(layer.cur_tasks) == EPOCHS for layer in layers) and callback.tasks_ended == EPOCHS
    assert all(float(layer.task_weight.detach()[:EPOCHS].abs().min()) > 0 for layer in layers)  # gradients reached w
    assert "training_step" not in model.__dict__  # teardown removed the wrapper
    # and the regularizer matters: without it the run ends elsewhere
    no_reg = reference_training(lambd=0.0)
    assert not torch.allclose(no_reg.net[0].weight, reference.net[0].weight, atol=1e-5)


def test_ada_t0_delays_the_regularizer(tmp_path: Path) -> None:
    seed_everything(0)
    model = run(tmp_path, [AdaB2NCallback(lambd=LAMBD, ada_t0=2, classes_per_task=2, epochs_per_task=1)])
    assert_same_state(model, reference_training(ada_t0=2))


class SpyCounts(Callback):
    """Records, for every training forward of the first AdaB2N layer, (batch size, counts size)."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []
        self.penalties: list[float] = []

    def on_fit_start(self, trainer, pl_module):
        layer = adab2n_layers(pl_module)[0]
        layer.register_forward_pre_hook(self._record)

    def _record(self, layer: AdaB2N, args) -> None:
        if layer.training:
            self.seen.append((args[0].shape[0], -1 if layer._task_ids is None else layer._task_ids.shape[0]))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.penalties.append(float(trainer.callback_metrics.get("train/adab2n_penalty", float("nan"))))


@pytest.mark.parametrize("joint_forward", [True, False])
def test_continual_classifier_announces_every_forward(tmp_path: Path, joint_forward: bool) -> None:
    from zoo.datamodules.continual import SplitTasks

    seed_everything(0)
    dm = SplitTasks(num_tasks=2, classes_per_task=2, online=True, batch_size=10, input_shift=[[1.0, 0.0], [0.5, 0.3]])
    dm.base.flatten = False
    model = AdaB2NClassifier(num_classes=4, num_tasks=2, joint_forward=joint_forward)
    spy = SpyCounts()
    trainer = Trainer(
        max_epochs=2,
        reload_dataloaders_every_n_epochs=1,
        limit_train_batches=4,
        callbacks=[spy, AdaB2NCallback()],
        enable_checkpointing=False,
        limit_val_batches=0,
        **TRAINER_KWARGS,
    )
    trainer.fit(model, dm)
    assert all(batch == counts for batch, counts in spy.seen), spy.seen
    # task 0: one forward of 10; task 1: stream 10 + replay 10, jointly (20) or separately (10, 10)
    expected = [10] * 4 + ([20] * 4 if joint_forward else [10] * 8)
    assert [b for b, _ in spy.seen] == expected
    assert all(p > 0 for p in spy.penalties[4:])
    assert all(int(layer.cur_tasks) == 2 for layer in adab2n_layers(model))


def test_no_adab2n_layer_is_one_clear_error(tmp_path: Path) -> None:
    trainer = Trainer(max_epochs=1, callbacks=[AdaB2NCallback(classes_per_task=2)], default_root_dir=tmp_path, **TRAINER_KWARGS)
    with pytest.raises(RuntimeError, match="no AdaB2N layer; convert its BatchNorm2d first"):
        trainer.fit(SmallCNN(convert=False), TaskData())


def test_classes_per_task_is_needed_without_a_continual_datamodule(tmp_path: Path) -> None:
    trainer = Trainer(max_epochs=1, callbacks=[AdaB2NCallback()], default_root_dir=tmp_path, **TRAINER_KWARGS)
    with pytest.raises(RuntimeError, match="pass classes_per_task"):
        trainer.fit(SmallCNN(), TaskData())


def test_manual_optimization_is_refused_unless_add_to_loss_is_off(tmp_path: Path) -> None:
    trainer = Trainer(max_epochs=1, callbacks=[AdaB2NCallback(classes_per_task=2)], default_root_dir=tmp_path, **TRAINER_KWARGS)
    with pytest.raises(RuntimeError, match="add_to_loss=False"):
        trainer.fit(SmallCNN(manual=True), TaskData())


def test_callback_arguments_are_validated() -> None:
    for kwargs in ({"lambd": -1.0}, {"ada_t0": -1}, {"classes_per_task": 0}, {"epochs_per_task": 0}):
        with pytest.raises(ValueError):
            AdaB2NCallback(**kwargs)


# ---------------------------------------------------------------------- crash and resume
@pytest.mark.parametrize("crash_epoch", [1, 2])
def test_crash_and_resume_continues_exactly(tmp_path: Path, crash_epoch: int) -> None:
    seed_everything(0)
    straight = run(tmp_path / "straight", [AdaB2NCallback(lambd=LAMBD, classes_per_task=2, epochs_per_task=1)])
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_on_train_epoch_end=True)
    with pytest.raises(SimulatedCrash):
        run(tmp_path / "crashed", [AdaB2NCallback(lambd=LAMBD, classes_per_task=2, epochs_per_task=1), checkpoint, CrashAt(crash_epoch)])
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert next(v for k, v in saved["callbacks"].items() if k.startswith("AdaB2NCallback"))["tasks_ended"] == crash_epoch
    callback = AdaB2NCallback(lambd=LAMBD, classes_per_task=2, epochs_per_task=1)
    resumed = run(tmp_path / "resumed", [callback], ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert callback.tasks_ended == EPOCHS
    assert_same_state(resumed, straight, rtol=0, atol=0)  # buffers (last_eta, cur_tasks) included


class ValidatedCNN(SmallCNN):
    def validation_step(self, batch, batch_idx):
        self.log("val/loss", F.cross_entropy(self(batch[0]), batch[1]))


class ValidatedData(TaskData):
    def val_dataloader(self):
        return DataLoader(task_data(0), batch_size=16)


def test_resume_from_a_checkpoint_written_before_the_task_end(tmp_path: Path) -> None:
    """A checkpoint saved at validation end precedes the callback's task end: the resumed run catches up."""

    def fit(root: Path, callbacks: list[Callback], ckpt_path: str | None = None) -> SmallCNN:
        model = ValidatedCNN()
        trainer = Trainer(max_epochs=EPOCHS, reload_dataloaders_every_n_epochs=1, callbacks=callbacks, default_root_dir=root, **TRAINER_KWARGS)
        trainer.fit(model, ValidatedData(), ckpt_path=ckpt_path)
        return model

    straight = fit(tmp_path / "straight", [AdaB2NCallback(lambd=LAMBD, classes_per_task=2, epochs_per_task=1)])
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_on_train_epoch_end=False)
    with pytest.raises(SimulatedCrash):
        fit(tmp_path / "crashed", [AdaB2NCallback(lambd=LAMBD, classes_per_task=2, epochs_per_task=1), checkpoint, CrashAt(2)])
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert int(saved["state_dict"]["net.1.cur_tasks"]) == 1  # written before epoch 1's task end
    resumed = fit(tmp_path / "resumed", [AdaB2NCallback(lambd=LAMBD, classes_per_task=2, epochs_per_task=1)], ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert_same_state(resumed, straight, rtol=0, atol=0)


def test_epoch_start_brings_the_counters_up_to_the_schedule() -> None:
    """Weights from before a task end (e.g. loaded without the callback state) are caught up."""
    model, callback = SmallCNN(), AdaB2NCallback(classes_per_task=2, epochs_per_task=1)
    callback.setup(Trainer(**TRAINER_KWARGS), model, "validate")
    callback.on_train_epoch_start(SimpleNamespace(current_epoch=2, datamodule=None), model)
    assert [int(layer.cur_tasks) for layer in adab2n_layers(model)] == [2, 2] and callback.tasks_ended == 2


def test_state_dict_round_trip() -> None:
    callback = AdaB2NCallback(lambd=0.3)
    callback.tasks_ended = 4
    other = AdaB2NCallback()
    other.load_state_dict(callback.state_dict())
    assert other.tasks_ended == 4


# ----------------------------------------------------------------------------------- DDP
def ddp_job() -> Job:
    """The drop-in run of :func:`run`, for :func:`tests.conftest.run_ddp` (two processes)."""
    callback = AdaB2NCallback(lambd=LAMBD, classes_per_task=2, epochs_per_task=1)
    return Job(SmallCNN(), [callback], {"datamodule": TaskData(batch_size=BATCH)}, {"reload_dataloaders_every_n_epochs": 1})


@pytest.mark.timeout(180)
def test_ddp_two_processes_equal_the_hand_replay(tmp_path: Path) -> None:
    records = run_ddp(tmp_path, {"adab2n": ddp_job}, max_epochs=EPOCHS)["adab2n"]
    assert not isinstance(records, str), records
    assert records[0]["world"] == 2 and records[0]["metrics"]["train/adab2n_penalty"] > 0
    rank0, rank1 = records[0]["state"], records[1]["state"]
    for key, value in rank0.items():
        if "running" not in key:  # parameters, task counters and eta agree across ranks
            assert torch.equal(value, rank1[key]), key
    reference = reference_training(ranks=2)
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(rank0[key], value, rtol=1e-5, atol=1e-6, msg=key)
    assert int(rank0["net.1.cur_tasks"]) == EPOCHS
