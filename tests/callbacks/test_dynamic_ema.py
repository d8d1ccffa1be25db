"""DynamicEMA / TaskEndEMA against hand computations, a naive per-tensor loop, resume and DDP.

The reference :func:`naive_update` is written apart from the module, per tensor and in float64,
following the official ``ema_update`` (JingyangQiao/CoIN, ``CoIN/peft/tuners/lora.py``).
Every Lightning test uses the foreign classifier of ``tests/conftest.py`` (batches ``(x, y)``)
and a continual DataModule defined here, not the zoo's own classes.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningDataModule, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, Sampler, TensorDataset

from tests.conftest import TRAINER_KWARGS, CrashAt, ForeignClassifier, Job, SimulatedCrash, assert_same_state, run_ddp
from zoo.callbacks.dynamic_ema import DynamicEMA, TaskEndEMA, _norms, balance_weights, dynamic_ema_update

torch.set_num_threads(1)


# ------------------------------------------------------------------------------ references
def naive_update(shadow: dict, params: dict, grads: dict, prev: dict, fallback: float = 0.01) -> dict[str, bool]:
    """One official ``ema_update`` per tensor, float64; returns which tensors used the formula."""
    used = {}
    for name, p in params.items():
        p, g = p.double(), grads[name].double()
        if name not in shadow:  # official: deepcopy, then the except branch (no previous grad)
            shadow[name] = p.clone()
            used[name] = False
        else:
            a = float((p - shadow[name]).abs().sum())
            b = float(g.abs().sum())
            c = float((g - prev[name]).abs().sum()) if name in prev else 0.0
            alpha = 2 * (1 + b) / (a * c) if a * c != 0 else math.inf
            used[name] = 0 < alpha < 1
            alpha = alpha if used[name] else fallback
            shadow[name] = shadow[name] * (1 - alpha) + p * alpha
        prev[name] = g.clone()
    return used


def naive_fixed_ema(shadow: dict, params: dict, decay: float) -> None:
    for name, p in params.items():
        shadow[name] = p.double().clone() if name not in shadow else decay * shadow[name] + (1 - decay) * p.double()


# ------------------------------------------------------------------------------ the maths
def test_balance_weights_hand_computed() -> None:
    a = torch.tensor([4.0, 0.0, 1.0, 3.0, 2.0, float("nan"), 10.0])
    b = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.5, 1.0, 2.0])
    c = torch.tensor([2.0, 5.0, 1.0, 0.0, 6.0, 1.0, 3.0])
    valid = torch.tensor([True, True, True, True, True, True, False])
    beta, used = balance_weights(a, b, c, fallback=0.01, valid=valid)
    # 2*2/8 = 0.5; a = 0 -> inf; 2*2/1 = 4 >= 1; c = 0 -> inf; 2*1.5/12 = 0.25; NaN; 2*3/30 = 0.2 but not valid
    assert used.tolist() == [True, False, False, False, True, False, False]
    assert beta.tolist() == pytest.approx([0.5, 0.01, 0.01, 0.01, 0.25, 0.01, 0.01])


def test_update_on_tiny_tensors_by_hand() -> None:
    shadow = [torch.tensor([0.0, 0.0]), torch.tensor([[1.0, 1.0], [1.0, 1.0]])]
    params = [torch.tensor([3.0, -1.0]), torch.tensor([[1.0, 1.0], [1.0, 2.0]])]
    grads = [torch.tensor([0.5, -0.5]), torch.tensor([[0.0, 0.0], [0.0, 1.0]])]
    prev = [torch.tensor([-1.5, 1.5]), torch.tensor([[0.0, 0.0], [0.0, 1.0]])]
    beta, used = dynamic_ema_update(shadow, params, grads, prev, torch.tensor([True, True]), fallback=0.01)
    # tensor 0: a = 4, b = 1, c = |0.5+1.5| + |-0.5-1.5| = 4 -> beta = 2*2/16 = 0.25
    # tensor 1: a = 1, b = 1, c = 0 -> fallback 0.01
    assert used.tolist() == [True, False]
    assert beta.tolist() == pytest.approx([0.25, 0.01])
    assert torch.allclose(shadow[0], torch.tensor([0.75, -0.25]))
    assert torch.allclose(shadow[1], torch.tensor([[1.0, 1.0], [1.0, 1.01]]))
    assert all(torch.equal(p, g) for p, g in zip(prev, grads))  # g_{t-1} <- g_t


def test_update_equals_naive_loop_over_steps() -> None:
    gen = torch.Generator().manual_seed(0)
    shapes = {"w1": (16, 8), "b1": (16,), "w2": (4, 16), "b2": (4,), "frozen_grad": (3, 3)}
    theta = {n: torch.randn(s, generator=gen) for n, s in shapes.items()}
    shadow_ref: dict = {}
    prev_ref: dict = {}
    shadow, prev, valid = None, None, None
    used_any = used_fallback = 0
    for step in range(12):
        theta = {n: t - 0.3 * torch.randn(t.shape, generator=gen) for n, t in theta.items()}
        grads = {n: torch.randn(t.shape, generator=gen) * (0.05 if n.startswith("b") else 2.0) for n, t in theta.items()}
        grads["frozen_grad"] = torch.zeros(3, 3)  # c = 0 -> always the fallback
        used_ref = naive_update(shadow_ref, theta, grads, prev_ref)
        params, g = list(theta.values()), list(grads.values())
        if shadow is None:  # the callback's first update of a task is a copy
            shadow, prev = [p.clone() for p in params], [x.clone() for x in g]
            valid = torch.ones(len(params), dtype=torch.bool)
            continue
        beta, used = dynamic_ema_update(shadow, params, g, prev, valid, fallback=0.01)
        assert used.tolist() == list(used_ref.values()), step
        used_any += int(used.sum())
        used_fallback += int((~used).sum())
        for name, s in zip(theta, shadow):
            assert torch.allclose(s.double(), shadow_ref[name], rtol=1e-5, atol=1e-6), (step, name)
    assert used_any > 10 and used_fallback > 10  # both branches exercised


def test_norms_fast_path_equals_foreach_norm() -> None:
    gen = torch.Generator().manual_seed(1)
    tensors = [torch.randn(5, 7, generator=gen), torch.randn(3, generator=gen), torch.randn(2, 3, 3, 3, generator=gen)]
    by_hand = torch.tensor([float(t.double().abs().sum()) for t in tensors], dtype=torch.float32)
    assert torch.allclose(_norms(tensors, 1), by_hand)  # CPU path: abs().sum()
    assert torch.allclose(torch.stack(torch._foreach_norm(tensors, 1)), by_hand)  # the path other devices take
    scratch = [t.clone() for t in tensors]
    assert torch.allclose(_norms(scratch, 1, scratch=True), by_hand)
    assert torch.allclose(_norms(tensors, 2), torch.stack([t.norm() for t in tensors]))


# ------------------------------------------------------------------------ Lightning pieces
class TinyNet(ForeignClassifier):
    """The foreign classifier (6 -> 32 -> 3, SGD lr 0.5) that also records the first layer validation sees."""

    def __init__(self, lr: float = 0.5) -> None:
        super().__init__(in_features=6, hidden=32, num_classes=3, lr=lr)
        self.val_weights: list[torch.Tensor] = []

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 0:
            self.val_weights.append(self.net[0].weight.detach().clone())
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))


def tiny_data(n: int = 96, seed: int = 0) -> TensorDataset:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=gen)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return TensorDataset(x, y)


class TwoTasks(LightningDataModule):
    """A continual DataModule written for the test: task t flips the sign of the inputs, 2 epochs per task.

    It satisfies :class:`zoo.datamodules.continual.TaskSchedule` (the protocol callbacks read),
    and reshuffles by the epoch Lightning sets on the sampler, so a resumed run sees the same batches
    (a DataLoader generator would not do: Lightning may iterate a loader more than once).
    """

    num_tasks, epochs_per_task = 2, 2

    def __init__(self, batch_size: int = 16) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.data = tiny_data()

    def task_of_epoch(self, epoch: int) -> int:
        return min(epoch // self.epochs_per_task, self.num_tasks - 1)

    def is_task_end(self, epoch: int) -> bool:
        return (epoch + 1) % self.epochs_per_task == 0

    def task_classes(self, task: int) -> list[int]:
        return [0, 1, 2]

    def train_dataloader(self) -> DataLoader:
        x, y = self.data.tensors
        sign = 1.0 - 2.0 * self.task_of_epoch(self.trainer.current_epoch)
        return DataLoader(TensorDataset(sign * x, y), self.batch_size, sampler=EpochShuffle(len(y)))


class EpochShuffle(Sampler):
    """A shuffle that depends only on the epoch Lightning sets (``set_epoch``), not on how often it is iterated."""

    def __init__(self, n: int) -> None:
        self.n, self.epoch = n, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        return iter(torch.randperm(self.n, generator=torch.Generator().manual_seed(self.epoch)).tolist())


class Recorder(Callback):
    """Records (params, grads) after every real optimizer step and the model at every epoch end."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, dict, dict]] = []  # (epoch, params, grads)
        self.epoch_end: list[dict] = []
        self._seen = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step > self._seen:
            self._seen = trainer.global_step
            named = list(pl_module.named_parameters())
            self.steps.append(
                (trainer.current_epoch, {n: p.detach().clone() for n, p in named}, {n: p.grad.clone() for n, p in named})
            )

    def on_train_epoch_end(self, trainer, pl_module):
        self.epoch_end.append({n: p.detach().clone() for n, p in pl_module.named_parameters()})


def fit(callbacks, datamodule=None, loader=None, max_epochs=4, **kwargs) -> tuple[TinyNet, Trainer]:
    seed_everything(0)
    model = TinyNet()
    trainer = Trainer(max_epochs=max_epochs, callbacks=callbacks, **{**TRAINER_KWARGS, "enable_checkpointing": False, **kwargs})
    trainer.fit(model, datamodule=datamodule, train_dataloaders=loader)
    return model, trainer


def assert_close(got: dict, want: dict, **tol) -> None:
    for name in want:
        assert torch.allclose(got[name].double(), want[name].double(), **(tol or dict(rtol=1e-5, atol=1e-6))), name


# ------------------------------------------------------------------------------ in training
@pytest.mark.parametrize("accumulate", [1, 2])
def test_updates_only_on_optimizer_steps_and_match_naive_loop(accumulate: int) -> None:
    recorder, ema = Recorder(), DynamicEMA()
    loader = DataLoader(tiny_data(), batch_size=8, shuffle=False)  # 12 batches per epoch
    model, trainer = fit([recorder, ema], loader=loader, max_epochs=2, accumulate_grad_batches=accumulate)
    assert trainer.global_step == 24 // accumulate == len(recorder.steps) == ema._updates
    shadow, prev = {}, {}
    used = [naive_update(shadow, params, grads, prev) for _, params, grads in recorder.steps]
    assert_close(dict(model.named_parameters()), shadow)  # the average replaced the weights at train end
    n_used = sum(sum(u.values()) for u in used)
    fractions = ema.adaptive_fractions()
    assert fractions["dema/adaptive_frac"] == pytest.approx(n_used / (4 * len(used)))
    assert 0 < fractions["dema/adaptive_frac"] < 1
    assert trainer.callback_metrics["dema/adaptive_frac"] == pytest.approx(fractions["dema/adaptive_frac"])
    assert "dema/adaptive_frac_matrices" in trainer.callback_metrics


def test_task_end_replaces_weights_and_restarts_the_average() -> None:
    recorder, ema = Recorder(), DynamicEMA()
    model, trainer = fit([ema, recorder], datamodule=TwoTasks(), max_epochs=4, reload_dataloaders_every_n_epochs=1)
    live = [p.detach().clone() for p in model.parameters()]
    for task in range(2):  # a fresh naive average per task, copied into the model at the task's end
        shadow, prev = {}, {}
        for epoch, params, grads in recorder.steps:
            if epoch // 2 == task:
                naive_update(shadow, params, grads, prev)
        assert_close(recorder.epoch_end[2 * task + 1], shadow)
    # mid-task (epoch 0, 6 steps) the model keeps its own weights; at the task end (epoch 1) they are replaced
    assert torch.equal(recorder.epoch_end[0]["net.0.weight"], recorder.steps[5][1]["net.0.weight"])
    assert not torch.allclose(recorder.epoch_end[1]["net.0.weight"], recorder.steps[11][1]["net.0.weight"])
    # the last task end already replaced the weights; train end copies nothing older
    assert all(torch.equal(a, b) for a, b in zip(live, recorder.epoch_end[-1].values()))


def test_fixed_ema_baseline_has_the_same_task_end_replacement() -> None:
    recorder, ema = Recorder(), TaskEndEMA(decay=0.9)
    fit([ema, recorder], datamodule=TwoTasks(), max_epochs=4, reload_dataloaders_every_n_epochs=1)
    for task in range(2):
        shadow: dict = {}
        for epoch, params, _ in recorder.steps:
            if epoch // 2 == task:
                naive_fixed_ema(shadow, params, 0.9)
        assert_close(recorder.epoch_end[2 * task + 1], shadow)


def test_without_replacement_the_model_is_untouched() -> None:
    no_replacement = DynamicEMA(replace_at_task_end=False, replace_at_train_end=False)
    observed, _ = fit([no_replacement], datamodule=TwoTasks(), max_epochs=4, reload_dataloaders_every_n_epochs=1)
    plain, _ = fit([], datamodule=TwoTasks(), max_epochs=4, reload_dataloaders_every_n_epochs=1)
    replaced, _ = fit([DynamicEMA()], datamodule=TwoTasks(), max_epochs=4, reload_dataloaders_every_n_epochs=1)
    for a, b in zip(observed.parameters(), plain.parameters()):
        assert torch.equal(a, b)
    assert not all(torch.allclose(a, c) for a, c in zip(plain.parameters(), replaced.parameters()))


def test_drop_in_validation_sees_the_average_and_never_an_empty_one() -> None:
    recorder, ema = Recorder(), DynamicEMA()
    loader = DataLoader(tiny_data(), batch_size=8, shuffle=False)
    val = DataLoader(tiny_data(32, seed=1), batch_size=16)
    seed_everything(0)
    model = TinyNet()
    initial = model.net[0].weight.detach().clone()
    trainer = Trainer(max_epochs=2, callbacks=[recorder, ema], **{**TRAINER_KWARGS, "num_sanity_val_steps": 1, "enable_checkpointing": False})
    trainer.fit(model, loader, val)
    # sanity validation ran before any update: it saw the initial weights, not a swapped-in copy
    assert torch.equal(model.val_weights[0], initial)
    shadow, prev = {}, {}
    for epoch in range(2):
        for e, params, grads in recorder.steps:
            if e == epoch:
                naive_update(shadow, params, grads, prev)
        assert torch.allclose(model.val_weights[1 + epoch].double(), shadow["net.0.weight"], rtol=1e-5, atol=1e-6)
        # after validation the live weights came back
        assert torch.equal(recorder.epoch_end[epoch]["net.0.weight"], recorder.steps[12 * epoch + 11][1]["net.0.weight"])
    assert "dema/adaptive_frac" in trainer.callback_metrics


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="fallback_beta"):
        DynamicEMA(fallback_beta=0.0)
    with pytest.raises(ValueError, match="norm_p"):
        DynamicEMA(norm_p=0)


# ------------------------------------------------------------------------- crash and resume
@pytest.mark.parametrize("crash_epoch", [1, 2, 3])  # mid-task, right after a task end, mid second task
def test_crash_and_resume_continues_exactly(tmp_path: Path, crash_epoch: int) -> None:
    common = dict(max_epochs=4, reload_dataloaders_every_n_epochs=1)
    reference_ema = DynamicEMA()
    reference, _ = fit([reference_ema], datamodule=TwoTasks(), **common)

    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=-1)
    with pytest.raises(SimulatedCrash):
        fit([DynamicEMA(), ckpt, CrashAt(crash_epoch)], datamodule=TwoTasks(), **{**common, "enable_checkpointing": True})
    resumed_ema = DynamicEMA()
    seed_everything(1)  # a different global RNG state must not matter
    resumed = TinyNet()
    trainer = Trainer(callbacks=[resumed_ema], **{**TRAINER_KWARGS, **common, "enable_checkpointing": False})
    trainer.fit(resumed, datamodule=TwoTasks(), ckpt_path=tmp_path / "last.ckpt")

    for (name, a), b in zip(reference.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), name
    want, got = reference_ema.state_dict(), resumed_ema.state_dict()
    assert got.keys() == want.keys()
    for key in want:
        if key == "prev_grads":
            assert all(torch.equal(a, b) for a, b in zip(want[key], got[key]))
        elif isinstance(want[key], torch.Tensor):
            assert torch.equal(want[key], got[key]), key
        else:
            assert want[key] == got[key], key
    avg_a, avg_b = reference_ema._average_model.state_dict(), resumed_ema._average_model.state_dict()
    assert all(torch.equal(avg_a[k], avg_b[k]) for k in avg_a)


def test_state_dict_before_setup_is_applied_at_setup(tmp_path: Path) -> None:
    ema = DynamicEMA()
    fit([ema], loader=DataLoader(tiny_data(), batch_size=8), max_epochs=1)
    fresh = DynamicEMA()
    fresh.load_state_dict(ema.state_dict())
    assert fresh._pending_state is not None
    model = TinyNet()
    fresh.setup(Trainer(**TRAINER_KWARGS), model, "fit")
    assert fresh._updates == ema._updates and fresh._pending_state is None
    assert all(torch.equal(a, b) for a, b in zip(fresh._prev_grads, ema._prev_grads))


# ------------------------------------------------------------------------------------ DDP
class DumpState(Callback):
    """Every rank writes its averaged weights, model and callback counters to ``path``."""

    def __init__(self, path: Path, ema: DynamicEMA) -> None:
        self.path, self.ema = path, ema

    def on_train_end(self, trainer, pl_module):
        torch.save(
            {
                "average": {k: v.clone() for k, v in self.ema._average_model.module.state_dict().items()},
                "model": {k: v.clone() for k, v in pl_module.state_dict().items()},
                "prev_grads": [g.clone() for g in self.ema._prev_grads],
                "fractions": self.ema.adaptive_fractions(),
                "world": trainer.world_size,
            },
            self.path / f"rank{trainer.global_rank}.pt",
        )


def ema_job(path: Path, batch_size: int, sampler: Sampler | None = None) -> Job:
    """DynamicEMA without the train-end copy (so the average itself is compared) on the foreign classifier."""
    path.mkdir(parents=True, exist_ok=True)
    ema = DynamicEMA(replace_at_train_end=False)
    loader = DataLoader(tiny_data(), batch_size=batch_size, sampler=sampler)
    return Job(TinyNet(), [ema, DumpState(path, ema)], {"train_dataloaders": loader})


@pytest.mark.timeout(120)
def test_ddp_two_processes_agree_and_equal_one_process(tmp_path: Path) -> None:
    # DDP: Lightning's DistributedSampler (shuffle, seed 0, set_epoch) gives rank r positions r, r+2, ...
    # of randperm(96, seed=epoch), 8 per step; one process with that permutation and batch 16 sees the
    # union of both ranks' batches, and DDP's averaged gradient is the gradient of that union.
    records = run_ddp(tmp_path / "runs", {"ddp": functools.partial(ema_job, tmp_path / "ddp", 8)})
    assert not isinstance(records["ddp"], str), records["ddp"]
    seed_everything(0)
    single = ema_job(tmp_path / "single", 16, EpochShuffle(96))
    Trainer(max_epochs=2, callbacks=single.callbacks, enable_checkpointing=False, **TRAINER_KWARGS).fit(single.model, **single.fit)
    rank0, rank1 = (torch.load(tmp_path / "ddp" / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    single = torch.load(tmp_path / "single" / "rank0.pt", weights_only=True)
    assert rank0["world"] == 2 and single["world"] == 1
    for key in rank0["average"]:
        assert torch.equal(rank0["average"][key], rank1["average"][key]), key  # bit-identical across ranks
        assert torch.allclose(rank0["average"][key], single["average"][key], rtol=1e-4, atol=1e-6), key
    assert all(torch.equal(a, b) for a, b in zip(rank0["prev_grads"], rank1["prev_grads"]))
    assert rank0["fractions"] == rank1["fractions"]
    assert rank0["fractions"] == pytest.approx(single["fractions"], rel=1e-5)
    assert 0 < rank0["fractions"]["dema/adaptive_frac"] < 1
    assert not all(torch.equal(rank0["average"][k], rank0["model"][k]) for k in rank0["model"])


# ------------------------------------------------------------------------ buffers that grow
class GrowingMemory(TinyNet):
    """A foreign model with a replay-like buffer that grows by 5 rows every epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("memory", torch.zeros(0, 6))

    def on_train_epoch_start(self) -> None:
        self.memory = torch.cat([self.memory, torch.ones(5, 6)])


class GrowingFromTheStart(TinyNet):
    """A float buffer that is not empty at ``setup`` and grows later: averaged at first, then it must follow."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("memory", torch.ones(2, 6))

    def on_train_epoch_start(self) -> None:
        if self.current_epoch > 0:
            self.memory = torch.cat([self.memory, torch.full((1, 6), float(self.current_epoch))])


def both(**kwargs):
    return [pytest.param(lambda: DynamicEMA(**kwargs), id="DynamicEMA"), pytest.param(lambda: TaskEndEMA(decay=0.9, **kwargs), id="TaskEndEMA")]


@pytest.mark.parametrize("make", both())
@pytest.mark.parametrize("model_cls", [GrowingMemory, GrowingFromTheStart])
def test_a_buffer_that_grows_follows_the_live_model(make, model_cls) -> None:
    seed_everything(0)
    model, ema = model_cls(), make()
    val = DataLoader(tiny_data(32, seed=1), batch_size=16)
    Trainer(max_epochs=3, callbacks=[ema], enable_checkpointing=False, **TRAINER_KWARGS).fit(model, DataLoader(tiny_data(), batch_size=16), val)
    want = torch.cat([torch.ones(2, 6), torch.ones(1, 6), torch.full((1, 6), 2.0)]) if model_cls is GrowingFromTheStart else torch.ones(15, 6)
    assert torch.equal(model.memory, want)  # the train-end copy never puts back a stale (shorter) buffer
    if model_cls is GrowingFromTheStart and isinstance(ema, TaskEndEMA):  # averaged while it kept its shape, then followed
        assert ema.state_dict()["followed_buffers"] == ["memory"]


class ReplayTasks(TwoTasks):
    """TwoTasks with labels ``{0, 1}`` in task 0 and ``{1, 2}`` in task 1 (so ER-ACE masks something)."""

    def train_dataloader(self) -> DataLoader:
        x, y = self.data.tensors
        task = self.task_of_epoch(self.trainer.current_epoch)
        y = torch.clamp(y, max=1) + task
        return DataLoader(TensorDataset(x, y), self.batch_size, sampler=EpochShuffle(len(y)))


def replay_model(method: str):
    from zoo.templates.continual import ContinualClassifier

    return ContinualClassifier(num_classes=3, input_dim=6, hidden_dims=[16], method=method, buffer_size=20, replay_batch_size=8, lr=0.5)


def fit_replay(method: str, callbacks, max_epochs: int = 4, **kwargs):
    seed_everything(0)
    model = replay_model(method)
    trainer = Trainer(
        max_epochs=max_epochs, callbacks=callbacks, reload_dataloaders_every_n_epochs=1, **{**TRAINER_KWARGS, "enable_checkpointing": False, **kwargs}
    )
    trainer.fit(model, datamodule=ReplayTasks())
    return model, trainer


@pytest.mark.parametrize("make", both())
@pytest.mark.parametrize("method", ["er", "er_ace"])
def test_replay_memory_follows_the_live_model(make, method: str) -> None:
    plain, _ = fit_replay(method, [])
    model, _ = fit_replay(method, [make()])
    # the reservoir depends only on the stream and its generator: with or without the average it is the same
    assert len(model.buffer) == 20 and model.buffer.seen == 4 * 96
    for name in ("buffer.x", "buffer.y", "buffer.num_seen", "buffer.generator_state", "largest_seen"):
        assert torch.equal(model.state_dict()[name], plain.state_dict()[name]), name
    assert not all(torch.equal(a, b) for a, b in zip(model.parameters(), plain.parameters()))  # the weights are the average's


@pytest.mark.parametrize("make", both())
@pytest.mark.parametrize("method,crash_epoch", [("er", 1), ("er_ace", 2)])  # mid-task; right after a task end
def test_replay_crash_and_resume_continues_exactly(tmp_path: Path, make, method: str, crash_epoch: int) -> None:
    # the checkpoint's reservoir holds 20 examples, the fresh model it is loaded into an empty one
    reference_ema = make()
    reference, _ = fit_replay(method, [reference_ema])
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=-1)
    with pytest.raises(SimulatedCrash):
        fit_replay(method, [make(), ckpt, CrashAt(crash_epoch)], enable_checkpointing=True)
    resumed_ema = make()
    seed_everything(1)
    resumed = replay_model(method)
    trainer = Trainer(max_epochs=4, callbacks=[resumed_ema], reload_dataloaders_every_n_epochs=1, **{**TRAINER_KWARGS, "enable_checkpointing": False})
    trainer.fit(resumed, datamodule=ReplayTasks(), ckpt_path=tmp_path / "last.ckpt")
    assert_same_state(resumed, reference, "model")
    assert_same_state(resumed_ema.state_dict(), reference_ema.state_dict(), "callback state")
    assert resumed_ema._averaged == reference_ema._averaged and "buffer.x" not in reference_ema._averaged
    assert_same_state(averaged_state(resumed_ema), averaged_state(reference_ema), "average")


def averaged_state(ema) -> dict:
    """The average's own state: the tensors it covers and its counter (followed buffers are the live model's)."""
    state = ema._average_model.state_dict()
    return {k: v for k, v in state.items() if not k.startswith("module.") or k[len("module.") :] in ema._averaged}


class GrowingAndResumable(GrowingFromTheStart):
    """GrowingFromTheStart that loads a saved ``memory`` of any length (as the zoo's replay buffer does)."""

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if prefix + "memory" in state_dict:
            self.memory = state_dict[prefix + "memory"].clone()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def test_a_buffer_that_stopped_being_averaged_stays_followed_after_resume(tmp_path: Path) -> None:
    def run(callbacks, **kwargs):
        seed_everything(0)
        model = GrowingAndResumable()
        trainer = Trainer(max_epochs=4, callbacks=callbacks, **{**TRAINER_KWARGS, "enable_checkpointing": False, **kwargs})
        trainer.fit(model, DataLoader(tiny_data(), batch_size=16, sampler=EpochShuffle(96)))
        return model

    reference_ema = TaskEndEMA(decay=0.9)
    reference = run([reference_ema])
    with pytest.raises(SimulatedCrash):
        run([TaskEndEMA(decay=0.9), ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=-1), CrashAt(2)], enable_checkpointing=True)
    resumed_ema = TaskEndEMA(decay=0.9)
    seed_everything(1)
    resumed = GrowingAndResumable()
    Trainer(max_epochs=4, callbacks=[resumed_ema], **{**TRAINER_KWARGS, "enable_checkpointing": False}).fit(
        resumed, DataLoader(tiny_data(), batch_size=16, sampler=EpochShuffle(96)), ckpt_path=tmp_path / "last.ckpt"
    )
    assert reference.memory.shape == (5, 6) and resumed_ema.state_dict()["followed_buffers"] == ["memory"]
    assert_same_state(resumed, reference, "model")
    assert_same_state(resumed_ema.state_dict(), reference_ema.state_dict(), "callback state")
    assert_same_state(averaged_state(resumed_ema), averaged_state(reference_ema), "average")
