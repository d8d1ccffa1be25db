"""The rbc DataModules: Chula RBC-12 on fixture files in the release's layout, synthetic overlapping pairs, shuffled-tail digits."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from skimage import draw

from zoo.datamodules import ChulaRBC12DataModule, OverlappingCellsDataModule, ShuffledTailDigitsDataModule, longtail_counts
from zoo.datamodules.rbc import CHULA_FOLDER, overlapping_pair, read_chula_labels

#: (row, col, class) of the fixture's cells: two images, separated discs of radius 11 on a light background
FIXTURE_CELLS = {
    "1": [(30, 30, 0), (30, 80, 0), (30, 130, 1), (85, 30, 0), (85, 80, 2), (85, 130, 1)],
    "2": [(30, 30, 2), (30, 80, 0), (30, 130, 1), (85, 30, 2), (85, 80, 0), (85, 130, 3)],
}


def write_chula_rbc12(root: Path) -> Path:
    """Chula RBC-12's on-disk layout under ``root``: ``Chula-RBC-12-Dataset/Dataset/<n>.jpg`` and ``Label/<n>.txt`` (``x y class``)."""
    folder = root / CHULA_FOLDER
    (folder / "Dataset").mkdir(parents=True, exist_ok=True)
    (folder / "Label").mkdir(parents=True, exist_ok=True)
    for name, cells in FIXTURE_CELLS.items():
        image = np.full((120, 160, 3), 225, dtype=np.uint8)
        for r, c, cls in cells:
            rr, cc = draw.disk((r, c), 11, shape=image.shape[:2])
            image[rr, cc] = (150 - 10 * cls, 60, 90)
        iio.imwrite(folder / "Dataset" / f"{name}.jpg", image, quality=95)
        (folder / "Label" / f"{name}.txt").write_text("".join(f"{c} {r} {cls}\n" for r, c, cls in cells))
    return root


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


# --------------------------------------------------------------------------------- Chula RBC-12
def test_chula_labels_become_native_size_crops_and_a_stratified_split(tmp_path: Path) -> None:
    dm = ChulaRBC12DataModule(root=str(write_chula_rbc12(tmp_path)), crop_size=32, num_workers=0, batch_size=4, val_fraction=0.25, test_fraction=0.25)
    dm.setup()
    sizes = [len(s) for s in (dm.train_set, dm.val_set, dm.test_set)]
    assert sum(sizes) == 12 and dm.num_classes == 13  # the release's 13 label numbers, present or not
    assert sum(dm.train_class_counts()) == sizes[0]
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.long
    # a crop is centred on its cell: the centre pixel is the cell's (dark) colour, the corner the background
    raw = dm.train_set.crops[0].numpy()
    assert raw[16, 16, 1] < 100 and raw[0, 0, 1] > 200


def test_chula_excluded_classes_are_dropped_and_ids_stay_contiguous(tmp_path: Path) -> None:
    dm = ChulaRBC12DataModule(root=str(write_chula_rbc12(tmp_path)), crop_size=32, num_workers=0, exclude_classes=[1], val_fraction=0.2, test_fraction=0.2)
    dm.setup()
    labels = torch.cat([s.labels for s in (dm.train_set, dm.val_set, dm.test_set)])
    assert len(labels) == 9 and dm.num_classes == 12 and set(labels.tolist()) == {0, 1, 2}  # 0, 2, 3 -> 0, 1, 2


def test_chula_segmenter_mode_finds_the_labelled_cells(tmp_path: Path) -> None:
    dm = ChulaRBC12DataModule(root=str(write_chula_rbc12(tmp_path)), cells="segmenter", crop_size=32, num_workers=0, val_fraction=0.2, test_fraction=0.2)
    dm.setup()
    labels = torch.cat([s.labels for s in (dm.train_set, dm.val_set, dm.test_set)])
    expected = sorted(c for cells in FIXTURE_CELLS.values() for _, _, c in cells)
    assert sorted(labels.tolist()) == expected  # every disc found once and matched to its label


def test_chula_errors_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="clone github.com/Chula-PIC-Lab"):
        ChulaRBC12DataModule(root=str(tmp_path)).setup()
    bad = tmp_path / "bad.txt"
    bad.write_text("1 2 3\n4 five 6\n")
    with pytest.raises(ValueError, match="bad.txt:2"):
        read_chula_labels(bad)
    with pytest.raises(ValueError, match="cells"):
        ChulaRBC12DataModule(cells="watershed")


# ------------------------------------------------------------------------- overlapping cells
def test_overlapping_pairs_respect_sizes_overlap_and_border() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        cells = overlapping_pair(rng, 80, (10, 16), (0.1, 0.4))
        share = (cells[0] & cells[1]).sum() / min(cells[0].sum(), cells[1].sum())
        assert 0.1 <= share <= 0.4
        assert not cells[:, [0, -1], :].any() and not cells[:, :, [0, -1]].any()
        for cell in cells:  # semi-axes 10-16 px: area between pi*10^2 and pi*16^2 (pixel rounding aside)
            assert np.pi * 9.5**2 <= cell.sum() <= np.pi * 16.5**2


def test_overlapping_cells_datamodule_is_seeded() -> None:
    a, b, c = (OverlappingCellsDataModule(n_images=5, seed=s) for s in (0, 0, 1))
    for dm in (a, b, c):
        dm.setup()
    mask, truth = a.dataset.tensors
    assert mask.shape == (5, 80, 80) and truth.shape == (5, 2, 80, 80) and torch.equal(mask, truth.any(1))
    assert torch.equal(truth, b.dataset.tensors[1]) and not torch.equal(truth, c.dataset.tensors[1])
    with pytest.raises(ValueError, match="max_axis"):
        OverlappingCellsDataModule(max_axis=40)


# ---------------------------------------------------------------------------- shuffled tail
def test_shuffled_tail_digits_counts_rare_digits_and_balanced_test() -> None:
    rare = []
    for seed in (0, 1, 2):
        dm = ShuffledTailDigitsDataModule(seed=seed)
        counts = dm.train_class_counts()
        assert sorted(counts, reverse=True) == longtail_counts(120, 10, 35.0)
        assert torch.bincount(dm.test_set.tensors[1]).tolist() == [50] * 10
        assert dm.train_set.tensors[0].shape[1:] == (1, 8, 8)
        rare.append(int(np.argmin(counts)))
        total = len(dm.train_set) + len(dm.val_set) + len(dm.test_set)
        assert total == 1797  # train, val and test partition the digits
    assert len(set(rare)) > 1  # which digit is rare changes with the seed
    with pytest.raises(ValueError, match="170"):
        ShuffledTailDigitsDataModule(n_max=150)
