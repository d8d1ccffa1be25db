"""SinkGD against AdamW on the same model, in one run: step time and optimizer state bytes.

The model is the card's MLP widened (``64 -> hidden x layers -> 10``; default 1024 x 2, about
1.1 M parameters). Two timings, each the median over alternating repeats after warm-up:
``optimizer.step()`` alone (the optimizer's own cost: SR-Sinkhorn with L=5 vs AdamW's moment
updates) and a whole training step (forward, backward, step). Target: SinkGD within 1.5x of
AdamW, with 0 bytes of optimizer state against AdamW's 2x the parameters.

    python -m benchmarks.sinkgd [--hidden 1024 --layers 2 --batch 64 --iters 5 --repeats 51 --threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from zoo.sinkgd import SinkGD, optimizer_state_bytes


def build(hidden: int, layers: int, device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    dims = [64, *([hidden] * layers)]
    mods: list[nn.Module] = []
    for d_in, d_out in zip(dims[:-1], dims[1:]):
        mods += [nn.Linear(d_in, d_out), nn.ReLU()]
    mods.append(nn.Linear(dims[-1], 10))
    return nn.Sequential(*mods).to(device)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sinkgd", description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--iters", type=int, default=5, help="SinkGD's L")
    parser.add_argument("--repeats", type=int, default=51)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    models = {"adamw": build(args.hidden, args.layers, device), "sinkgd": build(args.hidden, args.layers, device)}
    opts: dict[str, torch.optim.Optimizer] = {
        "adamw": torch.optim.AdamW(models["adamw"].parameters(), lr=1e-3),
        "sinkgd": SinkGD(models["sinkgd"].parameters(), lr=1e-3, sinkhorn_iters=args.iters),
    }
    x = torch.randn(args.batch, 64, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)

    def backward(name: str) -> None:
        opts[name].zero_grad(set_to_none=False)
        F.cross_entropy(models[name](x), y).backward()

    def train_step(name: str) -> None:
        backward(name)
        opts[name].step()

    for name in opts:  # warm-up (AdamW allocates its state here)
        for _ in range(5):
            train_step(name)

    step_times: dict[str, list[float]] = {k: [] for k in opts}
    full_times: dict[str, list[float]] = {k: [] for k in opts}
    names = list(opts)
    for i in range(args.repeats):
        for name in names[i % 2 :] + names[: i % 2]:  # alternate the order
            backward(name)
            sync()
            t0 = time.perf_counter()
            opts[name].step()
            sync()
            step_times[name].append(time.perf_counter() - t0)
            sync()
            t0 = time.perf_counter()
            train_step(name)
            sync()
            full_times[name].append(time.perf_counter() - t0)

    step_ms = {k: 1000 * statistics.median(v) for k, v in step_times.items()}
    full_ms = {k: 1000 * statistics.median(v) for k, v in full_times.items()}
    n_params = sum(p.numel() for p in models["adamw"].parameters())
    param_bytes = sum(p.numel() * p.element_size() for p in models["adamw"].parameters())
    state = {k: optimizer_state_bytes(o) for k, o in opts.items()}
    print(
        f"sinkgd: MLP 64-{'-'.join([str(args.hidden)] * args.layers)}-10 ({n_params / 1e6:.2f} M params), batch {args.batch}, "
        f"SinkGD L={args.iters}, on {device}, median of {args.repeats}, {args.threads} thread(s)"
    )
    print(f"  {'':<12}{'optimizer.step':>16}{'train step':>14}{'state bytes':>16}{'x params':>10}")
    for k, label in (("adamw", "AdamW"), ("sinkgd", "SinkGD")):
        print(f"  {label:<12}{step_ms[k]:13.3f} ms{full_ms[k]:11.3f} ms{state[k]:16,d}{state[k] / param_bytes:10.2f}")
    ratios = {"step": step_ms["sinkgd"] / step_ms["adamw"], "train_step": full_ms["sinkgd"] / full_ms["adamw"]}
    print(
        f"ratio SinkGD / AdamW: optimizer.step {ratios['step']:.2f}x, train step {ratios['train_step']:.2f}x (target <= 1.5x); "
        f"state {state['sinkgd']} bytes vs {state['adamw']:,d} ({state['adamw'] / param_bytes:.2f}x params)"
    )
    return ratios


if __name__ == "__main__":
    main()
