"""The solver interface of :class:`~zoo.convex_relu.module.ConvexReLU`: one small class per ``solver=``.

Each solver is built once on the whole training set (raw inputs ``x`` and targets ``y`` in {-1, +1}),
then :meth:`ConvexSolver.iterate` advances it and writes the current solution into the module's
network. :data:`SOLVERS` maps the ``solver`` argument to its class; adding a solver is adding a class.

- ``admm``: the paper's ADMM (Algorithm 1) on the exact or sampled program, squared loss; for the hinge loss
  and the robust (``epsilon > 0``) hinge program, ADMM with extra splitting (:class:`HingeADMM`);
- ``clarabel``: the reference CVXPY + Clarabel solve, any loss and the robust program (one "iteration");
- ``scp``: the sampled convex program without cone constraints (gated ReLU) by FISTA;
- ``adam``: the non-convex network by full-batch Adam from several starts (the baseline).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from zoo.convex_relu.admm import ADMMSolver
from zoo.convex_relu.admm_hinge import HingeADMM
from zoo.convex_relu.fista import fista_gated
from zoo.convex_relu.nonconvex import AdamRun, sequential_from_restart
from zoo.convex_relu.patterns import add_bias, enumerate_arrangements, sample_arrangements
from zoo.convex_relu.problem import cone_violation, convex_objective, load_network, loss_scale, recover_network
from zoo.convex_relu.reference import CLARABEL_SETTINGS, solve_cvxpy

if TYPE_CHECKING:
    from zoo.convex_relu.module import ConvexReLU

__all__ = ["SOLVERS", "ADMM", "Clarabel", "ConvexSolver", "GatedFISTA", "NonConvexAdam", "PatternSolver"]


class ConvexSolver:
    """A way to fit a :class:`ConvexReLU` on the gathered training set ``x (n, d)``, ``y (n,)`` in {-1, +1}."""

    def __init__(self, model: ConvexReLU, x: Tensor, y: Tensor) -> None:
        self.model, self.hp = model, model.hparams
        self.x, self.y = x, y
        self.xt = add_bias(x, self.hp.bias)
        self.iterations = 0
        self.masks: Tensor | None = None
        self.dropped, self.violation = 0, float("nan")
        self.logs: dict[str, float] = {}  # solver-specific metrics of the last iterate()

    @property
    def beta_sum(self) -> float:
        """``beta`` on the summed-loss scale the solvers work on (``beta * n`` for a mean loss)."""
        return self.hp.beta / loss_scale(len(self.y), self.hp.reduction)

    def iterate(self, iterations: int) -> bool:
        """Run at most ``iterations`` iterations, export the solution into ``model.net``; True at the tolerance."""
        raise NotImplementedError

    def complete(self, logs: dict[str, float]) -> None:
        """Fill the metrics that depend on the exported network's objective (one solution: median = worst = it)."""
        logs["train/objective_median"] = logs["train/objective_worst"] = logs["train/objective"]


class PatternSolver(ConvexSolver):
    """A solver of the convex program: it needs the activation patterns (all, or ``num_hyperplanes`` sampled)."""

    def __init__(self, model: ConvexReLU, x: Tensor, y: Tensor) -> None:
        super().__init__(model, x, y)
        hp = self.hp
        if hp.arrangements == "exact":
            self.masks = enumerate_arrangements(self.xt).to(x.device)
        else:
            masks, gates = sample_arrangements(self.xt, hp.num_hyperplanes, hp.seed)
            self.masks, self.gates = masks.to(x.device), gates.to(x.device)

    def export(self, v: Tensor, w: Tensor, rel_tol: float = 0.0) -> None:
        """Square-root split of the groups into ``model.net``; keeps the ``width`` largest neurons (the rest are dropped)."""
        hp = self.hp
        u, alpha = recover_network(v, w, rel_tol)
        self.dropped = max(0, len(alpha) - hp.width)
        if self.dropped:  # keep the largest neurons; reported as train/dropped_neurons
            keep = alpha.abs().argsort(descending=True)[: hp.width]
            u, alpha = u[keep], alpha[keep]
        load_network(self.model.net, u, alpha, hp.bias)  # type: ignore[arg-type]
        assert self.masks is not None
        self.violation = cone_violation(self.xt, self.masks, v, w, hp.epsilon, hp.input_dim)


class ADMM(PatternSolver):
    """The paper's Algorithm 1 (squared loss) or :class:`HingeADMM` (hinge, robust hinge).

    Stops when ``max(primal, dual residual) / max(1, ||v||) < tol`` (``tol > 0``)."""

    def __init__(self, model: ConvexReLU, x: Tensor, y: Tensor) -> None:
        super().__init__(model, x, y)
        assert self.masks is not None
        hp = self.hp
        if hp.loss == "hinge":
            self.run: ADMMSolver | HingeADMM = HingeADMM(
                self.xt, self.y, self.masks, self.beta_sum, hp.rho, hp.dual_step, hp.epsilon, n_features=hp.input_dim
            )
        else:
            self.run = ADMMSolver(self.xt, self.y, self.masks, self.beta_sum, hp.rho, hp.dual_step)
        self.state = self.run.init_state()

    def iterate(self, iterations: int) -> bool:
        hp = self.hp
        self.state = self.run.iterate(self.state, iterations)
        v, w = self.run.split(self.state.v)
        self.export(v, w)
        self.iterations = self.state.iterations
        rel = max(self.state.primal_residual, self.state.dual_residual) / max(1.0, float(self.state.v.norm()))
        self.logs = {
            "train/primal_residual": self.state.primal_residual,
            "train/dual_residual": self.state.dual_residual,
            # patterns whose robust cone has no interior, dropped before the splitting (HingeADMM, epsilon > 0)
            "train/dropped_patterns": float(getattr(self.run, "dropped_patterns", 0)),
            "train/convex_objective": convex_objective(
                self.xt, self.y, self.masks, v, w, hp.beta, hp.loss, hp.reduction, hp.epsilon, n_features=hp.input_dim
            ),
        }
        return hp.tol > 0 and rel < hp.tol


class Clarabel(PatternSolver):
    """The reference: the whole (robust) convex program solved by CVXPY + Clarabel in one call."""

    def iterate(self, iterations: int) -> bool:
        hp = self.hp
        v, w, value = solve_cvxpy(self.xt, self.y, self.masks, self.beta_sum, hp.loss, hp.epsilon, n_features=hp.input_dim, **CLARABEL_SETTINGS)
        self.export(v.to(self.x.device), w.to(self.x.device), rel_tol=1e-7)
        self.logs = {"train/convex_objective": value * loss_scale(len(self.y), hp.reduction)}
        self.iterations = 1
        return True


class GatedFISTA(PatternSolver):
    """The sampled convex program without cone constraints, by FISTA; publishes a gated ReLU model."""

    def __init__(self, model: ConvexReLU, x: Tensor, y: Tensor) -> None:
        super().__init__(model, x, y)
        self.weights: Tensor | None = None

    def iterate(self, iterations: int) -> bool:
        self.weights, ran = fista_gated(self.xt, self.y, self.masks, self.beta_sum, iterations, init=self.weights, tol=self.hp.tol)
        self.iterations += ran
        net = self.model.net
        with torch.no_grad():
            net.gates.zero_()
            net.weight.zero_()
            net.gates[: len(self.gates)] = self.gates
            net.weight[: len(self.weights)] = self.weights
        return ran < iterations

    def complete(self, logs: dict[str, float]) -> None:
        logs["train/convex_objective"] = logs["train/objective"]  # the gated program is the model's own objective
        super().complete(logs)


class NonConvexAdam(ConvexSolver):
    """The back-propagation baseline: ``restarts`` random starts by full-batch Adam; the best is exported."""

    def __init__(self, model: ConvexReLU, x: Tensor, y: Tensor) -> None:
        super().__init__(model, x, y)
        hp = self.hp
        self.run = AdamRun(
            x, y, hp.width, hp.beta, hp.loss, hp.reduction, hp.restarts, hp.max_iters, hp.lr, hp.bias, hp.seed, hp.epsilon, hp.attack_steps
        )

    def iterate(self, iterations: int) -> bool:
        done = self.run.step(iterations)
        idx, values = self.run.best()
        self.model.net.load_state_dict(sequential_from_restart(self.run.params, idx, self.hp.bias).state_dict())
        values = values.sort().values
        self.logs = {"train/objective_median": float(values.median()), "train/objective_worst": float(values[-1])}
        self.iterations = self.run.done
        return done

    def complete(self, logs: dict[str, float]) -> None:
        pass  # median and worst are over the starts, set by iterate()


#: ``ConvexReLU(solver=...)`` -> the class that runs it.
SOLVERS: dict[str, type[ConvexSolver]] = {"admm": ADMM, "clarabel": Clarabel, "scp": GatedFISTA, "adam": NonConvexAdam}
