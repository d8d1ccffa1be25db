"""The package layout: every zoo module imports, zoo/ never imports zoo.callbacks, no file passes 600 lines.

Callbacks are thin drop-ins over maths that lives in ``zoo/``; if ``zoo/`` imported them back, the
two would form a cycle and a model could not be used without its callback module. A file past
~600 lines mixes concerns and is split into a package by concern (see ``zoo/convex_relu/``).
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import zoo

ZOO_DIR = Path(zoo.__file__).resolve().parent
MAX_LINES = 600
#: The drop-in packages installed under zoo's namespace from their own folders; they may import each other.
DROP_IN = ("zoo.callbacks", "zoo.datamodules")


def zoo_modules() -> list[str]:
    """Every module and package under ``zoo/`` (not the drop-in packages, which live in other folders)."""
    names = ["zoo"]
    for info in pkgutil.walk_packages([str(ZOO_DIR)], prefix="zoo."):
        if not info.name.startswith(DROP_IN):
            names.append(info.name)
    return sorted(names)


def zoo_files() -> list[Path]:
    return sorted(p for p in ZOO_DIR.rglob("*.py") if "__pycache__" not in p.parts)


def _import_nodes(tree: ast.AST, module_level: bool) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, or only those that run when the module is imported (not inside a function)."""
    found: list[ast.Import | ast.ImportFrom] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif module_level and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        todo.extend(ast.iter_child_nodes(node))
    return found


def package_imports(source: str, module: str, package: str = "zoo.callbacks", module_level: bool = False) -> list[str]:
    """The import statements of ``source`` (the module ``module``) that reach ``package``, as text."""
    found = []
    for node in _import_nodes(ast.parse(source), module_level):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name == package or alias.name.startswith(f"{package}.")]
        else:
            base = node.module or ""
            if node.level:  # relative: resolve against the importing module's package
                parent = module.split(".")[: -node.level]  # ``module`` names a package's __init__ as "pkg.__init__"
                base = ".".join([*parent, *([base] if base else [])])
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            found += [t for t in targets if t == package or t.startswith(f"{package}.")][:1]
    return found


def callback_imports(source: str, module: str) -> list[str]:
    """The import statements of ``source`` (the module ``module``) that reach ``zoo.callbacks``, as text."""
    return package_imports(source, module)


def test_the_checker_sees_every_form_of_import() -> None:
    """The ast check itself, on hand-written sources (so a broken checker cannot pass the real test)."""
    assert callback_imports("import zoo.callbacks.alf_lb", "zoo.x") == ["zoo.callbacks.alf_lb"]
    assert callback_imports("from zoo.callbacks.alf_lb import AuxFreeLoadBalancing", "zoo.x") == ["zoo.callbacks.alf_lb"]
    assert callback_imports("from zoo import callbacks", "zoo.x") == ["zoo.callbacks"]
    assert callback_imports("def f():\n    from zoo.callbacks import X\n", "zoo.x") == ["zoo.callbacks"]
    assert callback_imports("from .callbacks import X", "zoo.x") == ["zoo.callbacks"]
    assert callback_imports("from ..callbacks.alf_lb import X", "zoo.pkg.__init__") == ["zoo.callbacks.alf_lb"]
    assert callback_imports("from . import callbacks", "zoo.__init__") == ["zoo.callbacks"]
    assert callback_imports("import zoo.hub\nfrom zoo.alf_lb import bias_update\nx = 'zoo.callbacks.alf_lb'", "zoo.x") == []


def test_the_module_level_checker_skips_function_bodies() -> None:
    source = "from zoo.datamodules.x import a\ndef f():\n    from zoo.datamodules.y import b\nclass C:\n    import zoo.datamodules.z\n"
    assert sorted(package_imports(source, "zoo.x", "zoo.datamodules", module_level=True)) == ["zoo.datamodules.x", "zoo.datamodules.z"]


@pytest.mark.parametrize("path", zoo_files(), ids=lambda p: str(p.relative_to(ZOO_DIR)))
def test_zoo_imports_no_datamodule_at_import_time(path: Path) -> None:
    """DataModules import zoo's maths (a trace's optimum, a round's type); zoo importing them back at import
    time makes a cycle that breaks ``import zoo.<entry>`` in a fresh interpreter. Import inside a function."""
    module = ".".join(("zoo", *path.relative_to(ZOO_DIR).with_suffix("").parts))
    found = package_imports(path.read_text(), module, "zoo.datamodules", module_level=True)
    assert not found, f"{path.relative_to(ZOO_DIR.parent)} imports {found} at import time: move what it needs into zoo/ or import it lazily"


@pytest.mark.parametrize("name", zoo_modules())
def test_every_zoo_module_imports(name: str) -> None:
    assert importlib.import_module(name) is not None


@pytest.mark.parametrize("path", zoo_files(), ids=lambda p: str(p.relative_to(ZOO_DIR)))
def test_zoo_never_imports_the_callbacks(path: Path) -> None:
    module = ".".join(("zoo", *path.relative_to(ZOO_DIR).with_suffix("").parts))
    found = callback_imports(path.read_text(), module)
    assert not found, (
        f"{path.relative_to(ZOO_DIR.parent)} imports {found}: zoo/ must not import zoo.callbacks. Move the maths it needs "
        f"into zoo/ (the callback imports it from there), or let the card's config attach the callback"
    )


def test_importing_all_of_zoo_loads_no_callback() -> None:
    """At run time too: importing every zoo module in a fresh interpreter leaves zoo.callbacks unloaded."""
    code = (
        "import importlib, sys\n"
        f"for name in {zoo_modules()!r}:\n"
        "    importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m == 'zoo.callbacks' or m.startswith('zoo.callbacks.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout


@pytest.mark.parametrize("path", zoo_files(), ids=lambda p: str(p.relative_to(ZOO_DIR)))
def test_no_file_passes_600_lines(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, (
        f"{path.relative_to(ZOO_DIR.parent)} has {lines} lines (> {MAX_LINES}): split it into a package by concern "
        f"(e.g. problem, solver, module), as zoo/convex_relu/ is"
    )
