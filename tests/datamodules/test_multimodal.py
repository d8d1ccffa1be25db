"""Two-modality DataModules: digits shapes and structure; CREMA-D / Kinetics-Sounds on fixture files
written in the official on-disk layout (wav decoded by soundfile, the label encoded in the tone's
pitch and the frame's colour so a test can read it back)."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from zoo.datamodules import CREMADDataModule, KineticsSoundsDataModule, MultimodalDigitsDataModule
from zoo.datamodules.digits import split_digits
from zoo.datamodules.multimodal import CREMAD_CLASSES, load_wav, log_spectrogram

RATE = 16000  # CREMA-D's wav rate
CREMAD_CLIPS = {"train": ["1001_DFA_ANG_XX", "1002_IEO_HAP_LO", "1003_TIE_SAD_MD", "1004_ITS_NEU_XX"], "test": ["1005_IOM_FEA_HI", "1006_WSI_DIS_XX"]}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tone(label: int, seconds: float = 0.25, rate: int = RATE) -> np.ndarray:
    """A sine at ``500 + 500 label`` Hz: its pitch encodes the label."""
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * (500 + 500 * label) * t)).astype(np.float32)


def _frame(path: Path, label: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((24, 32, 3), 20 * label + 10, dtype=np.uint8)).save(path)


def write_cremad(root: Path) -> None:
    """CREMA-D as the ARL preprocessing leaves it: AudioWAV/, Image-01-FPS/<clip>/, train.csv, test.csv."""
    (root / "AudioWAV").mkdir(parents=True, exist_ok=True)
    for split, clips in CREMAD_CLIPS.items():
        with open(root / f"{split}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            for clip in clips:
                label = CREMAD_CLASSES.index(clip.split("_")[2])
                writer.writerow([clip, clip.split("_")[2]])
                soundfile.write(root / "AudioWAV" / f"{clip}.wav", tone(label), RATE)
                _frame(root / "Image-01-FPS" / clip / "00000.jpg", label)


def write_kinetics_sounds(root: Path, classes: tuple[str, ...] = ("playing_drums", "blowing_nose")) -> None:
    """Kinetics-Sounds as the ARL layout: audio/{train,test}/<class>/<clip>.wav, visual/.../<class>/<clip>/ (3 frames)."""
    for split, img in (("train", "train_img"), ("test", "val_img")):
        for name in classes:
            label = sorted(classes).index(name)
            for k in range(2):
                clip = f"{name}_{split}_{k}"
                (root / "audio" / split / name).mkdir(parents=True, exist_ok=True)
                soundfile.write(root / "audio" / split / name / f"{clip}.wav", tone(label, 1.0), RATE)
                for j in range(3):
                    _frame(root / "visual" / img / "Image-01-FPS" / name / clip / f"{j:05d}.jpg", label)


def _peak_hz(spec: torch.Tensor, rate: int, n_fft: int) -> float:
    return float(spec.squeeze(0).mean(-1).argmax()) * rate / n_fft


# ---------------------------------------------------------------------------------------- digits
def test_digits_modalities_are_the_digit_and_a_noisy_class_code() -> None:
    dm = MultimodalDigitsDataModule(seed=3, scale_a=0.3, noise_v=0.0, code_dim=8)
    dm.setup()
    (x_tr, y_tr), _, (x_te, y_te) = split_digits(3, 0.1, 0.3)
    x, y = dm.test_set.inputs, dm.test_set.y
    assert set(next(iter(dm.test_dataloader()))[0]) == {"a", "v"} and x["a"].shape == (len(y_te), 64) and x["v"].shape == (len(y_te), 8)
    assert torch.equal(y, torch.as_tensor(y_te))
    expected_a = 0.3 * (x_te - x_tr.mean()) / x_tr.std()
    torch.testing.assert_close(x["a"], torch.tensor(expected_a, dtype=torch.float32))
    for k in range(10):  # without noise, v is the class code: equal within a class, different across
        rows = x["v"][y == k]
        assert torch.allclose(rows, rows[:1].expand_as(rows))
    assert not torch.allclose(x["v"][y == 0][0], x["v"][y == 1][0])


def test_digits_noise_and_seed() -> None:
    a, b = MultimodalDigitsDataModule(seed=1), MultimodalDigitsDataModule(seed=1)
    a.setup(), b.setup()
    xa, ya = a.train_set[5]
    xb, yb = b.train_set[5]
    assert torch.equal(xa["v"], xb["v"]) and ya == yb
    x, y = a.test_set.inputs, a.test_set.y
    codes = torch.stack([x["v"][y == k].mean(0) for k in range(10)])
    noise = x["v"] - codes[y]
    assert 2.2 < float(noise.std()) < 2.8  # noise_v = 2.5 around the class code
    with pytest.raises(ValueError, match="scale_a"):
        MultimodalDigitsDataModule(scale_a=0.0)


# ------------------------------------------------------------------------------------- audio
def test_soundfile_decode_and_resample(tmp_path: Path) -> None:
    soundfile.write(tmp_path / "tone.wav", tone(1, 0.5), RATE)  # 1000 Hz
    wave = load_wav(tmp_path / "tone.wav", 22050)
    assert wave.dtype == np.float32 and abs(len(wave) - 0.5 * 22050) <= 1
    spec = log_spectrogram(wave, 512, 353)
    assert spec.shape == (257, 1 + len(wave) // 353)
    assert abs(_peak_hz(spec, 22050, 512) - 1000) < 22050 / 512  # the peak is the tone's bin


def test_log_spectrogram_matches_a_numpy_stft() -> None:
    rng = np.random.default_rng(0)
    wave = rng.uniform(-0.9, 0.9, 3000).astype(np.float32)
    n_fft, hop = 256, 100
    padded = np.pad(wave, n_fft // 2)  # librosa.stft: centred, zero padding
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    frames = [np.abs(np.fft.rfft(window * padded[k * hop : k * hop + n_fft])) for k in range(1 + len(wave) // hop)]
    expected = np.log(np.stack(frames, 1) + 1e-7)
    np.testing.assert_allclose(log_spectrogram(wave, n_fft, hop).numpy(), expected, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------- CREMA-D / KS
def test_cremad_reads_the_official_layout(tmp_path: Path) -> None:
    write_cremad(tmp_path)
    dm = CREMADDataModule(root=str(tmp_path), frames=1, image_size=32, batch_size=8)
    dm.setup()
    assert len(dm.sets["train"]) == 4 and len(dm.sets["test"]) == 2 and dm.num_classes == 6
    x, y = next(iter(dm.test_dataloader()))
    assert x["audio"].shape == (2, 1, 257, 188) and x["visual"].shape == (2, 3, 1, 32, 32)
    assert y.tolist() == [CREMAD_CLASSES.index("FEA"), CREMAD_CLASSES.index("DIS")]
    for k in range(2):  # the label comes back from the decoded pitch and the frame's colour
        assert abs(_peak_hz(x["audio"][k], 22050, 512) - (500 + 500 * int(y[k]))) < 2 * 22050 / 512
        pixel = float(x["visual"][k, 0, 0, 0, 0]) * 0.229 + 0.485
        assert round((pixel * 255 - 10) / 20) == int(y[k])


def test_cremad_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CREMADDataModule(root=str(tmp_path / "nowhere")).setup()
    write_cremad(tmp_path)
    (tmp_path / "test.csv").unlink()
    with pytest.raises(FileNotFoundError, match="official split"):
        CREMADDataModule(root=str(tmp_path)).setup()
    (tmp_path / "test.csv").write_text("1005_IOM_FEA_HI,BORED\n")
    with pytest.raises(ValueError, match="unknown emotion"):
        CREMADDataModule(root=str(tmp_path)).setup()


def test_kinetics_sounds_reads_the_official_layout(tmp_path: Path) -> None:
    write_kinetics_sounds(tmp_path)
    dm = KineticsSoundsDataModule(root=str(tmp_path), frames=3, image_size=16, batch_size=4)
    dm.setup()
    assert dm.num_classes == 2 and dm.classes == ["blowing_nose", "playing_drums"]
    x, y = next(iter(dm.test_dataloader()))
    assert x["audio"].shape == (4, 1, 129, 626) and x["visual"].shape == (4, 3, 3, 16, 16)  # 5 s at 16 kHz, hop 128
    for k in range(4):
        assert abs(_peak_hz(x["audio"][k], 16000, 256) - (500 + 500 * int(y[k]))) < 2 * 16000 / 256
