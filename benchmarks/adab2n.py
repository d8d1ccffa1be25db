"""AdaB²N forward + backward against ``nn.BatchNorm2d`` on the same input, in one run.

The peer is torch's fused BatchNorm kernel in training mode. AdaB²N is timed in its two
training paths: plain batch statistics (no counts, as at task 0 of the official code) and the
Bayesian task-weighted statistics (counts set, a batch mixing three of five tasks). Each
measurement is one training forward, a loss on the output, and the backward; the three are
timed alternately after warm-up and the medians compared. Target: within 2x of BatchNorm.
``--clock cpu`` times the process's CPU time instead of the wall clock (steadier on a shared
machine; CPU devices only).

    python -m benchmarks.adab2n [--batch 32 --channels 64 --size 16 --repeats 51 --threads 1 --clock wall]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from zoo.adab2n import AdaB2N


def step(layer: nn.Module, x: torch.Tensor, grad: torch.Tensor, labels: torch.Tensor | None) -> Callable[[], None]:
    def run() -> None:
        if labels is not None:
            layer.set_counts(labels, classes_per_task=2, validate=False)  # type: ignore[operator]
        x.grad = None
        layer.zero_grad(set_to_none=True)
        layer(x).backward(grad)

    return run


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.adab2n", description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=51)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="wall clock, or this process's CPU time")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    torch.manual_seed(0)
    x = torch.randn(args.batch, args.channels, args.size, args.size, device=device, requires_grad=True)
    grad = torch.randn_like(x)
    labels = torch.arange(args.batch, device=device) % 6  # tasks 0, 1, 2 of 5 (two classes per task)
    bn = nn.BatchNorm2d(args.channels).to(device).train()
    plain = AdaB2N(args.channels, num_tasks=5, kappa=0.7).to(device).train()
    weighted = AdaB2N(args.channels, num_tasks=5, kappa=0.7).to(device).train()
    weighted.cur_tasks.fill_(2)
    runs = {"bn": step(bn, x, grad, None), "adab2n_plain": step(plain, x, grad, None), "adab2n_weighted": step(weighted, x, grad, labels)}

    if args.clock == "cpu" and device.type != "cpu":
        parser.error("--clock cpu measures CPU time, which misses the accelerator's work: use --clock wall")
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for run in runs.values():  # warm-up
        for _ in range(5):
            run()
    times: dict[str, list[float]] = {k: [] for k in runs}
    names = list(runs)
    for i in range(args.repeats):
        for name in names[i % len(names) :] + names[: i % len(names)]:  # rotate the order
            sync()
            start = clock()
            runs[name]()
            sync()
            times[name].append(clock() - start)

    ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
    print(
        f"adab2n: forward + backward, input {args.batch}x{args.channels}x{args.size}x{args.size} on {device}, "
        f"median of {args.repeats}, {args.threads} thread(s), {args.clock} clock"
    )
    print(f"  {'nn.BatchNorm2d (train)':<44}{ms['bn']:8.3f} ms")
    print(f"  {'AdaB2N, plain batch statistics':<44}{ms['adab2n_plain']:8.3f} ms")
    print(f"  {'AdaB2N, task-weighted statistics':<44}{ms['adab2n_weighted']:8.3f} ms")
    ratios = {k: ms[k] / ms["bn"] for k in ("adab2n_plain", "adab2n_weighted")}
    print(f"ratio AdaB2N / BatchNorm2d: plain {ratios['adab2n_plain']:.2f}x, task-weighted {ratios['adab2n_weighted']:.2f}x (target <= 2x)")
    return ratios


if __name__ == "__main__":
    main()
