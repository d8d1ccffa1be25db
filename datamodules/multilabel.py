"""Long-tailed, partially labelled multi-label data (the PLT setting of COMIC, arXiv 2304.10539).

A training set is made long-tailed by subsampling whole samples (a sample is kept with
probability ``min`` over its positive classes of ``ratio^(-rank/(C-1))``, rank 0 the most frequent
class), then ``missing_rate`` of its positive labels are hidden (set to 0). Validation and test
sets keep full labels. Training batches come as one view ``(x, y)`` or as three views
``(x_u, y_u, x_r, y_r, x_b, y_b)``: uniform, reversed (a class drawn with probability
``∝ 1/n_c``, then one of its samples) and class-balanced (a class drawn uniformly) samples.

- :class:`SyntheticPLTDataModule`: scikit-learn's ``make_multilabel_classification``, generated
  from a seed (the embedded default; nothing downloads).
- :class:`COCOPLTDataModule`: MS-COCO 2017 from its instance annotation files and image folders.
- :class:`VOCPLTDataModule`: PASCAL VOC 2007 via ``torchvision.datasets.VOCDetection``.

Guesses: labels are hidden independently per positive (each with probability ``missing_rate``);
VOC objects marked ``difficult`` do not make a label; the class-conditional samplers draw among
samples whose *observed* labels hold the class. The COCO/VOC PLT splits of the paper (authors'
image-id lists) can be given as ``image_ids_file``; without one the subsampling above is used.
"""

from __future__ import annotations

import functools
import json
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from PIL import Image
from sklearn.datasets import make_multilabel_classification
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset
from torchvision.transforms import v2

__all__ = [
    "longtail_multilabel_indices",
    "hide_positives",
    "cooccurrence_counts",
    "ThreeViewSampler",
    "MultiLabelDataModule",
    "SyntheticPLTDataModule",
    "COCOPLTDataModule",
    "VOCPLTDataModule",
    "VOC_CLASSES",
]

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
    "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
_IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def longtail_multilabel_indices(labels: np.ndarray, imbalance_ratio: float, seed: int) -> np.ndarray:
    """Sorted indices of a seeded long-tailed subsample of multi-hot ``labels`` (N, C).

    Class ``c`` of frequency rank ``r`` (0 = most frequent) gets ``q_c = ratio^(-r/(C-1))``; a
    sample is kept with probability ``min`` of ``q_c`` over its positives (1 when it has none).
    """
    labels = np.asarray(labels) > 0
    if imbalance_ratio < 1:
        raise ValueError(f"imbalance_ratio must be >= 1 (1 = no subsampling), got {imbalance_ratio}")
    n, c = labels.shape
    rank = np.empty(c)
    rank[np.argsort(-labels.sum(0), kind="stable")] = np.arange(c)
    q = imbalance_ratio ** (-rank / max(c - 1, 1))
    keep_p = np.where(labels, q[None, :], 1.0).min(1)
    return np.flatnonzero(np.random.default_rng(seed).random(n) < keep_p)


def hide_positives(labels: np.ndarray, missing_rate: float, seed: int) -> np.ndarray:
    """A copy of multi-hot ``labels`` with each positive set to 0 independently with probability ``missing_rate``."""
    if not 0 <= missing_rate < 1:
        raise ValueError(f"missing_rate must be in [0, 1), got {missing_rate}")
    labels = (np.asarray(labels) > 0).astype(np.int64)
    hide = np.random.default_rng(seed).random(labels.shape) < missing_rate
    return np.where(hide, 0, labels)


def cooccurrence_counts(labels: np.ndarray | Tensor) -> np.ndarray:
    """(C, C) counts of samples holding both labels (``Y^T Y``; the diagonal is each class's count)."""
    y = (np.asarray(labels) > 0).astype(np.float64)
    return y.T @ y


class ThreeViewSampler(Sampler):
    """Yields ``(uniform, reversed, balanced)`` index triples, ``len(labels)`` per epoch (or the uniform index only).

    Reversed: a class with probability ``∝ 1/n_c``; balanced: a class uniformly; then one of its
    samples uniformly. Draws depend only on ``seed`` and the epoch count, so ``views=1`` sees the
    same uniform stream as ``views=3``.
    """

    def __init__(self, labels: np.ndarray, seed: int, views: int = 3) -> None:
        labels = np.asarray(labels) > 0
        self.n, self.views, self.seed, self.epoch = len(labels), views, seed, 0
        self.members = [np.flatnonzero(labels[:, c]) for c in range(labels.shape[1])]
        counts = np.array([len(m) for m in self.members], dtype=np.float64)
        present = counts > 0
        if not present.any():
            raise ValueError("no observed positive label in the training set: the class samplers have nothing to draw")
        self.p_reversed = np.where(present, 1 / np.maximum(counts, 1), 0.0)
        self.p_reversed /= self.p_reversed.sum()
        self.p_balanced = present / present.sum()

    def __len__(self) -> int:
        return self.n

    def _draw(self, rng: np.random.Generator, p: np.ndarray) -> np.ndarray:
        classes = rng.choice(len(p), size=self.n, p=p)
        return np.array([self.members[c][rng.integers(len(self.members[c]))] for c in classes])

    def __iter__(self) -> Iterator[Any]:
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        uniform = rng.permutation(self.n)
        reversed_, balanced = self._draw(rng, self.p_reversed), self._draw(rng, self.p_balanced)
        if self.views == 1:
            yield from (int(i) for i in uniform)
        else:
            yield from ((int(u), int(r), int(b)) for u, r, b in zip(uniform, reversed_, balanced))


class _Views(Dataset):
    """A dataset indexed by an int (one ``(x, y)``) or a tuple of ints (their items concatenated)."""

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, ...]) -> tuple[Any, ...]:
        if isinstance(key, tuple):
            return tuple(v for i in key for v in self.base[i])
        return tuple(self.base[key])


class _ImageFiles(Dataset):
    """Images read from ``paths`` with multi-hot ``labels``."""

    def __init__(self, paths: list[Path], labels: np.ndarray, transform: Any) -> None:
        self.paths, self.labels, self.transform = paths, torch.as_tensor(labels, dtype=torch.float32), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        with Image.open(self.paths[i]) as img:
            return self.transform(img.convert("RGB")), self.labels[i]


class MultiLabelDataModule(LightningDataModule):
    """Base: subclasses fill ``train_set`` (observed labels ``train_labels``), ``val_set`` and ``test_set`` in :meth:`_build`.

    ``train_class_counts()`` and ``cooccurrence()`` report the observed training labels, the
    statistics COMIC's losses and the Many / Medium / Few groups are computed from.
    """

    def __init__(self, batch_size: int = 32, views: int = 3, num_workers: int = 0, seed: int = 0) -> None:
        super().__init__()
        if views not in (1, 3):
            raise ValueError(f"views must be 1 (uniform batches) or 3 (uniform, reversed, balanced), got {views}")
        self.batch_size, self.views, self.num_workers, self.seed = batch_size, views, num_workers, seed
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
        self.train_labels: np.ndarray | None = None

    def _build(self) -> None:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self._build()

    def train_class_counts(self) -> list[int]:
        """Observed positives per class in the training set."""
        self.setup()
        assert self.train_labels is not None
        return [int(v) for v in (self.train_labels > 0).sum(0)]

    def cooccurrence(self) -> np.ndarray:
        """Label co-occurrence counts of the observed training labels, (C, C)."""
        self.setup()
        return cooccurrence_counts(self.train_labels)  # type: ignore[arg-type]

    def train_dataloader(self) -> DataLoader:
        self.setup()
        assert self.train_set is not None and self.train_labels is not None
        sampler = ThreeViewSampler(self.train_labels, self.seed, self.views)
        return DataLoader(_Views(self.train_set), self.batch_size, sampler=sampler, num_workers=self.num_workers, drop_last=False)

    def _eval_loader(self, data: Dataset | None) -> DataLoader:
        self.setup()
        assert data is not None
        return DataLoader(data, max(self.batch_size, 256) if isinstance(data, TensorDataset) else self.batch_size, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_set)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()


class SyntheticPLTDataModule(MultiLabelDataModule):
    """Generated PLT data: ``make_multilabel_classification``, long tail by subsampling samples, hidden positives.

    Features are ``log1p``-transformed and standardised with training statistics. ``n_train``
    samples are taken from the long-tailed subsample of a larger pool; validation and test are
    fresh samples from the same generator with full labels. A draw in which some class has fewer
    than ``min_class_count`` training positives is redrawn (seed, attempt).
    """

    def __init__(
        self,
        n_train: int = 3000,
        n_val: int = 1000,
        n_test: int = 4000,
        n_features: int = 40,
        num_classes: int = 12,
        n_labels: int = 3,
        length: int = 200,
        imbalance_ratio: float = 20.0,
        missing_rate: float = 0.4,
        min_class_count: int = 10,
        batch_size: int = 32,
        views: int = 3,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, views, 0, seed)
        self.save_hyperparameters()

    @property
    def num_classes(self) -> int:
        return int(self.hparams["num_classes"])

    def _build(self) -> None:
        hp = self.hparams
        keys = ("n_train", "n_val", "n_test", "n_features", "num_classes", "n_labels", "length", "imbalance_ratio", "missing_rate")
        x_tr, y_tr, x_va, y_va, x_te, y_te = _synthetic_plt(*(hp[k] for k in keys), hp.min_class_count, hp.seed)
        x_tr, x_va, x_te = (np.log1p(a) for a in (x_tr, x_va, x_te))
        mean, std = x_tr.mean(0), x_tr.std(0) + 1e-8

        def tensors(x: np.ndarray, y: np.ndarray) -> TensorDataset:
            return TensorDataset(torch.tensor((x - mean) / std, dtype=torch.float32), torch.tensor(y, dtype=torch.float32))

        self.train_labels = y_tr
        self.train_set, self.val_set, self.test_set = tensors(x_tr, y_tr), tensors(x_va, y_va), tensors(x_te, y_te)


@functools.lru_cache(maxsize=4)
def _synthetic_plt(
    n_train: int, n_val: int, n_test: int, n_features: int, num_classes: int, n_labels: int, length: int,
    ratio: float, missing_rate: float, min_class_count: int, seed: int,
) -> tuple[np.ndarray, ...]:  # fmt: skip
    """The arrays of :class:`SyntheticPLTDataModule` (cached: the generator loops in Python, about 4 s a draw)."""
    pool = 6 * n_train  # the subsample keeps about a fifth of the pool at ratio 20
    for attempt in range(20):
        x, y = make_multilabel_classification(
            n_samples=pool + n_val + n_test, n_features=n_features, n_classes=num_classes, n_labels=n_labels,
            length=length, allow_unlabeled=False, random_state=seed * 1000 + attempt,
        )  # fmt: skip
        keep = longtail_multilabel_indices(y[:pool], ratio, seed)[:n_train]
        y_train = hide_positives(y[keep], missing_rate, seed)
        if len(keep) == n_train and min(y_train.sum(0).min(), y[pool:].sum(0).min()) >= min_class_count:
            return x[keep], y_train, x[pool : pool + n_val], y[pool : pool + n_val], x[pool + n_val :], y[pool + n_val :]
    raise ValueError(f"20 draws left fewer than {n_train} samples or a class with < {min_class_count} positives; lower them")


class _ImagePLTDataModule(MultiLabelDataModule):
    """Shared part of the COCO and VOC modules: the PLT training subset and the image transforms."""

    def __init__(
        self,
        root: str,
        image_size: int = 448,
        imbalance_ratio: float = 1.0,
        missing_rate: float = 0.4,
        image_ids_file: str | None = None,
        batch_size: int = 32,
        views: int = 3,
        num_workers: int = 8,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, views, num_workers, seed)
        self.root, self.image_size, self.imbalance_ratio = Path(root), image_size, imbalance_ratio
        self.missing_rate, self.image_ids_file = missing_rate, image_ids_file

    def _transform(self, train: bool) -> v2.Compose:
        aug = [v2.RandomHorizontalFlip()] if train else []
        return v2.Compose(
            [v2.PILToTensor(), v2.Resize((self.image_size, self.image_size), antialias=True), *aug,
             v2.ToDtype(torch.float32, scale=True), v2.Normalize(*_IMAGENET_STATS)]
        )  # fmt: skip

    def _samples(self, split: str) -> tuple[list[str], list[Path], np.ndarray]:
        """(image ids, image paths, full multi-hot labels) of ``split`` (``train`` or ``test``)."""
        raise NotImplementedError

    def _build(self) -> None:
        ids, paths, labels = self._samples("train")
        if self.image_ids_file is not None:
            wanted = {line.strip() for line in Path(self.image_ids_file).read_text().splitlines() if line.strip()}
            keep = np.array([i for i, name in enumerate(ids) if name in wanted], dtype=np.int64)
        else:
            keep = longtail_multilabel_indices(labels, self.imbalance_ratio, self.seed)
        if len(keep) == 0:
            raise ValueError(f"no training image left under {self.root} (check image_ids_file and imbalance_ratio)")
        observed = hide_positives(labels[keep], self.missing_rate, self.seed)
        self.train_labels = observed
        self.train_set = _ImageFiles([paths[i] for i in keep], observed, self._transform(True))
        _, test_paths, test_labels = self._samples("test")
        self.test_set = _ImageFiles(test_paths, test_labels, self._transform(False))
        self.val_set = self.test_set  # the papers validate on the test split


class COCOPLTDataModule(_ImagePLTDataModule):
    """PLT-COCO: MS-COCO 2017 (80 classes) from ``root/annotations/instances_{train,val}2017.json`` and ``root/{train,val}2017/``.

    A user with internet downloads the 2017 train/val images and annotations from cocodataset.org
    into ``root``; the test split is val2017 with full labels. ``image_ids_file`` takes the
    authors' PLT image list (one COCO image id per line, ``dataset/coco/longtail2017/img_id.txt``).
    """

    num_classes = 80

    def _samples(self, split: str) -> tuple[list[str], list[Path], np.ndarray]:
        name = "train2017" if split == "train" else "val2017"
        file = self.root / "annotations" / f"instances_{name}.json"
        if not file.is_file():
            raise FileNotFoundError(f"COCO annotations not found: {file} (download the 2017 annotations into {self.root}/annotations)")
        data = json.loads(file.read_text())
        cat_ids = sorted(c["id"] for c in data["categories"])
        if len(cat_ids) != self.num_classes:
            raise ValueError(f"{file} lists {len(cat_ids)} categories, expected {self.num_classes}")
        column = {cid: k for k, cid in enumerate(cat_ids)}
        images = sorted(data["images"], key=lambda im: im["id"])
        row = {im["id"]: i for i, im in enumerate(images)}
        labels = np.zeros((len(images), self.num_classes), dtype=np.int64)
        for ann in data["annotations"]:
            labels[row[ann["image_id"]], column[ann["category_id"]]] = 1
        has_label = labels.sum(1) > 0  # images without objects carry no label
        ids = [str(im["id"]) for im, ok in zip(images, has_label) if ok]
        paths = [self.root / name / im["file_name"] for im, ok in zip(images, has_label) if ok]
        return ids, paths, labels[has_label]


class VOCPLTDataModule(_ImagePLTDataModule):
    """PLT-VOC: PASCAL VOC 2007 (20 classes) from ``root/VOCdevkit/VOC2007`` via ``torchvision.datasets.VOCDetection``.

    Training on ``trainval``, testing on ``test`` with full labels; ``download=True`` fetches both
    (in ``prepare_data``). ``image_ids_file`` takes the authors' PLT list (VOC image names).
    """

    num_classes = 20

    def __init__(
        self,
        root: str,
        download: bool = False,
        year: str = "2007",
        image_size: int = 448,
        imbalance_ratio: float = 1.0,
        missing_rate: float = 0.4,
        image_ids_file: str | None = None,
        batch_size: int = 32,
        views: int = 3,
        num_workers: int = 8,
        seed: int = 0,
    ) -> None:
        super().__init__(root, image_size, imbalance_ratio, missing_rate, image_ids_file, batch_size, views, num_workers, seed)
        self.download, self.year = download, year

    def _dataset(self, split: str, download: bool = False) -> Any:
        from torchvision.datasets import VOCDetection

        image_set = "trainval" if split == "train" else "test"
        return VOCDetection(str(self.root), year=self.year, image_set=image_set, download=download)

    def prepare_data(self) -> None:
        if self.download:
            for split in ("train", "test"):
                self._dataset(split, download=True)

    def _samples(self, split: str) -> tuple[list[str], list[Path], np.ndarray]:
        ds = self._dataset(split)
        labels = np.zeros((len(ds.annotations), self.num_classes), dtype=np.int64)
        for i, file in enumerate(ds.annotations):
            objects = ds.parse_voc_xml(ET.parse(file).getroot())["annotation"].get("object", [])
            for obj in objects if isinstance(objects, list) else [objects]:
                if str(obj.get("difficult", "0")) != "1":
                    labels[i, VOC_CLASSES.index(obj["name"])] = 1
        ids = [Path(p).stem for p in ds.images]
        return ids, [Path(p) for p in ds.images], labels

