"""Entries compose: examples/compose.yaml trains SRAT on long-tailed digits with DynamicEMA (coin),
NeuralCollapseMonitor (neural-collapse) and RobustnessEvaluation attached, then tests it."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import yaml

from zoo.lightning_cli import build_lightning_cli

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "compose.yaml"


def test_compose_example_fits_and_tests_with_three_callbacks_from_other_entries(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    config = yaml.safe_load(EXAMPLE.read_text())
    for callback in config["trainer"]["callbacks"]:
        if callback["class_path"].endswith("NeuralCollapseMonitor"):
            callback["init_args"]["every_n_epochs"] = 1  # measure within the two epochs
        if callback["class_path"].endswith("ModelCheckpoint"):
            callback["init_args"]["dirpath"] = str(tmp_path / "checkpoints")
    recipe = tmp_path / "compose.yaml"
    recipe.write_text(yaml.safe_dump(config))
    args = [
        "--config", str(recipe),
        "--trainer.max_epochs=2",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={tmp_path}",
        "--model.init_args.reweight_start_epoch=1",
    ]
    run = build_lightning_cli(args, run=False)
    names = [type(c).__name__ for c in run.trainer.callbacks]
    assert {"DynamicEMA", "NeuralCollapseMonitor", "RobustnessEvaluation"} <= set(names)
    run.trainer.fit(run.model, datamodule=run.datamodule)
    fitted = {k: float(v) for k, v in run.trainer.callback_metrics.items()}
    assert math.isfinite(fitted["nc/NC1"]) and fitted["nc/NC1"] > 0          # the monitor measured
    assert 0.0 < fitted["dema/adaptive_frac"] <= 1.0                          # the EMA adapted its weight
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    (tested,) = run.trainer.test(run.model, datamodule=run.datamodule, ckpt_path="last", verbose=False)
    assert 0.0 <= tested["robust/pgd_acc"] <= tested["robust/clean_acc"] <= 100.0  # PGD never helps
    assert 0.0 <= tested["test/worst_class_acc"] <= tested["test/balanced_acc"] <= 1.0
