"""Training time with ``DynamicEMA`` against Lightning's ``EMAWeightAveraging`` (and no averaging).

The peer is the identical training run (timm ResNet-18, random 3x32x32 inputs, batch 32, SGD,
CPU, same seeds and steps) with Lightning's fixed-decay EMA callback (decay 0.99, the dynamic
rule's fallback); a run without any averaging shows what either costs. The dynamic rule
reads the gradients and keeps the previous ones, so per step it does about twice the memory
traffic of a fixed EMA (three L1 norms, the previous-gradient copy); the whole-run ratio shows
how much of that a real training step hides. Runs alternate (after one warm-up each) and
medians are compared; process CPU time is printed beside wall time (steadier on a shared machine),
and the update alone is timed too (median over steps, inside the runs).

    python -m benchmarks.dynamic_ema [--steps 30] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import timm
import torch
from lightning.pytorch import Callback, seed_everything
from lightning.pytorch.callbacks import EMAWeightAveraging
from torch.utils.data import DataLoader, TensorDataset

from benchmarks._common import PlainClassifier, bare_trainer, quiet_lightning
from zoo.callbacks.dynamic_ema import DynamicEMA


class _UpdateTimer(Callback):
    """Times the averaging callback's ``on_train_batch_end`` (the update) at every step."""

    def __init__(self, inner: Callback) -> None:
        self.inner, self.seconds = inner, []  # type: list[float]
        original = inner.on_train_batch_end

        def timed(*args: Any, **kwargs: Any) -> None:
            start = time.perf_counter()
            original(*args, **kwargs)
            self.seconds.append(time.perf_counter() - start)

        inner.on_train_batch_end = timed  # type: ignore[method-assign]


def fit_seconds(kind: str, steps: int) -> tuple[float, float, float]:
    """One training run; returns (wall seconds, process CPU seconds, median update milliseconds)."""
    seed_everything(0, verbose=False)
    gen = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(steps * 32, 3, 32, 32, generator=gen), torch.randint(0, 10, (steps * 32,), generator=gen))
    callbacks: list[Callback] = []
    timer = None
    if kind == "lightning_ema":
        callbacks = [EMAWeightAveraging(decay=0.99)]
    elif kind == "dynamic_ema":
        callbacks = [DynamicEMA()]
    if callbacks:
        timer = _UpdateTimer(callbacks[0])
    trainer = bare_trainer(max_epochs=1, callbacks=callbacks)
    model = PlainClassifier(timm.create_model("resnet18", pretrained=False, num_classes=10))  # knows nothing of the callbacks
    start, cpu_start = time.perf_counter(), time.process_time()
    trainer.fit(model, DataLoader(data, batch_size=32))
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    update_ms = 1e3 * statistics.median(timer.seconds) if timer and timer.seconds else 0.0
    return seconds, cpu_seconds, update_ms


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dynamic_ema", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    quiet_lightning()

    kinds = ("none", "lightning_ema", "dynamic_ema")
    for kind in kinds:  # warm-up: imports, allocator, timm model construction
        fit_seconds(kind, max(4, args.steps // 5))
    runs: dict[str, list[tuple[float, float, float]]] = {k: [] for k in kinds}
    for _ in range(args.repeats):
        for kind in kinds:
            runs[kind].append(fit_seconds(kind, args.steps))
    fit = {k: statistics.median(r[0] for r in v) for k, v in runs.items()}
    cpu = {k: statistics.median(r[1] for r in v) for k, v in runs.items()}
    update = {k: statistics.median(r[2] for r in v) for k, v in runs.items()}

    print(f"timm resnet18, 3x32x32 random inputs, batch 32, {args.steps} SGD steps, CPU, {args.threads} thread(s); median of {args.repeats}")
    print(f"{'run':<32}{'fit s':>8}{'CPU s':>8}{'ms/step':>10}{'update ms':>11}")
    labels = {"none": "no averaging", "lightning_ema": "Lightning EMAWeightAveraging", "dynamic_ema": "DynamicEMA (CoIN)"}
    for kind in kinds:
        print(f"{labels[kind]:<32}{fit[kind]:>8.2f}{cpu[kind]:>8.2f}{1e3 * fit[kind] / args.steps:>10.1f}{update[kind]:>11.2f}")
    ratio = fit["dynamic_ema"] / fit["lightning_ema"]
    print(f"whole-run time ratio DynamicEMA / Lightning EMAWeightAveraging: {ratio:.3f}")
    print(f"whole-run time ratio DynamicEMA / no averaging:                 {fit['dynamic_ema'] / fit['none']:.3f}")
    print(f"whole-run time ratio Lightning EMA / no averaging:              {fit['lightning_ema'] / fit['none']:.3f}")
    print(f"whole-run CPU-time ratio DynamicEMA / Lightning EMA:            {cpu['dynamic_ema'] / cpu['lightning_ema']:.3f}")
    if update["lightning_ema"]:
        print(f"update-only ratio DynamicEMA / Lightning EMA:                   {update['dynamic_ema'] / update['lightning_ema']:.2f}")
    return ratio


if __name__ == "__main__":
    main()
