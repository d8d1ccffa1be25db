"""Moving-digit clips (the dim-mover task), clip augmentation, PyAV decoding and the UCF101 loader on fixture videos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from zoo.datamodules import MovingDigitsDataModule, UCF101DataModule
from zoo.datamodules.video import DIRECTIONS, _torchcodec_loads, augment_clips, moving_digit_clips, read_video_pyav

UCF_CLASSES = ("ApplyEyeMakeup", "Archery")


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def write_avi(path: Path, frames: np.ndarray, fps: int = 25) -> None:
    """``(T, H, W, 3)`` uint8 frames to an MPEG-4 AVI with PyAV: UCF101's container."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def write_ucf101(root: Path, frames: int = 8, size: int = 32) -> Path:
    """UCF101's on-disk layout: ``UCF-101/<Class>/v_<Class>_gXX_cYY.avi`` and ``ucfTrainTestlist/`` split 1."""
    notes = root / "ucfTrainTestlist"
    notes.mkdir(parents=True, exist_ok=True)
    (notes / "classInd.txt").write_text("".join(f"{i + 1} {c}\n" for i, c in enumerate(UCF_CLASSES)))
    train, test = [], []
    for k, name in enumerate(UCF_CLASSES):
        for group in (1, 2, 3):
            rel = f"{name}/v_{name}_g{group:02d}_c01.avi"
            level = 60 + 120 * k + 10 * group
            clip = np.full((frames, size, size, 3), level, np.uint8)
            clip[:, :, :, k] = 255 - level  # class-coloured
            write_avi(root / "UCF-101" / rel, clip)
            (train if group < 3 else test).append(rel)
    (notes / "trainlist01.txt").write_text("".join(f"{r} {UCF_CLASSES.index(r.split('/')[0]) + 1}\n" for r in train))
    (notes / "testlist01.txt").write_text("".join(f"{r}\n" for r in test))
    return root


def test_pyav_decodes_a_video_written_by_the_test(tmp_path: Path) -> None:
    frames = np.stack([np.full((16, 16, 3), 20 * t, np.uint8) for t in range(6)])
    write_avi(tmp_path / "tiny.avi", frames)
    video = read_video_pyav(tmp_path / "tiny.avi")
    assert video.shape == (6, 16, 16, 3) and video.dtype == torch.uint8
    assert torch.allclose(video.float().mean((1, 2, 3)), torch.arange(6.0) * 20, atol=4)  # lossy codec: close, in order


def test_still_background_and_rolling_sprite() -> None:
    still, _ = moving_digit_clips(4, frames=5, sprite_scale=0.0, seed=1)
    assert torch.equal(still, still[:, :, :1].expand_as(still))  # no sprite: nothing moves
    clips, labels = moving_digit_clips(8, frames=5, distractors=0, seed=2)
    assert clips.shape == (8, 1, 5, 16, 16) and 0 <= clips.min() and clips.max() <= 0.5
    for clip, label in zip(clips, labels):
        dy, dx = DIRECTIONS[label]
        for t in range(4):  # 1 px per frame, wrapping around, in the labelled direction
            assert torch.equal(clip[0, t + 1], torch.roll(clip[0, t], (dy, dx), dims=(0, 1)))


def test_augmentation_is_one_draw_per_clip() -> None:
    clips, _ = moving_digit_clips(3, frames=10, seed=0)
    view = augment_clips(clips, 6, max_shift=3, brightness=(1.0, 1.0), noise=0.0, generator=torch.Generator().manual_seed(0))
    assert view.shape == (3, 1, 6, 16, 16)
    for original, v in zip(clips, view):
        found = [
            (s, dy, dx)
            for s in range(5)
            for dy in range(-3, 4)
            for dx in range(-3, 4)
            if torch.equal(torch.roll(original[:, s : s + 6], (dy, dx), dims=(2, 3)), v)
        ]
        assert found, "a view must be one temporal crop rolled by one shift for all its frames"


def test_moving_digits_batches() -> None:
    dm = MovingDigitsDataModule(batch_size=4, num_train=8, num_val=4, num_test=6, frames=12, clip_len=6)
    dm.setup()
    v1, v2, y = next(iter(dm.train_dataloader()))
    assert v1.shape == v2.shape == (4, 1, 8, 16, 16) and not torch.equal(v1, v2)
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (6, 1, 6, 16, 16) and set(y.tolist()) <= {0, 1, 2, 3}
    assert len(dm.eval_train_dataloader().dataset) == 8
    with pytest.raises(ValueError, match="clip_len"):
        MovingDigitsDataModule(frames=8, clip_len=8)


def test_ucf101_pyav_loader_on_fixture_videos(tmp_path: Path) -> None:
    root = write_ucf101(tmp_path)
    dm = UCF101DataModule(str(root), clip_len=4, stride=2, size=16, batch_size=2, num_workers=0, decoder="pyav")
    dm.setup()
    v1, v2, y = next(iter(dm.train_dataloader()))
    assert v1.shape == v2.shape == (2, 3, 6, 16, 16)
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (2, 3, 4, 16, 16) and y.tolist() == [0, 1]  # classInd order, test list g03 of each class
    assert x[0, 0].std() < 0.05  # a still video stays still after decoding and standardising
    assert len(dm.eval_train_dataloader().dataset) == 4


@pytest.mark.skipif(not _torchcodec_loads(), reason="torchvision's UCF101 decodes with torchcodec, which needs FFmpeg's shared libraries")
def test_ucf101_torchvision_loader_on_fixture_videos(tmp_path: Path) -> None:
    root = write_ucf101(tmp_path)
    dm = UCF101DataModule(str(root), clip_len=2, stride=1, size=16, batch_size=2, num_workers=0, decoder="torchvision")
    dm.setup()
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape[1:] == (3, 2, 16, 16)


def test_ucf101_missing_files_say_what_to_unpack(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="ucfTrainTestlist"):
        UCF101DataModule(str(tmp_path), decoder="pyav").setup()
    with pytest.raises(ValueError, match="fold"):
        UCF101DataModule(fold=4)
