"""learning-to-relax: SOR iterations saved per second spent choosing omega, against Gauss-Seidel.

The claim's sequence (1,500 shifted 10 x 10 Laplacians, high-variance offsets, 12 omegas in [1, 1.9],
tol 1e-8). Each learner serves the sequence with every count read from the precomputed table (real SOR
solves, not timed here), so the timed loop is the learner's own work: probabilities (Newton), sampling,
update. Saved iterations are Gauss-Seidel's total minus the learner's. The named peer is SOR itself,
timed in the same run: one-system ``sor_iterations`` solves at omega = 1.8 give seconds per SOR
iteration, so ``saved x (s / iteration) / choosing seconds`` is the solve time saved per second of
choosing (above 1: choosing pays for itself).

    python -m benchmarks.learning_to_relax [--systems 1500] [--seed 0] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch

from zoo.datamodules import LinearSystemsDataModule
from zoo.learning_to_relax import SORCostCache, TsallisINF, TsallisINFCB, omega_grid, sor_iterations


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--systems", type=int, default=1500)
    parser.add_argument("--grid-size", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    systems = LinearSystemsDataModule(systems=args.systems, seed=args.seed).sequence("train")
    grid = omega_grid(1.0, 1.9, args.grid_size)
    costs = SORCostCache(grid)
    start = time.perf_counter()
    table = costs.table(systems)
    table_seconds = time.perf_counter() - start
    gauss_seidel = float(table[:, 0].sum())

    sample = systems[:: max(1, len(systems) // 50)]  # the peer: one-system SOR solves, timed in this run
    start = time.perf_counter()
    iterations = sum(sor_iterations(s.A, s.b, 1.8) for s in sample)
    per_iteration = (time.perf_counter() - start) / iterations

    print(f"{len(systems)} systems, {len(grid)} omegas in [1, 1.9]; Gauss-Seidel {gauss_seidel:.0f} iterations; table {table_seconds:.1f} s")
    print(f"peer: one-system SOR at omega 1.8, {per_iteration * 1e6:.1f} us per iteration ({iterations} iterations on {len(sample)} systems)")
    print(f"{'learner':>15} | {'iterations':>10} {'saved':>9} {'choose s':>9} {'us/system':>9} | {'saved/s':>10} {'SOR s saved / choose s':>22}")
    for name, learner in (("Tsallis-INF", TsallisINF(grid, costs, args.seed)), ("Tsallis-INF-CB", TsallisINFCB(grid, costs, args.seed))):
        start = time.perf_counter()
        total = sum(learner.serve(s) for s in systems)
        choose = time.perf_counter() - start
        saved, per_system = gauss_seidel - total, choose / len(systems) * 1e6
        print(f"{name:>15} | {total:10.0f} {saved:9.0f} {choose:9.3f} {per_system:9.1f} | {saved / choose:10.3g} {saved * per_iteration / choose:22.1f}")


if __name__ == "__main__":
    main()
