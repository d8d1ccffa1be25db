"""Training time per step with ``AuxFreeLoadBalancing`` against the same run without it.

The peer is the identical TinyMoE run (same model, data, seeds, steps; ``balance="bias"``, so the
router and its load counting are the same) with no callback. The callback adds, per step, one
copy of the router's ``(num_experts,)`` load vector, a sign (or scaled difference), an in-place add
and two ``log`` calls. Runs alternate (after one warm-up each) and the medians are compared;
the issue's target is under 5 % (ratio < 1.05).

    python -m benchmarks.alf_lb [--steps 100] [--repeats 5] [--tokens 4096] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
from lightning.pytorch import seed_everything

from benchmarks._common import bare_trainer, quiet_lightning
from zoo.alf_lb import TinyMoE
from zoo.callbacks.alf_lb import AuxFreeLoadBalancing
from zoo.datamodules.tokens import ZipfTokenDataModule


class _TimedALF(AuxFreeLoadBalancing):
    """The callback, timing its own per-step hook (a noise-free lower view of the overhead)."""

    hook_seconds = 0.0

    def on_train_batch_end(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        super().on_train_batch_end(*args, **kwargs)
        _TimedALF.hook_seconds += time.perf_counter() - start


def fit_seconds(with_callback: bool, steps: int, tokens: int) -> float:
    seed_everything(0, verbose=False)
    callbacks = [_TimedALF(update_rate=1e-3, rule="sign")] if with_callback else []
    trainer = bare_trainer(max_steps=steps, callbacks=callbacks, limit_val_batches=0)
    model = TinyMoE(balance="bias")
    data = ZipfTokenDataModule(zipf=0.6, tokens_per_batch=tokens, steps_per_epoch=steps)
    data.setup()
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*router bias is still zero.*")
        trainer.fit(model, data)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.alf_lb", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    quiet_lightning()

    fit_seconds(True, 5, args.tokens)  # warm-up
    fit_seconds(False, 5, args.tokens)
    _TimedALF.hook_seconds = 0.0
    times: dict[str, list[float]] = {"on": [], "off": []}
    for i in range(args.repeats):
        for arm in ("on", "off") if i % 2 == 0 else ("off", "on"):
            times[arm].append(fit_seconds(arm == "on", args.steps, args.tokens))
    on, off = statistics.median(times["on"]), statistics.median(times["off"])
    ratio = on / off
    print(
        f"TinyMoE 8 experts top-2 d64, {args.tokens} tokens/batch, {args.steps} steps, {args.threads} thread(s), median of "
        f"{args.repeats}: with AuxFreeLoadBalancing {1000 * on / args.steps:.1f} ms/step, without {1000 * off / args.steps:.1f} ms/step"
    )
    hook_ms = 1000 * _TimedALF.hook_seconds / (args.repeats * args.steps)
    print(f"time inside the callback's per-step hook: {hook_ms:.3f} ms/step = {100 * hook_ms / (1000 * off / args.steps):.2f} % of a step")
    print(f"training time ratio (on / off): {ratio:.3f} (overhead {100 * (ratio - 1):+.1f} %, target < 5 %)")
    return ratio


if __name__ == "__main__":
    main()
