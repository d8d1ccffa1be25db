"""admm-fl: the local solves, standard ADMM against a naive loop, the dual-free recursion, lazy idle updates, the module."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from torch import nn

from zoo.admm_fl import (
    ADMMClients,
    ADMMFLModule,
    ConsensusServer,
    admm_primal_step,
    factor,
    local_gd,
    nmsd_db,
    pooled_wls,
    wls_stats,
)
from zoo.datamodules import FederatedWLSDataModule
from zoo.federated import Arrival, FunctionalModel, Simulator, SyncSchedule, client_times


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _dm(num_clients: int = 8, seed: int = 0) -> FederatedWLSDataModule:
    dm = FederatedWLSDataModule(num_clients=num_clients, dim=4, rows=6, seed=seed)
    dm.setup("fit")
    return dm


def _simulate(dm, variant, rounds, participation=1.0, noise_var=0.0, idle=False, seed=0):
    """Run the program on the simulator; returns the global models after each round and the arrivals."""
    data = dm.client_data()
    zs, arrivals = [], []

    def on_step(record, params):
        zs.append(params.clone())
        arrivals.append([a.client for a in record.arrivals])

    sim = Simulator(
        FunctionalModel(nn.Linear(4, 1, bias=False, dtype=torch.float64), loss="half_mse"),
        data,
        ConsensusServer(),
        SyncSchedule(client_times(data.num_clients), participation, seed=seed),
        ADMMClients(variant, rho=1.0, noise_var=noise_var, idle_updates=idle),
        params=torch.zeros(4, dtype=torch.float64),
        seed=seed,
        on_step=on_step,
    )
    sim.run(rounds)
    return torch.stack(zs), arrivals


def _raw(dm):
    """Unwhitened X_k, y_k and the weights, as numpy (the datamodule stores sqrt(W) X and sqrt(W) y)."""
    root = dm.weights.sqrt().numpy()
    return dm.client_data().x.numpy() / root[..., None], dm.client_data().y.numpy() / root, dm.weights.numpy()


def test_pooled_wls_is_the_weighted_least_squares_solution() -> None:
    dm = _dm()
    x, y, w = _raw(dm)
    X, Y, W = x.reshape(-1, 4), y.reshape(-1), np.diag(w.reshape(-1))
    expected = np.linalg.solve(X.T @ W @ X, X.T @ W @ Y)
    data = dm.client_data()
    got = pooled_wls(*wls_stats(data.x, data.y))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)
    np.testing.assert_allclose(dm.optimum().numpy(), expected, rtol=1e-10)
    np.testing.assert_allclose(X.T @ W @ (Y - X @ expected), 0.0, atol=1e-9)  # the weighted gradient vanishes


def test_cached_cholesky_solve_equals_a_dense_solve() -> None:
    data = _dm().client_data()
    R, r = wls_stats(data.x, data.y)
    lam, z = torch.randn(8, 4, dtype=torch.float64), torch.randn(8, 4, dtype=torch.float64)
    got = admm_primal_step(factor(R, 0.7), r, lam, z, 0.7)
    for k in range(8):
        expected = np.linalg.solve(R[k].numpy() + 0.7 * np.eye(4), (r[k] - lam[k] + 0.7 * z[k]).numpy())
        np.testing.assert_allclose(got[k].numpy(), expected, rtol=1e-10)


def test_local_gd_matches_its_closed_form() -> None:
    data = _dm().client_data()
    R, r = wls_stats(data.x, data.y)
    w0 = torch.randn(8, 4, dtype=torch.float64)
    got = local_gd(R, r, w0, lr=0.01, steps=7)
    for k in range(8):
        opt = np.linalg.solve(R[k].numpy(), r[k].numpy())
        step = np.linalg.matrix_power(np.eye(4) - 0.01 * R[k].numpy(), 7)
        np.testing.assert_allclose(got[k].numpy(), opt + step @ (w0[k].numpy() - opt), rtol=1e-9)


def test_standard_admm_equals_a_naive_loop_with_random_scheduling() -> None:
    dm = _dm()
    zs, arrivals = _simulate(dm, "standard", rounds=25, participation=0.5)
    x, y, wts = _raw(dm)
    K, rho = 8, 1.0
    R = [x[k].T @ np.diag(wts[k]) @ x[k] for k in range(K)]
    r = [x[k].T @ np.diag(wts[k]) @ y[k] for k in range(K)]
    w = [np.linalg.solve(R[k] + rho * np.eye(4), r[k]) for k in range(K)]  # lam = 0, z^0 = 0
    lam = [np.zeros(4) for _ in range(K)]
    memory = np.zeros((K, 4))
    z = np.zeros(4)
    for n in range(25):
        for k in arrivals[n]:
            lam[k] = lam[k] + rho * (w[k] - z)
            w[k] = np.linalg.solve(R[k] + rho * np.eye(4), r[k] - lam[k] + rho * z)
            memory[k] = w[k] + lam[k] / rho
        z = memory.mean(0)
        np.testing.assert_allclose(zs[n].numpy(), z, rtol=1e-9, atol=1e-12)
    assert 0 < sum(map(len, arrivals)) < 25 * K


def test_dual_free_recursion_equals_standard_admm_under_the_same_noise() -> None:
    dm = _dm()
    for idle in (False, True):
        standard, arr_s = _simulate(dm, "standard", rounds=60, participation=0.4, noise_var=1e-3, idle=idle)
        free, arr_f = _simulate(dm, "dual_free", rounds=60, participation=0.4, noise_var=1e-3, idle=idle)
        assert arr_s == arr_f
        torch.testing.assert_close(free, standard, rtol=1e-9, atol=1e-11)
    noise_free, _ = _simulate(dm, "standard", rounds=60, participation=0.4)
    assert (standard - noise_free).abs().max() > 1e-3  # the noise is really there


def test_lazy_idle_updates_equal_updating_every_round() -> None:
    dm = _dm()
    zs, arrivals = _simulate(dm, "standard", rounds=30, participation=0.3, idle=True)
    x, y, wts = _raw(dm)
    K, rho = 8, 1.0
    R = [x[k].T @ np.diag(wts[k]) @ x[k] for k in range(K)]
    r = [x[k].T @ np.diag(wts[k]) @ y[k] for k in range(K)]
    w = [np.linalg.solve(R[k] + rho * np.eye(4), r[k]) for k in range(K)]
    lam = [np.zeros(4) for _ in range(K)]
    last = [None] * K  # the last global each client received
    memory, z = np.zeros((K, 4)), np.zeros(4)
    for n in range(30):
        for k in range(K):  # eager: every client updates every round, the idle ones with their last global
            zk = z if k in arrivals[n] else last[k]
            if zk is None:
                continue
            lam[k] = lam[k] + rho * (w[k] - zk)
            w[k] = np.linalg.solve(R[k] + rho * np.eye(4), r[k] - lam[k] + rho * zk)
            if k in arrivals[n]:
                last[k] = z
                memory[k] = w[k] + lam[k] / rho
        z = memory.mean(0)
        np.testing.assert_allclose(zs[n].numpy(), z, rtol=1e-9, atol=1e-12)


def test_noise_free_admm_reaches_the_wls_optimum_and_noise_sets_a_floor() -> None:
    dm = _dm()
    clean, _ = _simulate(dm, "dual_free", rounds=300, participation=0.5)
    assert nmsd_db(clean[-1], dm.optimum()) < -100
    noisy, _ = _simulate(dm, "dual_free", rounds=300, participation=0.5, noise_var=1e-3)
    assert -70 < nmsd_db(noisy[-1], dm.optimum()) < -20


def test_one_client_at_a_time_equals_the_batched_program() -> None:
    data = _dm().client_data()
    sent = torch.randn(3, 4, dtype=torch.float64)
    batched, single = ADMMClients("dual_free", noise_var=1e-2, idle_updates=True), ADMMClients("dual_free", noise_var=1e-2, idle_updates=True)
    for step, clients in enumerate([[0, 2, 5], [1, 2, 7], [0, 5, 6]]):
        arrivals = [Arrival(c, step * 2, step * 2) for c in clients]  # gaps of one idle round
        together = batched.run(None, sent, data, arrivals, seed=3)
        apart = torch.cat([single.run(None, sent[g : g + 1], data, [a], seed=3) for g, a in enumerate(arrivals)])
        torch.testing.assert_close(apart, together, rtol=1e-12, atol=1e-14)


def test_consensus_server_averages_every_clients_last_upload() -> None:
    server = ConsensusServer()
    server.start(torch.zeros(2, dtype=torch.float64), 4, torch.full((4,), 0.25, dtype=torch.float64))
    z = server.aggregate(torch.zeros(2), [Arrival(1, 0, 0)], torch.tensor([[4.0, 8.0]]), 0)
    assert z.tolist() == [1.0, 2.0]
    z = server.aggregate(z, [Arrival(3, 1, 1)], torch.tensor([[4.0, 0.0]]), 1)
    assert z.tolist() == [2.0, 2.0]  # client 1's upload still counts


def _trainer(tmp_path, **kw) -> Trainer:
    return Trainer(max_epochs=-1, logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path, **kw)


def test_module_traces_nmsd_and_resumes_the_same_run(tmp_path) -> None:
    def dm():
        return FederatedWLSDataModule(num_clients=10, dim=5, rows=8, seed=1)

    kw = dict(dim=5, noise_var=1e-3, idle_updates=True, steps_per_call=10, report_rounds=[10, 40])
    full = ADMMFLModule(rounds=40, **kw)
    _trainer(tmp_path / "a", enable_checkpointing=False).fit(full, dm())
    half = ADMMFLModule(rounds=20, **kw)
    trainer = _trainer(tmp_path / "b", enable_checkpointing=False)
    trainer.fit(half, dm())
    trainer.save_checkpoint(tmp_path / "half.ckpt")
    resumed = ADMMFLModule(rounds=40, **kw)
    _trainer(tmp_path / "c", enable_checkpointing=False).fit(resumed, dm(), ckpt_path=tmp_path / "half.ckpt")
    assert torch.equal(full.global_params, resumed.global_params)
    assert full.trace == resumed.trace and len(full.trace["nmsd_db"]) == 40
    metrics = _trainer(tmp_path / "d").test(resumed, dm(), verbose=False)[0]
    assert metrics["test/nmsd_db_round_40"] == pytest.approx(full.trace["nmsd_db"][-1])
    tail = torch.tensor(full.trace["nmsd_db"][-10:], dtype=torch.float64)
    assert metrics["test/nmsd_ss_db"] == pytest.approx(float(10 * torch.log10((10 ** (tail / 10)).mean())))
    data = dm()
    data.setup("fit")
    assert metrics["test/nmsd_db"] == pytest.approx(nmsd_db(full.global_params.detach(), data.optimum()))


def test_bad_arguments_say_what_to_fix() -> None:
    with pytest.raises(ValueError, match="unknown variant"):
        ADMMClients("admm")
    with pytest.raises(ValueError, match="idle_updates"):
        ADMMFLModule(variant="fedavg", idle_updates=True)
