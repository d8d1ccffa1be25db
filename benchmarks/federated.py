"""Federated engines: simulator rounds per second at 100 clients, and Flower's round latency on loopback.

1. The simulator (every returning client's local SGD as one batched ``vmap`` tensor) against a plain
   per-client loop (each client's own ``nn.Module`` and ``torch.optim.SGD``, one after another) on the
   same FedAvg rounds: 100 clients, full participation, a 64-32-10 MLP on digits, K local steps of
   batch 16. Both give the same global model; the ratio is the batching's speed-up.
2. Flower on loopback (a real SuperLink and one SuperNode per client, ``LocalFederation``) against
   the simulator for the same strategy (FedAvg, full participation, 2 clients): the median wall
   time of a server step. A Flower step is a message to every client, a fresh ``flwr-clientapp``
   process per message (Flower 1.42's subprocess isolation: it imports torch and Lightning) and the
   SuperNodes' 3-second idle poll, so the ratio says what the deployment engine's overhead is,
   not how fast the maths is.

    python -m benchmarks.federated [--clients 100] [--rounds 50] [--local-steps 5] [--flower-rounds 3] [--no-flower]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
import yaml
from torch import nn

from benchmarks._common import quiet_lightning
from zoo.datamodules import DigitsDataModule, PartitionedDataModule
from zoo.federated import ClientData, FedAvg, FunctionalModel, LocalSGD, Simulator, SyncSchedule, batch_indices
from zoo.federated.core import Arrival
from zoo.templates.federated import FederatedModule


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))


def _digits(clients: int) -> ClientData:
    dm = PartitionedDataModule(DigitsDataModule(), num_clients=clients, alpha=0.5, seed=0)
    dm.setup("fit")
    return dm.client_data()


def simulator_rounds(data: ClientData, rounds: int, local_steps: int) -> tuple[float, torch.Tensor]:
    model = FunctionalModel(_mlp())
    sim = Simulator(model, data, FedAvg(), SyncSchedule([1.0] * data.num_clients), LocalSGD(0.05, 16, local_steps), params=model.flatten())
    start = time.perf_counter()
    sim.run(rounds)
    return time.perf_counter() - start, sim.params


def loop_rounds(data: ClientData, rounds: int, local_steps: int) -> tuple[float, torch.Tensor]:
    """The peer: FedAvg with each client trained in turn by its own module and torch.optim.SGD."""
    net = _mlp()
    model = FunctionalModel(net)
    params = model.flatten()
    p = data.importance("uniform").float()
    start = time.perf_counter()
    for n in range(rounds):
        new = torch.zeros_like(params)
        for i in range(data.num_clients):
            model.load(params)
            opt = torch.optim.SGD(net.parameters(), lr=0.05)
            x, y = data.client(i)
            for rows in batch_indices(0, Arrival(i, n, n), len(x), local_steps, 16):
                opt.zero_grad()
                nn.functional.cross_entropy(net(x[rows]), y[rows]).backward()
                opt.step()
            new += p[i] * (model.flatten() - params)
        params = params + new
    return time.perf_counter() - start, params


def _tiny_config(clients: int, rounds: int) -> dict[str, Any]:
    return {
        "model": {"class_path": "benchmarks.federated.BenchFedAvg", "init_args": {"rounds": rounds}},
        "data": {
            "class_path": "zoo.datamodules.PartitionedDataModule",
            "init_args": {"base": {"class_path": "zoo.datamodules.DigitsDataModule"}, "num_clients": clients, "alpha": 0.5, "seed": 0},
        },
    }


class BenchFedAvg(FederatedModule):
    """FedAvg, full participation, the benchmark's MLP: what Flower and the simulator both run."""

    def __init__(self, rounds: int = 3, steps_per_call: int = 1, seed: int = 0, loss: str = "cross_entropy", importance: str = "uniform") -> None:
        super().__init__()
        self.save_hyperparameters()
        self.init_global_model()

    def build_model(self) -> nn.Module:
        return nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))

    def build_schedule(self, num_clients: int) -> SyncSchedule:
        return SyncSchedule([1.0] * num_clients)

    def build_strategy(self) -> FedAvg:
        return FedAvg()

    def build_client(self) -> LocalSGD:
        return LocalSGD(lr=0.05, batch_size=16, local_steps=5)


def flower_vs_simulator(rounds: int) -> tuple[float, float, float]:
    """Median server-step seconds on Flower (loopback, 2 clients) and on the simulator, and their max difference."""
    from pathlib import Path

    from zoo.federated.flower import build_from_config
    from zoo.federated.loopback import LocalFederation

    config = _tiny_config(2, rounds)
    root = Path(__file__).resolve().parent.parent
    with LocalFederation(2, pythonpath=[root], timeout=900) as fed:
        params = fed.run(yaml.safe_dump(config), rounds=rounds)
        flower = statistics.median(fed.result["step_seconds"])
    module, dm = build_from_config(config)
    dm.setup("fit")
    data = dm.client_data()
    steps: list[float] = []
    last = [time.perf_counter()]

    def tick(*_: Any) -> None:
        now = time.perf_counter()
        steps.append(now - last[0])
        last[0] = now

    sim = Simulator(
        module.functional, data, FedAvg(), SyncSchedule([1.0] * 2), module.build_client(), params=module.global_params.data, importance="uniform", on_step=tick
    )
    last[0] = time.perf_counter()
    sim.run(rounds)
    return flower, statistics.median(steps), float((sim.params - params).abs().max())


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.federated", description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--local-steps", type=int, default=5)
    parser.add_argument("--flower-rounds", type=int, default=3)
    parser.add_argument("--no-flower", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    quiet_lightning()

    data = _digits(args.clients)
    simulator_rounds(data, 2, args.local_steps)  # warm-up
    sim_s, sim_params = simulator_rounds(data, args.rounds, args.local_steps)
    loop_s, loop_params = loop_rounds(data, args.rounds, args.local_steps)
    gap = float((sim_params - loop_params).abs().max())
    print(
        f"FedAvg, {args.clients} clients (digits, Dirichlet 0.5), MLP 64-32-10, K={args.local_steps} steps of batch 16, "
        f"{args.rounds} rounds, {args.threads} thread(s): simulator {args.rounds / sim_s:.1f} rounds/s, "
        f"per-client loop {args.rounds / loop_s:.2f} rounds/s (max |difference| of the global models {gap:.1e})"
    )
    ratio = loop_s / sim_s
    print(f"simulator speed-up over the per-client loop: {ratio:.1f}x")
    if not args.no_flower:
        flower, sim_step, diff = flower_vs_simulator(args.flower_rounds)
        print(
            f"FedAvg, 2 clients, {args.flower_rounds} rounds: Flower on loopback {flower:.2f} s per round (median), "
            f"simulator {1000 * sim_step:.2f} ms per round (max |difference| of the global models {diff:.1e})"
        )
        print(f"round latency ratio (Flower loopback / simulator): {flower / sim_step:.0f}x")
    return ratio


if __name__ == "__main__":
    main()
