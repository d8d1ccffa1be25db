"""DigitsDataModule: split, long-tail profile, binary view, normalization, shapes, arguments."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from zoo.datamodules import DigitsDataModule, longtail_counts

torch.set_num_threads(1)

ALL_LABELS = load_digits().target


def labels(dataset: torch.utils.data.TensorDataset) -> np.ndarray:
    return dataset.tensors[1].numpy()


def built(**kwargs: object) -> DigitsDataModule:
    dm = DigitsDataModule(**kwargs)
    dm.setup()
    return dm


def test_split_sizes_add_up_and_are_stratified() -> None:
    dm = built()
    sizes = [len(dm.train_set), len(dm.val_set), len(dm.test_set)]
    # sklearn rounds the held-out part up: test ceil(0.25 * 1797) = 450, val ceil(0.2 * 1347) = 270.
    assert sizes == [1077, 270, 450] and sum(sizes) == 1797
    total = np.bincount(ALL_LABELS)
    for split, share in ((dm.train_set, 1077 / 1797), (dm.val_set, 270 / 1797), (dm.test_set, 450 / 1797)):
        assert np.all(np.abs(np.bincount(labels(split), minlength=10) - share * total) <= 2)


def test_imbalance_profile_on_train_only() -> None:
    balanced = built(imbalance_ratio=1, normalize=False)
    longtail = built(imbalance_ratio=10, normalize=False)
    assert longtail.class_counts == longtail_counts(min(balanced.class_counts), 10, 10)
    assert longtail.class_counts[0] / longtail.class_counts[-1] == pytest.approx(10, rel=0.1)
    for a, b in ((balanced.val_set, longtail.val_set), (balanced.test_set, longtail.test_set)):
        assert torch.equal(a.tensors[0], b.tensors[0]) and torch.equal(a.tensors[1], b.tensors[1])


def test_same_seed_same_split_other_seed_other_split() -> None:
    a, b, c = built(seed=0, imbalance_ratio=5), built(seed=0, imbalance_ratio=5), built(seed=1, imbalance_ratio=5)
    for name in ("train_set", "val_set", "test_set"):
        assert torch.equal(getattr(a, name).tensors[0], getattr(b, name).tensors[0])
        assert not torch.equal(getattr(a, name).tensors[0], getattr(c, name).tensors[0])
    batch_a, batch_b = next(iter(a.train_dataloader())), next(iter(b.train_dataloader()))
    assert torch.equal(batch_a[0], batch_b[0])


@pytest.mark.parametrize("imbalance_ratio", [1.0, 10.0])
def test_binary_positive(imbalance_ratio: float) -> None:
    multi = built(imbalance_ratio=imbalance_ratio)
    binary = built(imbalance_ratio=imbalance_ratio, binary_positive=3)
    assert binary.num_classes == 2
    assert binary.class_counts == [len(multi.train_set) - multi.class_counts[3], multi.class_counts[3]]
    for m, b in ((multi.train_set, binary.train_set), (multi.val_set, binary.val_set), (multi.test_set, binary.test_set)):
        assert np.array_equal(labels(b), (labels(m) == 3).astype(np.int64))
        assert torch.equal(m.tensors[0], b.tensors[0])


def test_normalization_uses_train_statistics() -> None:
    raw = built(imbalance_ratio=10, normalize=False)  # pixels / 16
    norm = built(imbalance_ratio=10, normalize=True)
    train_pixels = raw.train_set.tensors[0].double().numpy() * 16
    mean, std = train_pixels.mean(), train_pixels.std()
    x = norm.train_set.tensors[0].double()
    assert float(x.mean()) == pytest.approx(0, abs=1e-5) and float(x.std(unbiased=False)) == pytest.approx(1, abs=1e-5)
    for r, n in ((raw.val_set, norm.val_set), (raw.test_set, norm.test_set)):
        expected = (r.tensors[0].double().numpy() * 16 - mean) / std
        np.testing.assert_allclose(n.tensors[0].numpy(), expected, atol=1e-5)


def test_unnormalized_pixels_are_scaled_to_unit_range() -> None:
    x = built(normalize=False).train_set.tensors[0]
    assert float(x.min()) == 0 and float(x.max()) == 1


def test_flatten() -> None:
    flat, images = built(), built(flatten=False)
    assert flat.train_set.tensors[0].shape[1:] == (64,) and flat.input_dim == 64
    assert images.train_set.tensors[0].shape[1:] == (1, 8, 8)
    assert torch.equal(images.train_set.tensors[0].view(-1, 64), flat.train_set.tensors[0])


def test_dataloaders() -> None:
    dm = built(batch_size=32)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 64) and x.dtype == torch.float32 and y.dtype == torch.long
    assert sum(len(b[1]) for b in dm.val_dataloader()) == len(dm.val_set)
    assert sum(len(b[1]) for b in dm.test_dataloader()) == len(dm.test_set)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"val_fraction": 0.0}, "val_fraction and test_fraction"),
        ({"test_fraction": 1.0}, "val_fraction and test_fraction"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "sum below 1"),
        ({"binary_positive": 10}, "binary_positive must be a digit"),
        ({"binary_positive": -1}, "binary_positive must be a digit"),
        ({"batch_size": 0}, "batch_size must be positive"),
        ({"imbalance_ratio": 0.5}, "imbalance_ratio must be >= 1"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DigitsDataModule(**kwargs)
