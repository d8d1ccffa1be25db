"""Learning to relax: choosing SOR's omega online across a sequence of linear systems.

Paper: Khodak, Chow, Balcan, Talwalkar, "Learning to Relax: Setting Solver Parameters Across a
Sequence of Linear System Instances" (ICLR 2024, arXiv 2310.02246). Official code (MATLAB, MIT):
mkhodak/learning-to-relax (``learners/TsallisINF.m``, ``learners/TsallisINFCB.m``, ``solvers/sor.m``,
``solvers/omega_opt.m``, ``scripts/learning.m``), read to understand, not copied.

Each instance ``A_t x = b_t`` is solved by successive over-relaxation, ``x <- x + M_w^{-1}(b - A x)``
with ``M_w = D / w + L``, from ``x_0 = 0`` until ``||b - A x|| / ||b|| < tol``; the cost of instance
``t`` is the iteration count ``c_t(w)``. The learner only sees the count of the ``w`` it played (bandit
feedback). Tsallis-INF (1/2-Tsallis-entropy online mirror descent, Zimmert and Seldin) over a grid of
``w`` competes with the best fixed ``w`` in hindsight; the contextual variant (Tsallis-INF-CB) runs
one Tsallis-INF per bin of a scalar context (the diagonal offset ``c_t`` of ``A_t = A + c_t I``).

SOR sweeps come from ``pyamg`` (``amg_core.sor_gauss_seidel``: the in-place row-by-row SOR sweep in
C++); many systems are swept at once as one block-diagonal CSR matrix, which is the same arithmetic row
by row, so the batched counts equal the one-system counts exactly.

Deviations and guesses:

- The normaliser of the Tsallis-INF probabilities is found by Newton's method as in the official
  code, but started at ``min_i k_i / s - 2 / eta`` (where the sum of probabilities is >= 1) instead of
  ``x = -1``: from ``-1`` the first Newton step jumps past the pole ``min_i k_i / s`` once the loss
  estimates grow like ``t`` (after a few dozen rounds), and the iterates then drift away. From the
  right bracket Newton converges monotonically to the same root. Probabilities are clipped at 0 and
  renormalised; non-finite ones fall back to uniform (the official code's ``catch``).
- The running scale ``s = mean(past costs) - 1`` (official code) is replaced by 1 while it is <= 0
  (every past solve took one iteration), where the official code divides by zero.
- ChebCB (the paper's other contextual learner, Chebyshev regression with inverse-gap weighting) is not
  implemented; Tsallis-INF-CB is.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from pyamg import amg_core
from torch import Tensor

from zoo.templates.online import OnlineAlgorithm, OnlineModule

__all__ = [
    "LinearSystem",
    "sor_iterations",
    "sor_iteration_table",
    "omega_grid",
    "omega_opt",
    "tsallis_inf_normaliser",
    "tsallis_inf_probabilities",
    "tsallis_inf_update",
    "context_bin",
    "TsallisINF",
    "TsallisINFCB",
    "FixedOmega",
    "SORCostCache",
    "LearningToRelaxModule",
]

MAX_ITER = 10_000  # the official solvers/sor.m cap


class LinearSystem:
    """One instance ``A x = b`` (``A`` sparse CSR with a non-zero diagonal) with its scalar ``context``.

    A plain class, not a dataclass, so that Lightning's batch transfer passes it through untouched;
    ``key`` names it in the cost cache (its identity when empty).
    """

    __slots__ = ("A", "b", "context", "key")

    def __init__(self, A: sp.csr_matrix, b: np.ndarray, context: float = 0.0, key: tuple = ()) -> None:
        self.A, self.b, self.context, self.key = A, b, float(context), key

    def __repr__(self) -> str:
        return f"LinearSystem(n={self.A.shape[0]}, context={self.context:.4f}, key={self.key})"


# ------------------------------------------------------------------------------------------ SOR
def _sor_counts(As: Sequence[sp.csr_matrix], bs: Sequence[np.ndarray], omega: float, tol: float, max_iter: int) -> np.ndarray:
    """SOR iteration counts of many systems at one ``omega``: one block-diagonal sweep per iteration.

    Official ``solvers/sor.m``: ``x <- x + (D/w + L) \\ (b - A x)`` until ``||r|| / ||r_0|| < tol`` (x_0 = 0,
    so r_0 = b), at most ``max_iter`` sweeps (the count is ``max_iter`` when the tolerance is not met).
    The block matrix is rebuilt without the solved systems once half of its systems are solved.
    """
    counts = np.full(len(As), max_iter, dtype=np.int64)
    norm0 = np.array([np.linalg.norm(b) for b in bs])
    counts[norm0 == 0] = 0
    xs = [np.zeros(b.shape[0]) for b in bs]
    pending = [i for i in range(len(As)) if norm0[i] > 0]
    sweeps = 0
    while pending and sweeps < max_iter:
        big = sp.block_diag([As[i] for i in pending], format="csr")
        big.sort_indices()
        rhs = np.concatenate([bs[i] for i in pending])
        x = np.concatenate([xs[i] for i in pending])
        sizes = np.array([bs[i].shape[0] for i in pending])
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        live = np.ones(len(pending), dtype=bool)
        n0 = norm0[pending]
        while sweeps < max_iter and live.sum() * 2 > len(pending):
            amg_core.sor_gauss_seidel(big.indptr, big.indices, big.data, x, rhs, 0, big.shape[0], 1, omega)  # one SOR sweep
            sweeps += 1
            r = rhs - big @ x
            done = live & (np.sqrt(np.add.reduceat(r * r, starts)) / n0 < tol)
            counts[np.asarray(pending)[done]] = sweeps
            live &= ~done
        for j, i in enumerate(pending):
            xs[i] = x[starts[j] : starts[j] + sizes[j]]
        pending = [i for j, i in enumerate(pending) if live[j]]
    return counts


def sor_iterations(A: sp.spmatrix, b: np.ndarray, omega: float, tol: float = 1e-8, max_iter: int = MAX_ITER) -> int:
    """SOR iterations to reach ``||b - A x|| / ||b|| < tol`` from ``x_0 = 0`` (official ``solvers/sor.m``)."""
    if not 0 < omega < 2:
        raise ValueError(f"omega must lie in (0, 2) for SOR to converge on SPD systems, got {omega}")
    A = sp.csr_matrix(A, dtype=np.float64)
    A.sort_indices()
    return int(_sor_counts([A], [np.asarray(b, dtype=np.float64)], float(omega), tol, max_iter)[0])


def sor_iteration_table(systems: Sequence[LinearSystem], omegas: Sequence[float], tol: float = 1e-8, max_iter: int = MAX_ITER) -> np.ndarray:
    """``table[t, i] = sor_iterations(systems[t].A, systems[t].b, omegas[i])``, all systems swept at once per omega."""
    As = [sp.csr_matrix(s.A, dtype=np.float64) for s in systems]
    bs = [np.asarray(s.b, dtype=np.float64) for s in systems]
    return np.stack([_sor_counts(As, bs, float(w), tol, max_iter) for w in omegas], axis=1)


def omega_grid(low: float = 1.0, high: float = 1.95, size: int = 20) -> list[float]:
    """Equally spaced omegas (the official scripts' ``linspace(1, 1.95, 20)``)."""
    return [float(w) for w in np.linspace(low, high, size)]


def omega_opt(A: sp.spmatrix) -> float:
    """Asymptotically optimal omega for consistently ordered A: ``1 + (beta / (1 + sqrt(1 - beta^2)))^2``,
    beta the spectral radius of the Jacobi matrix ``I - D^{-1} A`` (official ``solvers/omega_opt.m``)."""
    dense = np.asarray(sp.csr_matrix(A).todense())
    beta = float(np.max(np.abs(np.linalg.eigvals(np.eye(dense.shape[0]) - dense / np.diag(dense)[:, None]))))
    return 1.0 + (beta / (1.0 + math.sqrt(max(1.0 - beta * beta, 0.0)))) ** 2


# ----------------------------------------------------------------------------------- Tsallis-INF
def tsallis_inf_normaliser(losses: Tensor, eta: float, steps: int = 20) -> float:
    """The ``x`` with ``sum_i 4 (eta (L_i - x))^{-2} = 1`` by Newton (official ``TsallisINF.m`` predict).

    Newton step ``x <- x - (sum p - 1) / (eta sum p^{3/2})`` (``dp_i/dx = eta p_i^{3/2}``), started at
    ``min L - 2 / eta`` where ``sum p >= 1``; the sum is convex and increasing left of ``min L``, so the
    iterates decrease monotonically to the root (the official start ``x = -1`` can jump past the pole).
    """
    x = float(losses.min()) - 2.0 / eta
    for _ in range(steps):
        p = 4.0 * (eta * (losses - x)).pow(-2.0)
        x = x - float((p.sum() - 1.0) / (eta * p.pow(1.5).sum()))
    return x


def tsallis_inf_probabilities(k: Tensor, scale: float, t: int) -> Tensor:
    """Arm probabilities of round ``t`` (1-based): ``p_i = 4 (eta_t (k_i / s - x))^{-2}``, ``eta_t = 2 / sqrt(t)``.

    ``k`` are the cumulative importance-weighted loss estimates, ``s`` the running cost scale. Clipped at
    0 and renormalised; uniform if not finite.
    """
    eta = 2.0 / math.sqrt(t)
    losses = k.double() / (scale if scale > 0 else 1.0)
    x = tsallis_inf_normaliser(losses, eta)
    p = (4.0 * (eta * (losses - x)).pow(-2.0)).clamp_min(0.0)
    if not torch.isfinite(p).all() or float(p.sum()) <= 0:
        return torch.full_like(losses, 1.0 / len(losses))
    return p / p.sum()


def tsallis_inf_update(k: Tensor, arm: int, prob: float, cost: float) -> None:
    """Importance-weighted estimate for the played arm only: ``k_arm += (c - 1) / p_arm`` (every solve costs >= 1)."""
    k[arm] += (cost - 1.0) / prob


def context_bin(context: float, n_bins: int, low: float, high: float) -> int:
    """Tsallis-INF-CB's bin: the nearest of ``low + (high - low) * linspace(1/2m, 1 - 1/2m, m)`` (``TsallisINFCB.m``)."""
    centres = low + (high - low) * np.linspace(0.5 / n_bins, 1.0 - 0.5 / n_bins, n_bins)
    return int(np.argmin(np.abs(centres - context)))


# ------------------------------------------------------------------------------------ algorithms
CostFn = Callable[[LinearSystem, float], float]


def _sor_cost(tol: float, max_iter: int) -> CostFn:
    return lambda system, omega: float(sor_iterations(system.A, system.b, omega, tol, max_iter))


class TsallisINF(OnlineAlgorithm):
    """Tsallis-INF over ``grid`` (the paper's non-contextual learner); serving a system solves it with SOR.

    Per context bin (one bin here, several in :class:`TsallisINFCB`) the state is ``k`` (loss estimates),
    ``rounds`` and ``cost_sum`` (for the scale ``s = mean cost - 1``), held in tensors that a module may
    register as buffers. ``history`` keeps (bin, arm, cost) of every served system, for the metrics.
    """

    def __init__(
        self, grid: Sequence[float] | None = None, cost_fn: CostFn | None = None, seed: int = 0, state: dict[str, Tensor] | None = None, n_bins: int = 1
    ) -> None:
        self.grid = [float(w) for w in (omega_grid() if grid is None else grid)]
        self.cost_fn = cost_fn or _sor_cost(1e-8, MAX_ITER)
        d = len(self.grid)
        self.state = state or {
            "k": torch.zeros(n_bins, d, dtype=torch.float64),
            "rounds": torch.zeros(n_bins, dtype=torch.float64),
            "cost_sum": torch.zeros(n_bins, dtype=torch.float64),
        }
        self.generator = torch.Generator().manual_seed(seed)
        self.history: list[tuple[int, int, float]] = []

    def bin_of(self, system: LinearSystem) -> int:
        return 0

    def probabilities(self, bin_: int = 0) -> Tensor:
        rounds, cost_sum = float(self.state["rounds"][bin_]), float(self.state["cost_sum"][bin_])
        scale = cost_sum / rounds - 1.0 if rounds > 0 else 1.0
        return tsallis_inf_probabilities(self.state["k"][bin_], scale, int(rounds) + 1)

    def serve(self, request: LinearSystem) -> float:
        bin_ = self.bin_of(request)
        p = self.probabilities(bin_)
        arm = int(torch.multinomial(p, 1, generator=self.generator))
        cost = self.cost_fn(request, self.grid[arm])
        self.state["cost_sum"][bin_] += cost
        self.state["rounds"][bin_] += 1
        tsallis_inf_update(self.state["k"][bin_], arm, float(p[arm]), cost)
        self.history.append((bin_, arm, cost))
        return cost

    def state_dict(self) -> dict[str, Any]:
        return {
            **{name: value.clone() for name, value in self.state.items()},
            "generator": self.generator.get_state(),
            "history": torch.tensor(self.history, dtype=torch.float64).reshape(-1, 3),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, value in self.state.items():
            value.copy_(state[name])  # in place: a module's buffers stay the same tensors
        self.generator.set_state(state["generator"])
        self.history = [(int(b), int(a), float(c)) for b, a, c in state["history"].tolist()]


class TsallisINFCB(TsallisINF):
    """Tsallis-INF-CB: one Tsallis-INF per bin of the context (``TsallisINFCB.m``, m = 5 bins over [-0.15, 0.65])."""

    def __init__(
        self,
        grid: Sequence[float] | None = None,
        cost_fn: CostFn | None = None,
        seed: int = 0,
        state: dict[str, Tensor] | None = None,
        n_bins: int = 5,
        low: float = -0.15,
        high: float = 0.65,
    ) -> None:
        super().__init__(grid, cost_fn, seed, state, n_bins)
        self.n_bins, self.low, self.high = n_bins, low, high

    def bin_of(self, system: LinearSystem) -> int:
        return context_bin(system.context, self.n_bins, self.low, self.high)


class FixedOmega(OnlineAlgorithm):
    """The same omega for every system (omega = 1 is Gauss-Seidel)."""

    def __init__(self, omega: float, cost_fn: CostFn | None = None) -> None:
        self.grid, self.omega = [float(omega)], float(omega)
        self.cost_fn = cost_fn or _sor_cost(1e-8, MAX_ITER)
        self.history: list[tuple[int, int, float]] = []

    def serve(self, request: LinearSystem) -> float:
        cost = self.cost_fn(request, self.omega)
        self.history.append((0, 0, cost))
        return cost

    def state_dict(self) -> dict[str, Any]:
        return {"history": torch.tensor(self.history, dtype=torch.float64).reshape(-1, 3)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [(int(b), int(a), float(c)) for b, a, c in state["history"].tolist()]


class SORCostCache:
    """SOR counts of systems at the grid's omegas, computed in batches (``fill``) and read by the learners.

    Every count is a real SOR solve (:func:`sor_iteration_table`); an omega off the grid or a system not
    filled is solved on demand. The table also gives the benchmarks (Gauss-Seidel, best fixed omega).
    """

    def __init__(self, grid: Sequence[float], tol: float = 1e-8, max_iter: int = MAX_ITER) -> None:
        self.grid, self.tol, self.max_iter = [float(w) for w in grid], tol, max_iter
        self.rows: dict[Any, np.ndarray] = {}

    def _key(self, system: LinearSystem) -> Any:
        return system.key if system.key else id(system)

    def fill(self, systems: Sequence[LinearSystem]) -> None:
        missing = [s for s in systems if self._key(s) not in self.rows]
        if missing:
            for system, row in zip(missing, sor_iteration_table(missing, self.grid, self.tol, self.max_iter)):
                self.rows[self._key(system)] = row

    def table(self, systems: Sequence[LinearSystem]) -> np.ndarray:
        self.fill(systems)
        return np.stack([self.rows[self._key(s)] for s in systems]) if systems else np.zeros((0, len(self.grid)))

    def __call__(self, system: LinearSystem, omega: float) -> float:
        row = self.rows.get(self._key(system))
        if row is not None and float(omega) in self.grid:
            return float(row[self.grid.index(float(omega))])
        return float(sor_iterations(system.A, system.b, omega, self.tol, self.max_iter))


# ------------------------------------------------------------------------------------ the module
class LearningToRelaxModule(OnlineModule):
    """Serve a sequence of linear systems, choosing SOR's omega with ``learner``; log iterations against the baselines.

    ``learner``: ``"tsallis-inf"`` (the paper's method), ``"tsallis-inf-cb"`` (contextual) or ``"fixed"``
    (``omega`` for every system; 1.0 is Gauss-Seidel). Logged after each pass (``train/``) and test stream
    (``test/``): total iterations, Gauss-Seidel's, the best fixed grid omega in hindsight's, and the same
    over the last ``last_fraction`` of the sequence. The learner's state (loss estimates per bin) is in
    buffers, so a published module is a warm-started omega chooser; ``forward(system)`` gives its
    probabilities over the grid.
    """

    def __init__(
        self,
        learner: str = "tsallis-inf",
        omega_low: float = 1.0,
        omega_high: float = 1.95,
        grid_size: int = 20,
        omega: float = 1.0,
        n_bins: int = 5,
        context_low: float = -0.15,
        context_high: float = 0.65,
        tol: float = 1e-8,
        max_iter: int = MAX_ITER,
        last_fraction: float = 0.2,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if learner not in ("tsallis-inf", "tsallis-inf-cb", "fixed"):
            raise ValueError(f"learner must be 'tsallis-inf', 'tsallis-inf-cb' or 'fixed', got {learner!r}")
        self.save_hyperparameters()
        self.grid = omega_grid(omega_low, omega_high, grid_size)
        bins = n_bins if learner == "tsallis-inf-cb" else 1
        self.register_buffer("k", torch.zeros(bins, grid_size, dtype=torch.float64))
        self.register_buffer("rounds", torch.zeros(bins, dtype=torch.float64))
        self.register_buffer("cost_sum", torch.zeros(bins, dtype=torch.float64))
        self.costs = SORCostCache(sorted({*self.grid, 1.0}), tol, max_iter)

    def build_algorithm(self) -> OnlineAlgorithm:
        h = self.hparams
        state = {"k": self.k, "rounds": self.rounds, "cost_sum": self.cost_sum}
        if h.learner == "fixed":
            return FixedOmega(h.omega, self.costs)
        if h.learner == "tsallis-inf-cb":
            return TsallisINFCB(self.grid, self.costs, h.seed, state, h.n_bins, h.context_low, h.context_high)
        return TsallisINF(self.grid, self.costs, h.seed, state)

    def forward(self, system: LinearSystem) -> Tensor:
        algorithm = self.algorithm
        if isinstance(algorithm, TsallisINF):
            return algorithm.probabilities(algorithm.bin_of(system))
        return torch.ones(1, dtype=torch.float64)

    def benchmark(self, requests: list[Any]) -> float | None:
        """The best fixed grid omega in hindsight on the stream."""
        return float(self.costs.table(requests)[:, self._grid_columns].sum(0).min()) if requests else None

    @property
    def _grid_columns(self) -> list[int]:
        return [self.costs.grid.index(w) for w in self.grid]

    def training_step(self, batch: Any, batch_idx: int) -> None:
        position = self.served % len(self._stream)
        self.costs.fill(self._stream[position : position + len(batch)])
        super().training_step(batch, batch_idx)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.costs.fill(list(batch))
        super().test_step(batch, batch_idx)

    def _summary(self, systems: list[Any], paid: list[float], prefix: str) -> dict[str, Tensor]:
        table = self.costs.table(systems)
        grid_table = table[:, self._grid_columns]
        last = max(1, int(round(len(systems) * self.hparams.last_fraction)))
        values = {
            "total": float(sum(paid)),
            "gauss_seidel": float(table[:, self.costs.grid.index(1.0)].sum()),
            "best_fixed": float(grid_table.sum(0).min()),
            "best_omega": self.grid[int(grid_table.sum(0).argmin())],
            "last": float(sum(paid[-last:])),
            "best_fixed_last": float(grid_table[-last:].sum(0).min()),
        }
        values["last_ratio"] = values["last"] / values["best_fixed_last"]
        values["gs_ratio"] = values["total"] / values["gauss_seidel"]
        return {f"{prefix}/{k}": torch.tensor(v, dtype=torch.float64) for k, v in values.items()}

    def on_train_epoch_end(self) -> None:
        history = self.algorithm.history  # type: ignore[attr-defined]
        n = min(len(self._stream), len(history))
        if n:
            self.log_dict(self._summary(self._stream[:n], [c for _, _, c in history[-n:]], "train"))

    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        self._test_start = len(self.algorithm.history)  # type: ignore[attr-defined]

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        paid = [c for _, _, c in self.algorithm.history[self._test_start :]]  # type: ignore[attr-defined]
        if paid:
            self.log_dict(self._summary(self._test_requests, paid, "test"))
