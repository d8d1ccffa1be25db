"""zoo.rbc: the separator's geometry against hand-built shapes and scikit-image, the classifier's loss and F1 against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer
from skimage import draw
from sklearn.metrics import f1_score
from sklearn.utils.class_weight import compute_class_weight

from zoo.datamodules import OverlappingCellsDataModule, ShuffledTailDigitsDataModule
from zoo.rbc import (
    Ellipse,
    RBCClassifier,
    RBCEllipseSegmenter,
    SeparationCheck,
    augment_batch,
    class_weights,
    component_cells,
    concave_points,
    ellipse_distance,
    ellipse_mask,
    f1_from_confusion,
    fit_ellipse,
    hull_depth,
    matched_iou,
    split_contour,
    watershed_cells,
)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _polygon(vertices: list[tuple[float, float]], step: float = 0.25) -> np.ndarray:
    """Points every ``step`` along a closed polygon (no repeated end point)."""
    pts = []
    for (r0, c0), (r1, c1) in zip(vertices, vertices[1:] + vertices[:1]):
        n = max(int(np.hypot(r1 - r0, c1 - c0) / step), 1)
        t = np.arange(n) / n
        pts.append(np.c_[r0 + t * (r1 - r0), c0 + t * (c1 - c0)])
    return np.concatenate(pts)


def _disc_mask(cells: list[tuple[float, float, float, float, float]], shape: tuple[int, int] = (80, 80)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    for r, c, a, b, rot in cells:
        rr, cc = draw.ellipse(r, c, a, b, shape=shape, rotation=rot)
        mask[rr, cc] = True
    return mask


# ------------------------------------------------------------------------------ geometry
def test_hull_depth_and_concave_points_on_a_notched_square() -> None:
    # a 20x20 square with a V notch in its top edge, 6 deep at column 10: the only concavity
    contour = _polygon([(0, 0), (0, 7), (6, 10), (0, 13), (0, 20), (20, 20), (20, 0)])
    depth = hull_depth(contour)
    tip = int(np.argmin(np.hypot(contour[:, 0] - 6, contour[:, 1] - 10)))
    assert depth[tip] == pytest.approx(6.0) and depth.max() == pytest.approx(6.0)
    on_edges = np.isclose(contour[:, 0], 20) | np.isclose(contour[:, 1], 0) | np.isclose(contour[:, 1], 20)
    assert np.allclose(depth[on_edges], 0)
    assert concave_points(contour, depth=1.0).tolist() == [tip]
    # two notches -> two concave points; a convex contour -> none
    two = _polygon([(0, 0), (0, 7), (6, 10), (0, 13), (0, 20), (20, 20), (20, 13), (14, 10), (20, 7), (20, 0)])
    assert len(concave_points(two, 1.0)) == 2
    t = np.linspace(0, 2 * np.pi, 200, endpoint=False)
    assert len(concave_points(np.c_[10 * np.cos(t), 5 * np.sin(t)], 0.5)) == 0


def test_split_contour_cuts_in_order_wraps_and_drops_short_arcs() -> None:
    contour = np.arange(40, dtype=float).repeat(2).reshape(40, 2)
    segs = split_contour(contour, np.array([30, 5, 12]), min_segment_len=5)
    assert [s[:, 0].tolist() for s in segs] == [list(range(5, 13)), list(range(12, 31)), [*range(30, 40), *range(0, 6)]]
    assert len(split_contour(contour, np.array([5, 8, 30]), min_segment_len=5)) == 2  # the 4-point arc 5..8 is dropped
    assert len(split_contour(contour, np.array([7]), min_segment_len=5)) == 1  # one cut: the whole contour


def test_fit_ellipse_recovers_parameters_and_sampson_distance_matches_brute_force() -> None:
    a, b, theta, r0, c0 = 12.0, 7.0, 0.4, 30.0, 25.0
    t = np.linspace(0, 2 * np.pi, 100, endpoint=False)
    u, v = a * np.cos(t), b * np.sin(t)
    pts = np.c_[r0 + u * np.cos(theta) - v * np.sin(theta), c0 + u * np.sin(theta) + v * np.cos(theta)]
    e, residual = fit_ellipse(pts[:40])  # an arc of 40 % of the curve is enough without noise
    assert e is not None and residual < 1e-6
    assert (e.row, e.col, e.a, e.b) == pytest.approx((r0, c0, a, b), abs=1e-6)
    assert np.isclose(np.cos(2 * (e.theta - theta)), 1)
    # near the curve, Sampson's distance is the true distance (brute force on a dense sampling)
    rng = np.random.default_rng(0)
    off = pts + rng.normal(0, 0.4, pts.shape)
    tt = np.linspace(0, 2 * np.pi, 20000, endpoint=False)
    uu, vv = a * np.cos(tt), b * np.sin(tt)
    curve = np.c_[r0 + uu * np.cos(theta) - vv * np.sin(theta), c0 + uu * np.sin(theta) + vv * np.cos(theta)]
    brute = np.sqrt(((off[:, None, :] - curve[None]) ** 2).sum(-1)).min(1)
    assert np.abs(ellipse_distance(e, off) - brute).max() < 0.1  # first order: within 0.1 px at up to ~1.2 px off
    assert fit_ellipse(pts[:4]) == (None, float("inf"))


def test_ellipse_mask_matches_skimage_draw() -> None:
    for e, rot in ((Ellipse(40, 30, 15, 8, 0.0), 0.0), (Ellipse(40, 30, 15, 8, np.pi / 2), np.pi / 2)):
        ours = ellipse_mask(e, (80, 80))
        rr, cc = draw.ellipse(40, 30, 15, 8, shape=(80, 80), rotation=0.0)
        ref = np.zeros((80, 80), dtype=bool)
        ref[rr, cc] = True
        if rot:  # theta = pi/2 swaps the axes: a runs along the columns
            ref = np.zeros((80, 80), dtype=bool)
            rr, cc = draw.ellipse(40, 30, 8, 15, shape=(80, 80))
            ref[rr, cc] = True
        assert (ours & ref).sum() / (ours | ref).sum() > 0.95


# ------------------------------------------------------------------------------ separator
def test_one_cell_is_one_ellipse_with_its_own_axes() -> None:
    cells = RBCEllipseSegmenter()(_disc_mask([(40, 40, 14, 9, 0.3)]))
    assert len(cells) == 1
    assert (cells[0].row, cells[0].col) == pytest.approx((40, 40), abs=0.6)
    assert sorted([cells[0].a, cells[0].b]) == pytest.approx([9, 14], abs=0.8)


def test_a_heavily_overlapping_pair_splits_where_solidity_alone_would_not() -> None:
    from skimage.measure import regionprops

    mask = _disc_mask([(40, 30, 13, 13, 0.0), (40, 46, 13, 13, 0.0)])  # centres 16 px apart, radii 13
    assert regionprops(mask.astype(np.uint8))[0].solidity > 0.95  # a solidity >= 0.95 rule calls it one cell
    cells = RBCEllipseSegmenter()(mask)
    assert len(cells) == 2
    truth = [_disc_mask([(40, 30, 13, 13, 0.0)]), _disc_mask([(40, 46, 13, 13, 0.0)])]
    assert matched_iou([ellipse_mask(e, mask.shape) for e in cells], truth) > 0.9  # the occluded arcs are recovered


def test_the_separator_reads_a_smear_and_crops_each_cell_at_native_size() -> None:
    rng = np.random.default_rng(0)
    mask = _disc_mask([(25, 25, 11, 11, 0.0), (25, 42, 11, 11, 0.0), (60, 60, 10, 8, 0.5)])
    smear = np.where(mask[..., None], [140, 60, 90], [225, 220, 215]).astype(float) + rng.normal(0, 4, (80, 80, 3))
    smear = smear.clip(0, 255).astype(np.uint8)
    seg = RBCEllipseSegmenter()
    assert len(seg(smear)) == 3
    crops, cells = seg.crops(smear, size=32)
    assert crops.shape == (3, 32, 32, 3) and crops.dtype == np.uint8 and len(cells) == 3
    assert (crops[:, 16, 16, 1] < 100).all() and (crops[:, 0, 0, 1] > 200).all()  # cell in the middle, background outside


def test_baselines_and_matched_iou_by_hand() -> None:
    a, b = _disc_mask([(40, 25, 12, 12, 0.0)]), _disc_mask([(40, 45, 12, 12, 0.0)])
    union = a | b
    assert component_cells(union).max() == 1  # never splits
    assert watershed_cells(union, min_distance=5).max() == 2
    assert matched_iou([a, b], [b, a]) == pytest.approx(1.0)
    expected = (a & union).sum() / union.sum() / 2  # one detection for two cells: the better match over two
    assert matched_iou([union], [a, b]) == pytest.approx(expected)
    assert matched_iou([], [a]) == 0.0


def test_invalid_segmenter_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="min_axis"):
        RBCEllipseSegmenter(min_axis=30, max_axis=20)
    with pytest.raises(ValueError, match="threshold"):
        RBCEllipseSegmenter(threshold="li")


def test_separation_check_scores_through_lightning() -> None:
    dm = OverlappingCellsDataModule(n_images=8, batch_size=4, seed=3)
    scores = {}
    for method in ("ellipse", "components"):
        trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
        (scores[method],) = trainer.test(SeparationCheck(method), datamodule=dm, verbose=False)
    assert scores["components"]["test/count_rate"] == 0.0
    assert scores["ellipse"]["test/count_rate"] >= 0.75 and scores["ellipse"]["test/iou"] > 0.85
    with pytest.raises(ValueError, match="method"):
        SeparationCheck("otsu")


# ------------------------------------------------------------------------- classification
def test_class_weights_are_sklearns_balanced_weights() -> None:
    y = np.repeat(np.arange(4), [50, 20, 5, 1])
    ours = class_weights(torch.tensor(np.bincount(y)))
    assert torch.allclose(ours, torch.tensor(compute_class_weight("balanced", classes=np.arange(4), y=y), dtype=torch.float32))


def test_f1_from_confusion_is_sklearns_per_class_f1() -> None:
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 5, 300), rng.integers(0, 5, 300)
    p[y == 2] = 2
    cm = torch.zeros(5, 5)
    np.add.at(cm.numpy(), (y, p), 1)
    assert np.allclose(f1_from_confusion(cm).numpy(), f1_score(y, p, average=None, labels=range(5)))


def test_augment_batch_flips_turns_and_shifts_by_at_most_one_pixel() -> None:
    x = torch.zeros(64, 1, 8, 8)
    x[:, 0, 3, 4] = 1.0
    shifted = augment_batch(x, ["shift"], max_shift=1, generator=torch.Generator().manual_seed(0))
    where = shifted[:, 0].flatten(1).argmax(1)
    rows, cols = where // 8, where % 8
    assert (shifted.sum((1, 2, 3)) == 1).all() and (abs(rows - 3) <= 1).all() and (abs(cols - 4) <= 1).all()
    assert len(set(zip(rows.tolist(), cols.tolist()))) == 9  # all 9 offsets are drawn
    img = torch.arange(16.0).view(1, 1, 4, 4).repeat(32, 1, 1, 1)
    out = augment_batch(img, ["hflip", "vflip", "rot90"], generator=torch.Generator().manual_seed(1))
    variants = [img[0].rot90(k, (-2, -1)) for k in range(4)] + [img[0].flip(-1).rot90(k, (-2, -1)) for k in range(4)]
    assert all(any(torch.equal(o, v) for v in variants) for o in out)  # only the dihedral images of the input
    with pytest.raises(ValueError, match="unknown augmentations"):
        augment_batch(img, ["zoom"])


def test_classifier_loss_is_weighted_cross_entropy_and_logs_minority_f1() -> None:
    dm = ShuffledTailDigitsDataModule(seed=0)
    model = RBCClassifier(backbone="cnn", num_classes=10, in_chans=1, augment=[], many_shot=60, few_shot=10)
    trainer = Trainer(
        max_epochs=1, limit_train_batches=2, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False
    )
    trainer.fit(model, datamodule=dm)
    counts = torch.tensor(dm.train_class_counts(), dtype=torch.float32)
    assert torch.equal(model.class_counts, counts)
    x, y = next(iter(dm.train_dataloader()))
    model.log = lambda *args, **kwargs: None  # training_step outside the loop
    expected = F.cross_entropy(model(x), y, weight=counts.sum() / (10 * counts))
    assert torch.allclose(model.training_step((x, y), 0), expected)
    del model.log
    (metrics,) = trainer.test(model, datamodule=dm, verbose=False)
    rare = torch.argsort(counts)[:3]
    preds, ys = [], []
    with torch.no_grad():
        for xb, yb in dm.test_dataloader():
            preds.append(model(xb).argmax(1))
            ys.append(yb)
    f1 = f1_score(torch.cat(ys), torch.cat(preds), average=None, labels=range(10))
    assert metrics["test/macro_f1"] == pytest.approx(f1.mean(), abs=1e-5)
    assert metrics["test/minority_f1"] == pytest.approx(f1[rare.numpy()].mean(), abs=1e-5)
    assert "test/few_acc" in metrics  # the base's Many / Medium / Few split at this data's thresholds


def test_classifier_refuses_bad_settings_and_weighting_without_counts() -> None:
    with pytest.raises(ValueError, match="class_weighting"):
        RBCClassifier(backbone="cnn", class_weighting="focal")
    with pytest.raises(ValueError, match="augmentations"):
        RBCClassifier(backbone="cnn", augment=["scale"])
    model = RBCClassifier(backbone="cnn", num_classes=10, in_chans=1)
    with pytest.raises(ValueError, match="train_class_counts"):
        model.setup("fit")
    with pytest.raises(ValueError, match="class counts"):
        model.set_class_counts([1, 2])
