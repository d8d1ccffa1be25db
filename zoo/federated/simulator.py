"""The in-process engine: a schedule, a client program and a strategy on a virtual clock, one process.

Each server step asks the schedule who returns, computes all their updates as one batched tensor
from the global versions they were sent (kept until no client works from them), and lets the
strategy aggregate. Deterministic by seed; 100 clients x 1,000 rounds of a small model take
seconds (``benchmarks/federated.py``).

>>> import torch
>>> from torch import nn
>>> from zoo.federated import ClientData, FedAvg, FunctionalModel, LocalSGD, Simulator, SyncSchedule
>>> torch.manual_seed(0)  # doctest: +ELLIPSIS
<torch._C.Generator object at ...>
>>> xs = [torch.randn(20, 2) for _ in range(3)]
>>> ys = [x @ torch.tensor([1.0, -2.0]) for x in xs]
>>> model = FunctionalModel(nn.Linear(2, 1, bias=False), loss="half_mse")
>>> sim = Simulator(model, ClientData.from_tensors(xs, ys), FedAvg(), SyncSchedule([1.0] * 3),
...                 LocalSGD(lr=0.1, batch_size=8, local_steps=5), params=torch.zeros(2))
>>> sim.run(100)
>>> [round(v, 3) for v in sim.params.tolist()], sim.time
([1.0, -2.0], 100.0)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from zoo.federated.clock import Schedule
from zoo.federated.core import Arrival, ClientData, FunctionalModel, Strategy

__all__ = ["ClientProgram", "Simulator", "StepRecord"]


class ClientProgram(Protocol):
    """What every client computes: ``run`` maps the models the returning clients were sent to their updates."""

    def run(self, model: FunctionalModel, sent: Tensor, data: ClientData, arrivals: list[Arrival], seed: int) -> Tensor: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class StepRecord:
    """What happened at one server step: its index (1-based after the step), the virtual time, who returned."""

    step: int
    time: float
    arrivals: list[Arrival]


class Simulator:
    """Run a strategy on the virtual clock: ``step()`` is one server step, ``run(n)`` many.

    Args:
        model: the model as a flat vector (:class:`~zoo.federated.core.FunctionalModel`).
        data: every client's examples.
        strategy: the server rule; ``start`` is called here with ``importance`` (``p_i``).
        schedule: who returns when (:mod:`zoo.federated.clock`).
        client: the client program (``LocalSGD`` or an entry's own).
        params: the initial global model ``(P,)``.
        seed: keys every client's mini-batches (:func:`~zoo.federated.core.batch_indices`).
        importance: ``p_i`` of the global objective, ``"uniform"`` or ``"ratio"`` or a tensor.
        on_step: called after each step with the record and the new global model (metrics, traces).
    """

    def __init__(
        self,
        model: FunctionalModel,
        data: ClientData,
        strategy: Strategy,
        schedule: Schedule,
        client: ClientProgram,
        params: Tensor,
        seed: int = 0,
        importance: str | Tensor = "uniform",
        on_step: Callable[[StepRecord, Tensor], None] | None = None,
    ) -> None:
        if schedule.num_clients != data.num_clients:
            raise ValueError(f"the schedule has {schedule.num_clients} clients and the data {data.num_clients}")
        if params.shape != (model.num_params,):
            raise ValueError(f"params must have shape ({model.num_params},), got {tuple(params.shape)}")
        self.model, self.data, self.strategy, self.schedule, self.client = model, data, strategy, schedule, client
        self.seed = seed
        self.on_step = on_step
        self.p = data.importance(importance) if isinstance(importance, str) else importance.double()
        self.params = params.detach().clone()
        self.versions: dict[int, Tensor] = {0: self.params}
        strategy.start(self.params, data.num_clients, self.p)

    @property
    def steps_done(self) -> int:
        return self.schedule.step

    @property
    def time(self) -> float:
        return self.schedule.time

    def step(self) -> StepRecord:
        """One server step: the schedule's arrivals, their batched updates, the strategy's aggregation."""
        n = self.schedule.step
        arrivals = self.schedule.arrivals(n)
        if arrivals:
            sent = torch.stack([self.versions[a.version] for a in arrivals])
            updates = self.client.run(self.model, sent, self.data, arrivals, self.seed)
        else:
            updates = self.params.new_zeros((0, self.model.num_params))
        self.params = self.strategy.aggregate(self.params, arrivals, updates, n).detach()
        self.versions[n + 1] = self.params
        live = self.schedule.in_flight() | {n + 1}
        self.versions = {v: w for v, w in self.versions.items() if v in live}
        record = StepRecord(n + 1, self.schedule.time, arrivals)
        if self.on_step is not None:
            self.on_step(record, self.params)
        return record

    def run(self, steps: int) -> None:
        """``steps`` server steps."""
        for _ in range(steps):
            self.step()

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs: the global versions in flight, schedule, strategy and client state."""
        return {
            "versions": {int(v): w.clone() for v, w in self.versions.items()},
            "schedule": self.schedule.state_dict(),
            "strategy": self.strategy.state_dict(),
            "client": self.client.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.schedule.load_state_dict(state["schedule"])
        self.versions = {int(v): w.clone() for v, w in state["versions"].items()}
        self.params = self.versions[self.schedule.step]
        self.strategy.load_state_dict(state["strategy"])
        self.client.load_state_dict(state["client"])
