"""CIFARDataModule on tiny CIFAR folders in the real on-disk format (see conftest.py)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from zoo.datamodules import (
    CIFAR10DataModule,
    CIFAR10LTDataModule,
    CIFAR100DataModule,
    CIFAR100LTDataModule,
    CIFARDataModule,
    longtail_counts,
)

torch.set_num_threads(1)

# The standard per-channel statistics, written out independently of the module.
STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def raw_pixels(x: torch.Tensor, dataset: str) -> torch.Tensor:
    """Undo the normalization: back to 0..255 pixel values."""
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in STATS[dataset])
    return (x * std + mean) * 255


def per_class(targets: np.ndarray, num_classes: int) -> list[int]:
    return np.bincount(targets, minlength=num_classes).tolist()


def test_balanced_cifar10_sizes_and_test_as_validation(cifar_root: Path, cifar_sizes: dict) -> None:
    n_train, n_test = cifar_sizes["cifar10"]
    dm = CIFAR10DataModule(root=str(cifar_root))
    dm.setup("fit")
    assert dm.num_classes == 10
    assert len(dm.train_set) == 10 * n_train
    assert dm.class_counts == [n_train] * 10
    assert len(dm.test_set) == 10 * n_test
    assert dm.val_set is dm.test_set  # val_fraction=0: the papers' protocol


def test_cifar100_sizes(cifar_root: Path, cifar_sizes: dict) -> None:
    n_train, n_test = cifar_sizes["cifar100"]
    dm = CIFAR100DataModule(root=str(cifar_root))
    assert dm.num_classes == 100
    assert dm.class_counts == [n_train] * 100
    assert len(dm.test_set) == 100 * n_test


@pytest.mark.parametrize(
    ("cls", "num_classes"), [(CIFAR10LTDataModule, 10), (CIFAR100LTDataModule, 100)]
)
def test_longtail_profile_on_train_only(
    cifar_root: Path, cifar_sizes: dict, cls: type[CIFARDataModule], num_classes: int
) -> None:
    dm = cls(root=str(cifar_root))
    n_max = cifar_sizes[dm.dataset][0]
    assert dm.imbalance_ratio == 100
    assert dm.class_counts == longtail_counts(n_max, num_classes, 100)
    balanced = per_class(dm.test_set.targets, num_classes)
    assert balanced == [balanced[0]] * num_classes


def test_holdout_is_stratified_and_taken_before_the_profile(cifar_root: Path, cifar_sizes: dict) -> None:
    n_train, n_test = cifar_sizes["cifar10"]
    dm = CIFARDataModule(root=str(cifar_root), dataset="cifar10", imbalance_ratio=10, val_fraction=0.2)
    dm.setup()
    val_per_class = n_train // 5
    assert per_class(dm.val_set.targets, 10) == [val_per_class] * 10
    assert dm.class_counts == longtail_counts(n_train - val_per_class, 10, 10)
    assert not set(dm.train_set.indices) & set(dm.val_set.indices)
    assert dm.val_set is not dm.test_set and len(dm.test_set) == 10 * n_test


def test_same_seed_same_split_other_seed_other_split(cifar_root: Path) -> None:
    def split(seed: int) -> tuple[list[int], list[int]]:
        dm = CIFAR10LTDataModule(root=str(cifar_root), imbalance_ratio=5, val_fraction=0.2, seed=seed)
        dm.setup()
        return dm.train_set.indices.tolist(), dm.val_set.indices.tolist()

    assert split(0) == split(0)
    other = split(1)
    assert other[0] != split(0)[0] and other[1] != split(0)[1]


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_images_are_normalized_float_and_match_their_labels(cifar_root: Path, dataset: str) -> None:
    dm = CIFARDataModule(root=str(cifar_root), dataset=dataset, val_fraction=0.5, augment=False)
    dm.setup()
    rows, cols = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    for subset in (dm.train_set, dm.val_set, dm.test_set):
        for i in range(0, len(subset), 7):
            x, y = subset[i]
            assert x.dtype == torch.float32 and x.shape == (3, 32, 32)
            raw = raw_pixels(x, dataset)
            torch.testing.assert_close(raw[0], torch.full((32, 32), float(y)), atol=1e-3, rtol=0)
            torch.testing.assert_close(raw[1], rows * 8, atol=1e-3, rtol=0)
            torch.testing.assert_close(raw[2], cols * 8, atol=1e-3, rtol=0)


def test_known_test_image_has_its_label(cifar_root: Path) -> None:
    with open(cifar_root / "cifar-10-batches-py" / "test_batch", "rb") as f:
        batch = pickle.load(f)
    dm = CIFAR10DataModule(root=str(cifar_root))
    dm.setup("test")
    for i in (0, 17, len(batch["labels"]) - 1):
        x, y = dm.test_set[i]
        assert y == batch["labels"][i]
        expected = torch.tensor(batch["data"][i], dtype=torch.float32).view(3, 32, 32) / 255
        mean, std = (torch.tensor(v).view(3, 1, 1) for v in STATS["cifar10"])
        torch.testing.assert_close(x, (expected - mean) / std)


def test_normalize_false_gives_unit_range(cifar_root: Path) -> None:
    dm = CIFAR10DataModule(root=str(cifar_root), normalize=False, augment=False)
    dm.setup()
    x, y = dm.train_set[0]
    assert x.min() >= 0 and x.max() <= 1
    assert round(float(x[0, 0, 0]) * 255) == y


def test_augmentation_on_train_only(cifar_root: Path) -> None:
    plain = CIFAR10DataModule(root=str(cifar_root), augment=False)
    augmented = CIFAR10DataModule(root=str(cifar_root), augment=True)
    plain.setup()
    augmented.setup()
    torch.manual_seed(0)
    changed = [not torch.equal(augmented.train_set[i][0], plain.train_set[i][0]) for i in range(20)]
    assert any(changed)
    for i in range(5):
        assert augmented.train_set[i][0].shape == (3, 32, 32)
        assert torch.equal(augmented.test_set[i][0], plain.test_set[i][0])


def test_dataloaders(cifar_root: Path) -> None:
    dm = CIFAR10DataModule(root=str(cifar_root), batch_size=16, val_fraction=0.2)
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.long
    first = [next(iter(dm.train_dataloader()))[1].tolist() for _ in range(2)]
    assert first[0] == first[1]  # seeded shuffle
    assert sum(len(b[1]) for b in dm.val_dataloader()) == len(dm.val_set)
    assert sum(len(b[1]) for b in dm.test_dataloader()) == len(dm.test_set)


def test_missing_root_names_the_root_and_the_download_flag(tmp_path: Path) -> None:
    dm = CIFAR10LTDataModule(root=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="download=True") as info:
        dm.setup()
    message = str(info.value)
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py") in message and "CIFAR-10" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no torchvision traceback


def test_incomplete_folder_is_reported_as_corrupted(cifar_root: Path, tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    (folder / "meta").write_bytes((cifar_root / "cifar-100-python" / "meta").read_bytes())
    with pytest.raises(FileNotFoundError, match="incomplete or corrupted"):
        CIFAR100DataModule(root=str(tmp_path)).setup()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dataset": "cifar1000"}, "dataset must be one of"),
        ({"imbalance_ratio": 0.5}, "imbalance_ratio must be >= 1"),
        ({"val_fraction": 1.0}, "val_fraction must be in"),
        ({"val_fraction": -0.1}, "val_fraction must be in"),
        ({"batch_size": 0}, "batch_size must be positive"),
        ({"num_workers": -1}, "num_workers must be >= 0"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CIFARDataModule(**kwargs)


@pytest.mark.parametrize(
    ("cls", "dataset", "ratio"),
    [
        (CIFAR10DataModule, "cifar10", 1.0),
        (CIFAR100DataModule, "cifar100", 1.0),
        (CIFAR10LTDataModule, "cifar10", 100.0),
        (CIFAR100LTDataModule, "cifar100", 100.0),
    ],
)
def test_named_classes_and_json_hparams(cls: type[CIFARDataModule], dataset: str, ratio: float) -> None:
    dm = cls(root="somewhere", seed=3)
    assert (dm.dataset, dm.imbalance_ratio) == (dataset, ratio)
    assert "dataset" not in dm.hparams  # fixed by the class, so the class rebuilds from its hparams
    rebuilt = cls(**json.loads(json.dumps(dict(dm.hparams))))
    assert dict(rebuilt.hparams) == dict(dm.hparams) and rebuilt.dataset == dataset
    generic = CIFARDataModule(dataset=dataset, imbalance_ratio=ratio)
    assert generic.hparams["dataset"] == dataset


def test_longtail_sizes_match_the_papers() -> None:
    # CIFAR-10-LT / CIFAR-100-LT training sizes as published (LDAM, Cao et al. 2019, and followers).
    assert sum(longtail_counts(5000, 10, 100)) == 12406
    assert sum(longtail_counts(500, 100, 100)) == 10847
    assert sum(longtail_counts(5000, 10, 10)) == 20431
    assert sum(longtail_counts(500, 100, 10)) == 19573


def test_eval_train_dataloader_is_the_train_split_unaugmented_in_order(cifar_root: Path) -> None:
    plain = CIFAR10LTDataModule(root=str(cifar_root), augment=False, imbalance_ratio=10, batch_size=7)
    augmented = CIFAR10LTDataModule(root=str(cifar_root), augment=True, imbalance_ratio=10, batch_size=7)
    plain.setup()
    augmented.setup()
    assert len(augmented.eval_train_set) == len(augmented.train_set)
    x, y = torch.cat([b[0] for b in augmented.eval_train_dataloader()]), torch.cat([b[1] for b in augmented.eval_train_dataloader()])
    want = [plain.train_set[i] for i in range(len(plain.train_set))]  # same split, no augmentation
    assert torch.equal(x, torch.stack([w[0] for w in want]))
    assert y.tolist() == [w[1] for w in want]
