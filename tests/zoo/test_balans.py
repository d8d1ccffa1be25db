"""Balans: optimum vs brute force and SCIP, monotone incumbents, bandit updates every iteration, checkpoints."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer

from tests.conftest import CrashAfterBatch, SimulatedCrash
from zoo.balans import BalansModule, BalansSolver, bandit_observations, primal_gap, prior_observations, reward_of
from zoo.datamodules.mip import MipDataModule, _write, knapsack_instance, scip_optimum, set_cover_instance

torch.set_num_threads(1)

FAST = {
    "timelimit_first_solution": 1.0,
    "timelimit_alns_iteration": 0.3,
    "timelimit_local_branching_iteration": 0.3,
    "timelimit_crossover_random_feasible": 0.3,
}


def _stream(tmp_path, **kw) -> list[dict]:
    dm = MipDataModule(root=str(tmp_path), **kw)
    dm.setup()
    return dm.requests


def _brute_set_cover(a: np.ndarray, c: np.ndarray) -> float:
    best = float("inf")
    for bits in itertools.product((0, 1), repeat=len(c)):
        x = np.array(bits)
        if (a @ x >= 1).all():
            best = min(best, float(c @ x))
    return best


def _brute_knapsack(w: np.ndarray, v: np.ndarray, cap: float) -> float:
    return max(float(v @ np.array(b)) for b in itertools.product((0, 1), repeat=len(w)) if float(w @ np.array(b)) <= cap)


def test_primal_gap_and_reward_by_hand() -> None:
    assert primal_gap(110.0, 100.0) == pytest.approx(10 / 110)
    assert primal_gap(-90.0, -100.0) == pytest.approx(10 / 100)
    assert primal_gap(0.0, 0.0) == 0.0 and primal_gap(5.0, 5.0) == 0.0
    scores = [1.0, 1.0, 0.0, 0.0]  # (best, better, accept, reject)
    assert [reward_of(o, scores) for o in range(4)] == [1.0, 1.0, 0.0, 0.0]
    assert reward_of(2, [8, 4, 2, 1]) == 2.0


def test_prior_observations_reproduce_counts_and_sums() -> None:
    arms, rewards = prior_observations(torch.tensor([3.0, 0.0, 2.0]), torch.tensor([2.0, 0.0, 0.0]))
    assert arms == [0, 0, 0, 2, 2] and rewards == [1.0, 1.0, 0.0, 0.0, 0.0]
    arms, rewards = prior_observations(torch.tensor([2.0]), torch.tensor([5.0]))  # scores (8, 4, 2, 1): mean 2.5
    assert arms == [0, 0] and rewards == [2.5, 2.5]


def test_generated_instances_match_brute_force_through_scip(tmp_path) -> None:
    a, c = set_cover_instance(8, 12, 0.25, seed=3)
    assert (a.sum(1) >= 2).all()
    _write(tmp_path / "sc.lp", "set_cover", (a, c))
    f, proven = scip_optimum(str(tmp_path / "sc.lp"), 10.0)
    assert proven and f == pytest.approx(_brute_set_cover(a, c))
    w, v, cap = knapsack_instance(12, seed=4)
    _write(tmp_path / "kp.lp", "knapsack", (w, v, cap))
    f, proven = scip_optimum(str(tmp_path / "kp.lp"), 10.0)
    assert proven and f == pytest.approx(_brute_knapsack(w, v, cap))


def test_balans_matches_the_optimum_on_tiny_set_cover_and_knapsack(tmp_path) -> None:
    requests = _stream(tmp_path, families=["set_cover", "knapsack"], iterations=4, rows=10, cols=14, density=0.25, items=14)
    alg = BalansSolver(seed=1, **FAST)
    costs = [alg.serve(r) for r in requests]
    assert max(costs) <= 1e-6  # every iteration's incumbent is optimal here
    sc, kp = alg.records["set_cover_0"], alg.records["knapsack_0"]
    a, c = set_cover_instance(10, 14, 0.25, seed=0)  # the datamodule's seed for family 0, instance 0
    assert sc["best"][-1] == pytest.approx(_brute_set_cover(a, c), abs=1e-6)
    w, v, cap = knapsack_instance(14, seed=101)  # family 1
    assert kp["best"][-1] == pytest.approx(_brute_knapsack(w, v, cap), abs=1e-6)  # reported in the max sense


def test_balans_matches_scip_on_a_small_set_cover(tmp_path) -> None:
    requests = _stream(tmp_path, families=["set_cover"], iterations=6, rows=60, cols=150, density=0.05, seed=7)
    f_star, proven = scip_optimum(requests[0]["path"], 60.0)
    assert proven
    alg = BalansSolver(seed=2, **FAST)
    for r in requests:
        alg.serve(r)
    assert primal_gap(alg.records["set_cover_0"]["best"][-1], f_star) <= 1e-6


@pytest.mark.parametrize("selector", ["mab", "random"])
def test_incumbent_never_worsens_and_outcomes_follow_the_objective(tmp_path, selector: str) -> None:
    # a first incumbent cut short (0.05 s, feasibility focus) leaves room for ALNS to improve
    requests = _stream(tmp_path, families=["set_cover_hard"], iterations=8, hard_rows=200, hard_cols=1000, hard_density=0.02, reference_time=1.0)
    alg = BalansSolver(selector=selector, seed=3, **{**FAST, "timelimit_first_solution": 0.05})
    for r in requests:
        alg.serve(r)
    rec = alg.records["set_cover_hard_0"]
    traj = [rec["initial"], *rec["best"]]
    assert all(b <= a + 1e-9 for a, b in zip(traj, traj[1:])) and traj[-1] < traj[0]  # it did improve
    for prev, now, outcome in zip(traj, traj[1:], rec["outcome"]):
        assert (outcome == 0) == (now < prev - 1e-9)  # outcome "best" exactly when the incumbent improved


def test_bandit_statistics_move_every_iteration(tmp_path) -> None:
    requests = _stream(tmp_path, families=["set_cover"], iterations=6)
    alg = BalansSolver(seed=4, **FAST)
    seen = []
    for t, r in enumerate(requests):
        alg.serve(r)
        seen.append(bandit_observations(alg._selector))
        assert float(alg.pulls.sum()) == t + 1
    imp = alg._selector.mab._imp  # Thompson sampling: Beta(1 + successes, 1 + failures) per arm
    arms = len(alg._arm_index)
    assert seen == [2 * arms + t for t in range(1, 7)]  # exactly one reward absorbed per iteration
    rewards = torch.zeros(len(alg.destroy_names), dtype=torch.float64)
    for arm, reward in zip(alg.records["set_cover_0"]["arm"], alg.records["set_cover_0"]["reward"]):
        rewards[arm] += reward
    assert torch.equal(rewards, alg.reward_sum)
    assert sum(imp.arm_to_success_count.values()) - arms == float(alg.reward_sum.sum())


def test_warm_prior_is_fitted_into_the_next_instance_bandit(tmp_path) -> None:
    requests = _stream(tmp_path, families=["set_cover"], instances=2, iterations=3)
    alg = BalansSolver(seed=5, carry_prior=True, **FAST)
    for r in requests[:4]:  # the first instance, then one iteration of the second
        alg.serve(r)
    arms = len(alg._arm_index)
    assert bandit_observations(alg._selector) == 2 * arms + 3 + 1  # prior (3 iterations) plus one update
    cold = BalansSolver(seed=5, **FAST)
    for r in requests[:4]:
        cold.serve(r)
    assert bandit_observations(cold._selector) == 2 * arms + 1


def test_module_fits_logs_and_checkpoints_arm_statistics(tmp_path) -> None:
    dm = MipDataModule(families=["set_cover", "knapsack"], iterations=3, root=str(tmp_path / "mip"))
    model = BalansModule(seed=6, **FAST)
    trainer = Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, dm)
    assert float(model.pulls.sum()) == 6.0 and trainer.callback_metrics["train/arm"] >= 0
    assert {"train/gap", "train/objective", "train/reward", "train/primal_integral"} <= set(trainer.callback_metrics)
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    restored = BalansModule.load_from_checkpoint(tmp_path / "a.ckpt", weights_only=True)
    assert torch.equal(restored.pulls, model.pulls) and torch.equal(restored.reward_sum, model.reward_sum)
    assert torch.equal(restored.algorithm.pulls, model.pulls)
    assert torch.equal(restored(None), model.reward_sum / model.pulls.clamp(min=1))
    metrics = trainer.test(model, dm, verbose=False)[0]
    assert metrics["test/set_cover/gap"] <= 1e-6 and metrics["test/knapsack/gap"] <= 1e-6
    assert metrics["test/never_worse"] == 1.0 and metrics["test/arm_updates"] == 1.0


def test_a_user_mps_file_with_general_integers_drops_binary_arms_and_is_solved(tmp_path) -> None:
    from pyscipopt import Model

    m = Model()  # max 3x + 2y + z, general integers x, y and a continuous z: no binaries
    m.hideOutput()
    x, y = m.addVar("x", vtype="I", lb=0, ub=10, obj=3.0), m.addVar("y", vtype="I", lb=0, ub=10, obj=2.0)
    z = m.addVar("z", vtype="C", lb=0, ub=1.5, obj=1.0)
    m.addCons(2 * x + 3 * y + z <= 17.3)
    m.addCons(x - y <= 2.5)
    m.setMaximize()
    m.writeProblem(str(tmp_path / "gi.mps"), verbose=False)
    brute = max(3 * a + 2 * b + min(1.5, 17.3 - 2 * a - 3 * b) for a in range(11) for b in range(11) if 2 * a + 3 * b <= 17.3 and a - b <= 2.5)
    requests = _stream(tmp_path / "mip", families=[], files=[str(tmp_path / "gi.mps")], iterations=3)
    assert requests[0]["optimum"] == pytest.approx(brute) and requests[0]["proven"]
    alg = BalansSolver(seed=8, **FAST)
    for r in requests:
        alg.serve(r)
    rec = alg.records["file_0"]
    assert rec["best"][-1] == pytest.approx(brute, abs=1e-6)
    assert not any(a.startswith(("local_branching", "proximity")) for a in rec["arms"]) and len(rec["arms"]) == 10
    assert len(alg._arm_index) == len(alg._selector.mab.arms) == 10  # the bandit rebuilt with the remaining arms


def test_missing_instance_files_are_refused(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        MipDataModule(files=[str(tmp_path / "nope.lp")])
    with pytest.raises(ValueError, match="no instances"):
        MipDataModule(families=[])


def test_a_resumed_run_keeps_the_arm_statistics_and_the_stream_position(tmp_path) -> None:
    def trainer(**kw) -> Trainer:
        return Trainer(
            max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path, **kw
        )

    dm = MipDataModule(families=["set_cover"], iterations=5, root=str(tmp_path / "mip"))
    with pytest.raises(SimulatedCrash):
        trainer(callbacks=[CrashAfterBatch(1, tmp_path / "half.ckpt")]).fit(BalansModule(seed=9, **FAST), dm)
    resumed = BalansModule(seed=9, **FAST)
    trainer().fit(resumed, dm, ckpt_path=tmp_path / "half.ckpt", weights_only=True)
    assert resumed.served == 5 and float(resumed.pulls.sum()) == 5.0  # 2 before the crash + 3 after
    assert resumed.algorithm._instances_started == 2  # the interrupted instance was set up again
