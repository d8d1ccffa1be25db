"""SyntheticBinaryDataModule: positive share, batch size, standardization, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zoo.datamodules import SyntheticBinaryDataModule

torch.set_num_threads(1)


def built(**kwargs: object) -> SyntheticBinaryDataModule:
    dm = SyntheticBinaryDataModule(**kwargs)
    dm.setup()
    return dm


@pytest.mark.parametrize("positive_fraction", [0.05, 0.2])
def test_positive_fraction_and_stratified_splits(positive_fraction: float) -> None:
    dm = built(n_samples=2000, positive_fraction=positive_fraction)
    splits = (dm.train_set, dm.val_set, dm.test_set)
    assert [len(s) for s in splits] == [1400, 300, 300]
    shares = [float(s.tensors[1].float().mean()) for s in splits]
    # make_classification flips 1 % of the labels at random (flip_y=0.01), so the share is near, not at.
    for share in shares:
        assert share == pytest.approx(positive_fraction, abs=0.015)
    assert max(shares) - min(shares) < 0.01  # stratified
    assert set(torch.cat([s.tensors[1] for s in splits]).tolist()) == {0, 1}


def test_batch_is_five_percent_of_train_and_holds_positives() -> None:
    dm = built()
    assert len(dm.train_set) == 3500 and dm.train_batch_size == 175
    batches = list(dm.train_dataloader())
    assert [len(y) for _, y in batches] == [175] * 20
    assert all(int(y.sum()) > 0 for _, y in batches)
    assert built(batch_size=64).train_batch_size == 64
    assert built(n_samples=1000, batch_fraction=0.1).train_batch_size == 70


def test_standardized_on_train() -> None:
    dm = built(n_features=8, n_informative=4)
    x = dm.train_set.tensors[0].double()
    assert x.shape[1] == dm.input_dim == 8
    np.testing.assert_allclose(x.mean(0).numpy(), 0, atol=1e-5)
    np.testing.assert_allclose(x.std(0, unbiased=False).numpy(), 1, atol=1e-4)


def test_same_seed_same_data_other_seed_other_data() -> None:
    a, b, c = built(seed=0), built(seed=0), built(seed=1)
    for name in ("train_set", "val_set", "test_set"):
        assert all(torch.equal(u, v) for u, v in zip(getattr(a, name).tensors, getattr(b, name).tensors))
        assert not torch.equal(getattr(a, name).tensors[0], getattr(c, name).tensors[0])
    assert torch.equal(next(iter(a.train_dataloader()))[0], next(iter(b.train_dataloader()))[0])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"positive_fraction": 0.0}, "positive_fraction must be in"),
        ({"positive_fraction": 1.0}, "positive_fraction must be in"),
        ({"batch_fraction": 0.0}, "batch_fraction must be in"),
        ({"batch_fraction": 1.5}, "batch_fraction must be in"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SyntheticBinaryDataModule(**kwargs)
