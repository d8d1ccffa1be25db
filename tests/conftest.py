"""Shared test pieces: a foreign LightningModule, seeded loaders, crash-and-resume and DDP helpers.

Every drop-in callback is tested on :class:`ForeignClassifier`, a LightningModule that knows
nothing of the zoo (batches ``(x, y)``, ``forward(x) -> logits``). :func:`crash_and_resume` trains
to an epoch, crashes, resumes from ``last.ckpt`` and returns the run next to an uninterrupted one.
:func:`run_ddp` trains under DDP with two CPU processes (gloo) and returns what every rank saw.

Why :class:`CleanDDPTeardown`: Lightning destroys the process group at exit only for NCCL
(``lightning.fabric.utilities.distributed._init_dist_connection`` registers the ``atexit`` hook for
``nccl`` alone), so a gloo worker exits with its process group alive and, in about 1 run of 9
here (torch 2.14, Lightning 2.6.6), aborts in the C++ destructor ("terminate called without an
active exception", SIGABRT), which fails the test that spawned it. A barrier (both ranks done
with every collective) and ``destroy_process_group()`` before the worker exits removed it.
"""

from __future__ import annotations

import os
import pickle
import socket
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import DDPStrategy
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset
from typing_extensions import override

__all__ = [
    "TRAINER_KWARGS",
    "Payload",
    "save_checkpoint",
    "write_pickled",
    "CleanDDPTeardown",
    "CrashAt",
    "ForeignClassifier",
    "Job",
    "Resumed",
    "SimulatedCrash",
    "assert_same_state",
    "blob_data",
    "blob_loader",
    "crash_and_resume",
    "run_ddp",
]

TRAINER_KWARGS: dict[str, Any] = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)


# ------------------------------------------------------------------------ the foreign model
class ForeignClassifier(LightningModule):
    """A plain MLP classifier that knows nothing of the zoo: ``(x, y)`` batches, ``forward(x) -> logits``, SGD."""

    def __init__(self, in_features: int = 8, hidden: int = 16, num_classes: int = 3, lr: float = 0.1) -> None:
        super().__init__()
        self.lr = lr
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y), sync_dist=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y = batch
        self.log("test_acc", (self(x).argmax(-1) == y).float().mean(), sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def blob_data(n_per_class: Sequence[int] = (24, 24, 16), dim: int = 8, seed: int = 0, noise: float = 0.5) -> TensorDataset:
    """Gaussian blobs around seeded class centres: ``x (N, dim)``, ``y (N,)`` sorted by class."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(len(n_per_class), dim, generator=g) * 2
    y = torch.repeat_interleave(torch.arange(len(n_per_class)), torch.tensor(list(n_per_class)))
    return TensorDataset(centers[y] + noise * torch.randn(len(y), dim, generator=g), y)


def blob_loader(n_per_class: Sequence[int] = (24, 24, 16), dim: int = 8, seed: int = 0, batch_size: int = 16) -> DataLoader:
    """An unshuffled loader of :func:`blob_data` (64 samples by default: 2 ranks x 2 batches x 16, no padding).

    Unshuffled so a resumed run sees the same batches without restoring any RNG; under DDP
    Lightning's DistributedSampler shuffles with its own seed.
    """
    return DataLoader(blob_data(n_per_class, dim, seed), batch_size=batch_size, shuffle=False)


# ------------------------------------------------------------------------ crash and resume
class SimulatedCrash(RuntimeError):
    """Raised by :class:`CrashAt`; nothing else raises it, so a test can expect exactly this."""


class CrashAt(Callback):
    """Kills the run at the start of ``epoch`` (0-based), after the previous epoch's checkpoint was written."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    @override
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            raise SimulatedCrash(f"simulated crash at the start of epoch {self.epoch}")


@dataclass
class Job:
    """One training run: the module, its callbacks, ``fit`` arguments and extra Trainer arguments."""

    model: LightningModule
    callbacks: list[Callback]
    fit: dict[str, Any] = field(default_factory=dict)
    trainer: dict[str, Any] = field(default_factory=dict)


def _fit(job: Job, root: Path, max_epochs: int, extra: Sequence[Callback] = (), ckpt_path: Path | None = None) -> Trainer:
    callbacks = [*job.callbacks, *extra]
    kwargs = {**TRAINER_KWARGS, "enable_checkpointing": any(isinstance(c, ModelCheckpoint) for c in callbacks), **job.trainer}
    trainer = Trainer(max_epochs=max_epochs, callbacks=callbacks, default_root_dir=root, **kwargs)
    trainer.fit(job.model, **job.fit, ckpt_path=ckpt_path)
    return trainer


@dataclass
class Resumed:
    """An uninterrupted run (``reference``) and the run that crashed and resumed (``resumed``)."""

    reference: Job
    reference_trainer: Trainer
    resumed: Job
    resumed_trainer: Trainer
    checkpoint: Path


def crash_and_resume(tmp_path: Path, build: Callable[[], Job], max_epochs: int, crash_epoch: int) -> Resumed:
    """Train ``build()`` straight through; then crash at ``crash_epoch`` and resume a fresh ``build()`` from ``last.ckpt``.

    The resumed run starts from another global seed, so only the checkpoint can make it equal.
    """
    seed_everything(0)
    reference = build()
    reference_trainer = _fit(reference, tmp_path / "reference", max_epochs)
    seed_everything(0)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_on_train_epoch_end=True)
    with pytest.raises(SimulatedCrash):
        _fit(build(), tmp_path / "crashed", max_epochs, [checkpoint, CrashAt(crash_epoch)])
    seed_everything(1)
    resumed = build()
    last = tmp_path / "ckpt" / "last.ckpt"
    resumed_trainer = _fit(resumed, tmp_path / "resumed", max_epochs, ckpt_path=last)
    return Resumed(reference, reference_trainer, resumed, resumed_trainer, last)


class CrashAfterBatch(Callback):
    """Writes a checkpoint after training batch ``batch_idx`` (in the middle of a pass) and kills the run."""

    def __init__(self, batch_idx: int, path: Path) -> None:
        self.batch_idx, self.path = batch_idx, path

    @override
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx == self.batch_idx:
            trainer.save_checkpoint(self.path)
            raise SimulatedCrash(f"simulated crash after batch {batch_idx}")


@dataclass
class MidPassRuns:
    """One pass straight through (``full``), the run killed mid-pass (``crashed``) and its resumption (``resumed``)."""

    full: LightningModule
    crashed: LightningModule
    resumed: LightningModule
    checkpoint: Path


def resume_mid_pass(tmp_path: Path, build: Callable[[], LightningModule], data: Callable[[], Any], crash_batch: int) -> MidPassRuns:
    """Fit ``build()`` on ``data()`` for one pass; then crash after ``crash_batch`` and resume a fresh ``build()``.

    For stream-serving modules (``OnlineModule``): Lightning replays a mid-epoch resume from the loader's
    first batch, so only the module's own stream position can make ``resumed`` equal ``full``.
    """

    def fit(root: str, callbacks: Sequence[Callback] = (), ckpt_path: Path | None = None) -> LightningModule:
        model = build()
        trainer = Trainer(max_epochs=1, callbacks=list(callbacks), default_root_dir=tmp_path / root, **{**TRAINER_KWARGS, "enable_checkpointing": False})
        trainer.fit(model, data(), ckpt_path=ckpt_path)
        return model

    checkpoint = tmp_path / "mid_pass.ckpt"
    full = fit("full")
    crashed = build()
    with pytest.raises(SimulatedCrash):
        trainer = Trainer(
            max_epochs=1,
            callbacks=[CrashAfterBatch(crash_batch, checkpoint)],
            default_root_dir=tmp_path / "crashed",
            **{**TRAINER_KWARGS, "enable_checkpointing": False},
        )
        trainer.fit(crashed, data())
    return MidPassRuns(full, crashed, fit("resumed", ckpt_path=checkpoint), checkpoint)


def assert_same_state(got: Any, want: Any, where: str = "state", rtol: float = 0.0, atol: float = 0.0) -> None:
    """Recursive equality of (nested) states: tensors within ``rtol``/``atol`` (exact by default), NaN equal to NaN."""
    if isinstance(want, nn.Module):
        got, want = got.state_dict(), want.state_dict()
    if isinstance(want, Tensor):
        assert isinstance(got, Tensor) and got.shape == want.shape, f"{where}: {got!r} vs {want!r}"
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol, equal_nan=True, msg=lambda m: f"{where}: {m}")
    elif isinstance(want, Mapping):
        assert set(got) == set(want), f"{where}: keys {sorted(map(str, got))} vs {sorted(map(str, want))}"
        for key in want:
            assert_same_state(got[key], want[key], f"{where}[{key!r}]", rtol, atol)
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), f"{where}: length {len(got)} vs {len(want)}"
        for i, (a, b) in enumerate(zip(got, want)):
            assert_same_state(a, b, f"{where}[{i}]", rtol, atol)
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=rtol, abs=atol, nan_ok=True), f"{where}: {got} vs {want}"
    else:
        assert got == want, f"{where}: {got!r} vs {want!r}"


# -------------------------------------------------------------------------------------- DDP
class CleanDDPTeardown(Callback):
    """Destroys the gloo process group in each worker's ``teardown``, so no worker aborts at exit (see the module doc).

    Add it last: callbacks tear down in list order, after every training hook, and Lightning's
    launcher needs no collective afterwards. A no-op without a process group.
    """

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        _destroy_process_group()


def _destroy_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


class _DumpRank(Callback):
    """At the end of fit every rank writes its model, callback states and logged metrics to ``out/rank{r}.pt``."""

    def __init__(self, out: Path) -> None:
        self.out = out

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        record = {
            "world": trainer.world_size,
            "parameters": {n: p.detach().clone() for n, p in pl_module.named_parameters()},
            "state": {k: v.detach().clone() for k, v in pl_module.state_dict().items()},
            "callbacks": {type(c).__name__: c.state_dict() for c in trainer.callbacks if c is not self},  # type: ignore[attr-defined]
            "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
        }
        torch.save(record, self.out / f"rank{trainer.global_rank}.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ddp_worker(rank: int, world: int, port: int, builds: dict[str, Callable[[], Job]], out: Path, max_epochs: int) -> None:
    """One process of :func:`run_ddp`: joins the group once, then fits every job with Lightning's DDP strategy."""
    # LOCAL_RANK tells Lightning the processes exist already (LightningEnvironment), so it launches none
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), NODE_RANK="0", LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    try:
        for name, build in builds.items():
            (out / name).mkdir(parents=True, exist_ok=True)
            try:
                seed_everything(0)
                job = build()
                strategy = DDPStrategy(process_group_backend="gloo", timeout=timedelta(seconds=60))
                trainer_kwargs = {**TRAINER_KWARGS, "enable_checkpointing": False, **job.trainer}
                trainer = Trainer(
                    max_epochs=max_epochs, devices=world, strategy=strategy, callbacks=[*job.callbacks, _DumpRank(out / name)],
                    default_root_dir=out / name, **trainer_kwargs,
                )  # fmt: skip
                trainer.fit(job.model, **job.fit)
            except Exception:  # recorded for the test; the next job still runs (every rank fails alike here)
                (out / name / f"rank{rank}.err").write_text(traceback.format_exc())
    finally:
        _destroy_process_group()


def run_ddp(out: Path, builds: dict[str, Callable[[], Job]], max_epochs: int = 2, world: int = 2) -> dict[str, list[dict] | str]:
    """Fit every ``builds[name]()`` under DDP with ``world`` CPU processes (gloo); returns each job's per-rank records.

    One spawn serves all jobs (the process start is most of a DDP run's ~12 s here). Each
    ``build`` must be a module-level function (it is pickled into the workers) and is called
    after ``seed_everything(0)`` on every rank. A job that raised maps to its traceback instead.
    Records (from the end of fit): ``world``, ``parameters``, ``state`` (the model's
    ``state_dict``), ``callbacks`` (``state_dict`` per callback class name), ``metrics``.
    """
    mp.start_processes(_ddp_worker, args=(world, _free_port(), builds, out, max_epochs), nprocs=world, start_method="spawn")
    results: dict[str, list[dict] | str] = {}
    for name in builds:
        errors = sorted((out / name).glob("rank*.err"))
        if errors:
            results[name] = "\n".join(e.read_text() for e in errors)
        else:
            results[name] = [torch.load(out / name / f"rank{r}.pt", weights_only=True) for r in range(world)]
    return results


# ------------------------------------------------------------------------ hostile files
class Payload:
    """Unpickling this runs ``exec``, which writes ``marker``: what a hostile checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def write_pickled(path: Path, obj: object, *, torch_format: bool = True) -> Path:
    """``obj`` in torch.save's zip format or as a bare pickle (the two shapes a .ckpt/.bin can have)."""
    if torch_format:
        torch.save(obj, path)
    else:
        path.write_bytes(pickle.dumps(obj, protocol=2))
    return path


def save_checkpoint(model: LightningModule, path: Path) -> Path:
    """A real Lightning checkpoint (with ZooModule's ``zoo`` record), without training."""
    trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)
    return path
