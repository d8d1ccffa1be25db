"""Muon vs Adam on a one-layer associative memory with heavy-tailed classes.

Paper: *Muon Outperforms Adam in Tail-End Associative Memory Learning*, Wang, Zhang, Li, Du, Du,
Pang, Yang, Hong, Tan (ICLR 2026), arXiv 2509.26030. No official code was found.

The paper proposes no optimizer; it explains Muon. This entry is the paper's theory model
(Section 5) as a LightningModule: ``K`` facts with query embeddings ``E`` (``d_in x K``) and
object embeddings ``E~`` (``d_out x K``), both with orthonormal columns, a memory
``W`` (``d_out x d_in``, ``W_0 = 0``) and the prediction ``f_W(E_k) = softmax(E~^T W E_k)``,
trained on the population loss ``-sum_k p_k log f_W(E_k)_k`` with heavy-tailed ``p``
(:mod:`zoo.datamodules.associative`). The claim: at the moment the head classes' mean
correct-class probability reaches 0.9, Muon has learned the tail too, Adam has not, and the
difference needs *rotated* embeddings (with identity embeddings, i.e. disjoint supports,
sign-like Adam updates are balanced as well).

Optimizer choice: ``timm.optim.Muon``, not ``torch.optim.Muon``. timm's Muon orthogonalises
every 2-D+ weight and falls back to AdamW for the rest *inside one optimizer*, so it fits
Lightning's automatic optimization in any module (torch's raises on non-2-D parameters and
would need a second optimizer and manual optimization). Its defaults already match the paper's
runs for weight decay (0) and Nesterov (off); where they differ, this module exposes and
overrides them:

- ``adjust_lr_fn``: timm scales the lr by ``0.2 sqrt(max(m, n))`` (``"match_rms_adamw"``);
  the paper's update is ``W <- W - lr * O`` with no scaling, so the default here is ``None``.
- ``ns_coefficients``: timm's default is the 5-step "quintic" schedule; the paper describes
  Keller Jordan's fixed ``(3.4445, -4.7750, 2.0315)``, timm's ``"original"``, the default here.
- ``weight_decay`` (0) and ``nesterov`` (False) are exposed and default to the paper's values
  (torch's Muon would default to 0.1 and True).
- ``fallback_lr_scale``: the AdamW fallback (biases, norms, other non-2-D parameters) runs at
  ``lr * fallback_lr_scale``; timm's default 1.0 would give AdamW Muon's unscaled lr (0.1 here,
  ten times the card's Adam lr). The paper's memory has no such parameter, so no value is given
  by it; the default 0.1 puts them at the Adam-to-Muon lr ratio of the claim's arms (0.01 / 0.1).

Deviations and guesses: timm keeps the momentum as an EMA (``B <- mu B + (1 - mu) G``) instead
of the paper's ``B <- mu B + G``; Newton-Schulz normalises its input, so the update is the
same. Newton-Schulz runs in bfloat16 (timm and torch alike), so a Muon update is only
near-orthogonal (singular values within about [0.7, 1.2]). The paper's theory compares
against Adam with ``beta1 = beta2 = 0`` (SignGD); the claim uses Adam (0.9, 0.999) as the
paper's experiments do (an independent CPU check measured tail p ~ 0.02 for both). ``"sgd"``
(with momentum) is offered as the GD baseline. The early stop is
:class:`zoo.callbacks.StopAtThreshold` on ``train/head_p`` >= 0.9 (the card's configs attach it),
checked after every step (Lightning's ``EarlyStopping`` checks only at epoch ends, and one
epoch per full-batch step cost ~30 ms of loop overhead each); the metrics at the stop are
those of the ``W`` that reached it (computed before that step's update).

Logged every step: ``train/loss``, ``train/head_p`` / ``train/tail_p`` (mean correct-class
probability over head / tail classes), ``train/min_p``, ``train/gap`` (the paper's balance
measure ``Delta(W)``: max minus min correct-class probability), ``train/tail_acc``,
``train/step``, and the spectral isotropy of the weight updates so far (``update/entropy``,
``update/erank``, ``update/top_energy``, ``update/q75_q25``, ``update/sv_ratio``; running mean
over the updates, see :class:`SpectralIsotropy`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric

from zoo.hub import ZooModule

__all__ = ["AssociativeMemory", "SpectralIsotropy", "spectral_isotropy", "orthonormal_embeddings", "build_optimizer"]

EMBEDDINGS = ("rotated", "identity")
OPTIMIZERS = ("muon", "adam", "sgd")
ISOTROPY_KEYS = ("entropy", "erank", "top_energy", "q75_q25", "sv_ratio")


# ------------------------------------------------------------------------------- isotropy
def spectral_isotropy(matrix: Tensor, top_k: int = 1) -> dict[str, Tensor]:
    """The paper's isotropy measures of a matrix's singular values ``sigma``.

    With ``q_i = sigma_i^2 / sum_j sigma_j^2`` over the ``n = min(rows, cols)`` singular values:
    ``entropy`` = ``-sum q log q / log n`` (1 = perfectly isotropic), ``erank`` =
    ``exp(-sum q log q)`` (effective rank, ``n`` when isotropic), ``top_energy`` = the energy
    fraction of the ``top_k`` largest, ``q75_q25`` = the ratio of the 75th to the 25th percentile
    of ``sigma^2``, ``sv_ratio`` = ``sigma_min / sigma_max``. A zero matrix gives NaN.

    >>> {k: round(float(v), 4) for k, v in spectral_isotropy(torch.eye(4)).items()}
    {'entropy': 1.0, 'erank': 4.0, 'top_energy': 0.25, 'q75_q25': 1.0, 'sv_ratio': 1.0}
    """
    if matrix.ndim != 2:
        raise ValueError(f"spectral_isotropy takes a 2-D matrix, got shape {tuple(matrix.shape)}")
    s = torch.linalg.svdvals(matrix.detach().double())
    energy = s**2
    total = energy.sum()
    if total <= 0:
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        return dict.fromkeys(ISOTROPY_KEYS, nan)
    q = energy / total
    h = -torch.special.xlogy(q, q).sum()
    n = s.numel()
    q25, q75 = torch.quantile(energy, torch.tensor([0.25, 0.75], dtype=torch.float64))
    return {
        "entropy": h / math.log(n) if n > 1 else torch.ones((), dtype=torch.float64),
        "erank": h.exp(),
        "top_energy": q.sort(descending=True).values[:top_k].sum(),
        "q75_q25": q75 / q25,
        "sv_ratio": s.min() / s.max(),
    }


class SpectralIsotropy(Metric):
    """Mean of :func:`spectral_isotropy` over the matrices passed to ``update`` (e.g. weight updates).

    ``compute`` returns a dict with the keys ``entropy``, ``erank``, ``top_energy``,
    ``q75_q25`` and ``sv_ratio``; states are summed across processes.

    >>> metric = SpectralIsotropy()
    >>> metric.update(torch.eye(3)); metric.update(torch.diag(torch.tensor([1.0, 0.0, 0.0])))
    >>> round(float(metric.compute()["erank"]), 4)
    2.0
    """

    full_state_update = False
    higher_is_better = None

    def __init__(self, top_k: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.top_k = top_k
        for key in ISOTROPY_KEYS:
            self.add_state(key, default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, matrix: Tensor) -> None:  # type: ignore[override]
        values = spectral_isotropy(matrix, self.top_k)
        if not torch.isfinite(values["entropy"]):
            return  # a zero update has no spectrum
        for key in ISOTROPY_KEYS:
            setattr(self, key, getattr(self, key) + values[key].to(self.device))
        self.count += 1

    def compute(self) -> dict[str, Tensor]:  # type: ignore[override]
        return {key: getattr(self, key) / self.count for key in ISOTROPY_KEYS}


# ----------------------------------------------------------------------------- embeddings
def orthonormal_embeddings(dim: int, num_classes: int, kind: str = "rotated", seed: int = 0) -> Tensor:
    """A ``dim x num_classes`` matrix with orthonormal columns (needs ``num_classes <= dim``).

    ``"rotated"``: the first ``num_classes`` columns of a Haar-random orthogonal matrix (QR of a
    Gaussian, signs fixed by ``diag(R)``), drawn with ``seed``. ``"identity"``: the first columns
    of the identity (disjoint supports, the case where sign-based updates are balanced too).
    """
    if kind not in EMBEDDINGS:
        raise ValueError(f"embedding must be one of {EMBEDDINGS}, got {kind!r}")
    if num_classes > dim:
        raise ValueError(f"orthonormal embeddings need num_classes <= dim, got {num_classes} > {dim}")
    if kind == "identity":
        return torch.eye(dim)[:, :num_classes].contiguous()
    g = torch.randn(dim, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    q, r = torch.linalg.qr(g)
    q = q * torch.sign(torch.diagonal(r))
    return q[:, :num_classes].float().contiguous()


# ------------------------------------------------------------------------------ optimizer
def build_optimizer(
    params: Any,
    optimizer: str = "muon",
    lr: float = 0.1,
    momentum: float = 0.95,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    adjust_lr_fn: str | None = None,
    ns_coefficients: str | list[float] = "original",
    adam_betas: tuple[float, float] | list[float] = (0.9, 0.999),
    adam_eps: float = 1e-8,
    fallback_lr_scale: float = 0.1,
) -> torch.optim.Optimizer:
    """``timm.optim.Muon`` with the paper's settings (see the module docstring), ``torch.optim.Adam`` or SGD."""
    if optimizer == "muon":
        from timm.optim import Muon

        coeffs = tuple(ns_coefficients) if isinstance(ns_coefficients, list) else ns_coefficients
        return Muon(
            params,
            lr=lr,
            weight_decay=weight_decay,
            momentum=momentum,
            nesterov=nesterov,
            ns_coefficients=coeffs,
            adjust_lr_fn=adjust_lr_fn,
            betas=tuple(adam_betas),  # the AdamW fallback of non-2-D parameters
            fallback_lr_scale=fallback_lr_scale,  # ... at lr * fallback_lr_scale
        )
    if optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, betas=tuple(adam_betas), eps=adam_eps, weight_decay=weight_decay)  # type: ignore[arg-type]
    if optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")


# ----------------------------------------------------------------------------------- model
class AssociativeMemory(ZooModule):
    """One-layer associative memory ``f_W(E_k) = softmax(E~^T W E_k)`` with fixed orthonormal embeddings.

    ``forward(x)`` takes fact indices and returns the logits over the ``K`` objects. Batches are
    ``(x, y, weight, is_head)`` from :class:`zoo.datamodules.associative.AssociativeMemoryDataModule`;
    the loss is ``-sum weight * log f_W(E_x)_y`` (the population loss when ``weight = p``).

    Args:
        num_classes: ``K``.
        dim: ``d_in`` (query embedding width); ``out_dim`` is ``d_out`` (None: ``dim``).
        embedding: ``"rotated"`` (random orthonormal, the paper's hard case) or ``"identity"``.
        embedding_seed: seeds the rotations (query and object embeddings are drawn independently).
        optimizer: ``"muon"`` (timm), ``"adam"`` or ``"sgd"``.
        lr: learning rate of the chosen optimizer.
        momentum: Muon's (and SGD's) momentum ``mu``.
        nesterov, weight_decay, adjust_lr_fn, ns_coefficients: Muon settings, defaults from the
            paper (no Nesterov, no weight decay, no lr scaling, Keller's coefficients).
        adam_betas, adam_eps: Adam's.
        fallback_lr_scale: Muon's AdamW fallback (biases, norms) runs at ``lr * fallback_lr_scale``.
        top_k: ``k`` of the ``update/top_energy`` isotropy metric.

    >>> model = AssociativeMemory(num_classes=8, dim=8)
    >>> model(torch.arange(8)).shape
    torch.Size([8, 8])
    """

    def __init__(
        self,
        num_classes: int = 64,
        dim: int = 64,
        out_dim: int | None = None,
        embedding: str = "rotated",
        embedding_seed: int = 0,
        optimizer: str = "muon",
        lr: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        adjust_lr_fn: str | None = None,
        ns_coefficients: str | list[float] = "original",
        adam_betas: list[float] = [0.9, 0.999],  # noqa: B006 - JSON-able default, never mutated
        adam_eps: float = 1e-8,
        top_k: int = 1,
        fallback_lr_scale: float = 0.1,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        out_dim = out_dim or dim
        self.num_classes = num_classes
        self.register_buffer("query_embed", orthonormal_embeddings(dim, num_classes, embedding, embedding_seed))
        self.register_buffer("object_embed", orthonormal_embeddings(out_dim, num_classes, embedding, embedding_seed + 1_000_003))
        self.weight = nn.Parameter(torch.zeros(out_dim, dim))
        self.update_isotropy = SpectralIsotropy(top_k=top_k)
        self._previous: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        queries = self.query_embed[:, x].T  # (B, d_in)
        return queries @ self.weight.T @ self.object_embed  # (B, K)

    def _step(self, batch: Any, stage: str) -> Tensor:
        x, y, weight, is_head = batch
        logp = F.log_softmax(self(x), dim=-1)
        correct = logp.gather(1, y[:, None]).squeeze(1)
        loss = -(weight * correct).sum()
        p = correct.detach().exp()
        tail = ~is_head
        acc = (logp.detach().argmax(-1) == y).float()
        self.log_dict(
            {
                f"{stage}/loss": loss.detach(),
                f"{stage}/head_p": p[is_head].mean(),
                f"{stage}/tail_p": p[tail].mean(),
                f"{stage}/min_p": p.min(),
                f"{stage}/gap": p.max() - p.min(),
                f"{stage}/head_acc": acc[is_head].mean(),
                f"{stage}/tail_acc": acc[tail].mean(),
            },
            on_step=stage == "train",
            on_epoch=stage != "train",
            batch_size=len(x),
        )
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        self._previous = self.weight.detach().clone()
        self.log("train/step", float(self.global_step), on_step=True, on_epoch=False)
        return self._step(batch, "train")

    def on_train_start(self) -> None:
        self.update_isotropy.reset()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._previous is None:
            return
        self.update_isotropy.update(self.weight.detach() - self._previous)
        self._previous = None
        if self.update_isotropy.count > 0:
            values = self.update_isotropy.compute()
            self.log_dict({f"update/{k}": v.float() for k, v in values.items()}, on_step=True, on_epoch=False)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        return F.softmax(self(batch[0]), dim=-1)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        h = self.hparams
        return build_optimizer(
            self.parameters(),
            optimizer=h.optimizer,
            lr=h.lr,
            momentum=h.momentum,
            nesterov=h.nesterov,
            weight_decay=h.weight_decay,
            adjust_lr_fn=h.adjust_lr_fn,
            ns_coefficients=h.ns_coefficients,
            adam_betas=h.adam_betas,
            adam_eps=h.adam_eps,
            fallback_lr_scale=h.get("fallback_lr_scale", 0.1),  # configs saved before it existed
        )
