"""``ConvexReLU``: the convex-relu entry's LightningModule, a two-layer ReLU network fitted by a solver."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from zoo.convex_relu.patterns import DTYPE
from zoo.convex_relu.problem import LOSSES, GatedReLU, loss_scale, network_objective
from zoo.convex_relu.robust import certified_margins, pgd_accuracy
from zoo.convex_relu.solvers import SOLVERS, ConvexSolver
from zoo.templates.solver import SolverModule

__all__ = ["TRAIN_METRICS", "ConvexReLU"]

#: Every metric the training step logs (NaN where it does not apply), so arms are comparable.
TRAIN_METRICS = (
    "train/objective", "train/convex_objective", "train/objective_gap", "train/objective_median", "train/objective_worst",
    "train/width", "train/num_patterns", "train/cone_violation", "train/dropped_neurons", "train/dropped_patterns", "train/primal_residual",
    "train/dual_residual", "train/iterations", "train/solve_seconds", "train/acc", "train/pgd_acc", "train/certified_acc",
)


class ConvexReLU(SolverModule):
    """A two-layer ReLU classifier trained to global optimality through its convex reformulation.

    A :class:`~zoo.templates.solver.SolverModule`: ``zoo fit`` runs the chosen solver (a class of
    :data:`~zoo.convex_relu.solvers.SOLVERS`) on the whole training set (gathered from the DataModule's
    train loader at the start of fit; labels {0, 1} become targets {-1, +1}): every training step
    performs ``iters_per_step`` solver iterations and exports the current solution into ``self.net``,
    an ordinary ``nn.Sequential(Linear(input_dim, width), ReLU(), Linear(width, 1))`` (float64), and
    the fit stops itself after ``max_iters`` iterations (or at ``tol``). ``forward(x)`` returns the
    score ``f(x)`` (``(N,)``); class 1 when positive.

    Args:
        input_dim: input features (the bias column is added inside).
        width: neurons of the exported network; unused neurons are zero. A sparsest optimum of the exact
            program needs at most ``n + 1`` (Caratheodory), but ADMM's iterates keep many small groups
            (75-393 on moons with n = 40), hence the default 512; truncation keeps the largest neurons
            and is logged as ``train/dropped_neurons``.
        solver: ``"admm"`` (the paper's Algorithm 1 for the squared loss; ADMM with extra splitting for the
            hinge loss and the robust hinge program), ``"clarabel"`` (CVXPY + Clarabel,
            the reference; any loss, the robust program), ``"scp"`` (gated sampled convex program by
            FISTA; publishes a :class:`GatedReLU`) or ``"adam"`` (the non-convex network by Adam,
            the back-propagation baseline).
        arrangements: ``"exact"`` (all patterns of the training data) or ``"sampled"`` (``num_hyperplanes``
            random ones: the approximate formulation, whose optimum bounds the true one from above).
        num_hyperplanes: ``P_s`` for ``"sampled"``.
        loss / reduction: ``squared | hinge | logistic``; ``sum`` (the paper) or ``mean`` (divided by n).
        beta: weight decay / group-lasso weight.
        rho, dual_step: ADMM penalty (on the summed-loss scale, see the module notes) and scaled dual step.
        max_iters, tol, iters_per_step: solver iterations (Adam steps), early stop on relative residuals.
        epsilon: L-inf radius of the robust convex program (``clarabel`` or ``admm``, hinge) or of PGD adversarial
            training (``adam``); 0 for standard training.
        lr, restarts: Adam's learning rate (cosine schedule over ``max_iters``) and number of random starts
            (the best is exported; all are reported).
        attack_epsilon, attack_steps: PGD-k evaluation radius (0: none) for the robust metrics; ``attack_steps``
            is also the k of adam's PGD training.
        bias: first-layer bias (a column of ones in the convex program).
        seed: hyperplane sampling and Adam initialisation.

    >>> model = ConvexReLU(width=4)
    >>> model(torch.zeros(3, 2)).shape
    torch.Size([3])
    """

    def __init__(
        self,
        input_dim: int = 2,
        width: int = 512,
        solver: str = "admm",
        arrangements: str = "exact",
        num_hyperplanes: int = 100,
        loss: str = "squared",
        reduction: str = "sum",
        beta: float = 1.0,
        rho: float = 2.0,
        dual_step: float = 1.0,
        max_iters: int = 2000,
        tol: float = 0.0,
        iters_per_step: int = 500,
        epsilon: float = 0.0,
        lr: float = 0.01,
        restarts: int = 10,
        attack_epsilon: float = 0.0,
        attack_steps: int = 20,
        bias: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {tuple(SOLVERS)}, got {solver!r}")
        if arrangements not in ("exact", "sampled"):
            raise ValueError(f"arrangements must be 'exact' or 'sampled', got {arrangements!r}")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        loss_scale(1, reduction)
        if solver == "scp" and (loss != "squared" or epsilon > 0):
            raise ValueError(f"solver='scp' handles the squared loss without epsilon; use solver='clarabel' or 'admm' for {loss}/robust")
        if solver == "admm" and loss == "logistic":
            raise ValueError("solver='admm' handles the squared and hinge losses (no ADMM-RBCD); use solver='clarabel' for logistic")
        if solver == "scp" and arrangements != "sampled":
            raise ValueError("solver='scp' is the sampled convex program: set arrangements='sampled'")
        if epsilon > 0 and loss != "hinge" and solver in ("clarabel", "admm"):
            raise ValueError("the robust convex program (epsilon > 0) is written for the hinge loss: set loss='hinge'")
        if min(input_dim, width, max_iters, iters_per_step, restarts, num_hyperplanes) < 1 or beta < 0 or epsilon < 0:
            raise ValueError("input_dim, width, max_iters, iters_per_step, restarts, num_hyperplanes must be positive; beta, epsilon >= 0")
        self.save_hyperparameters()
        if solver == "scp":
            self.net: nn.Module = GatedReLU(input_dim, num_hyperplanes, bias)
        else:
            self.net = nn.Sequential(nn.Linear(input_dim, width, bias=bias), nn.ReLU(), nn.Linear(width, 1, bias=False)).to(DTYPE)
            for p in self.net.parameters():
                nn.init.zeros_(p)
        self._solver: ConvexSolver | None = None

    # ------------------------------------------------------------------ model
    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.to(DTYPE)).reshape(-1)

    def to_sequential(self) -> nn.Module:
        """A standalone copy of the exported network (``nn.Sequential``, or the gated model for ``scp``)."""
        return copy.deepcopy(self.net).cpu()

    # ------------------------------------------------------------------ fit = run the solver (SolverModule hooks)
    @property
    def iterations(self) -> int:
        return self._solver.iterations if self._solver is not None else 0

    def start_solver(self, x: Tensor, y: Tensor) -> None:
        x = x.to(DTYPE)
        if x.shape[1] != self.hparams.input_dim:
            raise ValueError(f"the data has {x.shape[1]} features, the model was built with input_dim={self.hparams.input_dim}")
        labels = torch.unique(y)
        if not set(labels.tolist()) <= {0, 1}:
            raise ValueError(f"ConvexReLU is a binary classifier: labels must be 0/1, got {labels.tolist()[:5]}")
        self._solver = SOLVERS[self.hparams.solver](self, x, y.to(DTYPE) * 2 - 1)

    def solver_iterate(self, iterations: int) -> bool:
        assert self._solver is not None
        return self._solver.iterate(iterations)

    def solver_metrics(self, final: bool) -> dict[str, float]:
        solver = self._solver
        assert solver is not None
        logs = dict.fromkeys(TRAIN_METRICS, float("nan"))
        logs.update(solver.logs)
        logs.update(self._train_metrics(solver.x, solver.y, final))
        solver.complete(logs)
        logs["train/objective_gap"] = logs["train/objective"] - logs["train/convex_objective"]
        del logs["train/iterations"], logs["train/solve_seconds"]  # the SolverModule logs these
        return logs

    def _train_metrics(self, x: Tensor, y: Tensor, final: bool) -> dict[str, float]:
        hp = self.hparams
        solver = self._solver
        assert solver is not None
        gated = isinstance(self.net, GatedReLU)
        active = self.net.weight.norm(dim=1) > 0 if gated else self.net[2].weight[0] != 0  # type: ignore[index]
        out = {
            # the objective of the program the solver targets: for the robust convex program, the exported
            # net's exact worst-case hinge loss (adam's PGD training reports the clean objective)
            "train/objective": network_objective(
                self.net, x, y, hp.beta, hp.loss, hp.reduction, hp.epsilon if hp.solver in ("clarabel", "admm") else 0.0
            ),
            "train/acc": float(((self(x) > 0) == (y > 0)).double().mean()),
            "train/width": float(active.sum()),
            "train/num_patterns": float(len(solver.masks)) if solver.masks is not None else float("nan"),
            "train/cone_violation": solver.violation,
            "train/dropped_neurons": float(solver.dropped),
        }
        if final:
            out.update({f"train/{k}": v for k, v in self._robust_metrics(x, y).items()})
        return out

    # ------------------------------------------------------------------ evaluation
    def _robust_metrics(self, x: Tensor, y: Tensor) -> dict[str, float]:
        """PGD-k accuracy (L-inf, ``attack_epsilon``) of the exported net, and its certified accuracy; NaN when off."""
        hp = self.hparams
        eps = hp.attack_epsilon
        if eps <= 0:
            return {"pgd_acc": float("nan"), "certified_acc": float("nan")}
        robust = pgd_accuracy(self.net, x, y, eps, hp.attack_steps)
        certified = float("nan")
        if not isinstance(self.net, GatedReLU):
            certified = float((certified_margins(self.net, x, y, eps) > 0).double().mean())  # type: ignore[arg-type]
        return {"pgd_acc": float(robust), "certified_acc": certified}

    def _eval_step(self, batch: Any, stage: str) -> None:
        x, labels = batch[0].reshape(len(batch[0]), -1).to(DTYPE), batch[1].reshape(-1)
        y = labels.to(DTYPE) * 2 - 1
        logs = {"acc": float(((self(x) > 0) == (labels > 0)).double().mean()), **self._robust_metrics(x, y)}
        self.log_dict({f"{stage}/{k}": torch.tensor(v, dtype=DTYPE) for k, v in logs.items()}, batch_size=len(y))

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self(batch[0].reshape(len(batch[0]), -1))
