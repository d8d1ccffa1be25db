"""MultiColor digits: scikit-learn's digits plus many spurious "colour" features (BANG's theory check).

The MultiColorMNIST experiment of Lin et al. (ICLR 2024, arXiv 2309.17230; official code
``linyongver/SpuriousFeatureDiversification``, ``submit_main.py``) surrounds each digit with 32
colour patches. Every patch has its own random class -> colour map over 10 colours; with
probability ``id_correlation`` (the official ``--id_sp``) a patch shows its colour for the
example's class, otherwise a uniformly random colour. Out of distribution the same draw uses
``ood_correlation`` (the official code uses ``1 - p``; the zoo's claim check re-assigns every
colour at random, i.e. 0). ``shared_patches=True`` is the official ``--colors 1`` ablation: one colour
draw per example, copied into every patch, so all patches are one spurious feature.

This module is a CPU-scale version ("MultiColor digits"), built on ``load_digits``
instead of MNIST so nothing downloads. An example is a flat vector::

    [ 64 invariant features | patch 0 one-hot (10) | patch 1 one-hot (10) | ... | patch 31 ]

The invariant part is the digit's pixels scaled to [0, 1] plus fixed Gaussian noise
(``noise_std``, drawn once per example), so the invariant signal is weaker than the spurious
one, as in the paper's setting. The colours are one-hot vectors instead of painted RGB blocks.
``visible_patches`` zeroes every other patch: it chooses which spurious features a model
trained on this data can see.

Splits (seeded, stratified, from :func:`zoo.datamodules.digits.split_digits`): train and val are in
distribution; ``test_dataloader`` returns two loaders over the same test images and noise,
``test_names = ("id", "ood")``: colours drawn with ``id_correlation`` and with
``ood_correlation``.
"""

from __future__ import annotations

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, TensorDataset

from zoo.datamodules.digits import split_digits

__all__ = ["MultiColorDigitsDataModule", "colour_patches", "decode_colours"]

NUM_INVARIANT = 64
NUM_CLASSES = 10


def colour_patches(
    labels: np.ndarray,
    colour_map: np.ndarray,
    correlation: float,
    rng: np.random.Generator,
    shared: bool = False,
) -> np.ndarray:
    """Colour index of every patch, shape ``(n, num_patches)``.

    ``colour_map[s, c]`` is patch ``s``'s colour for class ``c``. With probability
    ``correlation`` a patch shows ``colour_map[s, label]``, otherwise a uniformly random colour
    (which can be the class colour by chance). ``shared``: one draw per example, with patch 0's
    map, copied into every patch (the official ``--colors 1``).
    """
    n, (num_patches, _) = len(labels), colour_map.shape
    num_colours = int(colour_map.max()) + 1
    if shared:
        show = rng.random((n, 1)) < correlation
        random = rng.integers(0, num_colours, (n, 1))
        colours = np.where(show, colour_map[0][labels][:, None], random)
        return np.repeat(colours, num_patches, axis=1)
    show = rng.random((n, num_patches)) < correlation
    random = rng.integers(0, num_colours, (n, num_patches))
    return np.where(show, colour_map[np.arange(num_patches)[None, :], labels[:, None]], random)


def decode_colours(x: torch.Tensor, num_patches: int, num_colours: int) -> torch.Tensor:
    """Colour index per patch ``(n, num_patches)`` of flat MultiColor vectors; -1 where a patch is hidden."""
    onehot = x[:, NUM_INVARIANT : NUM_INVARIANT + num_patches * num_colours].reshape(len(x), num_patches, num_colours)
    return torch.where(onehot.sum(-1) > 0, onehot.argmax(-1), torch.full_like(onehot[..., 0], -1, dtype=torch.long))


class _WholeSplit(Dataset):
    """One item, the whole split ``(x, y)``: a full batch per step without collating item by item."""

    def __init__(self, dataset: TensorDataset) -> None:
        self.tensors = dataset.tensors

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        return self.tensors


class MultiColorDigitsDataModule(LightningDataModule):
    """Digits with ``num_patches`` spurious colour features, correlated with the label in training only.

    Args:
        num_patches: spurious colour patches (the paper uses 32).
        num_colours: colours per patch; one-hot width (the paper uses 10).
        id_correlation: probability a patch shows its class colour in train, val and the ID test.
        ood_correlation: the same probability in the OOD test (0 = colours fully random).
        noise_std: std of the fixed Gaussian noise added to the [0, 1] pixels.
        visible_patches: indices of the patches a model sees; the others are all-zero. None = all.
        shared_patches: one colour draw copied into every patch (the paper's ``--colors 1``
            ablation: many patches, one spurious feature).
        batch_size: training batch size; None = the whole training split (full-batch training).
        seed: seeds the split, the colour maps, the colour draws and the noise.
        val_fraction / test_fraction: fractions of the 1,797 digits.
    """

    test_names: tuple[str, str] = ("id", "ood")

    def __init__(
        self,
        num_patches: int = 32,
        num_colours: int = 10,
        id_correlation: float = 0.9,
        ood_correlation: float = 0.0,
        noise_std: float = 0.5,
        visible_patches: list[int] | None = None,
        shared_patches: bool = False,
        batch_size: int | None = None,
        seed: int = 0,
        val_fraction: float = 0.15,
        test_fraction: float = 0.25,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if num_patches < 1 or num_colours < 2:
            raise ValueError(f"need num_patches >= 1 and num_colours >= 2, got {num_patches}, {num_colours}")
        if num_colours < NUM_CLASSES:
            raise ValueError(f"num_colours must be at least the {NUM_CLASSES} classes (each class needs its own colour), got {num_colours}")
        for name, value in (("id_correlation", id_correlation), ("ood_correlation", ood_correlation)):
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be a probability in [0, 1], got {value}")
        if noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        if visible_patches is not None and not set(visible_patches) <= set(range(num_patches)):
            raise ValueError(f"visible_patches must be indices in 0..{num_patches - 1}, got {visible_patches}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be positive or None (full batch), got {batch_size}")
        self.save_hyperparameters()
        self.num_patches, self.num_colours = num_patches, num_colours
        self.id_correlation, self.ood_correlation = float(id_correlation), float(ood_correlation)
        self.noise_std, self.shared_patches = float(noise_std), shared_patches
        self.visible_patches = None if visible_patches is None else sorted(set(visible_patches))
        self.batch_size, self.seed, self.num_workers = batch_size, seed, num_workers
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.colour_map: np.ndarray | None = None
        self.train_set: TensorDataset | None = None
        self.val_set: TensorDataset | None = None
        self.test_id_set: TensorDataset | None = None
        self.test_ood_set: TensorDataset | None = None

    # ----------------------------------------------------------------------------- layout
    @property
    def num_classes(self) -> int:
        return NUM_CLASSES

    @property
    def num_invariant(self) -> int:
        return NUM_INVARIANT

    @property
    def input_dim(self) -> int:
        return NUM_INVARIANT + self.num_patches * self.num_colours

    # ----------------------------------------------------------------------------- data
    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = split_digits(self.seed, self.val_fraction, self.test_fraction)
        # independent streams: the colour maps do not change when a split's size does
        maps, noise, colours = (np.random.default_rng([self.seed, k]) for k in range(3))
        self.colour_map = np.stack([maps.permutation(self.num_colours)[:NUM_CLASSES] for _ in range(self.num_patches)])
        inv_tr, inv_va, inv_te = (x / 16.0 + noise.normal(0.0, self.noise_std, x.shape) for x in (x_tr, x_va, x_te))
        self.train_set = self._dataset(inv_tr, y_tr, self.id_correlation, colours)
        self.val_set = self._dataset(inv_va, y_va, self.id_correlation, colours)
        self.test_id_set = self._dataset(inv_te, y_te, self.id_correlation, colours)
        self.test_ood_set = self._dataset(inv_te, y_te, self.ood_correlation, colours)

    def _dataset(self, invariant: np.ndarray, y: np.ndarray, correlation: float, rng: np.random.Generator) -> TensorDataset:
        assert self.colour_map is not None
        colours = colour_patches(y, self.colour_map, correlation, rng, shared=self.shared_patches)
        onehot = np.eye(self.num_colours, dtype=np.float32)[colours]  # (n, patches, colours)
        if self.visible_patches is not None:
            hidden = np.setdiff1d(np.arange(self.num_patches), self.visible_patches)
            onehot[:, hidden] = 0.0
        x = np.concatenate([invariant.astype(np.float32), onehot.reshape(len(y), -1)], axis=1)
        return TensorDataset(torch.from_numpy(x), torch.as_tensor(y, dtype=torch.long))

    def _loader(self, dataset: TensorDataset | None, batch_size: int | None = None) -> DataLoader:
        """Shuffled minibatches of ``batch_size``, or (None) the whole split as one batch."""
        assert dataset is not None, "call setup() first"
        if batch_size is None:
            return DataLoader(_WholeSplit(dataset), batch_size=None, num_workers=self.num_workers)
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(dataset, batch_size, shuffle=True, generator=generator, num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set)

    def test_dataloader(self) -> list[DataLoader]:
        """Two loaders, named by ``test_names``: in distribution, then out of distribution."""
        return [self._loader(self.test_id_set), self._loader(self.test_ood_set)]

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_ood_set)
