"""Training time per step with ``AioliMixing`` against the same run with stratified sampling.

The peer is the identical TinyGPT run (same model, data, seeds, steps) with no callback, i.e.
uniform proportions. Aioli's LearnParams steps are ordinary training steps, so what it adds is
``k * lp_rounds + 1`` evaluations of the fixed per-group validation batches per round, the
bookkeeping and the logging. Runs alternate (after one warm-up each) and the medians are
compared; the issue's target is under 10 % (ratio < 1.10). ``--plot PATH`` also trains the claim's
600-step run once and draws the proportions Aioli chose, round by round.

    python -m benchmarks.aioli [--steps 200] [--repeats 3] [--val-size 128] [--threads 1] [--plot PATH]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from lightning.pytorch import seed_everything

from benchmarks._common import bare_trainer, quiet_lightning
from zoo.aioli import TinyGPT
from zoo.callbacks.aioli import AioliMixing
from zoo.datamodules.mixture import MarkovMixtureDataModule


def fit(with_callback: bool, steps: int, val_size: int, seed: int = 0) -> tuple[float, AioliMixing | None]:
    seed_everything(seed, verbose=False)
    cb = AioliMixing(update_steps=100, lp_rounds=1, lp_steps=2, eta=1.0, ema=0.1) if with_callback else None
    trainer = bare_trainer(max_steps=steps, callbacks=[cb] if cb else [], limit_val_batches=0, gradient_clip_val=1.0)
    data = MarkovMixtureDataModule(val_size=val_size, steps_per_epoch=100, seed=seed)
    data.setup()
    model = TinyGPT(total_steps=steps)
    start = time.perf_counter()
    trainer.fit(model, data)
    return time.perf_counter() - start, cb


def plot(path: str) -> None:
    """The claim's Aioli run (seed 0, 600 steps): the proportions of each round, as a step plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, cb = fit(True, 600, 128)
    assert cb is not None
    steps = [0.0] + [h[0] for h in cb.history] + [600.0]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for j, name in enumerate(("easy", "hard", "redundant (= easy chain)")):
        values = [1 / 3] + [h[1 + j] for h in cb.history]
        ax.step(steps, values + values[-1:], where="post", label=name)
    ax.axhline(1 / 3, color="grey", lw=0.5, ls=":")
    ax.set(xlabel="training step", ylabel="proportion p_j", title="Aioli's mixture, seed 0 (LearnParams steps not shown)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}; rounds: " + "; ".join(f"step {int(h[0])}: " + ", ".join(f"{p:.3f}" for p in h[1:]) for h in cb.history))


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.aioli", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--val-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--plot", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    quiet_lightning()

    fit(True, 5, args.val_size)  # warm-up
    fit(False, 5, args.val_size)
    times: dict[str, list[float]] = {"on": [], "off": []}
    for i in range(args.repeats):
        for arm in ("on", "off") if i % 2 == 0 else ("off", "on"):
            times[arm].append(fit(arm == "on", args.steps, args.val_size)[0])
    on, off = statistics.median(times["on"]), statistics.median(times["off"])
    ratio = on / off
    print(
        f"TinyGPT 2x64, 3 groups, batch 16, ctx 32, {args.steps} steps, rounds of 100 (lp_rounds 1, lp_steps 2), "
        f"{args.val_size} val sequences per group, {args.threads} thread(s), median of {args.repeats}: "
        f"Aioli {1000 * on / args.steps:.1f} ms/step, stratified {1000 * off / args.steps:.1f} ms/step"
    )
    print(f"training time ratio (Aioli / stratified): {ratio:.3f} (overhead {100 * (ratio - 1):+.1f} %, target < 10 %)")
    if args.plot:
        plot(args.plot)
    return ratio


if __name__ == "__main__":
    main()
