"""Convex ReLU training against independent references: LP brute force for the arrangements, a dense
linear solve for ADMM's u-update, CVXPY/Clarabel for the optima, corner enumeration for the certificate."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from scipy.optimize import linprog
from sklearn.datasets import make_moons

import zoo
from zoo.convex_relu import (
    ADMMSolver,
    ConvexReLU,
    GatedReLU,
    add_bias,
    certified_margins,
    cone_violation,
    convex_objective,
    count_arrangements,
    enumerate_arrangements,
    fista_gated,
    network_objective,
    recover_network,
    sample_arrangements,
    solve_cvxpy,
    to_sequential,
    train_nonconvex,
)
from zoo.convex_relu.admm_hinge import MAX_UNKNOWNS, HingeADMM, hinge_prox, robust_cone_depth
from zoo.datamodules.moons import MoonsDataModule

cp = pytest.importorskip("cvxpy")
D64 = torch.float64


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def moons(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    x, labels = make_moons(n_samples=n, noise=0.2, random_state=seed)
    return torch.tensor(x, dtype=D64), torch.tensor(labels, dtype=D64) * 2 - 1


def reference_optimum(x: np.ndarray, y: np.ndarray, masks: np.ndarray, beta: float) -> float:
    """The convex program written independently: one CVXPY variable per neuron, loops over patterns."""
    p = len(masks)
    v = [cp.Variable(x.shape[1]) for _ in range(p)]
    w = [cp.Variable(x.shape[1]) for _ in range(p)]
    pred = sum(cp.multiply(masks[i].astype(float), x @ (v[i] - w[i])) for i in range(p))
    cons = []
    for i in range(p):
        sign = 2 * masks[i].astype(float) - 1
        cons += [cp.multiply(sign, x @ v[i]) >= 0, cp.multiply(sign, x @ w[i]) >= 0]
    obj = 0.5 * cp.sum_squares(pred - y) + beta * sum(cp.norm(v[i]) + cp.norm(w[i]) for i in range(p))
    prob = cp.Problem(cp.Minimize(obj), cons)
    prob.solve(solver=cp.CLARABEL)
    return float(prob.value)


# ------------------------------------------------------------------------ arrangements
def brute_force_patterns(x: np.ndarray) -> set[tuple[bool, ...]]:
    """Every non-zero subset S with some h: x_k h >= 0 on S and x_k h < 0 off S (an LP per subset)."""
    n, d = x.shape
    found = set()
    for bits in itertools.product([False, True], repeat=n):
        mask = np.array(bits)
        if not mask.any():
            continue
        # x_k h >= 0 for k in S, x_k h <= -1 otherwise (scale-free version of < 0)
        a_ub = np.concatenate([-x[mask], x[~mask]])
        b_ub = np.concatenate([np.zeros(mask.sum()), -np.ones((~mask).sum())])
        res = linprog(np.zeros(d), A_ub=a_ub, b_ub=b_ub, bounds=[(None, None)] * d, method="highs")
        if res.status == 0:
            found.add(bits)
    return found


@pytest.mark.parametrize(("n", "bias"), [(7, True), (6, False)])
def test_enumeration_matches_lp_brute_force_on_tiny_2d_data(n: int, bias: bool) -> None:
    x = add_bias(torch.randn(n, 2, generator=torch.Generator().manual_seed(n), dtype=D64), bias)
    got = {tuple(row) for row in enumerate_arrangements(x).numpy().tolist()}
    want = brute_force_patterns(x.numpy())
    assert got == want
    if bias:  # Cover's count of cells; with a bias column the all-zero and all-ones patterns are cells
        assert len(got) == count_arrangements(n, x.shape[1])


def test_enumeration_count_on_moons_and_sampled_patterns_are_a_subset() -> None:
    x, _ = moons(40)
    xt = add_bias(x)
    exact = enumerate_arrangements(xt)
    assert len(exact) == count_arrangements(40, 3) == 1561  # Cover's count: 2 (C(39,0) + C(39,1) + C(39,2)) - 1
    masks, gates = sample_arrangements(xt, 300, seed=1)
    assert len(masks) == len({tuple(r) for r in masks.tolist()}) and masks.any(1).all()
    assert torch.equal(masks, (xt @ gates.T >= 0).T)  # each pattern is its hyperplane's
    assert {tuple(r) for r in masks.tolist()} <= {tuple(r) for r in exact.tolist()}
    with pytest.raises(ValueError, match="sampled"):
        enumerate_arrangements(add_bias(torch.randn(200, 8, dtype=D64)))


# ------------------------------------------------------------------------ reformulation
def feasible_point(x: torch.Tensor, masks: torch.Tensor, gates: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``v_i = c_i h_i`` with ``c_i >= 0`` is in the cone of the pattern of ``h_i``."""
    gen = torch.Generator().manual_seed(seed)
    cv, cw = torch.rand(len(gates), 1, generator=gen, dtype=D64), torch.rand(len(gates), 1, generator=gen, dtype=D64)
    cv[::3] = 0  # some empty groups
    return cv * gates, cw * gates


def test_recovered_network_objective_equals_the_convex_objective_and_a_naive_loop() -> None:
    x, y = moons(30, seed=3)
    xt = add_bias(x)
    masks, gates = sample_arrangements(xt, 25, seed=0)
    v, w = feasible_point(xt, masks, gates, seed=0)
    assert cone_violation(xt, masks, v, w) == 0.0
    naive_pred = sum(masks[i].to(D64) * (xt @ (v[i] - w[i])) for i in range(len(masks)))
    naive = 0.5 * float((naive_pred - y).pow(2).sum()) + 0.7 * float(v.norm(dim=1).sum() + w.norm(dim=1).sum())
    assert convex_objective(xt, y, masks, v, w, 0.7) == pytest.approx(naive, rel=1e-12)
    u, alpha = recover_network(v, w)
    net = to_sequential(u, alpha, 2, width=len(alpha) + 5)
    assert network_objective(net, x, y, 0.7) == pytest.approx(naive, rel=1e-12)
    # without the square-root split the function is right but the weight decay is not
    wrong = to_sequential(u * alpha.abs()[:, None], alpha.sign(), 2)  # first layer v, output +-1
    assert network_objective(wrong, x, y, 0.7) != pytest.approx(naive, rel=1e-3)


def test_woodbury_u_update_and_adjoints_match_dense_matrices() -> None:
    x, y = moons(9, seed=1)
    xt = add_bias(x)
    masks, _ = sample_arrangements(xt, 6, seed=2)
    solver = ADMMSolver(xt, y, masks, beta=0.5, rho=0.7)
    n, d, p = len(xt), xt.shape[1], len(masks)
    f = torch.zeros(n, 2 * p * d, dtype=D64)
    g = torch.zeros(2 * p * n, 2 * p * d, dtype=D64)
    for j in range(2 * p):  # F = [D_1 X ... D_P X, -D_1 X ... -D_P X], G = blockdiag((2 D_i - I) X)
        dmat = torch.diag(masks[j % p].to(D64))
        f[:, j * d : (j + 1) * d] = (1 if j < p else -1) * dmat @ xt
        g[j * n : (j + 1) * n, j * d : (j + 1) * d] = (2 * dmat - torch.eye(n, dtype=D64)) @ xt
    u = torch.randn(2 * p, d, dtype=D64)
    r = torch.randn(n, dtype=D64)
    z = torch.randn(n, 2 * p, dtype=D64)
    assert torch.allclose(solver.f(u), f @ u.reshape(-1))
    assert torch.allclose(solver.ft(r).reshape(-1), f.T @ r)
    assert torch.allclose(solver.g(u).T.reshape(-1), g @ u.reshape(-1))
    assert torch.allclose(solver.gt(z).reshape(-1), g.T @ z.T.reshape(-1))
    a = torch.eye(2 * p * d, dtype=D64) + g.T @ g + f.T @ f / 0.7
    assert torch.allclose(solver.solve_u(u).reshape(-1), torch.linalg.solve(a, u.reshape(-1)), atol=1e-10)


# ------------------------------------------------------------------------ optima vs Clarabel
@pytest.fixture(scope="module")
def exact_problem() -> dict:
    x, y = moons(12, seed=0)
    xt = add_bias(x)
    masks = enumerate_arrangements(xt)
    v, w, value = solve_cvxpy(xt, y, masks, 1.0, tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
    return {"x": x, "y": y, "xt": xt, "masks": masks, "v": v, "w": w, "value": value}


def test_library_cvxpy_program_matches_an_independent_formulation(exact_problem: dict) -> None:
    p = exact_problem
    ref = reference_optimum(p["xt"].numpy(), p["y"].numpy(), p["masks"].numpy(), 1.0)
    assert p["value"] == pytest.approx(ref, rel=1e-6)


def test_admm_reaches_clarabel_and_exported_networks_hit_the_optimum(exact_problem: dict) -> None:
    p = exact_problem
    u, alpha = recover_network(p["v"], p["w"], rel_tol=1e-7)
    assert abs(network_objective(to_sequential(u, alpha, 2), p["x"], p["y"], 1.0) - p["value"]) < 1e-6
    solver = ADMMSolver(p["xt"], p["y"], p["masks"], beta=1.0, rho=2.0)
    state = solver.iterate(solver.init_state(), 1500)
    u, alpha = recover_network(*solver.split(state.v))
    admm = network_objective(to_sequential(u, alpha, 2), p["x"], p["y"], 1.0)
    assert p["value"] - 1e-6 <= admm <= p["value"] * (1 + 1e-3)
    assert state.primal_residual < 1e-3


def test_admm_sign_error_is_caught(exact_problem: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """A u-update that forgets the minus on the w-blocks of F solves another problem."""
    p = exact_problem
    solver = ADMMSolver(p["xt"], p["y"], p["masks"], beta=1.0, rho=2.0)
    solver.dms = solver.dms.abs()
    solver.dms_t = solver.dms.T.contiguous()
    solver.fty = solver.ft(solver.y)
    state = solver.iterate(solver.init_state(), 1500)
    u, alpha = recover_network(*solver.split(state.v))
    assert network_objective(to_sequential(u, alpha, 2), p["x"], p["y"], 1.0) > p["value"] * 1.01


def test_adam_never_ends_below_the_convex_optimum(exact_problem: dict) -> None:
    p = exact_problem
    net, values = train_nonconvex(p["x"], p["y"], width=8, beta=1.0, restarts=4, steps=400, seed=0)
    assert values.shape == (4,) and isinstance(net, torch.nn.Sequential)
    assert float(values.min()) >= p["value"] - 1e-6
    assert network_objective(net, p["x"], p["y"], 1.0) == pytest.approx(float(values.min()), rel=1e-12)


def test_mean_reduction_scales_beta_and_keeps_rho_meaningful() -> None:
    """reduction='mean' is the summed problem with beta * n, divided by n: same network, same rho."""
    x, y = moons(12, seed=0)
    dm = MoonsDataModule(n_train=12, n_val=4, n_test=20, seed=0)
    results = {}
    for reduction, beta in (("sum", 1.0), ("mean", 1.0 / 12)):
        model = ConvexReLU(width=64, reduction=reduction, beta=beta, rho=2.0, max_iters=600, iters_per_step=300)
        _fit(model, dm)
        results[reduction] = model
    xs = dm.train_set.tensors[0].to(D64)
    ys = dm.train_set.tensors[1].to(D64) * 2 - 1
    obj_sum = network_objective(results["sum"].net, xs, ys, 1.0)
    obj_mean = network_objective(results["mean"].net, xs, ys, 1.0 / 12, reduction="mean")
    assert obj_mean == pytest.approx(obj_sum / 12, rel=1e-9)
    assert torch.allclose(results["sum"](xs), results["mean"](xs), atol=1e-9)


def test_gated_scp_matches_cvxpy_and_relaxes_the_constrained_program() -> None:
    x, y = moons(20, seed=2)
    xt = add_bias(x)
    masks, gates = sample_arrangements(xt, 15, seed=0)
    u, _ = fista_gated(xt, y, masks, beta=0.5, iterations=3000)
    ucp = cp.Variable((len(masks), 3))
    pred = cp.sum(cp.multiply(masks.numpy().T.astype(float), xt.numpy() @ ucp.T), axis=1)
    ref = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(pred - y.numpy()) + 0.5 * cp.sum(cp.norm(ucp, 2, axis=1))))
    ref.solve(solver=cp.CLARABEL)
    net = GatedReLU(2, len(masks))
    with torch.no_grad():
        net.gates.copy_(gates)
        net.weight.copy_(u)
    gated = network_objective(net, x, y, 0.5)
    assert gated == pytest.approx(ref.value, rel=1e-5)
    _, _, constrained = solve_cvxpy(xt, y, masks, 0.5)
    assert gated <= constrained + 1e-6


# ------------------------------------------------------------------------ robust program
def test_certified_margins_match_box_corners() -> None:
    """Where no neuron flips, f is linear on the L-inf box and its minimum is at a corner."""
    gen = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 6), torch.nn.ReLU(), torch.nn.Linear(6, 1, bias=False)).to(D64)
    x = torch.randn(300, 2, generator=gen, dtype=D64) * 2
    y = torch.where(torch.rand(300, generator=gen) > 0.5, 1.0, -1.0).to(D64)
    eps = 0.05
    margins = certified_margins(net, x, y, eps)
    corners = torch.tensor(list(itertools.product([-eps, eps], repeat=2)), dtype=D64)
    with torch.no_grad():
        worst = torch.stack([y * net(x + c)[:, 0] for c in corners]).min(0).values
    stable = torch.isfinite(margins)
    assert stable.sum() > 100
    assert torch.allclose(margins[stable], worst[stable], atol=1e-10)


def test_robust_program_certificate_holds_against_pgd() -> None:
    from zoo.convex_relu import ScoreLogits
    from zoo.nn.attacks import PGD

    x, y = moons(30, seed=1)
    xt = add_bias(x)
    masks, _ = sample_arrangements(xt, 60, seed=0)
    eps = 0.1
    v, w, value = solve_cvxpy(xt, y, masks, 0.1, loss="hinge", epsilon=eps, n_features=2, tol_gap_abs=1e-9, tol_gap_rel=1e-9)
    assert cone_violation(xt, masks, v, w, eps, n_features=2) < 1e-7
    assert convex_objective(xt, y, masks, v, w, 0.1, "hinge", epsilon=eps, n_features=2) == pytest.approx(value, rel=1e-6)
    net = to_sequential(*recover_network(v, w, rel_tol=1e-7), 2)
    assert network_objective(net, x, y, 0.1, "hinge", epsilon=eps) == pytest.approx(value, abs=1e-4)
    margins = certified_margins(net, x, y, eps)
    assert torch.isfinite(margins).all()  # the robust constraints keep every neuron stable on the data
    certified = margins > 0
    x_adv = PGD(eps=eps, alpha=eps / 4, steps=20, clip=None)(ScoreLogits(net), x, (y > 0).long())
    with torch.no_grad():
        robust = (net(x_adv)[:, 0] > 0) == (y > 0)
    assert certified.sum() > 10 and bool(robust[certified].all())
    with torch.no_grad():  # and the certified margin is attained: PGD gets within 1e-6 of it
        assert torch.all(y * net(x_adv)[:, 0] >= margins - 1e-9)


def test_hinge_prox_is_the_minimiser_on_a_grid() -> None:
    q = torch.linspace(-2, 3, 41, dtype=D64)
    grid = torch.linspace(-4, 5, 90001, dtype=D64)
    for rho in (0.5, 2.0):
        values = (1 - grid[None]).clamp_min(0) + rho / 2 * (grid[None] - q[:, None]) ** 2
        assert torch.allclose(hinge_prox(q, rho), grid[values.argmin(1)], atol=2e-4)


@pytest.mark.parametrize(("epsilon", "expected"), [(0.0, 0.5 / math.sqrt(2)), (0.5, 0.5 / math.sqrt(1.25))])
def test_hinge_admm_hand_checked_one_point_program(epsilon: float, expected: float) -> None:
    """x~ = (1, 1), y = +1, one pattern, beta = 0.5, the first coordinate attacked: w = 0 and v = (a, b) with the
    largest robust margin a + b - eps |a| per unit norm, i.e. direction (1 - eps, 1): optimum beta / ||(1 - eps, 1)||."""
    xt, y, masks = torch.ones(1, 2, dtype=D64), torch.ones(1, dtype=D64), torch.ones(1, 1, dtype=torch.bool)
    _, _, clarabel = solve_cvxpy(xt, y, masks, 0.5, "hinge", epsilon, n_features=1)
    admm = HingeADMM(xt, y, masks, 0.5, rho=1.0, epsilon=epsilon, n_features=1)
    state = admm.iterate(admm.init_state(), 3000)
    v, w = admm.split(state.v)
    value = convex_objective(xt, y, masks, v, w, 0.5, "hinge", epsilon=epsilon, n_features=1)
    assert clarabel == pytest.approx(expected, rel=1e-6)
    assert value == pytest.approx(expected, rel=1e-5)
    assert float(w.norm()) < 1e-6 and cone_violation(xt, masks, v, w, epsilon, 1) < 1e-6


@pytest.mark.parametrize(("epsilon", "rel"), [(0.0, 3e-3), (0.1, 2e-3)])
def test_hinge_and_robust_admm_reach_clarabel(epsilon: float, rel: float) -> None:
    """6,000 iterations on a small sampled program (measured 2.1e-3 and 1.1e-3 from the optimum: ADMM is slow on these LP-like programs)."""
    x, y = moons(16, seed=2)
    xt = add_bias(x)
    masks, _ = sample_arrangements(xt, 12, seed=0)
    _, _, optimum = solve_cvxpy(xt, y, masks, 0.1, "hinge", epsilon, n_features=2, tol_gap_abs=1e-10, tol_gap_rel=1e-10)
    admm = HingeADMM(xt, y, masks, 0.1, rho=3.0, epsilon=epsilon, n_features=2)
    state = admm.iterate(admm.init_state(), 6000)
    v, w = admm.split(state.v)
    value = convex_objective(xt, y, masks, v, w, 0.1, "hinge", epsilon=epsilon, n_features=2)
    assert abs(value - optimum) <= rel * optimum
    assert cone_violation(xt, masks, v, w, epsilon, n_features=2) < 1e-3


@pytest.mark.parametrize(("epsilon", "depths"), [(0.5, [1.0, 0.5, 0.5, 1.0]), (1.0, [1.0, 0.0, 0.0, 1.0])])
def test_robust_cone_depth_hand_checked(epsilon: float, depths: list[float]) -> None:
    """x~ = (-1, 1), (1, 1). Patterns (both on / first / second / none): the mixed ones need (1 - eps) |u_1| >= s from
    the sum of their two rows, so they are eps |u_1| = 0.5 deep at u = (-+1, 0) and flat at eps = 1; the others reach u = (0, +-1)."""
    xt = np.array([[-1.0, 1.0], [1.0, 1.0]])
    masks = np.array([[1, 1], [1, 0], [0, 1], [0, 0]], dtype=bool)
    got = [robust_cone_depth(xt, m, epsilon, 1) for m in masks]
    assert got == pytest.approx(depths, abs=1e-9)


def test_robust_admm_drops_flat_cones_and_reaches_clarabel() -> None:
    """At eps = 1 on x = -1, 1 (the previous test's points) the two mixed patterns have no interior: ADMM drops them,
    keeps their groups at 0, and still lands just above the optimum of the full program: with y = +1 on both points,
    v_0 = (0, 1) (a constant output 1, no slope) gives 0 hinge loss plus beta = 0.1, which Clarabel confirms."""
    xt = torch.tensor([[-1.0, 1.0], [1.0, 1.0]], dtype=D64)
    y = torch.tensor([1.0, 1.0], dtype=D64)
    masks = torch.tensor([[1, 1], [1, 0], [0, 1], [0, 0]], dtype=torch.bool)
    _, _, optimum = solve_cvxpy(xt, y, masks, 0.1, "hinge", 1.0, n_features=1, tol_gap_abs=1e-10, tol_gap_rel=1e-10)
    admm = HingeADMM(xt, y, masks, 0.1, rho=1.0, epsilon=1.0, n_features=1)
    assert admm.dropped_patterns == 2 and admm.kept.tolist() == [0, 3]
    assert HingeADMM(xt, y, masks, 0.1, epsilon=0.5, n_features=1).dropped_patterns == 0
    v, w = admm.split(admm.iterate(admm.init_state(), 2000).v)
    assert float(v[1:3].abs().sum() + w[1:3].abs().sum()) == 0.0
    value = convex_objective(xt, y, masks, v, w, 0.1, "hinge", epsilon=1.0, n_features=1)
    assert optimum == pytest.approx(0.1, rel=1e-6)
    assert optimum - 1e-6 <= value <= optimum * (1 + 1e-4)
    assert cone_violation(xt, masks, v, w, 1.0, 1) < 1e-6


def test_pgd_adversarial_training_picks_its_start_by_the_adversarial_objective() -> None:
    """PGD-AT's best start is chosen by the objective it trains (on PGD examples), which is above the clean one."""
    from zoo.convex_relu.nonconvex import AdamRun

    x, y = moons(20, seed=0)
    run = AdamRun(x, y, 8, 0.1, "hinge", "sum", 3, 20, 0.01, True, 0, epsilon=0.1, attack_steps=5)
    run.step(20)
    with torch.no_grad():
        clean = run.objectives()
    _, values = run.best()
    assert bool((values > clean + 1e-6).all())


# ------------------------------------------------------------------------ Lightning wrapper
def _fit(model: ConvexReLU, dm: MoonsDataModule, tmp: Path | None = None) -> Trainer:
    trainer = Trainer(
        max_epochs=-1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp,
    )
    trainer.fit(model, datamodule=dm)
    return trainer


@pytest.mark.parametrize(
    "kwargs",
    [
        {"solver": "admm", "max_iters": 400, "iters_per_step": 200},
        {"solver": "clarabel"},
        {"solver": "scp", "arrangements": "sampled", "num_hyperplanes": 20, "max_iters": 300, "iters_per_step": 150},
        {"solver": "adam", "width": 8, "max_iters": 100, "iters_per_step": 50, "restarts": 3},
        {"solver": "adam", "width": 8, "max_iters": 6, "iters_per_step": 6, "restarts": 2, "loss": "hinge", "epsilon": 0.1},
        {"solver": "clarabel", "arrangements": "sampled", "loss": "hinge", "epsilon": 0.1, "beta": 0.1},
        {"solver": "admm", "arrangements": "sampled", "loss": "hinge", "epsilon": 0.1, "beta": 0.1, "max_iters": 200, "iters_per_step": 100},
    ],
    ids=["admm", "clarabel", "scp", "adam", "adam-pgd-at", "robust", "robust-admm"],
)
def test_fit_logs_every_metric_and_round_trips_through_the_hub(kwargs: dict, tmp_path: Path) -> None:
    dm = MoonsDataModule(n_train=12, n_val=4, n_test=30, seed=0)
    model = ConvexReLU(**{"width": 64, "attack_epsilon": 0.1, "attack_steps": 3, **kwargs})
    trainer = _fit(model, dm, tmp_path)
    logged = trainer.callback_metrics
    assert {"train/objective", "train/objective_gap", "train/width", "train/pgd_acc"} <= set(logged)
    assert logged["train/objective"].dtype == D64
    if kwargs["solver"] == "clarabel":
        assert abs(float(logged["train/objective_gap"])) < (1e-4 if "epsilon" in kwargs else 1e-6)
    if kwargs["solver"] == "scp":
        assert isinstance(model.to_sequential(), GatedReLU)
    else:
        assert isinstance(model.to_sequential(), torch.nn.Sequential)
    trainer.test(model, datamodule=dm, verbose=False)
    acc = float(trainer.callback_metrics["test/acc"])
    assert 0.5 <= acc <= 1.0 if kwargs["solver"] != "adam" else 0.0 <= acc <= 1.0  # (adam runs a few steps only)
    model.save_pretrained(tmp_path / "hub")
    loaded = zoo.load(tmp_path / "hub")
    x = dm.test_set.tensors[0]
    assert torch.equal(model(x), loaded(x))


def test_invalid_settings_name_the_fix() -> None:
    with pytest.raises(ValueError, match="clarabel"):
        ConvexReLU(solver="admm", loss="logistic")
    with pytest.raises(ValueError, match="clarabel"):
        ConvexReLU(solver="scp", arrangements="sampled", loss="hinge")
    with pytest.raises(ValueError, match="hinge"):
        ConvexReLU(solver="admm", epsilon=0.1)
    xt, y = add_bias(torch.zeros(3, 2, dtype=D64)), torch.ones(3, dtype=D64)
    masks = torch.ones(1, 3, dtype=torch.bool)
    for bad in ({"rho": 0.0}, {"relax": 2.0}, {"epsilon": -0.1}, {"epsilon": 0.1, "n_features": 5}):
        with pytest.raises(ValueError, match="rho|relax|epsilon|n_features"):
            HingeADMM(xt, y, masks, 0.1, **bad)
    with pytest.raises(ValueError, match="num_hyperplanes|clarabel"):  # the dense system is bounded
        HingeADMM(xt, y, torch.ones(MAX_UNKNOWNS // 6 + 1, 3, dtype=torch.bool), 0.1)
    with pytest.raises(ValueError, match="hinge"):
        ConvexReLU(solver="clarabel", epsilon=0.1)
    with pytest.raises(ValueError, match="sampled"):
        ConvexReLU(solver="scp")
    with pytest.raises(ValueError, match="solver"):
        ConvexReLU(solver="sgd")


def test_moons_datamodule_is_seeded_and_splits_are_independent() -> None:
    a, b = MoonsDataModule(n_train=20, seed=3), MoonsDataModule(n_train=20, seed=3)
    a.setup(), b.setup()
    assert torch.equal(a.train_set.tensors[0], b.train_set.tensors[0])
    assert not torch.equal(a.train_set.tensors[0][:20], a.test_set.tensors[0][:20])
    x, y = next(iter(a.train_dataloader()))
    assert x.shape == (20, 2) and set(y.tolist()) <= {0, 1}
    ref, _ = make_moons(n_samples=20, noise=0.2, random_state=3)
    assert np.allclose(a.train_set.tensors[0].numpy(), ref, atol=1e-6)
    assert math.isclose(MoonsDataModule(standardize=True, seed=1).train_dataloader().dataset.tensors[0].mean(0).abs().max().item(), 0, abs_tol=1e-5)
