"""``zoo reproduce``: train a paper's method and its baselines on the same data and seeds, check the claim.

A claim lives in ``cards/<entry>/claim.yaml``::

    claim: "AnyLoss-F1 beats BCE on test F1 on imbalanced binary data"
    paper: "what the paper reports, printed beside the verdict"
    seeds: 5                       # or a list [0, 1, 2, 3, 4]
    seed_keys: [data.init_args.seed]   # config keys also set to the seed (seed_everything always is)
    test: true                     # also run trainer.test; metrics come from trainer.callback_metrics
    metrics: {f1: test/f1, bacc: test/balanced_accuracy}   # alias -> logged key
    arms:                          # any number; a LightningCLI config (relative to the card) + extra args
      anyloss: {config: config.yaml, label: "AnyLoss-F1"}
      bce: {config: baseline.yaml, label: "BCE"}
      wbce: {config: baseline.yaml, label: "WBCE", args: ["--model.init_args.loss=wbce"]}
    conditions:
      - check: "anyloss.f1 > bce.f1 + 0.05"     # arm.alias are vectors over seeds,
        paper: "AnyLoss-F1 > BCE on F1"        # compared by their means ...
      - check: "anyloss.f1 >= bce.f1 - 0.1"
        each_seed: true                        # ... or seed by seed (paired), every seed
      - check: "anyloss.f1 > bce.f1"
        interval: true                         # ... or the paired difference's 95 % interval
      - check: "anyloss.f1 > bce.f1"
        min_seeds: 4                           # ... or on at least 4 of the seeds
      - check: "anyloss.bacc > bce.bacc"
        gate: false                            # reported, not gated: printed, not part of the verdict

Arm ``args`` may hold two placeholders, replaced run by run: ``{seed}`` (the run's seed) and
``{workdir}`` (the sweep's scratch folder, deleted at the end), so an earlier arm can write what a
later arm of the same seed reads (MTARD's teacher arms save the teachers its student arms load).
An arm must log every metric a condition reads from it; the others it may leave out (NaN).

A check is one comparison (``< <= > >=``) of two expressions built from ``arm.alias``,
numbers, ``+ - * /`` and ``mean min max median std abs`` (``std`` is the sample standard
deviation, ddof 1). It is parsed with :mod:`ast` and evaluated by a whitelist, never by ``eval``.
Every run is real training; nothing is stored.

A condition has one of four modes. By default both sides are averaged over seeds and compared
(``mean``). ``each_seed: true`` compares seed by seed and holds when every seed does; the margin is
the worst seed's. ``interval: true`` takes the per-seed paired differences ``d_s = lhs_s - rhs_s``
(the right side's constant included) and holds when the whole 95 % Student-t interval of their mean
(ddof 1, ``n - 1`` degrees of freedom) clears 0 on the check's side: lower bound ``> 0`` for ``>``,
``>= 0`` for ``>=``, upper bound ``< 0`` / ``<= 0`` for ``<`` / ``<=``; the margin is that near bound
(signed so that ``> 0`` means it held). Use it when the effect must stand outside seed noise; it needs
at least two seeds. ``min_seeds: k`` compares seed by seed and holds when at least ``k`` seeds do
("X above Y on at least 7 of 10 seeds"); the margin is the ``k``-th best seed's. Both paired modes
need a side that varies by seed (an ``arm.metric`` outside ``mean min max median std``); a claim
that breaks this, or gives ``interval`` fewer than two seeds or ``min_seeds`` more than it has, is a
ClaimError at load (and for ``--seeds N``).

``gate: false`` (any mode) makes a condition *reported, not gated*: it is evaluated and printed
with its verdict, but the claim's verdict rests on the gated conditions only. Use it for an effect
smaller than its seed spread that the card still wants to show; the card says which these are.

``seed_offset=K`` (``zoo reproduce NAME --seed-offset K``) shifts every seed by ``K``, so anyone can
check a claim on seeds its authors never tuned on. The result carries each metric's mean, sample
standard deviation and 95 % Student-t interval of the mean, and the environment it ran in.
"""

from __future__ import annotations

import ast
import json
import logging
import operator
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from zoo.claim_stats import CONFIDENCE, Interval, environment, fmt, mean_interval, sample_std
from zoo.errors import ZooError
from zoo.registry import Entry, get_entry

__all__ = [
    "Claim",
    "Arm",
    "Condition",
    "ConditionResult",
    "ClaimResult",
    "load_claim",
    "reproduce",
    "evaluate_condition",
    "arm_args",
]

CLAIM_FILE = "claim.yaml"
_COMPARE: dict[type, tuple[str, Callable[[float, float], bool]]] = {
    ast.Lt: ("<", operator.lt),
    ast.LtE: ("<=", operator.le),
    ast.Gt: (">", operator.gt),
    ast.GtE: (">=", operator.ge),
}
_ARITH: dict[type, Callable[[Any, Any], Any]] = {ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply, ast.Div: np.divide}
_FUNCS: dict[str, Callable[[Any], Any]] = {
    "mean": np.mean,
    "min": np.min,
    "max": np.max,
    "median": np.median,
    "std": sample_std,
    "abs": np.abs,
}


class ClaimError(ZooError):
    """A claim file that cannot be run as written."""


# ----------------------------------------------------------------------------------- the claim
@dataclass(frozen=True)
class Arm:
    name: str
    config: Path
    label: str
    args: tuple[str, ...] = ()


_CONDITION_KEYS = {"check", "paper", "each_seed", "interval", "min_seeds", "gate"}


@dataclass(frozen=True)
class Condition:
    check: str
    paper: str = ""
    each_seed: bool = False
    interval: bool = False  # the 95 % t-interval of the per-seed paired difference must clear the threshold
    min_seeds: int | None = None  # holds when at least this many seeds satisfy the check (paired)
    gate: bool = True  # False: reported, not gated (printed, left out of the claim's verdict)

    @property
    def mode(self) -> str:
        """``mean``, ``each_seed``, ``interval`` or ``min_seeds``: how the per-seed values are compared."""
        if self.interval:
            return "interval"
        if self.min_seeds is not None:
            return "min_seeds"
        return "each_seed" if self.each_seed else "mean"

    @property
    def paired(self) -> bool:
        """True when the check is evaluated seed by seed (every mode but ``mean``)."""
        return self.mode != "mean"

    def parsed(self) -> tuple[ast.expr, str, ast.expr]:
        """(left, operator symbol, right) of the check; a bad check raises ClaimError."""
        try:
            tree = ast.parse(self.check, mode="eval").body
        except SyntaxError as err:
            raise ClaimError(f"condition {self.check!r} is not an expression ({err.msg})") from None
        if not isinstance(tree, ast.Compare) or len(tree.ops) != 1 or type(tree.ops[0]) not in _COMPARE:
            raise ClaimError(f"condition {self.check!r} must be one comparison with < <= > or >=")
        return tree.left, _COMPARE[type(tree.ops[0])][0], tree.comparators[0]

    def references(self) -> set[tuple[str, str]]:
        left, _, right = self.parsed()
        return _references(left) | _references(right)


@dataclass(frozen=True)
class Claim:
    entry: str
    claim: str
    paper: str
    seeds: tuple[int, ...]
    metrics: dict[str, str]
    arms: dict[str, Arm]
    conditions: tuple[Condition, ...]
    seed_keys: tuple[str, ...] = ()
    test: bool = True

    def required_metrics(self, arm: str) -> set[str]:
        """The metric aliases the conditions read from ``arm``: it must log these, the rest may be absent."""
        return {alias for cond in self.conditions for name, alias in cond.references() if name == arm}

    def with_seeds(self, n: int) -> Claim:
        """The claim on seeds ``0..n-1`` instead of its own."""
        if n < 1:
            raise ClaimError(f"--seeds must be at least 1, got {n}")
        claim = Claim(**{**self.__dict__, "seeds": tuple(range(n))})
        _check_modes(claim, f"--seeds {n}")
        return claim

    def with_seed_offset(self, offset: int) -> Claim:
        """The claim on its seeds shifted by ``offset`` (``[0..N-1]`` -> ``[K..K+N-1]``): seeds nobody tuned on."""
        if offset < 0:
            raise ClaimError(f"--seed-offset must be >= 0, got {offset}")
        return Claim(**{**self.__dict__, "seeds": tuple(s + offset for s in self.seeds)})


def load_claim(entry: Entry | str) -> Claim:
    """Read and validate ``cards/<entry>/claim.yaml``; every problem is a ClaimError up front."""
    entry = get_entry(entry) if isinstance(entry, str) else entry
    path = entry.card_dir / CLAIM_FILE
    if not path.is_file():
        raise ClaimError(f"entry {entry.name!r} has no claim: {path} not found")
    try:
        raw = yaml.safe_load(path.read_text())  # safe_load: a !!python tag is an error, never an object
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ClaimError(f"{path}: not valid YAML ({getattr(err, 'problem', None) or type(err).__name__}{where})") from None
    if not isinstance(raw, dict):
        raise ClaimError(f"{path}: expected a mapping")
    missing = {"claim", "seeds", "metrics", "arms", "conditions"} - set(raw)
    if missing:
        raise ClaimError(f"{path}: missing {sorted(missing)}")
    seeds_ok = isinstance(raw["seeds"], int) or (isinstance(raw["seeds"], list) and all(isinstance(s, int) for s in raw["seeds"]))
    if not seeds_ok:
        raise ClaimError(f"{path}: seeds must be a count or a list of integers, not {raw['seeds']!r}")
    for key in ("metrics", "arms"):
        if not isinstance(raw[key], dict):
            raise ClaimError(f"{path}: {key} must be a mapping, not a {type(raw[key]).__name__}")
    if not isinstance(raw["conditions"], list) or not all(isinstance(c, str) or (isinstance(c, dict) and "check" in c) for c in raw["conditions"]):
        raise ClaimError(f"{path}: conditions must be a list of checks (strings, or mappings with a 'check')")
    seeds = tuple(range(raw["seeds"])) if isinstance(raw["seeds"], int) else tuple(int(s) for s in raw["seeds"])
    arms = {name: _arm(name, spec, entry.card_dir, path) for name, spec in dict(raw["arms"]).items()}
    conditions = tuple(Condition(check=c) if isinstance(c, str) else _condition(c, path) for c in raw["conditions"])
    claim = Claim(
        entry=entry.name,
        claim=str(raw["claim"]),
        paper=str(raw.get("paper", "")),
        seeds=seeds,
        metrics={str(k): str(v) for k, v in dict(raw["metrics"]).items()},
        arms=arms,
        conditions=conditions,
        seed_keys=tuple(raw.get("seed_keys", ())),
        test=bool(raw.get("test", True)),
    )
    for cond in conditions:
        for arm, alias in cond.references():
            if arm not in arms:
                raise ClaimError(f"{path}: condition {cond.check!r} names arm {arm!r}; arms are {sorted(arms)}")
            if alias not in claim.metrics:
                raise ClaimError(f"{path}: condition {cond.check!r} names metric {alias!r}; metrics are {sorted(claim.metrics)}")
        left, _, right = cond.parsed()
        for side in (left, right):  # the whitelist walked now on zeros, not after every arm has trained
            _evaluate(side, lambda arm, alias: np.zeros(len(seeds)))
    _check_modes(claim, str(path))
    return claim


def _condition(spec: dict[str, Any], path: Path) -> Condition:
    """One condition mapping; an unknown key (a typo would silently make a mean check) is a ClaimError."""
    unknown = set(spec) - _CONDITION_KEYS
    if unknown:
        raise ClaimError(f"{path}: condition {spec['check']!r} has unknown keys {sorted(unknown)}; a condition takes {sorted(_CONDITION_KEYS)}")
    min_seeds = spec.get("min_seeds")
    if min_seeds is not None and (isinstance(min_seeds, bool) or not isinstance(min_seeds, int) or min_seeds < 1):
        raise ClaimError(f"{path}: condition {spec['check']!r}: min_seeds must be a positive integer, not {min_seeds!r}")
    gate = spec.get("gate", True)
    if not isinstance(gate, bool):
        raise ClaimError(f"{path}: condition {spec['check']!r}: gate must be true or false, not {gate!r}")
    cond = Condition(str(spec["check"]), str(spec.get("paper", "")), bool(spec.get("each_seed", False)), bool(spec.get("interval", False)), min_seeds, gate)
    if sum((cond.each_seed, cond.interval, cond.min_seeds is not None)) > 1:
        raise ClaimError(f"{path}: condition {cond.check!r} sets more than one of each_seed, interval, min_seeds; pick one mode")
    return cond


def _check_modes(claim: Claim, where: str) -> None:
    """Paired modes need per-seed values; ``interval`` needs two seeds, ``min_seeds`` no more than the claim has."""
    n = len(claim.seeds)
    for cond in claim.conditions:
        if not cond.paired:
            continue
        left, _, right = cond.parsed()
        shapes = [np.shape(_evaluate(side, lambda arm, alias: np.zeros(n))) for side in (left, right)]
        if n > 1 and all(shape != (n,) for shape in shapes):
            raise ClaimError(
                f"{where}: condition {cond.check!r} is {cond.mode} but neither side varies by seed; name an arm.metric outside mean/min/max/median/std"
            )
        if cond.interval and n < 2:
            raise ClaimError(f"{where}: condition {cond.check!r} needs a paired 95 % interval, which needs at least 2 seeds (has {n}); use more seeds")
        if cond.min_seeds is not None and cond.min_seeds > n:
            raise ClaimError(
                f"{where}: condition {cond.check!r} asks for min_seeds {cond.min_seeds} but the claim has {n} seeds; lower min_seeds or use more seeds"
            )


def _arm(name: str, spec: Any, card_dir: Path, path: Path) -> Arm:
    if not isinstance(name, str) or not name.isidentifier():
        raise ClaimError(f"{path}: arm name {name!r} must be an identifier (letters, digits, _)")
    spec = {"config": spec} if isinstance(spec, str) else spec
    if not isinstance(spec, dict) or "config" not in spec:
        raise ClaimError(f"{path}: arm {name!r} needs a config (a LightningCLI YAML in the card folder)")
    config = card_dir / str(spec["config"])
    if not config.resolve().is_relative_to(card_dir.resolve()):
        raise ClaimError(f"{path}: arm {name!r} config {spec['config']} is outside the card folder")
    if not config.is_file():
        raise ClaimError(f"{path}: arm {name!r} config {config} not found")
    return Arm(name, config, str(spec.get("label", name)), tuple(str(a) for a in spec.get("args", ())))


# ----------------------------------------------------------------------------- evaluation
def _references(node: ast.AST) -> set[tuple[str, str]]:
    refs = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name):
            refs.add((sub.value.id, sub.attr))
    return refs


def _evaluate(node: ast.AST, lookup: Callable[[str, str], np.ndarray]) -> Any:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return float(node.value)
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        return lookup(node.value.id, node.attr)
    if isinstance(node, ast.BinOp) and type(node.op) in _ARITH:
        return _ARITH[type(node.op)](_evaluate(node.left, lookup), _evaluate(node.right, lookup))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _evaluate(node.operand, lookup)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS and len(node.args) == 1:
        return _FUNCS[node.func.id](_evaluate(node.args[0], lookup))
    raise ClaimError(f"unsupported term {ast.unparse(node)!r} in a condition (use arm.metric, numbers, + - * /, {sorted(_FUNCS)})")


@dataclass
class ConditionResult:
    check: str
    paper: str
    each_seed: bool
    lhs: float
    rhs: float
    margin: float  # > 0 by how much the condition held, < 0 by how much it failed (see ``mode``)
    held: bool
    mode: str = "mean"  # mean | each_seed | interval | min_seeds
    differences: list[float] | None = None  # paired modes: lhs - rhs per seed
    difference: Interval | None = None  # interval: mean of the differences and its 95 % t-interval
    seeds_held: int | None = None  # paired modes: how many seeds satisfy the check
    seeds_total: int | None = None
    min_seeds: int | None = None
    gate: bool = True  # False: reported, not gated; ``held`` is still its own verdict

    def measured(self) -> str:
        """What the verdict rests on, for tables and titles: ``+1.2 [+0.3, +2.1]``, ``8/10 seeds (needs 7)``, ``a vs b``."""
        if self.mode == "interval" and self.difference is not None:
            d = self.difference
            return f"difference {d.mean:+.4g} [{d.lo:+.4g}, {d.hi:+.4g}]"
        if self.mode == "min_seeds":
            return f"{self.seeds_held}/{self.seeds_total} seeds (needs {self.min_seeds})"
        return f"{fmt(self.lhs)} vs {fmt(self.rhs)}" + (" (worst seed)" if self.mode == "each_seed" else "")

    def mode_text(self) -> str:
        """The mode in words: ``means``, ``each seed``, ``paired 95 % interval``, ``at least k of n seeds``."""
        return {
            "mean": "means",
            "each_seed": "each seed",
            "interval": "paired 95 % interval",
            "min_seeds": f"at least {self.min_seeds} of {self.seeds_total} seeds",
        }[self.mode]


def evaluate_condition(cond: Condition, values: dict[str, dict[str, list[float]]]) -> ConditionResult:
    """Evaluate one condition on per-arm, per-metric vectors over seeds, in the condition's mode."""
    return replace(_evaluate_in_mode(cond, values), gate=cond.gate)


def _evaluate_in_mode(cond: Condition, values: dict[str, dict[str, list[float]]]) -> ConditionResult:
    left, symbol, right = cond.parsed()

    def lookup(arm: str, alias: str) -> np.ndarray:
        return np.asarray(values[arm][alias], dtype=float)

    if cond.mode in ("interval", "min_seeds"):
        return _evaluate_paired(cond, symbol, np.asarray(_evaluate(left, lookup), float), np.asarray(_evaluate(right, lookup), float))
    with np.errstate(invalid="ignore", divide="ignore"):
        lhs, rhs = np.asarray(_evaluate(left, lookup), float), np.asarray(_evaluate(right, lookup), float)
        if cond.each_seed:
            lhs, rhs = (np.atleast_1d(a) for a in np.broadcast_arrays(lhs, rhs))
        else:
            lhs, rhs = np.atleast_1d(lhs.mean()), np.atleast_1d(rhs.mean())
        margins = (lhs - rhs) if symbol in (">", ">=") else (rhs - lhs)
        held_each = np.vectorize(dict(_COMPARE.values())[symbol])(lhs, rhs)
    worst = int(np.nanargmin(margins)) if np.isfinite(margins).any() else 0
    return ConditionResult(
        check=cond.check,
        paper=cond.paper,
        each_seed=cond.each_seed,
        lhs=float(lhs[worst]),
        rhs=float(rhs[worst]),
        margin=float(margins[worst]) if np.isfinite(margins).all() else float("nan"),
        held=bool(np.isfinite(margins).all() and np.all(held_each)),
        mode=cond.mode,
        differences=[float(v) for v in lhs - rhs] if cond.each_seed else None,
        seeds_held=int(np.sum(held_each & np.isfinite(margins))) if cond.each_seed else None,
        seeds_total=int(lhs.size) if cond.each_seed else None,
    )


def _evaluate_paired(cond: Condition, symbol: str, lhs: np.ndarray, rhs: np.ndarray) -> ConditionResult:
    """``interval`` and ``min_seeds``: the per-seed differences ``lhs - rhs``, their t-interval or their count."""
    with np.errstate(invalid="ignore", divide="ignore"):
        lhs, rhs = (np.atleast_1d(a).astype(float) for a in np.broadcast_arrays(lhs, rhs))
        diffs = lhs - rhs
        greater = symbol in (">", ">=")
        margins = diffs if greater else -diffs  # > 0 where the seed satisfies the check (strictness aside)
        held_each = np.isfinite(diffs) & np.vectorize(dict(_COMPARE.values())[symbol])(lhs, rhs)
    finite = bool(np.isfinite(diffs).all())
    common = dict(check=cond.check, paper=cond.paper, each_seed=cond.each_seed, mode=cond.mode, differences=[float(v) for v in diffs],
                  seeds_held=int(held_each.sum()), seeds_total=int(diffs.size), min_seeds=cond.min_seeds)
    if cond.interval:
        if diffs.size < 2:
            raise ClaimError(f"condition {cond.check!r} needs a paired 95 % interval, which needs at least 2 seeds (has {diffs.size})")
        iv = mean_interval(diffs) if finite else Interval(float("nan"), float("nan"), float("nan"), float("nan"), int(diffs.size))
        near = iv.lo if greater else -iv.hi  # the interval's bound nearest the threshold, signed so > 0 means it held
        held = finite and (near > 0 if symbol in (">", "<") else near >= 0)
        return ConditionResult(lhs=float(np.mean(lhs)), rhs=float(np.mean(rhs)), margin=float(near), held=bool(held), difference=iv, **common)
    assert cond.min_seeds is not None
    k = cond.min_seeds
    order = np.argsort(-np.where(np.isfinite(margins), margins, -np.inf), kind="stable")
    deciding = int(order[k - 1]) if k <= diffs.size else int(order[-1])  # the k-th best seed decides
    margin = float(margins[deciding]) if k <= diffs.size and np.isfinite(margins[deciding]) else float("nan")
    return ConditionResult(lhs=float(lhs[deciding]), rhs=float(rhs[deciding]), margin=margin, held=bool(held_each.sum() >= k), **common)


# ------------------------------------------------------------------------------- training
@dataclass
class ClaimResult:
    entry: str
    claim: str
    paper: str
    seeds: list[int]
    arms: dict[str, str]  # name -> label
    values: dict[str, dict[str, list[float]]]  # arm -> alias -> per-seed values
    conditions: list[ConditionResult]
    seconds: float
    seed_offset: int = 0
    metrics: dict[str, str] = field(default_factory=dict)  # alias -> logged key
    environment: dict[str, Any] = field(default_factory=dict)

    @property
    def held(self) -> bool:
        """The claim's verdict: every gated condition held (reported-only ones are left out)."""
        return all(c.held for c in self.conditions if c.gate)

    def stats(self) -> dict[str, dict[str, Interval]]:
        """Per arm and metric: mean, sample std and 95 % t-interval over seeds."""
        return {arm: {alias: mean_interval(v) for alias, v in per_metric.items()} for arm, per_metric in self.values.items()}

    def to_json(self) -> str:
        data = asdict(self)
        data["held"] = self.held
        data["confidence"] = CONFIDENCE
        data["stats"] = {arm: {alias: asdict(iv) for alias, iv in m.items()} for arm, m in self.stats().items()}
        return json.dumps(data, indent=2, allow_nan=True)


@contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Silence Lightning's per-run info lines and advice (GPU available, seeds, summaries,
    frozen modules in eval mode, few dataloader workers) during the sweep."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric", "lightning")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            for advice in (r".*module\(s\) in eval mode", r".*does not have many workers", r".*isinstance\(treespec, LeafSpec\)"):
                warnings.filterwarnings("ignore", message=advice)
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def arm_args(arm: Arm, seed: int, claim: Claim, root: Path) -> list[str]:
    """The LightningCLI arguments of one run: the arm's config and args (placeholders filled), the seed."""
    fill = {"{seed}": str(seed), "{workdir}": str(root)}

    def filled(arg: str) -> str:
        for placeholder, value in fill.items():
            arg = arg.replace(placeholder, value)
        return arg

    return [
        "--config",
        str(arm.config),
        *map(filled, arm.args),
        f"--seed_everything={seed}",
        *(f"--{key}={seed}" for key in claim.seed_keys),
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.logger=false",
        f"--trainer.default_root_dir={root / arm.name / str(seed)}",
    ]


def train_arm(arm: Arm, seed: int, claim: Claim, root: Path) -> dict[str, float]:
    """One real training run of ``arm`` with ``seed``; returns the claim's metrics by alias (NaN if not logged)."""
    from zoo.lightning_cli import build_lightning_cli  # the same LightningCLI users run

    lcli = build_lightning_cli(arm_args(arm, seed, claim, root), run=False)
    lcli.trainer.fit(lcli.model, datamodule=lcli.datamodule)
    logged = {k: float(v) for k, v in lcli.trainer.callback_metrics.items()}
    if claim.test:
        lcli.trainer.test(lcli.model, datamodule=lcli.datamodule, verbose=False)
        logged.update({k: float(v) for k, v in lcli.trainer.callback_metrics.items()})
    missing = {alias: key for alias, key in claim.metrics.items() if key not in logged and alias in claim.required_metrics(arm.name)}
    if missing:
        raise ClaimError(f"arm {arm.name!r} did not log {sorted(missing.values())}; it logged {sorted(logged)}")
    return {alias: logged.get(key, float("nan")) for alias, key in claim.metrics.items()}


def reproduce(
    claim: Claim,
    *,
    threads: int | None = 1,
    on_run: Callable[[str, int], None] | None = None,
    seed_offset: int = 0,
) -> ClaimResult:
    """Train every arm on every seed (shifted by ``seed_offset``) and evaluate the claim's conditions."""
    if seed_offset:
        claim = claim.with_seed_offset(seed_offset)
    if threads:
        torch.set_num_threads(threads)
    values: dict[str, dict[str, list[float]]] = {a: {m: [] for m in claim.metrics} for a in claim.arms}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"zoo-reproduce-{claim.entry}-") as tmp, _quiet_lightning():
        for seed in claim.seeds:
            for arm in claim.arms.values():
                for alias, value in train_arm(arm, seed, claim, Path(tmp)).items():
                    values[arm.name][alias].append(value)
                if on_run is not None:
                    on_run(arm.name, seed)
    results = [evaluate_condition(c, values) for c in claim.conditions]
    return ClaimResult(
        entry=claim.entry,
        claim=claim.claim,
        paper=claim.paper,
        seeds=list(claim.seeds),
        arms={a.name: a.label for a in claim.arms.values()},
        values=values,
        conditions=results,
        seconds=time.perf_counter() - start,
        seed_offset=seed_offset,
        metrics=dict(claim.metrics),
        environment=environment(),
    )
