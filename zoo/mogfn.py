"""Multi-Objective GFlowNets: preference-conditional GFlowNets (MOGFN-PC) on a multi-objective hypergrid.

Paper: Jain, Raparthy, Hernández-García, Rector-Brooks, Bengio, Miret, Bengio, "Multi-Objective
GFlowNets", ICML 2023, arXiv 2210.12765. Official code: GFNOrg/multi-objective-gfn, whose N-gram and
DNA tasks live in MJ10/mo_gfn (``torch_seq_moo/algorithms/mogfn.py``: training step, reward
scalarisation, conditioning; ``mogfn_utils/utils.py``: thermometer code, simplex grid, Pareto front).

What the method does: objectives ``R_1..R_d >= 0`` are scalarised by a preference ``omega`` on the
simplex, ``R(x | omega) = (sum_i omega_i R_i(x))^beta`` (the paper's convex / weighted-sum reward;
``logconvex`` is ``prod_i R_i^omega_i``). One GFlowNet ``P_F(. | s, omega)`` with a learned
``log Z(omega)`` is trained for all preferences at once with trajectory balance: each step draws one
``omega ~ Dir(alpha 1_d)`` shared by the batch, encodes it with a thermometer code fed to both the policy
and ``log Z``, samples trajectories on-policy with probability ``epsilon`` of a uniform random action,
and minimises ``(log Z(omega) + sum log P_F - beta log R(x | omega) - sum log P_B)^2``. At evaluation,
for each preference of a uniform simplex grid it samples candidates, keeps the best by
``R(x | omega)``, and scores the Pareto front of those with the hypervolume and the R2 indicator.

Built on torchgfn 1.2.1 (``gfn.gym.HyperGrid`` for the state space, actions and masks,
``gfn.modules.DiscretePolicyEstimator`` for ``P_F`` and ``P_B``, ``gfn.samplers.Sampler`` for
trajectories with epsilon-exploration, ``gfn.gflownet.TBGFlowNet.get_trajectories_scores`` for
``sum log P_F - sum log P_B - log R``). torchgfn 1.2.1 is the newest release that installs beside
numpy 2 (later releases pin numpy < 2); it has no conditioning (states carry no condition, the
reward and ``log Z`` are not conditional). Conditioning is added here the way the official code does
it, with one preference per batch: the preference is set on the environment (its reward) and on the
policy network (its input) before a batch is sampled, and ``log Z(omega)`` is a linear map of the
thermometer code (a separate Adam group, as in the official code).

Deviations and guesses:

- Task: the CPU-scale hypergrid of the independent feasibility check, not N-grams, DNA or molecules:
  a ``height^ndim`` grid, start at the origin, +1 moves along an axis or stop; objective ``i`` is
  ``sqrt(1 - ||u - e_i|| / sqrt(ndim))`` on coordinates ``u`` scaled to ``[0, 1]`` (a peak in corner
  ``e_i``, a convex Pareto front), normalised to ``[0, 1]``. The true Pareto set is the strictly
  non-dominated states (19 on the 8 x 8 grid; the independent check counted the 22 weakly
  non-dominated ones, which add states tied with a Pareto state on one objective).
- Policy: an MLP (2 x 64) on ``[k-hot state, thermometer(omega)]`` instead of the paper's transformer;
  ``P_B`` uniform over parents (the hypergrid is a DAG, not a tree).
- ``beta = 8`` (paper 96 on N-grams) and a log-reward floor of ``log(1e-4)`` on ``log(omega . R)``
  before the ``beta`` multiply (paper ``1e-80``; on this grid ``1e-80`` diverged for a fixed
  preference at a simplex vertex, where some states have zero reward). Learning rates 1e-3 / 1e-2
  (paper 1e-4 / 1e-3 for a transformer trained 10000 steps).
- The fixed-preference baseline (``fixed_preferences=[0, 0.25, 0.5, 0.75, 1]``) splits the same number of
  training steps over one unconditional GFlowNet per preference; at evaluation each grid preference
  uses the model trained at the nearest preference.
"""

from __future__ import annotations

import itertools
import math

import torch
from gfn.gflownet import TBGFlowNet
from gfn.gym import HyperGrid
from gfn.modules import DiscretePolicyEstimator
from gfn.states import DiscreteStates
from torch import Tensor, nn

from zoo.templates.solver import SolverModule

__all__ = [
    "PreferenceConditionalGFlowNet",
    "conditional_log_reward",
    "grid_objectives",
    "hypervolume",
    "pareto_mask",
    "r2_indicator",
    "simplex_grid",
    "thermometer",
    "trajectory_balance_loss",
]


# ---------------------------------------------------------------------------------------------- maths
def grid_objectives(coords: Tensor, height: int) -> Tensor:
    """Objectives ``(n, ndim)`` of grid states ``(n, ndim)``: ``R_i = sqrt(1 - ||u - e_i|| / sqrt(ndim))``, ``u = s / (H - 1)``."""
    ndim = coords.shape[-1]
    u = coords.double() / (height - 1)
    corners = torch.eye(ndim, dtype=torch.float64)
    dist = (u.unsqueeze(-2) - corners).norm(dim=-1)  # (n, ndim): distance to corner e_i (exact, not cdist's matmul form)
    return (1.0 - dist / math.sqrt(ndim)).clamp_min(0.0).sqrt()


def thermometer(values: Tensor, n_bins: int = 50) -> Tensor:
    """Thermometer code of values in ``[0, 1]`` (official ``thermometer``): bins ``b_j`` uniform on ``[0, 1]``,
    each value becomes ``clamp((v - b_j) / gap, 0, 1)`` over the bins; ``(..., d) -> (..., d * n_bins)``."""
    bins = torch.linspace(0.0, 1.0, n_bins, dtype=values.dtype, device=values.device)
    gap = bins[1] - bins[0]
    return ((values.unsqueeze(-1) - bins) / gap).clamp(0.0, 1.0).flatten(-2)


def conditional_log_reward(objectives: Tensor, pref: Tensor, beta: float, reward_min: float = 1e-4, kind: str = "convex") -> Tensor:
    """``beta * log R(x | omega)`` (Sec. 3.1 scalarisation), ``log R`` floored at ``log(reward_min)``.

    ``convex``: ``R = sum_i omega_i R_i``; ``logconvex``: ``log R = sum_i omega_i log R_i``.
    """
    if kind == "convex":
        log_r = (objectives * pref).sum(-1).clamp_min(0.0).log()
    elif kind == "logconvex":
        log_r = (pref * objectives.clamp_min(reward_min).log()).sum(-1)
    else:
        raise ValueError(f"reward_type must be 'convex' or 'logconvex', got {kind!r}")
    return beta * log_r.clamp_min(math.log(reward_min))


def trajectory_balance_loss(log_z: Tensor, log_pf: Tensor, log_pb: Tensor, log_reward: Tensor) -> Tensor:
    """Trajectory balance (Malkin et al. 2022, conditional form of MOGFN-PC Eq. 4), mean over the batch:
    ``(log Z(omega) + sum_t log P_F - log R(x | omega) - sum_t log P_B)^2``."""
    return (log_z + log_pf - log_reward - log_pb).pow(2).mean()


def pareto_mask(points: Tensor) -> Tensor:
    """Boolean mask of the non-dominated rows of ``(n, d)`` (maximisation); duplicates of a Pareto point all count."""
    ge = (points.unsqueeze(1) >= points.unsqueeze(0)).all(-1)  # ge[j, i]: j weakly dominates i
    gt = (points.unsqueeze(1) > points.unsqueeze(0)).any(-1)
    dominated = (ge & gt).any(0)
    return ~dominated


def hypervolume(points: Tensor, ref: Tensor | None = None) -> float:
    """Exact hypervolume dominated by ``points (n, d)`` above ``ref`` (default 0), for ``d`` = 2 or 3 (maximisation).

    2-D: sweep the front sorted by the first objective. 3-D: slice along the third objective and sum
    2-D hypervolumes times slab heights.
    """
    pts = points.double()
    d = pts.shape[-1]
    ref = torch.zeros(d, dtype=torch.float64) if ref is None else ref.double()
    pts = pts[(pts > ref).all(-1)]
    if len(pts) == 0:
        return 0.0
    if d == 2:
        pts = pts[pareto_mask(pts)]
        order = torch.argsort(pts[:, 0], descending=True)
        total, best_y = 0.0, float(ref[1])
        for x, y in pts[order].tolist():
            if y > best_y:
                total += (x - float(ref[0])) * (y - best_y)
                best_y = y
        return total
    if d == 3:
        zs = sorted(set(pts[:, 2].tolist()), reverse=True) + [float(ref[2])]
        total = 0.0
        for z_hi, z_lo in itertools.pairwise(zs):
            total += hypervolume(pts[pts[:, 2] >= z_hi][:, :2], ref[:2]) * (z_hi - z_lo)
        return total
    raise ValueError(f"exact hypervolume is implemented for 2 or 3 objectives, got {d}")


def r2_indicator(points: Tensor, weights: Tensor, utopia: Tensor) -> float:
    """R2 indicator (Brockhoff et al. 2012), lower is better:
    ``1/|W| sum_w min_{a} max_j w_j |z*_j - a_j|`` over weight vectors ``W (k, d)`` and utopian point ``z*``."""
    gaps = (utopia.double() - points.double()).abs()  # (n, d)
    tcheby = (weights.double().unsqueeze(1) * gaps.unsqueeze(0)).amax(-1)  # (k, n)
    return float(tcheby.amin(1).mean())


def simplex_grid(n_obj: int, n_bins: int) -> Tensor:
    """All preferences on the simplex with coordinates in ``{0, 1/(n_bins-1), ..., 1}`` (official ``simplex_bins``),
    the first coordinate ascending for two objectives."""
    steps = n_bins - 1
    rows = [c for c in itertools.product(range(steps + 1), repeat=n_obj - 1) if sum(c) <= steps]
    grid = torch.tensor([[*c, steps - sum(c)] for c in rows], dtype=torch.float64) / steps
    return grid


# ---------------------------------------------------------------------------------------------- torchgfn glue
class _PreferenceGrid(HyperGrid):
    """torchgfn's HyperGrid whose reward is ``R(x | omega)^beta`` for the preference currently set on it."""

    def __init__(self, ndim: int, height: int, beta: float, reward_min: float, reward_type: str) -> None:
        super().__init__(ndim=ndim, height=height)
        self.beta, self.reward_min, self.reward_type = beta, reward_min, reward_type
        self.pref = torch.full((ndim,), 1.0 / ndim, dtype=torch.float64)

    def log_reward(self, final_states: DiscreteStates) -> Tensor:
        objectives = grid_objectives(final_states.tensor, self.height)
        return conditional_log_reward(objectives, self.pref, self.beta, self.reward_min, self.reward_type).float()

    def reward(self, final_states: DiscreteStates) -> Tensor:
        return self.log_reward(final_states).exp()


class _ConditionedMLP(nn.Module):
    """MLP on ``[preprocessed state, condition]``; the condition (one per batch) is set before each use."""

    def __init__(self, in_dim: int, cond_dim: int, out_dim: int, hidden: int, layers: int) -> None:
        super().__init__()
        dims = [in_dim + cond_dim] + [hidden] * layers
        body: list[nn.Module] = []
        for a, b in itertools.pairwise(dims):
            body += [nn.Linear(a, b), nn.LeakyReLU()]
        self.net = nn.Sequential(*body, nn.Linear(dims[-1], out_dim))
        self.condition = torch.zeros(cond_dim)

    def forward(self, x: Tensor) -> Tensor:
        cond = self.condition.to(x).expand(*x.shape[:-1], -1)
        return self.net(torch.cat([x, cond], -1))


class _Uniform(nn.Module):
    """Zero logits: a uniform backward policy over the parents torchgfn's masks allow."""

    def __init__(self, out_dim: int) -> None:
        super().__init__()
        self.out_dim = out_dim

    def forward(self, x: Tensor) -> Tensor:
        return torch.zeros(*x.shape[:-1], self.out_dim, device=x.device)


# ---------------------------------------------------------------------------------------------- modules
class PreferenceConditionalGFlowNet(SolverModule):
    """MOGFN-PC: one preference-conditional GFlowNet trained by trajectory balance on a multi-objective hypergrid.

    ``fit`` with :class:`zoo.datamodules.ParetoGridDataModule` (the grid's states): ``max_iters`` training
    steps of ``batch_size`` trajectories, ``iters_per_step`` per Lightning step. The last step evaluates on
    a ``simplex_bins`` preference grid and logs ``train/hv`` (hypervolume of the top-1 per preference,
    reference 0), ``train/hv_oracle`` (the same with the best state per preference), ``train/r2``,
    ``train/pareto_frac`` (share of the true Pareto states, found by enumeration, among all samples),
    ``train/mono_frac`` (share of grid steps where the mean ``R_1`` of the samples does not drop by more
    than ``mono_tol``) and ``train/r1_gap`` (mean ``R_1`` at ``omega_1 = 1`` minus at ``omega_1 = 0``).
    ``forward(states)`` gives the forward-policy logits at the uniform preference.
    """

    def __init__(
        self,
        ndim: int = 2,
        height: int = 8,
        reward_type: str = "convex",
        beta: float = 8.0,
        reward_min: float = 1e-4,
        pref_alpha: float = 1.0,
        therm_n_bins: int = 50,
        hidden: int = 64,
        layers: int = 2,
        batch_size: int = 64,
        pi_lr: float = 1e-3,
        z_lr: float = 1e-2,
        wd: float = 0.0,
        grad_clip: float = 10.0,
        random_action_prob: float = 0.01,
        max_iters: int = 1500,
        iters_per_step: int = 100,
        simplex_bins: int = 11,
        num_samples_eval: int = 128,
        mono_tol: float = 0.02,
        fixed_preferences: list[float] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if ndim < 2 or height < 2 or beta <= 0 or pref_alpha <= 0:
            raise ValueError(f"need ndim >= 2, height >= 2, beta > 0, pref_alpha > 0; got {ndim}, {height}, {beta}, {pref_alpha}")
        self.env = _PreferenceGrid(ndim, height, beta, reward_min, reward_type)
        in_dim, n_actions = self.env.preprocessor.output_dim, self.env.n_actions
        prefs = self._fixed_prefs()
        conditional = prefs is None
        n_models = 1 if conditional else len(prefs)
        cond_dim = ndim * therm_n_bins if conditional else 0
        self.policies = nn.ModuleList(_ConditionedMLP(in_dim, cond_dim, n_actions, hidden, layers) for _ in range(n_models))
        # log Z(omega): linear in the thermometer code (conditional); one scalar per fixed-preference model
        self.log_z = nn.ModuleList(nn.Linear(max(cond_dim, 1), 1) for _ in range(n_models))
        for lz in self.log_z:
            nn.init.zeros_(lz.weight)
            nn.init.zeros_(lz.bias)
        pb = DiscretePolicyEstimator(_Uniform(n_actions - 1), n_actions, preprocessor=self.env.preprocessor, is_backward=True)
        self._pb = pb
        self._gfns = [TBGFlowNet(pf=DiscretePolicyEstimator(p, n_actions, preprocessor=self.env.preprocessor), pb=pb, logZ=0.0) for p in self.policies]
        self.done_iterations = 0
        self._opts: list[torch.optim.Optimizer] = []
        self._final: dict[str, float] = {}

    def _fixed_prefs(self) -> Tensor | None:
        prefs = self.hparams.fixed_preferences
        if prefs is None:
            return None
        if self.hparams.ndim != 2:
            raise ValueError("fixed_preferences lists omega_1 for two objectives; use ndim=2")
        w = torch.tensor(prefs, dtype=torch.float64)
        return torch.stack([w, 1 - w], -1)

    # -------------------------------------------------------------- conditioning
    def _condition(self, k: int, pref: Tensor) -> Tensor:
        """Set ``omega`` on the reward and on policy ``k``; return the ``log Z`` input."""
        self.env.pref = pref.double()
        if self._fixed_prefs() is None:
            code = thermometer(pref.float(), self.hparams.therm_n_bins)
            self.policies[k].condition = code
            return code.to(self.device)
        self.policies[k].condition = torch.zeros(0)  # unconditional: no condition input, a scalar log Z
        return torch.ones(1, device=self.device)

    def _model_for(self, pref: Tensor) -> int:
        prefs = self._fixed_prefs()
        return 0 if prefs is None else int((prefs - pref.double()).abs().sum(-1).argmin())

    # -------------------------------------------------------------- solver hooks
    @property
    def iterations(self) -> int:
        return self.done_iterations

    def start_solver(self, x: Tensor, y: Tensor) -> None:
        hp = self.hparams
        if x.shape[1] != hp.ndim or len(x) != hp.height**hp.ndim:
            raise ValueError(f"the datamodule's grid ({tuple(x.shape)}) does not match ndim={hp.ndim}, height={hp.height}")
        self.states = x.long().cpu()
        self.objectives = grid_objectives(self.states, hp.height)
        self._opts = [
            torch.optim.Adam(
                [{"params": p.parameters(), "lr": hp.pi_lr}, {"params": z.parameters(), "lr": hp.z_lr}],
                weight_decay=hp.wd,
            )
            for p, z in zip(self.policies, self.log_z, strict=True)
        ]
        self.done_iterations = 0

    def _train_pref(self) -> tuple[int, Tensor]:
        prefs = self._fixed_prefs()
        if prefs is None:  # one omega ~ Dir(alpha 1_d) per batch (official train_step)
            alpha = torch.full((self.hparams.ndim,), float(self.hparams.pref_alpha))
            return 0, torch.distributions.Dirichlet(alpha).sample()
        k = min(self.done_iterations * len(prefs) // self.hparams.max_iters, len(prefs) - 1)  # equal share of the budget
        return k, prefs[k]

    def solver_iterate(self, iterations: int) -> bool:
        hp = self.hparams
        for _ in range(iterations):
            k, pref = self._train_pref()
            code = self._condition(k, pref)
            gfn = self._gfns[k]
            # on-policy sampling with epsilon-uniform actions; the taken actions are re-scored under P_F
            traj = gfn.sample_trajectories(self.env, n_samples=hp.batch_size, save_logprobs=False, epsilon=hp.random_action_prob)
            log_pf, log_pb, _ = gfn.get_trajectories_scores(traj, recalculate_all_logprobs=True)
            loss = trajectory_balance_loss(self.log_z[k](code).squeeze(-1), log_pf, log_pb, traj.log_rewards)
            opt = self._opts[k]
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_([*self.policies[k].parameters(), *self.log_z[k].parameters()], hp.grad_clip)
            opt.step()
            self.done_iterations += 1
            self._last_loss = float(loss.detach())
        return False

    @torch.no_grad()
    def sample(self, pref: Tensor, n: int) -> Tensor:
        """``n`` terminal states ``(n, ndim)`` sampled from ``P_F(. | omega = pref)`` (no exploration)."""
        k = self._model_for(pref)
        self._condition(k, pref)
        traj = self._gfns[k].sample_trajectories(self.env, n_samples=n, save_logprobs=False)
        return traj.last_states.tensor.long()

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """The paper's evaluation on a uniform preference grid (top-1 per preference), plus coverage and monotonicity."""
        hp = self.hparams
        grid = simplex_grid(hp.ndim, hp.simplex_bins)
        states = self.states if hasattr(self, "states") else torch.cartesian_prod(*[torch.arange(hp.height)] * hp.ndim).reshape(-1, hp.ndim)
        all_obj = grid_objectives(states, hp.height)
        true_front = {tuple(s) for s in states[pareto_mask(all_obj)].tolist()}
        top1, oracle, r1_means, seen = [], [], [], set()
        for pref in grid:
            x = self.sample(pref, hp.num_samples_eval)
            obj = grid_objectives(x, hp.height)
            score = (obj * pref).sum(-1)
            top1.append(obj[score.argmax()])
            oracle.append(all_obj[(all_obj * pref).sum(-1).argmax()])
            r1_means.append(float(obj[:, 0].mean()))
            seen |= {tuple(s) for s in x.tolist()}
        top1_t, oracle_t = torch.stack(top1), torch.stack(oracle)
        steps = torch.tensor(r1_means).diff()
        return {
            "train/hv": hypervolume(top1_t),
            "train/hv_oracle": hypervolume(oracle_t),
            "train/r2": r2_indicator(top1_t, grid, torch.ones(hp.ndim)),
            "train/pareto_frac": len(true_front & seen) / len(true_front),
            "train/mono_frac": float((steps >= -hp.mono_tol).double().mean()) if hp.ndim == 2 else float("nan"),
            "train/r1_gap": r1_means[-1] - r1_means[0] if hp.ndim == 2 else float("nan"),
        }

    def solver_metrics(self, final: bool) -> dict[str, float]:
        logs = {"train/tb_loss": getattr(self, "_last_loss", float("nan"))}
        if final:
            self._final = self.evaluate()
            logs.update(self._final)
        return logs

    def forward(self, x: Tensor) -> Tensor:
        """Forward-policy logits ``(n, ndim + 1)`` of grid states ``x (n, ndim)`` at the uniform preference."""
        ndim = self.hparams.ndim
        pref = torch.full((ndim,), 1.0 / ndim, dtype=torch.float64)
        k = self._model_for(pref)
        self._condition(k, pref)
        pre = self.env.preprocessor(self.env.States(x.long().cpu()))
        return self.policies[k](pre.to(self.device))
