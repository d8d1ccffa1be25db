"""Tiny CIFAR-10 and CIFAR-100 folders in the real on-disk format, for the CIFAR DataModule tests.

Every image encodes what the tests check: the red plane is the image's label, the green plane
the row index times 8 and the blue plane the column index times 8, so a test can decode the
label from the pixels and see that rows, columns and channels came out the right way round.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
from torchvision import datasets

CIFAR10_TRAIN_PER_CLASS, CIFAR10_TEST_PER_CLASS = 20, 5
CIFAR100_TRAIN_PER_CLASS, CIFAR100_TEST_PER_CLASS = 6, 2


def encode_images(labels: np.ndarray) -> np.ndarray:
    """``(n, 3072)`` uint8 rows as CIFAR stores them: the 1024 red, then green, then blue pixels, row-major."""
    rows, cols = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    images = np.empty((len(labels), 3, 32, 32), dtype=np.uint8)
    images[:, 0] = np.asarray(labels, dtype=np.uint8)[:, None, None]
    images[:, 1] = rows * 8
    images[:, 2] = cols * 8
    return images.reshape(len(labels), 3072)


def _labels(num_classes: int, per_class: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.repeat(np.arange(num_classes), per_class))


def _dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def _write_cifar10(root: Path) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    train = _labels(10, CIFAR10_TRAIN_PER_CLASS, rng)
    for b, chunk in enumerate(np.array_split(train, 5), start=1):
        _dump(folder / f"data_batch_{b}", {
            "batch_label": f"training batch {b} of 5",
            "labels": chunk.tolist(),
            "data": encode_images(chunk),
            "filenames": [f"img_{b}_{i}.png" for i in range(len(chunk))],
        })
    test = _labels(10, CIFAR10_TEST_PER_CLASS, rng)
    _dump(folder / "test_batch", {
        "batch_label": "testing batch 1 of 1",
        "labels": test.tolist(),
        "data": encode_images(test),
        "filenames": [f"test_{i}.png" for i in range(len(test))],
    })
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    _dump(folder / "batches.meta", {"num_cases_per_batch": len(train) // 5, "label_names": names, "num_vis": 3072})


def _write_cifar100(root: Path) -> None:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for split, per_class in (("train", CIFAR100_TRAIN_PER_CLASS), ("test", CIFAR100_TEST_PER_CLASS)):
        fine = _labels(100, per_class, rng)
        _dump(folder / split, {
            "filenames": [f"{split}_{i}.png" for i in range(len(fine))],
            "batch_label": f"{split}ing batch 1 of 1",
            "fine_labels": fine.tolist(),
            "coarse_labels": (fine // 5).tolist(),
            "data": encode_images(fine),
        })
    _dump(folder / "meta", {
        "fine_label_names": [f"fine_{k}" for k in range(100)],
        "coarse_label_names": [f"coarse_{k}" for k in range(20)],
    })


@pytest.fixture(scope="session")
def _cifar_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    _write_cifar10(root)
    _write_cifar100(root)
    return root


@pytest.fixture
def cifar_sizes() -> dict[str, tuple[int, int]]:
    """Images per class in the fixture: ``{dataset: (train, test)}``."""
    return {
        "cifar10": (CIFAR10_TRAIN_PER_CLASS, CIFAR10_TEST_PER_CLASS),
        "cifar100": (CIFAR100_TRAIN_PER_CLASS, CIFAR100_TEST_PER_CLASS),
    }


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def cifar_root(_cifar_files: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Root holding the tiny ``cifar-10-batches-py`` and ``cifar-100-python``.

    torchvision checks every file against hard-coded md5 sums of the real archives; inside the
    test those tables name the fixture's files' sums instead, so the real check still runs.
    """
    for cls in (datasets.CIFAR10, datasets.CIFAR100):
        folder = _cifar_files / cls.base_folder
        monkeypatch.setattr(cls, "train_list", [[name, _md5(folder / name)] for name, _ in cls.train_list])
        monkeypatch.setattr(cls, "test_list", [[name, _md5(folder / name)] for name, _ in cls.test_list])
        monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": _md5(folder / cls.meta["filename"])})
    return _cifar_files
