"""``BIDSSelection``: BIDS data selection (arXiv 2501.12147) as a drop-in callback on any classification DataModule.

The maths (per-example gradients, Adam direction, projection, LESS influence, BIDS's column
z-score, per-task aggregation and iterative selection) is in :mod:`zoo.bids`; this file holds the
schedule, the data plumbing and the checkpointed state.

During ``warmup_epochs`` the model trains on the DataModule's full training set; at the end of
each warm-up epoch (a LESS checkpoint) the callback adds ``lr * cos(train feature, val gradient)``
to the influence matrix; after the last one it selects ``budget_frac`` of the pool with BIDS and,
from then on, the DataModule's ``train_dataloader()`` serves only the selected examples (same
dataset, batch size, collate function and workers; a sampler over the selection). With
``warmup_epochs=0`` the features are taken once, at fit start, from the model as given.

>>> from zoo.callbacks import BIDSSelection
>>> cb = BIDSSelection(budget_frac=0.15, warmup_epochs=1)

Deviations from LESS/BIDS: the warm-up is the user's own training on the full pool (LESS warms up
on a random 5 %); checkpoints are the warm-up epochs. The train side is the Adam direction when
the module's first optimizer is Adam/AdamW and has state, else the plain gradient (LESS's SGD form).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor
from torch.utils.data import DataLoader, RandomSampler, Sampler
from typing_extensions import override

from zoo.bids import SELECTORS, BIDSSelector, adam_direction, influence_matrix, per_example_grads, random_projection

__all__ = ["BIDSSelection", "SelectionSampler"]


class SelectionSampler(Sampler[int]):
    """Yields the selected dataset indices: in a fresh seeded order each epoch when ``shuffle``, else sorted.

    Has ``set_epoch`` (Lightning calls it each epoch), so a resumed run draws the same orders.
    """

    def __init__(self, indices: Tensor, shuffle: bool, seed: int = 0) -> None:
        self.indices, self.shuffle, self.seed, self.epoch = indices.sort().values, shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(self.indices.tolist())
        order = torch.randperm(len(self.indices), generator=torch.Generator().manual_seed(self.seed + self.epoch))
        return iter(self.indices[order].tolist())

    def __len__(self) -> int:
        return len(self.indices)


class BIDSSelection(Callback):
    """Restricts training to a BIDS selection of the DataModule's training set, scored against its validation set.

    Needs a DataModule (``trainer.fit(model, datamodule=...)``) with ``train_dataloader()`` and
    ``val_dataloader()`` yielding ``(x, y)`` batches, a module with ``forward(x) -> logits``, and,
    when ``warmup_epochs > 0``, ``Trainer(reload_dataloaders_every_n_epochs=1)`` so the subset is
    loaded after the warm-up. The one extension point is :meth:`val_tasks` (default: the
    validation labels, i.e. tasks = classes). Logs ``bids/selected`` and ``bids/min_class_selected`` (fewest selected of any class).

    Args:
        budget_frac: selected share of the training pool (the paper: 5, 10, 15 %).
        warmup_epochs: epochs on the full pool before selecting (LESS checkpoints); 0 selects at fit start.
        selector / aggregate: see :class:`zoo.bids.BIDSSelector` (``bids`` with per-task ``mean`` by default).
        proj_dim: random projection width (LESS: 8192; wider than the gradient keeps it exact).
        batch_size: examples per vmap call in the feature pass.
        seed: seeds the projection, random selection and the subset's shuffling.
    """

    def __init__(
        self,
        budget_frac: float = 0.15,
        warmup_epochs: int = 1,
        selector: str = "bids",
        aggregate: str = "mean",
        proj_dim: int = 8192,
        batch_size: int = 256,
        seed: int = 0,
    ) -> None:
        if warmup_epochs < 0 or batch_size < 1:
            raise ValueError("warmup_epochs must be >= 0 and batch_size >= 1")
        if selector not in SELECTORS:
            raise ValueError(f"unknown selector {selector!r}; choose one of {SELECTORS}")
        self.selection = BIDSSelector(budget_frac, selector, aggregate, seed)
        self.warmup_epochs, self.proj_dim, self.batch_size, self.seed = warmup_epochs, proj_dim, batch_size, seed
        self.influence: Tensor | None = None  # accumulated over the warm-up checkpoints, dropped after selection
        self.checkpoints = 0
        self.selected: Tensor | None = None
        self.class_counts: list[int] | None = None  # selected examples per training class
        self._original: Callable[[], Any] | None = None
        self._dm: Any = None

    def val_tasks(self, x_val: Tensor, y_val: Tensor) -> Tensor:
        """The one extension point: the task id of every validation example (default: its class)."""
        return y_val

    # ------------------------------------------------------------------ data plumbing
    def _train_dataloader(self) -> Any:
        assert self._original is not None
        loader = self._original()
        if self.selected is None:
            return loader
        shuffle = isinstance(loader.sampler, RandomSampler)
        return DataLoader(
            loader.dataset, batch_size=loader.batch_size, sampler=SelectionSampler(self.selected, shuffle, self.seed),
            num_workers=loader.num_workers, collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, drop_last=loader.drop_last,
        )  # fmt: skip

    def _features(self, trainer: Trainer, pl_module: LightningModule, loader: DataLoader, train_side: bool) -> tuple[Tensor, Tensor, Tensor]:
        """Projected per-example features (Adam direction on the train side when available), with the stacked x and y."""
        moments = self._adam_moments(trainer, pl_module) if train_side else None
        feats, xs, ys = [], [], []
        for x, y in loader:
            x, y = x.to(pl_module.device), y.to(pl_module.device)
            g = per_example_grads(pl_module, x, y, F.cross_entropy)
            if moments is not None:
                g = adam_direction(g, *moments)
            feats.append(random_projection(g.cpu(), self.proj_dim, self.seed)), xs.append(x.cpu()), ys.append(y.cpu())
        return torch.cat(feats), torch.cat(xs), torch.cat(ys)

    @staticmethod
    def _adam_moments(trainer: Trainer, pl_module: LightningModule) -> tuple[Tensor, Tensor, int, tuple[float, float], float] | None:
        if not trainer.optimizers or not isinstance(trainer.optimizers[0], (torch.optim.Adam, torch.optim.AdamW)):
            return None
        opt = trainer.optimizers[0]
        states = [opt.state.get(p, {}) for p in pl_module.parameters() if p.requires_grad]
        if not states or any("exp_avg" not in s for s in states):
            return None
        m = torch.cat([s["exp_avg"].reshape(-1) for s in states])
        v = torch.cat([s["exp_avg_sq"].reshape(-1) for s in states])
        return m, v, int(states[0]["step"]), opt.defaults["betas"], opt.defaults["eps"]

    def _sequential(self, loader: DataLoader) -> DataLoader:
        return DataLoader(loader.dataset, batch_size=self.batch_size, shuffle=False, collate_fn=loader.collate_fn)

    @torch.no_grad()
    def _checkpoint(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """One LESS checkpoint: add ``lr * cos`` of the pool's and the validation set's features to the influence."""
        assert self._original is not None
        was_training = pl_module.training
        pl_module.eval()
        with torch.enable_grad():
            train_f, _, self._pool_y = self._features(trainer, pl_module, self._sequential(self._original()), train_side=True)
            vals = self._dm.val_dataloader()
            val_parts = [self._features(trainer, pl_module, self._sequential(v), False) for v in (vals if isinstance(vals, (list, tuple)) else [vals])]
        pl_module.train(was_training)
        val_f = torch.cat([p[0] for p in val_parts])
        self._val_xy = torch.cat([p[1] for p in val_parts]), torch.cat([p[2] for p in val_parts])
        lr = float(trainer.optimizers[0].param_groups[0]["lr"]) if trainer.optimizers else 1.0
        step = influence_matrix([train_f], [val_f], [lr])
        self.influence = step if self.influence is None else self.influence + step
        self.checkpoints += 1

    def _select(self, trainer: Trainer, pl_module: LightningModule) -> None:
        assert self.influence is not None
        tasks = self.val_tasks(*self._val_xy).long()
        selected = self.selection(self.influence, tasks, int(tasks.max()) + 1)
        self.selected = trainer.strategy.broadcast(selected, src=0)  # every rank trains on rank 0's selection
        self.class_counts = torch.bincount(self._pool_y[self.selected], minlength=int(self._pool_y.max()) + 1).tolist()
        self.influence = None  # the selection is the state from here on

    # ------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        dm = trainer.datamodule
        if dm is None or not callable(getattr(dm, "train_dataloader", None)) or not callable(getattr(dm, "val_dataloader", None)):
            raise RuntimeError(
                "BIDSSelection needs a DataModule with train_dataloader() and val_dataloader() of (x, y) batches "
                "(trainer.fit(model, datamodule=dm)): it scores the training set against the validation set and serves the selection"
            )
        if self.warmup_epochs > 0 and trainer.reload_dataloaders_every_n_epochs != 1:
            raise RuntimeError(
                "BIDSSelection needs Trainer(reload_dataloaders_every_n_epochs=1) with warmup_epochs > 0, so the subset is loaded after the warm-up"
            )
        self._dm, self._original = dm, dm.train_dataloader
        dm.train_dataloader = self._train_dataloader  # the DataModule now serves the selection once there is one

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.warmup_epochs == 0 and self.selected is None:
            self._checkpoint(trainer, pl_module)
            self._select(trainer, pl_module)

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.selected is None and trainer.current_epoch < self.warmup_epochs:
            self._checkpoint(trainer, pl_module)
            if trainer.current_epoch + 1 == self.warmup_epochs:
                self._select(trainer, pl_module)
        if self.selected is not None:
            pl_module.log("bids/selected", float(len(self.selected)))
            assert self.class_counts is not None
            pl_module.log("bids/min_class_selected", float(min(self.class_counts)))

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._dm is not None and self._dm.__dict__.get("train_dataloader") == self._train_dataloader:
            del self._dm.train_dataloader  # the DataModule's own method again
        self._dm, self._original = None, None

    # ------------------------------------------------------------------ checkpoint
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"influence": self.influence, "checkpoints": self.checkpoints, "selected": self.selected, "class_counts": self.class_counts}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.influence, self.checkpoints = state_dict["influence"], state_dict["checkpoints"]
        self.selected, self.class_counts = state_dict["selected"], state_dict["class_counts"]
