"""AdaB²N: BatchNorm with task-balanced batch statistics and a tunable running-statistics momentum.

Paper: *Overcoming Recency Bias of Normalization Statistics in Continual Learning: Balance and
Adaptation* (Lyu, Wang, Zhang, Sun, Su, Zhu, Jing; NeurIPS 2023; arXiv:2310.08855).
Official code: ``lvyilin/AdaB2N`` (``models/utils/adab2n.py`` for the layer,
``models/er_ace_ada.py`` for ``set_counts`` / ``end_task`` / the loss term, ``run.py`` for the grid).

In continual learning the batches a BatchNorm layer sees come mostly from the current task, so
both its batch statistics (training) and its running statistics (testing) are biased towards
the most recent task. AdaB²N changes both sides of BatchNorm:

- **training stage, Bayesian task weighting** (official ``AdaB2N.training_forward``): a batch
  holding ``n_j`` samples of task ``j`` (stream + replay) gets task weights from a
  Dirichlet-posterior-like concentration ``alpha_j = exp(w_j) + n_j`` (``w``: a learnable
  per-layer vector, ``task_weight``), ``pi_j = alpha_j / sum(alpha)``, and every sample of task
  ``j`` the weight ``omega_n = pi_j / n_j``. The batch statistics are the weighted moments
  ``mu = sum_n omega_n mean_hw(x_n)``, ``sigma^2 = sum_n omega_n mean_hw((x_n - mu)^2)``
  (biased); gradients flow to ``w`` through them.
- **testing stage, modified momentum** (official ``AdaB2N.get_eta``): the running statistics
  move with ``eta``: ``kappa = 1`` is torch's EMA (``eta = momentum``), ``kappa = 0`` the
  cumulative mean of all batch statistics (``eta = 1/t``), and ``0 < kappa < 1`` the recursion
  ``eta_1 = m^kappa``, ``eta_t = eta_{t-1} / (eta_{t-1} + (1 - m)^kappa)``, which settles at
  ``1 - (1 - m)^kappa``, a slower EMA than ``m``.
- **statistics regularizer**: each training forward caches
  ``MSE(mu, r_mu) + MSE(sigma^2, r_sigma^2)`` (after the running update), which the training
  loop adds times ``lambd`` (:class:`zoo.callbacks.adab2n.AdaB2NCallback` does it for any module).

Like the official layer, the running variance is the *biased* one (torch's BatchNorm stores the
unbiased one), and evaluation is ``F.batch_norm`` with the running statistics.

Deviations from the official code, all named:

- ``last_eta`` (the ``eta`` recursion's state) and the task counter ``cur_tasks`` are buffers,
  so a resumed run continues the recursion exactly (the official ``last_eta`` is a Python
  attribute and restarts at ``m^kappa`` after a resume); ``last_eta`` has the layer's dtype.
- Whenever counts are set, the weighted moments are used, also at task 0 (the official layer
  uses plain batch moments there). At task 0 the weighting *is* the plain batch moments
  (``pi_0 = 1``, ``omega_n = 1/n``), so the maths is unchanged, but ``task_weight`` is always in
  the graph and DDP needs no ``find_unused_parameters``.
- ``sigma^2`` is computed as ``sum_n omega_n (var_hw(x_n) + (mean_hw(x_n) - mu)^2)``, the same
  quantity by the law of total variance, from per-sample moments of the centred input, inside
  one autograd Function with a hand-written backward (``_BalancedNorm``; gradchecked against
  the autograd composition of :func:`weighted_moments`). Plain batch moments are the same
  kernel with ``omega_n = 1/N``. The normalization and the large reductions of the backward
  run on BatchNorm's own kernels and the ``(N, C)`` chain is written out, so a task-weighted
  training step costs about what ``nn.BatchNorm2d``'s does on CPU (0.7-1.0x,
  ``python -m benchmarks.adab2n``; 1.5-1.75x with broadcasting ``addcmul`` and an autograd
  chain, ~3.5x with the same maths left to autograd).
- A training forward at task > 0 without counts warns once (plain batch moments are used, as
  in the official code); counts whose length differs from the batch raise an error.
- As in the official code (and unlike a normalised ``sum(omega) = 1``), a task ``j <= cur_tasks``
  absent from the batch keeps its share ``pi_j`` of the prior, so the weights then sum below 1.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.templates.continual import ContinualClassifier, Method

__all__ = [
    "AdaB2N",
    "AdaB2NClassifier",
    "convert_bn_to_adab2n",
    "adab2n_layers",
    "modified_momentum",
    "task_balanced_weights",
    "weighted_moments",
    "statistics_regularizer",
]


# ------------------------------------------------------------------------------ the maths
def modified_momentum(momentum: float, kappa: float, step: int, last_eta: float | None) -> float:
    """The running-statistics momentum ``eta`` of training batch ``step`` (official ``get_eta``).

    Args:
        momentum: BatchNorm's momentum ``m`` (0.1).
        kappa: 1 gives torch's EMA, 0 the cumulative mean, in between the recursion.
        step: ``num_batches_tracked`` after counting this batch (1 for the first batch).
        last_eta: the previous ``eta`` of the recursion, ``None`` before the first batch.

    >>> modified_momentum(0.1, 1.0, 7, None), modified_momentum(0.1, 0.0, 4, None)
    (0.1, 0.25)
    >>> round(modified_momentum(0.1, 0.5, 2, 0.1 ** 0.5), 6)
    0.25
    """
    if kappa == 0.0:
        return 1.0 / float(step)
    if kappa == 1.0:
        return momentum
    if last_eta is None:
        return momentum**kappa
    return last_eta / (last_eta + (1.0 - momentum) ** kappa)


def task_balanced_weights(task_weight: Tensor, task_ids: Tensor, current_task: Tensor | int) -> Tensor:
    """Per-sample weights ``omega_n = pi_{t(n)} / n_{t(n)}`` of the Bayesian task weighting.

    ``alpha_j = exp(w_j) + n_j`` for tasks ``j <= current_task`` (0 above), ``pi = alpha / sum(alpha)``
    (official ``training_forward``, the ``concentration`` lines). Shapes: ``task_weight (T,)``,
    ``task_ids (N,)`` with values in ``0..min(current_task, T-1)``; returns ``(N,)``. Built
    without data-dependent shapes, so it never synchronises with an accelerator.
    """
    num_tasks = task_weight.shape[0]
    counts = F.one_hot(task_ids, num_tasks).sum(0).to(task_weight.dtype)  # n_j
    seen = torch.arange(num_tasks, device=task_weight.device) <= current_task
    concentration = (task_weight.exp() + counts) * seen  # alpha_j, 0 for future tasks
    pi = concentration / concentration.sum()
    return pi[task_ids] / counts[task_ids]


def weighted_moments(x: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel ``(mean, biased var)`` of ``x (N, C, *)`` with sample weights ``(N,)``.

    ``mu = sum_n w_n mean(x_n)``, ``var = sum_n w_n mean((x_n - mu)^2)``, computed through the
    per-sample moments: ``mean((x_n - mu)^2) = var(x_n) + (mean(x_n) - mu)^2``.
    """
    dims = tuple(range(2, x.dim()))
    if dims:
        sample_var, sample_mean = torch.var_mean(x, dims, correction=0)  # (N, C) each
    else:
        sample_var, sample_mean = torch.zeros_like(x), x
    weights = weights.to(sample_mean.dtype)
    mean = weights @ sample_mean
    var = weights @ (sample_var + (sample_mean - mean).square())
    return mean, var


def statistics_regularizer(mean: Tensor, var: Tensor, running_mean: Tensor, running_var: Tensor) -> Tensor:
    """``MSE(mu, r_mu) + MSE(sigma^2, r_sigma^2)``: the official layer's cached ``loss``."""
    return F.mse_loss(mean, running_mean) + F.mse_loss(var, running_var)


def _normalize(x: Tensor, mean: Tensor, var: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
    """``gamma (x - mu) / sqrt(var + eps) + beta`` with autograd (the reference for :class:`_BalancedNorm`)."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    out = (x - mean.view(shape)) * torch.rsqrt(var + eps).view(shape)
    if weight is not None:
        out = out * weight.view(shape)
    return out + bias.view(shape) if bias is not None else out


class _BalancedNorm(torch.autograd.Function):
    """:func:`weighted_moments` then the normalization, fused: ``(y, mu, var)`` from ``(x, omega, gamma, beta)``.

    The same maths as ``_normalize(x, *weighted_moments(x, omega), gamma, beta, eps)``: per-sample
    moments by a two-pass centring (``c = x - mean_hw(x)``, stable), then ``y`` by BatchNorm's own
    inference kernel with ``(mu, var)`` as its statistics. The hand-written backward gets the
    per-channel sums ``sum g`` and ``sum g (x - mu)`` from BatchNorm's backward kernel (one pass)
    and ``dL/dx`` in two passes, the per-(sample, channel) affine part again by the inference
    kernel (torch's broadcasting ``addcmul`` has no vectorized path for it and cost ~4x); the
    ``(N, C)``-sized part of the chain is written out too. ``mu`` and ``var`` are outputs so the
    regularizer's gradient flows back through them. Saves ``x`` (not a centred copy). Not twice
    differentiable.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, omega: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> tuple[Tensor, Tensor, Tensor]:
        n, c, h, w = x.shape
        x = x.contiguous()
        flat = x.view(n * c, h * w)
        sample_mean = flat.mean(1, keepdim=True)
        sample_var = torch.linalg.vector_norm(flat - sample_mean, dim=1).square().view(n, c) / (h * w)
        sample_mean = sample_mean.view(n, c)
        omega = omega.to(sample_mean.dtype)
        mean = omega @ sample_mean
        var = omega @ (sample_var + (sample_mean - mean).square())
        y = F.batch_norm(x, mean, var, weight, bias, False, 0.0, eps)  # gamma (x - mu) / sqrt(var + eps) + beta
        rstd = torch.rsqrt(var + eps)
        scale = rstd * weight if weight is not None else rstd
        ctx.save_for_backward(x, omega, weight, sample_mean, sample_var, mean, scale)
        ctx.eps, ctx.has_bias = eps, bias is not None
        return y, mean, var

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_y: Tensor, grad_mean: Tensor | None, grad_var: Tensor | None) -> tuple[Tensor | None, ...]:
        x, omega, weight, sample_mean, sample_var, mean, scale = ctx.saved_tensors
        n, c = sample_mean.shape
        hw = x.shape[2] * x.shape[3]
        grad_y = grad_y.contiguous()
        # per channel: sum_{n,hw} g (x - mu) and sum_{n,hw} g, in one pass of BatchNorm's backward kernel
        _, grad_scale, grad_shift = torch.ops.aten.native_batch_norm_backward(
            grad_y, x, None, None, None, mean, torch.ones_like(mean), True, 0.0, [False, True, True]
        )
        # the (N, C)-sized chain by hand: mu = omega @ m, s2 = omega @ (v + (m - mu)^2),
        # scale = gamma / sqrt(s2 + eps), y = (x - mu) * scale + beta
        dev = sample_mean - mean  # d_nc = m_nc - mu_c
        rstd = torch.rsqrt(omega @ (sample_var + dev.square()) + ctx.eps)
        grad_rstd = grad_scale * weight if weight is not None else grad_scale  # dL/dscale = sum g (x - mu)
        grad_s2 = -0.5 * grad_rstd * rstd.pow(3)
        if grad_var is not None:
            grad_s2 = grad_s2 + grad_var
        grad_mu = -scale * grad_shift  # the direct path (x - mu); dL/dbeta = sum g
        if grad_mean is not None:
            grad_mu = grad_mu + grad_mean
        grad_mu = grad_mu - 2.0 * grad_s2 * (omega @ dev)  # through s2's (m - mu)^2
        grad_m = omega[:, None] * (grad_mu + 2.0 * grad_s2 * dev)
        grad_v = omega[:, None] * grad_s2
        grad_omega = sample_mean @ grad_mu + (sample_var + dev.square()) @ grad_s2
        # x -> per-sample moments: dm/dx = 1/HW, dv/dx = 2 (x - m)/HW; as the per-(n, c) affine map
        # (x - m) * (2 grad_v/HW) + grad_m/HW, by the inference kernel on the (1, N*C, HW) view
        ones = torch.ones(n * c, dtype=x.dtype, device=x.device)
        grad_x = F.batch_norm(
            x.view(1, n * c, hw), sample_mean.reshape(-1), ones, ((2.0 / hw) * grad_v).reshape(-1), (grad_m / hw).reshape(-1), False, 0.0, 0.0
        )
        grad_x = grad_x.view(n, c, hw).addcmul_(grad_y.view(n, c, hw), scale.view(1, c, 1))  # the direct path g * scale
        grad_weight = grad_scale * rstd if weight is not None and ctx.needs_input_grad[2] else None
        return grad_x.view(grad_y.shape), grad_omega, grad_weight, grad_shift if ctx.has_bias else None, None


# ------------------------------------------------------------------------------ the layer
class AdaB2N(nn.BatchNorm2d):
    """A drop-in ``nn.BatchNorm2d`` for continual learning (AdaB²N).

    Before every training forward call :meth:`set_counts` with the labels (or task ids) of the
    batch; call :meth:`end_task` after each task. Read :attr:`regularizer` after a training
    forward and add ``lambd *`` the sum over layers to the loss.
    :class:`zoo.callbacks.adab2n.AdaB2NCallback` does all three in any Lightning training loop.

    Args:
        num_features: channels ``C`` of the ``(N, C, H, W)`` input.
        num_tasks: tasks of the sequence (length of ``task_weight``).
        eps / momentum / affine: as ``nn.BatchNorm2d`` (``momentum`` is ``m`` of the recursion).
        kappa: modified-momentum exponent in ``[0, 1]`` (1 = BatchNorm's EMA, 0 = cumulative mean).
        init_weight: initial value of the learnable ``task_weight`` (the log prior concentration).

    State: ``running_mean``, ``running_var`` (biased), ``num_batches_tracked``, ``cur_tasks``
    (tasks ended so far) and ``last_eta`` are buffers; ``task_weight`` is a parameter.

    >>> layer = AdaB2N(4, num_tasks=3, kappa=0.7)
    >>> layer.set_counts(torch.tensor([0, 0, 0]))
    >>> layer(torch.randn(3, 4, 2, 2)).shape
    torch.Size([3, 4, 2, 2])
    >>> round(float(layer.last_eta), 5) == round(0.1 ** 0.7, 5)  # eta_1 = m^kappa
    True
    """

    def __init__(
        self,
        num_features: int = 16,
        num_tasks: int = 5,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = True,
        kappa: float = 1.0,
        init_weight: float = 0.0,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        if momentum is None or not 0.0 < momentum <= 1.0:
            raise ValueError(
                f"AdaB2N needs a BatchNorm momentum in (0, 1], got {momentum!r} "
                "(momentum=None, torch's cumulative average, is AdaB2N's kappa=0.0 with momentum=0.1)"
            )
        if not 0.0 <= kappa <= 1.0:
            raise ValueError(f"kappa must be in [0, 1] (1 = BatchNorm's EMA, 0 = cumulative mean), got {kappa}")
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be positive, got {num_tasks}")
        super().__init__(num_features, eps, momentum, affine, track_running_stats=True, device=device, dtype=dtype)
        self.num_tasks, self.kappa, self.init_weight = int(num_tasks), float(kappa), float(init_weight)
        factory = {"device": device, "dtype": dtype}
        self.task_weight = nn.Parameter(torch.full((self.num_tasks,), self.init_weight, **factory))
        self.register_buffer("cur_tasks", torch.zeros((), dtype=torch.long, device=device))
        self.register_buffer("last_eta", torch.zeros((), **factory))  # 0 = recursion not started
        self.cur_tasks: Tensor
        self.last_eta: Tensor
        #: ``MSE(mu, r_mu) + MSE(sigma^2, r_sigma^2)`` of the last training forward (with its graph).
        self.regularizer: Tensor | None = None
        self._task_ids: Tensor | None = None
        self._warned_no_counts = False

    def reset_running_stats(self) -> None:
        super().reset_running_stats()
        if hasattr(self, "last_eta"):
            self.last_eta.zero_()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_tasks={self.num_tasks}, kappa={self.kappa}"

    # --------------------------------------------------------------------- the training loop's part
    def set_counts(self, labels_or_task_ids: Tensor, classes_per_task: int = 1, *, validate: bool = True) -> None:
        """Announce the next training forward's per-sample tasks (official ``ErACEAda.set_counts``).

        ``labels_or_task_ids``: ``(N,)`` integers; the task of sample ``n`` is
        ``labels[n] // classes_per_task`` (pass ``classes_per_task=1`` for task ids). Classes must
        be numbered task by task, as :class:`zoo.datamodules.continual.SplitTasks` does.
        ``validate=False`` skips the range check (one host sync), for callers that checked once.
        """
        if labels_or_task_ids.dim() != 1:
            raise ValueError(f"AdaB2N.set_counts takes one label or task id per sample (N,), got shape {tuple(labels_or_task_ids.shape)}")
        task_ids = labels_or_task_ids.long() // int(classes_per_task)
        if validate and task_ids.numel():
            low, high, current = int(task_ids.min()), int(task_ids.max()), int(self.cur_tasks)
            if low < 0 or high >= self.num_tasks:
                raise ValueError(f"AdaB2N: task ids must be in 0..{self.num_tasks - 1} (num_tasks), got {low}..{high}")
            if high > current:
                raise ValueError(
                    f"AdaB2N: the batch holds task {high}, but the layer is at task {current} "
                    "(call end_task() after each task, or check classes_per_task)"
                )
        self._task_ids = task_ids

    def clear_counts(self) -> None:
        """Forget the announced counts (the next training forward uses plain batch moments)."""
        self._task_ids = None

    @torch.no_grad()
    def end_task(self) -> None:
        """Advance the task counter (official ``AdaB2N.end_task``)."""
        self.cur_tasks.add_(1)

    # ---------------------------------------------------------------------------- forward
    def _next_eta(self) -> float:
        previous = float(self.last_eta) if 0.0 < self.kappa < 1.0 else 0.0
        eta = modified_momentum(float(self.momentum), self.kappa, int(self.num_batches_tracked), previous if previous > 0 else None)
        self.last_eta.fill_(eta)
        return eta

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        if not self.training:
            return F.batch_norm(input, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        self.num_batches_tracked.add_(1)
        eta = self._next_eta()
        if self._task_ids is not None:
            if self._task_ids.shape[0] != input.shape[0]:
                raise ValueError(
                    f"AdaB2N: counts were set for {self._task_ids.shape[0]} samples but the batch has {input.shape[0]}; "
                    "call set_counts with the labels of exactly this forward's batch"
                )
            weights = task_balanced_weights(self.task_weight, self._task_ids.to(input.device), self.cur_tasks)
        else:
            if not self._warned_no_counts and int(self.cur_tasks) > 0:
                self._warned_no_counts = True
                warnings.warn(
                    "AdaB2N: a training forward at task > 0 without set_counts uses plain batch statistics; "
                    "call set_counts before every training forward (zoo.callbacks.adab2n.AdaB2NCallback does it)",
                    stacklevel=2,
                )
            weights = torch.full((input.shape[0],), 1.0 / input.shape[0], dtype=input.dtype, device=input.device)
        output, mean, var = _BalancedNorm.apply(input, weights, self.weight, self.bias, self.eps)
        with torch.no_grad():
            self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), eta)
            self.running_var.lerp_(var.detach().to(self.running_var.dtype), eta)
        # against copies: a later forward of the same step updates the buffers in place
        self.regularizer = statistics_regularizer(mean, var, self.running_mean.clone(), self.running_var.clone())
        return output


def adab2n_layers(model: nn.Module) -> list[AdaB2N]:
    """Every :class:`AdaB2N` layer of ``model``, in module order."""
    return [m for m in model.modules() if isinstance(m, AdaB2N)]


def convert_bn_to_adab2n(module: nn.Module, num_tasks: int, kappa: float = 1.0, init_weight: float = 0.0) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` of ``module`` by an :class:`AdaB2N` (official ``replace_bn``).

    Parameters and buffers are copied as they are (so an eval-mode output is unchanged until
    training), as are ``requires_grad``, device, dtype and train/eval mode. Only exact
    ``nn.BatchNorm2d`` instances are replaced (as the official ``type(m) == nn.BatchNorm2d``),
    not subclasses such as ``SyncBatchNorm`` or timm's ``BatchNormAct2d``. Like
    ``nn.SyncBatchNorm.convert_sync_batchnorm``, returns the converted module (a new one if
    ``module`` is itself a BatchNorm2d); build the optimizer afterwards so ``task_weight`` is in it.
    """
    if type(module) is nn.BatchNorm2d:
        if not module.track_running_stats or module.running_mean is None:
            raise ValueError("convert_bn_to_adab2n: BatchNorm2d without running statistics cannot become AdaB2N")
        ref = module.running_mean
        new = AdaB2N(
            module.num_features, num_tasks, module.eps, module.momentum, module.affine, kappa, init_weight, device=ref.device, dtype=ref.dtype
        )
        with torch.no_grad():
            if module.affine:
                new.weight.copy_(module.weight)
                new.bias.copy_(module.bias)
                new.weight.requires_grad_(module.weight.requires_grad)
                new.bias.requires_grad_(module.bias.requires_grad)
            new.running_mean.copy_(module.running_mean)
            new.running_var.copy_(module.running_var)
            new.num_batches_tracked.copy_(module.num_batches_tracked)
        return new.train(module.training)
    for name, child in module.named_children():
        converted = convert_bn_to_adab2n(child, num_tasks, kappa, init_weight)
        if converted is not child:
            setattr(module, name, converted)
    return module


# ------------------------------------------------------------------------ the zoo module
def _no_store(x: Tensor, y: Tensor) -> None:
    """The replay buffer's ``add`` while an incoming batch is served again (it is stored once)."""


class AdaB2NClassifier(ContinualClassifier):
    """:class:`zoo.templates.continual.ContinualClassifier` with every BatchNorm2d replaced by AdaB²N.

    Defaults are the card's CPU check: the small CNN, ER-ACE with one joint stream + replay
    forward (as the official ``er_ace_ada``), a reservoir buffer of 200, SGD lr 0.05,
    ``kappa=0.7``. It trains with :class:`zoo.callbacks.adab2n.AdaB2NCallback` in the Trainer,
    which feeds the counts, adds ``lambd *`` the regularizer and advances the task counter;
    ``fit`` without it raises an error that says so (the card's configs list it).

    Args:
        backbone / num_classes / input_dim / hidden_dims / in_chans / method / buffer_size /
            replay_batch_size / joint_forward / lr / momentum / weight_decay: as
            :class:`~zoo.templates.continual.ContinualClassifier`.
        norm: ``adab2n`` (the method: the backbone's BatchNorm2d layers converted) or
            ``batchnorm`` (the paper's baseline, torch's BatchNorm2d, so baselines checkpoint
            and publish as this entry too).
        num_tasks: tasks of the sequence (AdaB²N's ``task_weight`` length).
        kappa: AdaB²N's modified-momentum exponent. init_weight: initial ``task_weight``.
    """

    def __init__(
        self,
        backbone: str = "cnn",
        num_classes: int = 10,
        input_dim: int = 64,
        hidden_dims: list[int] | None = None,
        in_chans: int = 1,
        method: Method = "er_ace",
        buffer_size: int = 200,
        replay_batch_size: int = 10,
        joint_forward: bool = True,
        lr: float = 0.05,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        norm: Literal["adab2n", "batchnorm"] = "adab2n",
        num_tasks: int = 5,
        kappa: float = 0.7,
        init_weight: float = 0.0,
    ) -> None:
        if norm not in ("adab2n", "batchnorm"):
            raise ValueError(f"norm must be 'adab2n' or 'batchnorm' (the baseline), got {norm!r}")
        super().__init__(
            backbone=backbone,
            num_classes=num_classes,
            input_dim=input_dim,
            hidden_dims=hidden_dims,
            in_chans=in_chans,
            norm="batchnorm",
            method=method,
            buffer_size=buffer_size,
            replay_batch_size=replay_batch_size,
            joint_forward=joint_forward,
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
        )
        self.save_hyperparameters()  # again: only this class's own arguments go to config.json
        if norm == "batchnorm":
            return
        self.net = convert_bn_to_adab2n(self.net, num_tasks, kappa, init_weight)
        if not adab2n_layers(self.net):
            raise ValueError(f"backbone {backbone!r} has no BatchNorm2d for AdaB2N to replace; use 'cnn' or a timm CNN")

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """ContinualClassifier's step; with a DataModule serving each incoming batch ``k`` times
        (``SplitTasks(iters_per_batch=k)``), the batch enters the replay buffer at its last pass only."""
        repeats = int(getattr(self.trainer.datamodule, "iters_per_batch", 1)) if self._trainer is not None else 1
        if repeats == 1 or (batch_idx + 1) % repeats == 0:
            return super().training_step(batch, batch_idx)
        self.buffer.add = _no_store  # type: ignore[method-assign]  # an earlier pass: train on it, store it later
        try:
            return super().training_step(batch, batch_idx)
        finally:
            del self.buffer.add

    def setup(self, stage: str) -> None:
        """Refuse to fit AdaB²N layers that no callback feeds (counts, regularizer, task ends)."""
        if stage != "fit" or self.hparams["norm"] != "adab2n" or self._trainer is None:
            return
        # the label-announcing protocol of ContinualClassifier (zoo/ does not import zoo.callbacks)
        if not any(callable(getattr(c, "on_train_forward_labels", None)) for c in self.trainer.callbacks):  # type: ignore[attr-defined]
            raise RuntimeError(
                "AdaB2NClassifier(norm='adab2n') trains with zoo.callbacks.AdaB2NCallback, which sets the layers' task "
                "counts, adds the statistics regularizer and ends tasks: add it to the Trainer "
                "(callbacks=[AdaB2NCallback()], or --trainer.callbacks+=zoo.callbacks.AdaB2NCallback)"
            )
