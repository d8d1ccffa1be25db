"""Balans: bandit-based Adaptive Large Neighbourhood Search for mixed-integer programs, driven from the zoo.

Paper: Cai, Kadioglu, Dilkina, "Balans: Multi-Armed Bandits-based Adaptive Large Neighborhood Search for
Mixed-Integer Programming Problems" (arXiv 2412.14382, IJCAI 2025). Official code: ``skadio/balans``
(PyPI ``balans`` 2.2.0: ``balans/solver.py`` the driver, ``balans/base_instance.py`` the sub-MIPs,
``balans/destroy/*.py`` the neighbourhoods, ``balans/solver_scip.py`` the SCIP back-end).

What it does: from an initial SCIP incumbent, every ALNS iteration a multi-armed bandit (mabwiser,
Thompson sampling by default) picks one destroy neighbourhood (mutation, RINS, RENS, local branching,
proximity, crossover at several sizes), the repair re-solves the restricted sub-MIP with SCIP,
simulated annealing decides acceptance, and the bandit is rewarded by ``scores[outcome]`` with outcome
in (new best, better than current, accepted, rejected).

This is a thin wrapper: neighbourhoods, sub-MIPs, acceptance and bandit are the package's (and
``alns``' / ``mabwiser``'s). What the zoo adds is *stepping*: :class:`BalansSolver` sets up an instance
exactly as ``Balans.solve`` does (read, LP relaxation, first incumbent, operator filtering) and then runs
the body of ``alns.ALNS.iterate`` one iteration per request, so one Lightning training step is one
destroy -> repair -> accept -> bandit update (:func:`alns_step`), logged as it happens.

Deviations and guesses:

- Defaults follow the official ``Balans.__init__`` docstring and the IJCAI-25 config shipped with the
  package (16 arms, SA 20 -> 1 with step 0.1, linear), with Thompson sampling and scores (1, 1, 0, 0);
  the package's own ``default.json`` (Softmax, (8, 4, 2, 1), hill climbing, 10 arms) differs.
- The paper stops on wall-clock (1 h per instance); here the budget is a number of iterations (the
  requests per instance) with short SCIP time limits, so results are machine-independent up to SCIP's
  own time limits.
- ``balans.utils`` keeps a global deadline; it is set to ``deadline`` seconds per instance (finite, so
  the package's first-solution fallback never passes an infinite time to SCIP).
- ``carry_prior=True`` (a zoo extension, not in the paper) warm-starts each new instance's bandit with
  the rewards seen on earlier instances; the paper starts every instance from a fresh bandit (default).
- The package is seeded with ``seed + 1 + k`` on the ``k``-th instance (it needs a positive seed).
- A run resumed from a checkpoint keeps the arm statistics and reward history; the incumbent of an
  instance interrupted mid-way is recomputed (a fresh initial solve), not restored.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np
import torch

from zoo.templates.online import OnlineAlgorithm, OnlineModule

__all__ = ["DESTROY_OPS", "OUTCOMES", "BalansModule", "BalansSolver", "alns_step", "bandit_observations", "prior_observations", "primal_gap", "reward_of"]

DESTROY_OPS = [
    "crossover", "mutation_25", "mutation_50", "mutation_75", "local_branching_10", "local_branching_25",
    "local_branching_50", "proximity_005", "proximity_015", "proximity_030", "rens_25", "rens_50", "rens_75",
    "rins_25", "rins_50", "rins_75",
]  # fmt: skip
OUTCOMES = ("best", "better", "accept", "reject")  # alns.Outcome order: the index into ``scores``


def primal_gap(f: float, f_star: float) -> float:
    """Primal gap ``|f - f*| / max(|f|, |f*|)`` (0 when both are 0), the paper's Section 5 metric."""
    den = max(abs(f), abs(f_star))
    return 0.0 if den == 0.0 else abs(f - f_star) / den


def reward_of(outcome: int, scores: list[float]) -> float:
    """The bandit reward of an iteration: ``scores[outcome]`` (best, better, accept, reject)."""
    return float(scores[outcome])


def alns_step(alns: Any, selector: Any, accept: Any, best: Any, curr: Any) -> tuple[Any, Any, int, int]:
    """One ALNS iteration (the loop body of ``alns.ALNS.iterate``): select -> destroy -> repair -> accept -> update.

    Returns ``(best, curr, destroy index, outcome index)``.
    """
    rng = alns._rng  # noqa: SLF001 the ALNS object's own generator, as iterate() uses it
    d_idx, r_idx = selector(rng, best, curr)  # step 4: the bandit picks a (destroy, repair) arm
    destroyed = alns.destroy_operators[d_idx][1](curr, rng)  # step 4: neighbourhood
    cand = alns.repair_operators[r_idx][1](destroyed, rng)  # step 5: re-solve the sub-MIP
    best, curr, outcome = alns._eval_cand(accept, best, curr, cand)  # noqa: SLF001 step 6: acceptance
    selector.update(cand, d_idx, r_idx, outcome)  # step 7: reward scores[outcome] to the bandit
    return best, curr, int(d_idx), int(outcome)


def bandit_observations(selector: Any) -> float:
    """How many rewards the selector's bandit has absorbed (mabwiser's own counters; 0 for random selection)."""
    mab = getattr(selector, "mab", None)
    if mab is None or not mab._is_initial_fit:  # noqa: SLF001
        return 0.0
    imp = mab._imp  # noqa: SLF001
    if hasattr(imp, "arm_to_success_count"):  # Thompson sampling: Beta(1 + successes, 1 + failures)
        return float(sum(imp.arm_to_success_count.values()) + sum(imp.arm_to_fail_count.values()))
    return float(sum(imp.arm_to_count.values()))  # epsilon-greedy, softmax


def prior_observations(pulls: torch.Tensor, reward_sum: torch.Tensor) -> tuple[list[int], list[float]]:
    """Pseudo-observations that give each arm its recorded count and reward sum (a warm-started prior, zoo extension).

    With 0/1 rewards (scores (1, 1, 0, 0)) arm ``a`` gets ``round(sum)`` ones and the rest zeros, the exact
    Beta counts of Thompson sampling; otherwise ``pulls`` copies of the mean reward (same count and mean).
    """
    arms: list[int] = []
    rewards: list[float] = []
    for a, (n, s) in enumerate(zip(pulls.tolist(), reward_sum.tolist())):
        n = int(round(n))
        if n == 0:
            continue
        ones = int(round(s))
        binary = abs(s - ones) < 1e-9 and 0 <= ones <= n
        arms += [a] * n
        rewards += [1.0] * ones + [0.0] * (n - ones) if binary else [s / n] * n
    return arms, rewards


class BalansSolver(OnlineAlgorithm):
    """Serve ALNS iterations: a request ``{"path", "optimum", ...}`` runs one iteration on that instance.

    The cost of a request is the primal gap of the best solution after the iteration, so the summed
    cost over an instance's requests is its primal integral in iterations.
    """

    def __init__(
        self,
        destroy_ops: list[str] | None = None,
        selector: str = "mab",
        learning_policy: str = "thompson_sampling",
        epsilon: float = 0.15,
        tau: float = 1.0,
        scores: list[float] | None = None,
        accept: str = "simulated_annealing",
        start_temperature: float = 20.0,
        end_temperature: float = 1.0,
        step: float = 0.1,
        timelimit_first_solution: float = 20.0,
        timelimit_alns_iteration: float = 60.0,
        timelimit_local_branching_iteration: float = 150.0,
        timelimit_crossover_random_feasible: float = 20.0,
        deadline: float = 3600.0,
        carry_prior: bool = False,
        seed: int = 123456,
        pulls: torch.Tensor | None = None,
        reward_sum: torch.Tensor | None = None,
    ) -> None:
        from balans.solver import _DESTROY_OP_MAP

        self.destroy_names = list(destroy_ops or DESTROY_OPS)
        self._op_map = {k.lower(): v for k, v in _DESTROY_OP_MAP.items()}
        unknown = [d for d in self.destroy_names if d.lower() not in self._op_map]
        if unknown:
            raise ValueError(f"unknown destroy operators {unknown}; balans has {sorted(self._op_map)}")
        if selector not in ("mab", "random"):
            raise ValueError(f"selector must be 'mab' or 'random', got {selector!r}")
        self.selector_kind, self.learning_policy, self.epsilon, self.tau = selector, learning_policy, epsilon, tau
        self.scores = list(scores if scores is not None else [1.0, 1.0, 0.0, 0.0])
        self.accept_kind, self.temps = accept, (start_temperature, end_temperature, step)
        self.limits = (timelimit_first_solution, timelimit_alns_iteration, timelimit_local_branching_iteration,
                       timelimit_crossover_random_feasible)  # fmt: skip
        self.deadline, self.carry_prior, self.seed = deadline, carry_prior, seed
        n = len(self.destroy_names)
        # arm statistics over every instance served (checkpointed; the module passes its buffers in)
        self.pulls = pulls if pulls is not None else torch.zeros(n, dtype=torch.float64)
        self.reward_sum = reward_sum if reward_sum is not None else torch.zeros(n, dtype=torch.float64)
        self.records: dict[str, dict[str, Any]] = {}  # per instance: initial, best trajectory, arms, rewards
        self._path: str | None = None
        self._instances_started = 0

    # ------------------------------------------------------------------ setup of one instance
    def _policy(self) -> Any:
        from mabwiser.mab import LearningPolicy

        if self.learning_policy == "thompson_sampling":
            return LearningPolicy.ThompsonSampling()
        if self.learning_policy == "epsilon_greedy":
            return LearningPolicy.EpsilonGreedy(epsilon=self.epsilon)
        if self.learning_policy == "softmax":
            return LearningPolicy.Softmax(tau=self.tau)
        raise ValueError(f"learning_policy must be thompson_sampling, epsilon_greedy or softmax, got {self.learning_policy!r}")

    def _start(self, request: dict[str, Any]) -> None:
        """Balans.solve up to the loop: read, LP relaxation, first incumbent (steps 1-3), operator filtering."""
        from alns import ALNS
        from alns.accept import HillClimbing, SimulatedAnnealing
        from alns.select import MABSelector, RandomSelect
        from alns.stop import MaxIterations
        from balans import utils
        from balans.base_instance import _Instance
        from balans.base_mip import create_mip_solver
        from balans.base_state import _State
        from balans.solver import Balans

        seed = self.seed + 1 + self._instances_started  # the package needs seed > 0 (Balans draws randint(0, seed))
        self._instances_started += 1
        ops = [self._op_map[d.lower()] for d in self.destroy_names]
        first, lns, lb, cross = self.limits
        driver = Balans(destroy_ops=ops, stop=MaxIterations(1), seed=seed, mip_solver="scip",
                        timelimit_first_solution=first, timelimit_alns_iteration=lns,
                        timelimit_local_branching_iteration=lb, timelimit_crossover_random_feasible=cross,
                        selector=MABSelector([1, 1, 0, 0], len(ops), 1, self._policy()),
                        accept=HillClimbing())  # fmt: skip
        with contextlib.redirect_stdout(io.StringIO()):
            utils.set_solve_start_time()
            utils.set_solve_deadline(self.deadline)
            mip = create_mip_solver(request["path"], seed, 1, "scip", big_m=driver.big_m)
            instance = _Instance(mip, seed, first, lns, lb, cross)
            x0, f0 = instance.initial_solve()
            if not x0:
                raise RuntimeError(f"balans found no feasible solution for {request['path']} in {first} s")
            driver._instance = instance  # noqa: SLF001 the package's arm filtering reads it
            driver.alns = ALNS(np.random.default_rng(driver.alns_seed))
            if not driver._set_alns_operators():  # noqa: SLF001 drops LB / proximity without binaries, DINS without integers
                raise RuntimeError(f"no destroy operator applies to {request['path']}")
        names = [name.lower() for name, _ in driver.alns.destroy_operators]
        self._arm_index = [self.destroy_names.index(nm) for nm in names]
        k = len(names)
        if self.selector_kind == "random":
            self._selector = RandomSelect(k, 1)
        else:
            self._selector = MABSelector(self.scores, k, 1, self._policy(), seed=seed)
            if self.carry_prior and float(self.pulls.sum()) > 0:  # zoo extension: warm-started arm prior
                arms, rewards = prior_observations(self.pulls[self._arm_index], self.reward_sum[self._arm_index])
                self._selector.mab.partial_fit([f"{i}_0" for i in arms], rewards)
        if self.accept_kind == "simulated_annealing":
            self._accept = SimulatedAnnealing(*self.temps, method="linear")
        elif self.accept_kind == "hill_climbing":
            self._accept = HillClimbing()
        else:
            raise ValueError(f"accept must be simulated_annealing or hill_climbing, got {self.accept_kind!r}")
        self._alns, self._instance = driver.alns, instance
        self._best = self._curr = _State(instance, x0, f0, previous_index_to_val=x0)
        self._sign = -1.0 if mip.is_obj_sense_changed else 1.0  # objectives are minimised internally
        self._path = request["path"]
        self.records[request.get("name", request["path"])] = {
            "initial": self._sign * f0, "best": [], "arm": [], "outcome": [], "reward": [],
            "optimum": float(request.get("optimum", float("nan"))), "arms": names, "sign": self._sign,
            "bandit_updates": 0,
        }  # fmt: skip

    # ------------------------------------------------------------------ OnlineAlgorithm
    def reset(self) -> None:
        self._path = None

    def serve(self, request: dict[str, Any]) -> float:
        if request["path"] != self._path:
            self._start(request)
        seen = bandit_observations(self._selector)
        with contextlib.redirect_stdout(io.StringIO()):
            self._best, self._curr, d_idx, outcome = alns_step(self._alns, self._selector, self._accept, self._best, self._curr)
        reward = reward_of(outcome, self.scores)
        arm = self._arm_index[d_idx]
        self.pulls[arm] += 1  # in place: the module's buffers see it
        self.reward_sum[arm] += reward
        rec = self.records[request.get("name", request["path"])]
        best = self._sign * float(self._best.objective())
        rec["best"].append(best)
        rec["arm"].append(arm)
        rec["outcome"].append(outcome)
        rec["reward"].append(reward)
        rec["bandit_updates"] += int(bandit_observations(self._selector) > seen)
        self.last = {"objective": best, "arm": float(arm), "reward": reward, "outcome": float(outcome)}
        optimum = request.get("optimum")
        return primal_gap(best, float(optimum)) if optimum is not None else 0.0

    def state_dict(self) -> dict[str, Any]:
        return {"pulls": self.pulls.clone(), "reward_sum": self.reward_sum.clone(), "instances_started": self._instances_started}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pulls.copy_(state["pulls"])
        self.reward_sum.copy_(state["reward_sum"])
        self._instances_started, self._path = int(state["instances_started"]), None


class BalansModule(OnlineModule):
    """Balans under Lightning: one training step is one ALNS iteration on the stream's current MIP instance.

    Logs ``train/objective`` (incumbent, the problem's own sense), ``train/gap`` (primal gap vs the
    datamodule's SCIP reference), ``train/arm`` (index into ``destroy_ops``), ``train/reward``; after a
    test stream, per family ``test/<family>/gap`` (mean final primal gap), ``test/<family>/rel``
    (signed: negative when the incumbent beats the reference), ``test/<family>/initial_rel`` (the same
    for the first SCIP incumbent, before any ALNS iteration), ``test/<family>/solved`` (fraction of
    instances with a feasible incumbent), plus ``test/never_worse`` (1 when no best objective ever got
    worse and the final is no worse than the initial incumbent) and ``test/arm_updates`` (iterations in which
    mabwiser's arm statistics moved, per iteration: 1 when they moved every time).
    """

    def __init__(
        self,
        destroy_ops: list[str] | None = None,
        selector: str = "mab",
        learning_policy: str = "thompson_sampling",
        epsilon: float = 0.15,
        tau: float = 1.0,
        scores: list[float] | None = None,
        accept: str = "simulated_annealing",
        start_temperature: float = 20.0,
        end_temperature: float = 1.0,
        step: float = 0.1,
        timelimit_first_solution: float = 20.0,
        timelimit_alns_iteration: float = 60.0,
        timelimit_local_branching_iteration: float = 150.0,
        timelimit_crossover_random_feasible: float = 20.0,
        carry_prior: bool = False,
        seed: int = 123456,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        n = len(destroy_ops or DESTROY_OPS)
        self.register_buffer("pulls", torch.zeros(n, dtype=torch.float64))  # the bandit's arm statistics
        self.register_buffer("reward_sum", torch.zeros(n, dtype=torch.float64))

    def build_algorithm(self) -> BalansSolver:
        args = {k: v for k, v in self.hparams.items() if not k.startswith("_")}  # LightningCLI adds _class_path
        return BalansSolver(**args, pulls=self.pulls, reward_sum=self.reward_sum)

    def forward(self, request: Any = None) -> torch.Tensor:
        """Each arm's mean reward so far (0 for an arm never pulled): what a warm-started prior starts from."""
        del request
        return self.reward_sum / self.pulls.clamp(min=1.0)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        cost = self.serve_chunk(batch)
        last = self.algorithm.last
        logs = {"train/gap": cost, "train/primal_integral": self.cumulative_cost, "train/objective": last["objective"],
                "train/arm": last["arm"], "train/reward": last["reward"]}  # fmt: skip
        self.log_dict({k: torch.tensor(v, dtype=torch.float64) for k, v in logs.items()}, on_step=True, on_epoch=False, batch_size=1)

    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        self.algorithm.records.clear()

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        alg, logs = self.algorithm, {}
        by_family: dict[str, list[tuple[float, float]]] = {}
        never_worse, updates = 1.0, 0
        for name, rec in alg.records.items():
            traj = [rec["sign"] * f for f in (rec["initial"], *rec["best"])]  # min form: maximisation negated
            if any(b > a + 1e-9 for a, b in zip(traj, traj[1:])):
                never_worse = 0.0
            updates += rec["bandit_updates"]
            f, ref = traj[-1], rec["sign"] * rec["optimum"]
            signed = (f - ref) / max(abs(f), abs(ref), 1e-12)  # < 0: better than the SCIP reference
            start = (traj[0] - ref) / max(abs(traj[0]), abs(ref), 1e-12)  # the first SCIP incumbent's
            by_family.setdefault(name.rsplit("_", 1)[0], []).append((primal_gap(f, ref), signed, start))
        for family, gaps in by_family.items():
            logs[f"test/{family}/gap"] = float(np.mean([g[0] for g in gaps]))
            logs[f"test/{family}/rel"] = float(np.mean([g[1] for g in gaps]))
            logs[f"test/{family}/initial_rel"] = float(np.mean([g[2] for g in gaps]))
            logs[f"test/{family}/solved"] = 1.0  # _start raises when no feasible incumbent is found
        logs["test/never_worse"] = never_worse
        logs["test/arm_updates"] = updates / max(float(len(self._test_requests)), 1.0)
        self.log_dict({k: torch.tensor(v, dtype=torch.float64) for k, v in logs.items()})
