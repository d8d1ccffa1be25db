"""Federated learning on two engines: strategies as plain objects, an in-process virtual-clock simulator, Flower.

See :mod:`zoo.federated.core` for the three objects every federated entry is made of (schedule,
client program, strategy), :mod:`zoo.federated.clock` for the virtual clocks and
:mod:`zoo.federated.simulator` for the in-process engine.
"""

from zoo.federated.clock import AsyncSchedule, IntervalSchedule, Schedule, SyncSchedule, client_times
from zoo.federated.core import LOSSES, Arrival, ClientData, FedAvg, FunctionalModel, LocalSGD, Strategy, batch_indices, local_sgd
from zoo.federated.simulator import ClientProgram, Simulator, StepRecord

__all__ = [
    "LOSSES",
    "Arrival",
    "AsyncSchedule",
    "ClientData",
    "ClientProgram",
    "FedAvg",
    "FunctionalModel",
    "IntervalSchedule",
    "LocalSGD",
    "Schedule",
    "Simulator",
    "StepRecord",
    "Strategy",
    "SyncSchedule",
    "batch_indices",
    "client_times",
    "local_sgd",
]
