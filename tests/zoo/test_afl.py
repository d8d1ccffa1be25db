"""AFA-CD / AFA-CS against naive loops and hand-computed cases; the anarchic schedule; the mixture data; resume."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer
from torch import nn

from zoo.afl import (
    AFACDStrategy,
    AFACSStrategy,
    AFLModule,
    AnarchicSchedule,
    FedAvgAnarchyStrategy,
    afa_cd_update,
    afa_cs_update,
    anarchic_participation,
    averaged_gradient,
    correlated_k_band,
    first_arrivals,
)
from zoo.datamodules import FederatedMixtureDataModule
from zoo.federated import Arrival, ClientData, FunctionalModel, LocalSGD, Simulator, batch_indices

torch.set_num_threads(1)


def _clients(num: int = 6, seed: int = 0) -> ClientData:
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(12, 4, generator=g) for _ in range(num)]
    return ClientData.from_tensors(xs, [torch.randint(3, (12,), generator=g) for _ in xs])


def test_averaged_gradient_is_the_mean_of_the_k_local_stochastic_gradients() -> None:
    data = _clients()
    model = FunctionalModel(nn.Linear(4, 3))
    x0 = model.flatten()
    arrival = Arrival(2, 0, 0, {"local_steps": 4})
    delta = LocalSGD(lr=0.2, batch_size=5).run(model, x0[None], data, [arrival], seed=3)
    x, y = data.client(2)
    w, grads = x0.clone(), []
    for rows in batch_indices(3, arrival, len(x), 4, 5):  # the same mini-batches, plain loop
        leaf = w.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(model.loss(leaf, x[rows], y[rows]), leaf)
        grads.append(g)
        w = w - 0.2 * g
    expected = torch.stack(grads).mean(0)
    assert torch.allclose(averaged_gradient(delta, torch.tensor([4]), 0.2)[0], expected, atol=1e-5)


def test_afa_cd_and_fedavg_anarchy_updates_by_hand() -> None:
    x = torch.tensor([1.0, 0.0])
    deltas = torch.tensor([[2.0, 4.0], [-1.0, 3.0]])
    steps = torch.tensor([2, 1])
    # AFA-CD: x + eta * mean(Delta_i / K_i) = [1, 0] + 3 * mean([1, 2], [-1, 3]) = [1, 7.5]
    assert torch.allclose(afa_cd_update(x, deltas, steps, 3.0), torch.tensor([1.0, 7.5]))
    # FedAvg under anarchy ignores K: [1, 0] + 3 * [0.5, 3.5]
    strategy = FedAvgAnarchyStrategy(3.0)
    strategy.start(x, 2, torch.full((2,), 0.5))
    arrivals = [Arrival(0, 0, 0, {"local_steps": 2}), Arrival(1, 0, 0, {"local_steps": 1})]
    assert torch.allclose(strategy.aggregate(x, arrivals, deltas, 0), torch.tensor([2.5, 10.5]))
    cd = AFACDStrategy(3.0)
    cd.start(x, 2, torch.full((2,), 0.5))
    assert torch.allclose(cd.aggregate(x, arrivals, deltas, 0), torch.tensor([1.0, 7.5]))


def test_afa_cs_averages_all_m_slots_against_a_dict_memory_loop() -> None:
    g = torch.Generator().manual_seed(1)
    num, dim, eta = 5, 3, 2.0
    x = torch.zeros(dim)
    strategy = AFACSStrategy(eta)
    strategy.start(x, num, torch.full((num,), 1 / num))
    memory: dict[int, torch.Tensor] = {}
    ref = x.clone()
    for step in range(8):
        clients = torch.randperm(num, generator=g)[:2].tolist()
        ks = torch.randint(1, 6, (2,), generator=g).tolist()
        deltas = torch.randn(2, dim, generator=g)
        arrivals = [Arrival(c, step, step, {"local_steps": k}) for c, k in zip(clients, ks)]
        x = strategy.aggregate(x, arrivals, deltas, step)
        for c, k, d in zip(clients, ks, deltas):
            memory[c] = d / k
        ref = ref + eta * sum(memory.values()) / num  # absent workers count as zero slots
        assert torch.allclose(x, ref, atol=1e-6)
    # one hand case: M = 4, worker 1 reports Delta = [2] after K = 2: x += eta * (1 / 4) * 1
    new, mem = afa_cs_update(torch.zeros(1), torch.zeros(4, 1), torch.tensor([1]), torch.tensor([[2.0]]), torch.tensor([2]), 1.0)
    assert float(new) == pytest.approx(0.25) and mem[:, 0].tolist() == [0.0, 1.0, 0.0, 0.0]


def test_afa_cd_at_eta_k_equals_fedavg_when_every_worker_runs_the_same_k() -> None:
    data, model = _clients(), FunctionalModel(nn.Linear(4, 3))
    q, bands = [0.3, 0.5, 0.7, 0.9, 0.4, 0.6], [(4, 4)] * 6

    def run(strategy):
        sim = Simulator(model, data, strategy, AnarchicSchedule(q, 3, 2, bands, seed=5), LocalSGD(0.1, 4), params=model.flatten(), seed=2)
        sim.run(20)
        return sim.params

    assert torch.allclose(run(AFACDStrategy(8.0)), run(FedAvgAnarchyStrategy(2.0)), atol=1e-5)


def test_participation_and_correlated_k_bands() -> None:
    q = anarchic_participation(torch.arange(5))
    assert q.tolist() == pytest.approx([0.05, 0.2625, 0.475, 0.6875, 0.9])
    assert [correlated_k_band(g, 5, 10) for g in range(5)] == [(1, 3), (1, 3), (4, 7), (8, 10), (8, 10)]


def test_first_arrivals_matches_the_exact_probability_of_the_race() -> None:
    # two workers, m = 1, q = (0.5, 1): worker 0 is first only if visited first (1/2) and present (1/2)
    g = torch.Generator().manual_seed(0)
    q = torch.tensor([0.5, 1.0], dtype=torch.float64)
    picks = [first_arrivals(q, 1, g)[0] for _ in range(4000)]
    assert sum(p == 0 for p in picks) / 4000 == pytest.approx(0.25, abs=0.025)
    many = [first_arrivals(torch.full((6,), 0.3, dtype=torch.float64), 4, g) for _ in range(50)]
    assert all(len(set(a)) == 4 for a in many)


def test_anarchic_schedule_delays_k_bands_frequencies_and_replay() -> None:
    q = [0.05, 0.05, 0.9, 0.9]
    bands = [(1, 3), (1, 3), (8, 10), (8, 10)]
    s = AnarchicSchedule(q, m=2, max_delay=3, k_bands=bands, seed=4)
    counts, staleness = torch.zeros(4), set()
    for n in range(400):
        for a in s.arrivals(n):
            counts[a.client] += 1
            staleness.add(a.staleness)
            assert a.version == max(0, n - a.staleness) and a.version in set(range(max(0, n - 3), n + 1))
            lo, hi = bands[a.client]
            assert lo <= a.config["local_steps"] <= hi
    assert staleness == {0, 1, 2, 3}
    assert counts[2:].sum() > 5 * counts[:2].sum()  # frequent workers dominate the reports
    other = AnarchicSchedule(q, m=2, max_delay=3, k_bands=bands, seed=4)
    other.load_state_dict(s.state_dict())
    assert s.arrivals(400) == other.arrivals(400)


def test_mixture_workers_hold_their_group_classes_and_the_test_set_is_balanced() -> None:
    dm = FederatedMixtureDataModule(num_clients=20, samples_per_client=50, test_per_class=30, seed=3)
    dm.setup("fit")
    data = dm.client_data()
    for i in range(20):
        assert sorted(data.client(i)[1].unique().tolist()) == [2 * (i // 4), 2 * (i // 4) + 1]
    y_test = dm.test_set.tensors[1]
    assert torch.bincount(y_test).tolist() == [30] * 10
    again = FederatedMixtureDataModule(num_clients=20, samples_per_client=50, test_per_class=30, seed=3)
    again.setup("fit")
    assert torch.equal(again.client_data().x, data.x)
    with pytest.raises(ValueError, match="multiple"):
        FederatedMixtureDataModule(num_clients=7)


def _trainer(tmp_path) -> Trainer:
    return Trainer(max_epochs=-1, logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)


def _dm() -> FederatedMixtureDataModule:
    return FederatedMixtureDataModule(samples_per_client=40, test_per_class=20, seed=1)


def test_afa_cs_module_resumes_with_its_memory_and_logs_rare_accuracy_and_grad_norm(tmp_path) -> None:
    kw = {"algorithm": "afa_cs", "k_mode": "correlated", "steps_per_call": 3, "k_max": 4}
    full = AFLModule(rounds=12, **kw)
    _trainer(tmp_path / "a").fit(full, _dm())
    half = AFLModule(rounds=6, **kw)
    trainer = _trainer(tmp_path / "b")
    trainer.fit(half, _dm())
    trainer.save_checkpoint(tmp_path / "half.ckpt")
    ckpt = torch.load(tmp_path / "half.ckpt", weights_only=True)
    assert ckpt["federated"]["simulator"]["strategy"]["memory"].abs().sum() > 0
    resumed = AFLModule(rounds=12, **kw)
    _trainer(tmp_path / "c").fit(resumed, _dm(), ckpt_path=tmp_path / "half.ckpt")
    assert torch.equal(full.global_params, resumed.global_params)
    dm = _dm()
    metrics = _trainer(tmp_path / "d").test(resumed, dm, verbose=False)[0]
    # ||grad L|| against an independent autograd on the pooled data (equal worker sizes: uniform = pooled mean)
    net = nn.Linear(20, 10)
    FunctionalModel(net).load(resumed.global_params.detach())
    data = dm.client_data()
    nn.functional.cross_entropy(net(data.x.flatten(0, 1)), data.y.flatten()).backward()
    ref = torch.cat([p.grad.reshape(-1) for p in net.parameters()]).norm()
    assert metrics["test/grad_norm"] == pytest.approx(float(ref), rel=1e-4)
    assert metrics["test/rare_acc"] == pytest.approx((metrics["test/acc_class0"] + metrics["test/acc_class1"]) / 2, abs=1e-6)


def test_module_refuses_unknown_algorithm() -> None:
    with pytest.raises(ValueError, match="algorithm"):
        AFLModule(algorithm="fedbuff")
