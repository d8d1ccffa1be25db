"""The virtual clock: which clients return at each server step, and from which global-model version.

A schedule never sees parameters: client ``i`` needs ``tau_i`` time units for its local work, and
the server steps when its rule says (every client back, ``c`` returns, a fixed interval). So a
schedule is computed ahead of the model, deterministically by seed, exactly as the official code of
Fraboni et al. builds its event lists (``clients_time_schedule``) before training. Checkpoints keep
only the step count: :meth:`Schedule.load_state_dict` replays the schedule to it.

>>> tau = client_times(4, spread=90)
>>> [round(t, 2) for t in tau]
[1.0, 0.7, 0.4, 0.1]
>>> s = AsyncSchedule(tau, buffer=1)
>>> [(a.client, a.version) for a in s.arrivals(0)], round(s.time, 2)  # the fastest client first
([(3, 0)], 0.1)
>>> s = IntervalSchedule(tau, interval=0.5)
>>> sorted(a.client for a in s.arrivals(0)), sorted(a.client for a in s.arrivals(1))
([2, 3], [0, 1, 2, 3])
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from typing import Any

import torch

from zoo.federated.core import Arrival

__all__ = ["AsyncSchedule", "IntervalSchedule", "Schedule", "SyncSchedule", "client_times"]

_EPS = 1e-9  # returns within this of a boundary count as at it (float sums of tau)


def client_times(num_clients: int, spread: float = 0.0) -> list[float]:
    """Scenario "F-X" of the official FedFix code: ``tau_i = 1 - i (X/100) / (M - 1)``, ``i = 0..M-1``.

    ``spread = X`` in percent: 0 gives equal clients, 90 a 10x gap between the slowest and fastest.
    """
    if num_clients < 1 or not 0.0 <= spread < 100.0:
        raise ValueError(f"need num_clients >= 1 and 0 <= spread < 100, got {num_clients}, {spread}")
    if num_clients == 1:
        return [1.0]
    return [1.0 - i * (spread / 100.0) / (num_clients - 1) for i in range(num_clients)]


class Schedule:
    """Base of the virtual clocks: call :meth:`arrivals` for steps ``0, 1, 2, ...`` in order.

    Subclasses implement :meth:`_next` (the arrivals of the next step, advancing ``time``) and
    :meth:`in_flight` (the versions clients are working from after the last step, so an engine
    can forget older global models).
    """

    def __init__(self, num_clients: int, seed: int = 0) -> None:
        if num_clients < 1:
            raise ValueError(f"need at least one client, got {num_clients}")
        self.num_clients = num_clients
        self.seed = seed
        self.reset()

    def reset(self) -> None:
        """Back to time 0, before step 0."""
        self.step = 0
        self.time = 0.0
        self.generator = torch.Generator().manual_seed(self.seed)
        self._reset()

    def _reset(self) -> None:
        """Subclass state at time 0."""

    def _next(self, step: int) -> list[Arrival]:
        raise NotImplementedError

    def in_flight(self) -> set[int]:
        raise NotImplementedError

    def arrivals(self, step: int) -> list[Arrival]:
        """The returns aggregated at server step ``step`` (which must be the next step)."""
        if step != self.step:
            raise ValueError(f"schedule is at step {self.step}; asked for step {step} (steps run in order; load_state_dict to jump)")
        out = self._next(step)
        self.step += 1
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replay the schedule from time 0 to ``state["step"]`` (schedules are cheap and seeded)."""
        self.reset()
        for n in range(int(state["step"])):
            self.arrivals(n)


class SyncSchedule(Schedule):
    """Synchronous rounds: each client joins round ``n`` with probability ``participation[i]``; all start from version ``n``.

    The round lasts as long as its slowest participant (``max tau_i``). ``participation`` is one
    probability for every client or one per client (e.g. correlated with the client's labels).
    """

    def __init__(self, tau: Sequence[float], participation: float | Sequence[float] = 1.0, seed: int = 0) -> None:
        self.tau = [float(t) for t in tau]
        q = [float(participation)] * len(self.tau) if isinstance(participation, (int, float)) else [float(v) for v in participation]
        if len(q) != len(self.tau) or any(not 0.0 <= v <= 1.0 for v in q):
            raise ValueError(f"participation must be one probability in [0, 1] or one per client ({len(self.tau)}), got {participation}")
        self.participation = torch.tensor(q, dtype=torch.float64)
        super().__init__(len(self.tau), seed)

    def _next(self, step: int) -> list[Arrival]:
        joined = torch.rand(self.num_clients, generator=self.generator, dtype=torch.float64) < self.participation
        clients = [i for i in range(self.num_clients) if bool(joined[i])]
        self.time += max((self.tau[i] for i in clients), default=0.0)
        return [Arrival(i, step, step) for i in clients]

    def in_flight(self) -> set[int]:
        return {self.step}


class _EventSchedule(Schedule):
    """Clients work back to back: sent version ``v`` at time ``s``, client ``i`` returns at ``s + tau_i``."""

    def __init__(self, tau: Sequence[float], seed: int = 0) -> None:
        self.tau = [float(t) for t in tau]
        if any(t <= 0 for t in self.tau):
            raise ValueError(f"client times must be > 0, got {self.tau}")
        super().__init__(len(self.tau), seed)

    def _reset(self) -> None:
        self.events = [(t, i, 0) for i, t in enumerate(self.tau)]  # (return time, client, version sent)
        heapq.heapify(self.events)

    def _resend(self, clients: Sequence[int], version: int, at: float) -> None:
        for i in clients:
            heapq.heappush(self.events, (at + self.tau[i], i, version))

    def in_flight(self) -> set[int]:
        return {version for _, _, version in self.events}


class AsyncSchedule(_EventSchedule):
    """Asynchronous FedAvg (``buffer = 1``) and FedBuff (``buffer = c``): the server steps when ``c`` clients are back.

    The clients that returned are sent the new model at once; everyone else keeps working on the
    version they hold (their staleness grows).
    """

    def __init__(self, tau: Sequence[float], buffer: int = 1, seed: int = 0) -> None:
        if not 1 <= buffer <= len(tau):
            raise ValueError(f"buffer must be between 1 and the number of clients ({len(tau)}), got {buffer}")
        self.buffer = buffer
        super().__init__(tau, seed)

    def _next(self, step: int) -> list[Arrival]:
        returned = [heapq.heappop(self.events) for _ in range(self.buffer)]
        self.time = returned[-1][0]
        self._resend([i for _, i, _ in returned], step + 1, self.time)
        return [Arrival(i, version, step) for _, i, version in returned]


class IntervalSchedule(_EventSchedule):
    """FedFix-style fixed server period: step ``n`` aggregates every client back by ``(n + 1) * interval``.

    Those clients get the new model at the boundary; a step with nobody back leaves the model as it is.
    """

    def __init__(self, tau: Sequence[float], interval: float, seed: int = 0) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be > 0, got {interval}")
        self.interval = float(interval)
        super().__init__(tau, seed)

    def _next(self, step: int) -> list[Arrival]:
        boundary = (step + 1) * self.interval
        returned = []
        while self.events and self.events[0][0] <= boundary + _EPS:
            returned.append(heapq.heappop(self.events))
        self.time = boundary
        self._resend([i for _, i, _ in returned], step + 1, boundary)
        return [Arrival(i, version, step) for _, i, version in sorted(returned, key=lambda e: e[1])]
