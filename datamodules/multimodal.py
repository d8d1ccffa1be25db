"""Two-modality DataModules: imbalanced-modality digits (embedded) and CREMA-D / Kinetics-Sounds (on disk).

Every batch is ``({modality: tensor, ...}, label)``.

- :class:`MultimodalDigitsDataModule`: modality ``a`` is the real digit (64 standardised pixels,
  scaled down by ``scale_a``: informative but slow to learn), modality ``v`` a seeded 16-d class
  code plus heavy Gaussian noise at full scale (fast to fit, weak): the imbalance ARL targets.
- :class:`CREMADDataModule` and :class:`KineticsSoundsDataModule` read the layouts of the ARL /
  OGM-GE preprocessing (frames extracted at 1 fps into ``Image-01-FPS``, audio as wav) and build
  the official spectrograms: wav decoded with ``soundfile`` (libsndfile; no torchaudio needed),
  resampled with ``scipy.signal.resample_poly``, ``log(|STFT| + 1e-7)`` with a periodic Hann window
  (as ``librosa.stft``). Audio ``(1, F, T)``, video ``(3, frames, H, W)`` ImageNet-normalised.
"""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from zoo.datamodules.digits import SeededSplitLoaders, split_digits

__all__ = [
    "MultimodalDigitsDataModule",
    "CREMADDataModule",
    "KineticsSoundsDataModule",
    "AudioVisualDataset",
    "load_wav",
    "log_spectrogram",
    "CREMAD_CLASSES",
]

CREMAD_CLASSES = ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")  # the official class_dict order
_IMAGENET_MEAN, _IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


class _DictDataset(Dataset):
    """``({name: tensor[i]}, y[i])`` over equally long tensors."""

    def __init__(self, inputs: dict[str, Tensor], y: Tensor) -> None:
        self.inputs, self.y = inputs, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[dict[str, Tensor], Tensor]:
        return {k: v[i] for k, v in self.inputs.items()}, self.y[i]


class MultimodalDigitsDataModule(SeededSplitLoaders, LightningDataModule):
    """Digits as an informative, slow modality ``a`` beside a noisy, fast class-code modality ``v``.

    Args:
        batch_size: training batch size.
        seed: seeds the split, the class codes and the noise.
        scale_a: input scale of the standardised pixels (small: slow to learn).
        code_dim / noise_v / scale_v: width of ``v``, its noise std around the class code, its scale:
            ``x_v = scale_v (mu_y + noise_v eps)``, ``mu_y ~ N(0, I)``.
        val_fraction / test_fraction: of the 1,797 digits.
    """

    modalities = ("a", "v")

    def __init__(
        self,
        batch_size: int = 64,
        seed: int = 0,
        scale_a: float = 0.3,
        code_dim: int = 16,
        noise_v: float = 2.5,
        scale_v: float = 1.0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.3,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1 or code_dim < 1 or scale_a <= 0 or scale_v <= 0 or noise_v < 0:
            raise ValueError("need batch_size >= 1, code_dim >= 1, scale_a > 0, scale_v > 0 and noise_v >= 0")
        self.save_hyperparameters()
        self.batch_size, self.seed, self.num_workers = batch_size, seed, num_workers
        self.train_set: _DictDataset | None = None

    @property
    def num_classes(self) -> int:
        return 10

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        hp = self.hparams
        splits = split_digits(self.seed, hp["val_fraction"], hp["test_fraction"])
        mean, std = splits[0][0].mean(), splits[0][0].std()
        rng = np.random.default_rng(self.seed)
        codes = rng.standard_normal((10, hp["code_dim"]))
        sets = []
        for x, y in splits:
            x_a = hp["scale_a"] * (x - mean) / std
            x_v = hp["scale_v"] * (codes[y] + hp["noise_v"] * rng.standard_normal((len(y), hp["code_dim"])))
            inputs = {"a": torch.tensor(x_a, dtype=torch.float32), "v": torch.tensor(x_v, dtype=torch.float32)}
            sets.append(_DictDataset(inputs, torch.tensor(y, dtype=torch.long)))
        self.train_set, self.val_set, self.test_set = sets



# --------------------------------------------------------------------------------- audio + frames
def load_wav(path: str | Path, sample_rate: int) -> np.ndarray:
    """A mono float32 waveform at ``sample_rate`` (soundfile decode, polyphase resampling)."""
    import soundfile
    from scipy.signal import resample_poly

    wave, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    wave = wave.mean(1)
    if rate != sample_rate:
        g = math.gcd(int(rate), int(sample_rate))
        wave = resample_poly(wave, sample_rate // g, int(rate) // g).astype(np.float32)
    return wave


def log_spectrogram(wave: np.ndarray, n_fft: int, hop_length: int) -> Tensor:
    """``log(|STFT| + 1e-7)``, shape ``(1 + n_fft // 2, frames)``: ``librosa.stft``'s defaults (Hann, centred, zero pad)."""
    x = torch.as_tensor(np.clip(wave, -1.0, 1.0), dtype=torch.float32)
    spec = torch.stft(x, n_fft, hop_length, window=torch.hann_window(n_fft), center=True, pad_mode="constant", return_complex=True)
    return torch.log(spec.abs() + 1e-7)


def _cremad_audio(wave: np.ndarray, train: bool) -> np.ndarray:
    """The official CREMA-D clip: tiled three times, the first 3 s at 22,050 Hz (tiled more if under 1 s)."""
    return np.tile(wave, max(3, math.ceil(22050 * 3 / max(len(wave), 1))))[: 22050 * 3]


def _ks_audio(wave: np.ndarray, train: bool) -> np.ndarray:
    """The official Kinetics-Sounds clip: tiled to >= 10 s, a 5 s window at 16 kHz (random in training)."""
    rate = 16000
    while len(wave) < 10 * rate:
        wave = np.tile(wave, 2)
    start = random.randint(0, 5 * rate) if train else 0
    return wave[start : start + 5 * rate]


class AudioVisualDataset(Dataset):
    """``({"audio": (1, F, T), "visual": (3, frames, H, W)}, label)`` from ``(wav, frame folder, label)`` items."""

    def __init__(
        self,
        items: list[tuple[Path, Path, int]],
        sample_rate: int,
        n_fft: int,
        hop_length: int,
        clip: Callable[[np.ndarray, bool], np.ndarray],
        frames: int,
        image_size: int,
        train: bool,
    ) -> None:
        self.items, self.sample_rate, self.n_fft, self.hop_length = items, sample_rate, n_fft, hop_length
        self.clip, self.frames, self.train = clip, frames, train
        resize = [transforms.RandomResizedCrop(image_size), transforms.RandomHorizontalFlip()] if train else [transforms.Resize((image_size, image_size))]
        self.transform = transforms.Compose([*resize, transforms.ToTensor(), transforms.Normalize(_IMAGENET_MEAN, _IMAGENET_STD)])

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[dict[str, Tensor], int]:
        wav, folder, label = self.items[i]
        audio = log_spectrogram(self.clip(load_wav(wav, self.sample_rate), self.train), self.n_fft, self.hop_length)
        names = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if len(names) < self.frames:
            raise ValueError(f"{folder} has {len(names)} frames, {self.frames} needed (lower frames=)")
        # the official loaders draw `frames` indices and then read the first `frames` files; we read the drawn ones
        pick = sorted(random.sample(range(len(names)), self.frames)) if self.train else list(range(self.frames))
        images = [self.transform(Image.open(names[k]).convert("RGB")) for k in pick]
        return {"audio": audio.unsqueeze(0), "visual": torch.stack(images, 1)}, label


class _AudioVisualDataModule(LightningDataModule):
    """Shared loaders; subclasses list the ``(wav, frame folder, label)`` items of each split."""

    modalities = ("audio", "visual")
    sample_rate, n_fft, hop_length = 22050, 512, 353
    _clip = staticmethod(_cremad_audio)

    def __init__(self, root: str, frames: int, image_size: int, batch_size: int, num_workers: int) -> None:
        super().__init__()
        if frames < 1 or image_size < 8 or batch_size < 1:
            raise ValueError(f"need frames >= 1, image_size >= 8, batch_size >= 1; got {frames}, {image_size}, {batch_size}")
        self.root = Path(root)
        self.frames, self.image_size, self.batch_size, self.num_workers = frames, image_size, batch_size, num_workers
        self.sets: dict[str, AudioVisualDataset] = {}

    def _items(self, split: str) -> list[tuple[Path, Path, int]]:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.sets:
            return
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root} does not exist: prepare the dataset there (see {type(self).__name__}'s docstring)")
        for split in ("train", "test"):
            items = self._items(split)
            if not items:
                raise FileNotFoundError(f"no {split} clips with both audio and frames under {self.root}")
            self.sets[split] = AudioVisualDataset(
                items, self.sample_rate, self.n_fft, self.hop_length, self._clip, self.frames, self.image_size, split == "train"
            )

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(self.sets[split], self.batch_size, shuffle=shuffle, num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("test", False)  # the official scripts validate on the test split

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)


class CREMADDataModule(_AudioVisualDataModule):
    """CREMA-D (6 emotions) in the ARL / OGM-GE layout.

    ``root/train.csv`` and ``root/test.csv`` (rows ``clip,EMOTION``, the official split files from
    ``dataset/data/CREMAD/``), ``root/AudioWAV/<clip>.wav`` and ``root/Image-01-FPS/<clip>/*.jpg``
    (frames at 1 fps). Clips missing either modality are skipped, as in the official loader.
    """

    num_classes = len(CREMAD_CLASSES)

    def __init__(self, root: str = "data/CREMA-D", frames: int = 1, image_size: int = 224, batch_size: int = 64, num_workers: int = 0) -> None:
        super().__init__(root, frames, image_size, batch_size, num_workers)

    def _items(self, split: str) -> list[tuple[Path, Path, int]]:
        table = self.root / f"{split}.csv"
        if not table.is_file():
            raise FileNotFoundError(f"{table} is missing: copy the official split (dataset/data/CREMAD/{split}.csv) there")
        items = []
        with open(table, encoding="utf-8-sig") as f:
            for row in csv.reader(f):
                if not row:
                    continue
                clip, emotion = row[0], row[1]
                if emotion not in CREMAD_CLASSES:
                    raise ValueError(f"{table}: unknown emotion {emotion!r} for {clip}; expected one of {CREMAD_CLASSES}")
                wav, frames = self.root / "AudioWAV" / f"{clip}.wav", self.root / "Image-01-FPS" / clip
                if wav.is_file() and frames.is_dir():
                    items.append((wav, frames, CREMAD_CLASSES.index(emotion)))
        return items


class KineticsSoundsDataModule(_AudioVisualDataModule):
    """Kinetics-Sounds (31-34 classes) in the ARL layout; classes are the sorted class folder names.

    ``root/audio/{train,test}/<class>/<clip>.wav`` and
    ``root/visual/{train_img,val_img}/Image-01-FPS/<class>/<clip>/*.jpg``. Clips with fewer than 3
    frames are skipped as in the official loader; audio at 16 kHz, STFT 256 / hop 128.
    """

    sample_rate, n_fft, hop_length = 16000, 256, 128
    _clip = staticmethod(_ks_audio)

    def __init__(
        self, root: str = "data/kinetics-sounds", frames: int = 3, image_size: int = 224, batch_size: int = 64, num_workers: int = 0
    ) -> None:
        super().__init__(root, frames, image_size, batch_size, num_workers)
        self.classes: list[str] = []

    @property
    def num_classes(self) -> int:
        self.classes = self.classes or sorted(p.name for p in (self.root / "audio" / "train").iterdir() if p.is_dir())
        return len(self.classes)

    def _items(self, split: str) -> list[tuple[Path, Path, int]]:
        audio = self.root / "audio" / split
        visual = self.root / "visual" / ("train_img" if split == "train" else "val_img") / "Image-01-FPS"
        if not audio.is_dir() or not visual.is_dir():
            raise FileNotFoundError(f"expected {audio} and {visual} (the ARL Kinetics-Sounds layout)")
        self.num_classes  # noqa: B018 - fixes the class order from the train folders
        items = []
        for label, name in enumerate(self.classes):
            for wav in sorted((audio / name).glob("*.wav")):
                frames = visual / name / wav.stem
                if frames.is_dir() and sum(1 for _ in frames.iterdir()) >= 3:
                    items.append((wav, frames, label))
        return items
