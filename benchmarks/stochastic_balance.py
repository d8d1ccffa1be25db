"""The matching-LP bound's time (HiGHS) against the online algorithms' time on the same instance.

For each graph family of the claim (triangular n = 200, KVV-type n = 100, random 100 x 4,000), the peer is
serving the whole arrival stream with Stochastic Balance and with Greedy (50 outcome realisations, as in
the claim); the LP time includes grouping the arrivals into distinct types. Medians of ``--repeats``.

    python -m benchmarks.stochastic_balance [--repeats 3] [--samples 50] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from zoo.datamodules.matching import MatchingDataModule
from zoo.stochastic_balance import Greedy, StochasticBalance, aggregate_arrivals, matching_lp_upper_bound

FAMILIES = {
    "triangular n=200": {"family": "triangular", "num_offline": 200},
    "KVV-type n=100": {"family": "kvv", "num_offline": 100},
    "random 100 x 4000": {"family": "random", "num_offline": 100, "arrivals": 4000},
}


def _median(fn: Callable[[], float], repeats: int) -> tuple[float, float]:
    times, out = [], 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def bench(name: str, kwargs: dict, samples: int, repeats: int) -> dict[str, float]:
    dm = MatchingDataModule(**kwargs)
    types, order = dm.instance()
    rows = [types[i] for i in order]
    n = kwargs["num_offline"]
    t_lp, lp = _median(lambda: matching_lp_upper_bound(*aggregate_arrivals(rows)), repeats)
    t_sb, sb = _median(lambda: StochasticBalance(n, samples, 0).serve_all(rows), repeats)
    t_gr, gr = _median(lambda: Greedy(n, samples, 0).serve_all(rows), repeats)
    print(
        f"{name}: {len(rows)} arrivals, LP {lp:.2f} in {1000 * t_lp:.0f} ms; "
        f"SB {sb / lp:.3f} of LP in {1000 * t_sb:.0f} ms, Greedy {gr / lp:.3f} in {1000 * t_gr:.0f} ms ({samples} realisations)"
    )
    print(f"  LP time / SB time: {t_lp / t_sb:.3f}; LP time / Greedy time: {t_lp / t_gr:.3f}")
    return {"lp_over_sb": t_lp / t_sb, "lp_over_greedy": t_lp / t_gr}


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    return {name: bench(name, kwargs, args.samples, args.repeats) for name, kwargs in FAMILIES.items()}


if __name__ == "__main__":
    main()
