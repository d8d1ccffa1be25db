"""Where the running zoo comes from: its installed version and, from a git checkout, the commit.

``config.json``'s provenance (:func:`zoo.hub.provenance`) and a claim result's environment
(:func:`zoo.claim_stats.environment`) both record these, so they are read one way.
"""

from __future__ import annotations

import functools
import importlib.metadata
import re
import subprocess
from pathlib import Path

__all__ = ["git", "git_commit", "zoo_version"]

#: the repository root when the zoo runs from a checkout (editable install)
_ROOT = Path(__file__).resolve().parent.parent


def zoo_version() -> str | None:
    """The installed ``balance-zoo`` version; None when it runs uninstalled."""
    try:
        return importlib.metadata.version("balance-zoo")
    except importlib.metadata.PackageNotFoundError:
        return None


def git(*args: str) -> str | None:
    """``git args`` in the zoo's checkout; None outside one (a wheel install), without git, or on failure."""
    if not (_ROOT / ".git").exists():
        return None
    try:
        done = subprocess.run(["git", *args], cwd=_ROOT, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the checkout this zoo runs from (validated as a hash), or None."""
    commit = git("rev-parse", "HEAD")
    return commit if commit and re.fullmatch(r"[0-9a-f]{40,64}", commit) else None
