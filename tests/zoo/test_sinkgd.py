"""SinkGD against the paper's definition (Algorithm 3, SR-Sinkhorn), written as a naive loop here."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from zoo.sinkgd import SinkGD, SinkGDClassifier, build_sinkgd_param_groups, optimizer_state_bytes, rms_normalize, sr_sinkhorn


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def naive_sr_sinkhorn(g: torch.Tensor, iters: int, eps: float = 1e-8) -> torch.Tensor:
    """Algorithm 3's loop, literally: X <- sqrt(n) Q(X)^-1 X ; X <- sqrt(m) X R(X)^-1, L times."""
    x = g.double().clone()
    m, n = x.shape
    for _ in range(iters):
        for i in range(m):
            x[i, :] = math.sqrt(n) * x[i, :] / max(float(x[i, :].norm()), eps)
        for j in range(n):
            x[:, j] = math.sqrt(m) * x[:, j] / max(float(x[:, j].norm()), eps)
    return x


@pytest.mark.parametrize("shape", [(5, 3), (3, 7), (6, 6)])
@pytest.mark.parametrize("iters", [1, 2, 5])
def test_sr_sinkhorn_matches_the_naive_loop(shape: tuple[int, int], iters: int) -> None:
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(sr_sinkhorn(g, iters).double(), naive_sr_sinkhorn(g, iters), rtol=1e-5, atol=1e-5)


def test_fixed_point_rows_and_columns_have_the_target_norms() -> None:
    m, n = 7, 4
    g = torch.randn(m, n, generator=torch.Generator().manual_seed(1)).double()
    x = sr_sinkhorn(g, iters=200)
    torch.testing.assert_close(x.norm(dim=1), torch.full((m,), math.sqrt(n), dtype=x.dtype), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(x.norm(dim=0), torch.full((n,), math.sqrt(m), dtype=x.dtype), rtol=1e-6, atol=1e-6)
    assert float(x.square().mean().sqrt()) == pytest.approx(1.0)  # RMS 1, ||X||_F = sqrt(mn)
    # a fixed point: one more round changes nothing, and it is the naive loop's fixed point
    torch.testing.assert_close(sr_sinkhorn(x, iters=1), x, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(x, naive_sr_sinkhorn(g, 200), rtol=1e-6, atol=1e-6)
    # Sinkhorn scaling keeps signs and is diag(r) G diag(c): the ratio X / G has rank one
    ratio = x / g
    assert torch.linalg.matrix_rank(ratio, rtol=1e-8) == 1 and torch.equal(x.sign(), g.sign())


def test_zero_rows_and_columns_stay_zero_and_finite() -> None:
    g = torch.randn(5, 4, generator=torch.Generator().manual_seed(2))
    g[1] = 0  # a dead unit
    g[:, 2] = 0
    x = sr_sinkhorn(g, iters=100)
    assert torch.isfinite(x).all()
    assert torch.equal(x[1], torch.zeros(4)) and torch.equal(x[:, 2], torch.zeros(5))
    # the live 4 x 3 block reaches its own fixed point: columns sqrt(5) (all m rows count), rows
    # at the balance of the alternation
    torch.testing.assert_close(x[:, [0, 1, 3]].norm(dim=0), torch.full((3,), math.sqrt(5)), rtol=1e-4, atol=1e-4)


def test_a_step_equals_a_hand_computation_on_a_tiny_matrix() -> None:
    # G = [[3, 0], [0, 4]] with one iteration: rows -> sqrt(2) * [1, 0], [0, 1]; columns already
    # have norm sqrt(2) = sqrt(m). So X = sqrt(2) I and W <- W - lr sqrt(2) I.
    w = nn.Parameter(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    w.grad = torch.tensor([[3.0, 0.0], [0.0, 4.0]])
    SinkGD([w], lr=0.1, sinkhorn_iters=1).step()
    s = 0.1 * math.sqrt(2)
    torch.testing.assert_close(w.data, torch.tensor([[1.0 - s, 2.0], [3.0, 4.0 - s]]))
    # G = [[1, 1], [1, 3]]: rows have norms sqrt(2), sqrt(10) -> rows * sqrt(2)/norm:
    # [[1, 1], [1/sqrt5, 3/sqrt5]]; column norms sqrt(1 + 1/5), sqrt(1 + 9/5) -> * sqrt(2)/norm.
    w = nn.Parameter(torch.zeros(2, 2))
    w.grad = torch.tensor([[1.0, 1.0], [1.0, 3.0]])
    SinkGD([w], lr=1.0, sinkhorn_iters=1).step()
    x = torch.tensor([[1.0, 1.0], [1 / math.sqrt(5), 3 / math.sqrt(5)]])
    x = x * torch.tensor([math.sqrt(2) / math.sqrt(1.2), math.sqrt(2) / math.sqrt(2.8)])
    torch.testing.assert_close(w.data, -x)


def test_fallback_rule_for_1d_parameters() -> None:
    b = nn.Parameter(torch.tensor([1.0, 1.0, 1.0]))
    b.grad = torch.tensor([1.0, -2.0, 2.0])  # rms = sqrt(3)
    SinkGD([b], lr=0.5).step()
    torch.testing.assert_close(b.data, torch.tensor([1.0, 1.0, 1.0]) - 0.5 * torch.tensor([1.0, -2.0, 2.0]) / math.sqrt(3))
    torch.testing.assert_close(rms_normalize(torch.tensor([0.0, 0.0])), torch.zeros(2))  # zero grad: no nan
    b.grad = torch.tensor([1.0, -2.0, 2.0])
    before = b.data.clone()
    SinkGD([b], lr=0.5, fallback="sgd").step()
    torch.testing.assert_close(b.data, before - 0.5 * b.grad)
    # a group may send its matrices to the fallback too
    w = nn.Parameter(torch.zeros(2, 2))
    w.grad = torch.tensor([[1.0, 1.0], [1.0, 3.0]])
    SinkGD([{"params": [w], "sinkhorn": False}], lr=1.0).step()
    torch.testing.assert_close(w.data, -w.grad / w.grad.square().mean().sqrt())


def test_conv_weights_are_normalized_as_out_by_rest_matrices() -> None:
    conv = nn.Conv2d(3, 4, 3)
    conv.weight.grad = torch.randn_like(conv.weight)
    before = conv.weight.data.clone()
    SinkGD([conv.weight], lr=1.0, sinkhorn_iters=3).step()
    expected = sr_sinkhorn(conv.weight.grad.reshape(4, -1), 3).view_as(before)
    torch.testing.assert_close(conv.weight.data, before - expected)


def test_stateless_after_steps_and_state_bytes() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = SinkGD(model.parameters(), lr=1e-2, weight_decay=0.1)
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert len(opt.state) == 0 and opt.state_dict()["state"] == {}
    assert optimizer_state_bytes(opt) == 0
    assert losses[-1] < losses[0]
    adam = torch.optim.AdamW(model.parameters())
    nn.functional.cross_entropy(model(x), y).backward()
    adam.step()
    n_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    assert optimizer_state_bytes(adam) >= 2 * n_bytes  # exp_avg + exp_avg_sq (+ step counters)


def test_bf16_gradients_are_normalized_in_float32() -> None:
    g = torch.randn(16, 8, generator=torch.Generator().manual_seed(3))
    out = sr_sinkhorn(g.bfloat16(), iters=5)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), sr_sinkhorn(g.bfloat16().float(), 5), rtol=1e-2, atol=1e-2)


def test_hybrid_param_groups() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 8))
    model.add_module("head", nn.Linear(8, 2))
    sink, adam = build_sinkgd_param_groups(model, global_lr=0.02, sinkgd_scale=0.05)
    assert [p.shape for p in sink.param_groups[0]["params"]] == [torch.Size([8, 4]), torch.Size([8, 8])]
    assert sink.param_groups[0]["lr"] == pytest.approx(1e-3) and adam is not None
    assert sum(p.numel() for g in adam.param_groups for p in g["params"]) == 8 + 8 + 8 + 8 + 16 + 2


class _Conv1D(nn.Module):
    """GPT-2's Conv1D: a Linear with an ``(in, out)`` weight, not an ``nn.Linear``."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_in, n_out) * 0.02)
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight + self.bias


class _TinyGPT2(nn.Module):
    """GPT-2's parameter names and module types (wte, wpe, h.i.attn.c_attn, mlp.c_fc, ln_f, lm_head)."""

    def __init__(self, tied: bool, vocab: int = 50, d: int = 16, layers: int = 2) -> None:
        super().__init__()
        self.transformer = nn.Module()
        self.transformer.wte, self.transformer.wpe = nn.Embedding(vocab, d), nn.Embedding(8, d)
        blocks = []
        for _ in range(layers):
            block = nn.Module()
            block.ln_1, block.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
            block.attn, block.mlp = nn.Module(), nn.Module()
            block.attn.c_attn, block.attn.c_proj = _Conv1D(d, 3 * d), _Conv1D(d, d)
            block.mlp.c_fc, block.mlp.c_proj = _Conv1D(d, 4 * d), _Conv1D(4 * d, d)
            blocks.append(block)
        self.transformer.h = nn.ModuleList(blocks)
        self.transformer.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        if tied:
            self.lm_head.weight = self.transformer.wte.weight


def _names(model: nn.Module, params: list[torch.Tensor]) -> set[str]:
    ids = {id(p) for p in params}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def _groups(model: nn.Module) -> tuple[set[str], set[str]]:
    sink, adam = build_sinkgd_param_groups(model)
    assert adam is not None
    return _names(model, sink.param_groups[0]["params"]), _names(model, [p for g in adam.param_groups for p in g["params"]])


def test_param_groups_of_a_timm_vit_by_module_type_and_position() -> None:
    import timm

    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    sink, adam = _groups(vit)
    hidden = {f"blocks.{i}.{m}.weight" for i in range(len(vit.blocks)) for m in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")}
    assert sink == hidden  # every MLP matrix, fc1 and fc2 included
    assert {"head.weight", "head.bias", "patch_embed.proj.weight", "pos_embed", "cls_token", "norm.weight"} <= adam
    assert sink | adam == {n for n, _ in vit.named_parameters()} and not sink & adam
    headless = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0)
    assert _groups(headless)[0] == hidden  # no head: the last fc2 stays a hidden matrix


@pytest.mark.parametrize("tied", [True, False])
def test_param_groups_of_a_gpt2_like_model(tied: bool) -> None:
    model = _TinyGPT2(tied)
    sink, adam = _groups(model)
    assert sink == {f"transformer.h.{i}.{m}.weight" for i in range(2) for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    assert {"transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight"} <= adam
    assert ("lm_head.weight" in adam) is not tied  # tied: the one tensor is named wte and sits on AdamW once
    assert not sink & adam


def test_param_groups_of_the_zoo_mlp_put_only_hidden_matrices_on_sinkgd() -> None:
    from zoo.nn.backbones import build_backbone

    mlp = build_backbone("mlp", 10, input_dim=64, hidden_dims=[256, 256], flatten=False)
    sink, adam = _groups(mlp)
    assert sink == {"0.weight", "2.weight"} and adam == {"0.bias", "2.bias", "4.weight", "4.bias"}  # 4: the logits
    sink, adam = build_sinkgd_param_groups(mlp, head="2", exclude=("0",))  # an explicit head and exclusions
    assert adam is not None and _names(mlp, sink.param_groups[0]["params"]) == {"4.weight"}


def test_invalid_arguments() -> None:
    p = [nn.Parameter(torch.zeros(2, 2))]
    with pytest.raises(ValueError, match="sinkhorn_iters"):
        SinkGD(p, sinkhorn_iters=0)
    with pytest.raises(ValueError, match="fallback"):
        SinkGD(p, fallback="adam")
    with pytest.raises(ValueError, match="optimizer"):
        SinkGDClassifier(optimizer="sgd")
    with pytest.raises(ValueError, match="matrix"):
        sr_sinkhorn(torch.zeros(3))


@pytest.mark.parametrize("optimizer", ["sinkgd", "adam", "adamw"])
def test_classifier_logs_state_bytes(optimizer: str, tmp_path) -> None:
    from lightning.pytorch import Trainer

    from zoo.datamodules.digits import DigitsDataModule

    model = SinkGDClassifier(hidden_dims=[32], optimizer=optimizer, lr=1e-3)
    trainer = Trainer(
        max_epochs=1, limit_train_batches=3, accelerator="cpu", logger=False, enable_progress_bar=False, enable_checkpointing=False,
        enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=16))
    state = float(trainer.callback_metrics["optimizer_state_bytes"])
    n_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    if optimizer == "sinkgd":
        assert state == 0
    else:
        assert state >= 2 * n_bytes
