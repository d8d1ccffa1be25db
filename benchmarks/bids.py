"""BIDS selection time against the gradient-feature pass it selects from (issue target: selection <= 20 %).

The peer is LESS's feature pass at one checkpoint: per-example gradients (``torch.func`` vmap) of
the whole pool and the validation set, the Adam direction on the train side, the random
projection and the cosine influence matrix. BIDS adds steps 2-4 (column z-score, per-task mean,
iterative selection) on that matrix: :class:`zoo.bids.BIDSSelector`. LESS repeats the feature pass
at every checkpoint (4 in the paper), so one pass is the conservative peer. Two settings: the
claim's digits softmax regression (650-d exact gradients) and a tiny transformers GPT-2 on
generated instruction data (projected to ``--proj-dim``). Medians of ``--repeats`` timings.

    python -m benchmarks.bids [--repeats 5] [--lm-pool 1024] [--proj-dim 1024] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from sklearn.datasets import load_digits
from torch import Tensor, nn

from zoo.bids import BIDSSelector, adam_direction, influence_matrix, per_example_grads, random_projection
from zoo.bids_lm import TASKS, instruction_data, lm_loss, tiny_causal_lm
from zoo.nn.backbones import build_backbone


def _warm(model: nn.Module, x: Tensor, y: Tensor, loss_fn: Callable, lr: float, steps: int = 10) -> torch.optim.Adam:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    return opt


def _feature_pass(model: nn.Module, opt: torch.optim.Adam, data: tuple[Tensor, ...], loss_fn: Callable, proj_dim: int, batch: int) -> Tensor:
    """One LESS checkpoint: projected Adam directions of the pool, projected gradients of the validation set, cosine influence."""
    x, y, xv, yv = data
    params = [p for p in model.parameters() if p.requires_grad]
    m = torch.cat([opt.state[p]["exp_avg"].reshape(-1) for p in params])
    v = torch.cat([opt.state[p]["exp_avg_sq"].reshape(-1) for p in params])
    step = int(opt.state[params[0]]["step"])
    train = [
        random_projection(adam_direction(per_example_grads(model, x[i : i + batch], y[i : i + batch], loss_fn), m, v, step), proj_dim, 0)
        for i in range(0, len(x), batch)
    ]
    val = [random_projection(per_example_grads(model, xv[i : i + batch], yv[i : i + batch], loss_fn), proj_dim, 0) for i in range(0, len(xv), batch)]
    return influence_matrix([torch.cat(train)], [torch.cat(val)], [1.0])


def _median(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def bench(name: str, model: nn.Module, data: tuple[Tensor, ...], tasks: Tensor, loss_fn: Callable, proj_dim: int, batch: int, lr: float, repeats: int) -> float:
    x, y = data[0], data[1]
    opt = _warm(model, x[: max(1, len(x) // 20)], y[: max(1, len(x) // 20)], loss_fn, lr)  # a 5 % warm-up, as LESS
    _feature_pass(model, opt, tuple(d[:batch] for d in data), loss_fn, proj_dim, batch)  # warm-up of the kernels
    t_feat, influence = _median(lambda: _feature_pass(model, opt, data, loss_fn, proj_dim, batch), repeats)
    selector = BIDSSelector(budget_frac=0.15)
    num_tasks = int(tasks.max()) + 1
    t_sel, keep = _median(lambda: selector(influence, tasks, num_tasks), repeats)  # type: ignore[arg-type]
    ratio = t_sel / t_feat
    print(
        f"{name}: pool {len(x)}, val {len(data[2])}, {num_tasks} tasks, budget {len(keep)} (15 %): "  # type: ignore[arg-type]
        f"feature pass {1000 * t_feat:.1f} ms, BIDS selection {1000 * t_sel:.2f} ms"
    )
    print(f"  selection / feature pass: {ratio:.4f} ({100 * ratio:.2f} %, target <= 20 %); against LESS's 4 checkpoints {100 * ratio / 4:.2f} %")
    return ratio


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bids", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--lm-pool", type=int, default=1024)
    parser.add_argument("--proj-dim", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    digits = load_digits()
    x_all, y_all = torch.tensor(digits.data, dtype=torch.float32) / 16, torch.tensor(digits.target)
    perm = torch.randperm(len(y_all), generator=torch.Generator().manual_seed(0))
    val = torch.cat([perm[y_all[perm] == c][:20] for c in range(10)])
    pool = perm[~torch.isin(perm, val)][:1199]
    data = (x_all[pool], y_all[pool], x_all[val], y_all[val])
    ratios = {
        "digits": bench(
            "digits softmax regression (650-d)",
            build_backbone("mlp", 10, input_dim=64, flatten=True),
            data,
            y_all[val],
            nn.functional.cross_entropy,
            8192,
            512,
            0.05,
            args.repeats,
        )
    }

    per_task = args.lm_pool // len(TASKS)
    ids, labels, _ = instruction_data([per_task] * len(TASKS), noise=0.3, seed=0)
    vids, vlabels, vtasks = instruction_data([16] * len(TASKS), seed=1)
    lm = tiny_causal_lm(4 + len(TASKS) + 16, seed=0)
    n_params = sum(p.numel() for p in lm.parameters())
    ratios["gpt2"] = bench(
        f"tiny GPT-2 2x32 ({n_params} params -> {args.proj_dim})", lm, (ids, labels, vids, vlabels), vtasks, lm_loss, args.proj_dim, 128, 1e-3, args.repeats
    )
    print(f"{args.threads} thread(s), median of {args.repeats}")
    return ratios


if __name__ == "__main__":
    main()
