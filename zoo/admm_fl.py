"""Noise-robust, resource-efficient ADMM-based federated learning of a weighted least-squares model.

Paper: Lari, Arablouei, Gogineni, Werner, "Noise-Robust and Resource-Efficient ADMM-based Federated
Learning", arXiv 2409.13451 (v1, Sep 2024). No official code has been released.

``K`` clients each hold ``(X_k, y_k, W_k)``; together they solve ``min_w sum_k ||y_k - X_k w||^2_{W_k}``
as consensus ADMM (``w_k = z`` for all k) with random scheduling (client k joins a round with
probability ``p``) over noisy links: a selected client receives ``z_hat = z + v`` (downlink noise) and
the server receives its upload plus ``u`` (uplink noise). The paper's two changes to standard ADMM:
(i) the dual variable is eliminated and replaced by a new local update, so that a participating
client combines a single fresh noisy global model per round; (ii) clients that are not selected keep
updating their local model with the last global model they received ("idle updates").

Where the paper is silent to us (its full text, update equations and simulation parameters could not
be obtained; only its abstract and a third-party summary of its standard recursion), this file
implements:

- standard ADMM as that summary gives it (dual ``lam += rho (w_k - z_hat)``, primal
  ``w_k = (R_k + rho I)^-1 (r_k - lam + rho z_hat)``, upload ``w_k + lam / rho``, server mean over
  every client's last upload);
- the dual-free recursion derived by substituting the primal optimality condition into the dual
  step: ``w_k = (R_k + rho I)^-1 [R_k w_k + rho (2 z_hat - z_hat_prev)]`` with ``z_hat_prev`` the
  global the client received at its previous participation, upload ``z_hat + (r_k - R_k w_k) / rho``
  (the implied dual). This is algebraically the same algorithm as standard ADMM, noise included,
  which the tests check; that it is the paper's own update is a guess;
- idle updates as the same local step with the last received global used again (no
  communication). They are applied lazily: a client catches up the idle steps it missed when it is
  next selected, which gives the same uploads as updating every round and keeps the program
  computable one client at a time;
- FedAvg with ``local_steps`` full-batch gradient steps on the client's WLS loss as the baseline.

Guesses: noise variances are equal on both links (``noise_var``); ``z^0 = 0``, each client starts
from ``w_k = (R_k + rho I)^-1 r_k`` with zero dual (so its implied dual is consistent) and the
server's memory of uploads starts at zero; client weights enter as whitened rows
(``sqrt(W_k) X_k``, ``sqrt(W_k) y_k``, see :class:`zoo.datamodules.FederatedWLSDataModule`).
Noise is drawn per (seed, client, round, link), so two variants run with the same seed see the
same noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from zoo.federated import Arrival, ClientData, FedAvg, FunctionalModel, Strategy, SyncSchedule, client_times
from zoo.federated.core import _seed_of
from zoo.federated.simulator import StepRecord
from zoo.templates.federated import FederatedModule

__all__ = [
    "VARIANTS",
    "ADMMClients",
    "ADMMFLModule",
    "ConsensusServer",
    "admm_dual_step",
    "admm_primal_step",
    "admm_upload",
    "dual_free_step",
    "dual_free_upload",
    "factor",
    "local_gd",
    "nmsd_db",
    "pooled_wls",
    "wls_stats",
]

VARIANTS = ("standard", "dual_free", "fedavg")


# ---------------------------------------------------------------------------------------------- maths
def wls_stats(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """``R_k = X_k^T W_k X_k`` and ``r_k = X_k^T W_k y_k`` from whitened rows ``sqrt(W) X``, ``sqrt(W) y`` (batched)."""
    return x.transpose(-1, -2) @ x, (x.transpose(-1, -2) @ y.unsqueeze(-1)).squeeze(-1)


def pooled_wls(R: Tensor, r: Tensor) -> Tensor:
    """The WLS optimum of the pooled data, ``w* = (sum_k R_k)^-1 sum_k r_k`` (the normal equations)."""
    return torch.linalg.solve(R.sum(0), r.sum(0))


def factor(R: Tensor, rho: float) -> Tensor:
    """Cholesky factors of ``R_k + rho I``, computed once and reused by every local solve."""
    eye = torch.eye(R.shape[-1], dtype=R.dtype, device=R.device)
    return torch.linalg.cholesky(R + rho * eye)


def _solve(chol: Tensor, b: Tensor) -> Tensor:
    return torch.cholesky_solve(b.unsqueeze(-1), chol).squeeze(-1)


def admm_dual_step(lam: Tensor, w: Tensor, z_hat: Tensor, rho: float) -> Tensor:
    """Standard ADMM dual ascent ``lam_k <- lam_k + rho (w_k - z_hat)`` (the paper's ``z_k`` update)."""
    return lam + rho * (w - z_hat)


def admm_primal_step(chol: Tensor, r: Tensor, lam: Tensor, z_hat: Tensor, rho: float) -> Tensor:
    """Standard ADMM local solve ``w_k = (R_k + rho I)^-1 (r_k - lam_k + rho z_hat)``."""
    return _solve(chol, r - lam + rho * z_hat)


def admm_upload(w: Tensor, lam: Tensor, rho: float) -> Tensor:
    """What a client sends in standard ADMM: ``w_k + lam_k / rho`` (the server averages these)."""
    return w + lam / rho


def dual_free_step(chol: Tensor, R: Tensor, w: Tensor, z_hat: Tensor, z_prev: Tensor, rho: float) -> Tensor:
    """Dual-free local update ``w_k = (R_k + rho I)^-1 [R_k w_k + rho (2 z_hat - z_prev)]``.

    Substituting the primal optimality condition of the previous solve,
    ``lam_k = r_k - R_k w_k - rho (w_k - z_prev)``, into the dual and primal steps removes ``lam_k``.
    """
    return _solve(chol, (R @ w.unsqueeze(-1)).squeeze(-1) + rho * (2.0 * z_hat - z_prev))


def dual_free_upload(R: Tensor, r: Tensor, w: Tensor, z_hat: Tensor, rho: float) -> Tensor:
    """The dual-free upload ``z_hat + (r_k - R_k w_k) / rho``, i.e. ``w_k + lam_hat_k / rho`` with the implied dual."""
    return z_hat + (r - (R @ w.unsqueeze(-1)).squeeze(-1)) / rho


def local_gd(R: Tensor, r: Tensor, w: Tensor, lr: float, steps: int) -> Tensor:
    """FedAvg's local work: ``steps`` full-batch gradient steps ``w <- w - lr (R_k w - r_k)`` on the WLS loss."""
    for _ in range(steps):
        w = w - lr * ((R @ w.unsqueeze(-1)).squeeze(-1) - r)
    return w


def nmsd_db(z: Tensor, w_star: Tensor) -> float:
    """Normalised mean-square deviation ``10 log10(||z - w*||^2 / ||w*||^2)`` in dB."""
    ratio = float((z - w_star).pow(2).sum() / w_star.pow(2).sum())
    return 10.0 * math.log10(max(ratio, 1e-300))


def _noise(seed: int, client: int, step: int, link: int, dim: int, std: float, like: Tensor) -> Tensor:
    """Link noise of one client in one round, keyed by (seed, client, round, link) so every engine draws the same."""
    generator = torch.Generator().manual_seed(_seed_of(seed, client, step, link))
    return std * torch.randn(dim, generator=generator, dtype=torch.float64).to(like)


# ---------------------------------------------------------------------------------------------- program
class ADMMClients:
    """The clients' program: per-client local models, duals and last received globals, updated by ``run``.

    ``run`` returns each returning client's upload as the server receives it (``uplink noise``
    included): ``w_k + lam_k / rho`` for ADMM (both forms), the delta ``w_k + u - z`` for FedAvg.
    State (``w``, ``lam``, ``z_prev`` as ``(K, L)`` and ``last`` as ``(K,)``, the round each client last
    updated) goes through ``state_dict``. ``R_k``, ``r_k`` and their factors are recomputed from the data.
    """

    def __init__(
        self,
        variant: str = "dual_free",
        rho: float = 1.0,
        noise_var: float = 0.0,
        idle_updates: bool = False,
        local_lr: float = 0.01,
        local_steps: int = 5,
    ) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}: choose one of {VARIANTS}")
        if rho <= 0 or noise_var < 0 or local_lr <= 0 or local_steps < 1:
            raise ValueError(f"need rho > 0, noise_var >= 0, local_lr > 0, local_steps >= 1; got {rho}, {noise_var}, {local_lr}, {local_steps}")
        if idle_updates and variant == "fedavg":
            raise ValueError("idle_updates applies to the ADMM variants ('standard', 'dual_free'), not 'fedavg'")
        self.variant, self.rho, self.noise_var, self.idle_updates = variant, rho, noise_var, idle_updates
        self.local_lr, self.local_steps = local_lr, local_steps
        self.state: dict[str, Tensor] | None = None
        self._cache: tuple[Tensor, Tensor, Tensor] | None = None

    def _stats(self, data: ClientData) -> tuple[Tensor, Tensor, Tensor]:
        if self._cache is None:
            R, r = wls_stats(data.x.double(), data.y.double())  # padded rows are zero, they add nothing
            self._cache = (R, r, factor(R, self.rho))
        return self._cache

    def _init_state(self, data: ClientData) -> dict[str, Tensor]:
        R, r, chol = self._stats(data)
        K, L = r.shape
        zeros = r.new_zeros((K, L))
        w = zeros.clone() if self.variant == "fedavg" else admm_primal_step(chol, r, zeros, zeros, self.rho)  # lam = 0, z^0 = 0
        return {"w": w, "lam": zeros.clone(), "z_prev": zeros.clone(), "last": torch.full((K,), -1, dtype=torch.long)}

    def _received(self, sent: Tensor, arrivals: Sequence[Arrival], seed: int, link: int) -> Tensor:
        if self.noise_var == 0:
            return torch.zeros_like(sent)
        std = math.sqrt(self.noise_var)
        return torch.stack([_noise(seed, a.client, a.step, link, sent.shape[-1], std, sent) for a in arrivals])

    def _catch_up(self, clients: Tensor, steps: Tensor) -> None:
        """Idle updates the clients missed: the local step with their last received global, ``steps[g]`` times."""
        assert self.state is not None and self._cache is not None
        R, r, chol = (t[clients] for t in self._cache)
        w, lam, z_last = self.state["w"][clients], self.state["lam"][clients], self.state["z_prev"][clients]
        for k in range(int(steps.max()) if len(steps) else 0):
            active = (k < steps)[:, None]
            if self.variant == "standard":
                lam_new = admm_dual_step(lam, w, z_last, self.rho)
                w_new = admm_primal_step(chol, r, lam_new, z_last, self.rho)
                lam = torch.where(active, lam_new, lam)
            else:  # z_hat = z_prev = the last received global
                w_new = dual_free_step(chol, R, w, z_last, z_last, self.rho)
            w = torch.where(active, w_new, w)
        self.state["w"][clients], self.state["lam"][clients] = w, lam

    def run(self, model: FunctionalModel, sent: Tensor, data: ClientData, arrivals: list[Arrival], seed: int) -> Tensor:
        """Uploads ``(G, L)`` of the returning clients (as received by the server) after their local update."""
        del model
        if self.state is None:
            self.state = self._init_state(data)
        R_all, r_all, chol_all = self._stats(data)
        sent = sent.double()
        clients = torch.tensor([a.client for a in arrivals], dtype=torch.long)
        steps = torch.tensor([a.step for a in arrivals], dtype=torch.long)
        if self.idle_updates:
            first = self.state["last"][clients] < 0  # before its first participation a client has no global yet
            self._catch_up(clients, torch.where(first, 0, steps - self.state["last"][clients] - 1))
        R, r, chol = R_all[clients], r_all[clients], chol_all[clients]
        z_hat = sent + self._received(sent, arrivals, seed, link=0)  # downlink: one noisy reception per round
        w, lam, z_prev = self.state["w"][clients], self.state["lam"][clients], self.state["z_prev"][clients]
        if self.variant == "standard":
            lam = admm_dual_step(lam, w, z_hat, self.rho)
            w = admm_primal_step(chol, r, lam, z_hat, self.rho)
            upload = admm_upload(w, lam, self.rho)
        elif self.variant == "dual_free":
            w = dual_free_step(chol, R, w, z_hat, z_prev, self.rho)
            upload = dual_free_upload(R, r, w, z_hat, self.rho)
        else:
            w = local_gd(R, r, z_hat, self.local_lr, self.local_steps)
            upload = w
        self.state["w"][clients], self.state["lam"][clients], self.state["z_prev"][clients] = w, lam, z_hat
        self.state["last"][clients] = steps
        received = upload + self._received(sent, arrivals, seed, link=1)  # uplink noise
        return received - sent if self.variant == "fedavg" else received

    def state_dict(self) -> dict[str, Any]:
        return {} if self.state is None else {k: v.clone() for k, v in self.state.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = {k: v.clone() for k, v in state.items()} if state else None


class ConsensusServer(Strategy):
    """The ADMM server: keep every client's last upload and set ``z = (1/K) sum_k upload_k`` over all K clients.

    With random scheduling the duals no longer sum to zero, so the mean must include the clients that
    did not return this round (their last upload), not only the current ones.
    """

    def __init__(self) -> None:
        super().__init__()
        self.memory: Tensor | None = None

    def start(self, params: Tensor, num_clients: int, p: Tensor) -> None:
        super().start(params, num_clients, p)
        if self.memory is None:
            self.memory = params.new_zeros((num_clients, params.numel()))

    def aggregate(self, params: Tensor, arrivals: Sequence[Arrival], updates: Tensor, step: int) -> Tensor:
        assert self.memory is not None, "call start() first"
        if len(arrivals):
            self.memory[[a.client for a in arrivals]] = updates.to(self.memory)
        return self.memory.mean(0)

    def state_dict(self) -> dict[str, Any]:
        return {} if self.memory is None else {"memory": self.memory.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.memory = state["memory"].clone()


# ---------------------------------------------------------------------------------------------- module
class ADMMFLModule(FederatedModule):
    """ADMM-based FL of a linear WLS model on the virtual clock; traces NMSD to the pooled WLS optimum per round.

    Args:
        variant: ``"dual_free"`` (the paper's), ``"standard"`` ADMM or ``"fedavg"`` (local GD).
        rho: the ADMM penalty. participation: each client's probability of joining a round.
        noise_var: variance of the additive Gaussian noise on both links (per entry).
        idle_updates: clients not selected keep updating with the last global they received.
        local_lr / local_steps: FedAvg's local gradient descent.
        dim: the model's input dimension ``L``.
        report_rounds: rounds whose NMSD is logged at test as ``test/nmsd_db_round_<n>``.
        steady_fraction: the last fraction of rounds averaged into ``test/nmsd_ss_db``.
    """

    def __init__(
        self,
        variant: str = "dual_free",
        rho: float = 1.0,
        participation: float = 0.3,
        noise_var: float = 1e-3,
        idle_updates: bool = False,
        local_lr: float = 0.01,
        local_steps: int = 5,
        dim: int = 10,
        report_rounds: list[int] | None = None,
        steady_fraction: float = 0.25,
        rounds: int = 1000,
        steps_per_call: int = 250,
        seed: int = 0,
        loss: str = "half_mse",
        importance: str = "uniform",
    ) -> None:
        super().__init__()
        if not 0.0 < participation <= 1.0 or not 0.0 < steady_fraction <= 1.0:
            raise ValueError(f"need participation and steady_fraction in (0, 1], got {participation}, {steady_fraction}")
        ADMMClients(variant, rho, noise_var, idle_updates, local_lr, local_steps)  # validates the rest
        self.save_hyperparameters()
        self.init_global_model()
        self.global_params.data.zero_()  # z^0 = 0
        self.w_star: Tensor | None = None

    def build_model(self) -> nn.Module:
        return nn.Linear(int(self.hparams["dim"]), 1, bias=False, dtype=torch.float64)

    def build_schedule(self, num_clients: int) -> SyncSchedule:
        return SyncSchedule(client_times(num_clients), participation=float(self.hparams["participation"]), seed=int(self.hparams["seed"]))

    def build_strategy(self) -> Strategy:
        return FedAvg() if self.hparams["variant"] == "fedavg" else ConsensusServer()

    def build_client(self) -> ADMMClients:
        hp = self.hparams
        return ADMMClients(hp["variant"], hp["rho"], hp["noise_var"], hp["idle_updates"], hp["local_lr"], hp["local_steps"])

    def on_train_start(self) -> None:
        data = self.client_data()
        self.w_star = pooled_wls(*wls_stats(data.x.double(), data.y.double()))
        super().on_train_start()

    def step_metrics(self, record: StepRecord, params: Tensor) -> dict[str, float]:
        assert self.w_star is not None
        return {"nmsd_db": nmsd_db(params, self.w_star), "arrivals": float(len(record.arrivals))}

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        trace = self.trace.get("nmsd_db")
        if not trace:
            return
        values = torch.tensor(trace, dtype=torch.float64)
        tail = values[-max(1, int(round(len(values) * float(self.hparams["steady_fraction"])))) :]
        logs = {"test/nmsd_db": values[-1], "test/nmsd_ss_db": 10.0 * torch.log10(torch.pow(10.0, tail / 10.0).mean())}
        for n in self.hparams["report_rounds"] or []:
            if 1 <= int(n) <= len(values):
                logs[f"test/nmsd_db_round_{int(n)}"] = values[int(n) - 1]
        self.log_dict(logs)
