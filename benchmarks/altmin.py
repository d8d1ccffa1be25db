"""AltMin: one round's flops and wall time, inexact solves against the exact solve, at k = 50.

The named peer is the exact AltMin round (Jain, Netrapalli, Sanghavi 2013: every ``k x k`` normal
equation formed through a sparse product and Cholesky-solved). Each row is one :func:`altmin_round` from
the same spectral initialisation of a seeded ``m x n`` rank-``k`` matrix observed with probability ``p``:
CG with ``--cg-iters`` iterations (warm), the same with the CountSketch preconditioner, and the exact
solve. Flops are counted from the operations (:func:`round_flops`); the wall time is the best of
``--repeats`` identical rounds. Ratios below 1 mean cheaper than exact.

    python -m benchmarks.altmin [--m 1000] [--n 1000] [--rank 50] [--p 0.3] [--cg-iters 4] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from zoo.altmin import _initial_right, altmin_round, relative_error, round_flops, spectral_init
from zoo.datamodules.completion import make_completion_problem


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m", type=int, default=1000)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--rank", type=int, default=50)
    parser.add_argument("--p", type=float, default=0.3)
    parser.add_argument("--cg-iters", type=int, default=4)
    parser.add_argument("--sketch-factor", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="wall time is the best of this many identical rounds")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    a, b, mask = make_completion_problem(args.m, args.n, args.rank, args.p, args.seed)
    idx = mask.nonzero()
    rows, cols = idx[:, 0], idx[:, 1]
    obs = (rows, cols, (a[rows] * b[cols]).sum(1))
    u0 = spectral_init(*obs, args.m, args.n, args.rank, args.p)
    v0 = _initial_right(u0, *obs, args.n, args.p)
    sketch_rows = max(1, math.ceil(args.sketch_factor * args.rank))
    print(f"one AltMin round: {args.m} x {args.n}, rank {args.rank}, p {args.p} (|Omega| = {len(rows)}), {args.threads} thread(s)")
    print(f"{'solver':>22} | {'flops':>10} {'seconds':>8} {'rel. error':>10} | {'flops/exact':>11} {'time/exact':>10}")
    results = {}
    for label, solver in (("exact (peer)", "exact"), (f"CG-{args.cg_iters}, warm", "cg"), (f"sketch-PCG-{args.cg_iters}, warm", "sketch_cg")):
        best = math.inf
        for _ in range(max(1, args.repeats)):
            gen = torch.Generator().manual_seed(args.seed)
            start = time.perf_counter()
            u, v = altmin_round(u0, v0, obs, solver=solver, cg_iters=args.cg_iters, sketch_rows=sketch_rows, generator=gen)
            best = min(best, time.perf_counter() - start)
        flops = round_flops(solver, len(rows), args.m, args.n, args.rank, args.cg_iters, sketch_rows)
        results[solver] = (flops, best)
        peer_flops, peer_time = results["exact"]
        err = relative_error(u, v, a, b)
        print(f"{label:>22} | {flops:10.3e} {best:8.3f} {err:10.2e} | {flops / peer_flops:11.3f} {best / peer_time:10.3f}")


if __name__ == "__main__":
    main()
