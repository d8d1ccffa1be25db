"""Registry-driven: every entry builds with its defaults, trains a few steps from its card's
config, and round-trips through save_pretrained -> zoo.load with identical outputs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from zoo import cli
import zoo
from zoo.reproduce import load_claim

ENTRIES = zoo.list_entries()
ROOT = Path(__file__).resolve().parent.parent
CARD_FILES = ("README.md", "config.yaml", "baseline.yaml", "full.yaml", "claim.yaml")


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_entry_target_and_module_build_with_defaults(entry: zoo.Entry) -> None:
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", entry.name)
    target = entry.load_target()
    if isinstance(target, type) and issubclass(target, torch.optim.Optimizer):  # an optimizer needs parameters
        assert target([torch.nn.Parameter(torch.zeros(2, 2))]) is not None
    else:
        assert target() is not None
    module = entry.load_module_class()()
    assert isinstance(module, zoo.ZooModule) and module.zoo_entry() == entry


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_card_is_complete_and_configs_parse(entry: zoo.Entry, tmp_path: Path) -> None:
    for name in CARD_FILES:
        assert (entry.card_dir / name).is_file(), f"cards/{entry.card}/{name} is missing"
    assert load_claim(entry).conditions
    for name in ("config.yaml", "baseline.yaml", "full.yaml"):
        run = cli.build_lightning_cli(
            ["--config", str(entry.card_dir / name), f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false"],
            run=False,
        )
        assert isinstance(run.model, zoo.ZooModule)


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_fast_dev_run_then_hub_round_trip(entry: zoo.Entry, tmp_path: Path) -> None:
    run = cli.build_lightning_cli(
        [
            "--config",
            str(entry.card_dir / "config.yaml"),
            "--trainer.fast_dev_run=true",
            "--trainer.logger=false",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path}",
        ],
        run=False,
    )
    run.trainer.fit(run.model, datamodule=run.datamodule)
    model = run.model.eval()
    model.save_pretrained(tmp_path / "hub")
    config = json.loads((tmp_path / "hub" / "config.json").read_text())
    assert config["architecture"] == entry.name and config["zoo_class"] == entry.module_path
    loaded = zoo.load(tmp_path / "hub")
    assert type(loaded) is type(model)
    x = next(iter(run.datamodule.train_dataloader()))[0]
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    for key, value in model.hub_state_dict().items():  # what is published (replay buffers are not)
        assert torch.equal(value, loaded.hub_state_dict()[key]), key


def test_unknown_entry_suggests_close_names() -> None:
    with pytest.raises(zoo.UnknownEntryError, match="did you mean 'anyloss'"):
        zoo.get_entry("anyloss2")
    with pytest.raises(zoo.UnknownEntryError, match="zoo list"):
        zoo.get_entry("completely-different")


def test_entry_names_are_unique() -> None:
    names = [e.name for e in ENTRIES]
    assert len(names) == len(set(names))


def test_readme_table_is_generated_from_the_registry() -> None:
    table = subprocess.run(
        [sys.executable, "-c", "from zoo import cli; cli.main(['list', '--markdown'])"], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout.strip()
    assert table in (ROOT / "README.md").read_text(), "README table is stale: run `make readme-table`"
