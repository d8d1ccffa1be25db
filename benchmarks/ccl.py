"""A counter-current learning step against a backprop step of the same forward net, in one run.

Both use :class:`zoo.ccl.CounterCurrentClassifier`'s ``training_loss`` (``mode="ccl"`` / ``"bp"``)
and the same update: zero grads, backward, gradient-norm clip, SGD step(s). CCL also runs the
feedback net (the ``K x K`` identity down ``L`` layers), the local losses and a second clip and
SGD step. The default net is the paper's MNIST MLP (784-256x5-10, batch 256). Median over
alternating repeats after warm-up. Target: CCL within 2.5x of backprop (two networks).

    python -m benchmarks.ccl [--sizes 784,256,256,256,256,256,10 --batch 256 --repeats 51 --threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from zoo.ccl import CounterCurrentClassifier


def _step(model: CounterCurrentClassifier, opts: list[torch.optim.Optimizer], x: torch.Tensor, y: torch.Tensor) -> None:
    """One update as the module's manual optimisation does it, without the Trainer around it."""
    for opt in opts:
        opt.zero_grad()
    model.training_loss(x, y).backward()
    nn.utils.clip_grad_norm_(model.net.forward_params(), 1.0)
    if len(opts) > 1:
        nn.utils.clip_grad_norm_(model.net.backward_params(), 1.0)
    for opt in opts:
        opt.step()


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ccl", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="784,256,256,256,256,256,10")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=51)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sizes = [int(s) for s in args.sizes.split(",")]

    torch.manual_seed(0)
    models = {mode: CounterCurrentClassifier(sizes, mode=mode).to(device) for mode in ("bp", "ccl")}
    opts = {
        "bp": [torch.optim.SGD(models["bp"].net.forward_params(), lr=0.01)],
        "ccl": [torch.optim.SGD(models["ccl"].net.forward_params(), lr=0.01), torch.optim.SGD(models["ccl"].net.backward_params(), lr=0.01)],
    }
    x = torch.randn(args.batch, sizes[0], device=device)
    y = torch.randint(0, sizes[-1], (args.batch,), device=device)
    for mode in models:  # warm-up
        for _ in range(5):
            _step(models[mode], opts[mode], x, y)

    times: dict[str, list[float]] = {k: [] for k in models}
    names = list(models)
    for i in range(args.repeats):
        for mode in names[i % 2 :] + names[: i % 2]:  # alternate the order
            sync()
            t0 = time.perf_counter()
            _step(models[mode], opts[mode], x, y)
            sync()
            times[mode].append(time.perf_counter() - t0)

    ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
    ratio = ms["ccl"] / ms["bp"]
    print(f"ccl: MLP {'-'.join(map(str, sizes))}, batch {args.batch}, on {device}, median of {args.repeats}, {args.threads} thread(s)")
    print(f"  backprop step {ms['bp']:.3f} ms, CCL step {ms['ccl']:.3f} ms (forward + feedback nets)")
    print(f"ratio CCL / backprop: {ratio:.2f}x (target <= 2.5x)")
    return {"step": ratio}


if __name__ == "__main__":
    main()
