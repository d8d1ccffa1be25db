"""FedFix and its siblings: one aggregation rule, four client-time schemes, and the surrogate objective they minimise.

Paper: Y. Fraboni, R. Vidal, L. Kameni, M. Lorenzi, "A General Theory for Federated Optimization with
Asynchronous and Heterogeneous Clients Updates" (arXiv 2206.10189, 2022). Official code: the
``asynchronous_FL`` branch of ``Accenture/Labs-Federated-Learning``: ``FL/server.py``
(``Server.clients_importances``: the surrogate importances ``P_surr`` and aggregation weights
``agg_weights`` per scheme; ``Server.aggregation``) and ``FL/clients_schedule.py`` (``get_tau_i``,
the "F-X" client times, and ``clients_time_schedule``, the event lists of FL / Async / FedFix /
FedBuff), which :mod:`zoo.federated.clock` follows.

Every scheme is the same server step (the paper's general scheme with stochastic aggregation weights)::

    theta^{n+1} = theta^n + eta_g * sum_{i in S_n} d_i * (theta_i^K(theta^{rho_i(n)}) - theta^{rho_i(n)})

where client ``i`` started from the possibly stale version ``rho_i(n)``. They differ in who returns
(synchronous rounds, every single return, every ``c`` returns, every fixed ``Delta t``) and in
``d_i``. With ``omega_i(n) = d_i 1[i in S_n]`` the scheme minimises the surrogate
``sum_i q_i L_i`` with ``q_i`` proportional to ``E[omega_i(n)] = d_i f_i`` (``f_i``: the fraction
of server steps client ``i`` is in), and reaches the true optimum only when ``q = p``
(the paper's convergence result and its surrogate objective; section numbers not checked here). FedFix aggregates every ``Delta t``
with ``d_i = p_i ceil(tau_i / Delta t)``: client ``i`` is in one step of ``ceil(tau_i / Delta t)``,
so ``q = p`` with staleness bounded by ``ceil(tau_i / Delta t) - 1``.

Deviations and guesses:

- ``q`` is computed as ``d_i f_i`` normalised for every scheme. The official ``P_surr`` line for
  FedFix, ``ceil(tau_i/Delta t) / sum_j ceil(tau_j/Delta t)``, is not the expected weight of either
  FedFix variant; with ``d_i = p_i ceil(tau_i/Delta t)`` the expected weight is ``p_i``, so we report
  that.
- FedFix with ``weights="identical"`` has no weights in the official code; here it is ``d_i = p_i``
  (FedAvg's weight, no correction for how rarely slow clients return), which is biased towards
  fast clients as the theory predicts.
- FedBuff "weight" uses ``f_i`` measured by replaying the schedule to the horizon, as the official
  code counts it on its event list; asynchronous FedAvg uses the closed form
  ``f_i = tau_i^{-1} / sum_j tau_j^{-1}`` that its official weights assume.
- Synchronous FedAvg runs the zoo's core :class:`~zoo.federated.FedAvg` (``d_i = p_i`` with full
  participation) so both federated engines compute the same numbers.
- The client of the least-squares checks computes each local SGD step's gradient in closed form
  (:class:`LeastSquaresSGD`, equal to the autograd :class:`~zoo.federated.LocalSGD` to float
  rounding) because asynchronous runs take thousands of server steps.
- The model starts at ``theta_0 = 0`` (the starting point is not stated for the toy problem).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from zoo.federated import (
    Arrival,
    AsyncSchedule,
    ClientData,
    ClientProgram,
    FedAvg,
    FunctionalModel,
    IntervalSchedule,
    LocalSGD,
    Schedule,
    StepRecord,
    Strategy,
    SyncSchedule,
    batch_indices,
    client_times,
)
from zoo.templates.federated import FederatedModule

__all__ = [
    "SCHEMES",
    "FedFixModule",
    "FedFixStrategy",
    "LeastSquaresSGD",
    "aggregation_weights",
    "build_schedule",
    "least_squares_optimum",
    "return_frequency",
    "surrogate_importance",
    "time_to_error",
    "trajectory_metrics",
    "window_stats",
]

SCHEMES = ("sync", "async", "fedbuff", "fedfix")
WEIGHTS = ("identical", "weight")
_EPS = 1e-9  # as zoo.federated.clock: returns within this of a boundary count as at it


def _periods(tau: Tensor, interval: float) -> Tensor:
    """``ceil(tau_i / Delta t)``: FedFix server steps between two returns of client ``i`` (float-safe)."""
    return torch.tensor([math.ceil(float(t) / interval - _EPS) for t in tau], dtype=torch.float64)


# ----------------------------------------------------------------------------------- the maths
def aggregation_weights(scheme: str, weights: str, p: Tensor, tau: Tensor, interval: float = 0.2, buffer: int = 3, frequency: Tensor | None = None) -> Tensor:
    """``d_i`` of each scheme, as in the official ``Server.clients_importances``.

    - sync FedAvg: ``d_i = p_i``;
    - async: identical ``d_i = 1``; weight ``d_i = p_i tau_i sum_j 1/tau_j`` (undoes ``f_i ~ 1/tau_i``);
    - FedBuff-c: identical ``d_i = 1/c``; weight ``d_i = p_i / f_i`` (``frequency`` = ``f_i`` required);
    - FedFix-Delta t: weight ``d_i = p_i ceil(tau_i / Delta t)``; identical ``d_i = p_i`` (our guess).
    """
    p, tau = p.double(), torch.as_tensor(tau, dtype=torch.float64)
    if scheme not in SCHEMES or weights not in WEIGHTS:
        raise ValueError(f"unknown scheme {scheme!r} / weights {weights!r}: use one of {SCHEMES} and {WEIGHTS}")
    if scheme == "sync":
        return p.clone()
    if scheme == "async":
        return torch.ones_like(p) if weights == "identical" else p * tau * tau.reciprocal().sum()
    if scheme == "fedbuff":
        if weights == "identical":
            return torch.full_like(p, 1.0 / buffer)
        if frequency is None:
            raise ValueError("FedBuff 'weight' needs each client's return frequency f_i (return_frequency)")
        return p / frequency.double()
    return p.clone() if weights == "identical" else p * _periods(tau, interval)


def build_schedule(scheme: str, tau: Sequence[float], interval: float = 0.2, buffer: int = 3, seed: int = 0) -> Schedule:
    """The virtual clock of each scheme (official ``clients_time_schedule``): rounds, 1 or ``c`` returns, every ``Delta t``."""
    if scheme == "sync":
        return SyncSchedule(tau, participation=1.0, seed=seed)
    if scheme == "async":
        return AsyncSchedule(tau, buffer=1, seed=seed)
    if scheme == "fedbuff":
        return AsyncSchedule(tau, buffer=buffer, seed=seed)
    if scheme == "fedfix":
        return IntervalSchedule(tau, interval=interval, seed=seed)
    raise ValueError(f"unknown scheme {scheme!r}: use one of {SCHEMES}")


def return_frequency(scheme: str, tau: Sequence[float], interval: float = 0.2, buffer: int = 3, horizon: float = 200.0) -> Tensor:
    """``f_i``: the fraction of server steps that contain client ``i``.

    Closed forms where the clock is regular: sync 1; async ``tau_i^{-1} / sum_j tau_j^{-1}`` (client
    ``i`` returns at rate ``1/tau_i``, the server steps at the sum of the rates); FedFix
    ``1 / ceil(tau_i / Delta t)``. FedBuff is counted on its schedule up to ``horizon``, as the
    official code counts its event list.
    """
    t = torch.as_tensor(tau, dtype=torch.float64)
    if scheme == "sync":
        return torch.ones_like(t)
    if scheme == "async":
        return t.reciprocal() / t.reciprocal().sum()
    if scheme == "fedfix":
        return _periods(t, interval).reciprocal()
    schedule = build_schedule(scheme, [float(v) for v in t], interval, buffer)
    counts, steps = torch.zeros_like(t), 0
    while True:
        arrivals = schedule.arrivals(steps)
        if schedule.time > horizon + _EPS:
            break
        steps += 1
        for a in arrivals:
            counts[a.client] += 1
    if steps == 0:
        raise ValueError(f"no server step of {scheme} fits in horizon {horizon}")
    return counts / steps


def surrogate_importance(d: Tensor, frequency: Tensor) -> Tensor:
    """``q_i = d_i f_i / sum_j d_j f_j``: the importances of the surrogate ``sum_i q_i L_i`` a scheme minimises."""
    w = d.double() * frequency.double()
    return w / w.sum()


def least_squares_optimum(data: ClientData, q: Tensor) -> Tensor:
    """``argmin sum_i q_i L_i`` with ``L_i = ||X_i theta - y_i||^2 / (2 n_i)``: ``(sum q_i A_i)^{-1} sum q_i b_i`` (float64).

    ``A_i = X_i^T X_i / n_i`` and ``b_i = X_i^T y_i / n_i`` (the gradient of the weighted sum set to zero).
    """
    q = torch.as_tensor(q, dtype=torch.float64)
    if q.shape != (data.num_clients,):
        raise ValueError(f"need one weight per client ({data.num_clients}), got shape {tuple(q.shape)}")
    dim = data.x.shape[-1]
    a, b = torch.zeros(dim, dim, dtype=torch.float64), torch.zeros(dim, dtype=torch.float64)
    for i in range(data.num_clients):
        x, y = (t.double() for t in data.client(i))
        a += q[i] * x.T @ x / len(x)
        b += q[i] * x.T @ y / len(x)
    return torch.linalg.solve(a, b)


def window_stats(times: Tensor, values: Tensor, start: float, end: float) -> tuple[Tensor, Tensor]:
    """Time-weighted mean and std over ``[start, end]`` of a piecewise-constant signal.

    ``values[n]`` holds from ``times[n]`` until ``times[n + 1]`` (the last one until ``end``);
    ``times[0]`` is the start of the run. ``values`` is ``(N,)`` or ``(N, P)``.
    """
    times = times.double()
    values = values.double()
    seg_end = torch.cat([times[1:], times.new_tensor([end])]).clamp(max=end)
    overlap = (seg_end - times.clamp(min=start)).clamp(min=0.0)
    if float(overlap.sum()) <= 0:
        raise ValueError(f"no part of the run lies in the window [{start}, {end}]")
    w = (overlap / overlap.sum()).reshape(-1, *([1] * (values.dim() - 1)))
    mean = (w * values).sum(0)
    return mean, ((w * (values - mean) ** 2).sum(0)).sqrt()


def time_to_error(times: Tensor, errors: Tensor, level: float) -> float:
    """The first virtual time at which the error is ``<= level``; ``inf`` when it never is."""
    hit = (errors <= level).nonzero()
    return float(times[hit[0, 0]]) if len(hit) else math.inf


def trajectory_metrics(times: Tensor, errors: Tensor, thetas: Tensor, theta_star: Tensor, horizon: float, window: float = 0.2) -> dict[str, float]:
    """The paper's comparison on a run that starts at ``times[0] = 0`` with error ``errors[0] = e_0``.

    ``bias``: distance to ``theta*`` of the time-averaged model over the last ``window`` of the
    horizon; ``err_std``: the time-weighted std of ``||theta - theta*||`` there; ``t10``, ``t2``,
    ``t1``: first time with ``e <= x e_0`` for ``x = 0.1, 0.02, 0.01`` (``inf`` if never).
    """
    keep = times <= horizon + _EPS
    times, errors, thetas = times[keep], errors[keep], thetas[keep]
    start = (1.0 - window) * horizon
    mean_theta, _ = window_stats(times, thetas, start, horizon)
    _, err_std = window_stats(times, errors, start, horizon)
    e0 = float(errors[0])
    return {
        "bias": float((mean_theta - theta_star.double()).norm()),
        "err_std": float(err_std),
        "err_final": float(errors[-1]),
        "t10": time_to_error(times, errors, 0.1 * e0),
        "t2": time_to_error(times, errors, 0.02 * e0),
        "t1": time_to_error(times, errors, 0.01 * e0),
    }


# ----------------------------------------------------------------------------------- the server and the client
class FedFixStrategy(Strategy):
    """The general scheme's server step with ``d_i`` of ``scheme`` / ``weights`` (:func:`aggregation_weights`).

    ``start`` computes the clients' times (scenario "F-``spread``"), their return frequencies and
    ``d``; :attr:`q` is the surrogate's importances. The server keeps no state beyond them.
    """

    def __init__(
        self,
        scheme: str = "fedfix",
        weights: str = "weight",
        spread: float = 90.0,
        interval: float = 0.2,
        buffer: int = 3,
        horizon: float = 200.0,
        server_lr: float = 1.0,
    ) -> None:
        super().__init__(server_lr)
        if scheme not in SCHEMES or weights not in WEIGHTS:
            raise ValueError(f"unknown scheme {scheme!r} / weights {weights!r}: use one of {SCHEMES} and {WEIGHTS}")
        self.scheme, self.kind, self.spread, self.interval, self.buffer, self.horizon = scheme, weights, spread, interval, buffer, horizon
        self.d: Tensor | None = None
        self.q: Tensor | None = None

    def start(self, params: Tensor, num_clients: int, p: Tensor) -> None:
        super().start(params, num_clients, p)
        tau = client_times(num_clients, self.spread)
        f = return_frequency(self.scheme, tau, self.interval, self.buffer, self.horizon)
        self.d = aggregation_weights(self.scheme, self.kind, self.p, torch.tensor(tau, dtype=torch.float64), self.interval, self.buffer, f)
        self.q = surrogate_importance(self.d, f)

    def weights(self, arrivals: Sequence[Arrival], step: int) -> Tensor:
        assert self.d is not None, "call start() first"
        return self.d[[a.client for a in arrivals]]


class LeastSquaresSGD(LocalSGD):
    """:class:`~zoo.federated.LocalSGD` for a bias-free linear model under ``half_mse``, each gradient in closed form.

    Step ``k`` on batch ``(X_k, y_k)`` is ``theta <- theta - lr X_k^T (X_k theta - y_k) / B``, i.e.
    ``theta <- (I - lr A_k) theta + lr b_k``; the same batches as LocalSGD (:func:`~zoo.federated.batch_indices`).
    """

    def run(self, model: FunctionalModel, sent: Tensor, data: ClientData, arrivals: list[Arrival], seed: int) -> Tensor:
        if model.loss_name != "half_mse" or model.num_params != data.x.shape[-1]:
            raise ValueError("LeastSquaresSGD needs nn.Linear(d, 1, bias=False) with loss 'half_mse'; use client='autograd' otherwise")
        if len(arrivals) == 0:
            return torch.zeros_like(sent)
        steps = [self.steps_of(a) for a in arrivals]
        kmax = max(steps)
        idx = torch.zeros(len(arrivals), kmax, self.batch_size, dtype=torch.long)
        for g, (arrival, k) in enumerate(zip(arrivals, steps, strict=True)):
            idx[g, :k] = batch_indices(seed, arrival, int(data.counts[arrival.client]), k, self.batch_size)
        clients = torch.tensor([a.client for a in arrivals])[:, None, None]
        xb, yb = data.x[clients, idx], data.y[clients, idx]  # (G, K, B, d), (G, K, B)
        xt = xb.transpose(-1, -2)
        scale = self.lr / self.batch_size
        if min(steps) < kmax:  # clients with fewer steps stand still: identity maps past K_g
            scale = scale * (torch.arange(kmax)[None, :] < torch.tensor(steps)[:, None]).to(sent.dtype)[..., None, None]
        mats = torch.eye(sent.shape[-1], dtype=sent.dtype) - scale * (xt @ xb)  # I - lr A_k
        shifts = scale * (xt @ yb[..., None])  # lr b_k, (G, K, d, 1)
        w = sent[:, :, None]
        for k in range(kmax):
            w = torch.baddbmm(shifts[:, k], mats[:, k], w)
        return w.squeeze(-1) - sent


# ----------------------------------------------------------------------------------- the Lightning module
class FedFixModule(FederatedModule):
    """Sync FedAvg, async FedAvg, FedBuff-``buffer`` or FedFix-``interval`` on federated least squares, up to virtual time ``horizon``.

    Traces ``err = ||theta - theta*||`` and the model after every server step; test logs ``bias``,
    ``err_std``, ``err_final``, ``t10``/``t2``/``t1`` (``inf`` when never reached) and
    ``surrogate_gap = ||theta~ - theta*||``, the distance of the surrogate's optimum the theory
    predicts for this scheme.
    """

    def __init__(
        self,
        scheme: str = "fedfix",
        weights: str = "weight",
        interval: float = 0.2,
        buffer: int = 3,
        spread: float = 90.0,
        horizon: float = 200.0,
        num_features: int = 10,
        lr: float = 0.005,
        local_steps: int = 10,
        batch_size: int = 64,
        server_lr: float = 1.0,
        client: str = "closed_form",
        rounds: int = 1_000_000,
        steps_per_call: int = 250,
        seed: int = 0,
        loss: str = "half_mse",
        importance: str = "uniform",
    ) -> None:
        super().__init__()
        if scheme not in SCHEMES or weights not in WEIGHTS or client not in ("closed_form", "autograd"):
            raise ValueError(f"need scheme in {SCHEMES}, weights in {WEIGHTS}, client 'closed_form' or 'autograd'; got {scheme!r}, {weights!r}, {client!r}")
        if interval <= 0 or buffer < 1 or horizon <= 0:
            raise ValueError(f"need interval > 0, buffer >= 1 and horizon > 0; got {interval}, {buffer}, {horizon}")
        self.save_hyperparameters()
        self.init_global_model()
        self.theta_star: Tensor | None = None
        self.surrogate_gap = math.nan
        self._steps_in_horizon: int | None = None

    def build_model(self) -> nn.Module:
        model = nn.Linear(int(self.hparams["num_features"]), 1, bias=False)
        nn.init.zeros_(model.weight)  # theta_0 = 0
        return model

    def _tau(self, num_clients: int) -> list[float]:
        return client_times(num_clients, float(self.hparams["spread"]))

    def build_schedule(self, num_clients: int) -> Schedule:
        hp = self.hparams
        return build_schedule(hp["scheme"], self._tau(num_clients), float(hp["interval"]), int(hp["buffer"]), int(hp["seed"]))

    def build_strategy(self) -> Strategy:
        hp = self.hparams
        if hp["scheme"] == "sync":
            return FedAvg(float(hp["server_lr"]))  # d_i = p_i: the core's FedAvg path
        return FedFixStrategy(
            hp["scheme"], hp["weights"], float(hp["spread"]), float(hp["interval"]), int(hp["buffer"]), float(hp["horizon"]), float(hp["server_lr"])
        )

    def build_client(self) -> ClientProgram:
        hp = self.hparams
        cls = LeastSquaresSGD if hp["client"] == "closed_form" else LocalSGD
        return cls(lr=float(hp["lr"]), batch_size=int(hp["batch_size"]), local_steps=int(hp["local_steps"]))

    def total_steps(self) -> int:
        """The server steps whose virtual time is within ``horizon`` (counted on a fresh copy of the schedule), capped by ``rounds``."""
        if self._steps_in_horizon is None:
            assert self.simulator is not None
            schedule = self.build_schedule(self.simulator.data.num_clients)
            while schedule.time <= float(self.hparams["horizon"]) + _EPS:
                schedule.arrivals(schedule.step)
            self._steps_in_horizon = schedule.step - 1  # the last step went past the horizon
        return min(int(self.hparams["rounds"]), self._steps_in_horizon)

    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule
        if stage == "fit" and hasattr(datamodule, "client_data"):
            features = datamodule.client_data().x.shape[-1]
            if features != int(self.hparams["num_features"]):
                raise ValueError(f"the data has {features} features and the model num_features={self.hparams['num_features']}; make them equal")

    def on_train_start(self) -> None:
        super().on_train_start()
        sim = self.simulator
        assert sim is not None
        self.theta_star = least_squares_optimum(sim.data, sim.p)
        hp, m = self.hparams, sim.data.num_clients
        tau = self._tau(m)
        f = return_frequency(hp["scheme"], tau, float(hp["interval"]), int(hp["buffer"]), float(hp["horizon"]))
        q = surrogate_importance(
            aggregation_weights(hp["scheme"], hp["weights"], sim.p, torch.tensor(tau, dtype=torch.float64), float(hp["interval"]), int(hp["buffer"]), f), f
        )
        self.surrogate_gap = float((least_squares_optimum(sim.data, q) - self.theta_star).norm())

    def step_metrics(self, record: StepRecord, params: Tensor) -> dict[str, float]:
        assert self.theta_star is not None
        theta = params.double()
        return {"err": float((theta - self.theta_star).norm()), **{f"theta_{j}": float(v) for j, v in enumerate(theta.tolist())}}

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        if not self.trace.get("err") or self.theta_star is None:
            return  # no run on the clock in this process: only the test loss
        d = int(self.hparams["num_features"])
        theta0 = FunctionalModel(self.build_model(), loss="half_mse").flatten().double()
        times = torch.tensor([0.0, *self.trace["time"]], dtype=torch.float64)
        thetas = torch.cat([theta0[None], torch.tensor([self.trace[f"theta_{j}"] for j in range(d)], dtype=torch.float64).T])
        errors = (thetas - self.theta_star).norm(dim=1)
        metrics = trajectory_metrics(times, errors, thetas, self.theta_star, float(self.hparams["horizon"]))
        metrics["surrogate_gap"] = self.surrogate_gap
        self.log_dict({f"test/{k}": torch.tensor(v, dtype=torch.float64) for k, v in metrics.items()})
