"""A drop-in Callback that logs the neural collapse metrics NC1, NC2 and NC3 during training.

Paper: *Neural Collapse in Deep Linear Networks: From Balanced to Imbalanced Data*, Dang et al.
(ICML 2023), arXiv 2301.00437. The definitions, the closed-form imbalanced geometry and the
torchmetrics :class:`~zoo.neural_collapse.NeuralCollapseMetrics` that this callback feeds live in
:mod:`zoo.neural_collapse`; this file only hooks a layer of any LightningModule, runs the train set
through it every few epochs and logs ``nc/NC1``, ``nc/NC2_W``, ``nc/NC2_H``, ``nc/NC3``.

>>> from zoo.callbacks import NeuralCollapseMonitor
>>> monitor = NeuralCollapseMonitor(every_n_epochs=5)  # Trainer(callbacks=[monitor]).fit(model)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
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
    returns logits. At the end of every ``every_n_epochs``-th training epoch it runs the model in
    eval mode without gradients over the train dataloader (then restores train mode), records the
    input of the feature layer, and logs ``{prefix}/NC1`` ... ``{prefix}/NC3`` (with
    ``sync_dist``; the statistics are summed over DDP processes before the metrics are computed).

    Args:
        every_n_epochs: measure after epochs ``n, 2n, ...`` (1-based).
        layer: name (as in ``named_modules``) of the module whose *input* is the feature; default
            the first classifier layer.
        classifier: names of the ``nn.Linear`` layers whose weight product is ``W``, in forward
            order (``W = W_M ... W_1``); an int ``n`` takes the last ``n`` ``nn.Linear`` modules in
            registration order; default the last ``nn.Linear``.
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
        """Run the model over the train dataloader and return the NC metrics (all processes must call it)."""
        if self._metric is None or self._feature_module is None:
            raise RuntimeError("NeuralCollapseMonitor.measure() called before setup()")
        loader = trainer.train_dataloader
        if loader is None:
            raise RuntimeError("NeuralCollapseMonitor: the trainer has no train dataloader to measure on")
        if isinstance(loader, (list, tuple, dict)):
            raise RuntimeError("NeuralCollapseMonitor measures a single train dataloader; this run has several")
        metric = self._metric.to(pl_module.device)
        metric.reset()
        metric.set_classifier(_linear_product(self._classifier_layers))
        captured: list[Tensor] = []

        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            captured.append(args[0].detach())

        handle = self._feature_module.register_forward_pre_hook(hook)
        was_training = pl_module.training
        pl_module.eval()
        try:
            with torch.no_grad():
                for i, batch in enumerate(loader):
                    if self.max_batches is not None and i >= self.max_batches:
                        break
                    batch = trainer.strategy.batch_to_device(batch, pl_module.device)
                    x, y = _split_batch(batch)
                    captured.clear()
                    pl_module(x)
                    if len(captured) != 1:
                        raise RuntimeError(
                            f"NeuralCollapseMonitor: the feature layer ran {len(captured)} times in one forward; "
                            "name a layer that runs once per forward with layer=..."
                        )
                    features = captured[0]
                    if features.ndim != 2:
                        raise RuntimeError(
                            f"NeuralCollapseMonitor: the feature layer's input has shape {tuple(features.shape)}; "
                            "it must be (batch, features). Name another module with layer=..."
                        )
                    metric.update(features, y)
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


def _split_batch(batch: Any) -> tuple[Any, Tensor]:
    """``(x, y)`` of a train batch ``(x, y, ...)``, or an error that says what the monitor expects."""
    if isinstance(batch, (list, tuple)) and len(batch) >= 2 and isinstance(batch[1], Tensor):
        return batch[0], batch[1]
    raise RuntimeError(
        f"NeuralCollapseMonitor expects train batches (x, y, ...) with integer labels y; got a {type(batch).__name__}"
    )
