"""Data of the rbc entry: Chula RBC-12 smears cut into cells, synthetic overlapping-cell pairs, and long-tailed digits.

- :class:`ChulaRBC12DataModule`: the paper's dataset in its release layout
  (``<root>/Chula-RBC-12-Dataset/Dataset/<n>.jpg`` and ``Label/<n>.txt``, one ``x y class`` line per
  cell), one crop per cell at native size, from the labelled centres or from the separator.
- :class:`OverlappingCellsDataModule`: seeded binary images of two overlapping ellipses with the
  true cells, to score a separator (``zoo.rbc.SeparationCheck``).
- :class:`ShuffledTailDigitsDataModule`: scikit-learn digits with a long-tailed training split whose
  rare digits are drawn per seed, and a balanced test split, for the weight-balancing check.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from skimage import draw
from skimage.io import imread
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset

from zoo.datamodules.longtail import longtail_counts

__all__ = [
    "ChulaRBC12DataModule",
    "OverlappingCellsDataModule",
    "ShuffledTailDigitsDataModule",
    "overlapping_pair",
    "read_chula_labels",
    "CHULA_FOLDER",
    "CHULA_URL",
    "CHULA_LABELS",
]

CHULA_FOLDER = "Chula-RBC-12-Dataset"
CHULA_URL = "https://github.com/Chula-PIC-Lab/Chula-RBC-12-Dataset/archive/refs/heads/main.zip"
CHULA_LABELS = 13  #: label numbers 0..12 in the release (the paper's 12 classes plus one)
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# ---------------------------------------------------------------------------- Chula RBC-12
def read_chula_labels(path: Path) -> np.ndarray:
    """One label file: ``(n, 3)`` integers ``x, y, class`` (blank lines skipped); a malformed line is a ValueError."""
    rows = []
    for k, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 3 or not all(p.lstrip("-").isdigit() for p in parts):
            raise ValueError(f"{path}:{k}: expected 'x y class' as three integers, got {line!r}")
        rows.append([int(p) for p in parts])
    return np.asarray(rows, dtype=np.int64).reshape(-1, 3)


def _crop(image: np.ndarray, row: int, col: int, size: int) -> np.ndarray:
    """A ``size x size`` window centred on ``(row, col)`` at native scale, padded with the image's median colour."""
    half = size // 2
    fill = np.median(image.reshape(-1, image.shape[-1]), axis=0).astype(image.dtype)
    padded = np.empty((image.shape[0] + size, image.shape[1] + size, image.shape[-1]), dtype=image.dtype)
    padded[:] = fill
    padded[half : half + image.shape[0], half : half + image.shape[1]] = image
    return padded[row : row + size, col : col + size]


class _Crops(Dataset):
    """uint8 ``(N, H, W, 3)`` crops -> normalised float ``(3, H, W)`` tensors (ImageNet statistics)."""

    def __init__(self, crops: np.ndarray, labels: np.ndarray) -> None:
        self.crops, self.labels = torch.from_numpy(crops), torch.from_numpy(labels)
        self.mean = torch.tensor(_IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(_IMAGENET_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        x = self.crops[i].permute(2, 0, 1).float() / 255
        return (x - self.mean) / self.std, self.labels[i]


class ChulaRBC12DataModule(LightningDataModule):
    """Chula RBC-12 (706 smears of 640x480, 12 cell types plus one extra class in the release), one crop per cell.

    Args:
        root: the folder holding ``Chula-RBC-12-Dataset/`` (``git clone`` it there, or ``download``).
        cells: ``labels`` (crops centred on the labelled cells) or ``segmenter`` (the separator's
            ellipses, each given the class of the nearest labelled centre within ``match_radius`` px).
        crop_size: crop side (px) at native scale; cells are about 20-30 px across.
        exclude_classes: label numbers left out (the release's extra class for the paper's 12).
        val_fraction / test_fraction: stratified split of the cells (the paper's ratio is not stated).
        download: fetch the release's zip from GitHub when the folder is missing.
    """

    def __init__(
        self,
        root: str = "data",
        cells: str = "labels",
        crop_size: int = 80,
        exclude_classes: list[int] | None = None,
        match_radius: float = 10.0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        batch_size: int = 64,
        num_workers: int = 4,
        seed: int = 0,
        download: bool = False,
    ) -> None:
        super().__init__()
        if cells not in ("labels", "segmenter"):
            raise ValueError(f"cells must be 'labels' or 'segmenter', got {cells!r}")
        if not 0 < val_fraction < 1 or not 0 < test_fraction < 1 or val_fraction + test_fraction >= 1:
            raise ValueError(f"val_fraction and test_fraction must be in (0, 1) and sum below 1, got {val_fraction}, {test_fraction}")
        self.save_hyperparameters()
        self.root = Path(root)
        self.exclude = sorted(set(exclude_classes or []))
        self.train_set: _Crops | None = None

    @property
    def folder(self) -> Path:
        return self.root / CHULA_FOLDER

    def prepare_data(self) -> None:
        if self.folder.is_dir() or not self.hparams["download"]:
            return
        from torchvision.datasets.utils import download_and_extract_archive  # the user's one download

        download_and_extract_archive(CHULA_URL, str(self.root), filename=f"{CHULA_FOLDER}.zip")
        extracted = self.root / f"{CHULA_FOLDER}-main"
        if extracted.is_dir():
            extracted.rename(self.folder)

    def _cells(self) -> tuple[np.ndarray, np.ndarray]:
        """All crops ``(N, S, S, 3)`` uint8 and their labels, image by image."""
        images, labels_dir = self.folder / "Dataset", self.folder / "Label"
        if not images.is_dir() or not labels_dir.is_dir():
            raise FileNotFoundError(
                f"Chula RBC-12 not found: expected {images} and {labels_dir}; "
                f"clone github.com/Chula-PIC-Lab/Chula-RBC-12-Dataset into {self.root} or pass download=true"
            )
        size = self.hparams["crop_size"]
        segmenter = None
        if self.hparams["cells"] == "segmenter":
            from zoo.rbc import RBCEllipseSegmenter

            segmenter = RBCEllipseSegmenter()
        crops, ys = [], []
        for label_file in sorted(labels_dir.glob("*.txt"), key=lambda p: (len(p.stem), p.stem)):
            image_file = images / f"{label_file.stem}.jpg"
            if not image_file.is_file():
                continue
            table = read_chula_labels(label_file)
            image = imread(image_file)
            image = np.repeat(image[..., None], 3, -1) if image.ndim == 2 else image[..., :3]
            if segmenter is None:
                centres = [(int(y), int(x), int(c)) for x, y, c in table]
            else:
                centres = []
                for e in segmenter(image):
                    d = np.hypot(table[:, 0] - e.col, table[:, 1] - e.row) if len(table) else np.zeros(0)
                    if len(d) and d.min() <= self.hparams["match_radius"]:
                        centres.append((int(round(e.row)), int(round(e.col)), int(table[d.argmin(), 2])))
            for r, c, cls in centres:
                if cls not in self.exclude:
                    crops.append(_crop(image, r, c, size))
                    ys.append(cls)
        if not ys:
            raise ValueError(f"no labelled cells found under {self.folder}")
        labels = np.asarray(ys)
        if labels.min() < 0 or labels.max() >= CHULA_LABELS:
            raise ValueError(f"label numbers must lie in 0..{CHULA_LABELS - 1}, got {labels.min()}..{labels.max()}")
        kept = [c for c in range(CHULA_LABELS) if c not in self.exclude]
        remap = {c: k for k, c in enumerate(kept)}  # contiguous class ids after exclusion
        return np.stack(crops), np.array([remap[c] for c in labels], dtype=np.int64)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        x, y = self._cells()
        idx = np.arange(len(y))
        counts = np.bincount(y)
        strat = y if counts[counts > 0].min() >= 3 else None  # tiny fixtures cannot stratify
        seed, val_f, test_f = self.hparams["seed"], self.hparams["val_fraction"], self.hparams["test_fraction"]
        rest, test = train_test_split(idx, test_size=test_f, stratify=strat, random_state=seed)
        strat_rest = y[rest] if strat is not None else None
        train, val = train_test_split(rest, test_size=val_f / (1 - test_f), stratify=strat_rest, random_state=seed)
        self.num_classes = CHULA_LABELS - len([c for c in self.exclude if 0 <= c < CHULA_LABELS])
        self.train_set, self.val_set, self.test_set = _Crops(x[train], y[train]), _Crops(x[val], y[val]), _Crops(x[test], y[test])

    def train_class_counts(self) -> list[int]:
        """Training cells per class (class weights come from the training split only)."""
        self.setup()
        assert self.train_set is not None
        return torch.bincount(self.train_set.labels, minlength=self.num_classes).tolist()

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(self.hparams["seed"]) if shuffle else None
        return DataLoader(dataset, self.hparams["batch_size"], shuffle=shuffle, generator=generator, num_workers=self.hparams["num_workers"])

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, False)


# ------------------------------------------------------------------ synthetic overlapping cells
def overlapping_pair(
    rng: np.random.Generator, size: int = 80, axes: tuple[float, float] = (10.0, 16.0), overlap: tuple[float, float] = (0.10, 0.40), max_tries: int = 10_000
) -> np.ndarray:
    """Two ellipses (semi-axes in ``axes``, any angle) overlapping by ``|A & B| / min(|A|, |B|)`` in ``overlap``, off the border: ``(2, size, size)`` bool."""
    for _ in range(max_tries):
        cells = np.zeros((2, size, size), dtype=bool)
        for k in range(2):
            a, b = rng.uniform(*axes, size=2)
            r, c = rng.uniform(axes[1] + 2, size - axes[1] - 2, size=2)
            rr, cc = draw.ellipse(r, c, a, b, shape=(size, size), rotation=rng.uniform(-np.pi, np.pi))
            cells[k, rr, cc] = True
        if cells[:, [0, -1], :].any() or cells[:, :, [0, -1]].any():
            continue
        share = (cells[0] & cells[1]).sum() / min(cells[0].sum(), cells[1].sum())
        if overlap[0] <= share <= overlap[1]:
            return cells
    raise RuntimeError(f"no pair with overlap in {overlap} after {max_tries} tries; widen the range or the image")


class OverlappingCellsDataModule(LightningDataModule):
    """``n_images`` seeded binary images of two overlapping cells: batches ``(mask (N, H, W), cells (N, 2, H, W))``.

    Every loader serves the same images (a separator learns nothing); ``test`` is the one scored.
    """

    def __init__(
        self,
        n_images: int = 200,
        size: int = 80,
        min_axis: float = 10.0,
        max_axis: float = 16.0,
        min_overlap: float = 0.10,
        max_overlap: float = 0.40,
        batch_size: int = 50,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if n_images < 1 or batch_size < 1:
            raise ValueError(f"n_images and batch_size must be positive, got {n_images}, {batch_size}")
        if not 0 < min_axis <= max_axis or 2 * max_axis + 6 > size:
            raise ValueError(f"need 0 < min_axis <= max_axis and 2 * max_axis + 6 <= size, got {min_axis}, {max_axis}, {size}")
        if not 0 <= min_overlap <= max_overlap <= 1:
            raise ValueError(f"need 0 <= min_overlap <= max_overlap <= 1, got {min_overlap}, {max_overlap}")
        self.save_hyperparameters()
        self.dataset: TensorDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is not None:
            return
        h = self.hparams
        rng = np.random.default_rng(h["seed"])
        cells = np.stack([overlapping_pair(rng, h["size"], (h["min_axis"], h["max_axis"]), (h["min_overlap"], h["max_overlap"])) for _ in range(h["n_images"])])
        truth = torch.from_numpy(cells)
        self.dataset = TensorDataset(truth.any(1), truth)

    def _loader(self) -> DataLoader:
        self.setup()
        return DataLoader(self.dataset, self.hparams["batch_size"])

    def train_dataloader(self) -> DataLoader:
        return self._loader()

    def val_dataloader(self) -> DataLoader:
        return self._loader()

    def test_dataloader(self) -> DataLoader:
        return self._loader()


# ------------------------------------------------------------------------ long-tailed digits
class ShuffledTailDigitsDataModule(LightningDataModule):
    """Digits as ``1x8x8`` images: a long-tailed training split (rare digits drawn per seed), a balanced test split.

    Class sizes follow :func:`zoo.datamodules.longtail.longtail_counts` (``n_max`` down to
    ``n_max / imbalance_ratio``), assigned to a seeded permutation of the digits; the test split
    holds ``test_per_class`` images per digit and validation the rest.
    """

    def __init__(self, n_max: int = 120, imbalance_ratio: float = 35.0, test_per_class: int = 50, batch_size: int = 32, seed: int = 0) -> None:
        super().__init__()
        if n_max + test_per_class > 170:
            raise ValueError(f"n_max + test_per_class must be at most 170 (the rarest digit has 174 images), got {n_max + test_per_class}")
        if imbalance_ratio < 1 or n_max < 1 or test_per_class < 1 or batch_size < 1:
            raise ValueError("need imbalance_ratio >= 1 and positive n_max, test_per_class and batch_size")
        self.save_hyperparameters()
        self.train_set: TensorDataset | None = None

    @property
    def num_classes(self) -> int:
        return 10

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        h = self.hparams
        x, y = load_digits(return_X_y=True)
        rng = np.random.default_rng(h["seed"])
        sizes = np.array(longtail_counts(h["n_max"], 10, h["imbalance_ratio"]))[rng.permutation(10)]  # sizes[d]: digit d's count
        train, val, test = [], [], []
        for d in range(10):
            idx = rng.permutation(np.flatnonzero(y == d))
            test.append(idx[: h["test_per_class"]])
            train.append(idx[h["test_per_class"] : h["test_per_class"] + sizes[d]])
            val.append(idx[h["test_per_class"] + sizes[d] :])
        tr = np.sort(np.concatenate(train))
        mean, std = x[tr].mean(), x[tr].std()

        def dataset(ids: list[np.ndarray]) -> TensorDataset:
            i = np.sort(np.concatenate(ids))
            return TensorDataset(torch.tensor((x[i] - mean) / std, dtype=torch.float32).view(-1, 1, 8, 8), torch.tensor(y[i]))

        self.train_set, self.val_set, self.test_set = dataset(train), dataset(val), dataset(test)

    def train_class_counts(self) -> list[int]:
        """Training images per digit (the rare ones differ by seed)."""
        self.setup()
        assert self.train_set is not None
        return torch.bincount(self.train_set.tensors[1], minlength=10).tolist()

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.hparams["seed"])
        return DataLoader(self.train_set, self.hparams["batch_size"], shuffle=True, generator=generator)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, 512)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, 512)
