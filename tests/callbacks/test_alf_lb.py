"""AuxFreeLoadBalancing: update rules by hand, selection-only bias, drop-in, crash-and-resume, DDP,
and the synthetic-router order-of-magnitude claim."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from zoo.alf_lb import BiasedRouter, BiasedTopKRouter, TinyMoE, bias_update, find_routers, max_violation, step_size, synthetic_router_run
from zoo.callbacks.alf_lb import AuxFreeLoadBalancing
from zoo.datamodules.tokens import ZipfTokenDataModule


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _trainer(tmp_path: Path, **kwargs) -> Trainer:
    defaults = dict(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, default_root_dir=tmp_path, deterministic=True,
    )
    return Trainer(**{**defaults, **kwargs})


# ------------------------------------------------------------------------- update rules
def test_update_rules_match_hand_computation() -> None:
    loads = torch.tensor([10.0, 30.0, 20.0, 20.0])  # mean 20, e = mean - c = [10, -10, 0, 0]
    assert torch.allclose(bias_update(loads, 0.1, "sign"), torch.tensor([0.1, -0.1, 0.0, 0.0]))
    assert torch.allclose(bias_update(loads, 0.1, "proportional"), torch.tensor([0.05, -0.05, 0.0, 0.0]))
    assert math.isclose(float(max_violation(loads)), 0.5)
    assert step_size(1e-2, "constant", 500) == 1e-2
    assert math.isclose(step_size(1e-2, "1/n", 0, 100.0), 1e-2)
    assert math.isclose(step_size(1e-2, "1/n", 100, 100.0), 5e-3)
    assert math.isclose(step_size(1e-2, "1/sqrt(n)", 300, 100.0), 5e-3)
    with pytest.raises(ValueError, match="rule"):
        AuxFreeLoadBalancing(rule="softsign")  # type: ignore[arg-type]


class _FixedRouter(nn.Module):
    """A router whose loads are set by hand: the callback sees exactly these."""

    def __init__(self, loads: list[float]) -> None:
        super().__init__()
        self.register_buffer("expert_bias", torch.zeros(len(loads)))
        self.loads = torch.tensor(loads)

    def pop_expert_load(self) -> Tensor:
        return self.loads.clone()


class _Host(LightningModule):
    def __init__(self, router: nn.Module) -> None:
        super().__init__()
        self.router, self.lin = router, nn.Linear(2, 1)


@pytest.mark.parametrize("rule", ["sign", "proportional"])
def test_callback_applies_the_rule_with_its_schedule(rule: str) -> None:
    router = _FixedRouter([10.0, 30.0, 20.0, 20.0])
    host = _Host(router)
    cb = AuxFreeLoadBalancing(update_rate=0.1, rule=rule, schedule="1/n", schedule_offset=1.0, log_maxvio=False)  # type: ignore[arg-type]
    cb.setup(None, host, "fit")  # type: ignore[arg-type]
    trainer = type("T", (), {"world_size": 1})()
    expected = torch.zeros(4)
    for n in range(3):
        cb.on_train_batch_end(trainer, host, None, None, n)  # type: ignore[arg-type]
        rate = 0.1 / (1.0 + n)
        e = torch.tensor([10.0, -10.0, 0.0, 0.0])
        expected += rate * (torch.sign(e) if rule == "sign" else e / 20.0)
    assert torch.allclose(router.expert_bias, expected)
    assert cb.num_updates == 3 and cb.state_dict() == {"num_updates": 3}


def test_recenter_keeps_the_bias_mean_zero_and_the_ranking() -> None:
    plain, centred = _FixedRouter([10.0, 40.0, 20.0, 10.0]), _FixedRouter([10.0, 40.0, 20.0, 10.0])
    trainer = type("T", (), {"world_size": 1})()
    for router, recenter in ((plain, False), (centred, True)):
        cb = AuxFreeLoadBalancing(update_rate=0.1, rule="sign", recenter=recenter, log_maxvio=False)
        cb.setup(None, _Host(router), "fit")  # type: ignore[arg-type]
        for n in range(3):
            cb.on_train_batch_end(trainer, None, None, None, n)  # type: ignore[arg-type]
    assert abs(float(centred.expert_bias.mean())) < 1e-6
    assert torch.allclose(centred.expert_bias, plain.expert_bias - plain.expert_bias.mean())


# ------------------------------------------------------------------ selection only
def test_bias_changes_selection_only_never_gates_or_gradients() -> None:
    torch.manual_seed(0)
    router = BiasedTopKRouter(d_model=8, num_experts=6, top_k=2)
    assert isinstance(router, BiasedRouter) and not router.expert_bias.requires_grad
    assert "expert_bias" in router.state_dict()  # persistent: checkpoints and the hub keep it
    h = torch.randn(64, 8)
    s = torch.sigmoid(h @ router.weight.T)
    idx0, gates0, _ = router(h)
    router.expert_bias.copy_(torch.tensor([5.0, 0, 0, 0, 0, -5.0]))  # forces expert 0 in, expert 5 out
    idx, gates, _ = router(h)
    assert (idx == 0).any(-1).all() and not (idx == 5).any()
    assert not torch.equal(idx, idx0)
    chosen = s.gather(-1, idx)
    assert torch.allclose(gates, chosen / chosen.sum(-1, keepdim=True))  # gates are the unbiased scores
    router.expert_bias.add_(3.0)  # a common shift changes nothing
    idx2, gates2, _ = router(h)
    assert torch.equal(idx, idx2) and torch.equal(gates, gates2)
    gates.sum().backward()
    assert router.weight.grad is not None and router.expert_bias.grad is None


def test_router_counts_only_training_forwards() -> None:
    router = BiasedTopKRouter(d_model=4, num_experts=4, top_k=2)
    router.eval()
    router(torch.randn(10, 4))
    assert router.pop_expert_load().sum() == 0
    router.train()
    router(torch.randn(10, 4))
    router(torch.randn(5, 4))
    assert router.pop_expert_load().sum() == 30 and router.pop_expert_load().sum() == 0


# ------------------------------------------------------------ synthetic router: 10x
def test_synthetic_router_violation_drops_tenfold() -> None:
    none = synthetic_router_run(None)
    sign = synthetic_router_run("sign", 1e-3)
    prop = synthetic_router_run("proportional", 1e-2)
    assert none > 1.0
    assert sign <= 0.1 * none and prop <= 0.1 * none, (none, sign, prop)


# ------------------------------------------------------------------------ drop-in
class _ForeignRouter(nn.Module):
    """Someone else's softmax router, implementing only the protocol."""

    def __init__(self, d: int, e: int, k: int) -> None:
        super().__init__()
        self.gate = nn.Linear(d, e, bias=False)
        self.k = k
        self.register_buffer("expert_bias", torch.zeros(e))
        self._counts = torch.zeros(e)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        p = self.gate(h).softmax(-1)
        idx = (p.detach() + self.expert_bias).topk(self.k, -1).indices
        if self.training:
            self._counts += torch.bincount(idx.flatten(), minlength=p.shape[-1])
        return idx, p.gather(-1, idx)

    def pop_expert_load(self) -> Tensor:
        c, self._counts = self._counts, torch.zeros_like(self._counts)
        return c


class _ForeignMoE(LightningModule):
    """A plain LightningModule: (x, y) batches, forward(x) -> logits, knows nothing of the zoo."""

    def __init__(self) -> None:
        super().__init__()
        self.router = _ForeignRouter(4, 4, 1)
        self.experts = nn.ModuleList(nn.Linear(4, 3) for _ in range(4))

    def forward(self, x: Tensor) -> Tensor:
        idx, g = self.router(x)
        outs = torch.stack([e(x) for e in self.experts], 1)  # (N, E, C)
        return (outs.gather(1, idx[..., None].expand(-1, -1, 3)) * g[..., None]).sum(1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)  # frozen: only the bias can balance


def test_drop_in_on_a_foreign_module(tmp_path: Path) -> None:
    seed_everything(0)
    model = _ForeignMoE()
    with torch.no_grad():
        model.router.gate.weight.normal_(0.0, 0.3)
        model.router.gate.weight[0] += 1.0  # expert 0 wins for most tokens: heavy imbalance
    x = torch.randn(512, 4).abs()
    loader = DataLoader(TensorDataset(x, torch.randint(0, 3, (512,))), batch_size=128)
    model.train()
    before = float(max_violation(torch.bincount(model.router(x)[0].flatten(), minlength=4).float()))
    model.router.pop_expert_load()
    cb = AuxFreeLoadBalancing(update_rate=0.05, rule="sign")
    _trainer(tmp_path, max_epochs=10, callbacks=[cb]).fit(model, loader)
    model.train()
    after = float(max_violation(torch.bincount(model.router(x)[0].flatten(), minlength=4).float()))
    assert cb.num_updates == 40 and model.router.expert_bias[0] < 0
    assert before > 1.0 and after < 0.5 * before, (before, after)


def test_clear_error_when_the_model_has_no_router(tmp_path: Path) -> None:
    class Plain(LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def training_step(self, batch, batch_idx):
            return F.cross_entropy(self.lin(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    loader = DataLoader(TensorDataset(torch.randn(8, 4), torch.randint(0, 3, (8,))), batch_size=4)
    with pytest.raises(RuntimeError, match="has no router to balance.*expert_bias.*pop_expert_load"):
        _trainer(tmp_path, max_epochs=1, callbacks=[AuxFreeLoadBalancing()]).fit(Plain(), loader)
    assert [name for name, _ in find_routers(TinyMoE())] == ["moe.router"]


# ------------------------------------------------------------------ crash and resume
def _small_moe_run(tmp_path: Path, max_epochs: int, callbacks: list[Callback], ckpt_path: str | None = None) -> tuple[TinyMoE, AuxFreeLoadBalancing]:
    seed_everything(0)
    model = TinyMoE(vocab_size=64, num_classes=4, d_model=16, d_hidden=16, num_experts=4, top_k=2)
    data = ZipfTokenDataModule(vocab_size=64, num_classes=4, zipf=1.0, tokens_per_batch=256, steps_per_epoch=5, eval_tokens=256)
    cb = AuxFreeLoadBalancing(update_rate=0.05, rule="sign", schedule="1/n", schedule_offset=3.0)
    trainer = _trainer(tmp_path, max_epochs=max_epochs, callbacks=[cb, *callbacks], limit_val_batches=0, enable_checkpointing=True)
    trainer.fit(model, data, ckpt_path=ckpt_path)
    return model, cb


class _Crashed(Exception):
    pass


class _Crash(Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == 7:
            raise _Crashed("simulated crash mid-epoch 2")


def test_crash_and_resume_keeps_the_biases_and_schedule(tmp_path: Path) -> None:
    full, cb_full = _small_moe_run(tmp_path / "full", 2, [])
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_epochs=1)
    with pytest.raises(_Crashed):
        _small_moe_run(tmp_path / "crash", 2, [ckpt, _Crash()])
    assert (tmp_path / "ckpt" / "last.ckpt").is_file()
    resumed, cb_resumed = _small_moe_run(tmp_path / "resume", 2, [], ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert cb_full.num_updates == cb_resumed.num_updates == 10
    assert full.router.expert_bias.abs().sum() > 0
    assert torch.allclose(resumed.router.expert_bias, full.router.expert_bias, atol=1e-6)


# ------------------------------------------------------------------------------- DDP
# Under DDP every rank must apply the same update: tests/callbacks/test_contract.py runs the callback on a
# foreign mixture of experts with two processes and compares the router biases across ranks.
