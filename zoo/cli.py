"""``zoo``: LightningCLI for fit/validate/test/predict, plus list, publish, verify and reproduce.

    zoo fit --config cards/anyloss/config.yaml
    zoo fit --model=AnyLossClassifier --data=SyntheticBinaryDataModule
    zoo list --markdown
    zoo publish --ckpt_path last.ckpt --local_dir hub/anyloss [--repo_id org/name --push]
    zoo verify hub/anyloss [--tolerance 1e-6]
    zoo reproduce anyloss [--seeds 5] [--seed-offset 100]
    zoo federate fedfix --engine sim|flower [--rounds 2] [--clients 2] [--config PATH] [--model.init_args.X=V]

Bad input (an unknown entry, a missing config or checkpoint, a checkpoint of another class)
ends with one line on stderr and exit code 2; a claim that was measured and did not hold,
or a published model whose retrained metrics differ from its card's, exits with 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from zoo.lightning_cli import build_lightning_cli

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
EXIT_OK, EXIT_CLAIM_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def make_console() -> Any:
    """A rich Console; 140 columns when the output is a file or a pipe (logs, CI), not rich's 80,
    so claim tables with intervals stay one line per row."""
    import os

    from rich.console import Console

    if Console().is_terminal or "COLUMNS" in os.environ:
        return Console()
    return Console(width=140)


# ----------------------------------------------------------------------------- subcommands
README_TABLE_START, README_TABLE_END = "<!-- zoo-table:start -->", "<!-- zoo-table:end -->"


def markdown_table() -> str:
    """The zoo table of the README, generated from the registry."""
    from zoo.registry import list_entries

    rows = ["| entry | kind | paper | arXiv | class |", "|---|---|---|---|---|"]
    for e in list_entries():
        arxiv = f"[{e.arxiv}]({e.arxiv_url})" if e.arxiv else "—"
        rows.append(f"| `{e.name}` | {e.kind} | {e.paper} | {arxiv} | `{e.target}` |")
    return "\n".join(rows)


def write_readme_table(readme: Path) -> None:
    """Replace the table between the README's zoo-table markers with the generated one."""
    text = readme.read_text()
    if README_TABLE_START not in text or README_TABLE_END not in text:
        raise _BadInput(f"{readme} has no {README_TABLE_START} ... {README_TABLE_END} markers")
    head, rest = text.split(README_TABLE_START, 1)
    _, tail = rest.split(README_TABLE_END, 1)
    readme.write_text(f"{head}{README_TABLE_START}\n{markdown_table()}\n{README_TABLE_END}{tail}")


def cmd_list(markdown: bool, write_readme: str | None = None) -> int:
    from zoo.registry import list_entries

    if write_readme:
        write_readme_table(Path(write_readme))
        return EXIT_OK
    if markdown:
        print(markdown_table())
        return EXIT_OK
    entries = list_entries()
    from rich.table import Table

    table = Table(title="balance-zoo entries")
    for column in ("entry", "kind", "paper", "arXiv", "class"):
        table.add_column(column)
    for e in entries:
        table.add_row(e.name, e.kind, e.paper, e.arxiv or "—", e.target)
    make_console().print(table)
    return EXIT_OK


def cmd_publish(ckpt_path: str, local_dir: str, repo_id: str | None, push: bool, metrics: str | None) -> int:
    from zoo.hub import module_from_checkpoint

    if push and not repo_id:
        raise _BadInput("--push needs --repo_id org/name")
    measured = _read_metrics(metrics) if metrics else None
    model = module_from_checkpoint(ckpt_path)
    model.save_pretrained(local_dir, metrics=measured, repo_id=repo_id, push_to_hub=push)
    where = f" and pushed to {repo_id}" if push else ""
    entry, name = model.zoo_identity()
    recipe = " with its training_config.yaml" if model.training_config is not None else ""
    print(f"published {entry or 'shared module'} ({name}) to {local_dir}{recipe}{where}")
    return EXIT_OK


def cmd_verify(path_or_repo_id: str, tolerance: float | None, threads: int | None, revision: str | None) -> int:
    """Retrain from the folder's training_config.yaml, test, compare with its card: 0 match, 1 not."""
    from rich.table import Table

    from zoo.verify import verify

    if tolerance is not None and not tolerance >= 0:
        raise _BadInput(f"--tolerance must be >= 0, got {tolerance}")
    console = make_console()
    console.print(f"[bold]zoo verify {path_or_repo_id}[/]: retraining from its training_config.yaml")
    result = verify(path_or_repo_id, tolerance=tolerance, threads=threads, revision=revision)
    precision = f"|measured - card| <= {tolerance:g}" if tolerance is not None else "equal at the card's precision"
    table = Table(title=f"card vs retrained ({precision}; {result.threads} torch thread(s), {result.seconds:.0f} s)")
    for column in ("metric", "card", "measured", "match"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for c in result.checks:
        measured = "not logged" if c.measured is None else repr(c.measured)
        table.add_row(c.name, repr(c.card), measured, "[green]yes[/]" if c.match else "[red]NO[/]")
    console.print(table)
    if result.weights_identical is not None:
        console.print(f"retrained weights identical to the published ones: {'yes' if result.weights_identical else 'no'}")
    if result.passed:
        console.print(f"[green]verified[/]: all {len(result.checks)} card metrics reproduced")
        return EXIT_OK
    failed = [c.name for c in result.checks if not c.match]
    console.print(f"[red]not verified[/]: {', '.join(failed)} differ from the card")
    return EXIT_CLAIM_FAILED


def _read_metrics(spec: str) -> dict[str, float]:
    """``--metrics`` as a JSON file or inline JSON object of measured values."""
    text = Path(spec).read_text() if Path(spec).is_file() else spec
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        raise _BadInput(f"--metrics {spec!r} is neither a JSON file nor a JSON object") from None
    if not isinstance(data, dict) or not all(isinstance(v, (int, float)) for v in data.values()):
        raise _BadInput("--metrics must map metric names to numbers")
    return {str(k): float(v) for k, v in data.items()}


def cmd_reproduce(name: str, seeds: int | None, out: str | None, threads: int, seed_offset: int = 0) -> int:
    """Train the claim's arms on its seeds (or 0..seeds-1), shifted by ``seed_offset``; write JSON and PNG."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from zoo.claim_plot import plot_claim
    from zoo.reproduce import load_claim, reproduce

    claim = load_claim(name)
    if seeds is not None:
        claim = claim.with_seeds(seeds)
    console = make_console()
    console.print(f"[bold]zoo reproduce {claim.entry}[/]: {claim.claim}")
    total = len(claim.arms) * len(claim.seeds)
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=True
    ) as progress:
        task = progress.add_task("training arms x seeds", total=total)
        result = reproduce(
            claim,
            threads=threads,
            seed_offset=seed_offset,
            on_run=lambda arm, seed: progress.update(task, advance=1, description=f"{arm} seed {seed}"),
        )
    render_claim(result, console)
    stem = claim.entry + (f"-seed-offset-{seed_offset}" if seed_offset else "")
    path = Path(out) if out else Path("runs") / "reproduce" / f"{stem}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(result.to_json())
    picture = plot_claim(result, path.with_suffix(".png"))
    console.print(f"written to {path} and {picture} in {result.seconds:.0f} s")
    return EXIT_OK if result.held else EXIT_CLAIM_FAILED


def render_claim(result: Any, console: Any) -> None:
    """The per-seed values with means, then each condition with its measured margin and verdict."""
    from rich.table import Table

    from zoo.claim_stats import fmt, summary

    offset = f", offset {result.seed_offset}" if result.seed_offset else ""
    values = Table(title=f"{result.entry}: measured (seeds {result.seeds}{offset})")
    values.add_column("arm")
    values.add_column("metric")
    for seed in result.seeds:
        values.add_column(f"seed {seed}", justify="right")
    values.add_column("mean ± std [95 % CI]", justify="right", style="bold")
    for arm, label in result.arms.items():
        for alias, per_seed in result.values[arm].items():
            values.add_row(f"{arm} ({label})" if label != arm else arm, alias, *map(fmt, per_seed), summary(per_seed))
    console.print(values)
    console.print("std: sample standard deviation (ddof 1); CI: Student-t 95 % interval of the mean over seeds")
    checks = Table(title="claim conditions")
    for column in ("condition", "measured", "margin", "verdict", "paper"):
        checks.add_column(column)
    prefix = {"mean": "mean: ", "each_seed": "each seed: ", "interval": "paired 95 % interval: "}
    for c in result.conditions:
        mode = prefix.get(c.mode, f"at least {c.min_seeds} of {c.seeds_total} seeds: ")
        verdict = "[green]held[/]" if c.held else "[red]did not hold[/]"
        if not c.gate:
            verdict += " (reported, not gated)"
        checks.add_row(mode + c.check, c.measured(), f"{c.margin:+.4g}", verdict, c.paper)
    console.print(checks)
    if any(c.mode == "interval" for c in result.conditions):
        console.print("paired 95 % interval: mean of the per-seed differences (left - right) [Student-t 95 % interval]; margin: its near bound")
    overall = "[green]the claim held[/]" if result.held else "[red]the claim did not hold[/]"
    console.print(f"{overall}. Paper: {result.paper}")


def cmd_federate(name: str, engine: str, rounds: int | None, clients: int | None, config: str | None, overrides: list[str]) -> int:
    """Run an entry's card config on the in-process simulator or on Flower (loopback); print the test metrics."""
    from rich.table import Table

    from zoo.federated.loopback import federate

    result = federate(name, engine, rounds=rounds, clients=clients, config=config, overrides=overrides)
    console = make_console()
    console.print(f"zoo federate {name} --engine {engine}: {result['rounds']} rounds, {result['clients']} clients, {result['seconds']:.1f} s")
    table = Table()
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in result["metrics"].items():
        table.add_row(key, f"{value:.6g}")
    console.print(table)
    return EXIT_OK


# ----------------------------------------------------------------------------------- main
class _BadInput(Exception):
    """Raised by the CLI itself for arguments it cannot use."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage and exiting (``exit_on_error`` misses
    unknown and missing arguments), so every bad input ends as one line."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        raise _BadInput(message)


def _zoo_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="zoo",
        description="balance-zoo: train (fit/validate/test/predict, LightningCLI), list, publish, verify and reproduce entries.",
        exit_on_error=False,
    )
    sub = parser.add_subparsers(dest="command", metavar="{fit,validate,test,predict,list,publish,verify,reproduce,federate}")
    for name in LIGHTNING_COMMANDS:
        sub.add_parser(name, help=f"LightningCLI {name} (zoo {name} --help)")
    p_list = sub.add_parser("list", help="the registered entries")
    p_list.add_argument("--markdown", action="store_true", help="a markdown table (for the README)")
    p_list.add_argument("--write-readme", default=None, metavar="README", help="rewrite the table between the README's zoo-table markers")
    p_pub = sub.add_parser("publish", help="checkpoint -> hub folder with rendered card -> optional push")
    p_pub.add_argument("--ckpt_path", required=True)
    p_pub.add_argument("--local_dir", required=True)
    p_pub.add_argument("--repo_id", default=None)
    p_pub.add_argument("--push", action="store_true")
    p_pub.add_argument("--metrics", default=None, help="measured metrics for the card: a JSON file or inline JSON")
    p_ver = sub.add_parser("verify", help="retrain a published model from its training_config.yaml and compare with its card")
    p_ver.add_argument("path_or_repo_id", metavar="PATH_OR_REPO_ID")
    p_ver.add_argument(
        "--tolerance", type=float, default=None, help="absolute tolerance per metric (default: equal at the precision the card stores)"
    )
    p_ver.add_argument("--threads", type=int, default=None, help="torch threads (default: the count recorded in config.json)")
    p_ver.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) of a repo id")
    p_rep = sub.add_parser("reproduce", help="train method and baselines on the same seeds and check the paper's claim")
    p_rep.add_argument("name")
    p_rep.add_argument("--seeds", type=int, default=None, help="use seeds 0..N-1 instead of the claim's")
    p_rep.add_argument(
        "--seed-offset", type=int, default=0, metavar="K", help="shift every seed by K (seeds 0..N-1 -> K..K+N-1): seeds nobody tuned on"
    )
    p_rep.add_argument(
        "--out", default=None, help="JSON result path, the PNG beside it (default runs/reproduce/NAME.json, NAME-seed-offset-K.json)"
    )
    p_rep.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for small models)")
    p_fed = sub.add_parser("federate", help="run a federated entry's card config on the simulator or on Flower (loopback)")
    p_fed.add_argument("name")
    p_fed.add_argument("--engine", choices=("sim", "flower"), default="sim", help="sim: in-process virtual clock; flower: SuperLink + SuperNodes")
    p_fed.add_argument("--rounds", type=int, default=None, help="server steps (default: the config's rounds)")
    p_fed.add_argument("--clients", type=int, default=None, help="number of clients (default: the config's num_clients)")
    p_fed.add_argument("--config", default=None, help="a LightningCLI config (default: cards/NAME/config.yaml)")
    return parser


def _one_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1]}" if len(lines[0]) < 60 else lines[0]


def _run(argv: list[str]) -> int:
    if argv and argv[0] in LIGHTNING_COMMANDS:
        build_lightning_cli(argv)
        return EXIT_OK
    parser = _zoo_parser()
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return EXIT_OK
    try:
        ns, extra = parser.parse_known_args(argv)
        if extra and ns.command != "federate":
            raise _BadInput(f"unrecognized arguments: {' '.join(extra)}")
    except argparse.ArgumentError as err:
        raise _BadInput(str(err)) from None
    if ns.command == "list":
        return cmd_list(ns.markdown, ns.write_readme)
    if ns.command == "publish":
        return cmd_publish(ns.ckpt_path, ns.local_dir, ns.repo_id, ns.push, ns.metrics)
    if ns.command == "verify":
        return cmd_verify(ns.path_or_repo_id, ns.tolerance, ns.threads, ns.revision)
    if ns.command == "reproduce":
        return cmd_reproduce(ns.name, ns.seeds, ns.out, ns.threads, ns.seed_offset)
    if ns.command == "federate":
        return cmd_federate(ns.name, ns.engine, ns.rounds, ns.clients, ns.config, extra)
    raise _BadInput(f"unknown command {argv[0]!r}")  # pragma: no cover - argparse rejects it first


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``zoo`` console script; returns the exit code."""
    from jsonargparse import ArgumentError as JsonArgumentError

    from zoo.errors import ZooError

    argv = list(sys.argv[1:] if argv is None else argv)
    # Lightning 2.6 on torch >= 2.9 warns about its own pytree use on every fit: not the user's to fix
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    try:
        return _run(argv)
    except (ZooError, _BadInput, JsonArgumentError, argparse.ArgumentError, FileNotFoundError) as err:
        print(f"zoo: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except SystemExit as exit_:  # argparse's own --help / usage exits
        return int(exit_.code or 0) if isinstance(exit_.code, int) else EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
