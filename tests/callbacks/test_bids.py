"""BIDSSelection: its selection equals the zoo.bids functions called directly; training then sees only the selection; resume keeps it."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import pytest
import torch
from lightning.pytorch import LightningDataModule, Trainer, seed_everything
from torch import Tensor
from torch.utils.data import DataLoader

from tests.conftest import TRAINER_KWARGS, ForeignClassifier, Job, blob_data, crash_and_resume
from zoo.bids import BIDSSelector, adam_direction, influence_matrix, per_example_grads, random_projection
from zoo.callbacks import BIDSSelection
from zoo.callbacks.bids import SelectionSampler

torch.set_num_threads(1)
POOL, VAL = blob_data(n_per_class=(40, 16, 8), seed=0), blob_data(n_per_class=(6, 6, 6), seed=1)


class Blobs(LightningDataModule):
    def __init__(self, shuffle: bool = False) -> None:
        super().__init__()
        self.shuffle = shuffle

    def train_dataloader(self) -> DataLoader:
        return DataLoader(POOL, batch_size=8, shuffle=self.shuffle, generator=torch.Generator().manual_seed(0))

    def val_dataloader(self) -> DataLoader:
        return DataLoader(VAL, batch_size=8)


class Recording(ForeignClassifier):
    """Remembers the training inputs of every epoch; optimiser Adam (``adam=True``) or the foreign SGD."""

    def __init__(self, adam: bool = False) -> None:
        super().__init__()
        self.adam, self.seen = adam, {}

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        self.seen.setdefault(self.current_epoch, []).append(batch[0].detach().clone())
        return super().training_step(batch, batch_idx)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=0.01) if self.adam else super().configure_optimizers()


def _fit(model: ForeignClassifier, cb: BIDSSelection, epochs: int, tmp_path: Path, shuffle: bool = False) -> Trainer:
    trainer = Trainer(
        max_epochs=epochs, callbacks=[cb], reload_dataloaders_every_n_epochs=1, enable_checkpointing=False, default_root_dir=tmp_path, **TRAINER_KWARGS
    )
    trainer.fit(model, datamodule=Blobs(shuffle))
    return trainer


def _rows(x: Tensor) -> list[tuple[float, ...]]:
    return sorted(map(tuple, x.tolist()))


def test_selection_at_fit_start_equals_the_zoo_functions(tmp_path: Path) -> None:
    seed_everything(0)
    model = Recording()
    ref = copy.deepcopy(model).eval()
    cb = BIDSSelection(budget_frac=0.25, warmup_epochs=0, proj_dim=50, seed=3)
    _fit(model, cb, 2, tmp_path)
    (x, y), (xv, yv) = POOL.tensors, VAL.tensors
    a = influence_matrix([random_projection(per_example_grads(ref, x, y), 50, 3)], [random_projection(per_example_grads(ref, xv, yv), 50, 3)], [0.1])
    want = BIDSSelector(0.25, seed=3)(a, yv, 3)
    assert cb.selected is not None and torch.equal(cb.selected, want)
    assert cb.class_counts == torch.bincount(y[want], minlength=3).tolist()
    for epoch in (0, 1):  # trained on the selection only, from the first step
        assert _rows(torch.cat(model.seen[epoch])) == _rows(x[want])


def test_selection_after_an_adam_warmup_uses_the_adam_direction(tmp_path: Path) -> None:
    seed_everything(0)
    model = Recording(adam=True)
    cb = BIDSSelection(budget_frac=0.25, warmup_epochs=1, proj_dim=10_000)
    trainer = _fit(model, cb, 1, tmp_path)  # one epoch: the model and optimiser at its end are what the callback scored with
    (x, y), (xv, yv) = POOL.tensors, VAL.tensors
    opt = trainer.optimizers[0]
    st = [opt.state[p] for p in model.parameters()]
    m, v = torch.cat([s["exp_avg"].reshape(-1) for s in st]), torch.cat([s["exp_avg_sq"].reshape(-1) for s in st])
    model.eval()
    train = adam_direction(per_example_grads(model, x, y), m, v, int(st[0]["step"]), (0.9, 0.999), 1e-8)
    a = influence_matrix([train], [per_example_grads(model, xv, yv)], [0.01])
    assert cb.selected is not None and torch.equal(cb.selected, BIDSSelector(0.25)(a, yv, 3))
    plain = influence_matrix([per_example_grads(model, x, y)], [per_example_grads(model, xv, yv)], [0.01])
    assert not torch.equal(BIDSSelector(0.25)(plain, yv, 3), cb.selected)  # the Adam direction changed the choice


def test_shuffled_loader_keeps_shuffling_the_selection(tmp_path: Path) -> None:
    seed_everything(0)
    model = Recording()
    cb = BIDSSelection(budget_frac=0.5, warmup_epochs=1, proj_dim=64)
    _fit(model, cb, 3, tmp_path, shuffle=True)
    assert cb.selected is not None and len(model.seen[0]) == 8  # warm-up on the whole pool (64 / 8 batches)
    e1, e2 = torch.cat(model.seen[1]), torch.cat(model.seen[2])
    assert _rows(e1) == _rows(e2) == _rows(POOL.tensors[0][cb.selected]) and not torch.equal(e1, e2)


def test_selection_sampler_is_seeded_per_epoch() -> None:
    s = SelectionSampler(torch.tensor([9, 2, 5, 7]), shuffle=True, seed=1)
    first = list(s)
    assert sorted(first) == [2, 5, 7, 9] and list(s) == first
    s.set_epoch(1)
    assert list(s) != first and list(SelectionSampler(torch.tensor([9, 2, 5]), shuffle=False)) == [2, 5, 9]


def _build(shuffle: bool) -> Job:
    cb = BIDSSelection(budget_frac=0.25, warmup_epochs=2, proj_dim=64)
    return Job(ForeignClassifier(), [cb], {"datamodule": Blobs(shuffle)}, {"reload_dataloaders_every_n_epochs": 1})


# inside the warm-up (influence half accumulated; an unshuffled pool, as the conftest loaders), and after the
# selection (the subset shuffled by SelectionSampler, which must draw the same orders after the resume)
@pytest.mark.parametrize(("crash_epoch", "shuffle"), [(1, False), (3, True)])
def test_resume_keeps_the_same_subset(tmp_path: Path, crash_epoch: int, shuffle: bool) -> None:
    runs = crash_and_resume(tmp_path, functools.partial(_build, shuffle), max_epochs=5, crash_epoch=crash_epoch)
    ref, res = runs.reference.callbacks[0], runs.resumed.callbacks[0]
    assert ref.selected is not None and ref.checkpoints == 2 and torch.equal(res.selected, ref.selected)
    for a, b in zip(runs.resumed.model.parameters(), runs.reference.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_warmup_without_reloading_says_what_it_needs(tmp_path: Path) -> None:
    trainer = Trainer(max_epochs=1, callbacks=[BIDSSelection(warmup_epochs=1)], default_root_dir=tmp_path, **TRAINER_KWARGS)
    with pytest.raises(RuntimeError, match="reload_dataloaders_every_n_epochs=1"):
        trainer.fit(ForeignClassifier(), datamodule=Blobs())
    with pytest.raises(ValueError, match="unknown selector"):
        BIDSSelection(selector="best")
