"""The claim harness: condition maths, claim validation, and exit codes of `zoo reproduce`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import zoo.registry
from zoo import cli
from zoo.claim_plot import draw_claim, plot_data
from zoo.claim_stats import mean_interval, sample_std, summary
from zoo.reproduce import (
    Arm,
    Claim,
    ClaimError,
    ClaimResult,
    Condition,
    arm_args,
    evaluate_condition,
    load_claim,
)

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
    # std is the sample std (ddof 1): std([0.8, 0.9, 1.0]) = sqrt((0.01 + 0 + 0.01) / 2) = 0.1, std(method.acc) = 0
    r = evaluate_condition(Condition("std(base.acc) < 2 * std(method.acc) + 0.15"), VALUES)
    assert r.held and r.lhs == pytest.approx(0.1) and r.margin == pytest.approx(0.05)
    assert not evaluate_condition(Condition("std(base.acc) < 0.09"), VALUES).held  # ddof 0 (0.0816) would pass
    assert evaluate_condition(Condition("min(method.f1) <= max(base.f1) - 0.1"), VALUES).held
    assert evaluate_condition(Condition("abs(method.f1 - base.f1) < 0.3", each_seed=True), VALUES).held


def test_each_seed_against_a_constant() -> None:
    r = evaluate_condition(Condition("method.f1 > 0.45", each_seed=True), VALUES)
    assert not r.held and r.lhs == pytest.approx(0.40) and r.rhs == 0.45 and r.margin == pytest.approx(-0.05)
    assert evaluate_condition(Condition("0.3 < method.f1", each_seed=True), VALUES).held


def test_sample_std_and_t_interval_against_hand_computed_values() -> None:
    # [1, 2, 3]: mean 2, s = 1, t_{0.975, 2} = 4.302653 (t table), half-width 4.302653 / sqrt(3) = 2.484138
    iv = mean_interval([1.0, 2.0, 3.0])
    assert (iv.mean, iv.std, iv.n) == (2.0, 1.0, 3)
    assert iv.lo == pytest.approx(2 - 2.484138, abs=1e-6) and iv.hi == pytest.approx(2 + 2.484138, abs=1e-6)
    assert summary([1.0, 2.0, 3.0]) == "2 ± 1 [-0.4841, 4.484]"
    # [0.5, 0.7]: s = 0.141421, t_{0.975, 1} = 12.706205, half-width 12.706205 * 0.141421 / sqrt(2) = 1.270620
    iv = mean_interval([0.5, 0.7])
    assert iv.std == pytest.approx(0.1414214, abs=1e-7) and iv.hi - iv.mean == pytest.approx(1.2706205, abs=1e-6)
    # five seeds: t_{0.975, 4} = 2.776445; values 10..14 have s = sqrt(2.5)
    iv = mean_interval([10.0, 11.0, 12.0, 13.0, 14.0])
    assert iv.hi - iv.mean == pytest.approx(2.776445 * math.sqrt(2.5) / math.sqrt(5), abs=1e-5)
    assert sample_std([0.8, 0.9, 1.0]) == pytest.approx(0.1) and math.isnan(sample_std([3.0]))
    one = mean_interval([0.25, float("nan")])  # a NaN (not logged) is left out; one value has no spread
    assert one.n == 1 and one.mean == 0.25 and math.isnan(one.lo) and str(one) == "0.25"
    assert str(mean_interval([float("nan")])) == "nan"


# ------------------------------------------------------------------ paired interval, k of n
def _pair(lhs: list[float], rhs: list[float]) -> dict[str, dict[str, list[float]]]:
    return {"a": {"m": lhs}, "b": {"m": rhs}}


def test_paired_interval_n3_uses_t_4303_and_reports_the_near_bound() -> None:
    # differences [1, 2, 3]: mean 2, s 1, t_{0.975, 2} = 4.302653, half-width 4.302653 / sqrt(3) = 2.484138
    values = _pair([2.0, 3.0, 4.0], [1.0, 1.0, 1.0])
    r = evaluate_condition(Condition("a.m > b.m", interval=True), values)
    assert r.mode == "interval" and r.differences == [1.0, 2.0, 3.0] and not r.held  # every seed is above, the interval is not
    assert r.difference is not None and r.difference.mean == 2.0 and r.difference.n == 3
    assert (r.difference.lo, r.difference.hi) == (pytest.approx(2 - 2.484138, abs=1e-6), pytest.approx(2 + 2.484138, abs=1e-6))
    assert r.margin == pytest.approx(-0.484138, abs=1e-6)
    assert evaluate_condition(Condition("a.m > b.m", each_seed=True), values).held  # the same data passes seed by seed
    # the constant belongs to the right side: differences [1.5, 2.5, 3.5], lower bound 2.5 - 2.484138 = 0.015862
    r = evaluate_condition(Condition("a.m >= b.m - 0.5", interval=True), values)
    assert r.held and r.margin == pytest.approx(0.015862, abs=1e-6) and r.measured() == "difference +2.5 [+0.01586, +4.984]"
    assert (r.lhs, r.rhs) == (pytest.approx(3.0), pytest.approx(0.5))  # means of each side


def test_paired_interval_n5_less_than_uses_the_upper_bound() -> None:
    # a - (b - 10) = [0, -1, -2, -3, -4]: mean -2, s sqrt(2.5), t_{0.975, 4} = 2.776445, half 2.776445 * sqrt(2.5) / sqrt(5) = 1.963243
    values = _pair([0.0] * 5, [10.0, 11.0, 12.0, 13.0, 14.0])
    r = evaluate_condition(Condition("a.m < b.m - 10", interval=True), values)
    assert r.held and r.difference.hi == pytest.approx(-2 + 1.963243, abs=1e-6) and r.margin == pytest.approx(2 - 1.963243, abs=1e-6)
    r = evaluate_condition(Condition("a.m <= b.m - 12", interval=True), values)  # differences [2, 1, 0, -1, -2]
    assert not r.held and r.margin == pytest.approx(-1.963243, abs=1e-6)


def test_paired_interval_n10_and_boundaries() -> None:
    # differences 1..10: mean 5.5, s = sqrt(55 / 6) = 3.027650, t_{0.975, 9} = 2.262157, half 2.262157 * 3.027650 / sqrt(10) = 2.165851
    values = _pair([float(i) for i in range(1, 11)], [0.0] * 10)
    r = evaluate_condition(Condition("a.m > b.m + 3.3", interval=True), values)
    assert r.difference.lo == pytest.approx(5.5 - 3.3 - 2.165851, abs=1e-6) and r.held
    assert not evaluate_condition(Condition("a.m > b.m + 3.4", interval=True), values).held
    zero = _pair([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])  # every difference 0: the interval is [0, 0]
    assert evaluate_condition(Condition("a.m >= b.m", interval=True), zero).held
    assert not evaluate_condition(Condition("a.m > b.m", interval=True), zero).held
    assert evaluate_condition(Condition("a.m <= b.m", interval=True), zero).held
    nan = _pair([2.0, float("nan"), 4.0], [0.0, 0.0, 0.0])
    r = evaluate_condition(Condition("a.m > b.m", interval=True), nan)
    assert not r.held and math.isnan(r.margin)
    with pytest.raises(ClaimError, match="at least 2 seeds"):
        evaluate_condition(Condition("a.m > b.m", interval=True), _pair([1.0], [0.0]))


def test_min_seeds_counts_seeds_and_reports_the_deciding_seed() -> None:
    lhs = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]
    rhs = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 9.5, 10.5]  # above on 8 of 10 seeds
    values = _pair(lhs, rhs)
    r = evaluate_condition(Condition("a.m > b.m", min_seeds=7), values)
    assert r.held and r.mode == "min_seeds" and (r.seeds_held, r.seeds_total) == (8, 10)
    assert r.measured() == "8/10 seeds (needs 7)" and r.mode_text() == "at least 7 of 10 seeds"
    assert r.margin == pytest.approx(2.0) and (r.lhs, r.rhs) == (2.0, 0.0)  # margins 8, 7, ..., 1, -0.5, -0.5: the 7th best is seed 1's
    r = evaluate_condition(Condition("a.m > b.m", min_seeds=9), values)
    assert not r.held and r.seeds_held == 8 and r.margin == pytest.approx(-0.5)  # the 9th best seed is 0.5 below
    assert evaluate_condition(Condition("a.m > b.m + 7.5", min_seeds=2), values).seeds_held == 1
    less = evaluate_condition(Condition("a.m < b.m", min_seeds=2), values)
    assert less.held and less.seeds_held == 2 and less.margin == pytest.approx(0.5)
    nan = evaluate_condition(Condition("a.m > b.m", min_seeds=8), _pair([*lhs[:7], float("nan"), *lhs[8:]], rhs))
    assert not nan.held and nan.seeds_held == 7  # NaN (not logged) never counts


def test_existing_modes_report_as_before() -> None:
    r = evaluate_condition(Condition("method.f1 >= base.f1 - 0.05", each_seed=True), VALUES)
    assert r.mode == "each_seed" and r.seeds_held == 3 and r.differences == pytest.approx([0.25, 0.10, 0.0])
    m = evaluate_condition(Condition("method.f1 > base.f1 + 0.1"), VALUES)
    assert m.mode == "mean" and m.differences is None and m.measured() == "0.5 vs 0.5333"


def test_paired_modes_are_validated_at_load(cards: Path) -> None:
    write_card(cards, [{"check": "method.f1 > base.f1", "interval": True}, {"check": "method.f1 > base.f1", "min_seeds": 2}])
    claim = load_claim("anyloss")
    assert [c.mode for c in claim.conditions] == ["interval", "min_seeds"]
    with pytest.raises(ClaimError, match="at least 2 seeds"):
        claim.with_seeds(1)
    write_card(cards, [{"check": "method.f1 > base.f1", "interval": True}], seeds=1)
    with pytest.raises(ClaimError, match="at least 2 seeds"):
        load_claim("anyloss")
    write_card(cards, [{"check": "method.f1 > base.f1", "min_seeds": 3}])
    with pytest.raises(ClaimError, match="min_seeds 3 but the claim has 2 seeds"):
        load_claim("anyloss")
    for bad in (0, True, 1.5):
        write_card(cards, [{"check": "method.f1 > base.f1", "min_seeds": bad}])
        with pytest.raises(ClaimError, match="positive integer"):
            load_claim("anyloss")
    write_card(cards, [{"check": "method.f1 > base.f1", "interval": True, "each_seed": True}])
    with pytest.raises(ClaimError, match="pick one mode"):
        load_claim("anyloss")
    write_card(cards, [{"check": "method.f1 > base.f1", "intervals": True}])
    with pytest.raises(ClaimError, match="unknown keys \\['intervals'\\]"):
        load_claim("anyloss")
    write_card(cards, [{"check": "mean(method.f1) > mean(base.f1)", "interval": True}])
    with pytest.raises(ClaimError, match="neither side varies by seed"):
        load_claim("anyloss")


def test_paired_modes_in_table_json_and_picture() -> None:
    from rich.console import Console

    values = {"method": {"f1": [0.5, 0.6, 0.7], "acc": [0.9, 0.9, 0.9]}, "base": {"f1": [0.3, 0.4, 0.6], "acc": [0.8, 0.9, 1.0]}}
    conds = [Condition("method.f1 > base.f1", interval=True), Condition("method.acc >= base.acc", min_seeds=2)]
    result = ClaimResult("anyloss", "c", "p", [0, 1, 2], {"method": "M", "base": "B"}, values,
                         [evaluate_condition(c, values) for c in conds], 1.0, metrics={"f1": "test/f1", "acc": "test/acc"})
    # f1 differences [0.2, 0.2, 0.1]: mean 0.16667, s 0.057735, half 4.302653 * 0.057735 / sqrt(3) = 0.143422
    iv = result.conditions[0].difference
    assert iv.lo == pytest.approx(0.166667 - 0.143422, abs=1e-6) and result.conditions[0].held
    console = Console(record=True, width=250)
    cli.render_claim(result, console)
    text = console.export_text()
    assert "paired 95 % interval: method.f1 > base.f1" in text and "difference +0.1667 [+0.02324, +0.3101]" in text
    assert "at least 2 of 3 seeds: method.acc >= base.acc" in text and "2/3 seeds (needs 2)" in text
    data = json.loads(result.to_json())["conditions"]
    assert data[0]["mode"] == "interval" and data[0]["differences"] == pytest.approx([0.2, 0.2, 0.1])
    assert data[0]["difference"]["lo"] == pytest.approx(iv.lo) and data[0]["difference"]["n"] == 3
    assert (data[1]["mode"], data[1]["seeds_held"], data[1]["seeds_total"], data[1]["min_seeds"]) == ("min_seeds", 2, 3, 2)
    panels = {p.metric: p for p in plot_data(result)}
    assert "paired 95 % interval: difference +0.1667" in panels["f1"].conditions[0][4]
    assert panels["acc"].conditions[0][4] == "at least 2 of 3 seeds: 2/3 seeds (needs 2)"
    (line,) = panels["f1"].thresholds  # per seed, as a seed-by-seed condition: base.f1 over method
    assert line.arm == "method" and line.values == pytest.approx([0.3, 0.4, 0.6]) and line.each_seed
    titles = [" ".join(ax.get_title(loc="left").split()) for ax in draw_claim(result).axes if ax.get_visible()]
    assert any("paired 95 % interval" in t for t in titles) and any("at least 2 of 3 seeds" in t for t in titles)


def test_bcd_arms_are_labelled_by_the_rule_they_run() -> None:
    """With variable blocks GSL and GSD rank coordinates alike (grad_i^2 / L_i): that arm runs the GSD rule."""
    claim = load_claim("bcd")
    for arm in claim.arms.values():
        init = yaml.safe_load(arm.config.read_text())["model"]["init_args"]
        for arg in arm.args:
            key, _, value = arg.removeprefix("--model.init_args.").partition("=")
            init[key] = value
        if init["blocks"] == "variable" and init["selection"] in ("GSL", "GSD"):
            assert arm.label.startswith("GSD (variable blocks"), (arm.name, arm.label)
        else:
            assert arm.label.split()[0].lower() in (init["selection"].lower(), "gs-h", "lipschitz"), (arm.name, arm.label)


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


def write_card(root: Path, conditions: list, arms: dict | None = None, metrics: dict | None = None, seeds: int = 2) -> None:
    card = root / "anyloss"
    card.mkdir(parents=True, exist_ok=True)
    (card / "config.yaml").write_text(yaml.safe_dump(TINY_CONFIG))
    claim = {
        "claim": "test claim",
        "paper": "the paper",
        "seeds": seeds,
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


# ------------------------------------------------------------------------ seed offset
def test_seed_offset_shifts_range_and_list_seeds(cards: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_card(cards, ["method.acc >= 0"])
    claim = load_claim("anyloss")
    assert claim.seeds == (0, 1) and claim.with_seed_offset(100).seeds == (100, 101)
    assert claim.with_seeds(3).with_seed_offset(7).seeds == (7, 8, 9)
    listed = Claim(**{**claim.__dict__, "seeds": (3, 7)})
    assert listed.with_seed_offset(100).seeds == (103, 107)
    with pytest.raises(ClaimError, match="seed-offset"):
        claim.with_seed_offset(-1)

    trained: list[tuple[str, int]] = []

    def fake_train(arm: Arm, seed: int, claim: Claim, root: Path) -> dict[str, float]:
        trained.append((arm.name, seed))
        assert f"--seed_everything={seed}" in arm_args(arm, seed, claim, root)
        return {"f1": seed / 1000, "acc": 1.0}

    monkeypatch.setattr(zoo.reproduce, "train_arm", fake_train)
    result = zoo.reproduce.reproduce(claim, seed_offset=100)
    assert sorted(trained) == [("base", 100), ("base", 101), ("method", 100), ("method", 101)]
    assert [seed for _, seed in trained] == [100, 100, 101, 101]  # seed by seed, every arm
    assert result.seeds == [100, 101] and result.seed_offset == 100 and result.values["method"]["f1"] == [0.1, 0.101]


def test_cli_seed_offset_writes_json_with_environment_and_a_png(cards: Path, tmp_path: Path) -> None:
    write_card(cards, ["method.acc >= 0", {"check": "method.f1 >= base.f1 - 1", "each_seed": True}])
    out = tmp_path / "offset.json"
    assert cli.main(["reproduce", "anyloss", "--seeds", "2", "--seed-offset", "100", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["seeds"] == [100, 101] and data["seed_offset"] == 100
    env = data["environment"]
    assert {"zoo", "torch", "lightning", "python", "cpu", "torch_threads", "platform", "date"} <= set(env)
    assert env["torch"] == torch.__version__ and env["torch_threads"] == 1 and env["cpu"]
    f1 = data["values"]["method"]["f1"]
    stats = data["stats"]["method"]["f1"]
    assert stats["mean"] == pytest.approx(np.mean(f1)) and stats["std"] == pytest.approx(np.std(f1, ddof=1))
    assert stats["hi"] - stats["mean"] == pytest.approx(12.7062047 * np.std(f1, ddof=1) / math.sqrt(2), rel=1e-6)
    picture = out.with_suffix(".png")
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli.main(["reproduce", "anyloss", "--seed-offset", "-1"]) == 2


# ------------------------------------------------------------------------------ picture
def _result(conditions: list[Condition]) -> ClaimResult:
    return ClaimResult(
        "anyloss", "test claim", "paper", [0, 1, 2], {"method": "M", "base": "B"}, VALUES,
        [evaluate_condition(c, VALUES) for c in conditions], 1.0, metrics={"f1": "test/f1", "acc": "test/acc"},
    )


def test_plot_data_thresholds_are_where_the_conditions_put_them() -> None:
    result = _result([
        Condition("method.f1 > base.f1 + 0.1"),  # line at mean(base.f1) + 0.1 = 0.53333 over method
        Condition("method.acc * 2 < base.acc + 1", each_seed=True),  # per seed: (base.acc + 1) / 2 over method
        Condition("0.25 < base.f1", each_seed=True),  # right side isolated: 0.25 over base
        Condition("abs(method.f1 - base.f1) < 0.3", each_seed=True),  # two metrics on one side: no line
        Condition("max(base.acc) - 0.5 <= method.acc"),  # left isolated: max(base.acc) <= mean(method.acc) + 0.5
    ])
    panels = {p.metric: p for p in plot_data(result)}
    assert list(panels) == ["f1", "acc"] and panels["f1"].key == "test/f1"
    f1 = panels["f1"]
    assert [(a.arm, a.values) for a in f1.arms] == [("method", VALUES["method"]["f1"]), ("base", VALUES["base"]["f1"])]
    assert f1.arms[0].interval.mean == pytest.approx(0.5) and f1.arms[0].interval.std == pytest.approx(0.1)
    lines = {t.index: t for t in f1.thresholds}
    assert set(lines) == {1, 3}
    assert lines[1].arm == "method" and lines[1].values == [pytest.approx((0.3 + 0.55 + 0.45) / 3 + 0.1)] and not lines[1].held
    assert lines[3].arm == "base" and lines[3].values == [pytest.approx(0.25)] and lines[3].each_seed and lines[3].held
    assert [c[0] for c in f1.conditions] == [1, 3, 4]
    acc = {t.index: t for t in panels["acc"].thresholds}
    assert acc[2].arm == "method" and acc[2].values == pytest.approx([0.9, 0.95, 1.0]) and not acc[2].held  # seed 0: 1.8 < 1.8
    assert acc[5].arm == "base" and acc[5].values == [pytest.approx(1.4)] and acc[5].held


def test_drawn_points_and_means_equal_the_result_values() -> None:
    result = _result([Condition("method.f1 > base.f1 + 0.1"), Condition("base.acc <= 1", each_seed=True)])
    fig = draw_claim(result)
    seen = set()
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        metric = ax.get_title(loc="left").split()[0]
        for artist in ax.get_children():
            gid = artist.get_gid() or ""
            if gid.startswith("seeds:"):
                arm = gid.split(":")[1]
                assert list(artist.get_offsets()[:, 1]) == pytest.approx(VALUES[arm][metric])
                seen.add((arm, metric))
            if gid.startswith("threshold:1:"):
                (segment,) = artist.get_segments()
                assert segment[0][1] == pytest.approx(np.mean(VALUES["base"]["f1"]) + 0.1)
    assert seen == {("method", "f1"), ("base", "f1"), ("method", "acc"), ("base", "acc")}
    assert "did NOT hold" in fig._suptitle.get_text()


def test_reported_not_gated_condition_is_shown_but_leaves_the_verdict(cards: Path) -> None:
    """``gate: false``: a failing reported condition keeps the claim held; a failing gated one does not."""
    from rich.console import Console

    write_card(cards, [{"check": "method.f1 > base.f1", "gate": False}, {"check": "method.acc >= base.acc"}])
    claim = load_claim("anyloss")
    assert [c.gate for c in claim.conditions] == [False, True]
    values = {"method": {"f1": [0.1, 0.2], "acc": [0.9, 0.9]}, "base": {"f1": [0.5, 0.6], "acc": [0.8, 0.9]}}
    results = [evaluate_condition(c, values) for c in claim.conditions]
    assert [(r.held, r.gate) for r in results] == [(False, False), (True, True)]
    result = ClaimResult("anyloss", "c", "p", [0, 1], {"method": "M", "base": "B"}, values, results, 1.0, metrics={"f1": "test/f1", "acc": "test/acc"})
    assert result.held and json.loads(result.to_json())["conditions"][0]["gate"] is False
    console = Console(record=True, width=250)
    cli.render_claim(result, console)
    text = console.export_text()
    assert "did not hold (reported, not gated)" in text and "the claim held" in text
    assert "reported, not gated" in {p.metric: p for p in plot_data(result)}["f1"].conditions[0][4]
    gated = [evaluate_condition(Condition("method.f1 > base.f1"), values), results[1]]
    assert not ClaimResult("anyloss", "c", "p", [0, 1], {"method": "M", "base": "B"}, values, gated, 1.0).held
    for bad in ("no", 0, None):
        write_card(cards, [{"check": "method.f1 > base.f1", "gate": bad}])
        with pytest.raises(ClaimError, match="gate must be true or false"):
            load_claim("anyloss")
