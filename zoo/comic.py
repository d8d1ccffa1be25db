"""COMIC: Learning in Imperfect Environment: Multi-Label Classification with Long-Tailed
Distribution and Partial Labels (W. Zhang et al., ICCV 2023).

arXiv 2304.10539. Official code (no licence, read for reference only): wannature/COMIC,
``loss/PriorFocalModifierLoss.py``, ``loss/ReflectiveLabelCorrectorLoss.py``,
``loss/HeadTailBalancerLoss.py``, ``models/BalancedlNetwork.py``, ``config/coco/resnet50_plt.yaml``.

COMIC trains three branches on three views of a long-tailed, partially labelled multi-label set:
a head branch on uniformly sampled batches, a tail branch on reverse-sampled (tail-favouring)
batches and a balanced branch on class-balanced batches. Every branch minimises the multi-focal
modifier loss (Modification: class-prior weights, asymmetric focusing, co-occurrence attention)
plus the reflective label corrector (Correction: missing labels the model is confident about
become pseudo-positives). The head-tail balancer (Balance) trains the balanced branch on the
products of its predictions with the head's and the tail's, weighted by how well each learns;
inference uses the balanced branch.

Deviations and guesses:

- ``balance_mode="paper"`` (default) is the paper's balanced-branch loss: HTB + MFM + RLC.
  The released ``batch_loss`` comments HTB out and adds the mean of the three branches' MFM
  losses instead; ``balance_mode="released"`` runs that variant.
- HTB: the head and tail branches are evaluated on the balanced batch (the products need the
  same samples; the released HTB call mixes logits of different batches) and their learning-effect
  weights are computed without gradient, so the balancer trains the balanced branch only.
- Each branch's loss uses the labels of its own batch (the released ``batch_forward`` feeds the
  head network the reversed images but scores it against the uniform batch's labels).
- The co-occurrence matrix's diagonal is zeroed (a class does not co-occur with itself); the
  attention of a sample without observed positives is 0. Zero class counts are read as 1.
- RLC: scaled by ``N / #positives`` with the actual batch size ``N``; active from
  ``current_epoch >= start_epoch`` counted from 0 (the released loop counts epochs from 1, so its
  ``compute_epoch=1`` corrects from the first epoch). It is weighted 0.2 as in the released loop.
- The reversed sampler draws a class with probability proportional to ``1 / n_c`` and then one
  of its samples; the class-balanced sampler draws classes uniformly (BBN-style; the released
  code does not include its samplers). They live in :mod:`zoo.datamodules.multilabel`.
- One Adam over all branches with a summed loss (equal to the released three optimisers, which
  step after all three backward passes). The causal-norm classifier is offered without the
  moving-average confounder removal (only the head/tail branches' RLC logits use it upstream).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MultilabelAveragePrecision

from zoo.hub import ZooModule
from zoo.nn.backbones import build_backbone

__all__ = [
    "class_prior_weight",
    "cooccurrence_attention",
    "mfm_loss",
    "asl_loss",
    "rlc_correct",
    "rlc_loss",
    "htb_weights",
    "shot_groups",
    "MultiFocalModifierLoss",
    "ReflectiveLabelCorrector",
    "HeadTailBalancerLoss",
    "CosineNormClassifier",
    "COMICModule",
    "BRANCH_LOSSES",
    "BALANCE_MODES",
]

BRANCH_LOSSES = ("mfm_rlc", "mfm", "asl", "bce")
BALANCE_MODES = ("paper", "released")
_EPS = 1e-8


# ------------------------------------------------------------------------------------ maths
def class_prior_weight(counts: Tensor, exponent: float = 1 / 3) -> Tensor:
    """w_c = (1 - log(pi_c / max pi))^exponent, pi_c = n_c / sum n (MFM's class prior weight; RLC uses 1/6)."""
    counts = torch.as_tensor(counts, dtype=torch.float64)
    if counts.ndim != 1 or (counts < 0).any():
        raise ValueError("class counts must be a 1-D tensor of non-negative numbers")
    prior = counts.clamp_min(1) / counts.clamp_min(1).sum()
    return (1 - torch.log(prior / prior.max())).pow(exponent).float()


def cooccurrence_attention(cooccurrence: Tensor, targets: Tensor) -> Tensor:
    """Per-sample attention a_k: mean over the sample's positives c of column-normalised rows A[c], summing to 1.

    ``cooccurrence`` is the (C, C) count matrix of the training labels (diagonal ignored);
    rows of samples without positives are 0.
    """
    a = cooccurrence.float().clone()
    a.fill_diagonal_(0)
    a = a / a.sum(0, keepdim=True).clamp_min(_EPS)  # normalise by column sums
    y = (targets > 0).float()
    att = (y @ a) / y.sum(1, keepdim=True).clamp_min(1)  # mean of the rows of the positives
    return att / att.sum(1, keepdim=True).clamp_min(_EPS)


def _focal_log_likelihood(
    xs_pos: Tensor, xs_neg: Tensor, targets: Tensor, weight: Tensor, gamma_pos: float, gamma_neg: Tensor | float
) -> Tensor:
    """-sum w_c [y log xs_pos (1-xs_pos)^g+ + (1-y) log xs_neg (1-xs_neg)^g-], focusing factors without gradient."""
    y = targets.to(xs_pos.dtype)
    loss = (y * torch.log(xs_pos.clamp_min(_EPS)) + (1 - y) * torch.log(xs_neg.clamp_min(_EPS))) * weight
    with torch.no_grad():  # ASL convention: the focusing factors are constants
        pt = xs_pos * y + xs_neg * (1 - y)
        focus = torch.pow(1 - pt, gamma_pos * y + gamma_neg * (1 - y))
    return -(loss * focus).sum()


def mfm_loss(
    logits: Tensor,
    targets: Tensor,
    weight: Tensor,
    attention: Tensor,
    gamma_pos: float = 0.0,
    gamma_neg: float = 3.0,
    gamma_class_ng: float = 1.2,
    clip: float = 0.05,
) -> Tensor:
    """Multi-focal modifier loss (Modification), summed over samples and classes.

    p+ = sigmoid(x) (1 - a), p- = min(1, 1 - sigmoid(x) + clip), times ``gamma_class_ng`` where
    a != 0; weight w_c and negative focusing gamma_neg + w_c (``PriorFocalModifierLoss.forward``).
    """
    p = torch.sigmoid(logits)
    xs_pos = p * (1 - attention)
    xs_neg = (1 - p + clip).clamp(max=1) if clip > 0 else 1 - p
    xs_neg = torch.where(attention == 0, xs_neg, xs_neg * gamma_class_ng).clamp(max=1)
    return _focal_log_likelihood(xs_pos, xs_neg, targets, weight, gamma_pos, gamma_neg + weight)


def asl_loss(logits: Tensor, targets: Tensor, gamma_pos: float = 0.0, gamma_neg: float = 4.0, clip: float = 0.05) -> Tensor:
    """Asymmetric loss (Ridnik et al. 2021, Eq. 7), summed: the paper's strongest single-loss baseline."""
    p = torch.sigmoid(logits)
    xs_neg = (1 - p + clip).clamp(max=1) if clip > 0 else 1 - p
    return _focal_log_likelihood(p, xs_neg, targets, torch.ones_like(p[0]), gamma_pos, gamma_neg)


def rlc_correct(logits: Tensor, targets: Tensor, margin: float = 1.0, tau: float = 0.7) -> tuple[Tensor, Tensor]:
    """Correction: probabilities of the margin-shifted logits and the corrected targets.

    x <- x - m y; p = sigmoid(x); a missing label becomes positive where p > tau and p > the
    batch mean of p for its class (the class-aware threshold).
    """
    y = (targets > 0).to(logits.dtype)
    p = torch.sigmoid(logits - margin * y)
    recalled = (p > tau) & (p > p.mean(0, keepdim=True))
    return p, torch.where(recalled.detach(), torch.ones_like(y), y)


def rlc_loss(p: Tensor, corrected: Tensor, weight: Tensor, gamma_pos: float = 0.0, gamma_neg: float = 3.0, clip: float = 0.05) -> Tensor:
    """The RLC loss: asymmetric focal BCE on the corrected targets, gamma- = gamma_neg + w_c, scaled by N / #positives."""
    xs_neg = (1 - p + clip).clamp(max=1) if clip > 0 else 1 - p
    loss = _focal_log_likelihood(p, xs_neg, corrected, weight, gamma_pos, gamma_neg + weight)
    return loss * p.shape[0] / corrected.sum().clamp_min(1)


def htb_weights(q_head: Tensor, q_tail: Tensor, gamma: float = 2.0) -> tuple[Tensor, Tensor]:
    """Balance: omega_h = q_h^g / (q_h^g + q_t^g), omega_t = q_t^g / (q_h^g + q_t^g)."""
    qh, qt = q_head.pow(gamma), q_tail.pow(gamma)
    total = (qh + qt).clamp_min(_EPS)
    return qh / total, qt / total


def shot_groups(counts: Tensor, many: int | None = None, few: int | None = None) -> dict[str, Tensor]:
    """Boolean masks of the Many / Medium / Few classes by training count.

    With ``many`` and ``few``: many > ``many`` examples, few < ``few``, medium between. With
    None: thirds of the classes ranked by count (the first third is Many; ties keep class order).
    """
    counts = torch.as_tensor(counts)
    if many is not None and few is not None:
        is_many, is_few = counts > many, counts < few
        return {"many": is_many, "medium": ~is_many & ~is_few, "few": is_few}
    if (many is None) != (few is None):
        raise ValueError("give both many_threshold and few_threshold, or neither (thirds by rank)")
    order = np.argsort(-counts.cpu().numpy(), kind="stable")
    masks = {}
    for name, part in zip(("many", "medium", "few"), np.array_split(order, 3)):
        mask = torch.zeros(len(counts), dtype=torch.bool)
        mask[torch.as_tensor(part, dtype=torch.long)] = True
        masks[name] = mask
    return masks


# ------------------------------------------------------------------------------ nn modules
class MultiFocalModifierLoss(nn.Module):
    """MFM as a module; class counts and co-occurrence counts are buffers set by :meth:`set_statistics`.

    >>> loss = MultiFocalModifierLoss(3)
    >>> loss.set_statistics(torch.tensor([100, 10, 1]), torch.tensor([[100, 5, 1], [5, 10, 0], [1, 0, 1]]))
    >>> round(float(loss(torch.zeros(1, 3), torch.tensor([[1, 0, 0]]))), 4) > 0
    True
    """

    def __init__(
        self,
        num_classes: int,
        gamma_pos: float = 0.0,
        gamma_neg: float = 3.0,
        gamma_class_ng: float = 1.2,
        clip: float = 0.05,
        weight_exponent: float = 1 / 3,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if not 0 <= clip < 1:
            raise ValueError(f"clip must be in [0, 1), got {clip}")
        self.gamma_pos, self.gamma_neg, self.gamma_class_ng, self.clip = gamma_pos, gamma_neg, gamma_class_ng, clip
        self.weight_exponent = weight_exponent
        self.register_buffer("weight", torch.ones(num_classes))
        self.register_buffer("cooccurrence", torch.zeros(num_classes, num_classes))

    def set_statistics(self, counts: Tensor, cooccurrence: Tensor) -> None:
        """Training-set class counts (C,) and label co-occurrence counts (C, C)."""
        c = self.weight.numel()
        cooccurrence = torch.as_tensor(cooccurrence, dtype=torch.float32)
        if cooccurrence.shape != (c, c):
            raise ValueError(f"cooccurrence must be ({c}, {c}), got {tuple(cooccurrence.shape)}")
        self.weight.copy_(class_prior_weight(counts, self.weight_exponent))
        self.cooccurrence.copy_(cooccurrence)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        att = cooccurrence_attention(self.cooccurrence, targets)
        return mfm_loss(logits, targets, self.weight, att, self.gamma_pos, self.gamma_neg, self.gamma_class_ng, self.clip)


class ReflectiveLabelCorrector(nn.Module):
    """RLC with its per-epoch state: class counts plus the pseudo-positives recalled so far this epoch.

    The counts restart from the prior at each new epoch (``ReflectiveLabelCorrectorLoss``).
    ``recalled`` / ``hidden_hits`` accumulate how many pseudo-positives it made and, when the full
    labels are given, how many of them were hidden positives (its recall and precision).
    """

    def __init__(
        self, num_classes: int, tau: float = 0.7, margin: float = 1.0, start_epoch: int = 1, gamma_neg: float = 3.0, clip: float = 0.05
    ) -> None:
        super().__init__()
        if not 0 < tau < 1:
            raise ValueError(f"tau must be in (0, 1), got {tau}")
        self.tau, self.margin, self.start_epoch, self.gamma_neg, self.clip = tau, margin, start_epoch, gamma_neg, clip
        self.register_buffer("prior_counts", torch.ones(num_classes))
        self.register_buffer("counts", torch.ones(num_classes))
        self.epoch = -1

    def set_statistics(self, counts: Tensor) -> None:
        self.prior_counts.copy_(torch.as_tensor(counts, dtype=torch.float32))
        self.counts.copy_(self.prior_counts)

    def forward(self, logits: Tensor, targets: Tensor, epoch: int) -> Tensor:
        if epoch < self.start_epoch:
            return logits.new_zeros(())
        if epoch != self.epoch:  # a new epoch: the recalled labels are forgotten
            self.epoch = epoch
            self.counts.copy_(self.prior_counts)
        p, corrected = rlc_correct(logits, targets, self.margin, self.tau)
        self.counts += (corrected - (targets > 0).to(corrected.dtype)).sum(0).detach()
        weight = class_prior_weight(self.counts, 1 / 6).to(p.device)
        return rlc_loss(p, corrected, weight, 0.0, self.gamma_neg, self.clip)


class HeadTailBalancerLoss(nn.Module):
    """HTB: omega_h MFM(softmax(head) * softmax(balanced)) + omega_t MFM(softmax(tail) * softmax(balanced)).

    ``mfm`` (the branches' :class:`MultiFocalModifierLoss`, passed at call time so that this
    module owns no copy of its buffers) scores the learning effects q_h = MFM(head) and
    q_t = MFM(tail) on the same labels; head and tail carry no gradient
    (``HeadTailBalancerLoss.forward``).
    """

    def __init__(self, gamma: float = 2.0) -> None:
        super().__init__()
        self.gamma = gamma

    def forward(self, head: Tensor, tail: Tensor, balanced: Tensor, targets: Tensor, mfm: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
        with torch.no_grad():
            w_head, w_tail = htb_weights(mfm(head, targets), mfm(tail, targets), self.gamma)
            p_head, p_tail = F.softmax(head, -1), F.softmax(tail, -1)
        p_bal = F.softmax(balanced, -1)
        return w_head * mfm(p_head * p_bal, targets) + w_tail * mfm(p_tail * p_bal, targets)


class CosineNormClassifier(nn.Module):
    """The causal-norm cosine classifier of the official code: tau * <x/|x|, w/(|w| + gamma)>."""

    def __init__(self, in_features: int, num_classes: int, tau: float = 16.0, gamma: float = 0.03125) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_features).uniform_(-(in_features**-0.5), in_features**-0.5))
        self.tau, self.gamma = tau, gamma

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight / (self.weight.norm(dim=1, keepdim=True) + self.gamma)
        return self.tau * F.normalize(x, dim=1) @ w.t()


# ------------------------------------------------------------------------------ ZooModule
class COMICModule(ZooModule):
    """Three branches (head, tail, balanced) trained with MFM + RLC and HTB; ``branches=1`` is one network.

    Metrics: ``{stage}/mAP`` (macro average precision, the balanced metric of multi-label
    classification), ``{stage}/many_mAP``, ``medium_mAP``, ``few_mAP`` (groups from the training
    counts, :func:`shot_groups`), ``worst_class_ap`` and ``ap_class{k}``. Training batches are
    ``(x, y)`` or the three views ``(x_u, y_u, x_r, y_r, x_b, y_b)`` of
    :class:`zoo.datamodules.multilabel.MultiLabelDataModule`; the DataModule's
    ``train_class_counts()`` and ``cooccurrence()`` set the loss statistics at fit.

    Args:
        num_classes: C, labels per sample.
        backbone / input_dim / hidden_dims / in_chans / pretrained: the feature extractor of each
            branch (:func:`zoo.nn.backbones.build_backbone`).
        head: ``linear`` or ``cosine`` (:class:`CosineNormClassifier`, ``tau``, ``norm_gamma``).
        branches: 3 (COMIC) or 1 (a single network on the uniform batches: the loss baselines).
        branch_loss: each branch's loss, ``mfm_rlc`` (COMIC) or the baselines ``mfm | asl | bce``.
        balance_mode: ``paper`` (HTB) or ``released`` (mean of the branches' MFM), see the module docstring.
        gamma_pos / gamma_neg / gamma_class_ng / clip: MFM; asl_gamma_neg: the ASL baseline's gamma-.
        rlc_tau / rlc_margin / rlc_start_epoch / rlc_weight: RLC; htb_gamma: HTB.
        lr / classifier_lr / weight_decay: Adam (classifier_lr defaults to lr).
        many_threshold / few_threshold: shot groups by count; None: thirds by rank.
    """

    def __init__(
        self,
        num_classes: int = 12,
        backbone: str = "mlp",
        input_dim: int = 40,
        hidden_dims: list[int] | None = None,
        in_chans: int = 3,
        pretrained: bool = False,
        head: str = "linear",
        tau: float = 16.0,
        norm_gamma: float = 0.03125,
        branches: int = 3,
        branch_loss: str = "mfm_rlc",
        balance_mode: str = "paper",
        gamma_pos: float = 0.0,
        gamma_neg: float = 3.0,
        gamma_class_ng: float = 1.2,
        clip: float = 0.05,
        asl_gamma_neg: float = 4.0,
        rlc_tau: float = 0.7,
        rlc_margin: float = 1.0,
        rlc_start_epoch: int = 1,
        rlc_weight: float = 0.2,
        htb_gamma: float = 2.0,
        lr: float = 1e-3,
        classifier_lr: float | None = None,
        weight_decay: float = 1e-4,
        many_threshold: int | None = None,
        few_threshold: int | None = None,
    ) -> None:
        super().__init__()
        if branches not in (1, 3):
            raise ValueError(f"branches must be 1 or 3 (head, tail, balanced), got {branches}")
        if branch_loss not in BRANCH_LOSSES:
            raise ValueError(f"unknown branch_loss {branch_loss!r}; choose one of {BRANCH_LOSSES}")
        if balance_mode not in BALANCE_MODES:
            raise ValueError(f"unknown balance_mode {balance_mode!r}; choose one of {BALANCE_MODES}")
        if head not in ("linear", "cosine"):
            raise ValueError(f"head must be 'linear' or 'cosine', got {head!r}")
        self.save_hyperparameters()
        self.num_classes = num_classes
        hidden = [128] if hidden_dims is None else hidden_dims
        self.features = nn.ModuleList(
            build_backbone(backbone, 0, input_dim=input_dim, hidden_dims=hidden, in_chans=in_chans, pretrained=pretrained)
            for _ in range(branches)
        )
        self.classifiers = nn.ModuleList(self._classifier(int(f.num_features)) for f in self.features)
        self.mfm = MultiFocalModifierLoss(num_classes, gamma_pos, gamma_neg, gamma_class_ng, clip)
        self.rlc = nn.ModuleList(ReflectiveLabelCorrector(num_classes, rlc_tau, rlc_margin, rlc_start_epoch, gamma_neg, clip) for _ in range(branches))
        self.htb = HeadTailBalancerLoss(htb_gamma)
        self.register_buffer("class_counts", torch.ones(num_classes))
        self.ap = nn.ModuleDict({s: MultilabelAveragePrecision(num_classes, average=None) for s in ("val", "test")})

    def _classifier(self, width: int) -> nn.Module:
        hp = self.hparams
        if hp["head"] == "cosine":
            return CosineNormClassifier(width, self.num_classes, hp["tau"], hp["norm_gamma"])
        return nn.Linear(width, self.num_classes)

    def branch_logits(self, x: Tensor, branch: int) -> Tensor:
        """Logits of branch ``branch`` (0 head, 1 tail, 2 balanced; 0 when there is one)."""
        return self.classifiers[branch](self.features[branch](x))

    def forward(self, x: Tensor) -> Tensor:
        """Logits (N, C) of the balanced branch, the one the paper predicts with."""
        return self.branch_logits(x, len(self.features) - 1)

    # ---------------------------------------------------------------------------- statistics
    def set_statistics(self, counts: Tensor | list[int], cooccurrence: Tensor | np.ndarray) -> None:
        """Training class counts and label co-occurrence counts: MFM's prior and attention, RLC's prior, the shot groups."""
        counts = torch.as_tensor(np.asarray(counts), dtype=torch.float32)
        if counts.shape != (self.num_classes,):
            raise ValueError(f"class counts must have {self.num_classes} entries, got {tuple(counts.shape)}")
        self.class_counts.copy_(counts)
        self.mfm.set_statistics(counts, torch.as_tensor(np.asarray(cooccurrence)))
        for rlc in self.rlc:
            rlc.set_statistics(counts)  # type: ignore[operator]

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if stage == "fit":
            if dm is None or not (hasattr(dm, "train_class_counts") and hasattr(dm, "cooccurrence")):
                raise ValueError(
                    "COMICModule needs the training label statistics: use a DataModule with train_class_counts() "
                    "and cooccurrence() (zoo.datamodules.multilabel), or call set_statistics(counts, cooccurrence) first"
                )
            self.set_statistics(dm.train_class_counts(), dm.cooccurrence())

    # -------------------------------------------------------------------------------- losses
    def branch_loss(self, logits: Tensor, y: Tensor, branch: int) -> Tensor:
        """The loss every branch minimises on its own batch: MFM + 0.2 RLC, or a baseline."""
        kind = self.hparams["branch_loss"]
        if kind == "bce":
            return F.binary_cross_entropy_with_logits(logits, y.float(), reduction="sum")
        if kind == "asl":
            return asl_loss(logits, y, self.hparams["gamma_pos"], self.hparams["asl_gamma_neg"], self.hparams["clip"])
        loss = self.mfm(logits, y)
        if kind == "mfm_rlc":
            loss = loss + self.hparams["rlc_weight"] * self.rlc[branch](logits, y, self.current_epoch)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        if len(self.features) == 1:
            x, y = batch[0], batch[1]
            loss = self.branch_loss(self.branch_logits(x, 0), y, 0)
            self.log("train/loss", loss, prog_bar=True)
            return loss
        if len(batch) != 6:
            raise ValueError("three-branch COMIC needs (x_u, y_u, x_r, y_r, x_b, y_b) batches: a MultiLabelDataModule with views=3")
        x_u, y_u, x_r, y_r, x_b, y_b = batch
        head, tail, bal = self.branch_logits(x_u, 0), self.branch_logits(x_r, 1), self.branch_logits(x_b, 2)
        l_head, l_tail, l_bal = self.branch_loss(head, y_u, 0), self.branch_loss(tail, y_r, 1), self.branch_loss(bal, y_b, 2)
        if self.hparams["balance_mode"] == "paper":
            with torch.no_grad():  # head and tail judged on the balanced batch
                head_b, tail_b = self.branch_logits(x_b, 0), self.branch_logits(x_b, 1)
            balance = self.htb(head_b, tail_b, bal, y_b, self.mfm)
        else:  # released batch_loss: mean of the three branches' MFM losses
            balance = torch.stack([self.mfm(head, y_u), self.mfm(tail, y_r), self.mfm(bal, y_b)]).mean()
        loss = l_head + l_tail + l_bal + balance
        self.log_dict({"train/loss": loss, "train/balance": balance}, prog_bar=False)
        return loss

    # ------------------------------------------------------------------------------- metrics
    def _eval_step(self, batch: Any, stage: str) -> None:
        x, y = batch[0], batch[1]
        self.ap[stage].update(torch.sigmoid(self(x)), y.long())

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def compute_metrics(self, stage: str) -> dict[str, Tensor]:
        """mAP overall, per shot group, worst class and per class; classes without positives are left out."""
        ap = self.ap[stage].compute().double()
        self.ap[stage].reset()
        groups = shot_groups(self.class_counts.cpu(), self.hparams["many_threshold"], self.hparams["few_threshold"])
        nan = ap.new_tensor(float("nan"))
        ok = ~torch.isnan(ap)
        out = {f"{stage}/mAP": ap[ok].mean() if ok.any() else nan, f"{stage}/worst_class_ap": ap[ok].min() if ok.any() else nan}
        for name, mask in groups.items():
            sel = mask.to(ap.device) & ok
            out[f"{stage}/{name}_mAP"] = ap[sel].mean() if sel.any() else nan
        out.update({f"{stage}/ap_class{k}": ap[k] for k in range(min(len(ap), 100))})
        return out

    def _log_epoch(self, stage: str) -> None:
        if self.ap[stage].update_called:
            for key, value in self.compute_metrics(stage).items():
                self.log(key, value.float(), prog_bar=key == "val/mAP")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Label probabilities sigmoid(forward(x)), shape (N, C)."""
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return torch.sigmoid(self(x))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        lr_cls = hp["lr"] if hp["classifier_lr"] is None else hp["classifier_lr"]
        return torch.optim.Adam(
            [{"params": self.features.parameters(), "lr": hp["lr"]}, {"params": self.classifiers.parameters(), "lr": lr_cls}],
            weight_decay=hp["weight_decay"],
        )
