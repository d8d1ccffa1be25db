"""Draw the card's accuracy-DP trade-off over lambda (``tradeoff.png``, numbers in ``tradeoff.json``).

One pass over the card's stream (5,000 samples, shift 1) per lambda and seed, with the same learner the
module runs (``FairOnlineLearner``: prequential predict, then one Adam step), and the frozen forest on the
2,000-sample test stream. Run: ``.venv/bin/python cards/aranyani/tradeoff.py`` (about 2 minutes on one core).
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from zoo.aranyani import AranyaniModule, demographic_parity  # noqa: E402
from zoo.datamodules.fair_stream import fair_stream  # noqa: E402

LAMBDAS = [0.0, 0.01, 0.03, 0.1, 0.3, 1.0, 10.0]
SEEDS = [0, 1, 2]
HERE = Path(__file__).parent


def run(lam: float, seed: int) -> dict[str, float]:
    module = AranyaniModule(lambda_fair=lam, seed=seed)
    learner = module.algorithm
    x, y, a = fair_stream(5000, seed=seed)
    for i in range(len(y)):
        learner.serve((x[i], int(y[i]), int(a[i])))
    xt, yt, at = fair_stream(2000, seed=seed + 1)
    with torch.no_grad():
        pred = module.forest(xt).argmax(-1)
    counts = torch.tensor([float((at == k).sum()) for k in (0, 1)], dtype=torch.float64)
    positives = torch.tensor([float((pred[at == k] == 1).sum()) for k in (0, 1)], dtype=torch.float64)
    return {
        "acc": learner.accuracy,
        "dp": learner.dp,
        "test_acc": float((pred == yt).double().mean()),
        "test_dp": demographic_parity(positives, counts),
    }


def main() -> None:
    torch.set_num_threads(1)
    rows = {lam: [run(lam, s) for s in SEEDS] for lam in LAMBDAS}
    summary = {}
    for lam, runs in rows.items():
        summary[str(lam)] = {}
        for key in runs[0]:
            v = torch.tensor([r[key] for r in runs], dtype=torch.float64)
            summary[str(lam)][key] = [float(v.mean()), float(v.std())]  # mean, sample std (ddof 1)
    (HERE / "tradeoff.json").write_text(json.dumps({"seeds": SEEDS, "lambda": summary}, indent=1) + "\n")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (acc, dp, title) in zip(axes, [("acc", "dp", "online (prequential), 5,000 samples"), ("test_acc", "test_dp", "frozen forest, 2,000 test samples")]):
        xs = [summary[str(lam)][dp][0] for lam in LAMBDAS]
        ys = [summary[str(lam)][acc][0] for lam in LAMBDAS]
        ax.errorbar(xs, ys, xerr=[summary[str(lam)][dp][1] for lam in LAMBDAS], yerr=[summary[str(lam)][acc][1] for lam in LAMBDAS], fmt="o-", capsize=3)
        for lam, xv, yv in zip(LAMBDAS, xs, ys):
            ax.annotate(f"λ={lam:g}", (xv, yv), textcoords="offset points", xytext=(5, 4), fontsize=8)
        ax.set_xlabel("demographic parity |P(ŷ=1|a=1) − P(ŷ=1|a=0)|")
        ax.set_ylabel("accuracy")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    fig.suptitle("Aranyani on the fair stream (shift 1), seeds 0-2: mean ± sample std", fontsize=11)
    fig.tight_layout()
    fig.savefig(HERE / "tradeoff.png", dpi=120)


if __name__ == "__main__":
    main()
