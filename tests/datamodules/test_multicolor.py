"""MultiColorDigitsDataModule: layout, spurious correlation in and out of distribution, masks, seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zoo.datamodules.digits import split_digits
from zoo.datamodules.multicolor import MultiColorDigitsDataModule, colour_patches, decode_colours

torch.set_num_threads(1)

P, C = 32, 10


def built(**kwargs: object) -> MultiColorDigitsDataModule:
    dm = MultiColorDigitsDataModule(**kwargs)
    dm.setup()
    return dm


def agreement(dm: MultiColorDigitsDataModule, dataset: torch.utils.data.TensorDataset) -> np.ndarray:
    """Per patch, the fraction of examples whose patch shows the colour of their own class."""
    x, y = dataset.tensors
    colours = decode_colours(x, dm.num_patches, dm.num_colours).numpy()
    class_colour = dm.colour_map[np.arange(dm.num_patches)[None, :], y.numpy()[:, None]]
    return (colours == class_colour).mean(0)


def test_layout_and_invariant_part() -> None:
    dm = built(noise_std=0.5)
    x, y = dm.train_set.tensors
    assert dm.input_dim == 64 + P * C == x.shape[1] and x.dtype == torch.float32
    (x_tr, y_tr), _, _ = split_digits(0, 0.15, 0.25)
    assert torch.equal(y, torch.as_tensor(y_tr))
    noise = x[:, :64].double().numpy() - x_tr / 16.0  # pixels scaled to [0, 1] plus N(0, 0.5^2)
    assert abs(noise.mean()) < 0.01 and abs(noise.std() - 0.5) < 0.01
    onehots = x[:, 64:].reshape(len(x), P, C)
    assert torch.all(onehots.sum(-1) == 1) and set(onehots.unique().tolist()) == {0.0, 1.0}
    # each patch's class -> colour map gives every class its own colour
    assert dm.colour_map.shape == (P, 10) and all(len(set(row)) == 10 for row in dm.colour_map)


def test_spurious_colours_follow_the_label_in_distribution_only() -> None:
    dm = built(id_correlation=0.9, ood_correlation=0.0)
    chance = 1 / C
    expected_id = 0.9 + 0.1 * chance  # the random colour is the class colour 1 time in 10
    for split in (dm.train_set, dm.val_set, dm.test_id_set):
        per_patch = agreement(dm, split)
        assert abs(per_patch.mean() - expected_id) < 0.01 and per_patch.min() > 0.85
    ood = agreement(dm, dm.test_ood_set)
    assert abs(ood.mean() - chance) < 0.015 and ood.max() < 0.2
    # same test images and invariant features in and out of distribution; only the colours change
    x_id, y_id = dm.test_id_set.tensors
    x_ood, y_ood = dm.test_ood_set.tensors
    assert torch.equal(y_id, y_ood) and torch.equal(x_id[:, :64], x_ood[:, :64])
    assert not torch.equal(x_id[:, 64:], x_ood[:, 64:])


def test_ood_correlation_as_in_the_official_code() -> None:
    dm = built(ood_correlation=0.3)  # official: OOD shows the class colour with probability 1 - p
    assert abs(agreement(dm, dm.test_ood_set).mean() - (0.3 + 0.7 / C)) < 0.015


def test_colour_patches_by_hand() -> None:
    colour_map = np.array([[3, 1, 2], [0, 2, 1]])  # 2 patches, 3 classes
    labels = np.array([0, 2, 1, 1])
    exact = colour_patches(labels, colour_map, 1.0, np.random.default_rng(0))
    assert exact.tolist() == [[3, 0], [2, 1], [1, 2], [1, 2]]
    shared = colour_patches(labels, colour_map, 1.0, np.random.default_rng(0), shared=True)
    assert shared.tolist() == [[3, 3], [2, 2], [1, 1], [1, 1]]  # patch 0's map copied into every patch
    big = np.random.default_rng(1).integers(0, 3, 20000)
    uniform = colour_patches(big, colour_map, 0.0, np.random.default_rng(2))
    assert np.allclose(np.bincount(uniform.ravel(), minlength=4) / uniform.size, 0.25, atol=0.01)


def test_visible_patches_hide_the_others() -> None:
    visible = [0, 5, 31]
    dm = built(visible_patches=visible)
    colours = decode_colours(dm.train_set.tensors[0], P, C)
    assert torch.all(colours[:, visible] >= 0)
    hidden = [p for p in range(P) if p not in visible]
    assert torch.all(colours[:, hidden] == -1)
    full = built()  # the same draws: hiding changes nothing else
    assert torch.equal(colours[:, visible], decode_colours(full.train_set.tensors[0], P, C)[:, visible])


def test_shared_patches_are_one_spurious_feature() -> None:
    dm = built(shared_patches=True)
    colours = decode_colours(dm.train_set.tensors[0], P, C)
    assert torch.all(colours == colours[:, :1])
    y = dm.train_set.tensors[1].numpy()
    assert abs((colours[:, 0].numpy() == dm.colour_map[0][y]).mean() - 0.91) < 0.03


def test_determinism_by_seed() -> None:
    a, b, c = built(seed=3), built(seed=3), built(seed=4)
    for name in ("train_set", "val_set", "test_id_set", "test_ood_set"):
        for ta, tb in zip(getattr(a, name).tensors, getattr(b, name).tensors):
            assert torch.equal(ta, tb)
    assert np.array_equal(a.colour_map, b.colour_map) and not np.array_equal(a.colour_map, c.colour_map)
    assert not torch.equal(a.train_set.tensors[0], c.train_set.tensors[0])


def test_loaders_full_batch_and_minibatch() -> None:
    dm = built()
    batches = list(dm.train_dataloader())
    assert len(batches) == 1 and torch.equal(batches[0][0], dm.train_set.tensors[0])
    id_loader, ood_loader = dm.test_dataloader()
    assert dm.test_names == ("id", "ood")
    assert torch.equal(next(iter(ood_loader))[0], dm.test_ood_set.tensors[0])
    assert torch.equal(next(iter(id_loader))[1], dm.test_id_set.tensors[1])
    mini = built(batch_size=64)
    sizes = [len(x) for x, _ in mini.train_dataloader()]
    assert sizes[0] == 64 and sum(sizes) == len(mini.train_set)
    first = [next(iter(built(batch_size=64, seed=1).train_dataloader()))[1] for _ in range(2)]
    assert torch.equal(*first)  # the shuffle is seeded


@pytest.mark.parametrize(
    "kwargs",
    [
        {"id_correlation": 1.2},
        {"ood_correlation": -0.1},
        {"num_colours": 5},
        {"visible_patches": [32]},
        {"batch_size": 0},
        {"noise_std": -1.0},
    ],
)
def test_bad_arguments_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        MultiColorDigitsDataModule(**kwargs)
