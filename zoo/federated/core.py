"""The federated core: client data, a model as one flat vector, local SGD batched over clients, strategies.

Every federated entry (``fedfix``, ``afl``, ``admm-fl``) is three plain objects that two engines run:

- a :class:`Schedule` (in :mod:`zoo.federated.clock`): for server step ``n``, which clients return and
  from which global-model version each one started (the virtual clock; it never looks at parameters);
- a client program (:class:`LocalSGD` here, or an entry's own): what a client computes from the model
  it received and its own data, returned as one flat update per client;
- a :class:`Strategy`: how the server turns those updates into the next global model.

The in-process simulator (:class:`zoo.federated.simulator.Simulator`) runs them with every client of a
step computed as one batched tensor; the Flower engine (:mod:`zoo.federated.flower`) runs the same
objects with a ServerApp and Lightning ClientApps. Both draw each client's mini-batches from
:func:`batch_indices`, keyed by ``(seed, client, step, version)``, so they compute the same numbers.

>>> import torch
>>> from torch import nn
>>> model = FunctionalModel(nn.Linear(3, 1), loss="half_mse")
>>> model.num_params
4
>>> data = ClientData.from_tensors([torch.randn(5, 3), torch.randn(7, 3)], [torch.randn(5), torch.randn(7)])
>>> data.num_clients, data.counts.tolist()
(2, [5, 7])
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

__all__ = [
    "LOSSES",
    "Arrival",
    "ClientData",
    "FedAvg",
    "FunctionalModel",
    "LocalSGD",
    "Strategy",
    "batch_indices",
    "local_sgd",
]


def _half_mse(out: Tensor, y: Tensor) -> Tensor:
    return 0.5 * (out.reshape(y.shape) - y).pow(2).mean()


def _mse(out: Tensor, y: Tensor) -> Tensor:
    return (out.reshape(y.shape) - y).pow(2).mean()


LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "cross_entropy": F.cross_entropy,
    "mse": _mse,
    "half_mse": _half_mse,  # 1/2 mean squared error: its gradient is X^T (X w - y) / B
}


@dataclass(frozen=True)
class Arrival:
    """One client's return at a server step: who, from which global version, with what instructions.

    ``step`` is the server step at which the update is aggregated and ``version`` the index of the
    global model the client started from (``version <= step``; the difference is its staleness).
    ``config`` carries per-return instructions, e.g. ``{"local_steps": 7}`` when the client chose K.
    """

    client: int
    version: int
    step: int
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def staleness(self) -> int:
        return self.step - self.version


@dataclass
class ClientData:
    """Every client's examples as padded tensors: ``x (C, N_max, ...)``, ``y (C, N_max)``, ``counts (C,)``.

    Padding keeps many clients' mini-batches one gather (:func:`local_sgd`); rows past ``counts[i]``
    are never sampled.
    """

    x: Tensor
    y: Tensor
    counts: Tensor

    @classmethod
    def from_tensors(cls, xs: Sequence[Tensor], ys: Sequence[Tensor]) -> ClientData:
        """Pad per-client ``x_i (n_i, ...)`` and ``y_i (n_i,)`` into one :class:`ClientData`."""
        if len(xs) != len(ys) or not xs:
            raise ValueError(f"need one y per x and at least one client, got {len(xs)} x and {len(ys)} y")
        counts = torch.tensor([len(x) for x in xs])
        if bool((counts == 0).any()) or any(len(x) != len(y) for x, y in zip(xs, ys, strict=True)):
            raise ValueError(f"every client needs at least one example and as many labels as inputs; counts {counts.tolist()}")
        n_max = int(counts.max())
        x = xs[0].new_zeros((len(xs), n_max, *xs[0].shape[1:]))
        y = ys[0].new_zeros((len(ys), n_max, *ys[0].shape[1:]))
        for i, (xi, yi) in enumerate(zip(xs, ys, strict=True)):
            x[i, : len(xi)] = xi
            y[i, : len(yi)] = yi
        return cls(x, y, counts)

    @property
    def num_clients(self) -> int:
        return int(self.counts.numel())

    def client(self, i: int) -> tuple[Tensor, Tensor]:
        """Client ``i``'s own examples, unpadded."""
        n = int(self.counts[i])
        return self.x[i, :n], self.y[i, :n]

    def importance(self, kind: str = "uniform") -> Tensor:
        """Client importances ``p_i`` of the global objective ``sum_i p_i L_i``: uniform or ``ratio`` (``n_i / n``)."""
        if kind == "uniform":
            return torch.full((self.num_clients,), 1.0 / self.num_clients, dtype=torch.float64)
        if kind == "ratio":
            return self.counts.double() / self.counts.sum()
        raise ValueError(f"unknown importance {kind!r}: use 'uniform' or 'ratio'")


class FunctionalModel:
    """A small ``nn.Module`` seen as one flat parameter vector, so many clients' copies train as one tensor.

    ``grads(params (G, P), x (G, B, ...), y (G, B))`` is ``vmap(grad(loss))``: every client's
    gradient in one call. Modules with buffers (BatchNorm) are refused: their running statistics
    would not be part of the flat vector the server aggregates.
    """

    def __init__(self, module: nn.Module, loss: str = "cross_entropy") -> None:
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}: choose one of {sorted(LOSSES)}")
        if any(True for _ in module.buffers()):
            raise ValueError(f"{type(module).__name__} has buffers (e.g. BatchNorm): federated models here are parameters only")
        self.module = module
        self.loss_name = loss
        self.loss_fn = LOSSES[loss]
        params = list(module.named_parameters())
        self.names = [name for name, _ in params]
        self.shapes = [p.shape for _, p in params]
        self.sizes = [p.numel() for _, p in params]

    @property
    def num_params(self) -> int:
        return sum(self.sizes)

    def flatten(self) -> Tensor:
        """The module's current parameters as one detached vector."""
        return torch.cat([p.detach().reshape(-1) for p in self.module.parameters()])

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        """Split a flat vector into the module's named parameter shapes (views, no copy)."""
        if flat.shape[-1] != self.num_params:
            raise ValueError(f"flat parameters have {flat.shape[-1]} entries, the model has {self.num_params}")
        chunks = flat.split(self.sizes, dim=-1)
        return {name: chunk.reshape(shape) for name, chunk, shape in zip(self.names, chunks, self.shapes, strict=True)}

    def load(self, flat: Tensor) -> None:
        """Copy a flat vector into the module's parameters."""
        with torch.no_grad():
            for p, chunk in zip(self.module.parameters(), flat.split(self.sizes), strict=True):
                p.copy_(chunk.reshape(p.shape))

    def forward(self, flat: Tensor, x: Tensor) -> Tensor:
        return functional_call(self.module, self.unflatten(flat), (x,))

    def loss(self, flat: Tensor, x: Tensor, y: Tensor) -> Tensor:
        return self.loss_fn(self.forward(flat, x), y)

    def grads(self, params: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """Per-client gradients ``(G, P)`` of the mean loss on each client's batch ``x[g], y[g]``."""
        return vmap(grad(self.loss))(params, x, y)


def _seed_of(*keys: int) -> int:
    digest = hashlib.blake2b(",".join(str(int(k)) for k in keys).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def batch_indices(seed: int, arrival: Arrival, count: int, steps: int, batch_size: int) -> Tensor:
    """The ``(steps, batch_size)`` example indices (with replacement) of one client's local run.

    Keyed by ``(seed, client, step, version)``, so the simulator and a Flower client draw the same
    mini-batches for the same return, whatever order the engine computes returns in.
    """
    generator = torch.Generator().manual_seed(_seed_of(seed, arrival.client, arrival.step, arrival.version))
    return torch.randint(count, (steps, batch_size), generator=generator)


def local_sgd(
    model: FunctionalModel,
    sent: Tensor,
    data: ClientData,
    arrivals: Sequence[Arrival],
    steps: Sequence[int],
    lr: float,
    batch_size: int,
    seed: int,
) -> Tensor:
    """Run each returning client's ``K_g`` local SGD steps from the model it was sent, all clients at once.

    ``sent (G, P)`` holds the global version each client started from; returns the local models
    ``theta_g^{K_g} (G, P)``. Client ``g`` takes ``x <- x - lr * grad L_g(x; batch_k)`` for
    ``k < K_g`` and then stays put while clients with more steps finish.
    """
    if len(arrivals) == 0:
        return sent.clone()
    kmax = max(steps)
    clients = torch.tensor([a.client for a in arrivals])
    idx = torch.zeros(len(arrivals), kmax, batch_size, dtype=torch.long)
    for g, (arrival, k) in enumerate(zip(arrivals, steps, strict=True)):
        if k > 0:
            idx[g, :k] = batch_indices(seed, arrival, int(data.counts[arrival.client]), k, batch_size)
    active = torch.arange(kmax)[None, :] < torch.tensor(list(steps))[:, None]  # (G, kmax)
    w = sent.clone()
    rows = clients[:, None].expand(-1, batch_size)
    for k in range(kmax):
        xb, yb = data.x[rows, idx[:, k]], data.y[rows, idx[:, k]]
        step = lr * model.grads(w, xb, yb)
        w = w - torch.where(active[:, k, None], step, torch.zeros_like(step))
    return w


class LocalSGD:
    """The usual client: ``K`` local SGD steps from the received model; returns the delta ``theta^K - theta_sent``.

    ``local_steps`` is the default K; an arrival's ``config["local_steps"]`` overrides it (anarchic
    clients choose their own). The client keeps no state between returns.
    """

    def __init__(self, lr: float = 0.01, batch_size: int = 32, local_steps: int = 10) -> None:
        if lr <= 0 or batch_size < 1 or local_steps < 1:
            raise ValueError(f"need lr > 0, batch_size >= 1 and local_steps >= 1; got {lr}, {batch_size}, {local_steps}")
        self.lr, self.batch_size, self.local_steps = lr, batch_size, local_steps

    def steps_of(self, arrival: Arrival) -> int:
        return int(arrival.config.get("local_steps", self.local_steps))

    def run(self, model: FunctionalModel, sent: Tensor, data: ClientData, arrivals: Sequence[Arrival], seed: int) -> Tensor:
        """Deltas ``(G, P)`` of the returning clients, each from the version it was sent."""
        steps = [self.steps_of(a) for a in arrivals]
        return local_sgd(model, sent, data, arrivals, steps, self.lr, self.batch_size, seed) - sent

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state


class Strategy:
    """The server: ``theta <- theta + eta_g * sum_{i in S_n} d_i * update_i`` with weights from :meth:`weights`.

    This one rule is the general scheme of Fraboni, Vidal, Kameni and Lorenzi (JMLR 2023): synchronous
    FedAvg, asynchronous FedAvg, FedBuff and FedFix differ only in who returns (the schedule) and in
    ``d_i``. Subclasses override :meth:`weights`, or :meth:`aggregate` for another server rule
    (a memory of every client's last update, a dual variable). ``start`` is called once with the
    initial model, the number of clients and their importances ``p``.
    """

    def __init__(self, server_lr: float = 1.0) -> None:
        if server_lr <= 0:
            raise ValueError(f"server_lr must be > 0, got {server_lr}")
        self.server_lr = server_lr
        self.p: Tensor | None = None

    def start(self, params: Tensor, num_clients: int, p: Tensor) -> None:
        if p.shape != (num_clients,):
            raise ValueError(f"need one importance per client ({num_clients}), got shape {tuple(p.shape)}")
        self.p = p.double()

    def weights(self, arrivals: Sequence[Arrival], step: int) -> Tensor:
        """``d_i`` for each arrival (float64, shape ``(G,)``)."""
        raise NotImplementedError(f"{type(self).__name__} must implement weights(arrivals, step)")

    def aggregate(self, params: Tensor, arrivals: Sequence[Arrival], updates: Tensor, step: int) -> Tensor:
        """The next global model from the current one and the returning clients' updates ``(G, P)``."""
        if len(arrivals) == 0:
            return params
        d = self.weights(arrivals, step).to(updates.dtype)
        return params + self.server_lr * (d[:, None] * updates).sum(0)

    def state_dict(self) -> dict[str, Any]:
        """Server state beyond the global model (a memory, counters) for checkpoints."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state


class FedAvg(Strategy):
    """FedAvg (McMahan et al., 2017): ``d_i = p_i / sum_{j in S_n} p_j``, the importance-weighted mean of the deltas.

    With full participation ``d_i = p_i``; with a sampled subset the weights are renormalised over it.
    """

    def weights(self, arrivals: Sequence[Arrival], step: int) -> Tensor:
        assert self.p is not None, "call start() first"
        p = self.p[[a.client for a in arrivals]]
        return p / p.sum()
