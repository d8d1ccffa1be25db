"""Long-tailed partial-label multi-label data: the subsampling, hiding and samplers; COCO and VOC loaders
on fixture files written here in the real on-disk layouts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from zoo.datamodules.multilabel import (
    VOC_CLASSES,
    COCOPLTDataModule,
    SyntheticPLTDataModule,
    ThreeViewSampler,
    VOCPLTDataModule,
    cooccurrence_counts,
    hide_positives,
    longtail_multilabel_indices,
)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def test_longtail_keeps_samples_by_their_rarest_class() -> None:
    n = 20000
    labels = np.zeros((n, 3), dtype=int)
    labels[:, 0] = 1  # class 0 most frequent (rank 0), class 1 rank 1, class 2 rank 2
    labels[: n // 2, 1] = 1
    labels[: n // 4, 2] = 1
    keep = longtail_multilabel_indices(labels, imbalance_ratio=16, seed=0)
    kept = np.isin(np.arange(n), keep)
    assert kept[n // 2 :].all()  # only class 0: q = 1
    assert kept[n // 4 : n // 2].mean() == pytest.approx(16**-0.5, abs=0.02)  # min(q0, q1) = 1/4
    assert kept[: n // 4].mean() == pytest.approx(1 / 16, abs=0.01)
    with pytest.raises(ValueError, match="imbalance_ratio"):
        longtail_multilabel_indices(labels, 0.5, 0)


def test_hide_positives_only_removes_positives_at_the_rate() -> None:
    labels = (np.random.default_rng(0).random((4000, 5)) < 0.3).astype(int)
    hidden = hide_positives(labels, 0.4, seed=1)
    assert (hidden <= labels).all()
    assert 1 - hidden.sum() / labels.sum() == pytest.approx(0.4, abs=0.02)
    with pytest.raises(ValueError, match="missing_rate"):
        hide_positives(labels, 1.0, 0)


def test_cooccurrence_counts_match_a_loop() -> None:
    y = np.array([[1, 1, 0], [1, 0, 1], [1, 1, 1], [0, 0, 0]])
    expected = np.zeros((3, 3))
    for row in y:
        for i in range(3):
            for j in range(3):
                expected[i, j] += row[i] * row[j]
    np.testing.assert_array_equal(cooccurrence_counts(y), expected)


def test_three_view_sampler_favours_the_tail_in_the_reversed_view() -> None:
    labels = np.zeros((1000, 2), dtype=int)
    labels[:900, 0] = 1
    labels[900:, 1] = 1
    draws = np.array(list(ThreeViewSampler(labels, seed=0)))
    assert len(draws) == 1000 and sorted(draws[:, 0]) == list(range(1000))  # uniform: a permutation
    assert (draws[:, 1] >= 900).mean() == pytest.approx(0.9, abs=0.03)  # p(class) ∝ 1/n: 900 / (900 + 100)
    assert (draws[:, 2] >= 900).mean() == pytest.approx(0.5, abs=0.05)
    one = list(ThreeViewSampler(labels, seed=0, views=1))
    assert one == draws[:, 0].tolist()  # the same uniform stream with one view


def test_synthetic_plt_datamodule() -> None:
    dm = SyntheticPLTDataModule(n_train=300, n_val=50, n_test=200, num_classes=5, length=50, min_class_count=3, batch_size=16)
    dm.setup()
    counts = dm.train_class_counts()
    assert len(dm.train_set) == 300 and max(counts) > 2 * min(counts)
    assert dm.cooccurrence().diagonal().tolist() == counts
    batch = next(iter(dm.train_dataloader()))
    assert [tuple(t.shape) for t in batch] == [(16, 40), (16, 5)] * 3
    full = dm.test_set.tensors[1].sum(0)
    assert (full > 0).all()
    again = SyntheticPLTDataModule(n_train=300, n_val=50, n_test=200, num_classes=5, length=50, min_class_count=3, batch_size=16)
    again.setup()
    assert torch.equal(again.train_set.tensors[1], dm.train_set.tensors[1])
    with pytest.raises(ValueError, match="views"):
        SyntheticPLTDataModule(views=2)


def _jpeg(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((12, 16, 3), value, dtype=np.uint8)).save(path)


def write_coco(root: Path, n_train: int = 8, n_val: int = 4) -> None:
    """COCO 2017 layout: annotations/instances_{train,val}2017.json, train2017/ and val2017/ JPEGs."""
    categories = [{"id": i + 1 + (i >= 11), "name": f"c{i}"} for i in range(80)]  # COCO's ids skip some numbers
    for split, n in (("train2017", n_train), ("val2017", n_val)):
        images, annotations = [], []
        for k in range(n):
            images.append({"id": 100 + k, "file_name": f"{100 + k:012d}.jpg", "height": 12, "width": 16})
            _jpeg(root / split / f"{100 + k:012d}.jpg", 10 * k)
            for c in {0, k % 80, (3 * k) % 80}:
                annotations.append({"id": len(annotations), "image_id": 100 + k, "category_id": categories[c]["id"]})
        images.append({"id": 999, "file_name": "999.jpg", "height": 12, "width": 16})  # an image without objects
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"instances_{split}.json").write_text(
            json.dumps({"images": images, "annotations": annotations, "categories": categories})
        )


def write_voc(root: Path, n: int = 6) -> None:
    """VOC 2007 layout: VOCdevkit/VOC2007/{Annotations, JPEGImages, ImageSets/Main}."""
    base = root / "VOCdevkit" / "VOC2007"
    (base / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    (base / "Annotations").mkdir(parents=True, exist_ok=True)
    names = [f"{k:06d}" for k in range(n)]
    for k, name in enumerate(names):
        _jpeg(base / "JPEGImages" / f"{name}.jpg", 20 * k)
        objects = "".join(
            f"<object><name>{VOC_CLASSES[c]}</name><difficult>{d}</difficult></object>"
            for c, d in ((k % 20, 0), ((k + 5) % 20, 0), ((k + 9) % 20, 1))
        )
        (base / "Annotations" / f"{name}.xml").write_text(f"<annotation><filename>{name}.jpg</filename>{objects}</annotation>")
    (base / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(names[: n // 2 + 1]) + "\n")
    (base / "ImageSets" / "Main" / "test.txt").write_text("\n".join(names[n // 2 + 1 :]) + "\n")


def test_coco_plt_datamodule_reads_the_real_layout(tmp_path: Path) -> None:
    write_coco(tmp_path)
    dm = COCOPLTDataModule(str(tmp_path), image_size=8, missing_rate=0.0, batch_size=2, num_workers=0)
    dm.setup()
    assert len(dm.train_set) == 8 and len(dm.test_set) == 4  # the object-less image is left out
    counts = dm.train_class_counts()
    assert counts[0] == 8 and sum(counts) == sum(len({0, k % 80, (3 * k) % 80}) for k in range(8))
    x_u, y_u, *_ = next(iter(dm.train_dataloader()))
    assert x_u.shape == (2, 3, 8, 8) and y_u.shape == (2, 80)
    ids = tmp_path / "ids.txt"
    ids.write_text("100\n103\n")
    subset = COCOPLTDataModule(str(tmp_path), image_size=8, image_ids_file=str(ids), num_workers=0)
    subset.setup()
    assert len(subset.train_set) == 2
    with pytest.raises(FileNotFoundError, match="COCO annotations not found"):
        COCOPLTDataModule(str(tmp_path / "missing")).setup()


def test_voc_plt_datamodule_reads_the_real_layout(tmp_path: Path) -> None:
    write_voc(tmp_path)
    dm = VOCPLTDataModule(str(tmp_path), image_size=8, missing_rate=0.0, batch_size=2, num_workers=0)
    dm.setup()
    assert len(dm.train_set) == 4 and len(dm.test_set) == 2
    labels = dm.train_labels
    assert labels.sum() == 8  # two non-difficult objects per image; difficult ones make no label
    assert labels[0, VOC_CLASSES.index("aeroplane")] == 1 and labels[0, 9] == 0
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (2, 3, 8, 8) and y.shape == (2, 20)
