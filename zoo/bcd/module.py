"""``BCDModule``: block coordinate descent as a Lightning ``SolverModule`` for ``zoo fit``."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from zoo.bcd.problems import PROBLEMS, Problem, make_problem, reference_solution
from zoo.bcd.solver import BCDState, BlockCoordinateDescent
from zoo.templates.solver import SolverModule

__all__ = ["TRAIN_METRICS", "BCDModule"]

TRAIN_METRICS = ("train/objective", "train/suboptimality", "train/iterations", "train/iters_to_tol", "train/reached", "train/solve_seconds")


class BCDModule(SolverModule):
    """A linear model (``forward(x) = x @ weight``: predictions or logits) fitted by block coordinate descent.

    A :class:`~zoo.templates.solver.SolverModule`: ``zoo fit`` gathers the whole training set at the
    start of fit, computes ``f*`` with an independent solver, and every training step runs
    ``iters_per_step`` iterations of :class:`BlockCoordinateDescent`, copies ``x`` into ``weight`` and
    logs ``train/suboptimality`` (relative, see the module notes), ``train/objective``,
    ``train/iterations`` and ``train/iters_to_tol`` (the first iteration with suboptimality ``<= tol``;
    ``max_iter + 1`` while not reached, with ``train/reached`` 0). The fit stops itself at ``tol`` (when
    ``stop_at_tol``) or after ``max_iter`` iterations; set the trainer's ``max_epochs`` high enough.
    ``train/solve_seconds`` times the iterations only (not the reference solver).

    Args:
        problem: ``least_squares``, ``logistic`` (labels {0, 1}) or ``lasso``.
        n_features: columns of the data.
        lam: L2 weight (logistic) or L1 weight (lasso); unused for least squares.
        selection, update, blocks, block_size, seed: see :class:`BlockCoordinateDescent`.
        max_iter, iters_per_step, tol, stop_at_tol: the run.
    """

    count_setup_time = False  # the set-up computes f* with another solver

    def __init__(
        self, problem: str = "least_squares", n_features: int = 50, lam: float = 1.0, selection: str = "GSL", update: str = "Lb",
        blocks: str = "fixed", block_size: int = 5, max_iter: int = 5000, iters_per_step: int = 250, tol: float = 1e-6,
        stop_at_tol: bool = True, seed: int = 0,
    ) -> None:
        super().__init__()
        if problem not in PROBLEMS:
            raise ValueError(f"problem must be one of {PROBLEMS}, got {problem!r}")
        self.solver = BlockCoordinateDescent(selection, update, blocks, block_size, seed)
        if min(n_features, max_iter, iters_per_step) < 1 or lam < 0 or tol < 0:
            raise ValueError("n_features, max_iter, iters_per_step must be positive; lam, tol >= 0")
        self.save_hyperparameters()
        self.weight = nn.Parameter(torch.zeros(n_features, dtype=torch.float64))
        self._state: BCDState | None = None
        self._problem: Problem | None = None

    def forward(self, x: Tensor) -> Tensor:
        return x.to(self.weight.dtype) @ self.weight

    # ------------------------------------------------------------------ the SolverModule hooks
    @property
    def max_iters(self) -> int:
        return int(self.hparams.max_iter)

    @property
    def iterations(self) -> int:
        return self._state.iteration if self._state is not None else 0

    def start_solver(self, x: Tensor, y: Tensor) -> None:
        a, b = x.double().cpu().numpy(), y.double().cpu().numpy()
        hp = self.hparams
        if a.shape[1] != hp.n_features:
            raise ValueError(f"the data has {a.shape[1]} features, the model was built with n_features={hp.n_features}")
        self._problem = make_problem(hp.problem, a, b, hp.lam)
        self._x_star, self._f_star = reference_solution(self._problem)
        x0 = self.weight.detach().cpu().numpy().copy()
        self._state = self.solver.init(self._problem, x0)
        self._gap0 = max(self._state.value - self._f_star, 1e-300)
        self._hit: int | None = 0 if self._state.value - self._f_star <= hp.tol * self._gap0 else None

    def solver_iterate(self, iterations: int) -> bool:
        hp = self.hparams
        assert self._state is not None
        for _ in range(iterations):
            self.solver.step(self._state)
            if self._hit is None and self._state.value - self._f_star <= hp.tol * self._gap0:
                self._hit = self._state.iteration
                if hp.stop_at_tol:
                    break
        with torch.no_grad():
            self.weight.copy_(torch.from_numpy(self._state.x))
        return bool(hp.stop_at_tol and self._hit is not None)

    def solver_metrics(self, final: bool) -> dict[str, float]:
        assert self._state is not None
        return {
            "train/objective": self._state.value,
            "train/suboptimality": self.suboptimality(),
            "train/iters_to_tol": float(self._hit if self._hit is not None else self.hparams.max_iter + 1),
            "train/reached": float(self._hit is not None),
        }

    def suboptimality(self) -> float:
        """``(f(x_k) - f*) / (f(x_0) - f*)``, clipped at 0."""
        assert self._state is not None
        return max(self._state.value - self._f_star, 0.0) / self._gap0

    # ------------------------------------------------------------------ evaluation
    def test_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        out = self(x)
        if self.hparams.problem == "logistic":
            metric = {"test/accuracy": ((out > 0).double() == (y > 0).double()).double().mean()}
        else:
            metric = {"test/mse": (out - y.double()).pow(2).mean()}
        self.log_dict(metric, batch_size=len(y))
