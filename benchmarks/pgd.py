"""PGD-k against k forward+backward passes of the same model, in one run.

k forward+backward passes with respect to the input is the floor of any k-step attack; the
ratio shows what :class:`zoo.nn.attacks.PGD` adds on top (the random start, the projection,
the clipping, the mode and grad-mode bookkeeping). Target: within 1.15x. The two are timed
alternately after a warm-up and the medians compared.

    python -m benchmarks.pgd [--model resnet18] [--steps 10] [--batch 32] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch
import torch.nn.functional as F

from zoo.nn.attacks import PGD


def floor_k_passes(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, k: int) -> None:
    """k forward+backward passes with respect to the input, nothing else."""
    for _ in range(k):
        x_in = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x_in), y), x_in)


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pgd", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18", help="a timm model name")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False, num_classes=10).eval()
    x, y = torch.rand(args.batch, 3, 32, 32), torch.randint(0, 10, (args.batch,))
    attack = PGD(eps=8 / 255, alpha=2 / 255, steps=args.steps)
    runs: dict[str, list[float]] = {"pgd": [], "floor": []}
    jobs = {"pgd": lambda: attack(model, x, y), "floor": lambda: floor_k_passes(model, x, y, args.steps)}
    for job in jobs.values():  # warm-up
        job()
    for _ in range(args.repeats):
        for name, job in jobs.items():
            start = time.perf_counter()
            job()
            runs[name].append(time.perf_counter() - start)
    pgd, floor = statistics.median(runs["pgd"]), statistics.median(runs["floor"])
    ratio = pgd / floor
    print(f"{args.model}, batch {args.batch}, 32x32, {args.steps} steps, {args.threads} threads, median of {args.repeats}")
    print(f"PGD-{args.steps}: {pgd * 1e3:.1f} ms   {args.steps} x forward+backward: {floor * 1e3:.1f} ms")
    print(f"ratio PGD / k passes: {ratio:.3f} (target <= 1.15)")
    return ratio


if __name__ == "__main__":
    main()
