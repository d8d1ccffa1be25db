"""``FederatedModule``: the base of federated entries, a virtual-clock run driven by Lightning.

A federated entry is a schedule, a client program and a strategy (:mod:`zoo.federated`); this base
runs them in the in-process :class:`~zoo.federated.Simulator` under ``trainer.fit``, so entries gain
``zoo fit``, LightningCLI configs, checkpoints that resume the same run, ``zoo reproduce`` and the hub:

1. at the start of fit it asks the datamodule for every client's data (``client_data()``, as
   :class:`~zoo.datamodules.FederatedDataModule` gives) and builds the simulator from the hooks
   :meth:`build_model`, :meth:`build_schedule`, :meth:`build_strategy`, :meth:`build_client`;
2. each ``training_step`` runs ``steps_per_call`` server steps (manual optimisation: the server
   rule updates the global model) and logs the server step, the virtual time and the
   importance-weighted global training loss; the fit stops after :meth:`total_steps` server steps (``rounds`` unless an entry overrides it);
3. :meth:`step_metrics` (optional) is called after every server step; what it returns is kept in
   :attr:`trace` (one list per key, with ``step`` and ``time``), which checkpoints keep, so claims
   about trajectories (time to an error, bias of the last iterates) survive a resume;
4. the global model is the parameter ``global_params`` (published as safetensors); ``forward``
   runs it, and test logs ``test/loss`` and, for ``loss="cross_entropy"``, the classifier metrics
   (accuracy, balanced, worst-class and per-class accuracy).

Subclasses call ``self.save_hyperparameters()`` with at least ``rounds``, ``steps_per_call``,
``seed``, ``loss`` and ``importance`` among their init arguments, then :meth:`init_global_model`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from zoo.federated import ClientData, ClientProgram, FunctionalModel, Schedule, Simulator, StepRecord, Strategy
from zoo.hub import ZooModule
from zoo.templates.classifier import classification_metrics

__all__ = ["FederatedModule"]


class FederatedModule(ZooModule):
    """Run a federated strategy on the virtual clock under ``trainer.fit``; ``steps_per_call`` server steps per step."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.simulator: Simulator | None = None
        self.trace: dict[str, list[float]] = {}
        self._pending_state: dict[str, Any] | None = None
        self._confusion: Tensor | None = None

    # ------------------------------------------------------------------ what a subclass provides
    def build_model(self) -> nn.Module:
        """The network every client trains (parameters only; no BatchNorm)."""
        raise NotImplementedError(f"{type(self).__name__} must implement build_model()")

    def build_schedule(self, num_clients: int) -> Schedule:
        raise NotImplementedError(f"{type(self).__name__} must implement build_schedule(num_clients)")

    def build_strategy(self) -> Strategy:
        raise NotImplementedError(f"{type(self).__name__} must implement build_strategy()")

    def build_client(self) -> ClientProgram:
        raise NotImplementedError(f"{type(self).__name__} must implement build_client()")

    def step_metrics(self, record: StepRecord, params: Tensor) -> dict[str, float]:
        """Values to trace after a server step (e.g. the distance to the optimum); none by default."""
        return {}

    # ------------------------------------------------------------------ the shared machinery
    def init_global_model(self) -> None:
        """Build the network once (seeded by ``seed``) and hold its flat parameters as ``global_params``."""
        with torch.random.fork_rng():
            torch.manual_seed(int(self.hparams["seed"]))
            self.functional = FunctionalModel(self.build_model(), loss=str(self.hparams["loss"]))
        self.global_params = nn.Parameter(self.functional.flatten(), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.functional.forward(self.global_params, x)

    def configure_optimizers(self) -> list:
        return []  # the server rule updates the global model itself

    def client_data(self) -> ClientData:
        datamodule = self.trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "client_data"):
            raise RuntimeError(
                f"{type(self).__name__} trains on clients: fit it with a datamodule that has client_data() "
                "(zoo.datamodules.FederatedDataModule or one of its subclasses)"
            )
        data = datamodule.client_data()
        return ClientData(data.x.to(self.device), data.y.to(self.device), data.counts)

    def _record(self, record: StepRecord, params: Tensor) -> None:
        values = {"step": float(record.step), "time": float(record.time), **self.step_metrics(record, params)}
        for key, value in values.items():
            self.trace.setdefault(key, []).append(float(value))

    def on_train_start(self) -> None:
        data = self.client_data()
        self.simulator = Simulator(
            self.functional,
            data,
            self.build_strategy(),
            self.build_schedule(data.num_clients),
            self.build_client(),
            params=self.global_params.data,
            seed=int(self.hparams["seed"]),
            importance=str(self.hparams["importance"]),
            on_step=self._record,
        )
        if self._pending_state is not None:
            self.simulator.load_state_dict(self._pending_state["simulator"])
            self.trace = {k: list(v) for k, v in self._pending_state["trace"].items()}
            self._pending_state = None

    def global_loss(self) -> float:
        """``sum_i p_i L_i(theta)`` over every client's whole data (the objective the federation minimises)."""
        assert self.simulator is not None
        sim = self.simulator
        losses = [sim.model.loss(self.global_params, *sim.data.client(i)) for i in range(sim.data.num_clients)]
        return float((torch.stack(losses).double() * sim.p).sum())

    def training_step(self, batch: Any, batch_idx: int) -> None:
        if self.simulator is None:
            raise RuntimeError(f"{type(self).__name__} trains with trainer.fit (on_train_start builds the simulator)")
        todo = max(0, min(int(self.hparams["steps_per_call"]), self.total_steps() - self.simulator.steps_done))
        self.simulator.run(todo)
        self.global_params.data.copy_(self.simulator.params)
        logs = {
            "train/server_step": float(self.simulator.steps_done),
            "train/virtual_time": self.simulator.time,
            "train/global_loss": self.global_loss(),
        }
        self.log_dict({k: torch.tensor(v, dtype=torch.float64) for k, v in logs.items()}, on_step=True, on_epoch=False, batch_size=1)
        if self.simulator.steps_done >= self.total_steps():
            self.trainer.should_stop = True

    def total_steps(self) -> int:
        """The server steps of one fit: ``rounds``; an entry with a virtual-time budget counts the steps that fit in it."""
        return int(self.hparams["rounds"])

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.simulator is not None:
            checkpoint["federated"] = {"simulator": self.simulator.state_dict(), "trace": {k: list(v) for k, v in self.trace.items()}}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._pending_state = checkpoint.get("federated")

    # ------------------------------------------------------------------ evaluation
    def _evaluate(self, batch: Any, prefix: str) -> None:
        x, y = batch[0], batch[1]
        out = self(x)
        self.log(f"{prefix}/loss", self.functional.loss_fn(out, y), on_epoch=True, batch_size=len(y))
        if self.functional.loss_name == "cross_entropy":
            k = out.shape[-1]
            counts = torch.bincount(y * k + out.argmax(-1), minlength=k * k).reshape(k, k)
            self._confusion = counts if self._confusion is None else self._confusion + counts

    def _log_confusion(self, prefix: str) -> None:
        if self._confusion is not None:
            self.log_dict({key: value.float() for key, value in classification_metrics(self._confusion, prefix).items()})
            self._confusion = None

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_confusion("val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_confusion("test")
