"""Registry-driven: every entry builds with its defaults, trains a few steps from its card's
config, and round-trips through save_pretrained -> zoo.load with identical outputs; every
ZooModule the CLI can build either publishes and loads back or is refused up front."""

from __future__ import annotations

import inspect
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import zoo
from zoo import cli
from zoo.lightning_cli import _import_all_entries
from zoo.registry import SHARED_MODULES, class_name, module_identity
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
    assert config["architecture"] == entry.name and config["zoo_class"] == class_name(entry.module_path)
    loaded = zoo.load(tmp_path / "hub")
    assert type(loaded) is type(model)
    x = next(iter(run.datamodule.train_dataloader()))[0]
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    for key, value in model.hub_state_dict().items():  # what is published (replay buffers are not)
        assert torch.equal(value, loaded.hub_state_dict()[key]), key


def test_class_names_are_unique_across_the_registry() -> None:
    """config.json records class names only, so one name must mean one class."""
    names = [name for e in ENTRIES for name in e.module_class_names] + [s.name for s in SHARED_MODULES]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    assert all(re.fullmatch(r"[A-Za-z_]\w*", n) for n in names)


def _zoo_module_classes() -> list[type]:
    """Every ZooModule subclass defined in the zoo that LightningCLI can see after importing the entries."""
    _import_all_entries()
    found: list[type] = []
    stack = [zoo.ZooModule]
    while stack:
        for sub in stack.pop().__subclasses__():
            if sub not in found:
                found.append(sub)
                stack.append(sub)
    return sorted((c for c in found if c.__module__.startswith("zoo.")), key=lambda c: f"{c.__module__}.{c.__qualname__}")


def _registered(cls: type) -> bool:
    try:
        module_identity(cls)
    except zoo.UnknownEntryError:
        return False
    return True


ZOO_MODULES = _zoo_module_classes()
_VALUES = {int: "3", float: "0.1", str: "mlp", bool: "false"}


def test_the_cli_offers_shared_modules_and_refuses_templates() -> None:
    by_name = {c.__name__: c for c in ZOO_MODULES}
    assert _registered(by_name["ContinualClassifier"])  # the coin and adab2n baseline publishes
    assert any(not _registered(c) for c in ZOO_MODULES)  # the abstract templates are refused below


@pytest.mark.parametrize("cls", ZOO_MODULES, ids=lambda c: c.__qualname__)
def test_every_zoo_module_publishes_or_is_refused(cls: type, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = f"{cls.__module__}.{cls.__qualname__}"
    if _registered(cls):
        torch.manual_seed(0)
        model = cls().eval()
        model.save_pretrained(tmp_path / "hub")
        config = json.loads((tmp_path / "hub" / "config.json").read_text())
        assert config["zoo_class"] == cls.__name__ and "." not in json.dumps(config["zoo_class"])
        loaded = zoo.load(tmp_path / "hub")
        assert type(loaded) is cls
        mine, theirs = model.hub_state_dict(), loaded.hub_state_dict()
        assert mine.keys() == theirs.keys()
        torch.testing.assert_close(mine, theirs, rtol=0, atol=0, equal_nan=True)  # bit for bit; unset NaN buffers too
        return
    required = [  # values for init arguments without defaults, so parsing reaches the check
        f"--model.init_args.{p.name}={_VALUES[p.annotation if isinstance(p.annotation, type) else eval(p.annotation)]}"  # noqa: S307
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.name != "self" and p.default is inspect.Parameter.empty and p.kind is p.POSITIONAL_OR_KEYWORD
    ]
    argv = ["fit", f"--model={path}", *required, "--data=SyntheticBinaryDataModule", f"--trainer.default_root_dir={tmp_path}"]
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a registered zoo module" in err[0] and cls.__name__ in err[0], err
    assert not (tmp_path / "checkpoints").exists()


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
