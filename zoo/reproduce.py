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
        each_seed: true                        # ... or seed by seed (paired)

Arm ``args`` may hold two placeholders, replaced run by run: ``{seed}`` (the run's seed) and
``{workdir}`` (the sweep's scratch folder, deleted at the end), so an earlier arm can write what a
later arm of the same seed reads (MTARD's teacher arms save the teachers its student arms load).
An arm must log every metric a condition reads from it; the others it may leave out (NaN).

A check is one comparison (``< <= > >=``) of two expressions built from ``arm.alias``,
numbers, ``+ - * /`` and ``mean min max median std abs``. It is parsed with :mod:`ast` and
evaluated by a whitelist, never by ``eval``. Every run is real training; nothing is stored.
"""

from __future__ import annotations

import ast
import json
import logging
import math
import operator
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from zoo.errors import ZooError
from zoo.registry import Entry, get_entry

__all__ = ["Claim", "Arm", "Condition", "ConditionResult", "ClaimResult", "load_claim", "reproduce", "evaluate_condition", "arm_args"]

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
    "std": np.std,
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


@dataclass(frozen=True)
class Condition:
    check: str
    paper: str = ""
    each_seed: bool = False

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
        if n < 1:
            raise ClaimError(f"--seeds must be at least 1, got {n}")
        return Claim(**{**self.__dict__, "seeds": tuple(range(n))})


def load_claim(entry: Entry | str) -> Claim:
    """Read and validate ``cards/<entry>/claim.yaml``; every problem is a ClaimError up front."""
    entry = get_entry(entry) if isinstance(entry, str) else entry
    path = entry.card_dir / CLAIM_FILE
    if not path.is_file():
        raise ClaimError(f"entry {entry.name!r} has no claim: {path} not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ClaimError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(raw, dict):
        raise ClaimError(f"{path}: expected a mapping")
    missing = {"claim", "seeds", "metrics", "arms", "conditions"} - set(raw)
    if missing:
        raise ClaimError(f"{path}: missing {sorted(missing)}")
    seeds = tuple(range(raw["seeds"])) if isinstance(raw["seeds"], int) else tuple(int(s) for s in raw["seeds"])
    arms = {name: _arm(name, spec, entry.card_dir, path) for name, spec in dict(raw["arms"]).items()}
    conditions = tuple(
        Condition(check=c) if isinstance(c, str) else Condition(str(c["check"]), str(c.get("paper", "")), bool(c.get("each_seed", False)))
        for c in raw["conditions"]
    )
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
    return claim


def _arm(name: str, spec: Any, card_dir: Path, path: Path) -> Arm:
    if not name.isidentifier():
        raise ClaimError(f"{path}: arm name {name!r} must be an identifier (letters, digits, _)")
    spec = {"config": spec} if isinstance(spec, str) else dict(spec)
    config = card_dir / str(spec["config"])
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
    margin: float  # > 0 by how much the condition held, < 0 by how much it failed (worst seed if each_seed)
    held: bool


def evaluate_condition(cond: Condition, values: dict[str, dict[str, list[float]]]) -> ConditionResult:
    """Evaluate one condition on per-arm, per-metric vectors over seeds."""
    left, symbol, right = cond.parsed()

    def lookup(arm: str, alias: str) -> np.ndarray:
        return np.asarray(values[arm][alias], dtype=float)

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
    )


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
    torch_version: str = field(default_factory=lambda: torch.__version__)

    @property
    def held(self) -> bool:
        return all(c.held for c in self.conditions)

    def to_json(self) -> str:
        data = asdict(self)
        data["held"] = self.held
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
) -> ClaimResult:
    """Train every arm on every seed and evaluate the claim's conditions."""
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
    )


def summary(values: list[float]) -> str:
    """``mean ± std`` of a metric over seeds."""
    arr = np.asarray(values, dtype=float)
    return f"{arr.mean():.4g} ± {arr.std():.2g}" if len(arr) > 1 else f"{arr.mean():.4g}"


def fmt(x: float) -> str:
    return "nan" if math.isnan(x) else f"{x:.4g}"
