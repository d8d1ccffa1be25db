"""MOGFN-PC: the maths against brute force and hand-computed cases, trajectory balance against an exact
flow, and a short training run whose samples follow the preference."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything

from zoo.datamodules import ParetoGridDataModule
from zoo.mogfn import (
    PreferenceConditionalGFlowNet,
    conditional_log_reward,
    grid_objectives,
    hypervolume,
    pareto_mask,
    r2_indicator,
    simplex_grid,
    thermometer,
    trajectory_balance_loss,
)

torch.set_num_threads(1)


def _hv_inclusion_exclusion(points: torch.Tensor) -> float:
    """Brute force: the union of boxes [0, p] by inclusion-exclusion over every non-empty subset."""
    total = 0.0
    n = len(points)
    for r in range(1, n + 1):
        for subset in itertools.combinations(range(n), r):
            corner = points[list(subset)].amin(0).clamp_min(0.0)
            total += (-1) ** (r + 1) * float(corner.prod())
    return total


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hypervolume_matches_inclusion_exclusion(d: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    points = torch.rand(7, d, generator=gen, dtype=torch.float64)
    points[3] = points[1]  # a duplicate
    points[5] = points[0] * 0.5  # a dominated point
    assert hypervolume(points) == pytest.approx(_hv_inclusion_exclusion(points), abs=1e-12)


def test_hypervolume_hand_computed() -> None:
    # staircase (1, 3), (2, 2), (3, 1) above 0: 3 + 2 + 1 = 6
    assert hypervolume(torch.tensor([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]])) == pytest.approx(6.0)
    # one box in 3-D: 1 * 2 * 3, with a reference point shifting it
    assert hypervolume(torch.tensor([[1.0, 2.0, 3.0]])) == pytest.approx(6.0)
    assert hypervolume(torch.tensor([[1.0, 2.0, 3.0]]), ref=torch.tensor([0.5, 1.0, 1.0])) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="2 or 3"):
        hypervolume(torch.rand(3, 4))


def test_pareto_mask_against_brute_force() -> None:
    gen = torch.Generator().manual_seed(0)
    pts = torch.randint(0, 5, (30, 2), generator=gen).double()
    mask = pareto_mask(pts)
    for i, p in enumerate(pts):
        dominated = any(bool((q >= p).all() and (q > p).any()) for q in pts)
        assert bool(mask[i]) is (not dominated)


def test_r2_indicator_hand_computed() -> None:
    pts = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    w = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])
    # w=(1,0): min |1-a_1| = 0; w=(.5,.5): min_a max(.5|1-a_1|, .5|1-a_2|) = .25 at (.5,.5); w=(0,1): 0
    assert r2_indicator(pts, w, torch.ones(2)) == pytest.approx(0.25 / 3)


def test_thermometer_and_simplex_grid() -> None:
    code = thermometer(torch.tensor([0.0, 0.5, 1.0]), n_bins=3)  # bins 0, .5, 1, gap .5
    assert code.tolist() == [0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0]
    assert thermometer(torch.tensor([0.25]), n_bins=3).tolist() == [0.5, 0.0, 0.0]
    grid = simplex_grid(2, 11)
    assert grid.shape == (11, 2) and torch.allclose(grid.sum(1), torch.ones(11, dtype=torch.float64))
    assert grid[:, 0].tolist() == pytest.approx([k / 10 for k in range(11)])
    assert len(simplex_grid(3, 5)) == math.comb(4 + 2, 2)


def test_grid_objectives_and_true_front() -> None:
    coords = torch.tensor([[7, 0], [0, 7], [0, 0], [7, 7]])
    obj = grid_objectives(coords, 8)
    assert obj[0].tolist() == pytest.approx([1.0, 0.0])  # corner (1, 0): R_1 peaks, R_2 = sqrt(1 - sqrt2/sqrt2)
    assert obj[1].tolist() == pytest.approx([0.0, 1.0])
    assert obj[2].tolist() == pytest.approx([math.sqrt(1 - 1 / math.sqrt(2))] * 2)
    states = next(iter(ParetoGridDataModule(2, 8).train_dataloader()))[0]
    obj = grid_objectives(states, 8)
    assert int(pareto_mask(obj).sum()) == 19  # strictly non-dominated
    weak = ~(obj.unsqueeze(1) > obj.unsqueeze(0)).all(-1).any(0)
    assert int(weak.sum()) == 22  # weakly non-dominated: the count of the independent check


def test_conditional_log_reward() -> None:
    obj = torch.tensor([[0.5, 0.2], [0.0, 0.0]], dtype=torch.float64)
    pref = torch.tensor([0.25, 0.75], dtype=torch.float64)
    out = conditional_log_reward(obj, pref, beta=8.0, reward_min=1e-4)
    assert out[0] == pytest.approx(8 * math.log(0.25 * 0.5 + 0.75 * 0.2))
    assert out[1] == pytest.approx(8 * math.log(1e-4))  # the floor, before beta
    log_cv = conditional_log_reward(obj[:1], pref, beta=2.0, kind="logconvex")
    assert log_cv[0] == pytest.approx(2 * (0.25 * math.log(0.5) + 0.75 * math.log(0.2)))


def test_trajectory_balance_zero_at_exact_flow() -> None:
    # a two-leaf tree: P_F = R / Z exactly gives zero loss; a wrong log Z gives (delta)^2
    log_r = torch.log(torch.tensor([1.0, 3.0]))
    log_pf = torch.log(torch.tensor([0.25, 0.75]))
    zero = torch.zeros(2)
    assert trajectory_balance_loss(torch.log(torch.tensor(4.0)), log_pf, zero, log_r) == pytest.approx(0.0, abs=1e-12)
    assert trajectory_balance_loss(torch.log(torch.tensor(4.0)) + 0.5, log_pf, zero, log_r) == pytest.approx(0.25)


def _fit(**kwargs: object) -> PreferenceConditionalGFlowNet:
    seed_everything(0)
    model = PreferenceConditionalGFlowNet(height=5, iters_per_step=50, **kwargs)
    Trainer(max_epochs=100, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False).fit(
        model, ParetoGridDataModule(2, 5)
    )
    return model


def test_short_training_follows_the_preference() -> None:
    model = _fit(max_iters=300, batch_size=32, num_samples_eval=64)
    final = model._final
    assert model.iterations == 300
    assert final["train/hv"] >= 0.97 * final["train/hv_oracle"]
    assert final["train/r1_gap"] > 0.3  # samples move to the R_1 corner as omega_1 goes 0 -> 1
    assert final["train/pareto_frac"] >= 0.9


def test_fixed_preferences_split_the_budget() -> None:
    model = _fit(max_iters=50, batch_size=8, num_samples_eval=8, fixed_preferences=[0.0, 0.5, 1.0])
    assert len(model.policies) == 3 and model.iterations == 50
    assert model._model_for(torch.tensor([0.8, 0.2])) == 2 and model._model_for(torch.tensor([0.3, 0.7])) == 1
