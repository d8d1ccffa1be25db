"""Federated least squares: client ``i``'s optimum is ``i * 1``, so who the server listens to moves the answer.

The toy problem of Fraboni et al.'s theory of asynchronous FL: ``M`` clients, ``X ~ N(0, 1)``,
``y = X theta_i + noise * eps`` with ``theta_i = i * 1``. Weighting clients differently shifts the
optimum of ``sum_i q_i L_i`` far from the ``p``-weighted one, which makes a biased aggregation rule
visible as a distance.

>>> from zoo.datamodules import FederatedRegressionDataModule
>>> dm = FederatedRegressionDataModule(num_clients=4, num_features=3, samples_per_client=50, seed=0)
>>> dm.setup("fit")
>>> dm.client_data().num_clients, tuple(dm.client_data().x.shape)
(4, (4, 50, 3))
>>> [round(v, 1) for v in dm.optimum().tolist()]  # near the mean client optimum 1.5 * 1 (finite-sample covariances differ)
[1.8, 1.4, 1.5]
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from zoo.datamodules.federated import FederatedDataModule
from zoo.federated import ClientData
from zoo.fedfix import least_squares_optimum

__all__ = ["FederatedRegressionDataModule"]


class FederatedRegressionDataModule(FederatedDataModule):
    """``num_clients`` least-squares clients, client ``i`` with optimum ``i * 1`` and ``samples_per_client`` rows.

    The test set is every client's rows pooled (with equal counts its mean loss is the uniform
    global objective). :meth:`optimum` is ``theta*`` of the ``p``-weighted objective.
    """

    def __init__(self, num_clients: int = 10, num_features: int = 10, samples_per_client: int = 200, noise: float = 0.1, seed: int = 0) -> None:
        super().__init__()
        if num_clients < 1 or num_features < 1 or samples_per_client < num_features or noise < 0:
            raise ValueError(
                "need num_clients >= 1, num_features >= 1, samples_per_client >= num_features and noise >= 0; "
                f"got {num_clients}, {num_features}, {samples_per_client}, {noise}"
            )
        self.num_clients, self.num_features, self.samples_per_client, self.noise, self.seed = num_clients, num_features, samples_per_client, noise, seed
        self.clients = None  # type: ignore[assignment]

    def setup(self, stage: str | None = None) -> None:
        if self.clients is not None:
            return
        g = torch.Generator().manual_seed(self.seed)
        xs = [torch.randn(self.samples_per_client, self.num_features, generator=g) for _ in range(self.num_clients)]
        ys = [x @ self.client_optimum(i) + self.noise * torch.randn(len(x), generator=g) for i, x in enumerate(xs)]
        self.clients = ClientData.from_tensors(xs, ys)
        self.test_set = TensorDataset(torch.cat(xs), torch.cat(ys))

    def client_optimum(self, i: int) -> Tensor:
        """Client ``i``'s generating parameters ``i * 1``."""
        return torch.full((self.num_features,), float(i))

    def optimum(self, importance: str | Tensor = "uniform") -> Tensor:
        """``theta*`` of ``sum_i p_i L_i`` on the drawn data; ``importance`` is ``"uniform"``, ``"ratio"`` or ``p``."""
        data = self.client_data()
        p = data.importance(importance) if isinstance(importance, str) else importance
        return least_squares_optimum(data, p)
