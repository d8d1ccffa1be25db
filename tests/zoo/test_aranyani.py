"""Aranyani: forest routing against a naive recursion, per-node and fairness gradients against autograd, the
learner's update against task + lambda x fairness, the seeded stream, and resume mid-stream."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer

from tests.conftest import resume_mid_pass
from zoo.aranyani import (
    AranyaniModule,
    FairOnlineLearner,
    ObliqueForest,
    demographic_parity,
    fairness_gradient,
    leaf_mask,
    leaf_probabilities,
    node_decision_gradients,
    node_decisions,
    update_group_average,
)
from zoo.datamodules import FairStreamDataModule
from zoo.datamodules.fair_stream import fair_stream


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _naive_leaf_probs(n: torch.Tensor, depth: int) -> list[float]:
    """Walk the tree recursively: node k routes left with n_k, right with 1 - n_k; leaves left to right."""
    out: list[float] = []

    def walk(node: int, level: int, p: float) -> None:
        if level == depth:
            out.append(p)
            return
        walk(2 * node + 1, level + 1, p * float(n[node]))
        walk(2 * node + 2, level + 1, p * (1.0 - float(n[node])))

    walk(0, 0, 1.0)
    return out


def test_leaf_mask_depth_two_by_hand() -> None:
    expected = [[1, 1, -1, -1], [1, -1, 0, 0], [0, 0, 1, -1]]
    assert leaf_mask(2).tolist() == expected


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_routing_sums_to_one_and_matches_a_naive_recursion(depth: int) -> None:
    g = torch.Generator().manual_seed(depth)
    n = torch.rand(5, 2**depth - 1, generator=g, dtype=torch.float64)
    probs = leaf_probabilities(n, leaf_mask(depth), eps=0.0)
    torch.testing.assert_close(probs.sum(-1), torch.ones(5, dtype=torch.float64), rtol=0, atol=1e-12)
    for row in range(5):
        torch.testing.assert_close(probs[row], torch.tensor(_naive_leaf_probs(n[row], depth), dtype=torch.float64))
    # with the official +1e-8 per factor the sum is 1 up to O(K * 1e-8)
    assert float((leaf_probabilities(n, leaf_mask(depth)).sum(-1) - 1).abs().max()) < 1e-6


def test_forest_output_is_the_mean_of_tree_mixtures() -> None:
    forest = ObliqueForest(in_dim=4, num_classes=3, num_trees=2, depth=3, seed=1, eps=0.0)
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    out = forest(x)
    torch.testing.assert_close(out.sum(-1), torch.ones(6, dtype=torch.float64))
    n = node_decisions(x, forest.weight, forest.bias).detach()
    for b in range(6):
        trees = []
        for t in range(2):
            leaves = torch.tensor(_naive_leaf_probs(n[t, b], 3), dtype=torch.float64)
            trees.append(leaves @ forest.theta[t].softmax(-1))
        torch.testing.assert_close(out[b], torch.stack(trees).mean(0).detach())


def test_the_underflow_guard_keeps_leaf_probabilities_positive() -> None:
    n = torch.tensor([[1.0, 0.0, 1.0]], dtype=torch.float64)  # saturated splits
    assert float(leaf_probabilities(n, leaf_mask(2), eps=0.0).min()) >= 1e-300
    assert float(leaf_probabilities(n, leaf_mask(2)).min()) > 0


def test_per_node_gradients_match_autograd() -> None:
    g = torch.Generator().manual_seed(3)
    w = torch.randn(2, 4, 7, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 7, generator=g, dtype=torch.float64, requires_grad=True)
    x = torch.randn(4, generator=g, dtype=torch.float64)
    n = node_decisions(x[None], w, b)[:, 0, :]
    gw, gb = node_decision_gradients(n.detach(), x)
    for t in range(2):
        for k in range(7):  # node k's own output, w.r.t. all split parameters: only column k is non-zero
            dw, db = torch.autograd.grad(n[t, k], (w, b), retain_graph=True)
            torch.testing.assert_close(dw[t, :, k], gw[t, :, k])
            torch.testing.assert_close(db[t, k], gb[t, k])
            others = dw.clone()
            others[t, :, k] = 0.0
            assert float(others.abs().max()) == 0.0


def _huber(f: torch.Tensor, delta: float) -> torch.Tensor:
    """A potential whose derivative is the official weight: F^2 / 2 inside delta, |F| outside (offset irrelevant)."""
    return torch.where(f.abs() < delta, 0.5 * f**2, f.abs()).sum()


def test_aggregated_fairness_gradient_equals_autograd_of_node_dp_at_fixed_parameters() -> None:
    # at fixed parameters, running means of dn/dtheta per group are d/dtheta of the group means of n, so the
    # aggregate rule equals the gradient of sum_j h(E[n_j | a=1] - E[n_j | a=0]) over the samples seen
    x, _, a = fair_stream(40, dim=4, shifted=2, informative=3, seed=4)
    g = torch.Generator().manual_seed(5)
    w = torch.randn(2, 4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    sums, counts = torch.zeros(2, 2, 3, dtype=torch.float64), [0, 0]
    gw, gb = torch.zeros(2, 2, 4, 3, dtype=torch.float64), torch.zeros(2, 2, 3, dtype=torch.float64)
    for i in range(40):
        n = node_decisions(x[i : i + 1], w, b).detach()[:, 0, :]
        grp = int(a[i])
        counts[grp] += 1
        sums[grp] += n
        dw, db = node_decision_gradients(n, x[i])
        gw[grp] = update_group_average(gw[grp], dw, counts[grp])
        gb[grp] = update_group_average(gb[grp], db, counts[grp])
    f = sums[1] / counts[1] - sums[0] / counts[0]
    delta = float(f.abs().median())  # some nodes inside the quadratic zone, some outside
    n_all = node_decisions(x, w, b)
    f_auto = n_all[:, a == 1].mean(1) - n_all[:, a == 0].mean(1)
    torch.testing.assert_close(f_auto.detach(), f)
    dw_auto, db_auto = torch.autograd.grad(_huber(f_auto, delta), (w, b))
    torch.testing.assert_close(fairness_gradient(f, gw[1], gw[0], delta), dw_auto)
    torch.testing.assert_close(fairness_gradient(f, gb[1], gb[0], delta), db_auto)


def test_momentum_and_vanilla_averages_by_hand() -> None:
    g1, g2 = torch.tensor([2.0]), torch.tensor([4.0])
    avg = update_group_average(torch.zeros(1), g1, 1)
    assert update_group_average(avg, g2, 2).item() == pytest.approx(3.0)
    m = update_group_average(update_group_average(torch.zeros(1), g1, 1, "momentum", 0.5), g2, 2, "momentum", 0.5)
    assert m.item() == pytest.approx(0.5 * 2.0 + 4.0)
    with pytest.raises(ValueError, match="grad_avg"):
        update_group_average(avg, g1, 1, "adam")


def test_demographic_parity_by_hand() -> None:
    assert demographic_parity(torch.tensor([1.0, 3.0]), torch.tensor([4.0, 4.0])) == pytest.approx(0.5)
    assert demographic_parity(torch.tensor([1.0, 0.0]), torch.tensor([2.0, 0.0])) == 0.0


class _Recorder:
    """An optimiser that records the gradients it is given and leaves the parameters alone."""

    def __init__(self, params: list[torch.Tensor]) -> None:
        self.params, self.grads = params, []

    def step(self) -> None:
        self.grads.append([p.grad.clone() for p in self.params])

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None


def test_the_learners_update_is_task_plus_lambda_fairness_on_splits_only() -> None:
    forest = ObliqueForest(in_dim=4, num_trees=2, depth=2, seed=6)
    lam, delta = 0.7, 0.05
    learner = FairOnlineLearner(forest, lambda_fair=lam, huber_delta=delta)
    params = [forest.weight, forest.bias, forest.theta]
    learner.optimizer = _Recorder(params)
    x, y, a = fair_stream(30, dim=4, shifted=2, informative=3, seed=7)
    costs = [learner.serve((x[i], int(y[i]), int(a[i]))) for i in range(30)]
    # the last update: CE of the last sample + lambda x autograd of the node DP over all 30 samples (fixed params)
    probs = forest(x[-1:])[0]
    task = torch.autograd.grad(-probs[int(y[-1])].log(), params)
    n_all = node_decisions(x, forest.weight, forest.bias)
    f = n_all[:, a == 1].mean(1) - n_all[:, a == 0].mean(1)
    fair = torch.autograd.grad(_huber(f, delta), (forest.weight, forest.bias))
    got = learner.optimizer.grads[-1]
    torch.testing.assert_close(got[0], task[0] + lam * fair[0])
    torch.testing.assert_close(got[1], task[1] + lam * fair[1])
    torch.testing.assert_close(got[2], task[2])  # leaves: task gradient only
    # prequential metrics: predictions of the fixed forest
    pred = forest(x).argmax(-1)
    assert sum(costs) == float((pred != y).sum()) and learner.accuracy == pytest.approx(float((pred == y).double().mean()))
    rate = [float(pred[a == k].double().mean()) for k in (0, 1)]
    assert learner.dp == pytest.approx(abs(rate[1] - rate[0]))


def test_fairness_is_skipped_until_both_groups_are_seen() -> None:
    forest = ObliqueForest(in_dim=3, num_trees=1, depth=2, seed=8)
    learner = FairOnlineLearner(forest, lambda_fair=5.0)
    learner.optimizer = _Recorder([forest.weight, forest.bias, forest.theta])
    x = torch.randn(1, 3, dtype=torch.float64)
    learner.serve((x[0], 1, 0))
    task = torch.autograd.grad(-forest(x)[0, 1].log(), forest.weight)[0]
    torch.testing.assert_close(learner.optimizer.grads[0][0], task)


def test_the_stream_is_seeded_and_unfair() -> None:
    x, y, a = fair_stream(4000, seed=0)
    x2, y2, a2 = fair_stream(4000, seed=0)
    assert torch.equal(x, x2) and torch.equal(y, y2) and torch.equal(a, a2)
    assert not torch.equal(fair_stream(10, seed=1)[0], x[:10])
    label_dp = float(y[a == 1].double().mean() - y[a == 0].double().mean())
    assert 0.35 < label_dp < 0.47  # about 0.41 at shift 1
    assert torch.allclose(x[a == 1, :3].mean(0) - x[a == 0, :3].mean(0), torch.ones(3, dtype=torch.float64), atol=0.1)


def _trainer(root, **kw) -> Trainer:
    return Trainer(
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        accelerator="cpu",
        default_root_dir=root,
        **kw,
    )


def test_lambda_cuts_online_dp_and_nothing_becomes_nan(tmp_path) -> None:
    results = {}
    for lam in (0.0, 1.0, 10.0):
        module = AranyaniModule(lambda_fair=lam, seed=1)
        trainer = _trainer(tmp_path)
        trainer.fit(module, FairStreamDataModule(num_samples=1500, test_samples=200, seed=1))
        results[lam] = {k: float(v) for k, v in trainer.callback_metrics.items()}
        assert results[lam]["train/nan_params"] == 0.0 and results[lam]["train/requests"] == 1500
    assert results[1.0]["train/dp"] < 0.5 * results[0.0]["train/dp"]
    assert results[0.0]["train/accuracy"] > results[1.0]["train/accuracy"] > 0.55


def test_resume_mid_stream_continues_the_same_stream(tmp_path) -> None:
    def data() -> FairStreamDataModule:
        return FairStreamDataModule(num_samples=200, test_samples=50, chunk=20, seed=2)

    runs = resume_mid_pass(tmp_path, lambda: AranyaniModule(lambda_fair=1.0, seed=2), data, crash_batch=4)
    assert runs.crashed.served == 100
    state = torch.load(runs.checkpoint, weights_only=True)["online"]["algorithm"]
    assert int(state["group_counts"].sum()) == 100  # the aggregates are in the checkpoint
    full, resumed = runs.full, runs.resumed
    assert resumed.served == full.served == 200 and resumed.cumulative_cost == full.cumulative_cost
    for p, q in zip(resumed.forest.parameters(), full.forest.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-12)
    for key, value in full.algorithm.state_dict().items():
        torch.testing.assert_close(torch.as_tensor(resumed.algorithm.state_dict()[key]), torch.as_tensor(value), rtol=0, atol=1e-12)


def test_test_stream_evaluates_the_frozen_forest(tmp_path) -> None:
    module = AranyaniModule(lambda_fair=0.0, seed=3)
    dm = FairStreamDataModule(num_samples=100, test_samples=300, seed=3)
    trainer = _trainer(tmp_path)
    before = [p.detach().clone() for p in module.forest.parameters()]
    metrics = trainer.test(module, dm, verbose=False)[0]
    assert all(torch.equal(p, q) for p, q in zip(before, module.forest.parameters()))
    dm.setup()
    x, y, a = dm.test.tensors
    pred = module.forest(x).argmax(-1)
    assert metrics["test/accuracy"] == pytest.approx(float((pred == y).double().mean()))
    rate = [float(pred[a == k].double().mean()) for k in (0, 1)]
    assert metrics["test/dp"] == pytest.approx(abs(rate[1] - rate[0]))
    assert metrics["test/requests"] == 300
