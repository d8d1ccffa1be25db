"""ADMM (the paper's Algorithm 1) against CVXPY + Clarabel on the same convex training program, in one run.

For each problem the reference optimum comes from Clarabel at tight tolerances (not timed). Then:

* the peer: ``solve_cvxpy`` with Clarabel's default tolerances, timed end to end (CVXPY's compilation
  included, as a user runs it) and Clarabel's own solve time reported beside it;
* ADMM: the wall time of its iterations until the network exported from its current iterate has an
  objective within ``--gap`` (relative, either side) of the optimum. (For the exact program no network
  can be below it; for a sampled program an iterate that still violates the cones can be, since the
  sampled optimum only bounds the true one from above.) The gap is checked every ``--check-every``
  iterations and the checks are not timed (a user would stop on the residuals instead).

The printed ratio is ADMM time / CVXPY time (below 1: ADMM is faster). Problems: moons with n = 40 and
all 1,561 arrangements (the claim's exact program), and moons with n = 300 and 100 sampled hyperplanes
(a sampled, approximate program). Squared loss summed, beta = 1. Then the hinge and robust (L-inf,
eps = 0.1) hinge programs on moons n = 40 with 50 sampled hyperplanes (beta = 0.1, the claim's ADMM arms):
``HingeADMM`` until its convex objective is within ``--hinge-gap`` of Clarabel's optimum with cone
violation at most 1e-2, against the same end-to-end CVXPY + Clarabel time.

    python -m benchmarks.convex_relu [--gap 1e-3] [--rho 2] [--hinge-gap 2e-2] [--hinge-rho 10] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch
from sklearn.datasets import make_moons

from zoo.convex_relu import (
    CLARABEL_SETTINGS,
    ADMMSolver,
    HingeADMM,
    add_bias,
    cone_violation,
    convex_objective,
    enumerate_arrangements,
    network_objective,
    recover_network,
    sample_arrangements,
    solve_cvxpy,
    to_sequential,
)


def problem(n: int, sampled: int | None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x, labels = make_moons(n_samples=n, noise=0.2, random_state=seed)
    xs = torch.tensor(x, dtype=torch.float32).double()
    y = torch.tensor(labels, dtype=torch.float64) * 2 - 1
    xt = add_bias(xs)
    masks = enumerate_arrangements(xt) if sampled is None else sample_arrangements(xt, sampled, seed)[0]
    return xs, y, masks


def admm_time_to_gap(
    x: torch.Tensor, y: torch.Tensor, masks: torch.Tensor, optimum: float, gap: float, rho: float, check_every: int, max_iters: int
) -> tuple[float, int, float]:
    """Seconds of ADMM iterations (setup included) until the exported network is within ``gap``; iterations; final gap."""
    start = time.perf_counter()
    solver = ADMMSolver(add_bias(x), y, masks, beta=1.0, rho=rho)
    state = solver.init_state()
    seconds = time.perf_counter() - start
    rel = float("inf")
    while state.iterations < max_iters:
        start = time.perf_counter()
        state = solver.iterate(state, check_every)
        seconds += time.perf_counter() - start
        u, alpha = recover_network(*solver.split(state.v))
        rel = (network_objective(to_sequential(u, alpha, x.shape[1]), x, y, 1.0) - optimum) / optimum
        if abs(rel) <= gap:
            break
    return seconds, state.iterations, rel


def hinge_admm_time_to_gap(
    x: torch.Tensor, y: torch.Tensor, masks: torch.Tensor, epsilon: float, optimum: float, gap: float, rho: float, check_every: int,
    max_iters: int,
) -> tuple[float, int, float]:
    """Seconds of HingeADMM (setup included) until its convex objective is within ``gap`` with cone violation <= 1e-2."""
    xt = add_bias(x)
    start = time.perf_counter()
    solver = HingeADMM(xt, y, masks, beta=0.1, rho=rho, epsilon=epsilon, n_features=x.shape[1])
    state = solver.init_state()
    seconds = time.perf_counter() - start
    rel = float("inf")
    while state.iterations < max_iters:
        start = time.perf_counter()
        state = solver.iterate(state, check_every)
        seconds += time.perf_counter() - start
        v, w = solver.split(state.v)
        rel = (convex_objective(xt, y, masks, v, w, 0.1, "hinge", epsilon=epsilon, n_features=x.shape[1]) - optimum) / optimum
        if abs(rel) <= gap and cone_violation(xt, masks, v, w, epsilon, x.shape[1]) <= 1e-2:
            break
    return seconds, state.iterations, rel


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.convex_relu", description=__doc__.splitlines()[0])
    parser.add_argument("--gap", type=float, default=1e-3, help="relative objective gap ADMM must reach")
    parser.add_argument("--rho", type=float, default=2.0, help="ADMM penalty (summed-loss scale)")
    parser.add_argument("--check-every", type=int, default=50)
    parser.add_argument("--max-iters", type=int, default=20000)
    parser.add_argument("--hinge-gap", type=float, default=2e-2, help="relative gap for the hinge/robust programs")
    parser.add_argument("--hinge-rho", type=float, default=10.0, help="HingeADMM penalty")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    ratios = []
    print(f"{'problem':<28} {'P':>5} {'optimum':>12} {'CVXPY s':>8} {'Clarabel s':>10} {'ADMM s':>7} {'iters':>6} {'ADMM gap':>9} {'ratio':>6}")
    for name, n, sampled in (("moons n=40, exact", 40, None), ("moons n=300, 100 sampled", 300, 100)):
        x, y, masks = problem(n, sampled)
        _, _, optimum = solve_cvxpy(add_bias(x), y, masks, 1.0, **CLARABEL_SETTINGS)
        info: dict[str, float] = {}
        start = time.perf_counter()
        solve_cvxpy(add_bias(x), y, masks, 1.0, info=info)  # Clarabel's default tolerances
        cvx_seconds = time.perf_counter() - start
        admm_seconds, iters, rel = admm_time_to_gap(x, y, masks, optimum, args.gap, args.rho, args.check_every, args.max_iters)
        ratio = admm_seconds / cvx_seconds
        ratios.append(ratio)
        print(
            f"{name:<28} {len(masks):>5} {optimum:>12.6f} {cvx_seconds:>8.2f} {info['solve_time']:>10.2f} "
            f"{admm_seconds:>7.2f} {iters:>6} {rel:>9.1e} {ratio:>6.2f}"
        )
        if abs(rel) > args.gap:
            print(f"  ADMM did not reach a relative gap of {args.gap:g} in {args.max_iters} iterations (rho={args.rho})")
    print(f"ratio ADMM time to {args.gap:g} gap / CVXPY+Clarabel time: " + ", ".join(f"{r:.2f}" for r in ratios))
    for name, epsilon in (("hinge, 50 sampled", 0.0), ("robust eps=0.1, 50 sampled", 0.1)):
        x, y, masks = problem(40, 50)
        xt = add_bias(x)
        _, _, optimum = solve_cvxpy(xt, y, masks, 0.1, "hinge", epsilon, n_features=2, **CLARABEL_SETTINGS)
        start = time.perf_counter()
        solve_cvxpy(xt, y, masks, 0.1, "hinge", epsilon, n_features=2, info=info)
        cvx_seconds = time.perf_counter() - start
        admm_seconds, iters, rel = hinge_admm_time_to_gap(x, y, masks, epsilon, optimum, args.hinge_gap, args.hinge_rho, args.check_every, 6000)
        print(
            f"{name:<28} {len(masks):>5} {optimum:>12.6f} {cvx_seconds:>8.2f} {info['solve_time']:>10.2f} "
            f"{admm_seconds:>7.2f} {iters:>6} {rel:>9.1e} {admm_seconds / cvx_seconds:>6.2f}"
        )
        if abs(rel) > args.hinge_gap:
            print(f"  HingeADMM did not reach a relative gap of {args.hinge_gap:g} in 6000 iterations (rho={args.hinge_rho})")
    return ratios[0]


if __name__ == "__main__":
    main()
