"""Greedy block coordinate descent: Gauss-Southwell rules, variable blocks and Newton block updates.

Paper: *Let's Make Block Coordinate Descent Converge Faster: Faster Greedy Rules, Message-Passing,
Active-Set Complexity, and Superlinear Convergence*, Nutini, Laradji, Schmidt (JMLR 2022),
arXiv 1712.08859. Official code: ``IssamLaradji/BlockCoordinateDescent`` (read for the rule
definitions, not copied).

One iteration picks a block ``b`` of coordinates and updates ``x_b`` only. The package has, by concern
(``problems``, ``rules``, ``solver``, ``module``):

* three problems (:class:`LeastSquares`, :class:`Logistic`, :class:`Lasso`), each keeping ``z = A x``
  up to date so an iteration costs one ``A^T`` product (the full gradient the greedy rules need) plus
  ``O(m |b|)`` for the update;
* pure selection rules on a partition: :func:`gs_scores` (``||grad_b||_2``, the paper's GS; the official
  code uses the l1 norm), :func:`gsl_scores` (``||grad_b||^2 / L_b``), :func:`gsd_scores`
  (``sum_{i in b} grad_i^2 / L_i``), :func:`gsh_scores` (``grad_b^T H_b^{-1} grad_b``), and
  :func:`variable_block` (the top-``tau`` coordinates of a per-coordinate score: the paper's variable
  blocks), plus random, cyclic and Lipschitz sampling;
* pure block updates: :func:`lb_update` (``-grad_b / L_b``), :func:`hb_update` (``-H_b^{-1} grad_b``),
  :func:`prox_lb_update` (the proximal ``L_b`` step for the L1 term) and the damped Newton step
  (exact block Hessian, Armijo backtracking) inside :class:`BlockCoordinateDescent`;
* :class:`BlockCoordinateDescent`, the solver, and :class:`BCDModule`, its Lightning wrapper (a
  :class:`~zoo.templates.solver.SolverModule`: each training step runs ``iters_per_step`` iterations
  on the whole training set and logs the relative suboptimality and the iterations needed to reach
  ``tol``); :func:`make_problem_data` generates the paper's synthetic problems with a seed, and
  :class:`zoo.datamodules.least_squares.BCDDataModule` serves them.

Suboptimality is relative: ``(f(x_k) - f*) / (f(x_0) - f*)`` with ``x_0 = 0`` and ``f*`` from an
independent solver (least squares: ``numpy.linalg.lstsq``; logistic: full Newton to gradient norm
1e-12; lasso: scikit-learn's ``Lasso`` at tol 1e-14).

Deviations and guesses (also in the card): the solver is a plain object, not a
``torch.optim.Optimizer`` (the registry builds it with no arguments, and every rule needs the full
gradient and the data, not a closure); it works in float64 numpy; fixed blocks are a contiguous
partition of a seeded permutation (sizes differ by at most one); for the lasso, GS scores blocks by
the norm of the proximal-gradient step with the largest block constant, GSL by the model decrease of
the proximal ``L_b`` step (the paper's proximal GS-q flavour), GSD by the same per coordinate with
``L_i``; ``Hb`` and ``Newton`` are not offered for the lasso (no active-set Newton); variable-block GSH
takes the top coordinates by ``grad_i^2 / H_ii``; the logistic loss is summed over samples plus
``lam/2 ||x||^2`` (no intercept); message passing / tree blocks and softmax / label propagation
problems are not implemented.
"""

from zoo.bcd.module import TRAIN_METRICS, BCDModule
from zoo.bcd.problems import PROBLEMS, Lasso, LeastSquares, Logistic, Problem, make_problem, make_problem_data, reference_solution
from zoo.bcd.rules import (
    block_indices,
    gs_scores,
    gsd_scores,
    gsh_scores,
    gsl_scores,
    hb_update,
    lb_update,
    partition,
    prox_lb_update,
    soft_threshold,
    variable_block,
)
from zoo.bcd.solver import SELECTIONS, UPDATES, BCDResult, BCDState, BlockCoordinateDescent

__all__ = [
    "PROBLEMS",
    "SELECTIONS",
    "TRAIN_METRICS",
    "UPDATES",
    "BCDModule",
    "BCDResult",
    "BCDState",
    "BlockCoordinateDescent",
    "Lasso",
    "LeastSquares",
    "Logistic",
    "Problem",
    "block_indices",
    "gs_scores",
    "gsd_scores",
    "gsh_scores",
    "gsl_scores",
    "hb_update",
    "lb_update",
    "make_problem",
    "make_problem_data",
    "partition",
    "prox_lb_update",
    "reference_solution",
    "soft_threshold",
    "variable_block",
]
