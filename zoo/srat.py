"""SRAT: Separable Reweighted Adversarial Training for imbalanced data.

Paper: *Imbalanced Adversarial Training with Reweighting* (Wang, Xu, Liu, Li, Thuraisingham,
Tang; arXiv:2107.13639, 2021; ICLR 2022 submission, OpenReview ``Zae_OHNq-y``). No official code
is public.

Adversarial training on long-tailed data hurts the under-represented classes far more than
natural training, and plain reweighting does not fix it: upweighting the minority classes
sharply hurts the majority ones. The paper traces this tension to poor separability of the
classes in feature space and proposes SRAT, reweighted PGD adversarial training plus a loss
that makes the adversarial features of different classes more separable. Here one module
covers the whole family as configurations (see ``cards/srat``):

- PGD-AT (Madry et al.): ``reweight="none", sep_weight=0``;
- PGD-AT + class-balanced reweighting from the start: ``reweight_start_epoch=0, sep_weight=0``;
- PGD-AT + deferred reweighting (DRW-style): ``reweight_start_epoch=T, sep_weight=0``;
- SRAT: deferred reweighting + separation loss, ``reweight_start_epoch=T, sep_weight>0``;
- natural training: ``attack_steps=0``.

The algorithm, step by step (numbered as the abstract describes it; no equation of the paper is verified):

1. inner maximisation: ``x' = PGD_{eps, alpha, k}(x, y)`` maximising the (unweighted) CE in the
   L-inf ball, random-uniform start (:class:`zoo.nn.attacks.PGD`);
2. outer minimisation, the SRAT objective
   ``(1/N) sum_i w_{y_i} l(f(x'_i), y_i) + lambda * L_sep({g(x'_i), y_i})``, with
   ``w_j`` the class-balanced "effective number" weights of Cui et al. 2019
   (:func:`class_balanced_weights`), switched on at ``reweight_start_epoch``
   (:class:`DeferredReweighting`), and ``L_sep`` the supervised-contrastive loss on the
   L2-normalised adversarial penultimate features (:func:`separation_loss`);
3. evaluation: clean and PGD-20 (and CW) accuracy per class, mean per class and tail, by
   :class:`zoo.callbacks.robustness.RobustnessEvaluation` in the card's configs.

Guesses, every one of them (only the abstract is verified, no equation):

- the separation loss is SupCon (Khosla et al. 2020) on ``z = g(x')/||g(x')||`` with
  positives = other batch samples of the same class, denominator over all ``a != i``, averaged
  over **all** B anchors (an anchor with no positive in the batch contributes 0, as in the
  SupCon reference code), and without SupCon's ``temperature / base_temperature`` factor. The
  paper may use a centre or triplet variant instead;
- the features are the backbone's penultimate output after its last ReLU (the MLP's 64-vector,
  timm's pooled features);
- the reweighting is deferred (DRW-style: 1 before ``reweight_start_epoch``, class-balanced
  from then on). Whether SRAT defers at all is unverified; ``reweight_start_epoch=0`` gives
  reweighting from the start;
- class weights are normalised to sum to K (mean 1) and the weighted loss is divided by the
  batch size N, as the objective above writes it (``F.cross_entropy(weight=...)``, used by LDAM-DRW,
  divides by ``sum_i w_{y_i}`` instead);
- ``beta = 0.9999`` (effective number); ``reweight="inverse_frequency"`` is offered because
  the paper may use plain inverse frequency;
- the attack maximises the unweighted CE and runs with the model in its current (training)
  mode, as Madry's PGD-AT does (``attack_model_mode="eval"`` for the other convention);
- the focal (``gamma``) and LDAM (margins ``C / n_j^{1/4}`` with max 0.5, scale 30, on a cosine
  classifier as in LDAM-DRW) variants are offered as the paper's SRAT-Focal / SRAT-LDAM; which one the paper headlines is
  unverified; the card's claim uses CE;
- evaluation attacks are not module arguments (no ``eval_attack_steps``): the
  ``RobustnessEvaluation`` callback holds them.

Why the deferred schedule is a small ``nn.Module`` owned by the module and not a Lightning
``Callback``: a callback cannot reweight the loss of a plain
LightningModule that does not read its weights, so it would break the zoo's drop-in contract;
the schedule is part of the method and belongs in ``config.json``; and the weights are a pure
function of the epoch plus a persistent buffer, so a resumed run continues exactly with no
callback state. Other imbalanced entries reuse :class:`DeferredReweighting` the same way.

>>> import torch
>>> model = SRATModule(class_counts=[100, 50, 20, 10, 5, 5, 5, 5, 5, 5], attack_steps=2)
>>> x, y = torch.rand(8, 64), torch.randint(0, 10, (8,))
>>> sorted(model.objective(x, y, epoch=25))
['ce', 'loss', 'sep']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.nn.attacks import PGD, as_clip, check_clip_matches_data
from zoo.nn.backbones import build_backbone, feature_dim
from zoo.templates import ClassifierModule

__all__ = [
    "SRATModule",
    "DeferredReweighting",
    "SeparationLoss",
    "class_balanced_weights",
    "inverse_frequency_weights",
    "separation_loss",
    "focal_loss",
    "ldam_margins",
    "REWEIGHTS",
    "BASE_LOSSES",
]

REWEIGHTS = ("none", "effective_number", "inverse_frequency")
BASE_LOSSES = ("ce", "focal", "ldam")


# ----------------------------------------------------------------------------- class weights
def _counts(class_counts: Sequence[int] | Tensor) -> Tensor:
    counts = torch.as_tensor(class_counts, dtype=torch.float64).flatten()
    if counts.numel() < 1 or bool((counts < 1).any()):
        raise ValueError(f"class_counts must hold at least one count >= 1 per class, got {counts.tolist()}")
    return counts


def class_balanced_weights(class_counts: Sequence[int] | Tensor, beta: float = 0.9999) -> Tensor:
    """Class-balanced weights by the effective number of samples (Cui et al. 2019, Eq. of the CB loss).

    ``w_j = (1 - beta) / (1 - beta^{n_j})``, normalised so that ``sum_j w_j = K`` (mean 1).

    >>> class_balanced_weights([3, 1], beta=0.5).tolist()  # 0.5/0.875 : 0.5/0.5, scaled to sum 2
    [0.7272727272727273, 1.2727272727272727]
    """
    if not 0 <= beta < 1:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    counts = _counts(class_counts)
    weights = (1.0 - beta) / (1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), counts))
    return weights * counts.numel() / weights.sum()


def inverse_frequency_weights(class_counts: Sequence[int] | Tensor) -> Tensor:
    """``w_j ∝ 1 / n_j``, normalised so that ``sum_j w_j = K`` (the ``beta -> 1`` limit of the above)."""
    counts = _counts(class_counts)
    weights = 1.0 / counts
    return weights * counts.numel() / weights.sum()


class DeferredReweighting(nn.Module):
    """Class weights that are 1 before ``start_epoch`` and class-balanced from it on (DRW, Cao et al. 2019).

    The target weights are a persistent buffer (saved with the module); the weights in force
    are a pure function of the epoch, so a run resumed from a checkpoint uses exactly the
    weights the uninterrupted run would have used.

    Args:
        num_classes: K.
        start_epoch: first epoch (0-based) that uses the class-balanced weights; 0 = from the start.
        scheme: ``effective_number`` | ``inverse_frequency`` | ``none`` (always 1).
        beta: the effective-number hyper-parameter.
        class_counts: training examples per class; can be set later with :meth:`set_counts`.

    >>> rw = DeferredReweighting(2, start_epoch=3, beta=0.5, class_counts=[3, 1])
    >>> rw(2).tolist(), [round(w, 4) for w in rw(3).tolist()]
    ([1.0, 1.0], [0.7273, 1.2727])
    """

    def __init__(
        self,
        num_classes: int,
        start_epoch: int = 0,
        scheme: str = "effective_number",
        beta: float = 0.9999,
        class_counts: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if scheme not in REWEIGHTS:
            raise ValueError(f"reweighting scheme must be one of {REWEIGHTS}, got {scheme!r}")
        if start_epoch < 0:
            raise ValueError(f"start_epoch must be >= 0, got {start_epoch}")
        self.num_classes, self.start_epoch, self.scheme, self.beta = num_classes, start_epoch, scheme, beta
        self.register_buffer("target", torch.ones(num_classes))
        if class_counts is not None:
            self.set_counts(class_counts)

    def set_counts(self, class_counts: Sequence[int]) -> None:
        """Compute the class-balanced target weights from the training counts."""
        if len(class_counts) != self.num_classes:
            raise ValueError(f"class_counts has {len(class_counts)} entries, but there are {self.num_classes} classes")
        if self.scheme == "effective_number":
            weights = class_balanced_weights(class_counts, self.beta)
        elif self.scheme == "inverse_frequency":
            weights = inverse_frequency_weights(class_counts)
        else:
            weights = torch.ones(self.num_classes)
        self.target.copy_(weights.to(self.target.dtype))

    def active(self, epoch: int) -> bool:
        """Whether the class-balanced weights are in force at ``epoch``."""
        return self.scheme != "none" and epoch >= self.start_epoch

    def forward(self, epoch: int) -> Tensor:
        """The (K,) class weights in force at ``epoch``."""
        return self.target if self.active(epoch) else torch.ones_like(self.target)

    def extra_repr(self) -> str:
        return f"scheme={self.scheme!r}, start_epoch={self.start_epoch}, beta={self.beta}"


# ------------------------------------------------------------------------- separation loss
def separation_loss(features: Tensor, labels: Tensor, temperature: float = 0.5) -> Tensor:
    """SRAT's feature-separation loss L_sep as the supervised-contrastive loss (step 2 above).

    ``z_i = g_i / ||g_i||``; ``L = -(1/B) sum_i (1/|P(i)|) sum_{p in P(i)}
    log[exp(z_i.z_p / tau) / sum_{a != i} exp(z_i.z_a / tau)]``, with ``P(i)`` the other samples
    of class ``y_i`` in the batch; an anchor without positives contributes 0.

    Shapes: ``features`` (B, D), ``labels`` (B,); returns a scalar.

    >>> z = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
    >>> round(float(separation_loss(z, torch.tensor([0, 0, 1, 1]), 0.5)), 6)  # log(1 + 2 e^-2)
    0.239545
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    n = features.shape[0]
    if n < 2:
        return features.sum() * 0.0
    z = F.normalize(features, dim=1)
    self_mask = torch.eye(n, dtype=torch.bool, device=features.device)
    logits = (z @ z.T / temperature).masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)  # log of the ratio, per pair (i, a)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    n_pos = positives.sum(1)
    mean_log_prob_pos = log_prob.masked_fill(~positives, 0.0).sum(1) / n_pos.clamp_min(1)
    return -mean_log_prob_pos.sum() / n


class SeparationLoss(nn.Module):
    """:func:`separation_loss` as a module: ``SeparationLoss(temperature)(features, labels)``."""

    def __init__(self, temperature: float = 0.5) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        return separation_loss(features, labels, self.temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


# ------------------------------------------------------------------------------ base losses
def focal_loss(logits: Tensor, y: Tensor, gamma: float = 1.0) -> Tensor:
    """Softmax focal loss per example, ``-(1 - p_y)^gamma log p_y`` (Lin et al. 2017); shape (N,)."""
    log_p = F.log_softmax(logits, dim=1).gather(1, y[:, None]).squeeze(1)
    return -((1.0 - log_p.exp()) ** gamma) * log_p


def ldam_margins(class_counts: Sequence[int] | Tensor, max_margin: float = 0.5) -> Tensor:
    """LDAM margins ``m_j = C / n_j^{1/4}`` with ``C`` such that the largest is ``max_margin`` (Cao et al. 2019)."""
    margins = 1.0 / _counts(class_counts) ** 0.25
    return margins * (max_margin / margins.max())


class _CosineHead(nn.Module):
    """LDAM-DRW's ``NormedLinear``: cosine of the normalised features and class weights."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_features, out_features).uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5))

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=1) @ F.normalize(self.weight, dim=0)


# ------------------------------------------------------------------------------- the module
class SRATModule(ClassifierModule):
    """PGD adversarial training with deferred class reweighting and SRAT's separation loss.

    Args:
        num_classes: K.
        backbone: ``mlp`` (``input_dim`` -> ``hidden_dims``, the last width being the features)
            or a timm model name (``resnet18``), whose pooled penultimate output is the features.
        input_dim / hidden_dims: MLP sizes (default 64-128-64, the card's digits MLP).
        in_chans / cifar_stem: timm input channels; ``cifar_stem`` swaps a timm ResNet's
            7x7/2 stem and max-pool for a 3x3/1 convolution (the usual 32x32 ResNet-18).
        input_mean / input_std: per-channel normalisation applied inside ``forward``, so the
            attacks work on pixels in [0, 1] (None: inputs are used as they come).
        class_counts: training examples per class; None reads the DataModule's
            ``class_counts`` at ``setup`` (and records them in the hyper-parameters).
        base_loss: ``ce`` | ``focal`` | ``ldam`` (SRAT-CE / -Focal / -LDAM); ``focal_gamma``,
            ``ldam_max_margin``, ``ldam_scale`` their settings.
        reweight: ``none`` | ``effective_number`` | ``inverse_frequency``; ``beta`` of the
            effective number; ``reweight_start_epoch`` the first reweighted epoch (0 = from start).
        sep_weight / sep_temperature: lambda and tau of the separation loss (0 = off).
        epsilon / step_size / attack_steps: the L-inf PGD training attack (0 steps = natural
            training); ``attack_model_mode`` ``keep`` (train mode, Madry) or ``eval``; ``clip`` the
            valid input range (pixels in [0, 1]) or None for unbounded inputs; ``setup`` refuses a
            DataModule with ``normalize=True`` unless ``clip`` is None.
        optimizer: ``adam`` | ``sgd``; lr, momentum, weight_decay; ``lr_milestones`` /
            ``lr_gamma`` a step decay (epochs).
    """

    def __init__(
        self,
        num_classes: int = 10,
        backbone: str = "mlp",
        input_dim: int = 64,
        hidden_dims: list[int] | None = None,
        in_chans: int = 3,
        cifar_stem: bool = False,
        input_mean: list[float] | None = None,
        input_std: list[float] | None = None,
        class_counts: list[int] | None = None,
        base_loss: str = "ce",
        focal_gamma: float = 1.0,
        ldam_max_margin: float = 0.5,
        ldam_scale: float = 30.0,
        reweight: str = "effective_number",
        beta: float = 0.9999,
        reweight_start_epoch: int = 20,
        sep_weight: float = 0.1,
        sep_temperature: float = 0.5,
        epsilon: float = 0.1,
        step_size: float = 0.025,
        attack_steps: int = 7,
        attack_model_mode: Literal["keep", "eval"] = "keep",
        clip: tuple[float, float] | None = (0.0, 1.0),
        optimizer: str = "adam",
        lr: float = 1e-3,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        lr_milestones: list[int] | None = None,
        lr_gamma: float = 0.1,
    ) -> None:
        super().__init__(num_classes)
        if base_loss not in BASE_LOSSES:
            raise ValueError(f"base_loss must be one of {BASE_LOSSES}, got {base_loss!r}")
        if reweight not in REWEIGHTS:
            raise ValueError(f"reweight must be one of {REWEIGHTS}, got {reweight!r}")
        if optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
        if sep_weight < 0 or sep_temperature <= 0:
            raise ValueError(f"need sep_weight >= 0 and sep_temperature > 0, got {sep_weight}, {sep_temperature}")
        if attack_steps < 0 or epsilon < 0:
            raise ValueError(f"need attack_steps >= 0 and epsilon >= 0, got {attack_steps}, {epsilon}")
        if attack_model_mode not in ("keep", "eval"):
            raise ValueError(f"attack_model_mode must be 'keep' or 'eval', got {attack_model_mode!r}")
        if class_counts is not None and len(class_counts) != num_classes:
            raise ValueError(f"class_counts has {len(class_counts)} entries for num_classes={num_classes}")
        if (input_mean is None) != (input_std is None):
            raise ValueError("give both input_mean and input_std, or neither")
        self.save_hyperparameters()
        widths = hidden_dims if hidden_dims is not None else [128, 64]
        if backbone == "mlp" and not widths:
            raise ValueError("the MLP needs at least one hidden layer (its last width is the feature size): set hidden_dims")
        self.features = build_backbone(backbone, 0, input_dim=input_dim, hidden_dims=widths, in_chans=in_chans, cifar_stem=cifar_stem)
        dim = feature_dim(self.features)
        self.head: nn.Module = _CosineHead(dim, num_classes) if base_loss == "ldam" else nn.Linear(dim, num_classes)
        if input_mean is not None and input_std is not None:
            shape = (1, -1, 1, 1) if backbone != "mlp" else (1, -1)
            self.register_buffer("input_mean", torch.tensor(input_mean, dtype=torch.float32).view(shape), persistent=False)
            self.register_buffer("input_std", torch.tensor(input_std, dtype=torch.float32).view(shape), persistent=False)
        else:
            self.input_mean = self.input_std = None
        self.reweighting = DeferredReweighting(num_classes, reweight_start_epoch, reweight, beta, class_counts)
        self.register_buffer("margins", torch.zeros(num_classes))
        if class_counts is not None:
            self._set_margins(class_counts)
        self.attack = (
            PGD(epsilon, step_size, attack_steps, "linf", random_start=True, clip=as_clip(clip), model_mode=attack_model_mode) if attack_steps > 0 else None
        )

    # ----------------------------------------------------------------------------- building
    def _set_margins(self, class_counts: Sequence[int]) -> None:
        self.margins.copy_(ldam_margins(class_counts, self.hparams.ldam_max_margin).to(self.margins.dtype))

    def setup(self, stage: str) -> None:
        """Check the DataModule's inputs against ``clip``; take its class counts when none were given."""
        if self._trainer is not None and self.attack is not None:
            check_clip_matches_data(self.trainer.datamodule, self.hparams.clip, "SRATModule")
        if self.hparams.class_counts is not None:
            return
        counts = getattr(self.trainer.datamodule, "class_counts", None) if self._trainer is not None else None
        if counts is None:
            if self.hparams.reweight != "none" or self.hparams.base_loss == "ldam":
                raise ValueError(
                    "SRATModule needs the training class counts: pass class_counts=[...] "
                    "or use a DataModule with a class_counts property (DigitsDataModule, CIFAR10LTDataModule)"
                )
            return
        counts = [int(c) for c in counts]
        self.reweighting.set_counts(counts)
        self._set_margins(counts)
        self.hparams["class_counts"] = counts  # config.json then records the counts the weights came from

    # ----------------------------------------------------------------------------- forward
    def embed(self, x: Tensor) -> Tensor:
        """Penultimate features g(x), shape (N, D)."""
        if self.input_mean is not None:
            x = (x - self.input_mean) / self.input_std
        return self.features(x)

    def forward(self, x: Tensor) -> Tensor:
        """Logits f(x) = h(g(x)), shape (N, K)."""
        return self.head(self.embed(x))

    def class_weights(self, epoch: int) -> Tensor:
        """The class weights w_j in force at ``epoch`` (deferred schedule)."""
        return self.reweighting(epoch)

    def base_loss(self, logits: Tensor, y: Tensor) -> Tensor:
        """The per-example loss l(f(x'), y): CE, focal or LDAM; shape (N,)."""
        hp = self.hparams
        if hp.base_loss == "focal":
            return focal_loss(logits, y, hp.focal_gamma)
        if hp.base_loss == "ldam":
            logits = logits - F.one_hot(y, hp.num_classes).to(logits.dtype) * self.margins[y][:, None].to(logits.dtype)
            return F.cross_entropy(hp.ldam_scale * logits, y, reduction="none")
        return F.cross_entropy(logits, y, reduction="none")

    def adversarial(self, x: Tensor, y: Tensor) -> Tensor:
        """Step 1, inner maximisation: x' = PGD(x, y) (x itself when ``attack_steps=0``)."""
        return x if self.attack is None else self.attack(self, x, y)

    def objective(self, x: Tensor, y: Tensor, epoch: int) -> dict[str, Tensor]:
        """Steps 1-2 on one batch: the SRAT loss on adversarial examples and its parts."""
        x_adv = self.adversarial(x, y)
        feats = self.embed(x_adv)
        logits = self.head(feats)
        w = self.class_weights(epoch).to(logits.dtype)
        ce = (w[y] * self.base_loss(logits, y)).mean()  # (1/N) sum_i w_{y_i} l(f(x'_i), y_i)
        hp = self.hparams
        sep = separation_loss(feats, y, hp.sep_temperature) if hp.sep_weight > 0 else ce.new_zeros(())
        return {"loss": ce + hp.sep_weight * sep, "ce": ce.detach(), "sep": sep.detach()}

    # ----------------------------------------------------------------------------- steps
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        parts = self.objective(x, y, self.current_epoch)
        self.log("train/loss", parts["loss"], prog_bar=True)
        self.log_dict({"train/ce": parts["ce"], "train/sep": parts["sep"]})
        self.log("train/reweighted", float(self.reweighting.active(self.current_epoch)))
        return parts["loss"]

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        if hp.optimizer == "sgd":
            opt: torch.optim.Optimizer = torch.optim.SGD(self.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        else:
            opt = torch.optim.Adam(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        if not hp.lr_milestones:
            return opt
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(hp.lr_milestones), gamma=hp.lr_gamma)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

