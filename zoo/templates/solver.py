"""``SolverModule``: the base of entries that optimise a whole problem instead of taking SGD steps.

Some entries are solvers (block coordinate descent, ADMM on a convex program, alternating
minimisation): they need the whole training set at once, update their parameters themselves, and
run until a tolerance or an iteration budget is reached. Lightning still drives them, so they gain
``zoo fit``, logging, checkpoints and the hub. This base does the shared part:

1. at the start of fit it gathers the datamodule's whole train loader into two tensors
   ``x (n, d)`` (each sample flattened) and ``y (n,)``, and hands them to :meth:`start_solver`;
2. manual optimisation (no torch optimizer): each ``training_step`` calls
   :meth:`solver_iterate` with the iterations left for this step, at most ``iters_per_step``;
3. the stop rule: the fit stops (``trainer.should_stop``) when :meth:`solver_iterate` reports the
   tolerance reached or after ``max_iters`` iterations in all; give the trainer enough epochs;
4. logging: :meth:`solver_metrics` (the objective, its gap or suboptimality, anything else) plus
   ``train/iterations`` and ``train/solve_seconds`` (the time inside the solver), every step,
   as float64.

Subclasses implement the three hooks and :attr:`iterations`; ``max_iters`` and ``iters_per_step``
default to the hyper-parameters of those names.

>>> import torch
>>> from torch import nn
>>> class MeanEstimate(SolverModule):
...     '''Fit ``w`` minimising ``1/2 ||x w - y||^2`` by gradient steps on the whole data.'''
...     def __init__(self, max_iters: int = 200, iters_per_step: int = 50, tol: float = 1e-10) -> None:
...         super().__init__()
...         self.save_hyperparameters()
...         self.w = nn.Parameter(torch.zeros(1, dtype=torch.float64), requires_grad=False)
...         self.done_iterations = 0
...     @property
...     def iterations(self) -> int:
...         return self.done_iterations
...     def start_solver(self, x, y):
...         self.x, self.y = x.double(), y.double()
...     def solver_iterate(self, iterations):
...         for _ in range(iterations):
...             grad = self.x[:, 0] @ (self.x[:, 0] * self.w - self.y)
...             self.w -= grad / (self.x[:, 0] @ self.x[:, 0])
...             self.done_iterations += 1
...         return bool(grad.abs() < self.hparams.tol)
...     def solver_metrics(self, final):
...         return {"train/objective": float(0.5 * (self.x[:, 0] * self.w - self.y).pow(2).sum())}
>>> from lightning.pytorch import Trainer
>>> from torch.utils.data import DataLoader, TensorDataset
>>> data = DataLoader(TensorDataset(torch.ones(6, 1), torch.arange(6.0)), batch_size=4)
>>> model = MeanEstimate()
>>> Trainer(max_epochs=10, logger=False, enable_checkpointing=False, enable_progress_bar=False,
...         enable_model_summary=False).fit(model, data)
>>> round(float(model.w), 6), model.iterations  # the mean of 0..5, stopped at the tolerance
(2.5, 50)
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor

from zoo.hub import ZooModule

__all__ = ["SolverModule"]


class SolverModule(ZooModule):
    """Gather the train set once, run ``iters_per_step`` solver iterations per step, stop at a tolerance.

    Attributes:
        count_setup_time: whether ``train/solve_seconds`` includes :meth:`start_solver` (the solver's
            own set-up, e.g. enumerating patterns); an entry whose set-up computes a reference
            optimum for its metrics sets it False, so the time is the solver's alone.
    """

    count_setup_time: bool = True

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.solve_seconds = 0.0
        self._solver_started = False

    # ------------------------------------------------------------------ what a subclass provides
    @property
    def iterations(self) -> int:
        """Solver iterations done so far in this fit."""
        raise NotImplementedError(f"{type(self).__name__} must define the `iterations` property")

    @property
    def max_iters(self) -> int:
        """The iteration budget of the whole fit (default: the ``max_iters`` hyper-parameter)."""
        return int(self.hparams["max_iters"])

    @property
    def iters_per_step(self) -> int:
        """Iterations per ``training_step`` (default: the ``iters_per_step`` hyper-parameter)."""
        return int(self.hparams["iters_per_step"])

    def start_solver(self, x: Tensor, y: Tensor) -> None:
        """Set the problem up from the whole training set: ``x (n, d)`` and ``y (n,)`` on the module's device."""
        raise NotImplementedError(f"{type(self).__name__} must implement start_solver(x, y)")

    def solver_iterate(self, iterations: int) -> bool:
        """Run at most ``iterations`` iterations and update the parameters; True when the tolerance is reached."""
        raise NotImplementedError(f"{type(self).__name__} must implement solver_iterate(iterations)")

    def solver_metrics(self, final: bool) -> dict[str, float]:
        """What to log after a step (``train/objective`` and its gap at least); ``final`` on the last step."""
        return {}

    # ------------------------------------------------------------------ the shared machinery
    def configure_optimizers(self) -> list:
        return []  # the solver updates the parameters itself

    def gather_train_data(self) -> tuple[Tensor, Tensor]:
        """The whole train loader as ``(x (n, d), y (n,))`` on the module's device, in loader order."""
        loader = self.trainer.train_dataloader
        if loader is None and self.trainer.datamodule is not None:
            loader = self.trainer.datamodule.train_dataloader()
        if loader is None:
            raise RuntimeError(f"{type(self).__name__} solves on the train set: pass a train dataloader or datamodule to fit")
        xs, ys = [], []
        for batch in loader:
            xs.append(batch[0].reshape(len(batch[0]), -1))
            ys.append(batch[1].reshape(-1))
        return torch.cat(xs).to(self.device), torch.cat(ys).to(self.device)

    def on_train_start(self) -> None:
        x, y = self.gather_train_data()
        self.solve_seconds = 0.0
        start = time.perf_counter()
        self.start_solver(x, y)
        if self.count_setup_time:
            self.solve_seconds += time.perf_counter() - start
        self._solver_started = True

    def training_step(self, batch: Any, batch_idx: int) -> None:
        if not self._solver_started:
            raise RuntimeError(f"{type(self).__name__} trains with trainer.fit (on_train_start gathers the data)")
        todo = max(0, min(self.iters_per_step, self.max_iters - self.iterations))
        start = time.perf_counter()
        converged = self.solver_iterate(todo)
        self.solve_seconds += time.perf_counter() - start
        done = bool(converged) or self.iterations >= self.max_iters
        logs = {**self.solver_metrics(final=done), "train/iterations": float(self.iterations), "train/solve_seconds": self.solve_seconds}
        self.log_dict({k: torch.tensor(v, dtype=torch.float64) for k, v in logs.items()}, on_step=True, on_epoch=False, batch_size=1)
        if done:
            self.trainer.should_stop = True
