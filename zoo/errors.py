"""The zoo's error types: each one is a user mistake the CLI reports in one line with exit code 2."""

from __future__ import annotations

__all__ = ["ZooError", "UnknownEntryError", "ZooLoadError", "UnsafeCheckpointError", "WrongClassError"]


class ZooError(Exception):
    """Base class for errors caused by bad input (names, paths, files), not by bugs."""


class UnknownEntryError(ZooError, KeyError):
    """An entry name that the registry does not hold."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ZooLoadError(ZooError):
    """A hub folder or checkpoint that cannot be read: missing, truncated, foreign or inconsistent."""


class UnsafeCheckpointError(ZooLoadError):
    """A folder that holds only pickled weights, which the zoo refuses to unpickle unless asked to."""


class WrongClassError(ZooLoadError):
    """Weights saved by one zoo class loaded into another."""
