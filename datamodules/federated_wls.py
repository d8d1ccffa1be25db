"""Synthetic federated weighted least squares: K clients with Gaussian regressors and per-row weights.

>>> from zoo.datamodules import FederatedWLSDataModule
>>> dm = FederatedWLSDataModule(num_clients=5, dim=3, rows=4)
>>> dm.setup("fit")
>>> tuple(dm.client_data().x.shape), dm.optimum().shape
((5, 4, 3), torch.Size([3]))
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from zoo.datamodules.federated import FederatedDataModule
from zoo.federated import ClientData

__all__ = ["FederatedWLSDataModule"]


class FederatedWLSDataModule(FederatedDataModule):
    """``K`` clients, ``X_k ~ N(0, 1)`` of shape ``(rows, dim)``, ``W_k = diag(U[low, high])``, ``y = X w_true + noise * eps``.

    Clients hold whitened rows ``sqrt(W_k) X_k`` and ``sqrt(W_k) y_k``, so ``X~^T X~ = X^T W X`` and the
    plain (half) squared error of a client's rows is its weighted loss. :meth:`optimum` is the pooled
    WLS solution ``w*`` (the target the federation converges to), not ``w_true``. The test set is the
    pooled whitened rows (its loss is the global WLS objective). Float64 throughout; seeded.
    """

    def __init__(
        self,
        num_clients: int = 50,
        dim: int = 10,
        rows: int = 20,
        noise: float = 0.1,
        weight_low: float = 0.5,
        weight_high: float = 1.5,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if num_clients < 1 or dim < 1 or rows < 1 or noise < 0 or not 0 < weight_low <= weight_high:
            raise ValueError(
                f"need num_clients, dim, rows >= 1, noise >= 0 and 0 < weight_low <= weight_high; "
                f"got {num_clients}, {dim}, {rows}, {noise}, {weight_low}, {weight_high}"
            )
        self.save_hyperparameters()
        self.clients = None  # type: ignore[assignment]
        self.weights: Tensor | None = None
        self.w_true: Tensor | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.clients is not None:
            return
        hp = self.hparams
        g = torch.Generator().manual_seed(int(hp.seed))
        f64 = torch.float64
        self.w_true = torch.randn(hp.dim, generator=g, dtype=f64)
        x = torch.randn(hp.num_clients, hp.rows, hp.dim, generator=g, dtype=f64)
        y = x @ self.w_true + hp.noise * torch.randn(hp.num_clients, hp.rows, generator=g, dtype=f64)
        self.weights = hp.weight_low + (hp.weight_high - hp.weight_low) * torch.rand(hp.num_clients, hp.rows, generator=g, dtype=f64)
        root = self.weights.sqrt()
        self.clients = ClientData(root[..., None] * x, root * y, torch.full((hp.num_clients,), hp.rows))
        self.test_set = TensorDataset(self.clients.x.flatten(0, 1), self.clients.y.flatten(0, 1))

    def optimum(self) -> Tensor:
        """The pooled WLS solution ``w* = (sum_k X_k^T W_k X_k)^-1 sum_k X_k^T W_k y_k``."""
        data = self.client_data()
        x, y = data.x.flatten(0, 1), data.y.flatten(0, 1)
        return torch.linalg.solve(x.T @ x, x.T @ y)
