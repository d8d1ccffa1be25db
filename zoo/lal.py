"""Learning to Actively Learn (LAL): a query policy trained against an adversary inside each difficulty class.

Paper: Zhang, Jain, Jamieson, "Learning to Actively Learn: A Robust Approach", arXiv 2010.15382 (v4).
Official code: none public (the authors' later repositories, GALAXY / ACED / TAILOR, are other works).

What it does, for best-arm identification with ``n`` Bernoulli arms and ``T`` pulls: problems are grouped
into classes ``Theta_r = {theta : C(theta) <= r}`` by the lower-bound complexity
``C(theta) = sum_{i != *} Delta_i^-2`` (paper Section 3). For each class an adversary (a finite set of learned
instances, kept inside the class by construction) maximises the error of the policy while the policy,
trained by REINFORCE, minimises it. Per-class policies ``pi_k`` give the benchmark ``V_k``; the robust
policy minimises ``max_k (worst_k - V_k)`` (the gap to each class's best policy), the max handled by class
weights updated by exponentiated gap. At test a fresh adversary is run against the frozen policy.

Deviations and guesses (the paper's Sections 3-4 give no architecture at this scale):

- the policy is a permutation-equivariant per-arm MLP on sufficient statistics (pulls, successes,
  posterior mean, gap to the best mean, unpulled flag, t/T), not a GRU over the raw history: a GRU
  stayed at chance in an independent CPU check at this budget;
- the adversary parametrises ``mu*`` and the shares of ``Delta_i^-2`` so that ``C(theta) = r`` exactly
  (``in_class_instances``); projecting after unconstrained steps collapsed to degenerate instances;
- the adversary ascends a score-function (likelihood-ratio) gradient of the error; the policy's answer
  head gets the exact gradient of the expected 0-1 loss, its query head REINFORCE with a per-instance
  mean baseline and an entropy bonus;
- each class's loss is the mean error over its ``worst`` hardest instances; ``V_k`` is the fresh-adversary
  worst-case error of the per-class policy ``pi_k`` (trained first, in the same fit).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from zoo.hub import ZooModule

__all__ = [
    "AdaptiveQueryPolicy",
    "LALModule",
    "SequentialHalving",
    "UniformAllocation",
    "arm_features",
    "complexity",
    "in_class_instances",
    "rollout",
    "worst_case_error",
]

_MAX_GAP = 0.98  # Delta_i <= 0.98 keeps every mean in [0, 1] with room for mu*


def complexity(theta: Tensor) -> Tensor:
    """``C(theta) = sum_{i != *} (theta_* - theta_i)^-2`` (the best-arm lower bound, paper Section 3), per row."""
    if theta.dim() < 1 or theta.shape[-1] < 2:
        raise ValueError(f"theta must have at least 2 arms in its last dimension, got shape {tuple(theta.shape)}")
    top2 = theta.topk(2, dim=-1).values
    if bool((top2[..., 0] == top2[..., 1]).any()):
        raise ValueError("the best arm must be unique (C(theta) is infinite otherwise)")
    gaps = theta.max(dim=-1, keepdim=True).values - theta
    inv = torch.where(gaps > 0, gaps.clamp_min(1e-12) ** -2, torch.zeros_like(gaps))
    return inv.sum(-1)


def in_class_instances(mu_raw: Tensor, share_logits: Tensor, best: Tensor, r: float) -> Tensor:
    """Bernoulli means with ``C(theta) = r`` exactly: ``Delta_i^-2 = 1/0.98^2 + (r - (n-1)/0.98^2) softmax(w)_i``.

    ``mu* = max_i Delta_i + (1 - max_i Delta_i) sigmoid(mu_raw)`` keeps every mean in ``[0, 1]``; the best arm
    sits at ``best``. Shapes: ``mu_raw (N,)``, ``share_logits (N, n-1)``, ``best (N,)`` -> ``theta (N, n)``.
    """
    n = share_logits.shape[-1] + 1
    floor = (n - 1) / _MAX_GAP**2
    if r <= floor:
        raise ValueError(f"class r={r} is empty for {n} arms: every instance has C(theta) > {floor:.3f}")
    inv_sq = 1.0 / _MAX_GAP**2 + (r - floor) * share_logits.softmax(-1)
    gaps = inv_sq.rsqrt()  # (N, n-1)
    top = gaps.max(-1).values
    mu = top + (1.0 - top) * torch.sigmoid(mu_raw)
    others = mu.unsqueeze(-1) - gaps
    theta = torch.empty(len(mu), n, dtype=gaps.dtype, device=gaps.device)
    mask = torch.ones_like(theta, dtype=torch.bool)
    mask[torch.arange(len(mu)), best] = False
    theta = theta.masked_scatter(mask, others)
    theta = theta.masked_scatter(~mask, mu)
    return theta


def arm_features(pulls: Tensor, wins: Tensor, t: int, budget: int) -> Tensor:
    """Per-arm sufficient statistics ``(..., n, 6)``: pulls/T, wins/T, Beta(1,1) posterior mean, its gap to the best, unpulled, t/T."""
    mean = (wins + 1.0) / (pulls + 2.0)
    gap = mean.max(-1, keepdim=True).values - mean
    return torch.stack([pulls / budget, wins / budget, mean, gap, (pulls == 0).to(mean.dtype), torch.full_like(mean, t / budget)], dim=-1)


class AdaptiveQueryPolicy(nn.Module):
    """A shared per-arm MLP: features ``(..., n, 6)`` -> query logits and answer logits, each ``(..., n)``."""

    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        if hidden < 1:
            raise ValueError(f"hidden must be positive, got {hidden}")
        self.net = nn.Sequential(nn.Linear(6, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 2))

    def reset(self, batch: int, num_arms: int, budget: int) -> None:
        """Stateless: nothing to reset between rollouts."""

    def forward(self, pulls: Tensor, wins: Tensor, t: int, budget: int) -> tuple[Tensor, Tensor]:
        out = self.net(arm_features(pulls, wins, t, budget))
        return out[..., 0], out[..., 1]


def _empirical_best(pulls: Tensor, wins: Tensor, allowed: Tensor | None = None) -> Tensor:
    """Answer distribution: uniform over the (allowed) arms of highest empirical mean (unpulled arms count 0)."""
    mean = torch.where(pulls > 0, wins / pulls.clamp_min(1), torch.zeros_like(wins))
    if allowed is not None:
        mean = torch.where(allowed, mean, torch.full_like(mean, -1.0))
    ties = (mean >= mean.max(-1, keepdim=True).values - 1e-9).to(mean.dtype)
    return ties / ties.sum(-1, keepdim=True)


class UniformAllocation(nn.Module):
    """Round robin over the arms (``T / n`` pulls each), answer the best empirical mean, ties at random."""

    def reset(self, batch: int, num_arms: int, budget: int) -> None:
        """Stateless."""

    def forward(self, pulls: Tensor, wins: Tensor, t: int, budget: int) -> tuple[Tensor, Tensor]:
        query = torch.full_like(pulls, -math.inf)
        query[..., t % pulls.shape[-1]] = 0.0
        return query, _empirical_best(pulls, wins).log()


class SequentialHalving(nn.Module):
    """Karnin et al. (2013) with a small-budget schedule: round ``j`` pulls each survivor ``max(1, B_left / (|S| R_left))`` times.

    With 8 arms and 16 pulls: 8 arms once, 4 arms once, 2 arms twice. The better half by empirical mean
    survives each round, ties broken at random (a random priority per rollout, drawn at ``reset`` from a
    generator seeded by ``seed``): breaking them by arm index would let the adversary hurt the baseline by
    placing the best arm last. The answer is the best survivor, ties at random.
    """

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self._gen = torch.Generator().manual_seed(seed)

    def reset(self, batch: int, num_arms: int, budget: int) -> None:
        self.survivors: Tensor | None = None
        self.priority = torch.rand(batch, num_arms, generator=self._gen)  # random tie-breaking among equal means
        self.schedule: list[int] = []  # step at which each round ends
        rounds, left, alive, t = math.ceil(math.log2(num_arms)), budget, num_arms, 0
        self.per_arm: list[int] = []
        for j in range(rounds):
            k = max(1, left // (alive * (rounds - j)))
            self.per_arm.append(k)
            t += k * alive
            left -= k * alive
            self.schedule.append(t)
            alive = max(1, math.ceil(alive / 2))
        if t > budget:
            raise ValueError(f"sequential halving needs at least {t} pulls for {num_arms} arms, budget is {budget}")

    def forward(self, pulls: Tensor, wins: Tensor, t: int, budget: int) -> tuple[Tensor, Tensor]:
        if self.survivors is None or self.survivors.shape != pulls.shape:
            self.survivors = torch.ones_like(pulls, dtype=torch.bool)
        if t in self.schedule[:-1]:  # a round ended: keep the better half
            alive = int(self.survivors.reshape(-1, pulls.shape[-1])[0].sum())
            mean = torch.where(self.survivors, wins / pulls.clamp_min(1), torch.full_like(wins, -1.0))
            if self.priority.numel() != mean.numel():
                self.priority = torch.rand(mean.shape, generator=self._gen)
            # means with <= T pulls differ by >= 1/T > 1e-3, so the priority only orders exact ties
            mean = mean + 1e-3 * self.priority.view(mean.shape).to(mean)
            keep = mean.topk(math.ceil(alive / 2), dim=-1).indices
            self.survivors = torch.zeros_like(self.survivors).scatter(-1, keep, True)
        start = ([0, *self.schedule])[sum(t >= s for s in self.schedule[:-1])]
        alive_idx = self.survivors.nonzero()[:, -1].view(*pulls.shape[:-1], -1)
        if t < self.schedule[-1]:
            pick = alive_idx[..., (t - start) % alive_idx.shape[-1]]
        else:  # budget left over after the last round: pull the leader
            pick = _empirical_best(pulls, wins, self.survivors).argmax(-1)
        query = torch.full_like(pulls, -math.inf).scatter(-1, pick.unsqueeze(-1), 0.0)
        return query, _empirical_best(pulls, wins, self.survivors).log()


def rollout(policy: nn.Module, theta: Tensor, budget: int, rollouts: int, generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """Play ``policy`` for ``budget`` pulls on every instance ``rollouts`` times.

    Returns per ``(N, R)``: ``error`` = 1 - P(answer = best arm) (differentiable in the answer head),
    ``logp_query`` (sum of the query log-probabilities, for REINFORCE), ``entropy`` (mean query entropy)
    and ``logp_obs`` (sum of ``log P_theta(y_t | x_t)``, differentiable in ``theta``, for the adversary's
    score-function gradient).
    """
    if theta.dim() != 2:
        raise ValueError(f"theta must be (instances, arms), got shape {tuple(theta.shape)}")
    n_inst, n = theta.shape
    th = theta.unsqueeze(1).expand(n_inst, rollouts, n)
    pulls = torch.zeros(n_inst, rollouts, n, dtype=theta.dtype, device=theta.device)
    wins = torch.zeros_like(pulls)
    logp_query = torch.zeros(n_inst, rollouts, dtype=theta.dtype, device=theta.device)
    entropy = torch.zeros_like(logp_query)
    logp_obs = torch.zeros_like(logp_query)
    policy.reset(n_inst * rollouts, n, budget)
    for t in range(budget):
        logits, _ = policy(pulls, wins, t, budget)
        dist = torch.distributions.Categorical(logits=logits)
        arm = torch.multinomial(dist.probs.detach().reshape(-1, n), 1, generator=generator).view(n_inst, rollouts)
        logp_query = logp_query + dist.log_prob(arm)
        entropy = entropy + torch.where(torch.isfinite(logits), -dist.probs * dist.logits, torch.zeros_like(logits)).sum(-1) / budget
        p = th.gather(-1, arm.unsqueeze(-1)).squeeze(-1).clamp(1e-6, 1 - 1e-6)
        y = (torch.rand(p.shape, generator=generator, dtype=p.dtype, device=p.device) < p.detach()).to(p.dtype)
        logp_obs = logp_obs + y * p.log() + (1 - y) * (1 - p).log()  # Bernoulli likelihood of the observation
        hot = torch.nn.functional.one_hot(arm, n).to(pulls.dtype)
        pulls, wins = pulls + hot, wins + hot * y.unsqueeze(-1)
    _, answer = policy(pulls, wins, budget, budget)
    best = theta.argmax(-1)
    p_best = answer.softmax(-1).gather(-1, best.view(-1, 1, 1).expand(n_inst, rollouts, 1)).squeeze(-1)
    return {"error": 1.0 - p_best, "logp_query": logp_query, "entropy": entropy, "logp_obs": logp_obs}


class _Adversary(nn.Module):
    """``N`` learned instances inside class ``r``: ``mu_raw (N,)``, ``share_logits (N, n-1)``, fixed best positions."""

    def __init__(self, r: float, num_instances: int, num_arms: int, generator: torch.Generator) -> None:
        super().__init__()
        self.r = float(r)
        self.mu_raw = nn.Parameter(torch.randn(num_instances, generator=generator))
        self.share_logits = nn.Parameter(torch.randn(num_instances, num_arms - 1, generator=generator))
        self.register_buffer("best", torch.randint(num_arms, (num_instances,), generator=generator))

    def forward(self) -> Tensor:
        return in_class_instances(self.mu_raw, self.share_logits, self.best, self.r)


def _adversary_step(adv: _Adversary, opt: torch.optim.Optimizer, out: dict[str, Tensor]) -> None:
    """Gradient ascent on E[error] by the likelihood ratio: grad = E[(error - baseline) grad log P_theta(y)]."""
    err = out["error"].detach()
    advantage = err - err.mean(1, keepdim=True)
    opt.zero_grad()
    (-(advantage * out["logp_obs"]).mean()).backward(inputs=list(adv.parameters()))
    opt.step()


def worst_case_error(
    policy: nn.Module,
    r: float,
    num_arms: int,
    budget: int,
    generator: torch.Generator,
    instances: int = 32,
    steps: int = 40,
    rollouts: int = 64,
    eval_rollouts: int = 256,
    lr: float = 0.05,
) -> float:
    """A fresh adversary's worst-case error against the frozen ``policy`` in class ``r`` (max over its instances)."""
    adv = _Adversary(r, instances, num_arms, generator)
    opt = torch.optim.Adam(adv.parameters(), lr=lr)
    for p in policy.parameters():
        p.requires_grad_(False)
    try:
        for _ in range(steps):
            _adversary_step(adv, opt, rollout(policy, adv(), budget, rollouts, generator))
        with torch.no_grad():
            err = rollout(policy, adv(), budget, eval_rollouts, generator)["error"].mean(1)
    finally:
        for p in policy.parameters():
            p.requires_grad_(True)
    return float(err.max())


def _policy_loss(out: dict[str, Tensor], worst: int, entropy: float) -> tuple[Tensor, Tensor]:
    """(surrogate loss, per-instance error): mean over the ``worst`` hardest instances of the expected error.

    Answer head: exact gradient of the expected 0-1 loss; query head: REINFORCE with the per-instance mean
    baseline; minus ``entropy`` times the query entropy.
    """
    err = out["error"]
    per_inst = err.detach().mean(1)
    hard = per_inst.topk(min(worst, len(per_inst))).indices
    advantage = err.detach() - err.detach().mean(1, keepdim=True)
    surrogate = err + advantage * out["logp_query"] - entropy * out["entropy"]
    return surrogate[hard].mean(), per_inst[hard].mean()


POLICIES = ("learned", "uniform", "halving")


def _seeded_policy(seed: int, hidden: int) -> AdaptiveQueryPolicy:
    """A policy whose initial weights depend on ``seed`` only (not on the global RNG's position)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AdaptiveQueryPolicy(hidden)


class LALModule(ZooModule):
    """Train per-class policies (the benchmarks ``V_k``), then one policy robust over the classes; test on a fresh adversary.

    One ``training_step`` is one alternating update (adversary ascent, then policy descent). Steps
    ``0 .. K * benchmark_updates - 1`` train the per-class policies ``pi_k`` (identical across arms of the same
    seed); the rest train the module's policy on ``train_classes`` (all classes: the robust policy,
    weights ``q_k ∝ exp(eta * gap_k)``). ``policy="uniform"`` / ``"halving"`` train nothing after the benchmarks.
    ``test`` logs ``test/worst_<r>``, ``test/gap_<r>`` and ``test/gap`` = max_k (worst_k - V_k).
    """

    def __init__(
        self,
        num_arms: int = 8,
        budget: int = 16,
        classes: Sequence[float] = (10.0, 20.0, 40.0),
        train_classes: Sequence[float] | None = None,
        policy: str = "learned",
        hidden: int = 64,
        updates: int = 150,
        benchmark_updates: int = 150,
        instances: int = 32,
        rollouts: int = 4,
        worst: int = 8,
        lr: float = 0.01,
        adv_lr: float = 0.01,
        entropy: float = 0.01,
        eta: float = 2.0,
        test_instances: int = 32,
        test_steps: int = 40,
        test_rollouts: int = 64,
        test_eval_rollouts: int = 256,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        classes = [float(r) for r in classes]
        train_classes = classes if train_classes is None else [float(r) for r in train_classes]
        floor = (num_arms - 1) / _MAX_GAP**2
        bad = [r for r in {*classes, *train_classes} if r <= floor]
        if bad:
            raise ValueError(f"classes {bad} are empty for {num_arms} arms: every r must exceed {floor:.3f}")
        if not set(train_classes) <= set(classes):
            raise ValueError(f"train_classes {train_classes} must be among classes {classes} (their V_k is needed)")
        if min(budget, instances, rollouts, worst, updates + 1, benchmark_updates + 1) < 1:
            raise ValueError("budget, instances, rollouts and worst must be positive; updates and benchmark_updates >= 0")
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.classes, self.train_classes = classes, train_classes
        self.policy = _seeded_policy(seed, hidden) if policy == "learned" else (UniformAllocation() if policy == "uniform" else SequentialHalving(seed))
        self.register_buffer("class_values", torch.zeros(len(classes)))  # V_k (0 until measured)
        self.register_buffer("class_weights", torch.full((len(train_classes),), 1.0 / len(train_classes)))
        self.done_updates = 0

    def forward(self, theta: Tensor) -> Tensor:
        """Answer probabilities ``(N, n)`` of the policy on instances ``theta (N, n)``, over 64 seeded rollouts."""
        was = torch.is_grad_enabled()
        with torch.no_grad():
            torch.set_grad_enabled(False)
            probs = self._answer_probs(theta.to(torch.float32), torch.Generator().manual_seed(0))
        torch.set_grad_enabled(was)
        return probs

    def _answer_probs(self, theta: Tensor, generator: torch.Generator, rollouts: int = 64) -> Tensor:
        n_inst, n = theta.shape
        out = torch.zeros(n_inst, n)
        for arm in range(n):  # P(answer = arm) = 1 - error on theta with `arm` made the best
            lifted = theta.clone()
            lifted[:, arm] = theta.max(-1).values + 1e-3
            gen = torch.Generator().manual_seed(int(generator.initial_seed()))
            out[:, arm] = 1.0 - rollout(self.policy, lifted.clamp(max=1.0), self.hparams.budget, rollouts, gen)["error"].mean(1)
        return out

    # ------------------------------------------------------------------ training
    def configure_optimizers(self) -> list:
        return []  # the policies and adversaries are stepped here with their own Adam

    def on_train_start(self) -> None:
        hp = self.hparams
        self._gen = torch.Generator().manual_seed(hp.seed)
        self._bench = [_seeded_policy(hp.seed + 1 + k, hp.hidden) for k in range(len(self.classes))]
        self._bench_opt = [torch.optim.Adam(p.parameters(), lr=hp.lr) for p in self._bench]
        self._bench_adv = [_Adversary(r, hp.instances, hp.num_arms, self._gen) for r in self.classes]
        self._adv = [_Adversary(r, hp.instances, hp.num_arms, torch.Generator().manual_seed(hp.seed + 100 + k)) for k, r in enumerate(self.train_classes)]
        self._adv_opt = [torch.optim.Adam(a.parameters(), lr=hp.adv_lr) for a in [*self._bench_adv, *self._adv]]
        self._opt = torch.optim.Adam(self.policy.parameters(), lr=hp.lr) if hp.policy == "learned" else None
        self._step = 0
        resume = getattr(self, "_resume", None)
        if resume is not None:  # a resumed fit continues exactly where the checkpoint left off
            self._resume = None
            self._step, self.done_updates = int(resume["step"]), int(resume["done_updates"])
            self._gen.set_state(resume["generator"])
            for mods, key in ((self._bench, "bench"), (self._bench_adv, "bench_adv"), (self._adv, "adv")):
                for mod, state in zip(mods, resume[key], strict=True):
                    mod.load_state_dict(state)
            for opt, state in zip([*self._bench_opt, *self._adv_opt], [*resume["bench_opt"], *resume["adv_opt"]], strict=True):
                opt.load_state_dict(state)
            if self._opt is not None:
                self._opt.load_state_dict(resume["opt"])

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The Lightning checkpoint also carries what the published weights leave out and a resumed fit needs:

        the per-class policies ``pi_k``, every adversary, every optimiser state, the update counters and the
        rollout generator (tensors, lists and numbers only, so ``torch.load(weights_only=True)`` reads it).
        """
        if not hasattr(self, "_gen"):
            return  # never trained: the weights and V_k say everything
        checkpoint["lal_state"] = {
            "step": self._step,
            "done_updates": self.done_updates,
            "generator": self._gen.get_state(),
            "bench": [m.state_dict() for m in self._bench],
            "bench_adv": [m.state_dict() for m in self._bench_adv],
            "adv": [m.state_dict() for m in self._adv],
            "bench_opt": [o.state_dict() for o in self._bench_opt],
            "adv_opt": [o.state_dict() for o in self._adv_opt],
            "opt": None if self._opt is None else self._opt.state_dict(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._resume = checkpoint.get("lal_state")
        if self._resume is not None:
            self.done_updates = int(self._resume["done_updates"])

    def _update(self, policy: nn.Module, advs: list[_Adversary], adv_opts: list, opt: torch.optim.Optimizer, weights: Tensor) -> Tensor:
        """One alternating update over classes: adversary ascent, then the weighted policy loss; returns each class's worst error."""
        hp = self.hparams
        losses, errs = [], []
        for adv, adv_opt in zip(advs, adv_opts, strict=True):
            out = rollout(policy, adv(), hp.budget, hp.rollouts, self._gen)
            _adversary_step(adv, adv_opt, out)
            loss, err = _policy_loss(out, hp.worst, hp.entropy)
            losses.append(loss)
            errs.append(err)
        opt.zero_grad()
        (torch.stack(losses) * weights).sum().backward(inputs=list(policy.parameters()))
        opt.step()
        return torch.stack(errs)

    def _test_gen(self, k: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.hparams.seed + 1000 + k)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        hp = self.hparams
        k_bench = len(self.classes) * hp.benchmark_updates
        one = torch.ones(1)
        with torch.enable_grad():
            if self._step < k_bench:  # step 2 of the paper: per-class policies pi_k
                k = self._step // hp.benchmark_updates
                err = self._update(self._bench[k], [self._bench_adv[k]], [self._adv_opt[k]], self._bench_opt[k], one)
                self.log("train/bench_error", float(err[0]), batch_size=1)
                if (self._step + 1) % hp.benchmark_updates == 0:  # V_k: a fresh adversary against the frozen pi_k
                    self.class_values[k] = self._worst(self._bench[k], self.classes[k], self._test_gen(k))
            elif self._opt is not None and self.done_updates < hp.updates:  # step 3: the (robust) policy
                errs = self._update(self.policy, self._adv, self._adv_opt[len(self.classes) :], self._opt, self.class_weights)
                idx = [self.classes.index(r) for r in self.train_classes]
                gaps = errs - self.class_values[idx]
                w = self.class_weights * torch.exp(hp.eta * gaps)  # exponentiated gap: the max over classes
                self.class_weights.copy_(w / w.sum())
                self.done_updates += 1
                self.log_dict({"train/error": float(errs.max()), "train/gap": float(gaps.max())}, batch_size=1)
        self._step += 1
        if self._step >= k_bench and (self._opt is None or self.done_updates >= hp.updates):
            self.trainer.should_stop = True

    def _worst(self, policy: nn.Module, r: float, generator: torch.Generator) -> float:
        hp = self.hparams
        return worst_case_error(
            policy, r, hp.num_arms, hp.budget, generator, hp.test_instances, hp.test_steps, hp.test_rollouts, hp.test_eval_rollouts, lr=0.05
        )

    def test_step(self, batch: Any, batch_idx: int) -> None:
        if batch_idx:
            return
        logs, gaps = {}, []
        with torch.inference_mode(False), torch.enable_grad():  # the fresh adversary needs gradients at test
            for k, r in enumerate(self.classes):
                worst = self._worst(self.policy, r, self._test_gen(k))
                gap = worst - float(self.class_values[k])
                logs[f"test/worst_{r:g}"] = worst
                logs[f"test/gap_{r:g}"] = gap
                gaps.append(gap)
        logs["test/gap"] = max(gaps)
        self.log_dict({k: torch.tensor(v, dtype=torch.float64) for k, v in logs.items()}, batch_size=1)
