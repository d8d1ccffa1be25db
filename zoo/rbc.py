"""Red Blood Cell Segmentation with Overlapping Cell Separation and Classification on Imbalanced Dataset.

Naruenatthanaset, Chalidabhongse, Palasuwan, Anantrasirichai, Palasuwan (2020),
arXiv 2012.01321. No code was released for the method; the data is the Chula RBC-12 release
(github.com/Chula-PIC-Lab/Chula-RBC-12-Dataset), loaded by :class:`zoo.datamodules.ChulaRBC12DataModule`.

Two parts. **Separation** (:class:`RBCEllipseSegmenter`, no learning): Otsu foreground, filled
holes, small objects removed; per connected component the outer contour, its concave points
(contour points deeper than ``concavity_depth`` px inside the convex hull, the deepest of each
run), the contour split at them, short segments dropped, adjacent segments merged while their
joint ellipse fits well, and a *directed* direct least-squares ellipse (Fitzgibbon; scikit-image's
``EllipseModel``) per segment, kept only when its centre lies inside the clump and its axes are
cell-sized. Each ellipse is one cell, cropped at its native size for the classifier.
**Classification** (:class:`RBCClassifier`): a timm EfficientNet-B1 by default, trained with
class-weighted cross-entropy ``w_c = N / (K n_c)`` ("weight balancing") and augmentation.

Choices where the paper is silent or the zoo differs:

- the paper states no concavity threshold, segment length or merge rule; the defaults
  (depth 1 px, 10 points, joint-fit mean residual < 0.6 px, semi-axes 6-24 px, axis ratio <= 3)
  are those an independent CPU check measured on synthetic clumps (cards/rbc/README.md);
- a component is one cell only when it has no concave point: solidity alone (>= 0.95) merges
  heavily overlapping pairs, whose solidity is 0.955-0.965 (count rate 0.81 in that check);
- a clump with one concave point is fitted as one ellipse (nothing to split at), and a
  component whose segments give no acceptable ellipse falls back to one fit of its contour;
- crops are cut at the cell's native size around the ellipse centre (no resize: micro- and
  macrocytes are defined by size), pixels outside the ellipse set to the background;
- ``pretrained=False`` by default (nothing downloads at run time); the paper fine-tunes ImageNet
  weights: set ``pretrained: true`` with internet.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi
from scipy.optimize import linear_sum_assignment
from scipy.spatial import ConvexHull, QhullError
from skimage import color, feature, filters, measure, morphology, segmentation
from torch import Tensor

from zoo.hub import ZooModule
from zoo.nn.backbones import build_backbone
from zoo.templates.classifier import ClassifierModule

__all__ = [
    "Ellipse",
    "RBCEllipseSegmenter",
    "RBCClassifier",
    "SeparationCheck",
    "SEPARATION_METHODS",
    "AUGMENTATIONS",
    "foreground_mask",
    "hull_depth",
    "concave_points",
    "split_contour",
    "fit_ellipse",
    "ellipse_distance",
    "ellipse_mask",
    "watershed_cells",
    "component_cells",
    "matched_iou",
    "class_weights",
    "augment_batch",
    "f1_from_confusion",
]

AUGMENTATIONS = ("hflip", "vflip", "rot90", "shift")
SEPARATION_METHODS = ("ellipse", "watershed", "components")


# ------------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class Ellipse:
    """One cell: centre ``(row, col)``, semi-axes ``a, b`` and angle ``theta`` (``EllipseModel``'s, on (row, col) points)."""

    row: float
    col: float
    a: float
    b: float
    theta: float

    @property
    def area(self) -> float:
        return float(np.pi * self.a * self.b)


def foreground_mask(image: np.ndarray, threshold: str | float = "otsu", min_area: int = 50, sigma: float = 1.0, dark_cells: bool = True) -> np.ndarray:
    """Step 1: single channel (grey), Gaussian blur, Otsu (or fixed) threshold, holes filled, small objects removed.

    A boolean image is taken as the mask itself. ``dark_cells``: cells are darker than the
    background, as in stained smears.
    """
    if image.ndim not in (2, 3):
        raise ValueError(f"image must be (H, W) or (H, W, 3), got shape {image.shape}")
    if image.dtype == bool:
        mask = image.copy()
    else:
        grey = color.rgb2gray(image[..., :3]) if image.ndim == 3 else image.astype(np.float64)
        grey = filters.gaussian(grey, sigma=sigma) if sigma > 0 else grey
        t = filters.threshold_otsu(grey) if threshold == "otsu" else float(threshold)
        mask = grey < t if dark_cells else grey > t
    mask = ndi.binary_fill_holes(mask)
    return morphology.remove_small_objects(mask, max_size=max(min_area - 1, 0))


def hull_depth(contour: np.ndarray) -> np.ndarray:
    """Distance of each contour point inside the convex hull to the hull's boundary (0 on the hull), step 3."""
    try:
        hull = ConvexHull(contour)
    except QhullError:  # degenerate (collinear) contour: no concavity
        return np.zeros(len(contour))
    # for a convex polygon, an inside point's distance to the boundary is its least distance to an edge's line
    normals, offsets = hull.equations[:, :2], hull.equations[:, 2]  # n.x + o <= 0 inside, |n| = 1
    return np.clip(-(contour @ normals.T + offsets), 0, None).min(axis=1)


def concave_points(contour: np.ndarray, depth: float = 1.0) -> np.ndarray:
    """Step 3: indices of concave points, the deepest point of each (cyclic) run deeper than ``depth`` px."""
    d = hull_depth(contour)
    deep = d > depth
    if not deep.any():
        return np.zeros(0, dtype=int)
    if deep.all():
        return np.array([int(d.argmax())])
    start = int(np.flatnonzero(~deep)[0])  # roll so that no run wraps around the end
    order = np.roll(np.arange(len(d)), -start)
    runs, current = [], []
    for i in order:
        if deep[i]:
            current.append(i)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return np.array(sorted(int(r[np.argmax(d[r])]) for r in runs), dtype=int)


def split_contour(contour: np.ndarray, cuts: np.ndarray, min_segment_len: int = 10) -> list[np.ndarray]:
    """Step 4: the closed contour cut at ``cuts`` into arcs (in order), arcs under ``min_segment_len`` points dropped."""
    if len(cuts) < 2:
        return [contour] if len(contour) >= min_segment_len else []
    cuts = np.sort(cuts)
    segments = [contour[cuts[i] : cuts[i + 1] + 1] for i in range(len(cuts) - 1)]
    segments.append(np.concatenate([contour[cuts[-1] :], contour[: cuts[0] + 1]]))
    return [s for s in segments if len(s) >= min_segment_len]


def fit_ellipse(points: np.ndarray) -> tuple[Ellipse | None, float]:
    """Direct least-squares ellipse (Fitzgibbon et al. 1999, scikit-image's ``EllipseModel``) and its mean residual."""
    if len(points) < 5:
        return None, float("inf")
    model = measure.EllipseModel.from_estimate(points)
    if not model:
        return None, float("inf")
    (r, c), (a, b), theta = model.center, model.axis_lengths, model.theta
    if not np.all(np.isfinite([r, c, a, b, theta])) or min(a, b) <= 0:
        return None, float("inf")
    e = Ellipse(float(r), float(c), float(a), float(b), float(theta))
    return e, float(ellipse_distance(e, points).mean())


def ellipse_distance(e: Ellipse, points: np.ndarray) -> np.ndarray:
    """Sampson's first-order distance ``|F| / |grad F|`` of ``(row, col)`` points to the ellipse ``F = (u/a)^2 + (v/b)^2 - 1 = 0``.

    Close to the true point-to-ellipse distance near the curve, and closed-form (``EllipseModel.residuals``
    solves one optimisation per point, 30x slower on a whole image).
    """
    dr, dc = points[:, 0] - e.row, points[:, 1] - e.col
    u = dr * np.cos(e.theta) + dc * np.sin(e.theta)
    v = -dr * np.sin(e.theta) + dc * np.cos(e.theta)
    f = (u / e.a) ** 2 + (v / e.b) ** 2 - 1
    grad = 2 * np.hypot(u / e.a**2, v / e.b**2)
    return np.abs(f) / np.maximum(grad, 1e-12)


def ellipse_mask(e: Ellipse, shape: tuple[int, int]) -> np.ndarray:
    """Pixels ``(r, c)`` with ``(u/a)^2 + (v/b)^2 <= 1`` in the ellipse's frame (the rasterised cell)."""
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    dr, dc = rr - e.row, cc - e.col
    u = dr * np.cos(e.theta) + dc * np.sin(e.theta)
    v = -dr * np.sin(e.theta) + dc * np.cos(e.theta)
    return (u / max(e.a, 1e-9)) ** 2 + (v / max(e.b, 1e-9)) ** 2 <= 1


# ------------------------------------------------------------------------------ separator
class RBCEllipseSegmenter:
    """Overlapping-cell separation by concave points and directed ellipse fitting: an image -> one ellipse per cell.

    Args:
        threshold: ``"otsu"`` or a fixed grey level for the foreground (step 1).
        min_area: components with fewer pixels are dropped (debris).
        concavity_depth: a contour point is concave when deeper than this (px) inside the convex hull.
        min_segment_len: contour arcs with fewer points are dropped (step 4).
        merge_residual: adjacent arcs are merged while their joint fit's mean residual (px) is below this.
        min_axis / max_axis: accepted semi-axis range (px), the plausible cell size.
        max_axis_ratio: accepted ratio of the long to the short semi-axis.
        single_solidity: a component without concave points and at least this solid is one cell.
        sigma: Gaussian blur before thresholding; dark_cells: cells darker than the background.
    """

    def __init__(
        self,
        threshold: str | float = "otsu",
        min_area: int = 50,
        concavity_depth: float = 1.0,
        min_segment_len: int = 10,
        merge_residual: float = 0.6,
        min_axis: float = 6.0,
        max_axis: float = 24.0,
        max_axis_ratio: float = 3.0,
        single_solidity: float = 0.98,
        sigma: float = 1.0,
        dark_cells: bool = True,
    ) -> None:
        if threshold != "otsu" and not isinstance(threshold, (int, float)):
            raise ValueError(f"threshold must be 'otsu' or a number, got {threshold!r}")
        if not 0 < min_axis < max_axis:
            raise ValueError(f"need 0 < min_axis < max_axis, got {min_axis}, {max_axis}")
        if max_axis_ratio < 1 or concavity_depth <= 0 or min_segment_len < 5:
            raise ValueError("max_axis_ratio must be >= 1, concavity_depth > 0 and min_segment_len >= 5 (an ellipse needs 5 points)")
        self.threshold, self.min_area, self.sigma, self.dark_cells = threshold, min_area, sigma, dark_cells
        self.concavity_depth, self.min_segment_len, self.merge_residual = concavity_depth, min_segment_len, merge_residual
        self.min_axis, self.max_axis, self.max_axis_ratio, self.single_solidity = min_axis, max_axis, max_axis_ratio, single_solidity

    def plausible(self, e: Ellipse | None, clump: np.ndarray) -> bool:
        """Step 5's direction: centre inside the clump (the arc's concave side), cell-sized axes, bounded axis ratio."""
        if e is None:
            return False
        r, c = int(round(e.row)), int(round(e.col))
        inside = 0 <= r < clump.shape[0] and 0 <= c < clump.shape[1] and bool(clump[r, c])
        lo, hi = min(e.a, e.b), max(e.a, e.b)
        return inside and lo >= self.min_axis and hi <= self.max_axis and hi <= self.max_axis_ratio * lo

    def _merge(self, segments: list[np.ndarray]) -> list[np.ndarray]:
        """Step 5's grouping: merge cyclically adjacent arcs while one ellipse fits both within ``merge_residual``."""
        segments = list(segments)
        merged = True
        while merged and len(segments) > 1:
            merged = False
            for i in range(len(segments)):
                j = (i + 1) % len(segments)
                joint = np.concatenate([segments[i], segments[j]])
                if fit_ellipse(joint)[1] < self.merge_residual:
                    segments[i] = joint
                    del segments[j]
                    merged = True
                    break
        return segments

    def separate(self, clump: np.ndarray) -> list[Ellipse]:
        """Steps 2-5 on one connected component (a boolean mask): its cells as ellipses."""
        padded = np.pad(clump, 1)
        contours = measure.find_contours(padded.astype(np.float64), 0.5)
        if not contours:
            return []
        contour = max(contours, key=len)[:-1] - 1  # closed: drop the repeated last point; undo the padding
        cuts = concave_points(contour, self.concavity_depth)
        cells: list[Ellipse] = []
        if len(cuts) > 0 or measure.regionprops(clump.astype(np.uint8))[0].solidity < self.single_solidity:
            cells = [e for s in self._merge(split_contour(contour, cuts, self.min_segment_len)) if self.plausible(e := fit_ellipse(s)[0], clump)]
        if not cells:  # one convex cell, or no acceptable arc: one ellipse for the whole contour
            whole = fit_ellipse(contour)[0]
            cells = [whole] if whole is not None else []
        return cells

    def __call__(self, image: np.ndarray) -> list[Ellipse]:
        """All cells of a smear image (or a boolean mask), as ellipses in image coordinates."""
        labels = measure.label(foreground_mask(image, self.threshold, self.min_area, self.sigma, self.dark_cells))
        cells: list[Ellipse] = []
        for region in measure.regionprops(labels):
            r0, c0, _, _ = region.bbox
            for e in self.separate(region.image):
                cells.append(Ellipse(e.row + r0, e.col + c0, e.a, e.b, e.theta))
        return cells

    def crops(self, image: np.ndarray, size: int = 80, background: float | None = None) -> tuple[np.ndarray, list[Ellipse]]:
        """Step 6: one ``size x size`` crop per cell at native scale, centred on its ellipse, outside pixels set to background."""
        cells = self(image)
        img = image if image.ndim == 3 else image[..., None]
        fill = np.median(img.reshape(-1, img.shape[-1]), axis=0) if background is None else np.full(img.shape[-1], background)
        half = size // 2
        padded = np.empty((img.shape[0] + size, img.shape[1] + size, img.shape[-1]), dtype=img.dtype)
        padded[:] = fill
        padded[half : half + img.shape[0], half : half + img.shape[1]] = img
        out = np.empty((len(cells), size, size, img.shape[-1]), dtype=img.dtype)
        for k, e in enumerate(cells):
            r, c = int(round(e.row)), int(round(e.col))
            window = padded[r : r + size, c : c + size].copy()
            local = Ellipse(e.row - r + half, e.col - c + half, e.a, e.b, e.theta)
            window[~ellipse_mask(local, (size, size))] = fill.astype(img.dtype)
            out[k] = window
        return (out if image.ndim == 3 else out[..., 0]), cells


# ------------------------------------------------------------------ baselines and scoring
def watershed_cells(mask: np.ndarray, min_distance: int = 5) -> np.ndarray:
    """The baseline: watershed of the negated distance transform from its local maxima; a label image."""
    distance = ndi.distance_transform_edt(mask)
    labels_cc = measure.label(mask)
    peaks = feature.peak_local_max(distance, min_distance=min_distance, labels=labels_cc, exclude_border=False)
    markers = np.zeros(mask.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return segmentation.watershed(-distance, markers, mask=mask)


def component_cells(mask: np.ndarray) -> np.ndarray:
    """The trivial baseline: each connected component is one cell (never splits a clump); a label image."""
    return measure.label(mask)


def matched_iou(pred: Sequence[np.ndarray], true: Sequence[np.ndarray]) -> float:
    """Sum of IoUs of the Hungarian-matched (pred, true) mask pairs over the number of true cells (a missed cell scores 0)."""
    if not true:
        raise ValueError("matched_iou needs at least one true cell")
    if not pred:
        return 0.0
    iou = np.zeros((len(pred), len(true)))
    for i, p in enumerate(pred):
        for j, t in enumerate(true):
            union = np.logical_or(p, t).sum()
            iou[i, j] = np.logical_and(p, t).sum() / union if union else 0.0
    rows, cols = linear_sum_assignment(-iou)
    return float(iou[rows, cols].sum() / len(true))


# ----------------------------------------------------------------------- classification
def class_weights(counts: Tensor) -> Tensor:
    """Weight balancing ``w_c = N / (K n_c)`` from training counts (sklearn's ``compute_class_weight('balanced')``)."""
    counts = counts.double()
    if (counts < 0).any() or counts.sum() <= 0:
        raise ValueError(f"class counts must be non-negative with a positive total, got {counts.tolist()}")
    return (counts.sum() / (len(counts) * counts.clamp_min(1))).float()


def augment_batch(x: Tensor, ops: Sequence[str], max_shift: int = 1, generator: torch.Generator | None = None) -> Tensor:
    """Label-preserving augmentation per example: random flips, 90-degree turns and shifts of up to ``max_shift`` px (zero fill).

    No scaling: cell classes such as micro- and macrocyte are defined by absolute size.
    """
    unknown = set(ops) - set(AUGMENTATIONS)
    if unknown:
        raise ValueError(f"unknown augmentations {sorted(unknown)}; choose from {AUGMENTATIONS}")
    n = x.shape[0]

    def coin() -> Tensor:
        return (torch.rand(n, generator=generator) < 0.5).to(x.device).view(n, 1, 1, 1)

    if "hflip" in ops:
        x = torch.where(coin(), x.flip(-1), x)
    if "vflip" in ops:
        x = torch.where(coin(), x.flip(-2), x)
    if "rot90" in ops and x.shape[-1] == x.shape[-2]:
        x = torch.where(coin(), x.rot90(1, (-2, -1)), x)
    if "shift" in ops and max_shift > 0:
        s, (h, w) = max_shift, x.shape[-2:]
        xp = F.pad(x, (s, s, s, s))
        dr, dc = (torch.randint(0, 2 * s + 1, (2, n), generator=generator)).to(x.device)
        rows = (torch.arange(h, device=x.device) + dr[:, None])[:, :, None]  # (n, h, 1)
        cols = (torch.arange(w, device=x.device) + dc[:, None])[:, None, :]  # (n, 1, w)
        x = xp[torch.arange(n, device=x.device)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)
    return x


def f1_from_confusion(confusion: Tensor) -> Tensor:
    """Per-class F1 ``2 TP / (2 TP + FP + FN)`` from a ``(C, C)`` confusion matrix (0 where a class is never seen nor predicted)."""
    cm = confusion.double()
    tp = cm.diagonal()
    denom = 2 * tp + (cm.sum(0) - tp) + (cm.sum(1) - tp)
    return torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.zeros_like(tp))


class RBCClassifier(ClassifierModule):
    """A cell classifier with weight balancing and augmentation, logging macro and minority F1 besides the base's accuracies.

    Args:
        backbone: a timm name (``efficientnet_b1``, the paper's best) or ``cnn`` / ``mlp``.
        num_classes: cell classes (12 in the paper; 13 with the release's extra class).
        in_chans: image channels (3 for smears, 1 for digits).
        pretrained: timm ImageNet weights (needs the Hub; the paper fine-tunes them).
        class_weighting: ``inverse_frequency`` (``w_c = N / (K n_c)`` from the training counts) or ``none``.
        augment: augmentations applied to each training batch, from ``hflip vflip rot90 shift``.
        max_shift: largest shift (px) of ``shift``.
        lr / weight_decay: Adam settings.
        minority_classes: ``{stage}/minority_f1`` averages F1 over this many rarest training classes.
        many_shot / few_shot: the base's Many / Few thresholds (training examples per class) at this data's scale.

    Training counts come from the DataModule's ``train_class_counts()`` at setup (kept in a buffer,
    so a loaded model keeps its weights); ``set_class_counts`` sets them by hand.
    """

    prog_bar_metric = "balanced_acc"

    def __init__(
        self,
        backbone: str = "efficientnet_b1",
        num_classes: int = 12,
        in_chans: int = 3,
        pretrained: bool = False,
        class_weighting: str = "inverse_frequency",
        augment: list[str] | None = None,
        max_shift: int = 4,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        minority_classes: int = 3,
        many_shot: int = 100,
        few_shot: int = 20,
    ) -> None:
        super().__init__(num_classes)
        if class_weighting not in ("inverse_frequency", "none"):
            raise ValueError(f"class_weighting must be 'inverse_frequency' or 'none', got {class_weighting!r}")
        augment = list(AUGMENTATIONS) if augment is None else list(augment)
        unknown = set(augment) - set(AUGMENTATIONS)
        if unknown:
            raise ValueError(f"unknown augmentations {sorted(unknown)}; choose from {AUGMENTATIONS}")
        if not 1 <= minority_classes <= num_classes:
            raise ValueError(f"minority_classes must lie in [1, num_classes={num_classes}], got {minority_classes}")
        self.save_hyperparameters()
        self.augment = augment
        self.shot_thresholds = (many_shot, few_shot)
        self.net = build_backbone(backbone, num_classes, in_chans=in_chans, pretrained=pretrained)
        self.register_buffer("class_counts", torch.zeros(num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def set_class_counts(self, counts: Sequence[int] | Tensor) -> None:
        """Training examples per class: the class weights and the minority classes follow from them."""
        counts = torch.as_tensor(counts, dtype=torch.float32).flatten()
        if counts.numel() != self.num_classes:
            raise ValueError(f"got {counts.numel()} class counts for num_classes={self.num_classes}")
        self.class_counts.copy_(counts.to(self.class_counts))

    def setup(self, stage: str) -> None:
        super().setup(stage)  # Many / Medium / Few groups
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        counts = getattr(datamodule, "train_class_counts", None)
        if callable(counts):
            self.set_class_counts(counts())
        elif self.hparams["class_weighting"] != "none" and stage == "fit" and self.class_counts.sum() == 0:
            raise ValueError(
                "class_weighting='inverse_frequency' needs training counts: give the DataModule a train_class_counts() method or call set_class_counts()"
            )

    def loss_weights(self) -> Tensor | None:
        """The cross-entropy's class weights (None without weighting)."""
        return class_weights(self.class_counts) if self.hparams["class_weighting"] != "none" else None

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        if self.augment:
            x = augment_batch(x, self.augment, self.hparams["max_shift"])
        loss = F.cross_entropy(self(x), y, weight=self.loss_weights())
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def compute_metrics(self, stage: str) -> dict[str, Tensor]:
        """The base's accuracies plus ``{stage}/macro_f1`` and ``{stage}/minority_f1`` (F1 of the rarest training classes)."""
        key = f"{stage}_0"
        extra: dict[str, Tensor] = {}
        if key in self.class_metrics and self.class_metrics[key].update_called:
            f1 = f1_from_confusion(self.class_metrics[key].compute())
            extra[f"{stage}/macro_f1"] = f1.mean()
            if self.class_counts.sum() > 0:
                rare = torch.argsort(self.class_counts, stable=True)[: self.hparams["minority_classes"]]
                extra[f"{stage}/minority_f1"] = f1[rare.to(f1.device)].mean()
        return {**super().compute_metrics(stage), **extra}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams["lr"], weight_decay=self.hparams["weight_decay"])


class SeparationCheck(ZooModule):
    """A separator scored through Lightning, for the claim: ``test/count_rate`` and ``test/iou`` over labelled masks.

    Nothing is learned (``fit`` is a no-op). A test batch is ``(masks (N, H, W), truth (N, K, H, W))``
    with ``K`` true cells per image (:class:`zoo.datamodules.OverlappingCellsDataModule`). Per
    image: count correct when the method finds exactly ``K`` cells; IoU from :func:`matched_iou`
    against the *full* true cells (the occluded part included). ``test/cells`` is the mean count.

    Args:
        method: ``ellipse`` (:class:`RBCEllipseSegmenter` with its defaults), ``watershed``
            (:func:`watershed_cells`) or ``components`` (:func:`component_cells`).
        min_distance: the watershed's peak separation (px).
    """

    def __init__(self, method: str = "ellipse", min_distance: int = 5) -> None:
        super().__init__()
        if method not in SEPARATION_METHODS:
            raise ValueError(f"method must be one of {SEPARATION_METHODS}, got {method!r}")
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.segmenter = RBCEllipseSegmenter()

    def cell_masks(self, mask: np.ndarray) -> list[np.ndarray]:
        """The method's cells in one boolean image, as boolean masks."""
        method = self.hparams["method"]
        if method == "ellipse":
            return [ellipse_mask(e, mask.shape) for e in self.segmenter(mask)]
        labels = watershed_cells(mask, self.hparams["min_distance"]) if method == "watershed" else component_cells(mask)
        return [labels == k for k in range(1, int(labels.max()) + 1)]

    def forward(self, masks: Tensor) -> Tensor:
        """The number of cells found in each of ``(N, H, W)`` masks."""
        return torch.tensor([len(self.cell_masks(m)) for m in masks.bool().cpu().numpy()])

    def training_step(self, batch: Any, batch_idx: int) -> None:
        return None

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        masks, truth = batch
        counts, ious = [], []
        for mask, cells in zip(masks.bool().cpu().numpy(), truth.bool().cpu().numpy()):
            found = self.cell_masks(mask)
            counts.append(float(len(found) == len(cells)))
            ious.append(matched_iou(found, list(cells)))
        n = len(counts)
        self.log("test/count_rate", float(np.mean(counts)), batch_size=n)
        self.log("test/iou", float(np.mean(ious)), batch_size=n)

    def configure_optimizers(self) -> None:
        return None
