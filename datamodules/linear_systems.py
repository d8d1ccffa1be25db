"""Sequences of sparse linear systems ``A_t x = b_t`` for ``zoo.learning_to_relax``, drawn from a seed.

The family of Khodak et al. (arXiv 2310.02246), Section 5 and the official ``scripts/learning.m``:
``A_t = A + c_t I`` with ``A`` the 2-D 5-point Laplacian on a ``side x side`` interior grid
(MATLAB ``delsq(numgrid('S', side + 2))``, column-wise natural ordering, ``n = side**2``), the offset
``c_t = -0.15 + 0.6 * Beta(0.5, 1.5)`` ("high variance") or ``Beta(2, 6)`` ("low variance"), and
``b_t`` a standard Gaussian radially truncated to ``||b|| <= sqrt(n)`` (rejection sampling, as
``utils/truncated_normal.m``). The offset ``c_t`` is each system's context.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from zoo.learning_to_relax import LinearSystem

__all__ = ["LinearSystemsDataModule", "laplacian_2d", "truncated_normal", "OFFSETS"]

#: Beta parameters of the diagonal offset c = -0.15 + 0.6 * Beta(a, b) (official scripts/learning.m)
OFFSETS: dict[str, tuple[float, float]] = {"high": (0.5, 1.5), "low": (2.0, 6.0)}


def laplacian_2d(side: int) -> sp.csr_matrix:
    """The 5-point Laplacian on a ``side x side`` interior grid (4 on the diagonal, -1 to each grid neighbour)."""
    if side < 1:
        raise ValueError(f"side must be >= 1, got {side}")
    line = sp.diags([-np.ones(side - 1), 2 * np.ones(side), -np.ones(side - 1)], [-1, 0, 1])
    eye = sp.identity(side)
    return sp.csr_matrix(sp.kron(eye, line) + sp.kron(line, eye))


def truncated_normal(n: int, rng: np.random.Generator) -> np.ndarray:
    """A standard Gaussian in R^n conditioned on ``||b|| <= sqrt(n)`` (rejection, as the official code)."""
    while True:
        sample = rng.standard_normal(n)
        if np.linalg.norm(sample) <= np.sqrt(n):
            return sample


class LinearSystemsDataModule(LightningDataModule):
    """A train sequence of ``systems`` instances and a test sequence of ``test_systems``, in chunks of ``chunk``.

    Requests are :class:`zoo.learning_to_relax.LinearSystem` objects (collated as lists). The same
    seed gives the same sequence; the test sequence uses its own stream of the seed.
    """

    def __init__(self, side: int = 10, offsets: str = "high", systems: int = 1000, test_systems: int = 200, chunk: int = 250, seed: int = 0) -> None:
        super().__init__()
        if offsets not in OFFSETS:
            raise ValueError(f"offsets must be one of {sorted(OFFSETS)}, got {offsets!r}")
        if systems < 1 or test_systems < 1 or chunk < 1:
            raise ValueError("systems, test_systems and chunk must be >= 1")
        self.side, self.offsets, self.systems, self.test_systems, self.chunk, self.seed = side, offsets, systems, test_systems, chunk, seed
        self._cache: dict[str, list[LinearSystem]] = {}

    def sequence(self, split: str) -> list[LinearSystem]:
        """The seeded sequence of one split (``"train"`` or ``"test"``), built once."""
        if split not in self._cache:
            count, stream = (self.systems, 0) if split == "train" else (self.test_systems, 1)
            rng = np.random.default_rng([self.seed, stream])
            base = laplacian_2d(self.side)
            n = base.shape[0]
            a, b = OFFSETS[self.offsets]
            out = []
            for t in range(count):
                c = -0.15 + 0.6 * float(rng.beta(a, b))
                matrix = sp.csr_matrix(base + c * sp.identity(n))
                matrix.sort_indices()
                out.append(LinearSystem(matrix, truncated_normal(n, rng), c, key=(self.seed, stream, t)))
            self._cache[split] = out
        return self._cache[split]

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.sequence("train"), batch_size=self.chunk, collate_fn=list)  # type: ignore[arg-type]

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.sequence("test"), batch_size=self.chunk, collate_fn=list)  # type: ignore[arg-type]
