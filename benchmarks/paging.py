"""Paging requests per second: follow-the-prediction (and the zoo's other policies) against a plain LRU loop.

The peer is the simplest LRU a user would write, an ``OrderedDict`` with ``move_to_end`` and
``popitem(last=False)``, serving the same trace in the same run. Each policy serves the card's trace
(50,000 requests over 500 pages, phase-shifting Zipf(0.8), k = 32) with its true bits; the time is the
median over alternating repeats, and the ratio is the policy's requests per second over the peer's.

    python -m benchmarks.paging [--length 50000 --pages 500 --k 32 --repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import OrderedDict

from zoo.datamodules.paging import zipf_trace
from zoo.paging import build_policy, discard_bits, phase_bits


def plain_lru(requests: list[int], k: int) -> int:
    """The peer: an OrderedDict LRU; the number of faults."""
    cache: OrderedDict[int, None] = OrderedDict()
    faults = 0
    for page in requests:
        if page in cache:
            cache.move_to_end(page)
        else:
            faults += 1
            if len(cache) >= k:
                cache.popitem(last=False)
            cache[page] = None
    return faults


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.paging", description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=50000)
    parser.add_argument("--pages", type=int, default=500)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    trace = zipf_trace(args.length, args.pages, 0.8, 2500, 0)
    dbits, pbits = discard_bits(trace, args.k), phase_bits(trace, args.k)
    streams = {p: list(zip(trace, pbits if p.startswith("phase") else dbits)) for p in ("ftp", "lru", "robust", "phase", "marking")}
    times: dict[str, list[float]] = {"plain": [], **{p: [] for p in streams}}
    faults: dict[str, float] = {}
    for _ in range(args.repeats):  # alternate, so drifts in machine load hit every policy alike
        start = time.perf_counter()
        faults["plain"] = plain_lru(trace, args.k)
        times["plain"].append(time.perf_counter() - start)
        for policy, stream in streams.items():
            algo = build_policy(policy, args.k)
            start = time.perf_counter()
            faults[policy] = algo.serve_all(stream)
            times[policy].append(time.perf_counter() - start)
    assert faults["lru"] == faults["plain"], "the zoo's LRU must fault exactly as the plain loop"
    rate = {name: args.length / statistics.median(t) for name, t in times.items()}
    print(f"paging: {args.length:,} requests, {args.pages} pages, k = {args.k}, median of {args.repeats} alternating repeats")
    print(f"  {'policy':<10}{'requests/s':>14}{'x plain LRU':>14}{'faults':>10}")
    for name in times:
        print(f"  {name:<10}{rate[name]:14,.0f}{rate[name] / rate['plain']:14.4f}{faults[name]:10,.0f}")
    print(f"FtP / plain OrderedDict LRU requests per second: {rate['ftp'] / rate['plain']:.4f}")
    return {name: rate[name] / rate["plain"] for name in times}


if __name__ == "__main__":
    main()
