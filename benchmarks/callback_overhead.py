"""Training time with ``NeuralCollapseMonitor(every_n_epochs=1)`` against the same run without it.

The peer is the identical training run (same model, data, seeds, epochs) with no callback; with
the monitor the run trains to bit-identical weights. The monitor adds, every epoch, one no-grad
eval-mode forward over the train set in dataset order, the per-class feature sums, a ``K x K``
eigendecomposition and the projection of the held features on at most ``K - 1`` directions (``O(N d K)``,
no ``d x d`` product), and Lightning's logging of four values; the ratio shows what measuring neural collapse
at every epoch costs on a small model, the worst case (with ``every_n_epochs=10``, the default, it
is a tenth of the extra time). Runs alternate (after one warm-up each) and the medians are
compared, in wall-clock time and in the process's CPU time; on a shared machine the wall-clock
ratio moves with the other load (the CPU-time ratio much less), so use more ``--repeats``.

    python -m benchmarks.callback_overhead [--epochs 10] [--repeats 5] [--hidden 256] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from lightning.pytorch import seed_everything
from torch import nn

from benchmarks._common import PlainClassifier, bare_trainer, quiet_lightning
from zoo.callbacks.neural_collapse import NeuralCollapseMonitor
from zoo.datamodules.digits import DigitsDataModule


def digits_mlp(hidden: int) -> PlainClassifier:
    """A plain MLP classifier on the 64 digit pixels (knows nothing of the monitor)."""
    return PlainClassifier(nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 10)))


def fit_seconds(monitor: bool, epochs: int, hidden: int) -> tuple[float, float, int]:
    """Wall-clock and CPU seconds of one ``fit`` (CPU time ignores the time other processes hold the cores), and the measurements made."""
    seed_everything(0, verbose=False)
    callbacks = [NeuralCollapseMonitor(every_n_epochs=1, classifier=["net.4"])] if monitor else []
    trainer = bare_trainer(max_epochs=epochs, callbacks=callbacks)
    model, data = digits_mlp(hidden), DigitsDataModule(batch_size=64, seed=0)
    start, cpu_start = time.perf_counter(), time.process_time()
    trainer.fit(model, data)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return seconds, cpu, len(callbacks[0].history) if monitor else 0


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.callback_overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    quiet_lightning()

    fit_seconds(True, 1, args.hidden)  # warm-up: imports, first-call costs
    fit_seconds(False, 1, args.hidden)
    times: dict[str, list[float]] = {"on": [], "off": []}
    cpu: dict[str, list[float]] = {"on": [], "off": []}
    for i in range(args.repeats):
        for arm in (("on", "off") if i % 2 == 0 else ("off", "on")):
            seconds, cpu_seconds, measured = fit_seconds(arm == "on", args.epochs, args.hidden)
            if arm == "on":
                assert measured == args.epochs, "the monitor must measure every epoch"
            times[arm].append(seconds)
            cpu[arm].append(cpu_seconds)
    on, off = statistics.median(times["on"]), statistics.median(times["off"])
    ratio = on / off
    print(
        f"digits MLP 64-{args.hidden}-{args.hidden}-10, {args.epochs} epochs, batch 64, {args.threads} thread(s), "
        f"median of {args.repeats}: with NeuralCollapseMonitor(every_n_epochs=1) {on:.2f} s, without {off:.2f} s"
    )
    print(f"training time ratio (on / off): {ratio:.2f}")
    cpu_on, cpu_off = statistics.median(cpu["on"]), statistics.median(cpu["off"])
    print(f"CPU time: with {cpu_on:.2f} s, without {cpu_off:.2f} s, ratio (on / off): {cpu_on / cpu_off:.2f}")
    return ratio


if __name__ == "__main__":
    main()
