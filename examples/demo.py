"""The main job on embedded data: train AnyLoss with LightningCLI, test it, publish it to a
local hub folder (weights, config.json with provenance, the card, training_config.yaml), load it
back with ``zoo.load``, and show that the loaded model scores the same; ``zoo verify`` retrains
from the folder's own recipe and matches the card's numbers; then check the paper's claim with
``zoo reproduce anyloss``.

Run with ``make demo`` (or ``python examples/demo.py`` inside the venv).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch
from lightning.pytorch import Trainer
from rich.table import Table

import zoo
from zoo import cli
from zoo.lightning_cli import build_lightning_cli

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "cards" / "anyloss" / "config.yaml"


def main() -> int:
    torch.set_num_threads(1)  # small models train fastest on one thread
    console = cli.make_console()
    work = Path(tempfile.mkdtemp(prefix="zoo-demo-"))

    console.rule("1. zoo fit --config cards/anyloss/config.yaml")
    run = build_lightning_cli(["fit", "--config", str(CONFIG), f"--trainer.default_root_dir={work}"])
    ckpt = Path(run.trainer.checkpoint_callback.last_model_path)

    console.rule("2. zoo test (the trained model)")
    trained = run.trainer.test(run.model, datamodule=run.datamodule, verbose=False)[0]

    console.rule("3. zoo publish -> a local hub folder")
    hub_dir = work / "hub" / "anyloss"
    code = cli.main(["publish", "--ckpt_path", str(ckpt), "--local_dir", str(hub_dir), "--metrics", json.dumps(trained)])
    if code != 0:
        return code
    console.print(sorted(p.name for p in hub_dir.iterdir()))

    console.rule("4. zoo.load and test again")
    loaded_model = zoo.load(hub_dir)
    loaded = Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False).test(
        loaded_model, datamodule=run.datamodule, verbose=False
    )[0]

    table = Table(title="test metrics: trained vs published-and-loaded")
    for column in ("metric", "trained", "loaded", "identical"):
        table.add_column(column)
    for key in sorted(trained):
        table.add_row(key, f"{trained[key]:.6f}", f"{loaded[key]:.6f}", "yes" if trained[key] == loaded[key] else "NO")
    console.print(table)
    if trained != loaded:
        console.print("[red]the loaded model does not score like the trained one[/]")
        return 1

    console.rule("5. zoo verify: retrain from the folder's training_config.yaml, compare with its card")
    code = cli.main(["verify", str(hub_dir)])
    if code != 0:
        return code

    console.rule("6. zoo reproduce anyloss")
    return cli.main(["reproduce", "anyloss"])


if __name__ == "__main__":
    sys.exit(main())
