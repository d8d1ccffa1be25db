"""ViDiDi: Unfolding Videos Dynamics via Taylor Expansion (Chen, Choi, Zhao, Han, Qu, Liu 2024).

arXiv 2409.02371 ("Video Time-Differentiation for Instance Discrimination"). No official code was
found; this follows the paper's description.

A clip and its temporal derivatives (orders 0, 1, 2: frames, velocity, acceleration, the terms of
a Taylor expansion of the video's dynamics) are different views of the same video. ONE encoder
embeds every order, and an instance-discrimination objective (VICReg, BYOL or SimCLR, taken from
``lightly``) pulls the embeddings of two augmented views of the same video together when the
views are of different orders. Training alternates over the order pairs in a fixed round-robin
("balanced alternating learning"), one pair per step, so the easy order-0 pair cannot dominate.
Downstream features are the encoder's on original frames only.

Guesses where the paper text available to us is silent, named:

- Derivatives are forward differences (order 1: x_{t+1} - x_t; order 2: x_{t+2} - 2 x_{t+1} + x_t),
  taken AFTER the view's augmentation, on clips that carry two spare frames, and cropped to the
  same first ``T - 2`` frames for every order.
- Every encoder input (every order, and original frames at evaluation) is standardised per clip,
  since derivatives have a much smaller dynamic range than frames.
- The round-robin is over the pairs (0, 1), (1, 2), (0, 2) in that order, view 1 taking the first
  order and view 2 the second; step s uses pair s mod 3 (the position is the checkpointed global
  step). With a single order (``orders=[0]``) this is the plain base method: the baseline.
- Projection heads are lightly's (they carry batch norm); BYOL's target is the EMA of the one shared
  encoder and its projector, with lightly's cosine momentum schedule from ``tau`` to 1.
- Features are evaluated by cosine k-nearest-neighbour accuracy (k = 5, majority vote) against the
  un-augmented training clips, logged as ``{stage}/knn_acc``.

>>> import torch
>>> clip = torch.arange(5.0).pow(2).view(1, 1, 5, 1, 1)  # x_t = t^2
>>> temporal_derivative(clip, 2).flatten().tolist()  # constant second difference
[2.0, 2.0, 2.0]
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from lightly.loss import NegativeCosineSimilarity, NTXentLoss, VICRegLoss
from lightly.models.modules.heads import BYOLPredictionHead, BYOLProjectionHead, SimCLRProjectionHead, VICRegProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.utils.scheduler import cosine_schedule
from torch import Tensor, nn

from zoo.hub import ZooModule

__all__ = [
    "BASE_METHODS",
    "PAIRINGS",
    "SPARE_FRAMES",
    "TemporalDerivatives",
    "ViDiDi",
    "build_video_encoder",
    "derivative_view",
    "knn_accuracy",
    "order_pairs",
    "pair_for_step",
    "standardize_clips",
    "temporal_derivative",
]

BASE_METHODS = ("vicreg", "byol", "simclr")
PAIRINGS = ("balanced_alternating", "sum")
#: frames a training clip carries beyond what the encoder sees: room for order-2 derivatives.
SPARE_FRAMES = 2
_TIME = 2  # clips are (B, C, T, H, W)


# ------------------------------------------------------------------------------------- the maths
def temporal_derivative(clips: Tensor, order: int, length: int | None = None) -> Tensor:
    """The order-``order`` forward difference along time of ``(B, C, T, H, W)`` clips (Sec. 3, Taylor terms),
    cropped to its first ``length`` frames (default: all ``T - order``)."""
    if clips.dim() != 5:
        raise ValueError(f"clips must be (B, C, T, H, W), got shape {tuple(clips.shape)}")
    if order not in (0, 1, 2):
        raise ValueError(f"derivative order must be 0, 1 or 2, got {order}")
    d = torch.diff(clips, n=order, dim=_TIME) if order else clips
    if length is not None:
        if not 1 <= length <= d.shape[_TIME]:
            raise ValueError(f"cannot crop {d.shape[_TIME]} frames of the order-{order} derivative to {length}")
        d = d.narrow(_TIME, 0, length)
    return d


def standardize_clips(clips: Tensor, eps: float = 1e-5) -> Tensor:
    """Zero mean, unit variance per clip (over C, T, H, W): derivatives and frames on one scale."""
    dims = tuple(range(1, clips.dim()))
    mean = clips.mean(dims, keepdim=True)
    std = clips.std(dims, keepdim=True, unbiased=False)
    return (clips - mean) / (std + eps)


def derivative_view(clips: Tensor, order: int) -> Tensor:
    """The encoder input of one order: derivative of an augmented clip, first ``T - SPARE_FRAMES`` frames, standardised."""
    length = clips.shape[_TIME] - SPARE_FRAMES
    if length < 1:
        raise ValueError(f"training clips need more than {SPARE_FRAMES} frames (the spare frames of order 2), got {clips.shape[_TIME]}")
    return standardize_clips(temporal_derivative(clips, order, length))


def order_pairs(orders: list[int] | tuple[int, ...]) -> list[tuple[int, int]]:
    """The pairs the schedule visits: neighbouring orders first, then wider gaps ((0,1), (1,2), (0,2));
    a single order gives the plain base method's same-order pair."""
    orders = sorted(set(orders))
    if not orders or any(o not in (0, 1, 2) for o in orders):
        raise ValueError(f"orders must be a non-empty subset of (0, 1, 2), got {orders}")
    if len(orders) == 1:
        return [(orders[0], orders[0])]
    pairs = [(a, b) for i, a in enumerate(orders) for b in orders[i + 1 :]]
    return sorted(pairs, key=lambda p: (p[1] - p[0], p[0]))


def pair_for_step(step: int, pairs: list[tuple[int, int]]) -> tuple[int, int]:
    """Balanced alternating learning: step ``s`` trains pair ``s mod len(pairs)``, so every pair gets an equal share."""
    return pairs[step % len(pairs)]


def knn_accuracy(bank: Tensor, bank_labels: Tensor, queries: Tensor, labels: Tensor, k: int = 5) -> Tensor:
    """Cosine k-nearest-neighbour accuracy of ``queries`` against a labelled feature bank (majority vote,
    ties to the smallest label)."""
    if k < 1 or k > len(bank):
        raise ValueError(f"k must be in [1, {len(bank)}] (bank size), got {k}")
    sim = F.normalize(queries.float(), dim=1) @ F.normalize(bank.float(), dim=1).T
    neighbours = bank_labels[sim.topk(k, dim=1).indices]  # (Q, k)
    num_classes = int(max(bank_labels.max(), labels.max())) + 1
    votes = F.one_hot(neighbours, num_classes).sum(1)
    return (votes.argmax(1) == labels).float().mean()


class TemporalDerivatives(nn.Module):
    """The views of a clip: ``{order: derivative_view(clip, order)}`` for each requested order (one transform)."""

    def __init__(self, orders: list[int] | tuple[int, ...] = (0, 1, 2)) -> None:
        super().__init__()
        order_pairs(orders)  # validates
        self.orders = sorted(set(orders))

    def forward(self, clips: Tensor) -> dict[int, Tensor]:
        return {o: derivative_view(clips, o) for o in self.orders}

    def extra_repr(self) -> str:
        return f"orders={self.orders}"


# ------------------------------------------------------------------------------------- the encoder
class _Tiny3DCNN(nn.Module):
    """Two 3x3x3 convolutions (``width // 2`` then ``width`` channels), ReLU, global average pool."""

    def __init__(self, in_chans: int, width: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv3d(in_chans, width // 2, 3, padding=1),
            nn.ReLU(),
            nn.Conv3d(width // 2, width, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool3d(1),
            nn.Flatten(),
        )
        self.num_features = width

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


_TORCHVISION_VIDEO = ("r3d_18", "r2plus1d_18", "mc3_18")


def build_video_encoder(backbone: str, in_chans: int = 3, width: int = 16) -> nn.Module:
    """``tiny3d`` (the CPU check's encoder) or a torchvision video ResNet (random init, head removed);
    the result has ``num_features``."""
    if backbone == "tiny3d":
        return _Tiny3DCNN(in_chans, width)
    if backbone in _TORCHVISION_VIDEO:
        from torchvision.models import video

        model = getattr(video, backbone)(weights=None)
        if in_chans != 3:
            stem = model.stem[0]
            model.stem[0] = nn.Conv3d(in_chans, stem.out_channels, stem.kernel_size, stem.stride, stem.padding, bias=False)
        model.num_features = model.fc.in_features
        model.fc = nn.Identity()
        return model
    raise ValueError(f"unknown video backbone {backbone!r}: use 'tiny3d' or one of {_TORCHVISION_VIDEO}")


# ------------------------------------------------------------------------------------- the module
class ViDiDi(ZooModule):
    """One video encoder trained on derivative-order pairs with VICReg, BYOL or SimCLR (lightly's losses and heads).

    Training batches ``(view1, view2, y)`` of ``(B, C, T + 2, H, W)`` augmented clips (labels unused);
    evaluation batches ``(clip, y)`` of original frames. ``forward(clip)`` returns the encoder's features.
    The DataModule must offer ``eval_train_dataloader()`` (the kNN bank): ``zoo.datamodules.MovingDigitsDataModule``
    and ``UCF101DataModule`` do.

    Args:
        backbone / in_chans / width: the encoder (:func:`build_video_encoder`; ``width`` for ``tiny3d``).
        base_method: ``vicreg | byol | simclr``.
        orders: derivative orders; ``[0]`` is the plain base method (the baseline).
        pairing: ``balanced_alternating`` (one pair per step, round-robin: the paper) or ``sum`` (every pair every step: ablation).
        proj_dims: projection head (hidden, output) widths; BYOL's predictor uses the same.
        sim_weight / var_weight / cov_weight: VICReg's lambda, mu, nu.
        tau: BYOL's starting EMA momentum.  temperature: SimCLR's.
        lr / weight_decay: Adam (AdamW when ``weight_decay > 0``).
        knn_k: neighbours of the evaluation kNN.
    """

    def __init__(
        self,
        backbone: str = "tiny3d",
        in_chans: int = 1,
        width: int = 16,
        base_method: str = "vicreg",
        orders: list[int] | None = None,
        pairing: str = "balanced_alternating",
        proj_dims: list[int] | None = None,
        sim_weight: float = 25.0,
        var_weight: float = 25.0,
        cov_weight: float = 1.0,
        tau: float = 0.99,
        temperature: float = 0.1,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        knn_k: int = 5,
    ) -> None:
        super().__init__()
        if base_method not in BASE_METHODS:
            raise ValueError(f"unknown base_method {base_method!r}; choose one of {BASE_METHODS}")
        if pairing not in PAIRINGS:
            raise ValueError(f"unknown pairing {pairing!r}; choose one of {PAIRINGS}")
        if not 0 <= tau <= 1 or temperature <= 0:
            raise ValueError(f"need 0 <= tau <= 1 and temperature > 0, got {tau}, {temperature}")
        orders = [0, 1, 2] if orders is None else list(orders)
        proj_dims = [128, 128] if proj_dims is None else list(proj_dims)
        if len(proj_dims) != 2:
            raise ValueError(f"proj_dims must be [hidden, output], got {proj_dims}")
        self.save_hyperparameters()
        self.pairs = order_pairs(orders)
        self.encoder = build_video_encoder(backbone, in_chans, width)
        feat, (hidden, out) = int(self.encoder.num_features), proj_dims  # type: ignore[arg-type]
        if base_method == "vicreg":
            self.projector: nn.Module = VICRegProjectionHead(feat, hidden, out, num_layers=2)
            self.criterion: nn.Module = VICRegLoss(sim_weight, var_weight, cov_weight)
        elif base_method == "simclr":
            self.projector = SimCLRProjectionHead(feat, hidden, out)
            self.criterion = NTXentLoss(temperature)
        else:
            self.projector = BYOLProjectionHead(feat, hidden, out)
            self.predictor = BYOLPredictionHead(out, hidden, out)
            self.target_encoder = copy.deepcopy(self.encoder)
            self.target_projector = copy.deepcopy(self.projector)
            deactivate_requires_grad(self.target_encoder)
            deactivate_requires_grad(self.target_projector)
            self.criterion = NegativeCosineSimilarity()
        self._bank: tuple[Tensor, Tensor] | None = None

    def forward(self, clips: Tensor) -> Tensor:
        """Encoder features of original frames (standardised per clip, as in training)."""
        return self.encoder(standardize_clips(clips))

    # ---------------------------------------------------------------------------- training
    def pair_loss(self, view1: Tensor, view2: Tensor, pair: tuple[int, int]) -> Tensor:
        """The base method's loss between view 1 at order ``pair[0]`` and view 2 at order ``pair[1]``."""
        a, b = derivative_view(view1, pair[0]), derivative_view(view2, pair[1])
        if self.hparams["base_method"] != "byol":
            return self.criterion(self.projector(self.encoder(a)), self.projector(self.encoder(b)))
        with torch.no_grad():
            ta, tb = self.target_projector(self.target_encoder(a)), self.target_projector(self.target_encoder(b))
        pa, pb = self.predictor(self.projector(self.encoder(a))), self.predictor(self.projector(self.encoder(b)))
        return 0.5 * (self.criterion(pa, tb) + self.criterion(pb, ta))  # BYOL's symmetrised loss

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        view1, view2 = batch[0], batch[1]
        if self.hparams["pairing"] == "balanced_alternating":
            pair = pair_for_step(self.global_step, self.pairs)
            loss = self.pair_loss(view1, view2, pair)
            self.log("train/pair", float(self.pairs.index(pair)))
        else:
            loss = torch.stack([self.pair_loss(view1, view2, p) for p in self.pairs]).mean()
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.hparams["base_method"] == "byol":  # target = EMA of the one shared encoder (cosine momentum, lightly)
            total = max(int(self.trainer.estimated_stepping_batches), 1)
            step = min(max(self.global_step - 1, 0), total - 1)  # the optimizer step just taken: tau at the first
            m = cosine_schedule(step, total, self.hparams["tau"], 1.0)
            update_momentum(self.encoder, self.target_encoder, m)
            update_momentum(self.projector, self.target_projector, m)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.parameters() if p.requires_grad]
        wd = self.hparams["weight_decay"]
        return torch.optim.AdamW(params, self.hparams["lr"], weight_decay=wd) if wd > 0 else torch.optim.Adam(params, self.hparams["lr"])

    # ----------------------------------------------------------------------------- evaluation
    def _features(self, loader: Any) -> tuple[Tensor, Tensor]:
        feats, labels = [], []
        was_training = self.training
        self.eval()
        with torch.no_grad():
            for x, y in loader:
                feats.append(self(x.to(self.device)).float())
                labels.append(y.to(self.device))
        self.train(was_training)
        return torch.cat(feats), torch.cat(labels)

    def _build_bank(self) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if not callable(getattr(dm, "eval_train_dataloader", None)):
            raise RuntimeError(
                "ViDiDi's kNN evaluation needs a DataModule with eval_train_dataloader() (the training clips, original frames): "
                "use zoo.datamodules.MovingDigitsDataModule or UCF101DataModule"
            )
        self._bank = self._features(dm.eval_train_dataloader())  # type: ignore[union-attr]

    def on_validation_epoch_start(self) -> None:
        self._bank = None if self.trainer.sanity_checking else self._bank
        self._build_bank()

    def on_test_epoch_start(self) -> None:
        self._build_bank()

    def _eval_step(self, batch: Any, stage: str) -> None:
        x, y = batch[0], batch[1]
        assert self._bank is not None
        k = min(self.hparams["knn_k"], len(self._bank[0]))
        self.log(f"{stage}/knn_acc", knn_accuracy(*self._bank, self(x), y, k), batch_size=len(y))

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "test")
