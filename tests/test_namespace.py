"""One installed top-level package, ``zoo``: a user's own ``callbacks.py``, ``datamodules/`` and
``cli.py`` keep working beside it, and every callback and DataModule is importable from the
package level."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from lightning.pytorch import Callback, LightningDataModule

import zoo.callbacks
import zoo.datamodules
from zoo.registry import list_entries

ROOT = Path(__file__).resolve().parents[1]

USER_PROJECT_SCRIPT = """
import importlib.util, sys
import callbacks, datamodules, cli                       # the user's own modules
assert callbacks.MINE == "callbacks" and datamodules.MINE == "datamodules" and cli.MINE == "cli"
import zoo
from zoo.callbacks import DynamicEMA, NeuralCollapseMonitor
from zoo.datamodules import DigitsDataModule
import zoo.callbacks.dynamic_ema, zoo.datamodules.digits   # submodule paths too
assert DynamicEMA is zoo.callbacks.dynamic_ema.DynamicEMA
zoo.get_entry("coin").load_target()
assert callbacks.MINE == "callbacks"                    # still the user's, not ours
print("ok")
"""


def test_a_user_project_with_its_own_callbacks_datamodules_and_cli_imports_zoo(tmp_path: Path) -> None:
    (tmp_path / "callbacks.py").write_text('MINE = "callbacks"\n')
    (tmp_path / "datamodules").mkdir()
    (tmp_path / "datamodules" / "__init__.py").write_text('MINE = "datamodules"\n')
    (tmp_path / "cli.py").write_text('MINE = "cli"\n')
    run = subprocess.run([sys.executable, "-c", USER_PROJECT_SCRIPT], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().endswith("ok")


@pytest.mark.parametrize("name", ["callbacks", "datamodules", "cli"])
def test_no_generic_top_level_module_is_installed(tmp_path: Path, name: str) -> None:
    probe = f"import importlib.util; print(importlib.util.find_spec({name!r}))"
    run = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert run.stdout.strip() == "None", f"{name!r} is importable outside the repository: {run.stdout}"


def test_the_package_list_covers_every_subpackage() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = config["package-dir"]
    listed = set(config["packages"])
    found = set()
    for package, folder in mapping.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([package, *rel.parts]))
    assert found <= listed, f"add to pyproject's packages: {sorted(found - listed)}"


def _public_classes(package: object, base: type) -> set[str]:
    import importlib
    import pkgutil

    names = set()
    for info in pkgutil.iter_modules(package.__path__):  # type: ignore[attr-defined]
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for attr in getattr(module, "__all__", ()):
            obj = getattr(module, attr)
            if isinstance(obj, type) and issubclass(obj, base) and obj.__module__ == module.__name__:
                names.add(attr)
    return names


def test_every_callback_is_exported_at_package_level() -> None:
    missing = _public_classes(zoo.callbacks, Callback) - set(zoo.callbacks.__all__)
    assert not missing, f"add to zoo/callbacks/__init__.py: {sorted(missing)}"


def test_every_datamodule_is_exported_at_package_level() -> None:
    missing = _public_classes(zoo.datamodules, LightningDataModule) - set(zoo.datamodules.__all__)
    assert not missing, f"add to zoo/datamodules/__init__.py: {sorted(missing)}"


def test_registry_targets_use_the_zoo_namespace() -> None:
    for entry in list_entries():
        for path in (entry.target, *entry.module_paths):
            assert path.startswith("zoo."), f"{entry.name}: {path} is not under zoo."
