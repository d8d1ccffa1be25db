"""Anarchic Federated Learning: AFA-CD and AFA-CS (Yang, Zhang, Khanduri, Liu; ICML 2022, arXiv 2108.09875).

Official code: none public. In anarchic FL every worker decides when it participates and how many
local steps ``K_{t,i}`` it runs; the server cannot dictate either. Worker ``i`` pulls some global model
``x_{t'}`` (possibly stale, delay ``t - t' <= tau``), runs ``K_{t,i}`` local SGD steps with the local
learning rate ``eta_L`` and reports the *average of its K stochastic gradients*
``G_i = (1/K) sum_k g_i(x_k) = (x_0 - x_K) / (eta_L K)``. Two server rules with two-sided learning
rates (server ``eta``, local ``eta_L``):

- **AFA-CD** (cross-device): aggregate the first ``m`` reports, ``x_{t+1} = x_t - eta eta_L (1/m) sum_i G_i``;
- **AFA-CS** (cross-silo): keep the latest ``G_i`` of *every* one of the ``M`` workers (zero at start)
  and step along the mean of all ``M`` slots, ``x_{t+1} = x_t - eta eta_L (1/M) sum_{i=1}^M G_i``, which
  removes the bias of participation correlated with the data.

With the client returning ``Delta_i = x_K - x_0 = -eta_L K G_i``, ``-eta_L G_i = Delta_i / K`` and the
rules read ``x += eta mean(Delta_i / K_i)``: ``eta_L`` is folded into the delta. The baseline,
FedAvg under anarchy, steps along the raw deltas, ``x += eta mean(Delta_i)``, which weights each worker
by how often it shows up and by how many steps it ran.

Only the paper's abstract could be read while writing this (verified: AFA-CD for cross-device and
AFA-CS for cross-silo, two-sided learning rates). The update equations above, the averaging of the K
local gradients, the AFA-CS memory and the numbering "Algorithm 1" (AFA-CD) / "Algorithm 2" (AFA-CS)
used below are our reading of the method, not re-checked against the paper's algorithm boxes. Guesses:

- ``G_i`` averages the K stochastic gradients, and the AFA-CS memory starts at zero;
- the anarchic arrival process: each server step visits the workers in a fresh random order, each
  present with probability ``q_i``, and takes the first ``m`` present (sweeping again if fewer);
  the delay is ``U{0..max_delay}`` per report, the version ``max(0, t - delay)``; ``K`` is
  ``U{1..k_max}`` ("iid") or drawn from a band tied to the worker's group ("correlated");
- participation ``q_i = 0.05 + 0.85 g / (G - 1)`` rises with the worker's label group ``g``;
- stale reports are applied as they are (no staleness discount), as in the paper;
- synchronous FedAvg (every worker, fresh model, fixed ``K``) is the reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import grad

from zoo.federated import Arrival, ClientProgram, LocalSGD, Schedule, Strategy, SyncSchedule
from zoo.templates.federated import FederatedModule

__all__ = [
    "worker_groups",
    "AFACDStrategy",
    "AFACSStrategy",
    "AFLModule",
    "AnarchicSchedule",
    "FedAvgAnarchyStrategy",
    "afa_cd_update",
    "afa_cs_update",
    "anarchic_participation",
    "averaged_gradient",
    "correlated_k_band",
    "fedavg_anarchy_update",
    "first_arrivals",
]

ALGORITHMS = ("fedavg_anarchy", "afa_cd", "afa_cs", "sync")
K_MODES = ("iid", "correlated")


# ----------------------------------------------------------------------------- the maths
def worker_groups(num_clients: int, num_groups: int) -> Tensor:
    """Group of each worker, ``g_i = floor(i / (M / G))``: consecutive blocks of ``M / G`` workers."""
    if num_clients % num_groups:
        raise ValueError(f"num_clients ({num_clients}) must be a multiple of the number of groups ({num_groups})")
    return torch.arange(num_clients) // (num_clients // num_groups)


def averaged_gradient(delta: Tensor, steps: Tensor, local_lr: float) -> Tensor:
    """Worker report ``G_i = (x_0 - x_K) / (eta_L K)``: the mean of its ``K`` local stochastic gradients (Alg. 1, worker)."""
    return -delta / (local_lr * steps.to(delta.dtype)[:, None])


def fedavg_anarchy_update(params: Tensor, deltas: Tensor, server_lr: float) -> Tensor:
    """Baseline: ``x_{t+1} = x_t + eta (1/m) sum_i Delta_i`` over the arrived raw deltas."""
    return params + server_lr * deltas.mean(0)


def afa_cd_update(params: Tensor, deltas: Tensor, steps: Tensor, server_lr: float) -> Tensor:
    """AFA-CD server step (Alg. 1): ``x_{t+1} = x_t - eta eta_L (1/m) sum_i G_i = x_t + eta (1/m) sum_i Delta_i / K_i``."""
    return params + server_lr * (deltas / steps.to(deltas.dtype)[:, None]).mean(0)


def afa_cs_update(params: Tensor, memory: Tensor, clients: Tensor, deltas: Tensor, steps: Tensor, server_lr: float) -> tuple[Tensor, Tensor]:
    """AFA-CS server step (Alg. 2): arrivals overwrite their slot with ``Delta_i / K_i = -eta_L G_i``;
    ``x_{t+1} = x_t + eta (1/M) sum_{i=1}^M memory_i`` over all ``M`` slots, stale ones included.

    Returns the new model and the new memory (the input memory is not changed).
    """
    memory = memory.clone()
    memory[clients] = deltas / steps.to(deltas.dtype)[:, None]
    return params + server_lr * memory.mean(0), memory


def anarchic_participation(groups: Tensor, low: float = 0.05, high: float = 0.9) -> Tensor:
    """``q_i = low + (high - low) g_i / (G - 1)``: workers of the first label group join least."""
    if not 0.0 < low <= high <= 1.0:
        raise ValueError(f"need 0 < low <= high <= 1, got {low}, {high}")
    top = max(int(groups.max()), 1)
    return low + (high - low) * groups.double() / top


def correlated_k_band(group: int, num_groups: int, k_max: int = 10) -> tuple[int, int]:
    """Local steps tied to the group: lower half ``1..0.3 k_max``, middle ``..0.7 k_max``, upper half ``..k_max``.

    With ``k_max = 10`` and 5 groups: groups 0-1 run 1-3 steps, group 2 runs 4-7, groups 3-4 run 8-10
    (the frequent workers also do the most work; mean over groups 5.5 = E[U{1..10}]).
    """
    low, mid = max(1, int(0.3 * k_max)), max(1, int(0.7 * k_max))
    position = 2 * group - (num_groups - 1)  # < 0 lower half, 0 middle, > 0 upper half
    if position < 0:
        return 1, low
    if position == 0:
        return low + 1, mid
    return mid + 1, k_max


def first_arrivals(q: Tensor, m: int, generator: torch.Generator) -> list[int]:
    """The first ``m`` distinct workers to report: random visiting order, worker ``i`` present w.p. ``q_i``.

    Sweeps again over the workers not yet taken while fewer than ``m`` are present.
    """
    if not 1 <= m <= len(q) or bool((q <= 0).any()):
        raise ValueError(f"need 1 <= m <= {len(q)} and every q_i > 0, got m={m}, q={q.tolist()}")
    taken: list[int] = []
    while len(taken) < m:
        for i in torch.randperm(len(q), generator=generator).tolist():
            present = bool(torch.rand((), generator=generator, dtype=torch.float64) < q[i])
            if i not in taken and present:
                taken.append(i)
                if len(taken) == m:
                    break
    return taken


# ----------------------------------------------------------------------------- schedule and strategies
class AnarchicSchedule(Schedule):
    """Anarchic workers: each step takes the first ``m`` reports, each with its own delay and its own ``K``.

    Args:
        participation: ``q_i`` per worker.
        m: reports aggregated per server step.
        max_delay: a report started from version ``max(0, t - U{0..max_delay})``.
        k_bands: ``(low, high)`` per worker; its ``K`` is ``U{low..high}``, passed as ``config["local_steps"]``.
    """

    def __init__(self, participation: Sequence[float], m: int, max_delay: int, k_bands: Sequence[tuple[int, int]], seed: int = 0) -> None:
        self.q = torch.as_tensor(list(participation), dtype=torch.float64)
        self.k_bands = [(int(lo), int(hi)) for lo, hi in k_bands]
        if len(self.k_bands) != len(self.q) or any(not 1 <= lo <= hi for lo, hi in self.k_bands) or max_delay < 0:
            raise ValueError(f"need one band 1 <= low <= high per worker ({len(self.q)}) and max_delay >= 0; got {k_bands}, {max_delay}")
        self.m, self.max_delay = m, max_delay
        super().__init__(len(self.q), seed)

    def _next(self, step: int) -> list[Arrival]:
        out = []
        for i in first_arrivals(self.q, self.m, self.generator):
            delay = int(torch.randint(self.max_delay + 1, (), generator=self.generator))
            lo, hi = self.k_bands[i]
            k = int(torch.randint(lo, hi + 1, (), generator=self.generator))
            out.append(Arrival(i, max(0, step - delay), step, {"local_steps": k}))
        self.time = float(step + 1)
        return out

    def in_flight(self) -> set[int]:
        return set(range(max(0, self.step - self.max_delay), self.step + 1))


def _steps(arrivals: Sequence[Arrival], default: int) -> Tensor:
    return torch.tensor([int(a.config.get("local_steps", default)) for a in arrivals])


class FedAvgAnarchyStrategy(Strategy):
    """FedAvg under anarchy: the plain mean of whatever raw deltas arrived (:func:`fedavg_anarchy_update`)."""

    def aggregate(self, params: Tensor, arrivals: Sequence[Arrival], updates: Tensor, step: int) -> Tensor:
        return params if not arrivals else fedavg_anarchy_update(params, updates, self.server_lr)


class AFACDStrategy(Strategy):
    """AFA-CD (cross-device, Alg. 1): the mean of the arrived averaged gradients, two-sided rates (:func:`afa_cd_update`).

    ``server_lr`` is ``eta``; ``eta_L`` is the client's ``lr``, folded into its delta.
    """

    def __init__(self, server_lr: float = 1.0, local_steps: int = 1) -> None:
        super().__init__(server_lr)
        self.local_steps = local_steps

    def aggregate(self, params: Tensor, arrivals: Sequence[Arrival], updates: Tensor, step: int) -> Tensor:
        return params if not arrivals else afa_cd_update(params, updates, _steps(arrivals, self.local_steps), self.server_lr)


class AFACSStrategy(Strategy):
    """AFA-CS (cross-silo, Alg. 2): a memory of every worker's latest averaged gradient, zero at start (:func:`afa_cs_update`).

    The memory ``(M, P)`` is part of :meth:`state_dict`, so a resumed run continues the same server.
    """

    def __init__(self, server_lr: float = 1.0, local_steps: int = 1) -> None:
        super().__init__(server_lr)
        self.local_steps = local_steps
        self.memory: Tensor | None = None

    def start(self, params: Tensor, num_clients: int, p: Tensor) -> None:
        super().start(params, num_clients, p)
        self.memory = params.new_zeros((num_clients, params.numel()))

    def aggregate(self, params: Tensor, arrivals: Sequence[Arrival], updates: Tensor, step: int) -> Tensor:
        assert self.memory is not None, "call start() first"
        if not arrivals:
            return params
        clients = torch.tensor([a.client for a in arrivals])
        params, self.memory = afa_cs_update(params, self.memory, clients, updates, _steps(arrivals, self.local_steps), self.server_lr)
        return params

    def state_dict(self) -> dict[str, Any]:
        return {"memory": None if self.memory is None else self.memory.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.memory = None if state["memory"] is None else state["memory"].clone()


# ----------------------------------------------------------------------------- the Lightning module
class AFLModule(FederatedModule):
    """Anarchic FL on the virtual clock: AFA-CD, AFA-CS, FedAvg under anarchy, or synchronous FedAvg.

    Softmax regression (``nn.Linear(input_dim, num_classes)``) by default. Workers are split into
    ``num_classes / 2`` label groups (as :class:`~zoo.datamodules.FederatedMixtureDataModule` lays
    them out); participation rises with the group. Test logs, beside the classifier metrics,
    ``test/rare_acc`` (mean recall of the first ``rare_classes`` classes) and ``test/grad_norm``
    (``||grad L(x)||`` of the uniform global training loss ``(1/M) sum_i L_i``).

    Args:
        algorithm: ``fedavg_anarchy``, ``afa_cd``, ``afa_cs`` or ``sync`` (every worker, fresh model,
            ``sync_local_steps`` steps, raw-delta mean).
        server_lr: ``eta``. The AFA rules step along ``Delta / K``, so ``eta = E[K] c`` matches the mean
            step of FedAvg at ``eta = c``.
        k_mode: ``iid`` (``K ~ U{1..k_max}``) or ``correlated`` (:func:`correlated_k_band`).
        m / max_delay / participation_low / participation_high: the anarchic arrivals.
        local_lr / batch_size: the workers' SGD (``eta_L``, ``B``).
    """

    def __init__(
        self,
        algorithm: str = "afa_cs",
        server_lr: float = 5.5,
        k_mode: str = "iid",
        m: int = 5,
        max_delay: int = 5,
        k_max: int = 10,
        participation_low: float = 0.05,
        participation_high: float = 0.9,
        local_lr: float = 0.05,
        batch_size: int = 32,
        sync_local_steps: int = 5,
        input_dim: int = 20,
        num_classes: int = 10,
        rare_classes: int = 2,
        rounds: int = 300,
        steps_per_call: int = 50,
        seed: int = 0,
        loss: str = "cross_entropy",
        importance: str = "uniform",
    ) -> None:
        super().__init__()
        if algorithm not in ALGORITHMS or k_mode not in K_MODES:
            raise ValueError(f"algorithm must be one of {ALGORITHMS} and k_mode one of {K_MODES}; got {algorithm!r}, {k_mode!r}")
        if num_classes % 2 or not 0 < rare_classes <= num_classes:
            raise ValueError(f"need an even num_classes and 0 < rare_classes <= num_classes; got {num_classes}, {rare_classes}")
        self.save_hyperparameters()
        self.init_global_model()

    def build_model(self) -> nn.Module:
        return nn.Linear(int(self.hparams["input_dim"]), int(self.hparams["num_classes"]))

    def build_schedule(self, num_clients: int) -> Schedule:
        h = self.hparams
        if h["algorithm"] == "sync":
            return SyncSchedule([1.0] * num_clients, participation=1.0, seed=int(h["seed"]))
        num_groups = int(h["num_classes"]) // 2
        groups = worker_groups(num_clients, num_groups)
        q = anarchic_participation(groups, float(h["participation_low"]), float(h["participation_high"]))
        k_max = int(h["k_max"])
        bands = [(1, k_max) if h["k_mode"] == "iid" else correlated_k_band(g, num_groups, k_max) for g in groups.tolist()]
        return AnarchicSchedule(q.tolist(), int(h["m"]), int(h["max_delay"]), bands, seed=int(h["seed"]))

    def build_strategy(self) -> Strategy:
        algorithm, lr = self.hparams["algorithm"], float(self.hparams["server_lr"])
        if algorithm == "afa_cd":
            return AFACDStrategy(lr)
        if algorithm == "afa_cs":
            return AFACSStrategy(lr)
        return FedAvgAnarchyStrategy(lr)

    def build_client(self) -> ClientProgram:
        h = self.hparams
        return LocalSGD(lr=float(h["local_lr"]), batch_size=int(h["batch_size"]), local_steps=int(h["sync_local_steps"]))

    def global_grad_norm(self) -> float:
        """``||grad (1/M) sum_i L_i(x)||`` at the global model, over every worker's whole data."""
        data = self.trainer.datamodule.client_data()  # type: ignore[union-attr]

        def global_loss(flat: Tensor) -> Tensor:
            losses = [self.functional.loss(flat, *data.client(i)) for i in range(data.num_clients)]
            return torch.stack(losses).mean()

        return float(grad(global_loss)(self.global_params.detach()).norm())

    def on_test_epoch_end(self) -> None:
        if self._confusion is not None:
            cm = self._confusion.double()
            k = int(self.hparams["rare_classes"])
            recall = cm.diagonal()[:k] / cm[:k].sum(1).clamp_min(1)
            self.log("test/rare_acc", recall.mean().float())
        self.log("test/grad_norm", torch.tensor(self.global_grad_norm()))
        super().on_test_epoch_end()
