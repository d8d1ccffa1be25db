"""The picture of a ``zoo reproduce`` result: one panel per metric a claim's conditions read.

In each panel every arm's per-seed values are points, its mean a bar with the 95 % Student-t
interval of the mean, and each condition's threshold a dashed line over the arm it bounds
(green where the condition held, red where it did not). For ``a.m > b.m + c`` the line sits at
``mean(b.m) + c`` over arm ``a``; a condition checked seed by seed draws one short line per seed.
A side that is not one metric under ``+ - * /`` by the rest (``abs(a.m - b.m) <= c``, sums of
several metrics) has no line; its verdict is still in the panel title. The two paired modes draw
per-seed lines like a seed-by-seed condition, and their panel title says what decided the verdict:
``paired 95 % interval`` with the mean difference and its interval, or ``at least k of n seeds``
with the count of seeds that satisfy the check.

:func:`plot_data` returns exactly what :func:`plot_claim` draws, so tests compare it with the
result's values. Matplotlib runs on the Agg backend (no display needed).
"""

from __future__ import annotations

import ast
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zoo.claim_stats import Interval, mean_interval
from zoo.reproduce import ClaimResult, Condition, ConditionResult, _evaluate

__all__ = ["ArmPoints", "Threshold", "Panel", "plot_data", "plot_claim", "draw_claim"]

_AGGREGATES = ("mean", "min", "max", "median")  # a bound on min/max/mean/median(x) is a line the points are read against


@dataclass(frozen=True)
class ArmPoints:
    """One arm in one panel: its per-seed values and their mean with the 95 % t-interval."""

    arm: str
    label: str
    values: list[float]
    interval: Interval


@dataclass(frozen=True)
class Threshold:
    """Where condition number ``index`` (from 1) puts ``arm``'s metric: one value (a mean condition) or one per seed."""

    index: int
    check: str
    arm: str
    metric: str
    values: list[float]
    each_seed: bool
    held: bool


@dataclass(frozen=True)
class Panel:
    """One metric: the arms that logged it, the thresholds drawn on it, every condition that reads it."""

    metric: str
    key: str
    arms: list[ArmPoints]
    thresholds: list[Threshold]
    conditions: list[tuple[int, str, bool, bool, str]]  # (index from 1, check, paired, held, mode in words with what decided it)


# ---------------------------------------------------------------------------------- data
def _count_refs(node: ast.AST) -> int:
    return sum(isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) for n in ast.walk(node))


def _solve(node: ast.expr, bound: np.ndarray, lookup: Any, each_seed: bool) -> tuple[tuple[str, str], np.ndarray] | None:
    """The value of the one metric in ``node`` at which ``node == bound``, or None if it cannot be isolated.

    Only ``+ - * /`` by metric-free terms, unary minus and mean/min/max/median are inverted. For a mean
    condition a factor must be the same on every seed, so the line bounds the mean exactly.
    """
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        return (node.value.id, node.attr), bound
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _AGGREGATES and len(node.args) == 1:
        return _solve(node.args[0], bound, lookup, each_seed)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        return _solve(node.operand, -bound if isinstance(node.op, ast.USub) else bound, lookup, each_seed)
    if not isinstance(node, ast.BinOp) or not isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
        return None
    if _count_refs(node.left) and not _count_refs(node.right):
        sub, other, other_right = node.left, node.right, True
    elif _count_refs(node.right) and not _count_refs(node.left):
        sub, other, other_right = node.right, node.left, False
    else:
        return None
    o = np.asarray(_evaluate(other, lookup), dtype=float)
    if not each_seed:
        if isinstance(node.op, (ast.Mult, ast.Div)) and o.size > 1 and np.ptp(o) > 0:
            return None  # mean(a * v) != mean(a) * mean(v)
        o = np.asarray(o.mean())
    with np.errstate(divide="ignore", invalid="ignore"):
        if isinstance(node.op, ast.Add):
            inner = bound - o
        elif isinstance(node.op, ast.Sub):
            inner = bound + o if other_right else o - bound
        elif isinstance(node.op, ast.Mult):
            inner = bound / o
        else:
            inner = bound * o if other_right else o / bound
    return _solve(sub, inner, lookup, each_seed)


def _threshold(index: int, check: str, each_seed: bool, held: bool, values: dict[str, dict[str, list[float]]]) -> Threshold | None:
    """The line a condition draws: the left side's metric bounded by the right side, else the reverse."""
    left, _, right = Condition(check, each_seed=each_seed).parsed()

    def lookup(arm: str, alias: str) -> np.ndarray:
        return np.asarray(values[arm][alias], dtype=float)

    for side, other in ((left, right), (right, left)):
        if _count_refs(side) != 1:
            continue
        with np.errstate(invalid="ignore", divide="ignore"):
            bound = np.asarray(_evaluate(other, lookup), dtype=float)
            bound = np.atleast_1d(bound) if each_seed else np.asarray(bound.mean())
            solved = _solve(side, bound, lookup, each_seed)
        if solved is None:
            continue
        (arm, alias), line = solved
        line = np.atleast_1d(line).astype(float)
        if each_seed and line.size > 1 and np.allclose(line, line[0], equal_nan=True):
            line = line[:1]  # one bound for every seed: one line
        return Threshold(index, check, arm, alias, [float(v) for v in line], each_seed, held)
    return None


def plot_data(result: ClaimResult) -> list[Panel]:
    """What :func:`plot_claim` draws: one panel per metric a condition reads, in the claim's metric order."""
    read: dict[str, list[tuple[int, str, bool, bool, str]]] = {}
    for i, c in enumerate(result.conditions, start=1):
        for alias in sorted({alias for _arm, alias in Condition(c.check).references()}):
            read.setdefault(alias, []).append((i, c.check, c.mode != "mean", c.held, _mode_words(c)))
    order = [m for m in (result.metrics or {}) if m in read] + sorted(m for m in read if m not in (result.metrics or {}))
    lines = [_threshold(i, c.check, c.mode != "mean", c.held, result.values) for i, c in enumerate(result.conditions, start=1)]
    panels = []
    for metric in order:
        arms = [
            ArmPoints(arm, label, [float(v) for v in result.values[arm][metric]], mean_interval(result.values[arm][metric]))
            for arm, label in result.arms.items()
            if metric in result.values.get(arm, {}) and np.isfinite(np.asarray(result.values[arm][metric], dtype=float)).any()
        ]
        drawn = {a.arm for a in arms}
        thresholds = [t for t in lines if t is not None and t.metric == metric and t.arm in drawn]
        panels.append(Panel(metric, (result.metrics or {}).get(metric, metric), arms, thresholds, read[metric]))
    return panels


def _mode_words(c: ConditionResult) -> str:
    """The mode for a panel title; the paired modes add what decided the verdict, ungated ones say so."""
    words = f"{c.mode_text()}: {c.measured()}" if c.mode in ("interval", "min_seeds") else c.mode_text()
    return words if c.gate else f"{words}; reported, not gated"


# ------------------------------------------------------------------------------- drawing
_HELD, _FAILED = "#1a9850", "#d73027"


def _seed_offsets(n: int) -> np.ndarray:
    return np.linspace(-0.18, 0.18, n) if n > 1 else np.zeros(1)


def _draw_panel(ax: Any, panel: Panel) -> None:
    colors = [f"C{i % 10}" for i in range(len(panel.arms))]
    finite: list[float] = []
    for x, (points, color) in enumerate(zip(panel.arms, colors)):
        ys = np.asarray(points.values, dtype=float)
        ax.scatter(x + _seed_offsets(len(ys)), ys, s=22, color=color, alpha=0.8, zorder=3, gid=f"seeds:{points.arm}")
        iv = points.interval
        yerr = None if math.isnan(iv.lo) else [[iv.mean - iv.lo], [iv.hi - iv.mean]]
        ax.errorbar([x + 0.3], [iv.mean], yerr=yerr, fmt="D", color="black", ms=5, capsize=4, zorder=4, gid=f"mean:{points.arm}")
        finite += [v for v in (*ys, iv.lo, iv.hi) if math.isfinite(v)]
    position = {p.arm: x for x, p in enumerate(panel.arms)}
    for line in panel.thresholds:
        x, color = position[line.arm], _HELD if line.held else _FAILED
        gid = f"threshold:{line.index}:{line.arm}"
        if len(line.values) == 1:
            ax.hlines(line.values[0], x - 0.4, x + 0.45, colors=color, linestyles="--", lw=1.6, zorder=2, gid=gid)
            label_at = (x + 0.46, line.values[0])
        else:
            xs = x + _seed_offsets(len(line.values))
            ax.hlines(line.values, xs - 0.06, xs + 0.06, colors=color, lw=2.0, zorder=2, gid=gid)
            label_at = (xs[-1] + 0.08, line.values[-1])
        if math.isfinite(label_at[1]):
            ax.annotate(f"#{line.index}", label_at, fontsize=7, color=color, va="center")
        finite += [v for v in line.values if math.isfinite(v)]
    positive = [v for v in finite if v > 0]
    if finite and len(positive) == len(finite) and max(positive) / min(positive) > 50:
        ax.set_yscale("log")
    ax.set_xticks(range(len(panel.arms)), [p.arm for p in panel.arms], rotation=20, ha="right", fontsize=8)
    ax.set_xlim(-0.6, max(len(panel.arms), 1) - 0.4)
    ax.grid(axis="y", alpha=0.3)
    lines = [f"{panel.metric} ({panel.key})"]
    for index, check, _paired, held, mode in panel.conditions:
        verdict = "held" if held else "DID NOT HOLD"
        text = f"#{index} {verdict}: {check} ({mode})"
        lines += textwrap.wrap(text, 52, subsequent_indent="    ")
    ax.set_title("\n".join(lines), fontsize=8, loc="left")


def draw_claim(result: ClaimResult) -> Any:
    """The matplotlib Figure of :func:`plot_data` (Agg backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # Agg, whatever pyplot's backend is
    from matplotlib.figure import Figure

    panels = plot_data(result)
    ncols = max(1, min(3, len(panels)))
    nrows = max(1, math.ceil(len(panels) / ncols))
    title_lines = max((1 + sum(3 if ":" in mode else 2 for *_, mode in p.conditions) for p in panels), default=1)
    width = max(7.5, 5.4 * ncols)
    chars = int(width * 12)  # characters of 9 pt text per line
    verdict = "the claim held" if result.held else "the claim did NOT hold"
    seeds = f"seeds {result.seeds}" + (f" (offset {result.seed_offset})" if result.seed_offset else "")
    head = [
        *textwrap.wrap(f"zoo reproduce {result.entry}: {verdict}, {seeds}", chars),
        *textwrap.wrap(result.claim, chars, max_lines=4, placeholder=" ..."),
        *textwrap.wrap("points: seeds; diamond: mean with its 95 % t-interval; dashed: threshold #n (green held, red did not)", chars),
    ]
    fig = Figure(figsize=(width, (3.2 + 0.16 * title_lines) * nrows + 0.2 * len(head)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, panel in zip(axes, panels):
        _draw_panel(ax, panel)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.suptitle("\n".join(head), fontsize=9)
    return fig


def plot_claim(result: ClaimResult, path: str | Path) -> Path:
    """Draw the result to ``path`` (PNG) and return it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    draw_claim(result).savefig(path, dpi=110)
    return path
