"""``zoo verify``: retrain a published model from its own recipe and check the numbers its card claims.

A folder published from a ``zoo fit`` checkpoint holds ``training_config.yaml`` (the
LightningCLI config of that run, seed included) and a card whose ``model-index`` lists the
measured test metrics. :func:`verify` retrains from that config in a temporary folder with the
same LightningCLI, tests the trained model as ``zoo fit`` + ``trainer.test`` did, and compares.

Comparison (:func:`metric_matches`): by default a measured value matches when it equals the
card's value at the precision the card stores, i.e. rounded to as many decimals as the card's
number has. ``zoo publish`` stores the float itself (its shortest repr, 15 or more significant
digits), and such a value must be equal, so a published card is checked to the last digit,
which holds on CPU because the run is deterministic (seeded, ``deterministic: true``,
torch's thread count taken from the provenance). A hand-edited ``0.81`` is checked to two
decimals. ``tolerance`` replaces this by an absolute bound ``|measured - card| <= tolerance``.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import torch
import yaml

from zoo.errors import ZooLoadError

__all__ = ["MetricCheck", "Verification", "verify", "metric_matches", "read_training_config"]

#: a card value with this many significant digits is a float's full repr (what zoo publish writes):
#: rounding to its decimals could hide a one-ulp difference, so it must be equal
FULL_PRECISION_DIGITS = 15
#: a LightningCLI config is a few kilobytes; a bigger file is refused unparsed
MAX_TRAINING_CONFIG_BYTES = 1_000_000


@dataclass(frozen=True)
class MetricCheck:
    """One card metric against the retrained run's value (None: the run did not log it)."""

    name: str
    card: float
    measured: float | None
    match: bool


@dataclass(frozen=True)
class Verification:
    """What :func:`verify` found; ``passed`` when every card metric matched."""

    source: str
    checks: tuple[MetricCheck, ...]
    weights_identical: bool | None
    threads: int
    seconds: float

    @property
    def passed(self) -> bool:
        return all(c.match for c in self.checks)


def metric_matches(card: float, measured: float, tolerance: float | None = None) -> bool:
    """``measured`` equals ``card`` at the card's stored precision, or within ``tolerance``.

    >>> metric_matches(0.81, 0.8149), metric_matches(0.81, 0.8151)
    (True, False)
    >>> metric_matches(0.6123456789012345, 0.6123456789012346), metric_matches(0.5, 0.52, tolerance=0.05)
    (False, True)
    """
    if tolerance is not None:
        return abs(measured - card) <= tolerance
    if measured == card:
        return True
    stored = Decimal(repr(float(card))).as_tuple()
    if not isinstance(stored.exponent, int) or len(stored.digits) >= FULL_PRECISION_DIGITS:
        return False  # nan/inf, or the float itself (as zoo publish stores it): only equality counts
    return round(measured, -stored.exponent) == card


def read_training_config(text: bytes, source: object) -> dict[str, Any]:
    """``training_config.yaml`` parsed with safe YAML; anything but a LightningCLI mapping is bad input."""
    if len(text) > MAX_TRAINING_CONFIG_BYTES:
        raise ZooLoadError(f"{source}: training_config.yaml is {len(text):,} bytes, more than a config has; not parsed")
    try:
        config = yaml.safe_load(text.decode("utf-8"))
    except UnicodeDecodeError:
        raise ZooLoadError(f"{source}: training_config.yaml is not UTF-8 text") from None
    except yaml.YAMLError as err:
        raise ZooLoadError(f"{source}: training_config.yaml is not valid YAML ({type(err).__name__})") from None
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise ZooLoadError(f"{source}: training_config.yaml is not a LightningCLI config (no 'model' section)")
    return config


def verify(
    path_or_repo_id: str | Path,
    *,
    tolerance: float | None = None,
    threads: int | None = None,
    revision: str | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> Verification:
    """Retrain from the folder's ``training_config.yaml``, test, and compare with its card's metrics.

    ``threads`` defaults to the thread count recorded in ``config.json``'s provenance (1 when
    absent). Bad input (no recipe, no measured metrics, unreadable files) raises a ZooError.
    """
    from zoo.cards import card_metrics
    from zoo.hub import _Source

    source = _Source(path_or_repo_id, revision, None, None, False, False)
    config = source.read_config()
    recipe_path = source.file("training_config.yaml")
    if recipe_path is None:
        raise ZooLoadError(
            f"{source}: no training_config.yaml, so there is no recipe to retrain from "
            f"(publish the checkpoint of a zoo fit run with zoo publish)"
        )
    recipe = read_training_config(recipe_path.read_bytes(), source)
    card_path = source.file("README.md")
    if card_path is None:
        raise ZooLoadError(f"{source}: no README.md, so there are no card metrics to compare with")
    try:
        claimed = card_metrics(card_path.read_bytes().decode("utf-8", errors="replace"))
    except ValueError as err:
        raise ZooLoadError(f"{source}: {err}") from None
    recorded = config.get("zoo_provenance") if isinstance(config.get("zoo_provenance"), dict) else {}
    n_threads = threads or recorded.get("torch_threads") or 1
    if not isinstance(n_threads, int) or n_threads < 1:
        raise ZooLoadError(f"{source}: zoo_provenance.torch_threads must be a positive integer, got {n_threads!r}")

    start, before = time.perf_counter(), torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        measured, model = _retrain_and_test(recipe, set(claimed), on_stage)
    finally:
        torch.set_num_threads(before)
    checks = tuple(
        MetricCheck(name, value, measured.get(name), name in measured and metric_matches(value, measured[name], tolerance))
        for name, value in sorted(claimed.items())
    )
    return Verification(str(source), checks, _same_weights(model, source), n_threads, time.perf_counter() - start)


def _retrain_and_test(
    recipe: dict[str, Any], wanted: set[str], on_stage: Callable[[str], None] | None
) -> tuple[dict[str, float], Any]:
    """``zoo fit --config training_config.yaml`` in a temporary folder, then test (and validate
    when the card lists metrics the test does not log); returns the metrics and the model."""
    from zoo.lightning_cli import build_lightning_cli

    with tempfile.TemporaryDirectory(prefix="zoo-verify-") as work:
        path = Path(work) / "training_config.yaml"
        path.write_text(yaml.safe_dump(recipe, sort_keys=False))
        quiet = ["--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
        if on_stage:
            on_stage("fit")
        run = build_lightning_cli(["fit", "--config", str(path), f"--trainer.default_root_dir={work}", *quiet])
        if on_stage:
            on_stage("test")
        measured = _floats(run.trainer.test(run.model, datamodule=run.datamodule, verbose=False))
        if wanted - measured.keys():
            if on_stage:
                on_stage("validate")
            measured = {**_floats(run.trainer.validate(run.model, datamodule=run.datamodule, verbose=False)), **measured}
        return measured, run.model


def _floats(results: list[dict[str, Any]]) -> dict[str, float]:
    return {k: float(v) for result in results for k, v in result.items()}


def _same_weights(model: Any, source: Any) -> bool | None:
    """Whether the retrained weights equal the published ones, bit for bit (None: not comparable)."""
    from zoo.hub import WEIGHTS_NAME

    if source.file(WEIGHTS_NAME) is None:
        return None
    try:
        published = source.read_weights(allow_pickle=False, map_location="cpu")
    except ZooLoadError:  # corrupted or truncated: nothing to compare with
        return None
    mine = model.hub_state_dict()
    return mine.keys() == published.keys() and all(torch.equal(mine[k].cpu(), published[k]) for k in mine)
