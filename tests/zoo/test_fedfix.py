"""FedFix and its siblings against hand-computed weights, brute-force schedule counts, closed forms and measured fixed points."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from torch import nn

from zoo.datamodules import FederatedRegressionDataModule
from zoo.federated import Arrival, ClientData, FedAvg, FunctionalModel, LocalSGD, Simulator, SyncSchedule, client_times
from zoo.fedfix import (
    FedFixModule,
    FedFixStrategy,
    LeastSquaresSGD,
    aggregation_weights,
    build_schedule,
    least_squares_optimum,
    return_frequency,
    surrogate_importance,
    time_to_error,
    trajectory_metrics,
    window_stats,
)

torch.set_num_threads(1)

P = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
TAU = torch.tensor([1.0, 0.5, 0.25], dtype=torch.float64)


def test_aggregation_weights_match_hand_computed_values() -> None:
    def weights(scheme: str, kind: str, **kw) -> list[float]:
        return aggregation_weights(scheme, kind, P, TAU, **kw).tolist()

    assert weights("sync", "weight") == pytest.approx([0.5, 0.3, 0.2])
    assert weights("async", "identical") == pytest.approx([1.0, 1.0, 1.0])
    # p_i tau_i sum_j 1/tau_j with sum_j 1/tau_j = 1 + 2 + 4 = 7
    assert weights("async", "weight") == pytest.approx([3.5, 1.05, 0.35])
    assert weights("fedbuff", "identical", buffer=2) == pytest.approx([0.5, 0.5, 0.5])
    f = torch.tensor([0.25, 0.5, 1.0], dtype=torch.float64)
    assert weights("fedbuff", "weight", frequency=f) == pytest.approx([2.0, 0.6, 0.2])
    # ceil(1/0.3) = 4, ceil(0.5/0.3) = 2, ceil(0.25/0.3) = 1
    assert weights("fedfix", "weight", interval=0.3) == pytest.approx([2.0, 0.6, 0.2])
    # an exact multiple is not rounded up: ceil(0.5/0.25) = 2, ceil(0.25/0.25) = 1
    assert weights("fedfix", "weight", interval=0.25) == pytest.approx([2.0, 0.6, 0.2])
    with pytest.raises(ValueError, match="frequency"):
        weights("fedbuff", "weight")
    with pytest.raises(ValueError, match="scheme"):
        weights("fedsgd", "weight")


def _counted_frequency(scheme: str, tau: list[float], horizon: float, **kw) -> torch.Tensor:
    """Brute force: replay the schedule and count each client's returns per server step."""
    schedule = build_schedule(scheme, tau, **kw)
    counts, steps = torch.zeros(len(tau), dtype=torch.float64), 0
    while True:
        arrivals = schedule.arrivals(steps)
        if schedule.time > horizon:
            return counts / steps
        steps += 1
        for a in arrivals:
            counts[a.client] += 1


@pytest.mark.parametrize(("scheme", "kw"), [("sync", {}), ("async", {}), ("fedfix", {"interval": 0.2}), ("fedfix", {"interval": 0.5})])
def test_return_frequency_closed_forms_match_counting_the_schedule(scheme: str, kw: dict) -> None:
    tau = client_times(10, 90)
    closed = return_frequency(scheme, tau, horizon=400.0, **kw)
    assert torch.allclose(closed, _counted_frequency(scheme, tau, 400.0, **kw), atol=0.003)


def test_weighted_schemes_are_unbiased_and_identical_async_follows_client_speed() -> None:
    tau = client_times(10, 90)
    p = torch.full((10,), 0.1, dtype=torch.float64)
    for scheme, kw in [("sync", {}), ("async", {}), ("fedbuff", {"buffer": 3}), ("fedfix", {"interval": 0.2}), ("fedfix", {"interval": 0.5})]:
        f = return_frequency(scheme, tau, horizon=200.0, **kw)
        d = aggregation_weights(scheme, "weight", p, torch.tensor(tau, dtype=torch.float64), frequency=f, **kw)
        assert torch.allclose(surrogate_importance(d, f), p), scheme  # q = p: the surrogate is the true objective
    f = return_frequency("async", tau)
    q = surrogate_importance(aggregation_weights("async", "identical", p, torch.tensor(tau, dtype=torch.float64)), f)
    inv = torch.tensor([1 / t for t in tau], dtype=torch.float64)
    assert torch.allclose(q, inv / inv.sum())  # q_i proportional to 1 / tau_i (official P_surr of Async)


def _regression(num: int = 4, dim: int = 3, rows: int = 60, seed: int = 0) -> ClientData:
    dm = FederatedRegressionDataModule(num_clients=num, num_features=dim, samples_per_client=rows, seed=seed)
    dm.setup("fit")
    return dm.client_data()


def test_least_squares_optimum_matches_numpy_lstsq_on_weighted_rows() -> None:
    data = _regression(rows=40)
    q = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    rows, targets = [], []
    for i in range(4):
        x, y = (t.double().numpy() for t in data.client(i))
        scale = math.sqrt(float(q[i]) / len(x))  # sum_i q_i / n_i ||X_i theta - y_i||^2
        rows.append(scale * x)
        targets.append(scale * y)
    expected = np.linalg.lstsq(np.concatenate(rows), np.concatenate(targets), rcond=None)[0]
    assert np.allclose(least_squares_optimum(data, q).numpy(), expected, atol=1e-10)


def test_datamodule_clients_have_optimum_i_times_one_and_exposes_theta_star() -> None:
    dm = FederatedRegressionDataModule(num_clients=3, num_features=2, samples_per_client=500, noise=0.1, seed=1)
    dm.setup("fit")
    data = dm.client_data()
    for i in range(3):
        onehot = torch.zeros(3, dtype=torch.float64)
        onehot[i] = 1.0
        assert torch.allclose(least_squares_optimum(data, onehot), torch.full((2,), float(i), dtype=torch.float64), atol=0.02)
    assert torch.allclose(dm.optimum(), torch.full((2,), 1.0, dtype=torch.float64), atol=0.1)  # finite-sample covariances differ
    assert torch.equal(dm.optimum(), least_squares_optimum(data, torch.full((3,), 1 / 3, dtype=torch.float64)))


def test_closed_form_client_equals_autograd_local_sgd() -> None:
    data = _regression()
    model = FunctionalModel(nn.Linear(3, 1, bias=False), loss="half_mse")
    sent = torch.randn(3, 3, generator=torch.Generator().manual_seed(0))
    arrivals = [Arrival(0, 2, 5), Arrival(3, 4, 5), Arrival(1, 0, 5, {"local_steps": 3})]
    fast = LeastSquaresSGD(lr=0.05, batch_size=8, local_steps=6).run(model, sent, data, arrivals, seed=3)
    slow = LocalSGD(lr=0.05, batch_size=8, local_steps=6).run(model, sent, data, arrivals, seed=3)
    assert torch.allclose(fast, slow, atol=1e-5) and fast.abs().max() > 0.01


def test_strategy_step_is_the_official_aggregation_loop() -> None:
    strategy = FedFixStrategy("fedfix", "weight", spread=90.0, interval=0.2, server_lr=0.7)
    p = torch.full((10,), 0.1, dtype=torch.float64)
    params = torch.randn(4, dtype=torch.float64)
    strategy.start(params, 10, p)
    arrivals = [Arrival(0, 0, 4), Arrival(7, 3, 4), Arrival(9, 4, 4)]
    updates = torch.randn(3, 4, dtype=torch.float64)
    expected = params.clone()
    for a, u in zip(arrivals, updates):  # new += lr_g * d_i * (received - sent), d_i = p_i ceil(tau_i / dt)
        expected += 0.7 * 0.1 * math.ceil(round(1 - 0.1 * a.client, 9) / 0.2) * u
    assert torch.allclose(strategy.aggregate(params, arrivals, updates, 4), expected)


def test_window_stats_and_time_to_error_by_hand() -> None:
    times = torch.tensor([0.0, 1.0, 3.0, 4.0])
    values = torch.tensor([10.0, 2.0, 4.0, 6.0])
    # window [2, 5]: 2 holds on [2, 3), 4 on [3, 4), 6 on [4, 5] -> mean 4, std sqrt(8/3)
    mean, std = window_stats(times, values, 2.0, 5.0)
    assert float(mean) == pytest.approx(4.0) and float(std) == pytest.approx(math.sqrt(8 / 3))
    mean, _ = window_stats(times, torch.stack([values, -values], 1), 0.0, 2.0)  # 10 on [0, 1), 2 on [1, 2)
    assert mean.tolist() == pytest.approx([6.0, -6.0])
    assert time_to_error(times, values, 4.0) == 1.0 and time_to_error(times, values, 1.0) == math.inf


def test_trajectory_metrics_ignore_steps_past_the_horizon_and_report_never_as_inf() -> None:
    times = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0], dtype=torch.float64)
    thetas = torch.tensor([[0.0], [5.0], [8.0], [9.0], [11.0], [9.0], [10.0]], dtype=torch.float64)
    errors = (thetas[:, 0] - 10).abs()
    m = trajectory_metrics(times, errors, thetas, torch.tensor([10.0]), horizon=5.0, window=0.4)
    # window [3, 5]: theta 9 on [3, 4), 11 on [4, 5), 9 at 5 (zero length) -> mean 10
    assert m["bias"] == pytest.approx(0.0) and m["err_std"] == pytest.approx(0.0) and m["err_final"] == 1.0
    assert m["t10"] == 3.0 and m["t2"] == math.inf and m["t1"] == math.inf


def _simulate(scheme: str, weights: str, horizon: float, data: ClientData, **kw) -> tuple[torch.Tensor, FedFixStrategy]:
    tau = client_times(data.num_clients, 75)
    strategy = FedFixStrategy(scheme, weights, spread=75, horizon=horizon, **kw)
    params: list[tuple[float, torch.Tensor]] = []
    sim = Simulator(
        FunctionalModel(nn.Linear(data.x.shape[-1], 1, bias=False), loss="half_mse"),
        data,
        strategy,
        build_schedule(scheme, tau, **kw),
        LeastSquaresSGD(lr=0.005, batch_size=16, local_steps=5),
        params=torch.zeros(data.x.shape[-1]),
        on_step=lambda record, p: params.append((record.time, p.double())),
    )
    while sim.time <= horizon:
        sim.step()
    times = torch.tensor([0.0] + [t for t, _ in params], dtype=torch.float64)
    thetas = torch.stack([torch.zeros(data.x.shape[-1], dtype=torch.float64)] + [p for _, p in params])
    mean, _ = window_stats(times[times <= horizon], thetas[times <= horizon], 0.5 * horizon, horizon)
    return mean, strategy


def test_async_identical_settles_at_the_predicted_surrogate_optimum_and_fedfix_at_theta_star() -> None:
    data = _regression(num=4, dim=3, rows=100)
    theta_star = least_squares_optimum(data, torch.full((4,), 0.25, dtype=torch.float64))
    mean, strategy = _simulate("async", "identical", 60.0, data)
    predicted = least_squares_optimum(data, strategy.q)
    gap = float((predicted - theta_star).norm())
    assert gap > 0.5  # q_i ~ 1/tau_i pulls towards the fast clients' optima
    assert float((mean - predicted).norm()) < 0.1 * gap
    mean, strategy = _simulate("fedfix", "weight", 60.0, data, interval=0.3)
    assert torch.allclose(strategy.q, torch.full((4,), 0.25, dtype=torch.float64))
    assert float((mean - theta_star).norm()) < 0.05 * gap


def _trainer(tmp_path, **kw) -> Trainer:
    return Trainer(max_epochs=-1, logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path, **kw)


def _dm() -> FederatedRegressionDataModule:
    return FederatedRegressionDataModule(num_clients=4, num_features=3, samples_per_client=50, seed=2)


def test_sync_scheme_is_exactly_the_core_fedavg_path(tmp_path) -> None:
    module = FedFixModule(scheme="sync", client="autograd", horizon=6.0, num_features=3, lr=0.02, local_steps=4, batch_size=8, steps_per_call=4, seed=5)
    _trainer(tmp_path, enable_checkpointing=False).fit(module, _dm())
    dm = _dm()
    dm.setup("fit")
    sim = Simulator(
        FunctionalModel(nn.Linear(3, 1, bias=False), loss="half_mse"),
        dm.client_data(),
        FedAvg(),
        SyncSchedule(client_times(4, 90), participation=1.0, seed=5),
        LocalSGD(lr=0.02, batch_size=8, local_steps=4),
        params=torch.zeros(3),
        seed=5,
    )
    sim.run(6)
    assert module.simulator.steps_done == 6 and torch.equal(module.global_params.data, sim.params)


def test_module_stops_at_the_horizon_logs_the_claim_metrics_and_resumes(tmp_path) -> None:
    def module(**kw) -> FedFixModule:
        return FedFixModule(scheme="fedfix", interval=0.3, horizon=12.0, num_features=3, lr=0.02, local_steps=5, batch_size=16, steps_per_call=7, **kw)

    full = module()
    _trainer(tmp_path / "a", enable_checkpointing=False).fit(full, _dm())
    assert full.simulator.steps_done == 40 and full.trace["time"][-1] == pytest.approx(12.0)
    half = module(rounds=14)
    trainer = _trainer(tmp_path / "b", enable_checkpointing=False)
    trainer.fit(half, _dm())
    trainer.save_checkpoint(tmp_path / "half.ckpt")
    resumed = module()
    _trainer(tmp_path / "c", enable_checkpointing=False).fit(resumed, _dm(), ckpt_path=tmp_path / "half.ckpt")
    assert torch.equal(full.global_params, resumed.global_params) and full.trace == resumed.trace
    metrics = _trainer(tmp_path / "d").test(resumed, _dm(), verbose=False)[0]
    assert {"test/loss", "test/bias", "test/err_std", "test/t10", "test/t2", "test/t1", "test/surrogate_gap"} <= set(metrics)
    assert metrics["test/surrogate_gap"] == pytest.approx(0.0, abs=1e-9)
    assert metrics["test/t10"] < metrics["test/t2"] <= metrics["test/t1"] and metrics["test/bias"] < 0.1


def test_module_refuses_unknown_schemes_and_mismatched_features(tmp_path) -> None:
    with pytest.raises(ValueError, match="scheme"):
        FedFixModule(scheme="fedsgd")
    with pytest.raises(ValueError, match="num_features"):
        _trainer(tmp_path, enable_checkpointing=False).fit(FedFixModule(num_features=5, horizon=1.0), _dm())
