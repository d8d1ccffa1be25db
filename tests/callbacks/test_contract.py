"""The drop-in contract, run over every callback that ``zoo.callbacks`` exports.

Each callback, on a LightningModule that knows nothing of the zoo (or, where it needs more, the
smallest module that provides it, while the plain one gets one clear error at ``setup``):

(a) drops in and trains, and visibly does its job (its metrics are logged, its state moves);
(b) a run that crashes and resumes from ``last.ckpt`` ends equal to the uninterrupted run: the
    model's ``state_dict`` and the callback's ``state_dict``;
(c) runs under DDP with two CPU processes, and both ranks end with the same parameters, the
    same callback state and the same logged metrics.

A new callback joins :data:`SPECS`; :func:`test_every_exported_callback_has_a_spec` fails until it
does. Cases that fail because of a defect issue 9 names are ``xfail(strict=True)``: they turn
into failures the day the defect is fixed, so the mark is removed with the fix.
"""

from __future__ import annotations

import inspect
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, LightningDataModule, Trainer
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import zoo
import zoo.callbacks
from tests.conftest import TRAINER_KWARGS, ForeignClassifier, Job, assert_same_state, blob_data, blob_loader, crash_and_resume, run_ddp
from zoo.adab2n import convert_bn_to_adab2n
from zoo.anyloss import AnyLossClassifier
from zoo.callbacks import (
    AdaB2NCallback,
    AioliMixing,
    AuxFreeLoadBalancing,
    BIDSSelection,
    ContinualEvaluation,
    DynamicEMA,
    NeuralCollapseMonitor,
    OneStepRebalance,
    RobustnessEvaluation,
    SavePretrained,
    StopAtThreshold,
    SubclassClustering,
    TaskEndEMA,
)
from zoo.datamodules.mixture import MixtureDataModule
from zoo.registry import import_object, list_entries

torch.set_num_threads(1)


# ------------------------------------------------------------- the smallest modules that provide more
class ThreeTasks(LightningDataModule):
    """A continual DataModule (the ``TaskSchedule`` protocol): task t is classes 2t, 2t+1 of the blobs, one epoch each.

    ``shape`` reshapes each sample (``(1, 6, 6)``: one-channel images for a CNN).
    """

    num_tasks, epochs_per_task = 3, 1

    def __init__(self, shape: tuple[int, ...] = (8,)) -> None:
        super().__init__()
        x, y = blob_data(n_per_class=(16,) * 6, dim=math.prod(shape)).tensors
        self.data = TensorDataset(x.view(-1, *shape), y)

    def task_of_epoch(self, epoch: int) -> int:
        return min(epoch // self.epochs_per_task, self.num_tasks - 1)

    def is_task_end(self, epoch: int) -> bool:
        return (epoch + 1) % self.epochs_per_task == 0

    def task_classes(self, task: int) -> list[int]:
        return [2 * task, 2 * task + 1]

    def _task(self, task: int) -> DataLoader:
        x, y = self.data.tensors
        keep = (y // 2) == task
        return DataLoader(TensorDataset(x[keep], y[keep]), batch_size=16)

    def train_dataloader(self) -> DataLoader:
        return self._task(self.task_of_epoch(self.trainer.current_epoch))

    def val_dataloader(self) -> list[DataLoader]:
        return [self._task(t) for t in range(self.num_tasks)]


class _Router(nn.Module):
    """A softmax top-1 router with the protocol AuxFreeLoadBalancing asks for (``expert_bias``, ``pop_expert_load``)."""

    def __init__(self, d: int, experts: int) -> None:
        super().__init__()
        self.gate = nn.Linear(d, experts, bias=False)
        self.register_buffer("expert_bias", torch.zeros(experts))
        self._counts = torch.zeros(experts)

    def forward(self, h: Tensor) -> Tensor:
        """Dense gates: the chosen expert's probability, zero elsewhere (every expert stays in the graph, as DDP wants)."""
        p = self.gate(h).softmax(-1)
        idx = (p.detach() + self.expert_bias).argmax(-1, keepdim=True)
        if self.training:
            self._counts += torch.bincount(idx.flatten(), minlength=p.shape[-1])
        return torch.zeros_like(p).scatter(-1, idx, p.gather(-1, idx))

    def pop_expert_load(self) -> Tensor:
        counts, self._counts = self._counts, torch.zeros_like(self._counts)
        return counts


class ForeignMoE(ForeignClassifier):
    """The foreign classifier with a mixture of experts as its head: the least AuxFreeLoadBalancing needs."""

    def __init__(self) -> None:
        super().__init__()
        del self.net  # the experts replace the MLP (DDP refuses parameters that never get a gradient)
        self.router = _Router(8, 4)
        self.experts = nn.ModuleList(nn.Linear(8, 3) for _ in range(4))
        with torch.no_grad():
            self.router.gate.weight[0] += 1.0  # expert 0 wins most tokens: something to balance

    def forward(self, x: Tensor) -> Tensor:
        gates = self.router(x)  # (N, E)
        return torch.einsum("ne,nec->nc", gates, torch.stack([e(x) for e in self.experts], 1))


class ForeignCNN(ForeignClassifier):
    """A small CNN whose BatchNorm2d layers were converted to AdaB2N: the least AdaB2NCallback needs."""

    def __init__(self) -> None:
        super().__init__(num_classes=6)
        net = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 6)
        )
        self.net = convert_bn_to_adab2n(net, num_tasks=3, kappa=0.4)


class ForeignSubclassed(ForeignClassifier):
    """The foreign classifier with SubclassClustering's one extension point, ``set_subclasses``: the least it needs."""

    def set_subclasses(self, subclass_targets: Tensor, temperature_scales: Tensor) -> None:
        self.subclasses = (subclass_targets, temperature_scales)


class ForeignFactorised(ForeignClassifier):
    """The foreign classifier with a factorised linear head ``x F G^T`` and ``factor_parameters()``: what OneStepRebalance needs."""

    def __init__(self) -> None:
        super().__init__()
        del self.net
        self.F = nn.Parameter(0.1 * torch.randn(8, 4, generator=torch.Generator().manual_seed(0)))
        self.G = nn.Parameter(0.1 * torch.randn(3, 4, generator=torch.Generator().manual_seed(1)))

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.F @ self.G.T

    def factor_parameters(self) -> tuple[nn.Parameter, nn.Parameter]:
        return self.F, self.G


class BlobsInOrder(LightningDataModule):
    """Blob data (class 0 twice the size of the others) with ``eval_train_dataloader()``: what SubclassClustering embeds."""

    def train_dataloader(self) -> DataLoader:
        return blob_loader(n_per_class=(32, 16, 16))

    def eval_train_dataloader(self) -> DataLoader:
        return blob_loader(n_per_class=(32, 16, 16))


class BlobMixture(MixtureDataModule):
    """The blobs as 3 groups (one per class) mixed by a MixtureSampler, 8 fixed validation points each: what AioliMixing needs."""

    def __init__(self) -> None:
        x, y = blob_data().tensors
        groups = [(x[y == c], y[y == c]) for c in range(3)]
        super().__init__(groups, val_groups=[(gx[:8], gy[:8]) for gx, gy in groups], batch_size=16, steps_per_epoch=4)


class BlobsWithVal(LightningDataModule):
    """Plain blob train and validation loaders (64 + 24 points, 3 classes): what BIDSSelection selects from and scores against."""

    def train_dataloader(self) -> DataLoader:
        return blob_loader()

    def val_dataloader(self) -> DataLoader:
        return blob_loader(n_per_class=(8, 8, 8), seed=1)


# ------------------------------------------------------------- builders (module level: DDP pickles them)
def _plain(callback: Callback, **trainer: object) -> Job:
    return Job(ForeignClassifier(), [callback], {"train_dataloaders": blob_loader()}, dict(trainer))


def build_dynamic_ema() -> Job:
    return _plain(DynamicEMA())


def build_task_end_ema() -> Job:
    return _plain(TaskEndEMA(decay=0.9))


def build_neural_collapse() -> Job:
    return _plain(NeuralCollapseMonitor(every_n_epochs=1))


def build_robustness() -> Job:
    callback = RobustnessEvaluation(eps=0.1, steps=2, num_classes=3, stage="validate", random_start=False, clip=None)
    return Job(ForeignClassifier(), [callback], {"train_dataloaders": blob_loader(), "val_dataloaders": blob_loader(seed=1)})


def build_continual() -> Job:
    job = Job(ForeignClassifier(num_classes=6), [ContinualEvaluation(plot=False)], {"datamodule": ThreeTasks()})
    job.trainer = {"reload_dataloaders_every_n_epochs": 1, "limit_val_batches": 0}
    return job


def build_alf_lb() -> Job:
    return Job(ForeignMoE(), [AuxFreeLoadBalancing(update_rate=0.05, rule="sign")], {"train_dataloaders": blob_loader()})


def build_adab2n() -> Job:
    job = Job(ForeignCNN(), [AdaB2NCallback(lambd=0.5, classes_per_task=2)], {"datamodule": ThreeTasks(shape=(1, 6, 6))})
    job.trainer = {"reload_dataloaders_every_n_epochs": 1, "limit_val_batches": 0}
    return job


def build_save_pretrained() -> Job:
    callback = SavePretrained(tempfile.mkdtemp(prefix="zoo-contract-"))  # a fresh folder per run and per rank
    return Job(AnyLossClassifier(input_dim=8), [callback], {"train_dataloaders": blob_loader(n_per_class=(32, 32))})


def build_subclass_clustering() -> Job:
    return Job(ForeignSubclassed(), [SubclassClustering(every_n_epochs=1, warmup_epochs=1)], {"datamodule": BlobsInOrder()})


def build_aioli() -> Job:
    return Job(ForeignClassifier(), [AioliMixing(update_steps=6, lp_rounds=1, lp_steps=1, eta=1.0)], {"datamodule": BlobMixture()})


def build_bids() -> Job:
    job = Job(ForeignClassifier(), [BIDSSelection(budget_frac=0.5, warmup_epochs=1)], {"datamodule": BlobsWithVal()})
    job.trainer = {"reload_dataloaders_every_n_epochs": 1}
    return job


def build_one_step_rebalance() -> Job:
    return Job(ForeignFactorised(), [OneStepRebalance(at_step=3, gamma=0.5)], {"train_dataloaders": blob_loader()})


def build_stop_at_threshold() -> Job:
    return _plain(StopAtThreshold("train_loss", threshold=0.3, mode="min"))  # the per-step loss first dips under 0.3 at step 8


# ------------------------------------------------------------- what each callback must show it did
def _dema_moved(cb: DynamicEMA) -> None:
    assert cb._updates == 12 and 0 < cb.adaptive_fractions()["dema/adaptive_frac"] < 1  # 3 epochs x 4 steps


def _ema_moved(cb: TaskEndEMA) -> None:
    assert cb._average_model is not None and int(cb._average_model.n_averaged) == 12


def _nc_measured(cb: NeuralCollapseMonitor) -> None:
    assert [h["epoch"] for h in cb.history] == [0, 1, 2]


def _matrix_full(cb: ContinualEvaluation) -> None:
    assert cb.matrix is not None and not torch.isnan(cb.matrix).any() and cb.matrix[0, 0] > 50


def _bias_moved(cb: AuxFreeLoadBalancing) -> None:
    assert cb.num_updates == 12


def _tasks_ended(cb: AdaB2NCallback) -> None:
    assert cb.tasks_ended == 3


def _published(cb: SavePretrained) -> None:
    loaded = zoo.load(cb.dirpath)
    assert isinstance(loaded, AnyLossClassifier) and loaded.hparams["input_dim"] == 8


def _stopped(cb: StopAtThreshold) -> None:
    assert cb.stopped_step == 8  # the last step of epoch 1 of 3: training ended there


def _clustered(cb: SubclassClustering) -> None:
    assert cb.clustered_epochs == [1, 2] and cb.counts == [2, 1, 1] and cb.subclass_targets is not None
    assert set(cb.subclass_targets[:32].tolist()) == {0, 1} and set(cb.subclass_targets[32:].tolist()) == {2, 3}


def _mixed(cb: AioliMixing) -> None:
    assert len(cb.history) == 2 and cb.A_bar is not None and cb.p is not None  # 12 steps, rounds of 6
    assert not torch.allclose(cb.p, torch.full((3,), 1 / 3, dtype=cb.p.dtype))


def _selected(cb: BIDSSelection) -> None:
    assert cb.selected is not None and len(cb.selected) == 32 and cb.influence is None and cb.checkpoints == 1
    assert cb.class_counts is not None and sum(cb.class_counts) == 32 and min(cb.class_counts) > 0


def _rebalanced(cb: OneStepRebalance) -> None:
    assert cb.applied_step == 3 and cb.imbalance_before is not None and cb.imbalance_before > 0


def _nothing(cb: Callback) -> None:
    """RobustnessEvaluation keeps no state; its metrics are the evidence."""


@dataclass(frozen=True)
class Spec:
    """How to build a callback's run, what it must show, and what a plain foreign module gets instead."""

    build: Callable[[], Job]
    moved: Callable[[Callback], None]
    metrics: tuple[str, ...] = ()
    rank_local: tuple[str, ...] = ()  # metrics, or substrings of model state keys, of each rank's own batches
    needs: str | None = None  # the one setup error the plain ForeignClassifier gets (a regex), or None: it fits
    xfail: dict[str, str] = field(default_factory=dict)  # "fit" / "ddp" -> reason (a defect issue 9 names)
    crash_epoch: int = 2
    max_epochs: int = 3


SPECS: dict[type[Callback], Spec] = {
    DynamicEMA: Spec(build_dynamic_ema, _dema_moved, ("dema/adaptive_frac",)),  # type: ignore[arg-type]
    TaskEndEMA: Spec(build_task_end_ema, _ema_moved),  # type: ignore[arg-type]
    NeuralCollapseMonitor: Spec(build_neural_collapse, _nc_measured, ("nc/NC1", "nc/NC2_W", "nc/NC2_H", "nc/NC3")),  # type: ignore[arg-type]
    RobustnessEvaluation: Spec(
        build_robustness, _nothing, ("robust/clean_acc", "robust/pgd_acc", "robust/cw_mpc"),
    ),  # fmt: skip
    ContinualEvaluation: Spec(build_continual, _matrix_full, ("cl/avg_acc",), needs="needs a continual DataModule", crash_epoch=1),  # type: ignore[arg-type]
    AuxFreeLoadBalancing: Spec(build_alf_lb, _bias_moved, ("alf_lb/maxvio",), needs="has no router to balance"),  # type: ignore[arg-type]
    SavePretrained: Spec(build_save_pretrained, _published, needs="needs a zoo.ZooModule"),  # type: ignore[arg-type]
    StopAtThreshold: Spec(build_stop_at_threshold, _stopped, ("train_loss",), ("train_loss",), crash_epoch=1),  # type: ignore[arg-type]
    SubclassClustering: Spec(  # type: ignore[arg-type]
        build_subclass_clustering, _clustered, ("sbcl/num_subclasses",), needs="needs a module with set_subclasses"
    ),
    BIDSSelection: Spec(build_bids, _selected, ("bids/selected", "bids/min_class_selected"), needs="needs a DataModule"),  # type: ignore[arg-type]
    AioliMixing: Spec(build_aioli, _mixed, ("aioli/p_0",), needs="needs a mixture DataModule"),  # type: ignore[arg-type]
    OneStepRebalance: Spec(build_one_step_rebalance, _rebalanced, needs="needs a module with factor_parameters"),  # type: ignore[arg-type]
    AdaB2NCallback: Spec(  # type: ignore[arg-type]
        build_adab2n, _tasks_ended, ("train/adab2n_penalty",), ("train/adab2n_penalty", "running_"), needs="no AdaB2N layer; convert its BatchNorm2d first"
    ),
}


def _cases(contract: str) -> list:
    return [
        pytest.param(cls, id=cls.__name__, marks=[pytest.mark.xfail(strict=True, reason=s.xfail[contract])] if contract in s.xfail else [])
        for cls, s in SPECS.items()
    ]


def _exported_callbacks() -> set[type]:
    return {obj for name in zoo.callbacks.__all__ if inspect.isclass(obj := getattr(zoo.callbacks, name)) and issubclass(obj, Callback)}


# ------------------------------------------------------------------------------------ the table
def test_every_exported_callback_has_a_spec() -> None:
    exported = _exported_callbacks()
    missing = sorted(c.__name__ for c in exported - set(SPECS))
    assert not missing, f"add a Spec to SPECS in {__file__} for: {missing}"
    assert set(SPECS) == exported
    registered = {import_object(e.target) for e in list_entries("callback")}
    assert registered and registered <= exported, "every registry entry of kind 'callback' is exported by zoo.callbacks"


# ------------------------------------------------------------------------ (a) and (b), one process
@pytest.mark.parametrize("cls", _cases("fit"))
def test_drops_in_and_resumes_exactly(cls: type[Callback], tmp_path: Path) -> None:
    spec = SPECS[cls]
    runs = crash_and_resume(tmp_path, spec.build, spec.max_epochs, spec.crash_epoch)
    callback = next(c for c in runs.reference.callbacks if isinstance(c, cls))
    spec.moved(callback)  # (a): it trained and did its job
    for key in spec.metrics:
        assert key in runs.reference_trainer.callback_metrics, (key, sorted(runs.reference_trainer.callback_metrics))
    resumed = next(c for c in runs.resumed.callbacks if isinstance(c, cls))
    if callback.state_dict():  # the state went into the checkpoint
        saved = torch.load(runs.checkpoint, weights_only=False)["callbacks"]
        assert any(key.startswith(cls.__name__) for key in saved), sorted(saved)
    tolerance = dict(rtol=1e-6, atol=1e-7)  # (b)
    assert_same_state(runs.resumed.model, runs.reference.model, "model", **tolerance)
    assert_same_state(resumed.state_dict(), callback.state_dict(), f"{cls.__name__}.state_dict()", **tolerance)
    for key in spec.metrics:
        assert_same_state(float(runs.resumed_trainer.callback_metrics[key]), float(runs.reference_trainer.callback_metrics[key]), key, **tolerance)


@pytest.mark.parametrize("cls", [c for c, s in SPECS.items() if s.needs], ids=lambda c: c.__name__)
def test_plain_module_gets_one_clear_error_at_setup(cls: type[Callback], tmp_path: Path) -> None:
    spec = SPECS[cls]
    assert spec.needs is not None
    callback = next(c for c in spec.build().callbacks if isinstance(c, cls))
    model = ForeignClassifier()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = Trainer(max_epochs=1, callbacks=[callback], enable_checkpointing=False, default_root_dir=tmp_path, **TRAINER_KWARGS)
    with pytest.raises((RuntimeError, TypeError), match=spec.needs) as raised:
        trainer.fit(model, blob_loader())
    assert any(entry.name == "setup" for entry in raised.traceback), "raised at setup, before any training"
    assert trainer.global_step == 0 and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


# ------------------------------------------------------------------------------- (c) under DDP
@pytest.fixture(scope="module")
def ddp_records(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Every spec's run under DDP with 2 CPU processes, all in one spawn."""
    return run_ddp(tmp_path_factory.mktemp("ddp"), {cls.__name__: s.build for cls, s in SPECS.items()}, max_epochs=2)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("cls", _cases("ddp"))
def test_ranks_agree_under_ddp(cls: type[Callback], ddp_records: dict) -> None:
    records = ddp_records[cls.__name__]
    assert not isinstance(records, str), records
    rank0, rank1 = records
    assert rank0["world"] == rank1["world"] == 2
    local = SPECS[cls].rank_local  # e.g. BatchNorm-style running statistics of each rank's own batches
    shared = {k: v for k, v in rank0["state"].items() if not any(part in k for part in local)}
    assert_same_state({k: rank1["state"][k] for k in shared}, shared, "model state")  # parameters and buffers (router biases)
    assert_same_state(rank1["parameters"], rank0["parameters"], "parameters")
    assert_same_state(rank1["callbacks"][cls.__name__], rank0["callbacks"][cls.__name__], f"{cls.__name__}.state_dict()")
    for key in SPECS[cls].metrics:
        assert key in rank0["metrics"], (key, sorted(rank0["metrics"]))
        if key not in SPECS[cls].rank_local:
            assert rank0["metrics"][key] == rank1["metrics"][key], key
