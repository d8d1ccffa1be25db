"""ViDiDi's training step against the plain SSL step it extends (target: <= 1.5x).

The peer is the same model, loss and batch with ``orders=[0]`` (plain VICReg: two augmented views
of the frames), measured in the same run and interleaved step by step. ViDiDi's step adds the
temporal differences and per-clip standardisation of one order pair (balanced alternation: one pair
per step); the ``sum`` ablation (every pair every step) is printed beside it. Two settings: the
claim's (tiny 3D CNN, 64 clips of 1 x 10 x 16 x 16) and a small R3D-18 one (4 clips of 3 x 10 x 64 x 64).
Medians over steps; process CPU time beside wall time.

    python -m benchmarks.vididi [--steps 30] [--threads 1] [--setting tiny|r3d|both]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from zoo.vididi import ViDiDi, order_pairs, pair_for_step

SETTINGS = {
    "tiny": ({"backbone": "tiny3d", "in_chans": 1, "width": 16, "proj_dims": [128, 128]}, (64, 1, 10, 16, 16)),
    "r3d": ({"backbone": "r3d_18", "in_chans": 3, "proj_dims": [512, 512]}, (4, 3, 10, 64, 64)),
}


def _step(model: ViDiDi, opt: torch.optim.Optimizer, v1: torch.Tensor, v2: torch.Tensor, step: int, pairing: str) -> tuple[float, float]:
    start = (time.perf_counter(), time.process_time())
    opt.zero_grad()
    if pairing == "sum":
        loss = torch.stack([model.pair_loss(v1, v2, p) for p in model.pairs]).mean()
    else:
        loss = model.pair_loss(v1, v2, pair_for_step(step, model.pairs))
    loss.backward()
    opt.step()
    return time.perf_counter() - start[0], time.process_time() - start[1]


def measure(setting: str, steps: int) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) seconds per step of plain VICReg, ViDiDi (alternating) and ViDiDi (sum), interleaved."""
    kwargs, shape = SETTINGS[setting]
    torch.manual_seed(0)
    arms = {"plain": ([0], "balanced_alternating"), "vididi": ([0, 1, 2], "balanced_alternating"), "sum": ([0, 1, 2], "sum")}
    models = {name: ViDiDi(orders=orders, pairing=pairing, **kwargs) for name, (orders, pairing) in arms.items()}
    for m in models.values():
        m.load_state_dict(models["plain"].state_dict())  # same weights: same work per step
        m.train()
    opts = {name: torch.optim.Adam(m.parameters(), 1e-3) for name, m in models.items()}
    v1, v2 = torch.randn(shape), torch.randn(shape)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in models}
    for step in range(steps + 3):
        for name, m in models.items():
            t = _step(m, opts[name], v1, v2, step, arms[name][1])
            if step >= 3:  # warm-up steps dropped
                times[name].append(t)
    assert order_pairs([0, 1, 2]) == models["vididi"].pairs
    return {name: (statistics.median(w for w, _ in ts), statistics.median(c for _, c in ts)) for name, ts in times.items()}


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.vididi", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--setting", choices=("tiny", "r3d", "both"), default="both")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    worst = 0.0
    for setting in ("tiny", "r3d") if args.setting == "both" else (args.setting,):
        r = measure(setting, args.steps)
        (pw, pc), (vw, vc), (sw, sc) = r["plain"], r["vididi"], r["sum"]
        worst = max(worst, vc / pc)
        print(
            f"{setting}: plain VICReg step {pw * 1e3:.1f} ms wall / {pc * 1e3:.1f} ms CPU; ViDiDi (alternating) "
            f"{vw * 1e3:.1f} / {vc * 1e3:.1f} ms: {vw / pw:.2f}x wall, {vc / pc:.2f}x CPU (target <= 1.5x); "
            f"sum of 3 pairs {sw * 1e3:.1f} / {sc * 1e3:.1f} ms: {sw / pw:.2f}x wall, {sc / pc:.2f}x CPU"
        )
    return worst


if __name__ == "__main__":
    main()
