"""The claim harness: condition maths, claim validation, and exit codes of `zoo reproduce`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from zoo import cli
import zoo.registry
from zoo.reproduce import Arm, Claim, ClaimError, Condition, arm_args, evaluate_condition, load_claim

VALUES = {
    "method": {"f1": [0.50, 0.60, 0.40], "acc": [0.9, 0.9, 0.9]},
    "base": {"f1": [0.30, 0.55, 0.45], "acc": [0.8, 0.9, 1.0]},
}


def test_mean_condition_compares_means_and_reports_margin() -> None:
    r = evaluate_condition(Condition("method.f1 > base.f1 + 0.1"), VALUES)
    assert r.lhs == pytest.approx(0.5) and r.rhs == pytest.approx(np.mean([0.30, 0.55, 0.45]) + 0.1)
    assert r.margin == pytest.approx(0.5 - 0.4333333 - 0.1, abs=1e-6) and not r.held
    assert evaluate_condition(Condition("method.f1 > base.f1 + 0.05"), VALUES).held


def test_each_seed_condition_is_paired_and_reports_worst_seed() -> None:
    r = evaluate_condition(Condition("method.f1 >= base.f1 - 0.05", each_seed=True), VALUES)
    # per-seed margins: 0.25, 0.10, 0.00 -> holds (>=), worst is seed 2
    assert r.held and r.margin == pytest.approx(0.0, abs=1e-12)
    assert (r.lhs, r.rhs) == (pytest.approx(0.40), pytest.approx(0.40))
    assert not evaluate_condition(Condition("method.f1 > base.f1", each_seed=True), VALUES).held


def test_less_than_margin_sign_and_functions() -> None:
    r = evaluate_condition(Condition("std(base.acc) < 2 * std(method.acc) + 0.1"), VALUES)
    assert r.held and r.margin == pytest.approx(0.1 - np.std([0.8, 0.9, 1.0]))
    assert evaluate_condition(Condition("min(method.f1) <= max(base.f1) - 0.1"), VALUES).held
    assert evaluate_condition(Condition("abs(method.f1 - base.f1) < 0.3", each_seed=True), VALUES).held


def test_each_seed_against_a_constant() -> None:
    r = evaluate_condition(Condition("method.f1 > 0.45", each_seed=True), VALUES)
    assert not r.held and r.lhs == pytest.approx(0.40) and r.rhs == 0.45 and r.margin == pytest.approx(-0.05)
    assert evaluate_condition(Condition("0.3 < method.f1", each_seed=True), VALUES).held


def test_nan_never_holds() -> None:
    values = {"a": {"m": [float("nan")]}, "b": {"m": [0.0]}}
    assert not evaluate_condition(Condition("a.m > b.m - 10"), values).held


@pytest.mark.parametrize(
    "check",
    ["__import__('os').system('true') > 0", "method.f1 > base.f1 > 0", "method.f1", "method.f1 == base.f1", "method.f1 >"],
)
def test_unsafe_or_malformed_checks_are_refused(check: str) -> None:
    with pytest.raises(ClaimError):
        evaluate_condition(Condition(check), VALUES)


# ------------------------------------------------------------------------ claim files
TINY_CONFIG = {
    "model": {"class_path": "zoo.anyloss.AnyLossClassifier", "init_args": {"input_dim": 8}},
    "data": {
        "class_path": "zoo.datamodules.tabular.SyntheticBinaryDataModule",
        "init_args": {"n_samples": 400, "n_features": 8, "n_informative": 4, "positive_fraction": 0.2, "batch_fraction": 0.25},
    },
    "trainer": {"max_epochs": 1, "accelerator": "cpu", "enable_checkpointing": False},
}


def write_card(root: Path, conditions: list, arms: dict | None = None, metrics: dict | None = None) -> None:
    card = root / "anyloss"
    card.mkdir(parents=True, exist_ok=True)
    (card / "config.yaml").write_text(yaml.safe_dump(TINY_CONFIG))
    claim = {
        "claim": "test claim",
        "paper": "the paper",
        "seeds": 2,
        "seed_keys": ["data.init_args.seed"],
        "metrics": metrics or {"f1": "test/f1", "acc": "test/acc"},
        "arms": arms or {"method": {"config": "config.yaml"}, "base": {"config": "config.yaml", "args": ["--model.init_args.loss=bce"]}},
        "conditions": conditions,
    }
    (card / "claim.yaml").write_text(yaml.safe_dump(claim))


@pytest.fixture
def cards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(zoo.registry, "CARDS_DIR", tmp_path)
    return tmp_path


def test_claim_validation_names_the_problem(cards: Path) -> None:
    write_card(cards, ["method.f1 > nosuch.f1"])
    with pytest.raises(ClaimError, match="arm 'nosuch'"):
        load_claim("anyloss")
    write_card(cards, ["method.auc > base.f1"])
    with pytest.raises(ClaimError, match="metric 'auc'"):
        load_claim("anyloss")
    write_card(cards, ["method.f1 > base.f1"], arms={"bad-name": "config.yaml"})
    with pytest.raises(ClaimError, match="identifier"):
        load_claim("anyloss")
    write_card(cards, ["method.f1 > base.f1"], arms={"method": "missing.yaml"})
    with pytest.raises(ClaimError, match="not found"):
        load_claim("anyloss")


def test_reproduce_exit_codes_and_json(cards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_card(cards, [{"check": "method.acc >= 0", "paper": "p"}, {"check": "base.acc <= 1", "each_seed": True}])
    out = tmp_path / "held.json"
    assert cli.main(["reproduce", "anyloss", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["held"] and result["seeds"] == [0, 1]
    assert len(result["values"]["method"]["f1"]) == 2 and len(result["values"]["base"]["acc"]) == 2
    # real training: the two seeds see different data, so the runs differ
    assert result["values"]["base"]["f1"] != result["values"]["method"]["f1"] or result["values"]["base"]["acc"][0] != result["values"]["base"]["acc"][1]

    write_card(cards, ["method.acc > 2"])
    assert cli.main(["reproduce", "anyloss", "--seeds", "1", "--out", str(tmp_path / "failed.json")]) == 1
    assert "did not hold" in capsys.readouterr().out

    (cards / "anyloss" / "claim.yaml").unlink()
    assert cli.main(["reproduce", "anyloss"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no claim" in err[0]


def test_arm_args_fill_seed_and_workdir_placeholders(tmp_path: Path) -> None:
    """An earlier arm can write where a later arm of the same seed reads (MTARD's teachers)."""
    arm = Arm(
        "teacher",
        tmp_path / "config.yaml",
        "teacher",
        ("--trainer.callbacks.dirpath={workdir}/teachers/seed{seed}/clean", '--model.init_args.extra={"a": {"b": 1}}'),
    )
    claim = Claim("x", "c", "p", (0, 1), {}, {"teacher": arm}, (), seed_keys=("data.init_args.seed",))
    args = arm_args(arm, 3, claim, tmp_path / "sweep")
    assert f"--trainer.callbacks.dirpath={tmp_path}/sweep/teachers/seed3/clean" in args
    assert '--model.init_args.extra={"a": {"b": 1}}' in args  # other braces are left alone
    assert {"--seed_everything=3", "--data.init_args.seed=3", f"--trainer.default_root_dir={tmp_path}/sweep/teacher/3"} <= set(args)


def test_metrics_no_condition_reads_from_an_arm_may_be_missing(cards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    metrics = {"acc": "test/acc", "extra": "test/not_logged"}
    write_card(cards, ["method.acc >= 0"], metrics=metrics)
    out = tmp_path / "held.json"
    assert cli.main(["reproduce", "anyloss", "--seeds", "1", "--out", str(out)]) == 0
    values = json.loads(out.read_text())["values"]
    assert math.isnan(values["method"]["extra"][0]) and math.isnan(values["base"]["extra"][0]) and values["base"]["acc"][0] >= 0
    write_card(cards, ["method.acc >= 0", "base.extra >= 0"], metrics=metrics)
    assert cli.main(["reproduce", "anyloss", "--seeds", "1", "--out", str(tmp_path / "bad.json")]) == 2
    assert "arm 'base' did not log ['test/not_logged']" in capsys.readouterr().err
