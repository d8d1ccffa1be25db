"""A drop-in Callback that logs the neural collapse metrics NC1, NC2 and NC3 during training.

Paper: *Neural Collapse in Deep Linear Networks: From Balanced to Imbalanced Data*, Dang et al.
(ICML 2023), arXiv 2301.00437. The definitions, the closed-form imbalanced geometry and the
torchmetrics :class:`~zoo.neural_collapse.NeuralCollapseMetrics` that this callback feeds live in
:mod:`zoo.neural_collapse`; this file only hooks a layer of any LightningModule, runs the train set
through it every few epochs and logs ``nc/NC1``, ``nc/NC2_W``, ``nc/NC2_H``, ``nc/NC3``.

The measurement leaves the training it watches untouched: it reads the train set in dataset order
through its own loader (no shuffling, a private generator) and restores the torch, CUDA, NumPy and
Python RNG states afterwards, so a seeded run is bit-identical with and without the monitor.

>>> from zoo.callbacks import NeuralCollapseMonitor
>>> monitor = NeuralCollapseMonitor(every_n_epochs=5)  # Trainer(callbacks=[monitor]).fit(model)
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.core.hooks import DataHooks
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset, default_collate
from typing_extensions import override

from zoo.neural_collapse.geometry import GEOMETRIES, Geometry
from zoo.neural_collapse.metrics import NC_KEYS, NeuralCollapseMetrics

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["NeuralCollapseMonitor"]


def _linear_product(layers: Sequence[nn.Linear]) -> Tensor:
    """``W_M ... W_1`` of linear layers given in forward order."""
    weight = layers[0].weight
    for layer in layers[1:]:
        weight = layer.weight @ weight
    return weight.detach()


class NeuralCollapseMonitor(Callback):
    """Log NC1, NC2_W, NC2_H and NC3 of the training set every ``every_n_epochs`` epochs.

    Drops into any LightningModule whose batches are ``(x, y, ...)`` and whose ``forward(x)``
    returns logits. At the end of every ``every_n_epochs``-th training epoch it runs the model once
    in eval mode without gradients over the training samples (then restores train mode), records
    the input of the feature layer, and logs ``{prefix}/NC1`` ... ``{prefix}/NC3`` (with
    ``sync_dist``; the statistics are summed over DDP processes before the metrics are computed).

    What it measures: if the DataModule has a method ``eval_train_dataloader()`` (the train set
    with evaluation transforms, i.e. without augmentation), that loader's dataset; otherwise the
    train dataloader's dataset as it is (augmented if its transforms augment). Either way each
    sample is read once, in dataset order (under DDP, rank ``r`` of ``R`` reads samples
    ``r, r + R, ...``), with that loader's batch size, collate function and workers.

    Args:
        every_n_epochs: measure after epochs ``n, 2n, ...`` (1-based).
        layer: name (as in ``named_modules``) of the module whose *input* is the feature; default
            the first classifier layer.
        classifier: names of the ``nn.Linear`` layers whose weight product is ``W``, in forward
            order (``W = W_M ... W_1``), e.g. ``["head"]`` or ``["head.0", "head.1"]``; an int ``n``
            takes the last ``n`` ``nn.Linear`` modules in registration order. Default (None): the
            last registered ``nn.Linear``, a guess that setup states in a warning; name the layer
            when the model registers another ``nn.Linear`` after its classifier.
        geometry, depth, weight_decay, feature_decay, center_means, rtol: as in
            :class:`NeuralCollapseMetrics`; ``depth`` defaults to the number of classifier layers.
        prefix: log key prefix.
        max_batches: measure on at most this many batches (all by default).

    Its state (``history``: one dict of values per measured epoch, and ``last_epoch``) is saved
    in checkpoints, so a resumed run continues the same history; :meth:`plot` draws it.

    Example:
        >>> monitor = NeuralCollapseMonitor(every_n_epochs=5)
        >>> trainer = Trainer(callbacks=[monitor])  # doctest: +SKIP
    """

    def __init__(
        self,
        every_n_epochs: int = 10,
        layer: str | None = None,
        classifier: list[str] | int | None = None,
        geometry: Geometry = "etf",
        depth: int | None = None,
        weight_decay: float | None = None,
        feature_decay: float | None = None,
        center_means: bool | None = None,
        rtol: float = 1e-6,
        prefix: str = "nc",
        max_batches: int | None = None,
    ) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be positive, got {every_n_epochs}")
        if geometry not in GEOMETRIES:
            raise ValueError(f"geometry must be one of {GEOMETRIES}, got {geometry!r}")
        if geometry == "imbalanced_orthogonal" and not (weight_decay and feature_decay and weight_decay > 0 and feature_decay > 0):
            raise ValueError("geometry 'imbalanced_orthogonal' needs weight_decay > 0 and feature_decay > 0 (the model's lambda_W, lambda_H)")
        if isinstance(classifier, int) and classifier < 1:
            raise ValueError(f"classifier as an int is the number of trailing nn.Linear layers; got {classifier}")
        if max_batches is not None and max_batches < 1:
            raise ValueError(f"max_batches must be positive or None, got {max_batches}")
        self.every_n_epochs = every_n_epochs
        self.layer = layer
        self.classifier = classifier
        self.geometry = geometry
        self.depth = depth
        self.weight_decay, self.feature_decay = weight_decay, feature_decay
        self.center_means = center_means
        self.rtol = rtol
        self.prefix = prefix
        self.max_batches = max_batches
        self.history: list[dict[str, float]] = []
        self.last_epoch: int = -1
        self._feature_module: nn.Module | None = None
        self._classifier_layers: list[nn.Linear] = []
        self._metric: NeuralCollapseMetrics | None = None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(prefix=self.prefix, layer=self.layer, geometry=self.geometry)

    # ------------------------------------------------------------------ setup: resolve the layers
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        modules = dict(pl_module.named_modules())
        linears = [name for name, m in modules.items() if isinstance(m, nn.Linear)]
        where = type(pl_module).__qualname__
        if self.classifier is None or isinstance(self.classifier, int):
            n = 1 if self.classifier is None else self.classifier
            if len(linears) < n:
                raise RuntimeError(
                    f"NeuralCollapseMonitor needs {'an' if n == 1 else n} nn.Linear classifier layer(s) in {where}, found "
                    f"{len(linears)}; pass classifier=[names of the nn.Linear layers whose product is W] (forward order)"
                )
            names = linears[-n:]
            if self.classifier is None:
                rank_zero_warn(
                    f"NeuralCollapseMonitor: no classifier named: W is the last registered nn.Linear {names[0]!r} of {where}; "
                    f"if that is not the classifier, pass classifier=[its name], e.g. classifier={names!r}"
                )
        else:
            names = list(self.classifier)
            for name in names:
                if not isinstance(modules.get(name), nn.Linear):
                    found = "not found" if name not in modules else f"a {type(modules[name]).__name__}"
                    raise RuntimeError(f"NeuralCollapseMonitor: classifier layer {name!r} is {found} in {where}; nn.Linear layers: {linears}")
        layers: list[nn.Linear] = [modules[n] for n in names]  # type: ignore[misc]
        for prev, nxt, a, b in zip(layers, layers[1:], names, names[1:]):
            if nxt.in_features != prev.out_features:
                raise RuntimeError(
                    f"NeuralCollapseMonitor: classifier layers must chain in forward order; {b!r} takes "
                    f"{nxt.in_features} inputs but {a!r} gives {prev.out_features}"
                )
        feature_name = self.layer if self.layer is not None else names[0]
        if feature_name not in modules:
            raise RuntimeError(f"NeuralCollapseMonitor: feature layer {feature_name!r} not found in {where}")
        self._classifier_layers = layers
        self._classifier_names = names
        self._feature_module = modules[feature_name]
        if self.geometry == "imbalanced_orthogonal" and layers[-1].bias is not None:
            rank_zero_warn(
                f"NeuralCollapseMonitor: the imbalanced_orthogonal geometry is the bias-free theory, but {names[-1]!r} has a bias"
            )
        self._metric = NeuralCollapseMetrics(
            num_classes=layers[-1].out_features,
            feature_dim=layers[0].in_features,
            geometry=self.geometry,
            depth=self.depth if self.depth is not None else len(layers),
            weight_decay=self.weight_decay,
            feature_decay=self.feature_decay,
            center_means=self.center_means,
            rtol=self.rtol,
        )

    # ------------------------------------------------------------------ measuring
    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        epoch = trainer.current_epoch
        if (epoch + 1) % self.every_n_epochs != 0 or epoch <= self.last_epoch:
            return
        values = self.measure(trainer, pl_module)
        for key, value in values.items():
            pl_module.log(f"{self.prefix}/{key}", value, on_step=False, on_epoch=True, sync_dist=True)
        self.history.append({"epoch": float(epoch), "step": float(trainer.global_step), **values})
        self.last_epoch = epoch

    def measure(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, float]:
        """Run the model once over the training samples and return the NC metrics (all processes must call it)."""
        if self._metric is None or self._feature_module is None:
            raise RuntimeError("NeuralCollapseMonitor.measure() called before setup()")
        metric = self._metric if self._metric.device == pl_module.device else self._metric.to(pl_module.device)
        metric.reset()
        metric.set_classifier(_linear_product(self._classifier_layers))
        captured: list[Tensor] = []

        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            captured.append(args[0].detach())

        handle = self._feature_module.register_forward_pre_hook(hook)
        was_training = pl_module.training
        pl_module.eval()
        try:
            with torch.no_grad(), _rng_untouched(pl_module.device):
                pending: list[tuple[Tensor, Tensor]] = []
                rows = 0
                to_device = _batch_mover(trainer, pl_module)
                for i, batch in enumerate(_measurement_batches(trainer)):
                    if self.max_batches is not None and i >= self.max_batches:
                        break
                    batch = to_device(batch)
                    x, y = _split_batch(batch)
                    pl_module(x)
                    features = _one_capture(captured)
                    pending.append((features, y))
                    rows += len(features)
                    if rows >= _CHUNK_ROWS:  # one statistics update per chunk, not per batch
                        _flush(metric, pending)
                        rows = 0
                _flush(metric, pending)
            values = metric.compute()
        finally:
            handle.remove()
            pl_module.train(was_training)
        return {k: float(v) for k, v in values.items()}

    # ------------------------------------------------------------------ state
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": [dict(h) for h in self.history], "last_epoch": self.last_epoch}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [dict(h) for h in state_dict.get("history", [])]
        self.last_epoch = int(state_dict.get("last_epoch", -1))

    # ------------------------------------------------------------------ plot
    def plot(self, path: str | None = None) -> Figure:
        """Plot the history (log scale) against the epoch; save it to ``path`` if given."""
        from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

        fig = Figure(figsize=(5, 3.5))
        ax = fig.add_subplot()
        epochs = [h["epoch"] + 1 for h in self.history]
        for key in NC_KEYS:
            ax.plot(epochs, [max(h[key], 1e-16) for h in self.history], marker="o", label=key)
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_title(f"neural collapse ({self.geometry})")
        ax.legend()
        fig.tight_layout()
        if path is not None:
            fig.savefig(path)
        return fig


_CHUNK_ROWS = 4096  # features gathered before one metric update: fewer, larger class-sum updates


def _one_capture(captured: list[Tensor]) -> Tensor:
    """The one ``(batch, features)`` input the feature layer saw in this forward, or an error that names the fix."""
    if len(captured) != 1:
        raise RuntimeError(
            f"NeuralCollapseMonitor: the feature layer ran {len(captured)} times in one forward; "
            "name a layer that runs once per forward with layer=..."
        )
    features = captured.pop()
    if features.ndim != 2:
        raise RuntimeError(
            f"NeuralCollapseMonitor: the feature layer's input has shape {tuple(features.shape)}; "
            "it must be (batch, features). Name another module with layer=..."
        )
    return features


def _flush(metric: NeuralCollapseMetrics, pending: list[tuple[Tensor, Tensor]]) -> None:
    """Add the gathered batches to the metric in one update and empty the list."""
    if pending:
        metric.update(torch.cat([f for f, _ in pending]), torch.cat([y.reshape(-1) for _, y in pending]))
        pending.clear()


def _batch_mover(trainer: Trainer, pl_module: LightningModule) -> Callable[[Any], Any]:
    """The Trainer's batch transfer (with the user's transfer hooks) if any are overridden, else a plain move."""
    hooks = ("transfer_batch_to_device", "on_after_batch_transfer")
    owners = [o for o in (pl_module, trainer.datamodule) if o is not None]
    if any(getattr(type(o), h) is not getattr(DataHooks, h) for o in owners for h in hooks):
        return lambda batch: trainer.strategy.batch_to_device(batch, pl_module.device)
    return lambda batch: move_data_to_device(batch, pl_module.device)  # what the default hooks do, without their dispatch


def _measurement_batches(trainer: Trainer) -> Iterable[Any]:
    """The training samples, un-augmented where the DataModule can give them, read once in dataset order.

    Source: ``trainer.datamodule.eval_train_dataloader()`` if the DataModule defines it, else the
    train dataloader. A map-style dataset is re-read through a new loader with that loader's batch
    size, collate function and workers, a sequential (under DDP: rank-strided) sampler and a private
    generator, so no training RNG is drawn; a ``TensorDataset`` with the default collate is sliced
    directly (the same batches). An iterable dataset is read through its own loader.
    """
    hook = getattr(trainer.datamodule, "eval_train_dataloader", None)
    source = hook() if callable(hook) else trainer.train_dataloader
    if source is None:
        raise RuntimeError("NeuralCollapseMonitor: the trainer has no train dataloader to measure on")
    if not isinstance(source, DataLoader):
        raise RuntimeError(
            "NeuralCollapseMonitor measures a single torch DataLoader of training samples; this run has "
            f"a {type(source).__name__}. Give the DataModule an eval_train_dataloader() that returns one"
        )
    if isinstance(source.dataset, IterableDataset):
        return _without_generator_draws(source)
    world, rank = max(trainer.world_size, 1), trainer.global_rank
    if source.batch_sampler is None:  # automatic batching off: each dataset item is a batch already
        batch_size = None
    else:  # a custom batch sampler may draw, repeat or drop samples: read each once, in its batch size
        batch_size = source.batch_size or getattr(source.batch_sampler, "batch_size", None) or 256
    if batch_size is not None and type(source.dataset) is TensorDataset and source.collate_fn is default_collate:
        # what default_collate would stack, as views: no per-sample indexing
        shard = [t[rank::world] for t in source.dataset.tensors]
        return ([t[i : i + batch_size] for t in shard] for i in range(0, len(shard[0]), batch_size))
    return DataLoader(
        source.dataset,
        batch_size=batch_size,
        sampler=range(rank, len(source.dataset), world),  # type: ignore[arg-type]  # each sample once, no padding
        collate_fn=source.collate_fn,
        num_workers=source.num_workers,
        pin_memory=source.pin_memory,
        worker_init_fn=source.worker_init_fn,
        multiprocessing_context=source.multiprocessing_context if source.num_workers > 0 else None,
        generator=torch.Generator().manual_seed(0),
    )


def _without_generator_draws(loader: DataLoader) -> Iterator[Any]:
    """Iterate ``loader`` and put its own generator (which shuffling and worker seeds draw from) back afterwards."""
    generator = loader.generator
    state = generator.get_state() if generator is not None else None
    try:
        yield from loader
    finally:
        if generator is not None and state is not None:
            generator.set_state(state)


@contextmanager
def _rng_untouched(device: torch.device) -> Iterator[None]:
    """Restore the torch (CPU and ``device``), NumPy and Python RNG states on exit: transforms may draw from them."""
    py_state, np_state = random.getstate(), np.random.get_state()
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def _split_batch(batch: Any) -> tuple[Any, Tensor]:
    """``(x, y)`` of a train batch ``(x, y, ...)``, or an error that says what the monitor expects."""
    if isinstance(batch, (list, tuple)) and len(batch) >= 2 and isinstance(batch[1], Tensor):
        return batch[0], batch[1]
    raise RuntimeError(
        f"NeuralCollapseMonitor expects train batches (x, y, ...) with integer labels y; got a {type(batch).__name__}"
    )
