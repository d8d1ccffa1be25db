"""The federated core against naive references: local SGD, aggregation, clocks, partitions, resume."""

from __future__ import annotations

import math

import pytest
import torch
from lightning.pytorch import Trainer
from torch import nn

from zoo.datamodules import DigitsDataModule, PartitionedDataModule, dirichlet_partition, label_correlated_participation
from zoo.federated import (
    Arrival,
    AsyncSchedule,
    ClientData,
    FedAvg,
    FunctionalModel,
    IntervalSchedule,
    LocalSGD,
    Simulator,
    SyncSchedule,
    batch_indices,
    client_times,
)
from zoo.nn.backbones import build_backbone
from zoo.templates.federated import FederatedModule

torch.set_num_threads(1)


def _clients(num: int = 4, seed: int = 0) -> ClientData:
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(10 + 3 * i, 5, generator=g) for i in range(num)]
    ys = [torch.randint(3, (len(x),), generator=g) for x in xs]
    return ClientData.from_tensors(xs, ys)


def test_batched_local_sgd_equals_a_loop_of_plain_sgd_on_each_client() -> None:
    data = _clients()
    model = FunctionalModel(nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)))
    start = model.flatten()
    arrivals = [Arrival(0, 2, 3), Arrival(2, 3, 3), Arrival(3, 1, 3)]
    steps = [4, 1, 3]
    client = LocalSGD(lr=0.3, batch_size=6, local_steps=99)
    sent = torch.stack([start, start * 0.5, start + 0.1])
    got = client.run(model, sent, data, [Arrival(a.client, a.version, a.step, {"local_steps": k}) for a, k in zip(arrivals, steps)], seed=7)
    for g, (arrival, k) in enumerate(zip(arrivals, steps)):
        net = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
        FunctionalModel(net).load(sent[g])
        opt = torch.optim.SGD(net.parameters(), lr=0.3)
        x, y = data.client(arrival.client)
        for rows in batch_indices(7, arrival, len(x), k, 6):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[rows]), y[rows]).backward()
            opt.step()
        assert torch.allclose(got[g], FunctionalModel(net).flatten() - sent[g], atol=1e-6)


def test_fedavg_full_participation_is_the_weighted_mean_of_local_models() -> None:
    data = _clients()
    model = FunctionalModel(nn.Linear(5, 3))
    params = model.flatten()
    client = LocalSGD(lr=0.1, batch_size=4, local_steps=3)
    sim = Simulator(model, data, FedAvg(), SyncSchedule([1.0] * 4), client, params=params, seed=1, importance="ratio")
    sim.step()
    arrivals = [Arrival(i, 0, 0) for i in range(4)]
    local = client.run(model, params.expand(4, -1), data, arrivals, seed=1) + params
    p = data.counts.double() / data.counts.sum()
    assert torch.allclose(sim.params, (p[:, None].float() * local).sum(0), atol=1e-6)


def test_least_squares_fedavg_reaches_the_common_optimum() -> None:
    g = torch.Generator().manual_seed(0)
    truth = torch.tensor([1.0, -2.0, 0.5])
    xs = [torch.randn(30, 3, generator=g) for _ in range(5)]
    data = ClientData.from_tensors(xs, [x @ truth for x in xs])
    model = FunctionalModel(nn.Linear(3, 1, bias=False), loss="half_mse")
    sim = Simulator(model, data, FedAvg(), SyncSchedule([1.0] * 5), LocalSGD(0.1, 8, 5), params=torch.zeros(3))
    sim.run(200)
    assert torch.allclose(sim.params, truth, atol=1e-4)


def test_client_times_follow_the_f_x_scenario() -> None:
    assert client_times(10, 90) == pytest.approx([1 - 0.1 * i for i in range(10)])
    with pytest.raises(ValueError, match="spread"):
        client_times(3, 100)


def test_async_schedule_returns_clients_in_time_order_and_tracks_versions() -> None:
    s = AsyncSchedule([1.0, 0.3], buffer=1)
    got = [(a.client, a.version, a.step) for n in range(5) for a in s.arrivals(n)]
    # returns at 0.3 (c1 v0), 0.6 (c1 v1), 0.9 (c1 v2), 1.0 (c0 v0), 1.2 (c1 v3)
    assert got == [(1, 0, 0), (1, 1, 1), (1, 2, 2), (0, 0, 3), (1, 3, 4)]
    assert s.in_flight() == {4, 5}


def test_interval_schedule_returns_each_client_every_ceil_tau_over_dt_steps() -> None:
    tau = client_times(10, 90)
    s = IntervalSchedule(tau, interval=0.2)
    counts = torch.zeros(10)
    steps = 600
    for n in range(steps):
        for a in s.arrivals(n):
            counts[a.client] += 1
            assert a.staleness == math.ceil(tau[a.client] / 0.2 - 1e-9) - 1
    expected = torch.tensor([steps / math.ceil(t / 0.2 - 1e-9) for t in tau])
    assert torch.allclose(counts, expected, atol=1.0)


def test_schedules_replay_to_the_same_state() -> None:
    a, b = SyncSchedule([1.0, 0.5, 0.2], participation=0.5, seed=3), SyncSchedule([1.0, 0.5, 0.2], participation=0.5, seed=3)
    for n in range(7):
        a.arrivals(n)
    b.load_state_dict(a.state_dict())
    assert [x.client for x in a.arrivals(7)] == [x.client for x in b.arrivals(7)] and a.time == b.time


def test_dirichlet_partition_uses_every_index_once_is_seeded_and_skews_with_small_alpha() -> None:
    labels = torch.arange(1000) % 10
    parts = dirichlet_partition(labels, 20, alpha=0.1, seed=5)
    assert sorted(torch.cat(parts).tolist()) == list(range(1000))
    assert all(torch.equal(p, q) for p, q in zip(parts, dirichlet_partition(labels, 20, alpha=0.1, seed=5)))

    def mean_classes(ps):  # distinct classes per client
        return sum(len(labels[p].unique()) for p in ps) / len(ps)

    assert mean_classes(parts) < 5 < mean_classes(dirichlet_partition(labels, 20, alpha=100.0, seed=5))
    q = label_correlated_participation(labels, parts, 0.1, 0.8)
    assert float(q.min()) == pytest.approx(0.1) and float(q.max()) == pytest.approx(0.8)


class _FedAvgDigits(FederatedModule):
    def __init__(self, rounds: int = 6, steps_per_call: int = 2, seed: int = 0, loss: str = "cross_entropy", importance: str = "ratio") -> None:
        super().__init__()
        self.save_hyperparameters()
        self.init_global_model()

    def build_model(self) -> nn.Module:
        return build_backbone("mlp", 10, input_dim=64)

    def build_schedule(self, num_clients: int):
        return SyncSchedule(client_times(num_clients, 50), participation=0.6, seed=self.hparams.seed)

    def build_strategy(self):
        return FedAvg()

    def build_client(self):
        return LocalSGD(lr=0.05, batch_size=16, local_steps=3)

    def step_metrics(self, record, params):
        return {"arrivals": len(record.arrivals)}


def _trainer(tmp_path, **kw) -> Trainer:
    return Trainer(max_epochs=-1, logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path, **kw)


def test_federated_module_resumes_the_same_run(tmp_path) -> None:
    def dm():
        return PartitionedDataModule(DigitsDataModule(), num_clients=8, alpha=0.5, seed=0)

    full = _FedAvgDigits()
    _trainer(tmp_path / "a", enable_checkpointing=False).fit(full, dm())
    half = _FedAvgDigits(rounds=2)
    trainer = _trainer(tmp_path / "b", enable_checkpointing=False)
    trainer.fit(half, dm())
    trainer.save_checkpoint(tmp_path / "half.ckpt")
    resumed = _FedAvgDigits()
    _trainer(tmp_path / "c", enable_checkpointing=False).fit(resumed, dm(), ckpt_path=tmp_path / "half.ckpt")
    assert torch.equal(full.global_params, resumed.global_params)
    assert full.trace == resumed.trace and len(full.trace["step"]) == 6
    metrics = _trainer(tmp_path / "d").test(resumed, dm(), verbose=False)[0]
    assert 0.0 <= metrics["test/acc"] <= 1.0 and "test/worst_class_acc" in metrics


def test_federated_module_refuses_a_datamodule_without_clients(tmp_path) -> None:
    with pytest.raises(RuntimeError, match="client_data"):
        _trainer(tmp_path, enable_checkpointing=False).fit(_FedAvgDigits(), DigitsDataModule())
