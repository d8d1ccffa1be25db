"""Convex training of two-layer ReLU networks: hyperplane arrangements, ADMM, sampled and robust programs.

Paper: *Efficient Global Optimization of Two-layer ReLU Networks: Quadratic-time Algorithms and
Adversarial Training*, Bai, Gautam, Sojoudi (SIAM J. Math. Data Science), arXiv 2201.01965, which
builds on the convex reformulation of Pilanci & Ergen (ICML 2020). No official ADMM code; the first
author's CVXPY/MOSEK reference formulation (``Bai-YT/Convex-NN-Training``) was read, not copied.

A two-layer ReLU network ``f(x) = sum_j alpha_j (x~^T u_j)_+`` (``x~ = [x, 1]``: the first layer's bias
is the last coordinate of ``u_j``) trained with weight decay,
``min l(f(X), y) + beta/2 (||U||_F^2 + ||alpha||^2)``, equals the group-lasso program over all
activation patterns ``D_i = diag(1[X~ h >= 0])`` of the data (the paper's convex training program)::

    min_{v_i, w_i}  l( sum_i D_i X~ (v_i - w_i), y ) + beta sum_i (||v_i||_2 + ||w_i||_2)
    s.t.            (2 D_i - I) X~ v_i >= 0,  (2 D_i - I) X~ w_i >= 0

whenever the network is wide enough (``m >= m*``). Its solution is turned back into a network by the
square-root split ``u = v / sqrt(||v||)``, ``alpha = +-sqrt(||v||)`` (:func:`recover_network`), whose
non-convex objective equals the convex one exactly. The package is split by concern:

* ``patterns``: :func:`enumerate_arrangements` (the exact formulation: every pattern, by the extreme rays of the
  arrangement) and :func:`sample_arrangements` (the approximate formulation: ``P`` random ``h ~ N(0, I)``);
* ``problem``: the convex objective, cone constraints and :func:`recover_network` (the square-root split);
* ``admm``: :class:`ADMMSolver`, the paper's ADMM for the squared loss (its Algorithm 1: ``u``, ``v``, ``s``
  and dual updates), with the ``u``-system solved exactly by Woodbury (``O(n d P)`` per iteration);
* ``admm_hinge``: :class:`HingeADMM`, ADMM for the hinge-loss program and the robust (L-inf) hinge program by extra
  splitting (copies for the group lasso, the margins and every linear constraint; one dense system inverted once);
* ``fista``: :func:`fista_gated`, the sampled convex program without cone constraints (the "gated ReLU" model
  ``f(x) = sum_i 1[x~^T h_i >= 0] x~^T u_i``), solved by FISTA with group soft-thresholding;
* ``reference``: :func:`solve_cvxpy`, the reference solver (CVXPY + Clarabel), also for the hinge/logistic losses
  and the robust L-inf program (the paper's robust convex training: constraints
  ``(2 D_i - I) X~ v_i >= eps ||v_i||_1`` and the hinge loss with ``+ eps ||sum_i d_ik (v_i - w_i)||_1``);
* ``nonconvex``: :func:`train_nonconvex`, the equivalent non-convex network trained by full-batch Adam from several
  random starts (the paper's back-propagation baseline; with ``epsilon > 0`` PGD adversarial training);
* ``robust``: :func:`certified_margins`, an exact worst-case margin for inputs at which no neuron can
  flip, and PGD accuracy;
* ``solvers``: the interface, one small class per ``solver=`` name in :data:`SOLVERS`;
* ``module``: :class:`ConvexReLU`, the Lightning wrapper (a ``SolverModule``: ``zoo fit`` runs the
  solver, the result is an ordinary ``nn.Sequential(Linear, ReLU, Linear)``).

Normalisation: ``reduction="sum"`` uses ``1/2 ||f - y||^2`` (the paper's loss), ``"mean"`` divides the
loss by ``n``. The solvers always work on the summed scale (``beta`` multiplied by ``n`` for ``"mean"``,
the objective divided back), so ``rho`` means the same thing under both; a ``rho`` tuned for one scale
diverges or crawls on the other (``rho = 0.01``, tuned for a mean loss, diverges on the summed loss).

Deviations and guesses (also in the card): the ``u``-update uses Woodbury instead of a dense
``2dP x 2dP`` Cholesky (same solution, linear in ``P``); ``dual_step`` is the scaled dual step
(``gamma_a / rho`` in the paper's notation; 1 is standard ADMM); the default ``rho = 2`` was measured
best on the exact moons program (1 is the usual choice; 0.01 diverges on the summed loss); the hinge and
robust hinge programs are solved by ADMM with extra splitting (closed-form hinge prox, row-scaled constraints,
over-relaxation 1.6) instead of the paper's inexact ``u``-step; it is slow on these LP-like programs (measured
1e-3 to 1e-2 from Clarabel's optimum after thousands of iterations, worse on some instances); the logistic loss
is solved with Clarabel only (no ADMM-RBCD);
the sampled convex program is published as a gated model (no cone decomposition to a ReLU network);
the regulariser includes the first layer's bias, which is part of ``u`` in the reformulation; the
robust constraints and the ``epsilon ||.||_1`` terms exclude the bias coordinate (only inputs are
attacked); the solvers work in float64.
"""

from zoo.convex_relu.admm import ADMMSolver, ADMMState
from zoo.convex_relu.admm_hinge import HingeADMM, hinge_prox
from zoo.convex_relu.fista import fista_gated
from zoo.convex_relu.module import TRAIN_METRICS, ConvexReLU
from zoo.convex_relu.nonconvex import train_nonconvex
from zoo.convex_relu.patterns import DTYPE, add_bias, count_arrangements, enumerate_arrangements, sample_arrangements
from zoo.convex_relu.problem import (
    LOSSES,
    GatedReLU,
    cone_violation,
    convex_objective,
    network_objective,
    recover_network,
    to_sequential,
)
from zoo.convex_relu.reference import CLARABEL_SETTINGS, solve_cvxpy
from zoo.convex_relu.robust import ScoreLogits, certified_margins, pgd_accuracy
from zoo.convex_relu.solvers import SOLVERS, ConvexSolver

__all__ = [
    "CLARABEL_SETTINGS",
    "DTYPE",
    "LOSSES",
    "SOLVERS",
    "TRAIN_METRICS",
    "ADMMSolver",
    "ADMMState",
    "ConvexReLU",
    "ConvexSolver",
    "GatedReLU",
    "HingeADMM",
    "ScoreLogits",
    "add_bias",
    "certified_margins",
    "cone_violation",
    "convex_objective",
    "count_arrangements",
    "enumerate_arrangements",
    "fista_gated",
    "hinge_prox",
    "network_objective",
    "pgd_accuracy",
    "recover_network",
    "sample_arrangements",
    "solve_cvxpy",
    "to_sequential",
    "train_nonconvex",
]
