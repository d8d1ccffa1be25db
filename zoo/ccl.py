"""Counter-Current Learning: A Biologically Plausible Dual Network Approach (Kao & Hariharan, NeurIPS 2024).

arXiv 2409.19841. Official code (MIT): IandRover/CCL-NeurIPS24 (``models/layers.py`` C2Linear,
``models/models.py`` forward/reverse, ``main_class_mlp.py``, ``main_ae.py``,
``models/models_cnn_ae_legacy.py``).

Two anti-parallel networks: a forward net ``W_1..W_L`` maps inputs to logits, a feedback net
``B_L..B_1`` (``B_l`` maps layer ``l``'s width back to layer ``l-1``'s) maps targets down to the
input. Every layer input is detached in both nets, so no gradient crosses a layer: each local
loss pairs the forward activation ``a_l`` with the feedback signal ``c_l`` and trains exactly one
forward layer (``W_l``, through ``a_l``) and one feedback layer (``B_{l+1}``, through ``c_l``).
No weight transport and no backward locking; the top layer alone sees the cross-entropy.

Choices where the paper is silent or the code differs:

- the feedback net is fed the ``K x K`` identity (one prototype per class, as the official
  classification code), and pairs compare through the ``B x K`` similarity ``a_l c_l^T`` against
  the one-hot labels, scaled by ``256 * loss_scale_C / d_l`` (``utils/loss.py``);
- ``filter_target > 0`` only switches the confident-sample filter on (true-class probability
  above 0.9, a fixed 0.1 as in ``utils/loss.py``), whatever its value;
- the learning rate follows a per-epoch cosine to ``eta_min`` (``cosine=True``); the official MLP
  yamls set ``tmax: 0`` (constant rate); set ``cosine=false`` for that;
- the autoencoder variant is an MLP version of the code's convolutional ``main_ae.py``: the
  forward net is encoder + decoder, the feedback net runs the target image down the reversed
  chain, and pairs match activations directly (MSE, plus an MSE of centred, unit-norm vectors in
  place of the code's per-channel spatial normalisation).

>>> import torch
>>> net = CounterCurrentMLP([4, 3, 2])
>>> acts, sigs = net.forward_all(torch.randn(5, 4)), net.reverse_all(torch.eye(2))
>>> [tuple(a.shape) for a in acts], [tuple(c.shape) for c in sigs]
([(5, 4), (5, 3), (5, 2)], [(2, 4), (2, 3), (2, 2)])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.lr_scheduler import CosineAnnealingLR

from zoo.hub import ZooModule
from zoo.templates import ClassifierModule

__all__ = [
    "ACTIVATIONS",
    "MODES",
    "C2Linear",
    "CounterCurrentMLP",
    "CounterCurrentClassifier",
    "CounterCurrentAutoencoder",
    "similarity_loss",
    "ccl_classification_loss",
    "ccl_autoencoder_loss",
    "confident_mask",
]

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "elu": F.elu,
    "relu": F.relu,
    "tanh": torch.tanh,
    "leaky_relu": F.leaky_relu,
    "selu": F.selu,
}
#: ``ccl``: the method; ``bp``: backprop through the same forward net; ``top_only``: train only ``W_L``
MODES = ("ccl", "bp", "top_only")


def _activation(name: str) -> Callable[[Tensor], Tensor]:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


# ----------------------------------------------------------------------------------------- maths
def similarity_loss(a: Tensor, c: Tensor, target: Tensor, scale: float = 0.5) -> Tensor:
    """One layer's counter-current loss ``256 * scale * MSE(a c^T, Y) / d`` (official ``utils/loss.py``).

    ``a`` (B, d) forward activations, ``c`` (K, d) feedback signals of the K classes, ``target``
    (B, K) one-hot labels: sample ``i`` should align with its class's signal only.
    """
    if a.ndim != 2 or c.ndim != 2 or a.shape[1] != c.shape[1]:
        raise ValueError(f"a (B, d) and c (K, d) must share d, got {tuple(a.shape)} and {tuple(c.shape)}")
    if target.shape != (a.shape[0], c.shape[0]):
        raise ValueError(f"target must be (B, K) = {(a.shape[0], c.shape[0])}, got {tuple(target.shape)}")
    return 256.0 * scale * F.mse_loss(a @ c.T, target) / a.shape[1]


def confident_mask(logits: Tensor, y: Tensor, filter_target: float) -> Tensor:
    """(B, 1): 0 for samples whose true-class probability is already within 0.1 of 1, else 1 (official ``filter_target``).

    As in ``utils/loss.py``, ``filter_target`` only switches the filter on (any value > 0); the 0.1 is fixed.
    """
    if filter_target <= 0:
        return torch.ones(len(y), 1, device=logits.device, dtype=logits.dtype)
    p_true = logits.detach().softmax(-1).gather(1, y.unsqueeze(1))
    return ((1 - p_true) >= 0.1).to(logits.dtype)


def ccl_classification_loss(
    acts: Sequence[Tensor], sigs: Sequence[Tensor], y: Tensor, loss_scale_C: float = 0.5, filter_target: float = 0.0
) -> Tensor:
    """Sum over pairs ``(a_l, c_l)``, ``l = 0..L-1``, of :func:`similarity_loss`, plus CE on the logits ``a_L``.

    ``acts`` = [x, a_1, ..., a_L] from :meth:`CounterCurrentMLP.forward_all`, ``sigs`` = [c_0, ..., c_L]
    from :meth:`CounterCurrentMLP.reverse_all` of the identity. Pair 0 trains ``B_1`` only (x is data).
    """
    if len(acts) != len(sigs):
        raise ValueError(f"{len(acts)} activations but {len(sigs)} feedback signals: the nets must be anti-parallel")
    logits = acts[-1]
    target = F.one_hot(y, logits.shape[-1]).to(logits.dtype)
    keep = confident_mask(logits, y, filter_target)
    local = sum(similarity_loss(a * keep, c, target, loss_scale_C) for a, c in zip(acts[:-1], sigs[:-1]))
    return local + F.cross_entropy(logits, y)


def _unit(v: Tensor) -> Tensor:
    v = v - v.mean(-1, keepdim=True)
    return v / (v.norm(dim=-1, keepdim=True) + 1e-8)


def ccl_autoencoder_loss(acts: Sequence[Tensor], sigs: Sequence[Tensor], loss_scale_C: float = 1.0, loss_scale_D: float = 1.0) -> Tensor:
    """Autoencoder CCL (``main_ae.py``): hidden pairs ``C * MSE(a, c) + D * MSE(unit(a), unit(c))``; end pairs MSE only.

    End pairs: ``(x, c_0)`` trains the bottom feedback layer, ``(x_hat, target)`` the last forward layer.
    """
    if len(acts) != len(sigs):
        raise ValueError(f"{len(acts)} activations but {len(sigs)} feedback signals: the nets must be anti-parallel")
    hidden = sum(
        loss_scale_C * F.mse_loss(a, c) + loss_scale_D * F.mse_loss(_unit(a), _unit(c)) for a, c in zip(acts[1:-1], sigs[1:-1])
    )
    return hidden + loss_scale_C * (F.mse_loss(acts[0], sigs[0]) + F.mse_loss(acts[-1], sigs[-1]))


# ------------------------------------------------------------------------------------- networks
class C2Linear(nn.Module):
    """A forward layer ``W`` (in -> out) paired with a feedback layer ``B`` (out -> in); inputs detached."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, act: str = "elu") -> None:
        super().__init__()
        self.forward_layer = nn.Linear(in_features, out_features, bias=bias)
        self.backward_layer = nn.Linear(out_features, in_features, bias=bias)
        for layer in (self.forward_layer, self.backward_layer):
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        self.act = _activation(act)

    def forward(self, x: Tensor, act: bool = True, detach: bool = True) -> Tensor:
        h = self.forward_layer(x.detach() if detach else x)
        return self.act(h) if act else h

    def reverse(self, c: Tensor, act: bool = True) -> Tensor:
        h = self.backward_layer(c.detach())
        return self.act(h) if act else h


class CounterCurrentMLP(nn.Module):
    """Forward net ``sizes[0] -> ... -> sizes[-1]`` and its anti-parallel feedback net (last layers linear)."""

    def __init__(self, sizes: Sequence[int], act: str = "elu", bias: bool = False) -> None:
        super().__init__()
        if len(sizes) < 2 or any(int(s) < 1 for s in sizes):
            raise ValueError(f"layer sizes need at least two positive widths (input, output), got {list(sizes)}")
        self.layers = nn.ModuleList(C2Linear(i, o, bias, act) for i, o in zip(sizes[:-1], sizes[1:]))

    def forward_params(self) -> list[nn.Parameter]:
        return [p for layer in self.layers for p in layer.forward_layer.parameters()]

    def backward_params(self) -> list[nn.Parameter]:
        return [p for layer in self.layers for p in layer.backward_layer.parameters()]

    def forward_all(self, x: Tensor, detach: bool = True) -> list[Tensor]:
        """[a_0 = x, a_1, ..., a_L]; ``detach=False`` is plain backprop through the forward net."""
        acts = [x]
        for i, layer in enumerate(self.layers):
            acts.append(layer(acts[-1], act=i < len(self.layers) - 1, detach=detach))
        return acts

    def reverse_all(self, target: Tensor) -> list[Tensor]:
        """[c_0, ..., c_L = target]: the feedback net from the top down, bottom layer linear."""
        sigs = [target]
        for i, layer in reversed(list(enumerate(self.layers))):
            sigs.append(layer.reverse(sigs[-1], act=i > 0))
        return sigs[::-1]

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_all(x)[-1]


def _check_common(lr_F: float, lr_B: float, grad_clip_F: float, grad_clip_B: float, warmup_steps: int) -> None:
    if lr_F <= 0 or lr_B <= 0:
        raise ValueError(f"learning rates must be positive, got lr_F={lr_F}, lr_B={lr_B}")
    if grad_clip_F < 0 or grad_clip_B < 0:
        raise ValueError(f"gradient clips must be >= 0 (0 = off), got {grad_clip_F}, {grad_clip_B}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")


class _DualNetMixin:
    """Manual optimisation shared by both modules: two SGDs, separate clipping, warm-up, per-epoch cosine."""

    hparams: Any

    def _dual_optimizers(self, net: CounterCurrentMLP) -> Any:
        h = self.hparams
        opt_F = torch.optim.SGD(net.forward_params(), lr=h.lr_F, momentum=h.momentum_F, weight_decay=h.wd)
        opt_B = torch.optim.SGD(net.backward_params(), lr=h.lr_B, momentum=h.momentum_B, weight_decay=h.wd)
        if not h.cosine:
            return [opt_F, opt_B]
        epochs = max(1, int(getattr(self.trainer, "max_epochs", None) or 1))  # type: ignore[attr-defined]
        scheds = [CosineAnnealingLR(o, T_max=epochs, eta_min=h.eta_min) for o in (opt_F, opt_B)]
        return [opt_F, opt_B], scheds

    def _dual_step(self, net: CounterCurrentMLP, loss: Tensor) -> None:
        h = self.hparams
        opt_F, opt_B = self.optimizers()  # type: ignore[attr-defined]
        step = self.trainer.fit_loop.epoch_loop.total_batch_idx  # type: ignore[attr-defined]  # batches so far
        if h.warmup_steps > 0 and step < h.warmup_steps:
            loss = loss * (step + 1) / h.warmup_steps
        opt_F.zero_grad()
        opt_B.zero_grad()
        self.manual_backward(loss)  # type: ignore[attr-defined]
        for opt, clip in ((opt_F, h.grad_clip_F), (opt_B, h.grad_clip_B)):  # each net clipped on its own
            if clip > 0:
                self.clip_gradients(opt, gradient_clip_val=clip, gradient_clip_algorithm="norm")  # type: ignore[attr-defined]
        opt_F.step()
        opt_B.step()

    def on_train_epoch_end(self) -> None:
        if self.hparams.cosine:
            for sched in self.lr_schedulers():  # type: ignore[attr-defined]
                sched.step()


class CounterCurrentClassifier(_DualNetMixin, ClassifierModule):
    """CCL classifier (official ``main_class_mlp.py``), with backprop and top-layer-only baselines on the same net.

    Args:
        layer_sizes: widths from input to the number of classes (inputs are flattened).
        mode: ``ccl`` | ``bp`` (CE through the forward net) | ``top_only`` (CE on ``W_L``, hidden layers frozen at init).
        act / bias: activation of hidden layers in both nets; biases (official: none).
        lr_F / lr_B, momentum_F / momentum_B, wd: SGD of the forward and the feedback net.
        grad_clip_F / grad_clip_B: gradient-norm clip per net (0 = off).
        loss_scale_C: the local loss's scale; filter_target: > 0 drops samples already learnt (p_y > 0.9) from the local losses.
        warmup_steps: linear loss warm-up; cosine / eta_min: per-epoch cosine learning rate.
    """

    def __init__(
        self,
        layer_sizes: list[int] = [784, 256, 256, 256, 256, 256, 10],  # noqa: B006 (JSON default, never mutated)
        mode: str = "ccl",
        act: str = "elu",
        bias: bool = False,
        lr_F: float = 1.0,
        lr_B: float = 1.0,
        momentum_F: float = 0.0,
        momentum_B: float = 0.0,
        wd: float = 0.0,
        grad_clip_F: float = 1.0,
        grad_clip_B: float = 1.0,
        loss_scale_C: float = 0.5,
        filter_target: float = 0.0,
        warmup_steps: int = 0,
        cosine: bool = True,
        eta_min: float = 1e-3,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}")
        _check_common(lr_F, lr_B, grad_clip_F, grad_clip_B, warmup_steps)
        if not 0 <= filter_target < 1:
            raise ValueError(f"filter_target must be in [0, 1), got {filter_target}")
        super().__init__(int(layer_sizes[-1]) if len(layer_sizes) else 0)
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.net = CounterCurrentMLP(layer_sizes, act, bias)
        self.register_buffer("classes", torch.eye(int(layer_sizes[-1])), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1))

    def training_loss(self, x: Tensor, y: Tensor) -> Tensor:
        """The step's loss for ``mode``; in ``ccl`` no gradient crosses a layer in either net."""
        x = x.flatten(1)
        mode = self.hparams.mode
        if mode == "ccl":
            acts = self.net.forward_all(x)
            return ccl_classification_loss(acts, self.net.reverse_all(self.classes), y, self.hparams.loss_scale_C, self.hparams.filter_target)
        if mode == "bp":
            return F.cross_entropy(self.net.forward_all(x, detach=False)[-1], y)
        with torch.no_grad():  # top_only: the hidden layers stay as initialised
            h = self.net.forward_all(x)[-2]
        return F.cross_entropy(self.net.layers[-1](h, act=False), y)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch[0], batch[1]
        loss = self.training_loss(x, y)
        self._dual_step(self.net, loss)
        self.log("train/loss", loss.detach(), prog_bar=True)
        return loss.detach()

    def configure_optimizers(self) -> Any:
        return self._dual_optimizers(self.net)


class CounterCurrentAutoencoder(_DualNetMixin, ZooModule):
    """MLP autoencoder trained by CCL (official ``main_ae.py``, convolutional there), or by backprop (``mode='bp'``).

    ``layer_sizes`` runs input -> code -> input (e.g. ``[64, 32, 16, 32, 64]``); the feedback net takes
    the clean input as its target. Logs ``{stage}/mse``, the forward net's reconstruction error.
    """

    def __init__(
        self,
        layer_sizes: list[int] = [64, 32, 16, 32, 64],  # noqa: B006 (JSON default, never mutated)
        mode: str = "ccl",
        act: str = "elu",
        bias: bool = True,
        lr_F: float = 0.1,
        lr_B: float = 0.1,
        momentum_F: float = 0.9,
        momentum_B: float = 0.9,
        wd: float = 0.0,
        grad_clip_F: float = 0.5,
        grad_clip_B: float = 0.5,
        loss_scale_C: float = 1.0,
        loss_scale_D: float = 1.0,
        warmup_steps: int = 0,
        cosine: bool = True,
        eta_min: float = 1e-3,
    ) -> None:
        if mode not in ("ccl", "bp"):
            raise ValueError(f"unknown mode {mode!r}; the autoencoder trains by 'ccl' or 'bp'")
        _check_common(lr_F, lr_B, grad_clip_F, grad_clip_B, warmup_steps)
        if len(layer_sizes) < 3 or layer_sizes[0] != layer_sizes[-1]:
            raise ValueError(f"an autoencoder's layer_sizes must start and end at the input width, got {list(layer_sizes)}")
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.net = CounterCurrentMLP(layer_sizes, act, bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1)).view_as(x)

    def training_loss(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        if self.hparams.mode == "bp":
            return F.mse_loss(self.net.forward_all(x, detach=False)[-1], x)
        return ccl_autoencoder_loss(self.net.forward_all(x), self.net.reverse_all(x), self.hparams.loss_scale_C, self.hparams.loss_scale_D)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss = self.training_loss(batch[0])
        self._dual_step(self.net, loss)
        self.log("train/loss", loss.detach(), prog_bar=True)
        return loss.detach()

    def _eval(self, batch: Any, stage: str) -> None:
        x = batch[0]
        self.log(f"{stage}/mse", F.mse_loss(self(x), x), prog_bar=stage == "val")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval(batch, "test")

    def configure_optimizers(self) -> Any:
        return self._dual_optimizers(self.net)
