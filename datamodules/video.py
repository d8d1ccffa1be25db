"""Video clip DataModules for self-supervised video training (ViDiDi): moving digits and UCF101.

Training batches are ``(view1, view2, y)``: two augmented views of each video, ``(B, C, T, H, W)``
float clips of ``clip_len + 2`` frames (two spare frames, so temporal derivatives up to order 2
can be cropped back to ``clip_len``). Evaluation batches are ``(clip, y)`` of ``clip_len`` original
frames; ``eval_train_dataloader()`` serves the training videos the same way (the kNN memory bank).
Every augmentation is one draw per clip, shared by all its frames: per-frame jitter would be
spurious motion.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule
from sklearn.datasets import load_digits
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset

__all__ = ["MovingDigitsDataModule", "UCF101DataModule", "augment_clips", "moving_digit_clips", "read_video_pyav", "DIRECTIONS"]

#: (dy, dx) per frame of the four motion classes: up, down, left, right.
DIRECTIONS: tuple[tuple[int, int], ...] = ((-1, 0), (1, 0), (0, -1), (0, 1))


def moving_digit_clips(n: int, frames: int = 14, size: int = 16, sprite_scale: float = 0.5, distractors: int = 2, seed: int = 0) -> tuple[Tensor, Tensor]:
    """The dim-mover task: ``(n, 1, frames, size, size)`` clips in [0, 1] and their direction labels 0..3.

    A dim digit sprite (pixels x ``sprite_scale``) moves 1 px per frame with wrap-around in one of
    four directions (the label) over a bright static background of ``distractors`` random digits:
    static appearance dominates the pixels while only the motion defines the label.
    """
    if n < 1 or frames < 2 or size < 8:
        raise ValueError(f"need n >= 1, frames >= 2 and size >= 8 (the 8x8 sprite), got {n}, {frames}, {size}")
    rng = np.random.default_rng(seed)
    digits = load_digits().images.astype(np.float32) / 16.0
    clips = np.zeros((n, frames, size, size), np.float32)
    labels = rng.integers(0, len(DIRECTIONS), n)
    for i in range(n):
        background = np.zeros((size, size), np.float32)
        for _ in range(distractors):
            r, c = rng.integers(0, size - 7, 2)
            background[r : r + 8, c : c + 8] += digits[rng.integers(len(digits))]
        sprite = np.zeros((size, size), np.float32)
        r, c = rng.integers(0, size - 7, 2)
        sprite[r : r + 8, c : c + 8] = sprite_scale * digits[rng.integers(len(digits))]
        dy, dx = DIRECTIONS[labels[i]]
        for t in range(frames):
            clips[i, t] = background + np.roll(sprite, (dy * t, dx * t), axis=(0, 1))
    return torch.from_numpy(np.clip(clips, 0.0, 1.0)).unsqueeze(1), torch.from_numpy(labels)


def augment_clips(
    clips: Tensor, length: int, max_shift: int = 3, brightness: tuple[float, float] = (0.6, 1.4), noise: float = 0.1, generator: torch.Generator | None = None
) -> Tensor:
    """One view per ``(B, C, T, H, W)`` clip: a random ``length``-frame temporal crop, a spatial roll of
    at most ``max_shift`` px, a brightness factor and one static noise pattern, each drawn once per clip."""
    b, c, t, h, w = clips.shape
    if not 1 <= length <= t:
        raise ValueError(f"crop length must be in [1, {t}] (frames per clip), got {length}")
    start = torch.randint(0, t - length + 1, (b,), generator=generator)
    shift = torch.randint(-max_shift, max_shift + 1, (b, 2), generator=generator)
    scale = brightness[0] + (brightness[1] - brightness[0]) * torch.rand(b, generator=generator)
    static = noise * torch.randn(b, c, 1, h, w, generator=generator)
    out = []
    for i in range(b):
        view = clips[i, :, start[i] : start[i] + length]
        out.append(torch.roll(view, (int(shift[i, 0]), int(shift[i, 1])), dims=(2, 3)) * scale[i] + static[i])
    return torch.stack(out)


class MovingDigitsDataModule(LightningDataModule):
    """Seeded moving-digit clips (:func:`moving_digit_clips`), labelled by motion direction (4 classes).

    Args:
        batch_size: videos per training batch.
        seed: seeds the videos (train, val and test drawn from disjoint seeds).
        num_train / num_val / num_test: videos per split.
        frames: frames generated per video; training views crop ``clip_len + 2`` of them.
        clip_len: frames the encoder sees (evaluation clips: the first ``clip_len`` frames).
        size / sprite_scale / distractors: the task (see :func:`moving_digit_clips`).
        max_shift / noise: the views' spatial roll and static noise std.
    """

    def __init__(
        self,
        batch_size: int = 64,
        seed: int = 0,
        num_train: int = 1000,
        num_val: int = 200,
        num_test: int = 400,
        frames: int = 14,
        clip_len: int = 8,
        size: int = 16,
        sprite_scale: float = 0.5,
        distractors: int = 2,
        max_shift: int = 3,
        noise: float = 0.1,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if clip_len + 2 > frames:
            raise ValueError(f"clip_len + 2 must be <= frames (order-2 derivatives need two spare frames), got {clip_len} and {frames}")
        if batch_size < 1 or min(num_train, num_val, num_test) < 1:
            raise ValueError("batch_size and the split sizes must be positive")
        self.save_hyperparameters()
        self.batch_size, self.seed, self.clip_len, self.num_workers = batch_size, seed, clip_len, num_workers
        self.num_classes = len(DIRECTIONS)
        self.sets: dict[str, TensorDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.sets:
            return
        hp = self.hparams
        for k, (name, n) in enumerate((("train", hp.num_train), ("val", hp.num_val), ("test", hp.num_test))):
            x, y = moving_digit_clips(n, hp.frames, hp.size, hp.sprite_scale, hp.distractors, seed=self.seed * 3 + k)
            self.sets[name] = TensorDataset(x, y)

    def _two_views(self, batch: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor, Tensor]:
        x, y = torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch])
        hp = self.hparams
        return (augment_clips(x, self.clip_len + 2, hp.max_shift, noise=hp.noise), augment_clips(x, self.clip_len + 2, hp.max_shift, noise=hp.noise), y)

    def _originals(self, batch: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        return torch.stack([b[0][:, : self.clip_len] for b in batch]), torch.stack([b[1] for b in batch])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.sets["train"], self.batch_size, shuffle=True, drop_last=True, collate_fn=self._two_views, num_workers=self.num_workers)

    def eval_train_dataloader(self) -> DataLoader:
        return DataLoader(self.sets["train"], 256, collate_fn=self._originals)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.sets["val"], 256, collate_fn=self._originals)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.sets["test"], 256, collate_fn=self._originals)


# ------------------------------------------------------------------------------------------ UCF101
def read_video_pyav(path: str | Path) -> Tensor:
    """All frames of a video file as ``(T, H, W, 3)`` uint8, decoded with PyAV (FFmpeg bundled in its wheel)."""
    import av

    with av.open(str(path)) as container:
        frames = [torch.from_numpy(f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]
    if not frames:
        raise ValueError(f"{path}: no video frames decoded")
    return torch.stack(frames)


def _torchcodec_loads() -> bool:
    """torchvision >= 0.25 decodes video with torchcodec, which needs FFmpeg's shared libraries on the system."""
    try:
        torchcodec = importlib.import_module("torchcodec")
    except (ImportError, OSError, RuntimeError):
        return False
    return getattr(torchcodec, "ffmpeg_major_version", None) is not None  # None: no FFmpeg library loaded


class _UCF101Split(Dataset):
    """One official UCF101 split (classInd / trainlist0k / testlist0k), one clip per video, decoded by PyAV."""

    def __init__(self, root: Path, annotation_path: Path, fold: int, train: bool, frames: int, stride: int, random_start: bool) -> None:
        classes = [line.split()[1] for line in (annotation_path / "classInd.txt").read_text().split("\n") if line.strip()]
        listed = (annotation_path / f"{'train' if train else 'test'}list0{fold}.txt").read_text().split("\n")
        self.videos = [root / line.split()[0] for line in listed if line.strip()]
        index = {c: i for i, c in enumerate(classes)}
        self.labels = [index[v.parent.name] for v in self.videos]
        self.frames, self.stride, self.random_start = frames, stride, random_start

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        video = read_video_pyav(self.videos[i])
        return _pick_clip(video, self.frames, self.stride, self.random_start), self.labels[i]


class _TorchvisionUCF101(Dataset):
    """torchvision's ``UCF101`` (torchcodec decoding), every ``frames``-frame clip, ``(T, H, W, C)`` uint8."""

    def __init__(self, root: Path, annotation_path: Path, fold: int, train: bool, frames: int, stride: int) -> None:
        from torchvision.datasets import UCF101

        self.base = UCF101(str(root), str(annotation_path), frames_per_clip=frames * stride, step_between_clips=frames * stride, fold=fold, train=train)
        self.stride = stride

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        video, _, label = self.base[i]
        return video[:: self.stride], int(label)


def _pick_clip(video: Tensor, frames: int, stride: int, random_start: bool) -> Tensor:
    """``frames`` frames ``stride`` apart (random start in training, centred otherwise); short videos loop."""
    span = (frames - 1) * stride + 1
    if len(video) < span:
        video = video.repeat((span + len(video) - 1) // len(video), 1, 1, 1)
    start = int(torch.randint(0, len(video) - span + 1, ())) if random_start else (len(video) - span) // 2
    return video[start : start + span : stride]


class UCF101DataModule(LightningDataModule):
    """UCF101 (101 actions) in its official on-disk layout: ``root/UCF-101/<Class>/*.avi`` and ``root/ucfTrainTestlist``.

    ``decoder="torchvision"`` is torchvision's ``datasets.UCF101`` (decoding through torchcodec, which needs
    FFmpeg's shared libraries); ``"pyav"`` reads the same split files and decodes with PyAV, whose wheel
    bundles FFmpeg; ``"auto"`` uses torchvision's when torchcodec loads. Frames are resized to
    ``size`` x ``size`` and standardised with the Kinetics mean/std; training views draw one random
    crop-and-resize, flip and brightness per clip.
    """

    def __init__(
        self,
        root: str = "data",
        fold: int = 1,
        clip_len: int = 16,
        stride: int = 2,
        size: int = 112,
        batch_size: int = 32,
        num_workers: int = 8,
        decoder: Literal["auto", "torchvision", "pyav"] = "auto",
    ) -> None:
        super().__init__()
        if fold not in (1, 2, 3):
            raise ValueError(f"UCF101 has official folds 1, 2, 3, got {fold}")
        if decoder not in ("auto", "torchvision", "pyav"):
            raise ValueError(f"decoder must be 'auto', 'torchvision' or 'pyav', got {decoder!r}")
        self.save_hyperparameters()
        self.root, self.clip_len, self.stride, self.size = Path(root), clip_len, stride, size
        self.batch_size, self.num_workers = batch_size, num_workers
        self.num_classes = 101
        self.sets: dict[str, Dataset] = {}

    def _split(self, train: bool, frames: int, random_start: bool) -> Dataset:
        videos, notes = self.root / "UCF-101", self.root / "ucfTrainTestlist"
        if not videos.is_dir() or not (notes / "classInd.txt").is_file():
            raise FileNotFoundError(
                f"UCF101 not found under {self.root}: expected {videos}/<Class>/*.avi and {notes}/classInd.txt "
                "(download UCF101.rar and UCF101TrainTestSplits-RecognitionTask.zip from crcv.ucf.edu and unpack them there)"
            )
        decoder = self.hparams.decoder
        if decoder == "torchvision" or (decoder == "auto" and _torchcodec_loads()):
            return _TorchvisionUCF101(videos, notes, self.hparams.fold, train, frames, self.stride)
        return _UCF101Split(videos, notes, self.hparams.fold, train, frames, self.stride, random_start)

    def setup(self, stage: str | None = None) -> None:
        if not self.sets:
            self.sets = {
                "train": self._split(True, self.clip_len + 2, True),
                "eval_train": self._split(True, self.clip_len, False),
                "test": self._split(False, self.clip_len, False),
            }

    def _frames(self, clip: Tensor) -> Tensor:
        """``(T, H, W, 3)`` uint8 -> ``(3, T, size, size)`` float, standardised (Kinetics statistics)."""
        x = clip.permute(0, 3, 1, 2).float() / 255.0
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        mean, std = torch.tensor([0.43216, 0.394666, 0.37645]), torch.tensor([0.22803, 0.22145, 0.216989])
        return ((x - mean[:, None, None]) / std[:, None, None]).permute(1, 0, 2, 3)

    def _view(self, clip: Tensor) -> Tensor:
        """One crop box (scale 0.3-1), flip and brightness for all frames of the clip."""
        t, h, w, _ = clip.shape
        side = max(1, int(min(h, w) * float(torch.empty(()).uniform_(0.55, 1.0))))
        r, c = int(torch.randint(0, h - side + 1, ())), int(torch.randint(0, w - side + 1, ()))
        x = self._frames(clip[:, r : r + side, c : c + side])
        if torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x * float(torch.empty(()).uniform_(0.8, 1.2))

    def _two_views(self, batch: list[tuple[Tensor, int]]) -> tuple[Tensor, Tensor, Tensor]:
        return (torch.stack([self._view(c) for c, _ in batch]), torch.stack([self._view(c) for c, _ in batch]), torch.tensor([y for _, y in batch]))

    def _originals(self, batch: list[tuple[Tensor, int]]) -> tuple[Tensor, Tensor]:
        return torch.stack([self._frames(c) for c, _ in batch]), torch.tensor([y for _, y in batch])

    def _loader(self, name: str, **kwargs: Any) -> DataLoader:
        return DataLoader(self.sets[name], self.batch_size, num_workers=self.num_workers, **kwargs)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True, drop_last=len(self.sets["train"]) > self.batch_size, collate_fn=self._two_views)

    def eval_train_dataloader(self) -> DataLoader:
        return self._loader("eval_train", collate_fn=self._originals)

    def val_dataloader(self) -> DataLoader:
        return self._loader("test", collate_fn=self._originals)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", collate_fn=self._originals)
