"""Individually fair online learning with one-sided feedback and an auditor panel.

Paper: Bechavod and Roth, "Individually Fair Learning with One-Sided Feedback" (ICML 2023, arXiv
2206.04475). No official code (a theory paper, no experiments).

Each round ``t`` brings ``k`` individuals ``x_{t,1..k}``; the learner deploys a randomized policy
``pi_t`` (a distribution over a finite class ``H`` of classifiers ``h: X -> {0, 1}``), predictions are
sampled from it, and the true label of an individual is seen only where the prediction is 1
(one-sided feedback). A panel of auditors, each with its own similarity metric ``d_j``, reports the
pairs that ``pi_t`` treats too differently. The reduction to a contextual combinatorial semi-bandit:
``error(y_hat, y) = sum_i y_i + sum_i y_hat_i (1 - 2 y_i)`` (the first sum does not depend on the
action and is dropped), so the loss falls only on coordinates predicted 1, whose labels are seen;
a reported pair ``(a, b)`` (``a`` favoured) adds ``C`` phantom copies of ``(x_a, 0)`` and ``(x_b, 1)``,
whose loss ``C (h(x_a) - h(x_b))`` is linear in the action and observed on the same coordinates. Any
contextual semi-bandit learner then gives regret on ``error + C * violations``: Exp2 (exponential
weights over ``H``, importance-weighted loss estimates) and Context-Semi-Bandit-FTPL (Syrgkanis,
Krishnamurthy, Schapire 2016: follow the perturbed leader with fake examples on a separator set,
loss estimates by geometric resampling), which only calls an argmin oracle over ``H``.

Deviations and guesses (the paper's full text was not available here; constructions follow its
abstract and a feasibility note, and are named as guesses):

- Panel rule (guess): auditor ``j`` objects to a pair when ``|pi(x) - pi(x')| > d_j(x, x') + alpha``
  with ``d_j = s_j ||x - x'||_2``; the panel reports the pair when at least ``ceil(quorum * m)`` of
  its ``m`` auditors object. Every reported pair of a round counts as one violation (not at most one
  per round). Fairness is judged on ``pi_t``'s probabilities, never on sampled labels.
- The phantom losses are merged into the instance coordinates they copy (same action, same
  observation) and importance-weighted like the label losses, as a black-box semi-bandit learner would.
- Exp2 mixes ``gamma`` uniform exploration into the exponential weights (Bubeck et al. 2012 mix an
  exploration distribution; uniform over ``H`` is our choice).
- FTPL: the separator set is a seeded sample of points checked to separate ``H``; perturbations are
  Laplace with scale ``noise_scale`` on each separator point's single coordinate; geometric
  resampling is capped at ``resamples`` draws, whose leaders also estimate ``pi_t``'s marginals that the
  panel judges (Monte Carlo, since FTPL's policy is implicit). The oracle is an argmin over the finite
  ``H`` kept as running per-hypothesis sums.
- The naive learner (not from the paper; the hidden-outcome baseline): Hedge on full-information losses
  with every unseen label imputed as 0.
- Benchmark: for ``C > 0``, the best *fair* policy in hindsight, a distribution ``p`` over ``H``
  minimising expected error subject to every pair of every round passing the panel
  (``|sum_h p_h (h(x) - h(x'))| <= tau``, a linear program solved with HiGHS by constraint
  generation); for ``C = 0``, the best fixed ``h``. The learner's cost in the regret is its expected
  error under ``pi_t`` plus ``C`` times the panel's reports.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.optimize import linprog

from zoo.templates.online import OnlineAlgorithm, OnlineModule

__all__ = [
    "FairRound",
    "threshold_class",
    "predict_all",
    "panel_tolerance",
    "panel_reports",
    "one_sided_losses",
    "semi_bandit_estimate",
    "exp2_policy",
    "perturbed_leaders",
    "geometric_resampling",
    "separator_set",
    "best_fixed_policy",
    "best_fair_policy",
    "round_pairs",
    "AuditorPanel",
    "FairSemiBanditLearner",
    "Exp2SemiBandit",
    "ContextSemiBanditFTPL",
    "NaiveOneSided",
    "FairOneSidedModule",
]


@dataclass(eq=False)
class FairRound:  # not frozen: Lightning rebuilds dataclasses when it moves a batch
    """One round: ``x`` (k, d) individuals and their true labels ``y`` (k,) (the simulator's; the learner sees only some)."""

    x: np.ndarray
    y: np.ndarray


# ------------------------------------------------------------------------------------------ the maths
def threshold_class(n_directions: int = 20, n_offsets: int = 10, offset_range: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """Linear thresholds ``h(x) = 1[w . x >= b]``: ``n_directions`` unit ``w`` evenly around the circle times ``n_offsets`` ``b``.

    With an even number of directions and symmetric offsets the class is closed under complement (up to
    the boundary), so the uniform policy predicts 1/2 everywhere and is fair for any panel.
    """
    angles = 2 * math.pi * np.arange(n_directions) / n_directions
    w = np.stack([np.cos(angles), np.sin(angles)], 1)
    b = np.linspace(-offset_range, offset_range, n_offsets)
    return np.repeat(w, n_offsets, 0), np.tile(b, n_directions)


def predict_all(w: np.ndarray, b: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Every hypothesis's labels on ``x``: (H, k) in {0, 1}."""
    return (w @ x.T >= b[:, None]).astype(np.float64)


def panel_tolerance(x: np.ndarray, scales: Sequence[float], alpha: float, quorum: float) -> np.ndarray:
    """(k, k) largest ``|pi(x_a) - pi(x_b)|`` the panel lets pass (guessed rule, see the module docstring).

    Auditor ``j`` objects when the gap exceeds ``s_j ||x_a - x_b|| + alpha``; the panel reports when at
    least ``v = ceil(quorum * m)`` object, i.e. when the gap exceeds the ``v``-th smallest of these bounds.
    """
    votes = max(1, math.ceil(quorum * len(scales) - 1e-12))
    s = float(sorted(scales)[votes - 1])
    dist = np.linalg.norm(x[:, None, :] - x[None, :, :], axis=-1)
    return s * dist + alpha


def panel_reports(marginals: np.ndarray, tolerance: np.ndarray) -> list[tuple[int, int]]:
    """Pairs ``(a, b)``, ``a < b`` by index order of the round, that the panel reports, favoured member first."""
    out = []
    k = len(marginals)
    for i in range(k):
        for j in range(i + 1, k):
            if abs(marginals[i] - marginals[j]) > tolerance[i, j]:
                out.append((i, j) if marginals[i] >= marginals[j] else (j, i))
    return out


def one_sided_losses(y: np.ndarray, pairs: Sequence[tuple[int, int]], C: float) -> np.ndarray:
    """Per-coordinate loss of predicting 1: ``1 - 2 y_i`` (error with ``sum y`` dropped) plus the phantom examples.

    A reported pair ``(a, b)`` adds ``C`` copies of ``(x_a, 0)`` (loss ``+C`` when ``h(x_a) = 1``) and of
    ``(x_b, 1)`` (loss ``-C`` when ``h(x_b) = 1``), so the Lagrangian stays linear in the action.
    """
    loss = 1.0 - 2.0 * np.asarray(y, dtype=np.float64)
    for a, b in pairs:
        loss[a] += C
        loss[b] -= C
    return loss


def semi_bandit_estimate(loss: np.ndarray, chosen: np.ndarray, inverse_prob: np.ndarray) -> np.ndarray:
    """Importance-weighted estimate ``l_i 1[y_hat_i = 1] / P(y_hat_i = 1)``: unbiased, seen only where predicted 1."""
    return np.where(chosen > 0, loss * inverse_prob, 0.0)


def exp2_policy(cumulative: np.ndarray, eta: float, gamma: float) -> np.ndarray:
    """Exp2's distribution over ``H``: ``(1 - gamma) softmax(-eta L_hat) + gamma / |H|``."""
    z = -eta * (cumulative - cumulative.min())
    p = np.exp(z)
    p /= p.sum()
    return (1 - gamma) * p + gamma / len(p)


def perturbed_leaders(cumulative: np.ndarray, separator_preds: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """FTPL's oracle calls: ``argmin_h L_hat(h) + sum_s h(x_s) eps_s`` for each row of ``noise`` (draws, S)."""
    # torch's matmul honours torch.set_num_threads (a small numpy gemm may spin up every BLAS thread)
    scores = torch.from_numpy(cumulative)[:, None] + torch.from_numpy(separator_preds) @ torch.from_numpy(np.ascontiguousarray(noise.T))
    return scores.argmin(0).numpy()


def geometric_resampling(draw_preds: np.ndarray) -> np.ndarray:
    """Per coordinate, the index (1-based) of the first draw predicting 1, capped at the number of draws.

    Its expectation estimates ``1 / P(y_hat_i = 1)`` (Neu and Bartok's geometric resampling, used by
    Context-Semi-Bandit-FTPL); ``draw_preds`` is (M, k).
    """
    m = draw_preds.shape[0]
    hit = draw_preds > 0
    first = np.where(hit.any(0), hit.argmax(0) + 1, m)
    return first.astype(np.float64)


def separator_set(w: np.ndarray, b: np.ndarray, size: int, seed: int) -> np.ndarray:
    """A seeded Gaussian sample of points on which distinct hypotheses of ``H`` differ (grown until they do)."""
    rng = np.random.default_rng([seed, 7])
    points = rng.standard_normal((size, w.shape[1])) * 1.5
    for _ in range(50):
        preds = predict_all(w, b, points)
        if len({row.tobytes() for row in preds}) == len({(tuple(a), c) for a, c in zip(w.round(12), b.round(12))}):
            return points
        points = np.concatenate([points, rng.standard_normal((size, w.shape[1])) * 1.5])
    return points


def round_pairs(
    rounds: Sequence[FairRound], w: np.ndarray, b: np.ndarray, scales: Sequence[float], alpha: float, quorum: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every round's pair rows the panel could report: ``D`` (P, H) with ``h(x_a) - h(x_b)``, ``tau`` (P,), and per-h errors (H,)."""
    rows, taus, errors = [], [], np.zeros(len(b))
    for r in rounds:
        preds = predict_all(w, b, r.x)
        errors += np.abs(preds - r.y[None, :]).sum(1)
        tol = panel_tolerance(r.x, scales, alpha, quorum)
        k = len(r.y)
        for i in range(k):
            for j in range(i + 1, k):
                if tol[i, j] < 1.0:  # a gap of at most 1 passes anyway
                    rows.append(preds[:, i] - preds[:, j])
                    taus.append(tol[i, j])
    d = np.array(rows, dtype=np.float64).reshape(-1, len(b))
    return d, np.array(taus, dtype=np.float64), errors


def best_fixed_policy(errors: np.ndarray) -> tuple[float, int]:
    """The best single hypothesis in hindsight: (its total error, its index)."""
    i = int(errors.argmin())
    return float(errors[i]), i


def best_fair_policy(errors: np.ndarray, d: np.ndarray, tau: np.ndarray, batch: int = 2000, max_rounds: int = 50) -> tuple[float, np.ndarray]:
    """The best fair randomized policy in hindsight: ``min_p errors . p`` s.t. ``|D p| <= tau``, ``p`` in the simplex.

    Solved with HiGHS (``scipy.optimize.linprog``) by constraint generation: start from no pair
    constraints, add the (at most ``batch``) most violated pairs, resolve until none is violated.
    """
    n = len(errors)
    active = np.zeros(0, dtype=np.int64)
    p = np.zeros(n)
    p[int(errors.argmin())] = 1.0
    for _ in range(max_rounds):
        gap = np.abs(d @ p) - tau if len(tau) else np.zeros(0)
        bad = np.flatnonzero(gap > 1e-9)
        if len(bad) == 0:
            return float(errors @ p), p
        bad = bad[np.argsort(-gap[bad])][:batch]
        active = np.union1d(active, bad)
        a = d[active]
        res = linprog(
            errors,
            A_ub=np.concatenate([a, -a]),
            b_ub=np.concatenate([tau[active], tau[active]]),
            A_eq=np.ones((1, n)),
            b_eq=[1.0],
            bounds=(0, None),
            method="highs",
        )
        if res.status != 0:
            raise RuntimeError(f"best_fair_policy: HiGHS failed ({res.message})")
        p = np.clip(res.x, 0, None)
        p /= p.sum()
    raise RuntimeError("best_fair_policy: constraint generation did not converge")


# ------------------------------------------------------------------------------------------ the panel
class AuditorPanel:
    """``m`` auditors with metrics ``s_j ||x - x'||``; reports pairs at least ``quorum`` of them object to (guessed rule)."""

    def __init__(self, scales: Sequence[float] = (0.5, 1.0, 2.0, 4.0, 8.0), alpha: float = 0.1, quorum: float = 0.5) -> None:
        if not scales or min(scales) < 0:
            raise ValueError("scales must be a non-empty list of non-negative numbers")
        if not 0 < quorum <= 1:
            raise ValueError(f"quorum must be in (0, 1], got {quorum}")
        self.scales, self.alpha, self.quorum = [float(s) for s in scales], float(alpha), float(quorum)

    def tolerance(self, x: np.ndarray) -> np.ndarray:
        return panel_tolerance(x, self.scales, self.alpha, self.quorum)

    def report(self, x: np.ndarray, marginals: np.ndarray) -> list[tuple[int, int]]:
        return panel_reports(marginals, self.tolerance(x))


# ------------------------------------------------------------------------------------------ learners
class FairSemiBanditLearner(OnlineAlgorithm):
    """One round of ``k`` individuals per request; cost = sampled errors + ``C`` x panel reports.

    Subclasses give ``marginals_and_action(preds)`` (pi_t's P(y_hat_i = 1), the sampled action) and
    ``learn(preds, y_seen, chosen, pairs, extra)``. ``history`` holds, per round, the expected error
    under pi_t, the sampled error and the number of reported pairs.
    """

    def __init__(self, C: float = 1.0, panel: AuditorPanel | None = None, w: np.ndarray | None = None, b: np.ndarray | None = None, seed: int = 0) -> None:
        if w is None or b is None:
            w, b = threshold_class()
        self.C, self.panel, self.w, self.b, self.seed = float(C), panel if panel is not None else AuditorPanel(), w, b, seed
        self.cumulative = np.zeros(len(b))
        self.rng = np.random.default_rng(seed)
        self.history: list[tuple[float, float, int]] = []

    def marginals_and_action(self, preds: np.ndarray) -> tuple[np.ndarray, np.ndarray, Any]:
        raise NotImplementedError

    def learn(self, preds: np.ndarray, y: np.ndarray, chosen: np.ndarray, pairs: list[tuple[int, int]], extra: Any) -> None:
        raise NotImplementedError

    def serve(self, request: FairRound) -> float:
        preds = predict_all(self.w, self.b, request.x)
        q, chosen, extra = self.marginals_and_action(preds)
        pairs = self.panel.report(request.x, q)  # judged on pi_t's probabilities
        y = np.asarray(request.y, dtype=np.float64)
        expected = float((q * (1 - y) + (1 - q) * y).sum())
        sampled = float(np.abs(chosen - y).sum())
        self.history.append((expected, sampled, len(pairs)))
        self.learn(preds, y, chosen, pairs, extra)
        return sampled + self.C * len(pairs)

    def state_dict(self) -> dict[str, Any]:
        return {
            "cumulative": torch.from_numpy(self.cumulative.copy()),
            "history": torch.tensor(self.history, dtype=torch.float64).reshape(-1, 3),
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cumulative[:] = state["cumulative"].numpy()  # in place: the module's buffer may share this memory
        self.history = [(float(a), float(s), int(v)) for a, s, v in state["history"].tolist()]
        self.rng.bit_generator.state = state["rng"]


class Exp2SemiBandit(FairSemiBanditLearner):
    """Exp2 (Bubeck et al. 2012) over ``H`` with importance-weighted semi-bandit loss estimates."""

    def __init__(
        self,
        C: float = 1.0,
        panel: AuditorPanel | None = None,
        w: np.ndarray | None = None,
        b: np.ndarray | None = None,
        seed: int = 0,
        eta: float = 0.02,
        gamma: float = 0.05,
    ) -> None:
        super().__init__(C, panel, w, b, seed)
        self.eta, self.gamma = float(eta), float(gamma)

    def policy(self) -> np.ndarray:
        return exp2_policy(self.cumulative, self.eta, self.gamma)

    def marginals_and_action(self, preds: np.ndarray) -> tuple[np.ndarray, np.ndarray, Any]:
        p = self.policy()
        q = p @ preds  # P_pi(y_hat_i = 1)
        h = self.rng.choice(len(p), p=p)
        return q, preds[h], q

    def learn(self, preds: np.ndarray, y: np.ndarray, chosen: np.ndarray, pairs: list[tuple[int, int]], extra: Any) -> None:
        seen = np.where(chosen > 0, y, 0.0)  # one-sided: labels only where predicted 1 (unseen ones never used)
        loss = one_sided_losses(seen, pairs, self.C)
        q = np.maximum(extra, 1e-12)
        self.cumulative += preds @ semi_bandit_estimate(loss, chosen, 1.0 / q)


class ContextSemiBanditFTPL(FairSemiBanditLearner):
    """Context-Semi-Bandit-FTPL (Syrgkanis et al. 2016): perturbed leader over history + Laplace fake examples on a separator set."""

    def __init__(
        self,
        C: float = 1.0,
        panel: AuditorPanel | None = None,
        w: np.ndarray | None = None,
        b: np.ndarray | None = None,
        seed: int = 0,
        separator: np.ndarray | None = None,
        noise_scale: float = 20.0,
        resamples: int = 32,
    ) -> None:
        super().__init__(C, panel, w, b, seed)
        if separator is None:
            separator = separator_set(self.w, self.b, 40, seed)
        self.separator_preds = predict_all(self.w, self.b, separator)
        self.noise_scale, self.resamples = float(noise_scale), int(resamples)

    def draws(self, count: int) -> np.ndarray:
        noise = self.rng.laplace(0.0, self.noise_scale, size=(count, self.separator_preds.shape[1]))
        return perturbed_leaders(self.cumulative, self.separator_preds, noise)

    def marginals_and_action(self, preds: np.ndarray) -> tuple[np.ndarray, np.ndarray, Any]:
        h = self.draws(1)[0]
        extra = preds[self.draws(self.resamples)]  # (M, k): the resampled leaders' actions
        return extra.mean(0), preds[h], extra

    def learn(self, preds: np.ndarray, y: np.ndarray, chosen: np.ndarray, pairs: list[tuple[int, int]], extra: Any) -> None:
        seen = np.where(chosen > 0, y, 0.0)
        loss = one_sided_losses(seen, pairs, self.C)
        self.cumulative += preds @ semi_bandit_estimate(loss, chosen, geometric_resampling(extra))


class NaiveOneSided(Exp2SemiBandit):
    """Hedge on full-information losses with unseen labels imputed as 0 (the hidden-outcome bias); no exploration by default."""

    def __init__(self, *args: Any, gamma: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, gamma=gamma, **kwargs)

    def marginals_and_action(self, preds: np.ndarray) -> tuple[np.ndarray, np.ndarray, Any]:
        p = self.policy()
        h = self.rng.choice(len(p), p=p)
        return p @ preds, preds[h], None

    def learn(self, preds: np.ndarray, y: np.ndarray, chosen: np.ndarray, pairs: list[tuple[int, int]], extra: Any) -> None:
        imputed = np.where(chosen > 0, y, 0.0)
        self.cumulative += preds @ one_sided_losses(imputed, pairs, self.C)


# ------------------------------------------------------------------------------------------ the module
class FairOneSidedModule(OnlineModule):
    """Serve rounds of ``k`` individuals with ``learner`` (``"exp2"``, ``"ftpl"`` or ``"naive"``); log regret and violations.

    Logged after the pass (``train/``) and a test stream (``test/``): ``regret`` (expected error plus
    ``C`` x reports, minus the benchmark: the best fair policy's error when ``C > 0``, the best fixed
    ``h``'s when ``C = 0``), the same over the first ``early_fraction`` of the rounds (``regret_early``)
    and their ratio, ``error_regret`` (expected error minus the best fixed ``h``'s; ``_early`` and
    ``_ratio`` likewise), ``violations``,
    ``error_rate`` and the benchmarks' totals. ``forward(round)`` gives the current policy's marginals.
    """

    def __init__(
        self,
        learner: str = "exp2",
        C: float = 1.0,
        eta: float = 0.02,
        gamma: float = 0.05,
        n_directions: int = 20,
        n_offsets: int = 10,
        offset_range: float = 1.5,
        scales: list[float] | None = None,
        alpha: float = 0.1,
        quorum: float = 0.5,
        separator_size: int = 40,
        noise_scale: float = 20.0,
        resamples: int = 32,
        early_fraction: float = 0.2,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if learner not in ("exp2", "ftpl", "naive"):
            raise ValueError(f"learner must be 'exp2', 'ftpl' or 'naive', got {learner!r}")
        if C < 0:
            raise ValueError(f"C must be >= 0, got {C}")
        if n_directions % 2:
            raise ValueError(f"n_directions must be even (the class closed under complement), got {n_directions}")
        self.save_hyperparameters()
        self.w, self.b = threshold_class(n_directions, n_offsets, offset_range)
        self.panel = AuditorPanel(scales if scales is not None else [0.5, 1.0, 2.0, 4.0, 8.0], alpha, quorum)
        # the learner's cumulative loss estimates per hypothesis, shared with the algorithm (published with the module)
        self.register_buffer("cumulative", torch.zeros(len(self.b), dtype=torch.float64))

    def build_algorithm(self) -> OnlineAlgorithm:
        h = self.hparams
        algorithm: FairSemiBanditLearner
        if h.learner == "exp2":
            algorithm = Exp2SemiBandit(h.C, self.panel, self.w, self.b, h.seed, h.eta, h.gamma)
        elif h.learner == "naive":
            algorithm = NaiveOneSided(h.C, self.panel, self.w, self.b, h.seed, h.eta)
        else:
            sep = separator_set(self.w, self.b, h.separator_size, h.seed)
            algorithm = ContextSemiBanditFTPL(h.C, self.panel, self.w, self.b, h.seed, sep, h.noise_scale, h.resamples)
        algorithm.cumulative = self.cumulative.numpy()  # same memory as the buffer
        return algorithm

    def forward(self, round_: FairRound) -> torch.Tensor:
        """The current policy's ``P(y_hat_i = 1)`` on a round's individuals (FTPL: ``resamples`` leaders from a fixed seed)."""
        algorithm = self.algorithm
        preds = predict_all(self.w, self.b, np.asarray(round_.x, dtype=np.float64))
        if isinstance(algorithm, ContextSemiBanditFTPL):
            noise = np.random.default_rng([self.hparams.seed, 11]).laplace(
                0.0, algorithm.noise_scale, size=(algorithm.resamples, algorithm.separator_preds.shape[1])
            )
            q = preds[perturbed_leaders(self.cumulative.numpy(), algorithm.separator_preds, noise)].mean(0)
        else:
            q = exp2_policy(self.cumulative.numpy(), self.hparams.eta, self.hparams.gamma if self.hparams.learner == "exp2" else 0.0) @ preds
        return torch.from_numpy(q)

    def _benchmark(self, rounds: Sequence[FairRound]) -> tuple[float, float]:
        """(benchmark of the regret, best fixed h's error) on ``rounds``."""
        p = self.panel
        d, tau, errors = round_pairs(rounds, self.w, self.b, p.scales, p.alpha, p.quorum)
        best_h, _ = best_fixed_policy(errors)
        if self.hparams.C > 0:
            return best_fair_policy(errors, d, tau)[0], best_h
        return best_h, best_h

    def benchmark(self, requests: list[Any]) -> float | None:
        return self._benchmark(requests)[0] if requests else None

    def _summary(self, rounds: list[FairRound], history: list[tuple[float, float, int]], prefix: str) -> dict[str, torch.Tensor]:
        C = self.hparams.C
        hist = np.array(history, dtype=np.float64).reshape(-1, 3)
        early = max(1, int(round(len(rounds) * self.hparams.early_fraction)))
        bench, best_h = self._benchmark(rounds)
        bench_early, best_h_early = self._benchmark(rounds[:early])
        lagrangian = hist[:, 0] + C * hist[:, 2]
        values = {
            "regret": float(lagrangian.sum() - bench),
            "regret_early": float(lagrangian[:early].sum() - bench_early),
            "error_regret": float(hist[:, 0].sum() - best_h),
            "error_regret_early": float(hist[:early, 0].sum() - best_h_early),
            "violations": float(hist[:, 2].sum()),
            "error_rate": float(hist[:, 0].sum() / (len(rounds) * len(rounds[0].y))),
            "benchmark_error": bench,
            "best_h_error": best_h,
            "sampled_error": float(hist[:, 1].sum()),
        }
        values["regret_ratio"] = values["regret"] / values["regret_early"] if values["regret_early"] else float("nan")
        values["error_regret_ratio"] = values["error_regret"] / values["error_regret_early"] if values["error_regret_early"] else float("nan")
        return {f"{prefix}/{k}": torch.tensor(v, dtype=torch.float64) for k, v in values.items()}

    def on_train_epoch_end(self) -> None:
        history = self.algorithm.history  # type: ignore[attr-defined]
        n = min(len(self._stream), len(history))
        if n:
            self.log_dict(self._summary(self._stream[:n], history[-n:], "train"))

    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        self._test_start = len(self.algorithm.history)  # type: ignore[attr-defined]

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        history = self.algorithm.history[self._test_start :]  # type: ignore[attr-defined]
        if history:
            self.log_dict(self._summary(self._test_requests, history, "test"))
