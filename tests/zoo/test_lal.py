"""LAL's maths: complexity, in-class instances, baselines' allocations, rollouts and the fresh adversary."""

from __future__ import annotations

import itertools
import math

import lightning as L
import pytest
import torch

from zoo.lal import (
    AdaptiveQueryPolicy,
    LALModule,
    SequentialHalving,
    UniformAllocation,
    complexity,
    in_class_instances,
    rollout,
    worst_case_error,
)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def test_complexity_hand_computed() -> None:
    theta = torch.tensor([[0.9, 0.4, 0.7], [0.1, 0.6, 0.5]])
    expected = [0.5**-2 + 0.2**-2, 0.5**-2 + 0.1**-2]
    torch.testing.assert_close(complexity(theta), torch.tensor(expected), rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="unique"):
        complexity(torch.tensor([0.5, 0.5, 0.1]))


def test_in_class_instances_lie_on_the_class_boundary() -> None:
    g = torch.Generator().manual_seed(0)
    best = torch.randint(8, (50,), generator=g)
    for r in (10.0, 20.0, 40.0):
        theta = in_class_instances(3 * torch.randn(50, generator=g), 3 * torch.randn(50, 7, generator=g), best, r)
        assert bool(((theta >= 0) & (theta <= 1)).all())
        assert torch.equal(theta.argmax(-1), best)
        torch.testing.assert_close(complexity(theta.double()), torch.full((50,), r, dtype=torch.float64), rtol=1e-4, atol=0)
    with pytest.raises(ValueError, match="empty"):
        in_class_instances(torch.zeros(1), torch.zeros(1, 7), torch.zeros(1, dtype=torch.long), 7.0)


def _pulled_arms(policy: torch.nn.Module, n: int, budget: int) -> list[int]:
    """The arms a deterministic policy pulls on one instance, read from its query logits."""
    theta = torch.linspace(0.1, 0.9, n).unsqueeze(0)
    pulls, wins, arms = torch.zeros(1, 1, n), torch.zeros(1, 1, n), []
    policy.reset(1, n, budget)
    for t in range(budget):
        logits, _ = policy(pulls, wins, t, budget)
        arm = int(logits.argmax())
        assert torch.isinf(logits).sum() == n - 1  # deterministic: one finite logit
        arms.append(arm)
        pulls[..., arm] += 1
        wins[..., arm] += float(theta[0, arm] > 0.5)  # arms above 0.5 always win in this scripted run
    return arms


def test_uniform_allocation_is_round_robin() -> None:
    assert _pulled_arms(UniformAllocation(), 8, 16) == list(range(8)) * 2


def test_sequential_halving_schedule_8_arms_16_pulls() -> None:
    arms = _pulled_arms(SequentialHalving(), 8, 16)
    assert arms[:8] == list(range(8))  # round 1: every arm once
    assert sorted(set(arms[8:12])) == [4, 5, 6, 7] and len(arms[8:12]) == 4  # round 2: the winners (arms 4-7) once
    assert len(arms[12:]) == 4 and len(set(arms[12:])) == 2 and all(arms[12:].count(a) == 2 for a in set(arms[12:]))


def _halving_error_brute_force(theta: list[float]) -> float:
    """4 arms, 8 pulls: every arm once, the top 2 (exact ties in a uniformly random order) twice more; answer the best mean."""
    best, n = max(range(4), key=lambda i: theta[i]), 4
    correct = 0.0
    for y0 in itertools.product((0, 1), repeat=n):
        p0 = math.prod(theta[i] if y0[i] else 1 - theta[i] for i in range(n))
        for order in itertools.permutations(range(n)):  # a uniformly random priority among ties
            rank = {a: k for k, a in enumerate(order)}
            alive = sorted(range(n), key=lambda a: (-y0[a], rank[a]))[:2]
            for w in itertools.product(range(3), repeat=2):
                pw = math.prod(math.comb(2, w[j]) * theta[a] ** w[j] * (1 - theta[a]) ** (2 - w[j]) for j, a in enumerate(alive))
                means = {a: (y0[a] + w[j]) / 3 for j, a in enumerate(alive)}
                ties = [a for a in alive if means[a] == max(means.values())]
                correct += p0 / math.factorial(n) * pw * (best in ties) / len(ties)
    return 1.0 - correct


@pytest.mark.parametrize("best", [0, 3])
def test_sequential_halving_error_matches_brute_force_wherever_the_best_arm_sits(best: int) -> None:
    """Ties are broken at random, so the error does not depend on the best arm's index (index ties would)."""
    theta = [0.5] * 4
    theta[best] = 0.7
    expected = _halving_error_brute_force(theta)
    out = rollout(SequentialHalving(seed=1), torch.tensor([theta], dtype=torch.float64), 8, 40000, torch.Generator().manual_seed(0))
    assert abs(float(out["error"].mean()) - expected) < 0.01


def test_uniform_error_matches_the_closed_form() -> None:
    """Two arms, two pulls each: P(correct) = P(S1 > S2) + P(S1 = S2) / 2 with S ~ Binomial(2, p)."""
    p1, p2 = 0.8, 0.3
    b1 = [math.comb(2, k) * p1**k * (1 - p1) ** (2 - k) for k in range(3)]
    b2 = [math.comb(2, k) * p2**k * (1 - p2) ** (2 - k) for k in range(3)]
    correct = sum(b1[i] * b2[j] * (1.0 if i > j else 0.5 if i == j else 0.0) for i in range(3) for j in range(3))
    out = rollout(UniformAllocation(), torch.tensor([[p1, p2]], dtype=torch.float64), 4, 40000, torch.Generator().manual_seed(0))
    assert abs(float(out["error"].mean()) - (1 - correct)) < 0.01


def test_rollout_gradients_reach_policy_and_instances() -> None:
    torch.manual_seed(0)
    policy = AdaptiveQueryPolicy(8)
    raw = torch.zeros(3, requires_grad=True)
    theta = in_class_instances(raw, torch.zeros(3, 7), torch.tensor([0, 1, 2]), 12.0)
    out = rollout(policy, theta, 6, 5, torch.Generator().manual_seed(0))
    assert out["error"].shape == (3, 5)
    (out["error"].mean() + out["logp_query"].mean() + out["logp_obs"].mean()).backward()
    assert raw.grad is not None and all(p.grad is not None for p in policy.parameters())


def test_fresh_adversary_finds_harder_instances_than_random() -> None:
    """Against uniform allocation in class r = 40, ascent raises the worst error above a 0-step adversary's."""
    kwargs = dict(r=40.0, num_arms=8, budget=16, instances=8, rollouts=32, eval_rollouts=200)
    start = worst_case_error(UniformAllocation(), generator=torch.Generator().manual_seed(1), steps=0, **kwargs)
    tuned = worst_case_error(UniformAllocation(), generator=torch.Generator().manual_seed(1), steps=15, lr=0.2, **kwargs)
    assert tuned > start


def test_module_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="policy"):
        LALModule(policy="thompson")
    with pytest.raises(ValueError, match="empty"):
        LALModule(classes=[5.0, 20.0])
    with pytest.raises(ValueError, match="among classes"):
        LALModule(train_classes=[15.0])


def _tiny_fit(tmp_path, epochs: int, ckpt: str | None = None) -> tuple[LALModule, L.Trainer]:

    from zoo.datamodules.bandits import BestArmDataModule

    model = LALModule(
        num_arms=4,
        budget=6,
        classes=[5.0, 8.0],
        hidden=8,
        updates=4,
        benchmark_updates=2,
        instances=4,
        rollouts=2,
        worst=2,
        test_instances=2,
        test_steps=1,
        test_rollouts=2,
        test_eval_rollouts=4,
        seed=3,
    )
    trainer = L.Trainer(
        max_epochs=epochs,
        limit_train_batches=4,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, BestArmDataModule(num_arms=4, classes=[5.0, 8.0], batch_size=1, steps_per_epoch=8), ckpt_path=ckpt)
    return model, trainer


def test_checkpoint_carries_per_class_policies_and_resumes_exactly(tmp_path) -> None:
    """2 x 2 benchmark steps then 4 robust steps: a fit stopped after 4 steps and resumed equals an uninterrupted one."""
    full, _ = _tiny_fit(tmp_path, epochs=2)
    half, trainer = _tiny_fit(tmp_path, epochs=1)
    path = str(tmp_path / "half.ckpt")
    trainer.save_checkpoint(path)
    state = torch.load(path, weights_only=True)["lal_state"]
    assert state["step"] == 4 and state["done_updates"] == 0 and len(state["bench"]) == 2  # both pi_k are in it
    assert bool((half.class_values > 0).all())  # V_k measured before the robust phase
    resumed, _ = _tiny_fit(tmp_path, epochs=2, ckpt=path)
    assert full.done_updates == resumed.done_updates == 4
    torch.testing.assert_close(resumed.class_values, full.class_values, rtol=0, atol=0)
    torch.testing.assert_close(resumed.class_weights, full.class_weights, rtol=0, atol=0)
    for a, b in zip(resumed.policy.parameters(), full.policy.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(resumed._bench[1].parameters(), full._bench[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
