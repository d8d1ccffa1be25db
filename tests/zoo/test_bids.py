"""BIDS maths against naive loops, hand cases and an autograd reference; the subset DataModule end to end."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zoo.bids import (
    BIDSSelector,
    adam_direction,
    influence_matrix,
    instance_normalize,
    iterative_select,
    per_example_grads,
    random_projection,
    select,
    task_scores,
)
from zoo.datamodules.subset import SubsetDataModule, symmetric_label_noise

torch.set_num_threads(1)


def test_per_example_grads_match_autograd_loop() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    x, y = torch.randn(6, 5), torch.randint(0, 3, (6,))
    got = per_example_grads(model, x, y)
    for i in range(6):
        model.zero_grad()
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        ref = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        torch.testing.assert_close(got[i], ref)


def test_adam_direction_equals_the_step_torch_adam_takes() -> None:
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(7))
    opt = torch.optim.Adam([w], lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        (w**2).sum().backward()
        opt.step()
    g = torch.randn(7)
    st = opt.state[w]
    d = adam_direction(g[None], st["exp_avg"], st["exp_avg_sq"], int(st["step"]))
    before = w.detach().clone()
    w.grad = g.clone()
    opt.step()
    torch.testing.assert_close((before - w.detach()) / 0.1, d[0], atol=1e-5, rtol=1e-4)


def test_projection_preserves_inner_products_roughly_and_is_seeded() -> None:
    g = torch.randn(4, 2000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    p = random_projection(g, 4000, seed=3)
    assert torch.equal(p, random_projection(g, 4000, seed=3))
    assert torch.equal(random_projection(g, 5000, seed=0), g)  # wider than the gradient: exact
    ratio = (p @ p.T).diag() / (g @ g.T).diag()
    assert torch.allclose(ratio, torch.ones(4, dtype=torch.float64), atol=0.15)


def test_influence_is_lr_weighted_cosine_sum() -> None:
    t = [torch.tensor([[1.0, 0.0], [3.0, 3.0]]), torch.tensor([[0.0, 2.0], [1.0, 0.0]])]
    v = [torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 1.0]])]
    a = influence_matrix(t, v, [0.5, 0.25])
    torch.testing.assert_close(a, torch.tensor([[0.5 + 0.25], [0.5 * 2**-0.5 + 0.0]]))


def test_instance_normalize_is_column_zscore() -> None:
    a = torch.tensor([[1.0, 10.0], [2.0, 30.0], [3.0, 20.0]])
    n = instance_normalize(a)
    s = (2 / 3) ** 0.5
    torch.testing.assert_close(n[:, 0], torch.tensor([-1 / s, 0.0, 1 / s]))
    torch.testing.assert_close(n.mean(0), torch.zeros(2), atol=1e-6, rtol=0)
    torch.testing.assert_close(n.std(0, unbiased=False), torch.ones(2))


def test_task_scores_mean_and_max() -> None:
    a = torch.tensor([[1.0, 3.0, 5.0], [0.0, -2.0, 4.0]])
    tasks = torch.tensor([0, 0, 1])
    torch.testing.assert_close(task_scores(a, tasks), torch.tensor([[2.0, 5.0], [-1.0, 4.0]]))
    torch.testing.assert_close(task_scores(a, tasks, aggregate="max"), torch.tensor([[3.0, 5.0], [0.0, 4.0]]))
    with pytest.raises(ValueError, match="no validation example"):
        task_scores(a, tasks, num_tasks=3)


def _naive_greedy(s: torch.Tensor, budget: int) -> list[int]:
    chosen: list[int] = []
    for _ in range(budget):
        cov = s[chosen].mean(0) if chosen else torch.zeros(s.shape[1])
        t = int(torch.argmin(cov))
        rest = [z for z in range(s.shape[0]) if z not in chosen]
        chosen.append(max(rest, key=lambda z: (float(s[z, t]), -z)))
    return chosen


def test_iterative_select_matches_naive_greedy_and_hand_case() -> None:
    s = torch.tensor([[5.0, -1.0], [4.0, -2.0], [0.0, 1.0], [3.0, 0.5]])
    # empty: task 0 first -> z0; coverage (5, -1) -> task 1 -> z2; coverage (2.5, 0) -> task 1 -> z3
    assert iterative_select(s, 3).tolist() == [0, 2, 3]
    g = torch.randn(40, 5, generator=torch.Generator().manual_seed(0))
    assert iterative_select(g, 25).tolist() == _naive_greedy(g, 25)


def test_raw_topk_skews_and_bids_balances_on_scaled_tasks() -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(300, 30, generator=gen)
    a[:, :10] *= 10  # task 0's influence has a 10x scale
    own = torch.arange(300) % 3
    tasks = torch.arange(30) // 10
    for t in range(3):  # each train example helps its own task
        a[(own == t).nonzero()[:, 0][:, None], (tasks == t).nonzero()[:, 0]] += 2.0 * (10 if t == 0 else 1)
    raw = select(a, tasks, 60, "rawsum")
    bids = select(a, tasks, 60, "bids")
    assert torch.bincount(own[raw], minlength=3).min() == 0
    assert torch.bincount(own[bids], minlength=3).min() >= 15


def test_selector_errors() -> None:
    with pytest.raises(ValueError, match="unknown selector"):
        BIDSSelector(selector="bogus")
    with pytest.raises(ValueError, match="budget_frac"):
        BIDSSelector(budget_frac=0.0)
    with pytest.raises(ValueError, match="budget"):
        iterative_select(torch.zeros(3, 2), 4)


def test_symmetric_noise_rate_and_never_keeps_label_when_flipped() -> None:
    y = torch.arange(10).repeat(500)
    noisy = symmetric_label_noise(y, 0.5, 10, seed=0)
    assert abs((noisy != y).float().mean().item() - 0.5) < 0.03


def test_subset_datamodule_serves_the_selection() -> None:
    dm = SubsetDataModule(selector="bids", label_noise=0.5, steps_per_checkpoint=5, seed=1)
    dm.setup()
    assert dm.selected is not None and dm.selected_class_counts is not None
    assert len(dm.train_set) == round(0.15 * len(dm.data.train_set)) == len(set(dm.selected.tolist()))  # type: ignore[arg-type]
    assert min(dm.selected_class_counts) >= 3
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape[1] == 64 and len(dm.val_set) == 200  # type: ignore[arg-type]


def test_cached_projection_is_the_seeded_gaussian_matrix() -> None:
    g = torch.randn(5, 40, generator=torch.Generator().manual_seed(2))
    want = g @ (torch.randn(40, 16, generator=torch.Generator().manual_seed(3)) / 4)
    first = random_projection(g, 16, seed=3)
    torch.testing.assert_close(first, want)
    assert not torch.allclose(random_projection(g, 16, seed=4), first)  # evicts seed 3 from the cache
    assert torch.equal(random_projection(g, 16, seed=3), first)
