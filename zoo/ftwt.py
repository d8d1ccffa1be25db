"""Fire Together Wire Together: dynamic pruning with self-supervised mask prediction (FTWT).

Elkerdawy, Elhoushi, Zhang, Ray (CVPR 2022), arXiv 2110.08232. Official code (PyTorch, no
licence: read, not copied): selkerdawy/FTWT, ``utils/layers.py`` (mass / uniform targets, the
binarizer, the predictor) and ``cifar.py`` (the training loop).

Each masked convolution block ``o = act(BN(conv(x)))`` gets a small predictor that looks at the
block's *input* ("fire together"): ``s = W softmax_c(avgpool(x)) + b``; the block's output is
multiplied by the binary mask ``1[s > 0]`` (a straight-through estimator in the backward pass).
The predictor is trained as a per-filter binary classifier against a self-supervised target
computed from the dense output under ``no_grad``: filter saliency ``h_c = max_{hw} |o_c|``, made
a distribution, and the smallest set of filters whose mass reaches ``mass_threshold`` (tau) is
"on". A lower tau removes more filters, input by input; FLOPs are counted from the masks as the
executed convolutions (active filters x output pixels x active input channels x k^2).

Deviations and guesses (also on the card):

- the paper fine-tunes a separately pre-trained dense model; here one ``fit`` runs
  ``pretrain_epochs`` dense epochs first (cosine from ``pretrain_lr``), then the FTWT phase;
- predictors start at zero weights and bias ``init_bias`` (all-ones masks), the closed-form end
  point of the official code's ~500 batches of BCE toward ones;
- after the cooldown (``cooldown`` of the FTWT phase) the mask loss is 0 and the predictors' lr
  too, so they are frozen as the paper says, although the straight-through estimator would still
  pass them the classification gradient;
- ResNets mask the first convolution of every residual block (its channels are the block's
  own), not the block output after the addition; the stem convolution is never masked (its input
  is the image, so the predictor would be constant);
- ``gt_type="uniform"`` keeps ``round(mass_threshold * C)`` top filters (the official
  ``get_gt_mask_pratio`` drops a fixed ratio);
- ``pruning="static"`` is the paper's static baseline: filters ranked by L1 norm once at the end
  of the dense phase, per-layer keep fractions from a number or a JSON file an FTWT run wrote
  (``keep_out``), then the same fine-tuning.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric, Metric

from zoo.nn.backbones import build_backbone
from zoo.templates.classifier import ClassifierModule

__all__ = [
    "filter_saliency",
    "mass_target",
    "uniform_target",
    "binarize_ste",
    "mask_loss",
    "conv_flops",
    "flops_reduction",
    "l1_keep_mask",
    "FLOPsReduction",
    "FTWTConv",
    "FLOPsTape",
    "count_conv_flops",
    "convert_to_ftwt",
    "DigitsConvNet",
    "FTWTClassifier",
    "GT_TYPES",
    "MODES",
    "PRUNINGS",
]

GT_TYPES = ("mass", "uniform")
MODES = ("decoupled", "joint")
PRUNINGS = ("dynamic", "static", "none")
_EPS = 1e-5  # the official code's slack on the cumulative mass


# ------------------------------------------------------------------------------------- maths
def filter_saliency(o: Tensor) -> Tensor:
    """Per-sample filter heat ``h_c = max_{h,w} |o_c|`` of a ``(B, C, H, W)`` output (Sec. 3.2)."""
    if o.ndim != 4:
        raise ValueError(f"expected a (B, C, H, W) feature map, got shape {tuple(o.shape)}")
    return o.abs().flatten(2).amax(2)


def mass_target(h: Tensor, tau: float) -> Tensor:
    """The "mass" target: per sample, the smallest top set of filters holding ``tau`` of the heat.

    ``p = h / sum h`` sorted descending; filter ``i`` is on when the mass before it is below
    ``tau - 1e-5``, so the prefix stops once it reaches ``tau`` and ``tau = 1`` drops only filters
    of (near) zero heat. Returns a float ``(B, C)`` 0/1 mask; an all-zero row keeps every filter.
    """
    if not 0 < tau <= 1:
        raise ValueError(f"mass_threshold must be in (0, 1], got {tau}")
    p = h / h.sum(1, keepdim=True).clamp_min(1e-12)
    p_sorted, order = p.sort(1, descending=True)
    before = p_sorted.cumsum(1) - p_sorted  # mass of the filters ranked above
    keep_sorted = (before < tau - _EPS).to(h.dtype)
    target = torch.zeros_like(h).scatter(1, order, keep_sorted)
    dead = h.sum(1) <= 0
    return torch.where(dead[:, None], torch.ones_like(target), target)


def uniform_target(h: Tensor, keep: float) -> Tensor:
    """The "uniform" target: the ``round(keep * C)`` filters of highest heat (at least one) per sample."""
    if not 0 < keep <= 1:
        raise ValueError(f"keep fraction must be in (0, 1], got {keep}")
    k = max(1, round(keep * h.shape[1]))
    top = h.topk(k, dim=1).indices
    return torch.zeros_like(h).scatter(1, top, 1.0)


def binarize_ste(logits: Tensor) -> Tensor:
    """``1[sigmoid(s) > 0.5]`` forward, identity gradient backward (straight-through estimator)."""
    hard = (logits > 0).to(logits.dtype)
    return hard + logits - logits.detach()


def mask_loss(logits: list[Tensor], targets: list[Tensor]) -> Tensor:
    """``(1 / L) sum_l sum_c mean_b BCEWithLogits(s_lc, m_lc)``: the layer-mean mask loss."""
    if not logits or len(logits) != len(targets):
        raise ValueError(f"need one target per predictor, got {len(logits)} logits and {len(targets)} targets")
    per_layer = [F.binary_cross_entropy_with_logits(s, m, reduction="none").mean(0).sum() for s, m in zip(logits, targets)]
    return torch.stack(per_layer).mean()


def conv_flops(conv: nn.Conv2d, out_hw: tuple[int, int], in_active: Tensor, out_active: Tensor) -> Tensor:
    """Per-sample multiply-accumulates of ``conv`` executing only active channels (Sec. 4, FLOPs).

    ``out_active * H_out * W_out * (in_active / groups) * kh * kw``; with every channel active
    this is the dense count (half of ``torch.utils.flop_counter``'s FLOPs, which counts 2 per MAC).
    """
    kh, kw = conv.kernel_size
    return out_active.double() * out_hw[0] * out_hw[1] * (in_active.double() / conv.groups) * kh * kw


def flops_reduction(executed: Tensor, dense: Tensor) -> Tensor:
    """``1 - sum executed / sum dense``: the fraction of the dense network's FLOPs removed."""
    total = dense.double().sum()
    if total <= 0:
        raise ValueError("dense FLOPs must be positive")
    return 1 - executed.double().sum() / total


def l1_keep_mask(weight: Tensor, keep: float) -> Tensor:
    """Static pruning: the ``round(keep * C_out)`` filters (at least one) of largest L1 norm."""
    if not 0 < keep <= 1:
        raise ValueError(f"keep fraction must be in (0, 1], got {keep}")
    norms = weight.detach().abs().flatten(1).sum(1)
    k = max(1, round(keep * norms.numel()))
    mask = torch.zeros_like(norms)
    mask[norms.topk(k).indices] = 1.0
    return mask


class FLOPsReduction(Metric):
    """Executed convolution FLOPs against the dense count, summed over samples (and processes).

    ``update(executed, dense)`` takes per-sample MACs (see :func:`conv_flops`); ``compute``
    returns :func:`flops_reduction`; ``mean_flops`` is the executed MACs per sample.
    """

    higher_is_better = True
    is_differentiable = False
    full_state_update = False
    executed: Tensor
    dense: Tensor
    samples: Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("executed", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("dense", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("samples", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, executed: Tensor, dense: Tensor) -> None:
        if executed.shape != dense.shape:
            raise ValueError(f"executed {tuple(executed.shape)} and dense {tuple(dense.shape)} must have one value per sample each")
        self.executed += executed.double().sum()
        self.dense += dense.double().sum()
        self.samples += executed.numel()

    def compute(self) -> Tensor:
        return flops_reduction(self.executed, self.dense)

    def mean_flops(self) -> Tensor:
        return self.executed / self.samples.clamp_min(1)


# ----------------------------------------------------------------------------- the block
class FLOPsTape:
    """Per-sample executed and dense MACs of one forward; ``pending`` carries the last mask's active count."""

    def __init__(self) -> None:
        self.executed: Tensor | float = 0.0
        self.dense: Tensor | float = 0.0
        self.pending: tuple[int, Tensor] | None = None  # (channels, active per sample) of the last masked output

    def in_active(self, x: Tensor) -> Tensor:
        """Active input channels per sample: the last mask's count if it produced ``x``'s channels, else all."""
        if self.pending is not None and self.pending[0] == x.shape[1]:
            active = self.pending[1]
        else:
            active = torch.full((x.shape[0],), float(x.shape[1]), device=x.device)
        self.pending = None
        return active

    def add(self, conv: nn.Conv2d, x: Tensor, out: Tensor, out_active: Tensor | None = None) -> None:
        b, hw = x.shape[0], (out.shape[2], out.shape[3])
        full_out = torch.full((b,), float(conv.out_channels), device=x.device)
        full_in = torch.full((b,), float(x.shape[1]), device=x.device)
        self.executed = self.executed + conv_flops(conv, hw, self.in_active(x), full_out if out_active is None else out_active)
        self.dense = self.dense + conv_flops(conv, hw, full_in, full_out)


class FTWTConv(nn.Module):
    """``act(BN(conv(x)))`` times a predicted per-sample filter mask (Sec. 3, Fig. 2).

    ``state``: 0 dense (no mask), 1 dynamic (predicted mask), 2 static (the ``static_mask``
    buffer). After a dynamic forward, ``last_logits`` / ``last_target`` / ``last_mask`` hold the
    predictor's logits, the self-supervised target and the binary mask, ``(B, C_out)`` each.
    """

    def __init__(
        self,
        conv: nn.Conv2d,
        bn: nn.Module,
        act: nn.Module,
        gt_type: str = "mass",
        mass_threshold: float = 0.92,
        mode: str = "decoupled",
        init_bias: float = 3.0,
    ) -> None:
        super().__init__()
        if gt_type not in GT_TYPES:
            raise ValueError(f"gt_type must be one of {GT_TYPES}, got {gt_type!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not 0 < mass_threshold <= 1:
            raise ValueError(f"mass_threshold must be in (0, 1], got {mass_threshold}")
        self.conv, self.bn, self.act = conv, bn, act
        self.gt_type, self.mass_threshold, self.mode = gt_type, mass_threshold, mode
        self.predictor = nn.Linear(conv.in_channels, conv.out_channels)  # the 1x1 conv on the pooled input
        nn.init.zeros_(self.predictor.weight)
        nn.init.constant_(self.predictor.bias, init_bias)
        self.register_buffer("state", torch.tensor(0))
        self.register_buffer("static_mask", torch.ones(conv.out_channels))
        self.tape: FLOPsTape | None = None
        self.last_logits: Tensor | None = None
        self.last_target: Tensor | None = None
        self.last_mask: Tensor | None = None

    def predict(self, x: Tensor) -> Tensor:
        """Predictor logits ``W softmax_c(avgpool(x)) + b`` (decoupled: on the detached input)."""
        x = x.detach() if self.mode == "decoupled" else x
        return self.predictor(F.adaptive_avg_pool2d(x, 1).flatten(1).softmax(1))

    def target(self, o: Tensor) -> Tensor:
        h = filter_saliency(o)
        return mass_target(h, self.mass_threshold) if self.gt_type == "mass" else uniform_target(h, self.mass_threshold)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        o = self.act(self.bn(out))
        state = int(self.state)
        mask: Tensor | None = None
        if state == 1:
            with torch.no_grad():
                self.last_target = self.target(o)
            self.last_logits = self.predict(x)
            mask = binarize_ste(self.last_logits)
        elif state == 2:
            mask = self.static_mask.expand(x.shape[0], -1)
        self.last_mask = None if mask is None else mask.detach()
        if self.tape is not None:
            active = None if mask is None else mask.detach().sum(1)
            self.tape.add(self.conv, x, out, active)
            if active is not None:
                self.tape.pending = (self.conv.out_channels, active)
        return o if mask is None else o * mask[:, :, None, None]


@contextmanager
def count_conv_flops(model: nn.Module) -> Iterator[FLOPsTape]:
    """Record every convolution's executed and dense MACs per sample during the forwards inside."""
    tape = FLOPsTape()
    blocks = [m for m in model.modules() if isinstance(m, FTWTConv)]
    inner = {id(b.conv) for b in blocks}
    handles = [
        m.register_forward_hook(lambda mod, inp, out: tape.add(mod, inp[0], out))
        for m in model.modules()
        if isinstance(m, nn.Conv2d) and id(m) not in inner
    ]
    for b in blocks:
        b.tape = tape
    try:
        yield tape
    finally:
        for h in handles:
            h.remove()
        for b in blocks:
            b.tape = None


def convert_to_ftwt(model: nn.Module, skip_first: bool = True, **block_args: Any) -> list[FTWTConv]:
    """Fuse a mask predictor into every conv-BN-activation of ``model`` in place; return the blocks.

    Finds ``Conv2d, BatchNorm2d, ReLU-like`` runs in ``nn.Sequential`` containers and the
    ``conv1/bn1/act1`` (and a bottleneck's ``conv2/bn2/act2``) of timm ResNet blocks; the first
    one found (the stem, whose input is the image) is skipped with ``skip_first``.
    """
    found: list[tuple[nn.Module, str, str, str]] = []
    for module in model.modules():
        if isinstance(module, FTWTConv):
            raise ValueError("model already holds FTWTConv blocks")
        if isinstance(module, nn.Sequential):
            names = list(module._modules)
            for i in range(len(names) - 2):
                a, b, c = (module._modules[n] for n in names[i : i + 3])
                if isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d) and isinstance(c, (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU)):
                    found.append((module, names[i], names[i + 1], names[i + 2]))
        for k in ("1", "2") if hasattr(module, "conv3") else ("1",):
            parts = [getattr(module, f"{p}{k}", None) for p in ("conv", "bn", "act")]
            if isinstance(parts[0], nn.Conv2d) and all(isinstance(m, nn.Module) for m in parts[1:]):
                found.append((module, f"conv{k}", f"bn{k}", f"act{k}"))
    blocks: list[FTWTConv] = []
    for parent, conv, bn, act in found[1:] if skip_first else found:
        block = FTWTConv(getattr(parent, conv), getattr(parent, bn), getattr(parent, act), **block_args)
        setattr(parent, conv, block)
        setattr(parent, bn, nn.Identity())
        setattr(parent, act, nn.Identity())
        blocks.append(block)
    if not blocks:
        raise ValueError(f"no conv-BN-activation found to mask in {type(model).__name__}")
    return blocks


class DigitsConvNet(nn.Sequential):
    """``depth`` conv3x3-BN-ReLU blocks of ``width`` channels, a 2x2 max-pool after block ``pool_after``, GAP, Linear."""

    def __init__(self, in_chans: int = 1, num_classes: int = 10, width: int = 32, depth: int = 4, pool_after: int = 2) -> None:
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Conv2d(in_chans if i == 0 else width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
            if i + 1 == pool_after:
                layers.append(nn.MaxPool2d(2))
        super().__init__(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))
        self.num_features = width


# ---------------------------------------------------------------------------- the module
class FTWTClassifier(ClassifierModule):
    """A classifier whose conv blocks carry FTWT mask predictors; logs ``{stage}/flops_reduction``.

    Args:
        backbone: ``digits_cnn`` (:class:`DigitsConvNet`) or a timm name (``resnet18`` with
            ``cifar_stem`` for 32x32 images).
        pruning: ``dynamic`` (FTWT), ``static`` (L1 filter pruning, the paper's baseline) or ``none``.
        gt_type / mass_threshold / mode: the target (tau) and decoupled or joint predictor training.
        pretrain_epochs / pretrain_lr: the dense phase before pruning (cosine schedule).
        lr / mask_lr / weight_decay / momentum: SGD of the pruning phase (predictors: no decay).
        milestones / gamma: lr steps at these fractions of the pruning phase.
        cooldown: fraction of the pruning phase with the mask loss on (then predictors freeze).
        static_keep: per-layer keep fraction(s) for ``static``: a number, a list, or a JSON path.
        keep_out: where a dynamic run writes its per-layer validation keep fractions (JSON).
    """

    def __init__(
        self,
        num_classes: int = 10,
        backbone: str = "digits_cnn",
        in_chans: int = 1,
        width: int = 32,
        cifar_stem: bool = False,
        pruning: str = "dynamic",
        gt_type: str = "mass",
        mass_threshold: float = 0.92,
        mode: str = "decoupled",
        init_bias: float = 3.0,
        pretrain_epochs: int = 10,
        pretrain_lr: float = 0.05,
        lr: float = 0.01,
        mask_lr: float = 0.1,
        weight_decay: float = 5e-4,
        momentum: float = 0.9,
        milestones: list[float] | None = None,
        gamma: float = 0.1,
        cooldown: float = 0.5,
        static_keep: float | list[float] | str = 1.0,
        keep_out: str | None = None,
    ) -> None:
        super().__init__(num_classes)
        if pruning not in PRUNINGS:
            raise ValueError(f"pruning must be one of {PRUNINGS}, got {pruning!r}")
        if pretrain_epochs < 0 or not 0 <= cooldown <= 1:
            raise ValueError(f"need pretrain_epochs >= 0 and cooldown in [0, 1], got {pretrain_epochs}, {cooldown}")
        self.save_hyperparameters()
        if backbone == "digits_cnn":
            self.net: nn.Module = DigitsConvNet(in_chans, num_classes, width)
        else:
            self.net = build_backbone(backbone, num_classes, in_chans=in_chans, cifar_stem=cifar_stem)
        self.blocks = convert_to_ftwt(self.net, gt_type=gt_type, mass_threshold=mass_threshold, mode=mode, init_bias=init_bias)
        self.flops = nn.ModuleDict({s: FLOPsReduction() for s in ("val", "test")})
        self.mask_acc = nn.ModuleDict({s: MeanMetric() for s in ("val", "test")})
        self.keep = nn.ModuleDict({s: nn.ModuleList(MeanMetric() for _ in self.blocks) for s in ("val", "test")})

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    # ------------------------------------------------------------------------ schedule
    def _total_epochs(self) -> int:
        trainer = self._trainer
        total = trainer.max_epochs if trainer is not None and trainer.max_epochs not in (None, -1) else None
        return int(total) if total is not None else self.hparams["pretrain_epochs"] + 1

    def _phase_epoch(self, epoch: int) -> float:
        """Fraction of the pruning phase done at the start of ``epoch`` (negative in the dense phase)."""
        p = self.hparams["pretrain_epochs"]
        return (epoch - p) / max(1, self._total_epochs() - p)

    def _lrs(self, epoch: int) -> tuple[float, float]:
        """(backbone, predictor) learning rates of ``epoch``: cosine dense phase, then steps; predictors off outside the mask-loss window."""
        h, p = self.hparams, self.hparams["pretrain_epochs"]
        if epoch < p:
            return h["pretrain_lr"] * 0.5 * (1 + math.cos(math.pi * epoch / p)), 0.0
        t = self._phase_epoch(epoch)
        backbone = h["lr"] * h["gamma"] ** sum(t >= m for m in h["milestones"] or [])
        return backbone, (h["mask_lr"] if h["pruning"] == "dynamic" and t < h["cooldown"] else 0.0)

    def _set_state(self, epoch: int) -> None:
        """Switch the blocks from dense to pruning when the dense phase ends (static masks are set once)."""
        if epoch < self.hparams["pretrain_epochs"] or self.hparams["pruning"] == "none":
            return
        if self.hparams["pruning"] == "static" and int(self.blocks[0].state) != 2:
            for block, keep in zip(self.blocks, self._static_keep()):
                block.static_mask.copy_(l1_keep_mask(block.conv.weight, keep))
        for block in self.blocks:
            block.state.fill_(1 if self.hparams["pruning"] == "dynamic" else 2)

    def _static_keep(self) -> list[float]:
        keep = self.hparams["static_keep"]
        if isinstance(keep, str):
            path = Path(keep)
            if not path.is_file():
                raise FileNotFoundError(f"static_keep file {keep!r} not found: run the FTWT arm with keep_out={keep!r} first, or give a number")
            keep = json.loads(path.read_text())
        keep = [float(keep)] * len(self.blocks) if isinstance(keep, (int, float)) else [float(k) for k in keep]
        if len(keep) != len(self.blocks):
            raise ValueError(f"static_keep has {len(keep)} fractions, the model {len(self.blocks)} masked layers")
        return keep

    def on_train_epoch_start(self) -> None:
        epoch = self.current_epoch
        self._set_state(epoch)
        for group, lr in zip(self.optimizers().optimizer.param_groups, self._lrs(epoch)):  # type: ignore[union-attr]
            group["lr"] = lr

    # ---------------------------------------------------------------------------- steps
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        ce = F.cross_entropy(self(x), y)
        loss = ce
        if int(self.blocks[0].state) == 1 and self._phase_epoch(self.current_epoch) < self.hparams["cooldown"]:
            ml = mask_loss([b.last_logits for b in self.blocks], [b.last_target for b in self.blocks])  # type: ignore[misc]
            self.log("train/mask_loss", ml)
            loss = ce + ml  # Eq. 5: L = CE + w_mask * L_mask, w_mask = 1 before the cooldown
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def _eval(self, batch: Any, stage: str, dataloader_idx: int) -> None:
        x, y = batch[0], batch[1]
        with count_conv_flops(self.net) as tape:
            logits = self(x)
        self.update_metrics(stage, logits, y, dataloader_idx)
        self.log(f"{stage}/loss", F.cross_entropy(logits, y))
        self.flops[stage].update(tape.executed, tape.dense)  # type: ignore[arg-type]
        for block, keep in zip(self.blocks, self.keep[stage]):  # type: ignore[arg-type]
            if block.last_mask is not None:
                keep.update(block.last_mask.mean(1))
        if int(self.blocks[0].state) == 1:
            agree = [(b.last_mask == b.last_target).float().mean(1) for b in self.blocks]  # type: ignore[union-attr]
            self.mask_acc[stage].update(torch.stack(agree).mean(0))

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval(batch, "val", dataloader_idx)

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval(batch, "test", dataloader_idx)

    def _log_pruning(self, stage: str) -> list[float]:
        flops = self.flops[stage]
        self.log(f"{stage}/flops_reduction", flops.compute().float())
        self.log(f"{stage}/mflops", (flops.mean_flops() / 1e6).float())
        flops.reset()
        if self.mask_acc[stage].update_called:
            self.log(f"{stage}/mask_acc", self.mask_acc[stage].compute())
            self.mask_acc[stage].reset()
        keeps = []
        for i, keep in enumerate(self.keep[stage]):  # type: ignore[arg-type]
            value = keep.compute() if keep.update_called else torch.tensor(1.0)
            self.log(f"{stage}/keep_l{i}", value.float())
            keeps.append(float(value))
            keep.reset()
        return keeps

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        keeps = self._log_pruning("val")
        out = self.hparams["keep_out"]
        if out and int(self.blocks[0].state) == 1 and not self.trainer.sanity_checking and self.trainer.is_global_zero:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            Path(out).write_text(json.dumps(keeps))

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        self._log_pruning("test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """SGD with two groups: the backbone (weight decay) and the predictors (no decay, own lr)."""
        pred = [p for b in self.blocks for p in b.predictor.parameters()]
        ids = {id(p) for p in pred}
        rest = [p for p in self.parameters() if id(p) not in ids]
        h = self.hparams
        backbone_lr, pred_lr = self._lrs(0)
        return torch.optim.SGD(
            [
                {"params": rest, "lr": backbone_lr, "weight_decay": h["weight_decay"]},
                {"params": pred, "lr": pred_lr, "weight_decay": 0.0},
            ],
            lr=backbone_lr,
            momentum=h["momentum"],
        )
