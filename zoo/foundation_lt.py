"""foundation-lt: fine-tune each foundation model with LIFT's recipe, then ensemble them by backdoor adjustment.

Paper: Chen, Qin, Li, Chen, Su, "Rethinking the Bias of Foundation Model under Long-tailed
Distribution", ICML 2025, arXiv:2501.15955. Official code: ``JiahaoChen1/Pre-train-Imbalance``
(``trainer.py`` for the fine-tuning, ``test.py`` ``backdoor_adjustment()`` for the ensemble), built on
LIFT (``shijxcs/LIFT``, ``models/peft_vit.py``, ``models/classifiers.py``).

A foundation model inherits a class bias from its own long-tailed pre-training data ("parameter
imbalance"), which logit adjustment on the downstream data (which fixes "data imbalance") does not
remove. The paper models the pre-training semantics as a confounder C (X <- C -> Y, X -> Y) and
predicts with P(Y | do(X)) = sum_c P(Y | X, c) P(c): each foundation model pre-trained on a different
corpus (OpenAI WIT, LAION-2B, MetaCLIP) is one value of C; each is fine-tuned with the same recipe
(LIFT: AdaptFormer adapters, a cosine classifier, the logit-adjusted loss) and their outputs are
combined with uniform P(c) = 1/M.

- :class:`LIFTFinetuner` fine-tunes one member: any backbone of ``zoo.nn.backbones`` (a timm name
  such as ``vit_base_patch16_clip_224.openai``, or the digits MLP), ``peft="adaptformer"`` for a
  timm ViT, ``"full"`` or ``"linear"``; a cosine head (scale 25) initialised from a pre-trained
  head, from class means or at random; the logit-adjusted loss (tau = 1) with the training prior.
  With ``head="linear"``, ``loss="ce"`` and no ``pretrained`` it is the pre-training of the
  embedded claim's stand-in foundation models.
- :class:`BackdoorAdjustedEnsemble` holds M fine-tuned members and combines them (Sec. 4).

Deviations and guesses:

- The official code sums the members' logits; the formula sums probabilities. ``combine="logits"``
  (default) takes the P(c)-weighted sum of logits (the official argmax; with uniform P(c) it is the
  official sum divided by M, so the predictions are the same), ``"probs"`` the weighted sum of
  probabilities (``forward`` returns its log).
- timm has no CLIP text tower, so LIFT's text-feature head initialisation (``init_head=text_feat``)
  is replaced by LIFT's ``class_mean`` option for timm backbones (normalised class-mean features of
  the training set); the embedded claim initialises from the pre-trained head ("pretrained"), the
  zero-shot classifier of its stand-in foundation models.
- AdaptFormer: a parallel bottleneck adapter (width 64, scale 0.1, up-projection zero-initialised)
  on each ViT block's MLP input, as in AdaptFormer (Chen et al. 2022, Fig. 2); LIFT's exact
  placement may differ. The digits MLP has no blocks: it is fine-tuned fully (``peft="full"``).
- ``combine="best_member"`` (a control, not the paper's method) picks the member with the best
  validation balanced accuracy, so "best single member" is chosen without the test set.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from zoo.hub import load as zoo_load
from zoo.nn.backbones import build_backbone, feature_dim
from zoo.templates import ClassifierModule

__all__ = [
    "logit_adjusted_loss",
    "cosine_logits",
    "backdoor_adjustment",
    "CosineClassifier",
    "AdaptFormer",
    "FoundationMember",
    "LIFTFinetuner",
    "BackdoorAdjustedEnsemble",
    "ARCH_KEYS",
]

PEFTS = ("full", "adaptformer", "linear")
HEADS = ("cosine", "linear")
INIT_HEADS = ("random", "pretrained", "class_mean")
LOSSES = ("la", "ce")
COMBINES = ("logits", "probs", "best_member")
#: init arguments that fix a member's architecture (what an ensemble needs to rebuild it)
ARCH_KEYS = ("backbone", "input_dim", "hidden_dims", "in_chans", "resize_to", "peft", "adapter_dim", "adapter_scale", "head", "scale")
#: the long-tail groups at digits scale (head class 50 examples, tail 5): Many > 25, Few < 10
_SHOTS = (25, 10)


# ------------------------------------------------------------------------------------- maths
def logit_adjusted_loss(logits: Tensor, y: Tensor, log_prior: Tensor, tau: float = 1.0) -> Tensor:
    """The logit-adjusted softmax cross-entropy (Menon et al. 2021, Eq. 10): ``CE(logits + tau * log pi, y)``.

    Used in training only; predictions use the plain logits (the prior is not subtracted again).
    """
    if log_prior.shape != logits.shape[-1:]:
        raise ValueError(f"log_prior has shape {tuple(log_prior.shape)}, expected ({logits.shape[-1]},)")
    return F.cross_entropy(logits + tau * log_prior.to(logits.dtype), y)


def cosine_logits(features: Tensor, weight: Tensor, scale: float) -> Tensor:
    """LIFT's cosine classifier: ``scale * <x / |x|, w_k / |w_k|>`` for every class ``k``."""
    return scale * F.normalize(features, dim=-1) @ F.normalize(weight, dim=-1).T


def backdoor_adjustment(member_outputs: Sequence[Tensor], weights: Tensor | None = None, combine: str = "logits") -> Tensor:
    """Backdoor adjustment (Sec. 4): ``sum_c P(c) f_c(x)`` over members, ``P(c)`` uniform when ``weights`` is None.

    ``combine="logits"`` weights logits (the official code, up to the factor M); ``"probs"`` weights
    softmax probabilities and returns their log, so ``softmax`` of the result is the mixture.
    """
    if not member_outputs:
        raise ValueError("backdoor_adjustment needs at least one member")
    stacked = torch.stack(list(member_outputs))  # (M, N, C)
    m = stacked.shape[0]
    w = torch.full((m,), 1.0 / m, dtype=stacked.dtype, device=stacked.device) if weights is None else weights.to(stacked)
    if w.shape != (m,) or bool((w < 0).any()) or not math.isclose(float(w.sum()), 1.0, rel_tol=1e-5):
        raise ValueError(f"weights must be M = {m} non-negative numbers summing to 1 (P(c)), got {w.tolist()}")
    if combine == "logits":
        return torch.einsum("m,mnc->nc", w, stacked)
    if combine == "probs":
        return torch.logsumexp(stacked.log_softmax(-1) + w.log().view(m, 1, 1), dim=0)
    raise ValueError(f"combine must be 'logits' or 'probs', got {combine!r}")


# ------------------------------------------------------------------------------------- parts
class CosineClassifier(nn.Module):
    """A bias-free head whose logits are scaled cosines between features and class weights (LIFT)."""

    def __init__(self, in_features: int, num_classes: int, scale: float = 25.0) -> None:
        super().__init__()
        if scale <= 0:
            raise ValueError(f"scale must be positive, got {scale}")
        self.scale = float(scale)
        self.weight = nn.Parameter(torch.empty(num_classes, in_features).uniform_(-1, 1))

    def forward(self, features: Tensor) -> Tensor:
        return cosine_logits(features, self.weight, self.scale)


class AdaptFormer(nn.Module):
    """``mlp(h) + s * up(relu(down(h)))``: AdaptFormer's parallel adapter around a ViT block's MLP."""

    def __init__(self, mlp: nn.Module, dim: int, bottleneck: int = 64, scale: float = 0.1) -> None:
        super().__init__()
        self.mlp, self.scale = mlp, float(scale)
        self.down, self.up = nn.Linear(dim, bottleneck), nn.Linear(bottleneck, dim)
        nn.init.zeros_(self.up.weight)  # starts as the pre-trained block
        nn.init.zeros_(self.up.bias)

    def forward(self, h: Tensor) -> Tensor:
        return self.mlp(h) + self.scale * self.up(F.relu(self.down(h)))


class FoundationMember(nn.Module):
    """One member: a backbone feature extractor (with adapters for ``peft="adaptformer"``) and a head."""

    def __init__(
        self,
        num_classes: int,
        backbone: str = "mlp",
        input_dim: int = 64,
        hidden_dims: Sequence[int] | None = None,
        in_chans: int = 3,
        resize_to: int | None = None,
        peft: str = "full",
        adapter_dim: int = 64,
        adapter_scale: float = 0.1,
        head: str = "cosine",
        scale: float = 25.0,
        timm_pretrained: bool = False,
    ) -> None:
        super().__init__()
        for name, value, allowed in (("peft", peft, PEFTS), ("head", head, HEADS)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        self.resize_to, self.peft = resize_to, peft
        hidden_dims = (64, 32) if hidden_dims is None else hidden_dims
        self.encoder = build_backbone(backbone, 0, input_dim=input_dim, hidden_dims=hidden_dims, in_chans=in_chans, pretrained=timm_pretrained)
        width = feature_dim(self.encoder)
        if peft == "adaptformer":
            blocks = getattr(self.encoder, "blocks", None)
            if blocks is None or not all(hasattr(b, "mlp") for b in blocks):
                raise ValueError(f"peft='adaptformer' needs a timm ViT (blocks with .mlp); {backbone!r} has none: use peft='full'")
            for block in blocks:
                block.mlp = AdaptFormer(block.mlp, width, adapter_dim, adapter_scale)
        self.head: nn.Module = CosineClassifier(width, num_classes, scale) if head == "cosine" else nn.Linear(width, num_classes)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What fine-tuning updates: everything (``full``), adapters and head, or the head alone."""
        if self.peft == "full":
            return list(self.parameters())
        adapters = [p for n, p in self.encoder.named_parameters() if ".down." in n or ".up." in n] if self.peft == "adaptformer" else []
        return adapters + list(self.head.parameters())

    def features(self, x: Tensor) -> Tensor:
        if self.resize_to is not None and x.ndim == 4 and x.shape[-1] != self.resize_to:
            x = F.interpolate(x, size=(self.resize_to, self.resize_to), mode="bilinear", align_corners=False)
        return self.encoder(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def _head_weight(head: nn.Module) -> Tensor:
    return head.weight  # type: ignore[return-value]


# ----------------------------------------------------------------------------------- modules
class LIFTFinetuner(ClassifierModule):
    """Fine-tune one foundation member with LIFT's recipe: PEFT, cosine head, logit-adjusted loss.

    Args:
        num_classes: classes of the downstream task.
        backbone ... scale: the member's architecture (:class:`FoundationMember`; see ``ARCH_KEYS``).
        timm_pretrained: load timm's weights for ``backbone`` (downloads; e.g. ``.openai``, ``.laion2b``).
        pretrained: hub folder or repo id of a zoo ``LIFTFinetuner`` whose encoder (and head, for
            ``init_head="pretrained"``) this run starts from; loaded at the start of fit.
        init_stream: 0 initialises from the run's random stream; ``k > 0`` from an independent
            stream ``k`` of the run's seed (independently pre-trained members under one seed).
        init_head: ``pretrained`` (copy the source's head: the zero-shot classifier), ``class_mean``
            (normalised class-mean features of the training set) or ``random``.
        loss: ``la`` (logit-adjusted, the paper's) or ``ce``; ``tau`` scales the log prior.
        class_counts: the training prior; None takes the DataModule's ``train_class_counts()``.
        optimizer / lr / momentum / weight_decay: ``adam`` or ``sgd`` (LIFT: SGD 0.01, momentum 0.9, 5e-4).
    """

    shot_thresholds = _SHOTS

    def __init__(
        self,
        num_classes: int = 10,
        backbone: str = "mlp",
        input_dim: int = 64,
        hidden_dims: list[int] | None = None,
        in_chans: int = 3,
        resize_to: int | None = None,
        peft: str = "full",
        adapter_dim: int = 64,
        adapter_scale: float = 0.1,
        head: str = "cosine",
        scale: float = 25.0,
        timm_pretrained: bool = False,
        pretrained: str | None = None,
        init_stream: int = 0,
        init_head: str = "pretrained",
        loss: str = "la",
        tau: float = 1.0,
        class_counts: list[int] | None = None,
        optimizer: str = "adam",
        lr: float = 3e-4,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(num_classes)
        hidden_dims = [64, 32] if hidden_dims is None else list(hidden_dims)
        self.save_hyperparameters()
        for name, value, allowed in (("init_head", init_head, INIT_HEADS), ("loss", loss, LOSSES), ("optimizer", optimizer, ("adam", "sgd"))):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if init_head == "pretrained" and pretrained is None:
            init_head = "random"  # nothing to copy: a run from scratch (pre-training)
        if lr <= 0 or weight_decay < 0:
            raise ValueError(f"lr must be positive and weight_decay >= 0, got {lr}, {weight_decay}")
        self.init_head = init_head
        arch = {k: v for k, v in self.hparams.items() if k in ARCH_KEYS}
        if init_stream < 0:
            raise ValueError(f"init_stream must be >= 0 (0: the run's random stream), got {init_stream}")
        if init_stream:  # an independent initialisation per stream, still fixed by the run's seed
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(np.random.SeedSequence([torch.initial_seed(), init_stream]).generate_state(1)[0]))
                self.net = FoundationMember(num_classes, timm_pretrained=timm_pretrained, **arch)
        else:
            self.net = FoundationMember(num_classes, timm_pretrained=timm_pretrained, **arch)
        self.register_buffer("log_prior", torch.zeros(num_classes), persistent=False)
        self._prior_set = False
        if class_counts is not None:
            self.set_prior(class_counts)
        self._started = False

    def set_prior(self, class_counts: Sequence[int] | Tensor) -> None:
        """The logit adjustment's ``log pi`` from per-class training counts (every class needs one)."""
        counts = torch.as_tensor(class_counts, dtype=torch.float64)
        if counts.shape != (self.num_classes,) or bool((counts <= 0).any()):
            raise ValueError(f"class_counts must be {self.num_classes} positive counts, got {list(counts.tolist())}")
        self.log_prior.copy_((counts / counts.sum()).log().float())
        self._prior_set = True

    @override
    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    @override
    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage != "fit":
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        if self.hparams["loss"] == "la" and not self._prior_set:
            counts = getattr(datamodule, "train_class_counts", None)
            counts = counts() if callable(counts) else getattr(datamodule, "class_counts", None)
            if counts is None:
                raise ValueError("loss='la' needs the training prior: pass class_counts or use a DataModule with train_class_counts()")
            self.set_prior(counts)
        if self.hparams["pretrained"] is not None and not self._started:
            self.load_pretrained(self.hparams["pretrained"])

    def load_pretrained(self, source: str) -> None:
        """Start from a zoo ``LIFTFinetuner``'s encoder (adapters excepted) and, for ``init_head="pretrained"``, its head."""
        try:
            model = zoo_load(source)
        except FileNotFoundError as err:
            raise FileNotFoundError(
                f"LIFTFinetuner pretrained {source!r} could not be loaded ({err}); pre-train it first, e.g. "
                "zoo fit --config cards/foundation-lt/pretrain.yaml (it saves itself with zoo.callbacks.SavePretrained)"
            ) from None
        if not isinstance(model, LIFTFinetuner):
            raise TypeError(f"pretrained {source!r} holds a {type(model).__name__}; it must be a LIFTFinetuner")
        missing, unexpected = self.net.encoder.load_state_dict(model.net.encoder.state_dict(), strict=False)
        if unexpected or any(".down." not in k and ".up." not in k for k in missing):
            raise ValueError(f"pretrained {source!r} has another encoder: missing {missing}, unexpected {unexpected}")
        if self.init_head == "pretrained":
            weight = _head_weight(model.net.head)
            if weight.shape != _head_weight(self.net.head).shape:
                raise ValueError(f"pretrained {source!r} has a head of shape {tuple(weight.shape)}; init_head='pretrained' needs the same classes")
            with torch.no_grad():
                _head_weight(self.net.head).copy_(weight)
        self._started = True

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self._started = True  # a resumed run keeps its weights: no re-initialisation at fit start

    @override
    def on_fit_start(self) -> None:
        if self.init_head == "class_mean" and not self._started:
            self.init_class_mean_head()
        self._started = True

    @torch.no_grad()
    def init_class_mean_head(self) -> None:
        """LIFT's ``class_mean`` initialisation: each class weight is its mean normalised training feature."""
        was_training = self.training
        self.eval()
        sums = torch.zeros_like(_head_weight(self.net.head))
        counts = torch.zeros(self.num_classes, device=sums.device)
        datamodule = self.trainer.datamodule  # type: ignore[attr-defined]
        loader = datamodule.eval_train_dataloader() if hasattr(datamodule, "eval_train_dataloader") else datamodule.train_dataloader()
        for batch in loader:
            x, y = batch[0].to(self.device), batch[1].to(self.device)
            sums.index_add_(0, y, F.normalize(self.net.features(x), dim=-1))
            counts += torch.bincount(y, minlength=self.num_classes)
        if bool((counts == 0).any()):
            raise ValueError(f"init_head='class_mean' needs every class in the training set; counts {counts.tolist()}")
        _head_weight(self.net.head).copy_(F.normalize(sums / counts[:, None], dim=-1))
        self.train(was_training)

    @override
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch[0], batch[1]
        logits = self(x)
        if self.hparams["loss"] == "la":
            loss = logit_adjusted_loss(logits, y, self.log_prior, self.hparams["tau"])
        else:
            loss = F.cross_entropy(logits, y)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        params = self.net.trainable_parameters()
        if hp["optimizer"] == "sgd":
            return torch.optim.SGD(params, lr=hp["lr"], momentum=hp["momentum"], weight_decay=hp["weight_decay"])
        return torch.optim.Adam(params, lr=hp["lr"], weight_decay=hp["weight_decay"])


class BackdoorAdjustedEnsemble(ClassifierModule):
    """Members fine-tuned from differently pre-trained foundation models, combined by backdoor adjustment.

    Args:
        num_classes: classes (every member shares the class order and head scale).
        members: each member's architecture (a dict of ``ARCH_KEYS`` init arguments of
            :class:`LIFTFinetuner`; ``{}`` for its defaults); None: three default members.
        sources: hub folders or repo ids of fine-tuned ``LIFTFinetuner`` s, one per member, whose
            weights are copied in at setup (once); None when the weights come from ``zoo.load``.
        weights: P(c) per member (sums to 1); None: uniform 1/M.
        combine: ``logits`` (official), ``probs`` (the formula) or ``best_member`` (a control: the
            member with the best validation balanced accuracy, chosen at setup).
    """

    shot_thresholds = _SHOTS

    def __init__(
        self,
        num_classes: int = 10,
        members: list[dict[str, Any]] | None = None,
        sources: list[str] | None = None,
        weights: list[float] | None = None,
        combine: str = "logits",
    ) -> None:
        super().__init__(num_classes)
        members = [{}, {}, {}] if members is None else [dict(m) for m in members]
        self.save_hyperparameters()
        if combine not in COMBINES:
            raise ValueError(f"combine must be one of {COMBINES}, got {combine!r}")
        if not members:
            raise ValueError("members must name at least one member")
        for i, member in enumerate(members):
            unknown = sorted(set(member) - set(ARCH_KEYS))
            if unknown:
                raise ValueError(f"members[{i}] has keys {unknown} that are not architecture arguments; allowed: {ARCH_KEYS}")
        if sources is not None and len(sources) != len(members):
            raise ValueError(f"sources has {len(sources)} entries for {len(members)} members: give one per member")
        if weights is not None:
            backdoor_adjustment([torch.zeros(1, num_classes)] * len(members), torch.tensor(weights, dtype=torch.float32))  # validates
        self.members = nn.ModuleList(FoundationMember(num_classes, **m) for m in members)
        self.register_buffer("selected", torch.tensor(-1))  # best_member's choice; -1 until chosen
        self._loaded = False

    def member_logits(self, x: Tensor) -> list[Tensor]:
        """Each member's logits ``f_c(x)``."""
        return [member(x) for member in self.members]

    @override
    def forward(self, x: Tensor) -> Tensor:
        if self.hparams["combine"] == "best_member":
            if int(self.selected) < 0:
                raise RuntimeError("combine='best_member' has no member chosen yet: run validate/fit/test with a val loader first")
            return self.members[int(self.selected)](x)
        w = None if self.hparams["weights"] is None else torch.tensor(self.hparams["weights"], device=x.device)
        return backdoor_adjustment(self.member_logits(x), w, self.hparams["combine"])

    @override
    def setup(self, stage: str) -> None:
        super().setup(stage)
        if self.hparams["sources"] is not None and not self._loaded:
            self.load_members(self.hparams["sources"])
        if self.hparams["combine"] == "best_member" and int(self.selected) < 0:
            self.choose_best_member()

    def load_members(self, sources: Sequence[str]) -> None:
        """Copy each fine-tuned ``LIFTFinetuner``'s weights into its member (architectures must match)."""
        for i, source in enumerate(sources):
            model = zoo_load(source)
            if not isinstance(model, LIFTFinetuner):
                raise TypeError(f"sources[{i}] {source!r} holds a {type(model).__name__}; members must be LIFTFinetuners")
            try:
                self.members[i].load_state_dict(model.net.state_dict())
            except RuntimeError as err:
                arch = {k: v for k, v in model.hparams.items() if k in ARCH_KEYS}
                raise ValueError(f"sources[{i}] {source!r} has another architecture; set members[{i}] to {arch}") from err
        self._loaded = True

    @torch.no_grad()
    def choose_best_member(self) -> None:
        """``best_member``: the member with the highest balanced accuracy on the DataModule's val loader."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "val_dataloader"):
            raise ValueError("combine='best_member' needs a DataModule with a val_dataloader() to choose on")
        datamodule.setup("validate")
        scores = []
        for member in self.members:
            was_training = member.training
            member.eval()
            preds, ys = zip(*((member(x.to(self.device)).argmax(-1), y.to(self.device)) for x, y, *_ in datamodule.val_dataloader()))
            member.train(was_training)
            pred, y = torch.cat(preds), torch.cat(ys)
            recalls = [(pred[y == k] == k).float().mean() for k in range(self.num_classes) if bool((y == k).any())]
            scores.append(torch.stack(recalls).mean())
        self.selected.fill_(int(torch.stack(scores).argmax()))

    @override
    def training_step(self, batch: Any, batch_idx: int) -> None:
        return None  # parameter-free: the members were fine-tuned on their own

    @override
    def configure_optimizers(self) -> None:
        return None
