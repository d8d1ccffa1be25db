"""Permutation ensemble: all members trained as one batched tensor against a loop over members, same run.

Both fit the card's ensemble (k = 8, width 512, 16 members, 200 full-batch GD steps on the 8 basis
vectors, float64) from the same initialisation. Peers: (1) a Python loop over members running the very
same closed-form step on one member at a time (isolates the batching), (2) the usual way, one
``nn.Sequential`` per member trained with autograd and ``torch.optim.SGD``. Each time is the median over
alternating repeats after a warm-up; the ratio is peer time / batched time (target >= 5x against (1)).

    python -m benchmarks.permutations [--k 8 --width 512 --members 16 --steps 200 --repeats 5 --threads 1]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
from torch import nn

from zoo.permutations import ensemble_forward, ensemble_gd_step, init_ensemble, permutation_matrix


def batched(w: torch.Tensor, a: torch.Tensor, x: torch.Tensor, y: torch.Tensor, steps: int) -> torch.Tensor:
    for _ in range(steps):
        w, a, _ = ensemble_gd_step(w, a, x, y, 1.0)
    return ensemble_forward(w, a, x)


def member_loop(w: torch.Tensor, a: torch.Tensor, x: torch.Tensor, y: torch.Tensor, steps: int) -> torch.Tensor:
    outs = []
    for j in range(len(w)):
        wj, aj = w[j : j + 1], a[j : j + 1]
        for _ in range(steps):
            wj, aj, _ = ensemble_gd_step(wj, aj, x, y, 1.0)
        outs.append(ensemble_forward(wj, aj, x))
    return torch.cat(outs)


def autograd_loop(w: torch.Tensor, a: torch.Tensor, x: torch.Tensor, y: torch.Tensor, steps: int) -> torch.Tensor:
    outs = []
    width = w.shape[1]
    for j in range(len(w)):
        net = nn.Sequential(nn.Linear(x.shape[1], width, bias=False), nn.ReLU(), nn.Linear(width, y.shape[1], bias=False)).double()
        with torch.no_grad():
            net[0].weight.copy_(w[j])
            net[2].weight.copy_(a[j].T / math.sqrt(width))  # the 1/sqrt(m) folded in: lr rescaled below
        # f = A^T relu(Wx)/sqrt(m): with V = A/sqrt(m), GD on A with lr 1 is GD on V with lr 1/m
        opt = torch.optim.SGD([{"params": net[0].parameters(), "lr": 1.0}, {"params": net[2].parameters(), "lr": 1.0 / width}])
        for _ in range(steps):
            opt.zero_grad()
            (0.5 * (net(x) - y).pow(2).sum() / len(x)).backward()
            opt.step()
        with torch.no_grad():
            outs.append(net(x).unsqueeze(0))
    return torch.cat(outs)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.permutations", description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--members", type=int, default=16)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    x = torch.eye(args.k, dtype=torch.float64)
    y = x @ permutation_matrix(torch.randperm(args.k, generator=torch.Generator().manual_seed(0)))
    w, a = init_ensemble(args.members, args.k, args.width, torch.Generator().manual_seed(0))
    runs = {"batched": batched, "member_loop": member_loop, "autograd_loop": autograd_loop}
    outs = {name: fn(w, a, x, y, 2) for name, fn in runs.items()}  # warm-up
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            outs[name] = fn(w, a, x, y, args.steps)
            times[name].append(time.perf_counter() - start)
    for name in ("member_loop", "autograd_loop"):  # same arithmetic: same trained outputs
        assert torch.allclose(outs[name], outs["batched"], atol=1e-8), name
    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"{args.members} members, width {args.width}, k {args.k}, {args.steps} GD steps, {args.threads} thread(s), median of {args.repeats}")
    for name in runs:
        print(f"{name:>14}: {med[name] * 1e3:9.1f} ms   ratio to batched {med[name] / med['batched']:6.2f}x")
    result = {f"{name}_s": value for name, value in med.items()}
    result["ratio_member_loop"] = med["member_loop"] / med["batched"]
    result["ratio_autograd_loop"] = med["autograd_loop"] / med["batched"]
    print(f"batched vs member loop: {result['ratio_member_loop']:.2f}x (target >= 5x); vs autograd loop: {result['ratio_autograd_loop']:.2f}x")
    return result


if __name__ == "__main__":
    main()
