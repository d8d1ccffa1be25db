"""A stream of small MIP instances for ALNS: seeded set cover and knapsack, written as ``.lp`` files.

Each instance is generated from a seed, written with PySCIPOpt into a temporary folder and given a
reference objective ``f*`` from SCIP run directly (``reference_time`` seconds: proven optimal on the
small families, the best incumbent found on the harder one). A request is one ALNS iteration on one
instance: ``{"path", "name", "optimum", "iteration"}``, ``iterations`` requests per instance in a row,
so a training step is one destroy-repair-accept-update step.

Families (``families`` is a list, served in that order):

- ``set_cover``: ``rows x cols`` 0/1 matrix with density ``density`` (every row covered at least twice),
  integer costs in ``[1, 100]``, minimise ``c^T x`` s.t. ``A x >= 1``, ``x`` binary;
- ``knapsack``: ``cols`` items, weights in ``[10, 60]``, values weight + U[0, 20], capacity half the
  total weight, *maximise* (exercises the package's sense flip);
- ``set_cover_hard``: the set-cover generator at ``hard_rows x hard_cols``, where SCIP does not close
  the gap within a second (the bandit-vs-random comparison).

The ``balans`` package ships no instance files in its wheel (its MIPLIB test instances live in the
repository's ``tests/data``); such files (``.lp`` / ``.mps``, any format SCIP reads) are served after the
generated families when listed in ``files`` (family ``file``), each with its own SCIP reference.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

__all__ = ["FAMILIES", "MipDataModule", "knapsack_instance", "scip_optimum", "set_cover_instance"]

FAMILIES = ("set_cover", "knapsack", "set_cover_hard")


def set_cover_instance(rows: int, cols: int, density: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(A [rows, cols] 0/1, c [cols])``: Bernoulli(``density``) entries, each row covered by >= 2 columns."""
    rng = np.random.default_rng(seed)
    a = (rng.random((rows, cols)) < density).astype(np.int8)
    for i in range(rows):  # feasibility: at least two columns per row
        while a[i].sum() < 2:
            a[i, rng.integers(cols)] = 1
    return a, rng.integers(1, 101, size=cols).astype(float)


def knapsack_instance(items: int, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    """``(weights, values, capacity)``: capacity half the total weight."""
    rng = np.random.default_rng(seed)
    w = rng.integers(10, 61, size=items).astype(float)
    return w, w + rng.integers(0, 21, size=items), float(w.sum() // 2)


def _write(path: Path, family: str, data: tuple) -> None:
    from pyscipopt import Model, quicksum

    m = Model(family)
    m.hideOutput()
    if family == "knapsack":
        w, v, cap = data
        x = [m.addVar(f"x{j}", vtype="B", obj=float(v[j])) for j in range(len(w))]
        m.addCons(quicksum(float(w[j]) * x[j] for j in range(len(w))) <= cap, "capacity")
        m.setMaximize()
    else:
        a, c = data
        x = [m.addVar(f"x{j}", vtype="B", obj=float(c[j])) for j in range(len(c))]
        for i in range(a.shape[0]):
            m.addCons(quicksum(x[j] for j in np.flatnonzero(a[i])) >= 1, f"cover{i}")
        m.setMinimize()
    m.writeProblem(str(path), verbose=False)


def scip_optimum(path: str, time_limit: float, seed: int = 0) -> tuple[float, bool]:
    """SCIP on the file directly (one thread): ``(best objective, proven optimal)``."""
    from pyscipopt import Model

    m = Model()
    m.hideOutput()
    m.readProblem(path)
    m.setParam("limits/time", float(time_limit))
    m.setParam("randomization/randomseedshift", int(seed))
    m.optimize()
    return float(m.getObjVal()), m.getStatus() == "optimal"


class MipDataModule(LightningDataModule):
    """Seeded MIP instances as a request stream of ALNS iterations; train and test are the same instances."""

    def __init__(
        self,
        families: list[str] | None = None,
        instances: int = 1,
        iterations: int = 10,
        rows: int = 40,
        cols: int = 80,
        density: float = 0.1,
        items: int = 30,
        hard_rows: int = 800,
        hard_cols: int = 4000,
        hard_density: float = 0.01,
        reference_time: float = 3.0,
        seed: int = 0,
        root: str | None = None,
        files: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        families = list(families if families is not None else ["set_cover", "knapsack"])
        for f in families:
            if f not in FAMILIES:
                raise ValueError(f"unknown MIP family {f!r}; choose from {', '.join(FAMILIES)}")
        missing = [f for f in files or [] if not Path(f).is_file()]
        if missing:
            raise FileNotFoundError(f"MIP instance files not found: {missing}; pass paths SCIP can read (.lp, .mps)")
        if not families and not files:
            raise ValueError("no instances: give at least one family or one file")
        if iterations < 1 or instances < 1:
            raise ValueError(f"iterations and instances must be >= 1, got {iterations} and {instances}")
        self.families = families
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.requests: list[dict[str, Any]] = []

    def _generate(self, family: str, k: int, seed: int) -> tuple:
        h = self.hparams
        if family == "knapsack":
            return knapsack_instance(h["items"], seed)
        if family == "set_cover_hard":
            return set_cover_instance(h.hard_rows, h.hard_cols, h.hard_density, seed)
        return set_cover_instance(h.rows, h.cols, h.density, seed)

    def setup(self, stage: str | None = None) -> None:
        if self.requests:
            return
        h = self.hparams
        if h.root is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="zoo-mip-")
            root = Path(self._tmp.name)
        else:
            root = Path(h.root)
            root.mkdir(parents=True, exist_ok=True)
        for fi, family in enumerate(self.families):
            for k in range(h.instances):
                seed = h.seed * 1009 + fi * 101 + k
                path = root / f"{family}_{h.seed}_{k}.lp"
                _write(path, family, self._generate(family, k, seed))
                self._add(str(path), f"{family}_{k}", family)
        for k, path in enumerate(h.files or []):
            self._add(str(path), f"file_{k}", "file")

    def _add(self, path: str, name: str, family: str) -> None:
        optimum, proven = scip_optimum(path, self.hparams.reference_time)
        self.requests += [
            {"path": path, "name": name, "family": family, "optimum": optimum, "proven": proven, "iteration": t} for t in range(self.hparams.iterations)
        ]

    def teardown(self, stage: str | None = None) -> None:
        del stage  # files stay until the datamodule is collected: a test after a fit reuses them

    def _loader(self) -> DataLoader:
        return DataLoader(self.requests, batch_size=1, shuffle=False, collate_fn=list)

    def train_dataloader(self) -> DataLoader:
        return self._loader()

    def test_dataloader(self) -> DataLoader:
        return self._loader()
