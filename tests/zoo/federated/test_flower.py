"""The Flower engine against the simulator: message conversion, the Lightning client, the server loop, loopback.

The loopback test starts a real SuperLink and two SuperNodes (``flower-superlink`` / ``flower-supernode``,
insecure, free local ports) and checks that two FedAvg rounds give the simulator's global model.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from torch import Tensor, nn

from zoo.cli import main
from zoo.errors import ZooError
from zoo.federated import (
    Arrival,
    AsyncSchedule,
    ClientData,
    FedAvg,
    IntervalSchedule,
    LocalSGD,
    Simulator,
    SyncSchedule,
    batch_indices,
    client_times,
)
from zoo.federated.flower import (
    arrival_from_record,
    arrival_to_record,
    build_from_config,
    client_app,
    lightning_local_sgd,
    params_from_record,
    params_to_record,
    run_server,
    train_client,
)
from zoo.federated.loopback import LocalFederation
from zoo.templates.federated import FederatedModule

torch.set_num_threads(1)

HERE = Path(__file__).resolve().parent


class TinyFedAvg(FederatedModule):
    """A linear softmax model on digits; ``schedule`` picks sync (full participation), async or interval."""

    def __init__(
        self,
        rounds: int = 2,
        steps_per_call: int = 1,
        seed: int = 0,
        loss: str = "cross_entropy",
        importance: str = "ratio",
        schedule: str = "sync",
        local_steps: int = 3,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.init_global_model()

    def build_model(self) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

    def build_schedule(self, num_clients: int) -> Any:
        tau = client_times(num_clients, 60)
        if self.hparams.schedule == "async":
            return AsyncSchedule(tau, buffer=1)
        if self.hparams.schedule == "interval":
            return IntervalSchedule(tau, interval=0.5)
        return SyncSchedule([1.0] * num_clients)

    def build_strategy(self) -> FedAvg:
        return FedAvg()

    def build_client(self) -> LocalSGD:
        return LocalSGD(lr=0.05, batch_size=8, local_steps=self.hparams.local_steps)


def _config(num_clients: int = 2, rounds: int = 2, schedule: str = "sync", module: str = "test_flower.TinyFedAvg") -> dict[str, Any]:
    return {
        "model": {"class_path": module, "init_args": {"rounds": rounds, "schedule": schedule}},
        "data": {
            "class_path": "zoo.datamodules.PartitionedDataModule",
            "init_args": {"base": {"class_path": "zoo.datamodules.DigitsDataModule"}, "num_clients": num_clients, "alpha": 0.5, "seed": 0},
        },
    }


def _simulate(config: dict[str, Any], rounds: int) -> Tensor:
    module, dm = build_from_config(config)
    dm.setup("fit")
    data = dm.client_data()
    sim = Simulator(
        module.functional,
        data,
        module.build_strategy(),
        module.build_schedule(data.num_clients),
        module.build_client(),
        params=module.global_params.data,
        seed=int(module.hparams.seed),
        importance=module.hparams.importance,
    )
    sim.run(rounds)
    return sim.params


# ----------------------------------------------------------------------------- message conversion
def test_params_and_arrivals_survive_flower_records_exactly() -> None:
    params = torch.randn(37)
    assert torch.equal(params_from_record(params_to_record(params)), params)
    arrival = Arrival(3, 5, 9, {"local_steps": 7, "lr_scale": 0.5})
    back = arrival_from_record(arrival_to_record(arrival))
    assert back == arrival and back.staleness == 4
    with pytest.raises(ValueError, match="reuse the keys"):
        arrival_to_record(Arrival(0, 0, 0, {"client": 1}))
    with pytest.raises(ValueError, match="lacks"):
        arrival_from_record(ConfigRecord({"client": 1, "step": 0}))


def test_build_from_config_refuses_a_module_that_is_not_federated() -> None:
    spec = _config()
    spec["model"] = {"class_path": "zoo.anyloss.AnyLossClassifier", "init_args": {}}
    with pytest.raises(TypeError, match="not a FederatedModule"):
        build_from_config(spec)
    with pytest.raises(ValueError, match="'model' and 'data'"):
        build_from_config("model: {}")


# ----------------------------------------------------------------------------- the client
def test_lightning_client_takes_the_simulators_local_sgd_steps() -> None:
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(13, 64, generator=g), torch.randn(9, 64, generator=g)]
    data = ClientData.from_tensors(xs, [torch.randint(10, (len(x),), generator=g) for x in xs])
    module = TinyFedAvg(local_steps=4)
    sent = module.global_params.data + 0.01 * torch.randn(module.functional.num_params, generator=g)
    arrival = Arrival(1, 2, 5)
    program = module.build_client()
    expected = program.run(module.functional, sent[None], data, [arrival], seed=0)[0]
    delta, state = train_client(module, data, sent, arrival)
    assert state is None and torch.allclose(delta, expected, atol=1e-6)
    # a different arrival draws different mini-batches: the rows really are batch_indices'
    rows = batch_indices(0, Arrival(1, 2, 6), 9, 4, 8)
    other = lightning_local_sgd(module.functional, sent, *data.client(1), rows, 0.05) - sent
    assert not torch.allclose(other, expected, atol=1e-4)


class _CountingClient:
    """A client program other than LocalSGD: returns ``calls * ones`` and keeps ``calls`` as state."""

    def __init__(self) -> None:
        self.calls = torch.zeros(())

    def run(self, model: Any, sent: Tensor, data: ClientData, arrivals: list[Arrival], seed: int) -> Tensor:
        self.calls += 1
        return self.calls * torch.ones_like(sent)

    def state_dict(self) -> dict[str, Tensor]:
        return {"calls": self.calls.clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.calls = state["calls"].clone()


def test_other_client_programs_run_their_own_run_with_state_kept_between_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    module = TinyFedAvg()
    monkeypatch.setattr(module, "build_client", _CountingClient)
    data = ClientData.from_tensors([torch.randn(4, 64)], [torch.zeros(4, dtype=torch.long)])
    sent = torch.zeros(module.functional.num_params)
    first, state = train_client(module, data, sent, Arrival(0, 0, 0))
    second, _ = train_client(module, data, sent, Arrival(0, 1, 1), state)
    assert float(first[0]) == 1.0 and float(second[0]) == 2.0


# ----------------------------------------------------------------------------- the server loop
class _InProcessGrid:
    """A Grid whose SuperNodes are the ClientApp called in this process; a reply becomes visible when pulled."""

    def __init__(self, config: str, num_clients: int) -> None:
        self.nodes = {100 + i: i for i in range(num_clients)}
        self.run_config = {"zoo-config": config}
        self.states = {node: RecordDict() for node in self.nodes}
        self.pending: dict[str, Message] = {}
        self.most_in_flight = 0

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)

    def push_messages(self, messages: list[Message]) -> list[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = msg.object_id
            self.pending[msg.metadata.message_id] = msg
            ids.append(msg.metadata.message_id)
        later = sum("arrival" in m.content.config_records for m in self.pending.values())  # sent after the first wave
        self.most_in_flight = max(self.most_in_flight, later)
        return ids

    def pull_messages(self, ids: list[str]) -> list[Message]:
        replies = []
        for mid in ids:
            msg = self.pending.pop(mid)
            node = msg.metadata.dst_node_id
            config = {"partition-id": self.nodes[node], "num-partitions": len(self.nodes)}
            context = Context(1, node, config, self.states[node], self.run_config)
            reply = client_app(msg, context)
            reply.metadata.__dict__["_reply_to_message_id"] = mid
            replies.append(reply)
        return replies


@pytest.mark.parametrize("schedule", ["async", "interval"])
def test_server_loop_replays_asynchronous_schedules_like_the_simulator(schedule: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml
    from flwr.supercore.task_identity import TaskIdentity

    for attr in ("_run_id", "_node_id", "_task_id"):  # what flwr-serverapp sets for the ServerApp's process
        monkeypatch.setattr(TaskIdentity, attr, 1)

    config = _config(num_clients=3, rounds=8, schedule=schedule, module=f"{__name__}.TinyFedAvg")
    grid = _InProcessGrid(yaml.safe_dump(config), 3)
    module, _ = build_from_config(config)
    got = run_server(grid, module, rounds=8, num_clients=3, poll=0.0)  # type: ignore[arg-type]
    assert grid.most_in_flight >= 2  # several messages in flight, each pulled when its step is due
    assert torch.allclose(got, _simulate(config, 8), atol=1e-5)


# ----------------------------------------------------------------------------- real Flower on loopback
def _running_in_groups(groups: set[int]) -> list[str]:
    """``pid (comm)`` of the live (not zombie) processes whose process group is in ``groups`` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text.rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, pgrp, ...
        if int(fields[2]) in groups and fields[0] != "Z":
            found.append(text.split(")", 1)[0] + ")")
    return found


@pytest.mark.timeout(600)
def test_flower_loopback_equals_the_simulator_for_two_fedavg_rounds(tmp_path: Path) -> None:
    import yaml

    config = _config(num_clients=2, rounds=2)
    with LocalFederation(2, workdir=tmp_path, pythonpath=[HERE], timeout=420) as fed:
        got = fed.run(yaml.safe_dump(config), rounds=2)
        procs = list(fed.processes)
    assert torch.allclose(got, _simulate(_config(num_clients=2, rounds=2, module=f"{__name__}.TinyFedAvg"), 2), atol=1e-5)
    assert all(p.returncode is not None for p in procs)  # the SuperLink and SuperNodes were stopped ...
    deadline = time.monotonic() + 10  # ... with their SuperExec and app children (each started its own process group)
    while (left := _running_in_groups({p.pid for p in procs})) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"processes left running: {left}"


# ----------------------------------------------------------------------------- zoo federate errors
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["federate", "no-such-entry"], "unknown entry"),
        (["federate", "anyloss"], "not a federated entry"),
        (["federate", "anyloss", "--engine", "ray"], "invalid choice"),
        (["federate", "fedfix", "--rounds", "0"], "must be >= 1"),
        (["federate", "fedfix", "--model.init_args.rounds=oops"], "rounds"),
    ],
)
def test_zoo_federate_refuses_bad_input_in_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_zoo_federate_runs_a_card_on_the_simulator_with_overrides(capsys: pytest.CaptureFixture[str]) -> None:
    from zoo.federated.loopback import federate

    result = federate("fedfix", "sim", rounds=3, clients=4, overrides=["--model.init_args.scheme=sync"])
    assert result["rounds"] == 3 and result["clients"] == 4 and "test/loss" in result["metrics"]
    assert main(["federate", "fedfix", "--rounds", "2", "--clients", "3", "--model.init_args.scheme=sync"]) == 0
    assert "2 rounds, 3 clients" in capsys.readouterr().out
    with pytest.raises(ZooError, match="only --model"):
        federate("fedfix", "sim", overrides=["--trainer.max_epochs=1"])
