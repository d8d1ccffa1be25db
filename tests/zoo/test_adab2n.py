"""AdaB²N layer: the modified momentum, the Bayesian task weighting, the regularizer and the
conversion, each against a hand computation written here (loops over samples, tasks and steps)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from zoo.adab2n import (
    AdaB2N,
    AdaB2NClassifier,
    _BalancedNorm,
    _normalize,
    adab2n_layers,
    convert_bn_to_adab2n,
    modified_momentum,
    task_balanced_weights,
    weighted_moments,
)

D = torch.float64


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def batches(n: int, shape: tuple[int, ...] = (6, 3, 4, 4), seed: int = 0) -> list[torch.Tensor]:
    """Batches whose statistics drift, so an EMA and a cumulative mean differ."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=D) * (1 + 0.3 * k) + 0.5 * k for k in range(n)]


def biased_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)


# ------------------------------------------------------------------- modified momentum
def test_kappa_one_is_torch_batchnorm_ema() -> None:
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3, dtype=D)
    ada = AdaB2N(3, num_tasks=2, kappa=1.0, dtype=D)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-0.5, 0.5)
        ada.weight.copy_(bn.weight), ada.bias.copy_(bn.bias)
    running_var = torch.ones(3, dtype=D)
    for x in batches(6):
        out_bn, out_ada = bn(x), ada(x)
        torch.testing.assert_close(out_ada, out_bn, rtol=1e-10, atol=1e-10)  # same batch normalization
        running_var = 0.9 * running_var + 0.1 * biased_moments(x)[1]
    torch.testing.assert_close(ada.running_mean, bn.running_mean, rtol=1e-12, atol=1e-12)
    # the official layer stores the biased running variance; torch stores the unbiased one
    torch.testing.assert_close(ada.running_var, running_var, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(ada.running_var, bn.running_var, rtol=1e-3)
    assert int(ada.num_batches_tracked) == int(bn.num_batches_tracked) == 6


def test_kappa_zero_is_the_cumulative_mean_of_batch_statistics() -> None:
    ada = AdaB2N(3, num_tasks=2, kappa=0.0, dtype=D)
    xs = batches(7)
    for x in xs:
        ada(x)
    means = torch.stack([biased_moments(x)[0] for x in xs])
    variances = torch.stack([biased_moments(x)[1] for x in xs])
    torch.testing.assert_close(ada.running_mean, means.mean(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ada.running_var, variances.mean(0), rtol=1e-12, atol=1e-12)
    assert float(ada.last_eta) == pytest.approx(1 / 7)


@pytest.mark.parametrize("kappa", [0.1, 0.4, 0.7])
def test_eta_recursion_matches_a_hand_loop(kappa: float) -> None:
    m = 0.1
    ada = AdaB2N(3, num_tasks=2, momentum=m, kappa=kappa, dtype=D)
    eta, mean, var = None, torch.zeros(3, dtype=D), torch.ones(3, dtype=D)
    for step, x in enumerate(batches(8), start=1):
        eta = m**kappa if eta is None else eta / (eta + (1 - m) ** kappa)
        bm, bv = biased_moments(x)
        mean, var = mean + eta * (bm - mean), (1 - eta) * var + eta * bv
        ada(x)
        assert float(ada.last_eta) == pytest.approx(eta, rel=1e-12), step
    torch.testing.assert_close(ada.running_mean, mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ada.running_var, var, rtol=1e-12, atol=1e-12)
    # the recursion settles at the EMA momentum 1 - (1 - m)^kappa, slower than m
    for _ in range(5000):
        eta = modified_momentum(m, kappa, 0, eta)
    assert eta == pytest.approx(1 - (1 - m) ** kappa, rel=1e-9) and eta < m


def test_modified_momentum_endpoints() -> None:
    assert modified_momentum(0.1, 1.0, 5, 0.3) == 0.1
    assert modified_momentum(0.1, 0.0, 5, 0.3) == pytest.approx(0.2)
    assert modified_momentum(0.1, 0.5, 1, None) == pytest.approx(math.sqrt(0.1))


def test_recursion_resumes_from_state_dict() -> None:
    xs = batches(6)
    straight = AdaB2N(3, num_tasks=2, kappa=0.4, dtype=D)
    for x in xs:
        straight(x)
    first = AdaB2N(3, num_tasks=2, kappa=0.4, dtype=D)
    for x in xs[:3]:
        first(x)
    resumed = AdaB2N(3, num_tasks=2, kappa=0.4, dtype=D)
    resumed.load_state_dict(first.state_dict())
    for x in xs[3:]:
        resumed(x)
    for key, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0, msg=key)
    assert {"cur_tasks", "last_eta", "task_weight"} <= set(straight.state_dict())


# ------------------------------------------------------------- Bayesian task weighting
def hand_weighted_moments(x: torch.Tensor, tasks: list[int], w: list[float], current: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The official formula, sample by sample: omega_n = pi_t(n) / n_t(n), alpha_j = exp(w_j) + n_j."""
    n = [tasks.count(j) for j in range(current + 1)]
    alpha = [math.exp(w[j]) + n[j] for j in range(current + 1)]
    pi = [a / sum(alpha) for a in alpha]
    omega = [pi[t] / n[t] for t in tasks]
    channels = x.shape[1]
    mu = [sum(omega[i] * float(x[i, c].mean()) for i in range(len(tasks))) for c in range(channels)]
    var = [sum(omega[i] * float(((x[i, c] - mu[c]) ** 2).mean()) for i in range(len(tasks))) for c in range(channels)]
    return torch.tensor(mu, dtype=D), torch.tensor(var, dtype=D)


@pytest.mark.parametrize("tasks", [[0, 0, 0, 1, 2, 2], [0, 2, 2, 2, 2, 0]])  # the second lacks task 1
def test_bayesian_task_weighting_by_hand(tasks: list[int]) -> None:
    w = [0.3, -0.2, 0.1, 0.7]
    x = batches(1, (6, 2, 3, 3), seed=1)[0] + torch.arange(6, dtype=D).view(6, 1, 1, 1)
    mu, var = hand_weighted_moments(x, tasks, w, current=2)
    ada = AdaB2N(2, num_tasks=4, kappa=1.0, dtype=D)
    with torch.no_grad():
        ada.task_weight.copy_(torch.tensor(w, dtype=D)), ada.cur_tasks.fill_(2)
        ada.weight.copy_(torch.tensor([1.5, 0.5])), ada.bias.copy_(torch.tensor([0.1, -0.2]))
    ada.set_counts(torch.tensor(tasks) * 2 + 1, classes_per_task=2)  # labels -> tasks
    out = ada(x)
    expected = (x - mu.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + ada.eps)
    expected = expected * ada.weight.view(1, -1, 1, 1) + ada.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ada.running_mean, 0.1 * mu, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ada.running_var, 0.9 + 0.1 * var, rtol=1e-10, atol=1e-12)
    # the regularizer is MSE to the updated running statistics
    reg = float(((mu - ada.running_mean) ** 2).mean() + ((var - ada.running_var) ** 2).mean())
    assert float(ada.regularizer.detach()) == pytest.approx(reg, rel=1e-10)
    weights = task_balanced_weights(ada.task_weight, torch.tensor(tasks), 2)
    assert float(weights.sum()) == pytest.approx(1.0 if 1 in tasks else 1 - _pi(w, tasks, 1, 2), rel=1e-6)


def _pi(w: list[float], tasks: list[int], j: int, current: int) -> float:
    alpha = [math.exp(w[k]) + tasks.count(k) for k in range(current + 1)]
    return alpha[j] / sum(alpha)


def test_weighting_at_task_zero_is_plain_batch_statistics() -> None:
    x = batches(1)[0]
    ada = AdaB2N(3, num_tasks=3, dtype=D)
    ada.set_counts(torch.zeros(6, dtype=torch.long))
    mean, var = weighted_moments(x, task_balanced_weights(ada.task_weight, torch.zeros(6, dtype=torch.long), 0))
    bm, bv = biased_moments(x)
    torch.testing.assert_close(mean, bm, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(var, bv, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ada(x), F.batch_norm(x, None, None, ada.weight, ada.bias, True, 0.0, ada.eps), rtol=1e-10, atol=1e-10)


def test_gradients_reach_the_task_weights() -> None:
    ada = AdaB2N(3, num_tasks=4, dtype=D)
    with torch.no_grad():
        ada.cur_tasks.fill_(2)
    x = batches(1)[0]
    ada.set_counts(torch.tensor([0, 0, 1, 2, 2, 2]))
    out = ada(x)
    (out.square().mean() + ada.regularizer).backward()
    grad = ada.task_weight.grad
    assert grad is not None and bool(torch.all(grad[:3].abs() > 1e-8))
    assert float(grad[3]) == 0.0  # a future task has no say
    # the regularizer's gradient, to w and to the input, through both mu and sigma^2
    ada.zero_grad()
    xg = x.clone().requires_grad_(True)
    ada.set_counts(torch.tensor([0, 0, 1, 2, 2, 2]))
    ada(xg)
    ada.regularizer.backward()
    w = ada.task_weight.detach().clone().requires_grad_(True)
    xr = x.clone().requires_grad_(True)
    counts = torch.tensor([2.0, 1.0, 3.0], dtype=D)
    pi = (w[:3].exp() + counts) / (w[:3].exp() + counts).sum()
    omega = pi[[0, 0, 1, 2, 2, 2]] / counts[[0, 0, 1, 2, 2, 2]]
    mu = torch.einsum("n,nchw->c", omega, xr) / 16
    var = torch.einsum("n,nchw->c", omega, (xr - mu.view(1, -1, 1, 1)) ** 2) / 16
    reference = ((mu - ada.running_mean) ** 2).mean() + ((var - ada.running_var) ** 2).mean()  # running stats: updated, constant
    reference.backward()
    torch.testing.assert_close(ada.task_weight.grad, w.grad, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(xg.grad, xr.grad, rtol=1e-8, atol=1e-12)
    torch.autograd.gradcheck(
        lambda w: weighted_moments(x, task_balanced_weights(w, torch.tensor([0, 0, 1, 2, 2, 2]), 2)),
        torch.tensor([0.1, -0.3, 0.2, 0.0], dtype=D, requires_grad=True),
    )


@pytest.mark.parametrize("affine", [True, False])
def test_fused_normalization_equals_the_autograd_composition(affine: bool) -> None:
    """The layer's fused forward/backward is the pure functions' maths, gradients included."""
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(5, 3, 3, 2, generator=g, dtype=D) * 2 + 1).requires_grad_(True)
    omega = torch.rand(5, generator=g, dtype=D).requires_grad_(True)
    gamma = torch.rand(3, generator=g, dtype=D).add(0.5).requires_grad_(True) if affine else None
    beta = torch.randn(3, generator=g, dtype=D).requires_grad_(True) if affine else None
    y, mean, var = _BalancedNorm.apply(x, omega, gamma, beta, 1e-5)
    ref_mean, ref_var = weighted_moments(x, omega)
    torch.testing.assert_close(y, _normalize(x, ref_mean, ref_var, gamma, beta, 1e-5), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close((mean, var), (ref_mean, ref_var), rtol=1e-12, atol=1e-12)
    inputs = (x, omega, gamma, beta) if affine else (x, omega)
    fn = (lambda *a: _BalancedNorm.apply(*a, 1e-5)) if affine else (lambda a, b: _BalancedNorm.apply(a, b, None, None, 1e-5))
    torch.autograd.gradcheck(fn, inputs)


def test_fused_normalization_in_float32_keeps_float64_accuracy_on_offset_inputs() -> None:
    """Activations far from zero (mean 100, std 1): float32 output and gradients stay near the float64 values."""
    g = torch.Generator().manual_seed(4)
    x64 = torch.randn(8, 4, 6, 6, generator=g, dtype=D) + 100
    omega64 = torch.rand(8, generator=g, dtype=D)
    gamma64, beta64 = torch.rand(4, generator=g, dtype=D) + 0.5, torch.randn(4, generator=g, dtype=D)
    grad_y = torch.randn(8, 4, 6, 6, generator=g, dtype=D)

    def run(dtype: torch.dtype) -> list[torch.Tensor]:
        x, omega, gamma = (t.to(dtype).requires_grad_(True) for t in (x64, omega64, gamma64))
        y, mean, var = _BalancedNorm.apply(x, omega, gamma, beta64.to(dtype), 1e-5)
        loss = (y * grad_y.to(dtype)).sum() + mean.square().sum() + var.sum()
        return [y, *torch.autograd.grad(loss, (x, omega, gamma))]

    for low, ref in zip(run(torch.float32), run(D)):
        assert float((low.double() - ref).abs().max() / ref.abs().max()) < 2e-5


class _FullSizeKernels(TorchDispatchMode):
    """Names the kernels that read or write a tensor of at least ``full`` elements (views excluded)."""

    def __init__(self, full: int) -> None:
        super().__init__()
        self.full, self.ops = full, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        if func._schema.is_mutable or all(r.alias_info is None for r in func._schema.returns):
            tensors = [t for t in tree_flatten((args, kwargs, out))[0] if isinstance(t, torch.Tensor)]
            if any(t.numel() >= self.full for t in tensors):
                self.ops.append(func.__name__)
        return out


def test_a_training_step_makes_few_passes_over_the_activation() -> None:
    """The speed of ``benchmarks.adab2n`` (target <= 2x BatchNorm2d) rests on touching the (N, C, H, W)
    tensors rarely and through vectorized kernels: 7 passes for forward + backward (BatchNorm2d: 2),
    none of them a broadcasting ``addcmul`` (no vectorized CPU path; it once made up half the time)."""
    layer = AdaB2N(3, num_tasks=3)
    layer.cur_tasks.fill_(1)
    x = torch.randn(4, 3, 5, 5, requires_grad=True)
    grad_y = torch.randn_like(x)
    layer.set_counts(torch.tensor([0, 1, 1, 0]))
    with _FullSizeKernels(x.numel()) as kernels:
        torch.autograd.grad(layer(x), (x, layer.task_weight), grad_y)
    assert len(kernels.ops) <= 7 and "addcmul.default" not in kernels.ops, kernels.ops


# ----------------------------------------------------------------------- guard rails
def test_counts_are_checked() -> None:
    ada = AdaB2N(3, num_tasks=2)
    with pytest.raises(ValueError, match="layer is at task 0"):
        ada.set_counts(torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="num_tasks"):
        ada.set_counts(torch.tensor([0, 5]))
    ada.set_counts(torch.tensor([0, 0, 0]))
    with pytest.raises(ValueError, match="counts were set for 3 samples but the batch has 6"):
        ada(torch.randn(6, 3, 2, 2))
    ada.end_task()
    ada.clear_counts()
    with pytest.warns(UserWarning, match="without set_counts"):
        ada(torch.randn(6, 3, 2, 2))
    with pytest.raises(ValueError, match="kappa"):
        AdaB2N(3, kappa=1.5)
    with pytest.raises(ValueError, match="kappa=0.0"):
        AdaB2N(3, momentum=None)  # type: ignore[arg-type]


def test_eval_uses_the_running_statistics_only() -> None:
    ada = AdaB2N(3, num_tasks=2, kappa=0.4, dtype=D)
    for x in batches(3):
        ada(x)
    ada.eval()
    state = {k: v.clone() for k, v in ada.state_dict().items()}
    x = batches(1, seed=5)[0]
    expected = (x - ada.running_mean.view(1, -1, 1, 1)) / torch.sqrt(ada.running_var.view(1, -1, 1, 1) + ada.eps)
    torch.testing.assert_close(ada(x), expected * ada.weight.view(1, -1, 1, 1) + ada.bias.view(1, -1, 1, 1))
    for k, v in ada.state_dict().items():
        assert torch.equal(v, state[k]), k


# ------------------------------------------------------------------------ conversion
def test_convert_keeps_eval_outputs_and_copies_state() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Sequential(nn.Conv2d(4, 5, 3), nn.BatchNorm2d(5)))
    for _ in range(3):  # non-trivial running statistics
        model(torch.randn(8, 1, 8, 8) * 2 + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-1, 1)
    model[1].bias.requires_grad_(False)
    model.eval()
    x = torch.randn(4, 1, 8, 8)
    before = model(x)
    states = [m.state_dict() for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    converted = convert_bn_to_adab2n(model, num_tasks=3, kappa=0.7)
    layers = adab2n_layers(converted)
    assert converted is model and len(layers) == 2 and not any(type(m) is nn.BatchNorm2d for m in model.modules())
    assert torch.equal(model(x), before)
    for layer, state in zip(layers, states):
        assert not layer.training and layer.kappa == 0.7 and layer.num_tasks == 3
        for key, value in state.items():
            assert torch.equal(layer.state_dict()[key], value), key
    assert not layers[0].bias.requires_grad and layers[0].weight.requires_grad
    assert any(p is layers[0].task_weight for p in model.parameters())
    single = convert_bn_to_adab2n(nn.BatchNorm2d(2), num_tasks=2)
    assert isinstance(single, AdaB2N)
    sync = nn.SyncBatchNorm(2)
    assert convert_bn_to_adab2n(sync, num_tasks=2) is sync  # only exact BatchNorm2d


# ------------------------------------------------------------------------ the module
def test_classifier_defaults_and_baseline() -> None:
    model = AdaB2NClassifier()
    assert len(adab2n_layers(model)) == 2 and adab2n_layers(model)[0].kappa == 0.7
    assert model.hparams["joint_forward"] and model.hparams["buffer_size"] == 200 and model.hparams["lr"] == 0.05
    assert set(model.init_args()) == {
        "backbone", "num_classes", "input_dim", "hidden_dims", "in_chans", "method", "buffer_size", "replay_batch_size",
        "joint_forward", "lr", "momentum", "weight_decay", "norm", "num_tasks", "kappa", "init_weight",
    }  # fmt: skip
    baseline = AdaB2NClassifier(norm="batchnorm", joint_forward=False)
    assert not adab2n_layers(baseline)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(ValueError, match="no BatchNorm2d"):
        AdaB2NClassifier(backbone="mlp")


def test_fit_without_the_callback_is_one_clear_error(tmp_path) -> None:
    from lightning.pytorch import Trainer
    from torch.utils.data import DataLoader, TensorDataset

    data = DataLoader(TensorDataset(torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 0, 1])), batch_size=2)
    trainer = Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path)
    with pytest.raises(RuntimeError, match="trains with zoo.callbacks.AdaB2NCallback"):
        trainer.fit(AdaB2NClassifier(), data)
    trainer.fit(AdaB2NClassifier(norm="batchnorm"), data)  # the BatchNorm baseline needs no callback
    assert trainer.global_step == 1


@pytest.mark.parametrize("iters", [1, 3])
def test_repeated_incoming_batches_enter_the_buffer_once(tmp_path, iters: int) -> None:
    from lightning.pytorch import Trainer

    from zoo.datamodules.continual import SplitTasks
    from zoo.datamodules.digits import DigitsDataModule

    dm = SplitTasks(DigitsDataModule(flatten=False), num_tasks=2, classes_per_task=2, online=True, batch_size=10, iters_per_batch=iters)
    model = AdaB2NClassifier(norm="batchnorm", num_tasks=2, num_classes=4)
    trainer = Trainer(
        max_epochs=2, reload_dataloaders_every_n_epochs=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(model, dm)
    stream = sum(len(view) for view in dm.split.train)
    assert model.buffer.seen == stream  # every example of the stream stored (or not) once
    assert trainer.global_step == iters * sum(-(-len(view) // 10) for view in dm.split.train)
    assert "add" not in vars(model.buffer)  # the buffer's own add is back
