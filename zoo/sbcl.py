"""SBCL: Subclass-balancing Contrastive Learning for Long-tailed Recognition (Hou et al., ICCV 2023).

arXiv 2306.15925. Official code (no licence, reference only): JackHck/SBCL, ``SimCLR/loss.py``
(``SupConLoss_rank``), ``SimCLR/main.py`` (``cluster()``, the schedule), ``SimCLR/linear_classify.py``.

SBCL splits every head class into subclasses about the size of a tail class (k-means on the
current projections, redone every few epochs by :class:`zoo.callbacks.SubclassClustering`) and
trains a two-view contrastive encoder with two terms: a subclass term (be closest to your own
subclass, temperature tau) and a class term (outside your subclass, be closer to your class's
other subclasses than to other classes, at a class-specific temperature tau_c). Head classes thus
keep their inner structure instead of collapsing onto a point, and each subclass weighs about
as much as a tail class. Stage 2 freezes the encoder and trains a balanced linear classifier.

Deviations and guesses, named:

- Stage 2 is a class-balanced linear probe (cross-entropy with weights ``n / (C n_c)``, as
  scikit-learn's ``class_weight="balanced"``, L2, full-batch L-BFGS) refitted from zero on the
  frozen encoder features whenever the encoder changed, not the paper's 200-epoch LDAM-DRW.
- Subclasses are clustered on un-augmented training images (the official code embeds the first
  augmented view); k-means is scikit-learn's Euclidean k-means on L2-normalised projections (the
  official code runs a cosine k-means on the GPU); 35 iterations, tol 1e-3, as there.
- Class temperatures follow the official code: clipped to the 20th-80th percentile, and the
  mean is over all classes, including those kept whole (which then get tau).
- Clustering happens at epochs ``warmup + j * every`` (the official ``epoch % step == 0`` after
  warm-up; the same epochs with the defaults 10 and 10); before it, plain SupCon on class labels.
- The SupCon baseline (and the warm-up) uses the official ``SupConLoss`` defaults: tau = base
  tau = 0.1, so its loss is not rescaled.
- ``optimizer="sgd"`` is the official SGD with a cosine schedule to lr * 1e-3, without its
  10-epoch linear learning-rate warm-up.

>>> import torch
>>> z = torch.nn.functional.normalize(torch.randn(4, 2, 8), dim=-1)
>>> y = torch.tensor([0, 0, 1, 1])
>>> sub = torch.tensor([0, 1, 2, 2])
>>> float(sbcl_loss(z, y, sub, torch.full((2,), 0.1))) > 0
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from torch import Tensor, nn

from zoo.nn.backbones import build_backbone
from zoo.templates import ClassifierModule

__all__ = [
    "SBCLLoss",
    "SBCLModule",
    "LOSSES",
    "class_temperature_scales",
    "cluster_subclasses",
    "fit_balanced_probe",
    "head_class_spread",
    "sbcl_loss",
    "subclass_counts",
    "supcon_loss",
]

LOSSES = ("sbcl", "supcon")


# ------------------------------------------------------------------------------------- the maths
def subclass_counts(class_counts: Sequence[int], cluster_min_size: int = 10) -> list[int]:
    """M_c = max(1, floor(n_c / max(n_min, k))): head classes split into tail-sized subclasses (Sec. 3.2)."""
    if cluster_min_size < 1:
        raise ValueError(f"cluster_min_size (k) must be >= 1, got {cluster_min_size}")
    counts = [int(n) for n in class_counts]
    if not counts or min(counts) < 1:
        raise ValueError(f"every class needs at least one training example, got counts {counts}")
    size = max(min(counts), cluster_min_size)
    return [max(1, n // size) for n in counts]


def _flat_views(features: Tensor) -> Tensor:
    if features.dim() != 3 or features.shape[1] != 2:
        raise ValueError(f"features must be (B, 2, D): two views per example, got shape {tuple(features.shape)}")
    return torch.cat(features.unbind(1), 0)  # (2B, D): views 1 then views 2, as the official code


def _log_softmax_masked(logits: Tensor, keep: Tensor) -> Tensor:
    """log(exp(l_ia) / sum_{a in keep(i)} exp(l_ia)), stabilised by the row maximum."""
    logits = logits - logits.max(1, keepdim=True).values.detach()
    return logits - torch.log((logits.exp() * keep).sum(1, keepdim=True))


def supcon_loss(features: Tensor, labels: Tensor, temperature: float = 0.1, base_temperature: float = 0.1) -> Tensor:
    """Supervised contrastive loss of ``(B, 2, D)`` normalised views (Khosla et al. 2020, L^sup_out).

    -(tau / tau_base) * mean over anchors of the mean log-probability of its positives (same
    label, itself excluded) among all other views.
    """
    z = _flat_views(features)
    n = z.shape[0]
    y = labels.repeat(2)
    not_self = ~torch.eye(n, dtype=torch.bool, device=z.device)
    pos = (y[:, None] == y[None, :]) & not_self
    log_prob = _log_softmax_masked(z @ z.T / temperature, not_self)
    return -(temperature / base_temperature) * ((pos * log_prob).sum(1) / pos.sum(1)).mean()


def sbcl_loss(
    features: Tensor,
    labels: Tensor,
    subclasses: Tensor,
    class_temperatures: Tensor,
    temperature: float = 0.1,
    base_temperature: float = 0.07,
    gamma: float = 0.25,
) -> Tensor:
    """The SBCL loss (Eq. 5-7; official ``SupConLoss_rank``) of ``(B, 2, D)`` normalised views.

    Subclass term at tau: positives share the anchor's subclass, the denominator is every other
    view. Class term at tau_{y_i} (the anchor's class temperature): positives are same-class views of
    another subclass plus the anchor's own other view; the denominator is every view outside the
    anchor's subclass plus that other view. Loss = mean_i (tau / tau_base) L_sub + gamma L_cls.
    """
    z = _flat_views(features)
    n, b = z.shape[0], z.shape[0] // 2
    y, s = labels.repeat(2), subclasses.repeat(2)
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    not_self = ~eye
    same_sub = (s[:, None] == s[None, :]) & not_self
    partner = eye.roll(b, dims=1)  # view i's other view: (i + B) mod 2B
    sim = z @ z.T
    # subclass term (Eq. 5)
    log_prob = _log_softmax_masked(sim / temperature, not_self)
    l_sub = (same_sub * log_prob).sum(1) / same_sub.sum(1)
    # class term (Eq. 6): outside the anchor's subclass, plus its other view
    outside = ~same_sub & not_self
    denominator = outside | partner
    positives = (outside & (y[:, None] == y[None, :])) | partner
    tau_anchor = class_temperatures.to(z.dtype)[y].unsqueeze(1)
    log_prob_cls = _log_softmax_masked(sim / tau_anchor, denominator)
    l_cls = (positives * log_prob_cls).sum(1) / positives.sum(1)
    return (-(temperature / base_temperature) * l_sub - gamma * l_cls).mean()


def cluster_subclasses(z: Tensor, labels: Tensor, counts: Sequence[int], iters: int = 35, tol: float = 1e-3, seed: int = 0) -> Tensor:
    """Global subclass ids: class c's samples k-means-clustered into ``counts[c]`` groups, offset by sum(counts[:c]).

    Cosine k-means as Euclidean k-means on L2-normalised rows (Sec. 3.2, step "clustering").
    """
    z = F.normalize(z.detach().float(), dim=1).cpu().numpy()
    y = labels.cpu().numpy()
    out = np.zeros(len(y), dtype=np.int64)
    offset = 0
    for c, m in enumerate(counts):
        members = np.flatnonzero(y == c)
        if m > 1 and len(members) >= m:
            km = KMeans(n_clusters=m, n_init=1, max_iter=iters, tol=tol, random_state=seed + c)
            out[members] = offset + km.fit_predict(z[members])
        else:
            out[members] = offset
        offset += m
    return torch.from_numpy(out)


def class_temperature_scales(z: Tensor, labels: Tensor, counts: Sequence[int], low: float = 20.0, high: float = 80.0) -> Tensor:
    """tau_c / tau per class (official ``cluster()``): d_c = mean ||z - mu_c|| / log(n_c + 10), clipped, over mean(d).

    Classes kept whole (M_c = 1) get 1, i.e. tau itself.
    """
    z = F.normalize(z.detach().double(), dim=1)
    d = torch.zeros(len(counts), dtype=torch.float64)
    for c in range(len(counts)):
        zc = z[labels == c]
        if len(zc):
            d[c] = (zc - zc.mean(0)).norm(dim=1).mean() / math.log(len(zc) + 10)
    lo, hi = np.percentile(d.numpy(), low), np.percentile(d.numpy(), high)
    d = d.clamp(float(lo), float(hi))
    scales = d / d.mean() if d.mean() > 0 else torch.ones_like(d)
    scales[torch.tensor(counts) <= 1] = 1.0
    return scales.float()


def head_class_spread(z: Tensor, labels: Tensor, classes: Sequence[int]) -> Tensor:
    """1 - mean cosine of each normalised ``z`` to its class mean direction, averaged over ``classes``.

    0 when every class collapses onto a point (SupCon's limit); SBCL's subclasses keep it above.
    """
    z = F.normalize(z.detach().float(), dim=1)
    values = [1 - (z[labels == c] @ F.normalize(z[labels == c].mean(0), dim=0)).mean() for c in classes if (labels == c).any()]
    return torch.stack(values).mean() if values else z.new_tensor(float("nan"))


def fit_balanced_probe(features: Tensor, labels: Tensor, num_classes: int, weight_decay: float = 1e-3, steps: int = 100) -> tuple[Tensor, Tensor]:
    """Stage 2: (W, b) of a linear classifier with class-balanced cross-entropy and L2, fitted from zero by L-BFGS.

    Class weights ``n / (C n_c)`` as scikit-learn's ``class_weight="balanced"``.
    """
    x = features.detach().float()
    counts = torch.bincount(labels, minlength=num_classes).float()
    weights = torch.where(counts > 0, len(labels) / (num_classes * counts.clamp_min(1)), torch.zeros_like(counts))
    w = torch.zeros(num_classes, x.shape[1], requires_grad=True)
    bias = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, bias], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ w.T + bias, labels, weight=weights) + weight_decay * w.square().sum() / 2
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), bias.detach()


class SBCLLoss(nn.Module):
    """:func:`sbcl_loss` with tau, tau_base and gamma fixed (defaults of the official CIFAR run)."""

    def __init__(self, temperature: float = 0.1, base_temperature: float = 0.07, gamma: float = 0.25) -> None:
        super().__init__()
        if temperature <= 0 or base_temperature <= 0:
            raise ValueError(f"temperatures must be positive, got {temperature}, {base_temperature}")
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.temperature, self.base_temperature, self.gamma = temperature, base_temperature, gamma

    def forward(self, features: Tensor, labels: Tensor, subclasses: Tensor, temperature_scales: Tensor) -> Tensor:
        """``features (B, 2, D)`` normalised, ``labels``/``subclasses (B,)``, ``temperature_scales (C,)`` = tau_c / tau."""
        taus = self.temperature * temperature_scales
        return sbcl_loss(features, labels, subclasses, taus, self.temperature, self.base_temperature, self.gamma)


# ------------------------------------------------------------------------------------- the module
class SBCLModule(ClassifierModule):
    """Two-view contrastive encoder (SBCL or the SupCon baseline) and its stage-2 balanced linear probe.

    Training batches are ``(view1, view2, y, index)`` (``zoo.datamodules.ContrastiveDigitsDataModule``
    and ``ContrastiveCIFARDataModule``); ``index`` is the sample's position in the DataModule's
    ``eval_train_dataloader()``, which the probe and :class:`zoo.callbacks.SubclassClustering` read.
    ``forward(x)`` = probe(encoder(x)): logits for the classifier base's metrics. Until
    :meth:`set_subclasses` is called (warm-up, or ``loss="supcon"``) the loss is SupCon on classes.

    Args:
        num_classes: C.
        backbone / input_dim / hidden_dims / in_chans / cifar_stem: the encoder (``build_backbone``).
        proj_dims: projection head widths after the encoder (last = feature dim of the loss).
        loss: ``sbcl`` (the method) or ``supcon`` (the baseline, subclasses ignored).
        temperature / base_temperature / gamma: tau, tau_base and the class-term weight.
        lr / weight_decay / optimizer: ``adam`` or ``sgd`` (momentum 0.9, cosine schedule, as the paper).
        probe_weight_decay: L2 of the stage-2 probe.
        many_shot / few_shot: Many > ``many_shot`` and Few < ``few_shot`` training examples (the
            base's Many / Medium / Few accuracy); the Many classes are the head of ``{stage}/head_spread``.
    """

    def __init__(
        self,
        num_classes: int = 10,
        backbone: str = "mlp",
        input_dim: int = 64,
        hidden_dims: list[int] | None = None,
        in_chans: int = 3,
        cifar_stem: bool = False,
        proj_dims: list[int] | None = None,
        loss: str = "sbcl",
        temperature: float = 0.1,
        base_temperature: float = 0.07,
        gamma: float = 0.25,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        optimizer: str = "adam",
        probe_weight_decay: float = 1e-3,
        many_shot: int = 100,
        few_shot: int = 20,
    ) -> None:
        super().__init__(num_classes)
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; choose one of {LOSSES}")
        if optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
        self.save_hyperparameters()
        hidden = [128, 64] if hidden_dims is None else hidden_dims
        self.encoder = build_backbone(backbone, 0, input_dim=input_dim, hidden_dims=hidden, in_chans=in_chans, cifar_stem=cifar_stem)
        width = int(self.encoder.num_features)  # type: ignore[arg-type]
        dims = [width, *([64, 32] if proj_dims is None else proj_dims)]
        layers: list[nn.Module] = []
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(d_in, d_out), nn.ReLU()]
        self.projector = nn.Sequential(*layers[:-1])
        self.classifier = nn.Linear(width, num_classes).requires_grad_(False)  # stage 2: fitted, not trained
        self.sbcl = SBCLLoss(temperature, base_temperature, gamma)
        self.subclass_targets: Tensor | None = None
        self.temperature_scales: Tensor | None = None
        self._eval_cache: list[tuple[Tensor, Tensor]] = []

    # ------------------------------------------------------------------------ the protocol
    def set_subclasses(self, subclass_targets: Tensor, temperature_scales: Tensor) -> None:
        """Subclass id per training sample (by index) and tau_c / tau per class, from the clustering callback."""
        self.subclass_targets = subclass_targets.long().to(self.device)
        self.temperature_scales = temperature_scales.float().to(self.device)

    def embed(self, x: Tensor) -> Tensor:
        """Normalised projection of ``x``: the space the loss, the clustering and the spread live in."""
        return F.normalize(self.projector(self.encoder(x)), dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.encoder(x))

    # ---------------------------------------------------------------------------- training
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x1, x2, y, index = batch
        z = self.embed(torch.cat([x1, x2])).view(2, len(y), -1).transpose(0, 1)  # (B, 2, D)
        if self.hparams["loss"] == "sbcl" and self.subclass_targets is not None and self.temperature_scales is not None:
            loss = self.sbcl(z, y, self.subclass_targets[index], self.temperature_scales)
        else:  # SupCon on class labels: the baseline and SBCL's warm-up (official SupConLoss, tau = base tau)
            loss = supcon_loss(z, y, self.hparams["temperature"], self.hparams["temperature"])
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def _train_features(self) -> tuple[Tensor, Tensor, Tensor]:
        loader = self.trainer.datamodule.eval_train_dataloader()  # type: ignore[union-attr]
        feats, projs, labels = [], [], []
        was_training = self.training
        self.eval()
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            for x, y in loader:
                h = self.encoder(x.to(self.device))
                feats.append(h.float().cpu())
                projs.append(F.normalize(self.projector(h), dim=1).float().cpu())
                labels.append(y.cpu())
        self.train(was_training)
        return torch.cat(feats), torch.cat(projs), torch.cat(labels)

    def fit_probe(self) -> None:
        """Stage 2: refit the balanced linear classifier on the frozen encoder's training features."""
        feats, _, labels = self._train_features()
        w, b = fit_balanced_probe(feats, labels, self.num_classes, self.hparams["probe_weight_decay"])
        with torch.no_grad():
            self.classifier.weight.copy_(w)
            self.classifier.bias.copy_(b)

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if stage == "fit" and not callable(getattr(dm, "eval_train_dataloader", None)):
            raise RuntimeError(
                "SBCLModule needs a DataModule with eval_train_dataloader() (the training set, in order, without "
                "augmentation) for its stage-2 probe: use zoo.datamodules.ContrastiveDigitsDataModule or ContrastiveCIFARDataModule"
            )
        counts = getattr(dm, "train_class_counts", None)
        if self.shot_groups is None and callable(counts):
            self.set_shot_groups(counts(), self.hparams["many_shot"], self.hparams["few_shot"])
        super().setup(stage)

    def on_validation_epoch_start(self) -> None:
        self._eval_cache = []
        if self.trainer.state.fn == "fit" and not self.trainer.sanity_checking:
            self.fit_probe()

    def on_train_end(self) -> None:
        self.fit_probe()

    # ----------------------------------------------------------------------------- metrics
    def _eval_step(self, batch: Any, stage: str, dataloader_idx: int) -> Tensor:
        logits = super()._eval_step(batch, stage, dataloader_idx)
        if dataloader_idx == 0 and self.shot_groups is not None:
            self._eval_cache.append((self.embed(batch[0]).detach(), batch[1]))
        return logits

    def _log_head_spread(self, stage: str) -> None:
        """``{stage}/head_spread``: :func:`head_class_spread` of the Many classes' projections (the mechanism)."""
        cache, self._eval_cache = self._eval_cache, []
        if not cache or self.shot_groups is None:
            return
        head = torch.nonzero(self.shot_groups == 0).flatten().tolist()
        if head:
            z, y = torch.cat([c[0] for c in cache]), torch.cat([c[1] for c in cache])
            self.log(f"{stage}/head_spread", head_class_spread(z, y, head), sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        self._log_head_spread("val")

    def on_test_epoch_start(self) -> None:
        self._eval_cache = []

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        self._log_head_spread("test")

    def configure_optimizers(self) -> Any:
        lr, wd = self.hparams["lr"], self.hparams["weight_decay"]
        params = [*self.encoder.parameters(), *self.projector.parameters()]
        if self.hparams["optimizer"] == "adam":
            return torch.optim.Adam(params, lr=lr, weight_decay=wd)
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=wd)
        total = self.trainer.max_epochs if self.trainer.max_epochs and self.trainer.max_epochs > 0 else 1000
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total, eta_min=lr * 0.1**3)
        return {"optimizer": opt, "lr_scheduler": sched}
