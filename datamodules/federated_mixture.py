"""A federated softmax-regression task: a Gaussian mixture whose classes are split by worker group.

Class ``c`` has mean ``mu_c ~ N(0, sep^2 I_d)`` and within-class noise ``N(0, std^2 I_d)``. Worker
``i`` belongs to group ``g = i // (M / G)`` with ``G = num_classes / 2`` groups and holds only classes
``{2g, 2g + 1}`` (equal shares), so which workers show up decides which classes the server sees: the
setting in which participation correlated with data biases FedAvg (Yang et al., ICML 2022, "Anarchic
Federated Learning", arXiv 2108.09875). The test set is balanced over all classes.

>>> dm = FederatedMixtureDataModule(num_clients=20, samples_per_client=200, seed=0)
>>> dm.setup("fit")
>>> dm.client_data().num_clients, sorted(dm.client_data().client(19)[1].unique().tolist())
(20, [8, 9])
>>> worker_groups(20, 5).tolist()[:9]
[0, 0, 0, 0, 1, 1, 1, 1, 2]
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from zoo.afl import worker_groups
from zoo.datamodules.federated import FederatedDataModule
from zoo.federated import ClientData

__all__ = ["FederatedMixtureDataModule", "worker_groups"]


class FederatedMixtureDataModule(FederatedDataModule):
    """``num_clients`` workers x ``samples_per_client`` examples of a ``num_classes``-class Gaussian mixture in ``dim``.

    Args:
        num_classes: even; worker group ``g`` holds classes ``2g`` and ``2g + 1``.
        dim: input dimension ``d``.
        num_clients: ``M``, a multiple of ``num_classes / 2``.
        samples_per_client: examples per worker, split equally between its two classes.
        sep: standard deviation of the class means (smaller: harder).
        noise: within-class standard deviation.
        test_per_class: balanced test examples per class.
        seed: draws the means, the workers' data and the test set.
    """

    def __init__(
        self,
        num_classes: int = 10,
        dim: int = 20,
        num_clients: int = 20,
        samples_per_client: int = 200,
        sep: float = 0.45,
        noise: float = 0.5,
        test_per_class: int = 200,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if num_classes < 2 or num_classes % 2 or samples_per_client < 2 or sep <= 0 or noise <= 0:
            raise ValueError(
                f"need an even num_classes >= 2, samples_per_client >= 2, sep > 0, noise > 0; got {num_classes}, {samples_per_client}, {sep}, {noise}"
            )
        self.groups = worker_groups(num_clients, num_classes // 2)
        self.num_classes, self.dim, self.num_clients = num_classes, dim, num_clients
        self.samples_per_client, self.sep, self.noise = samples_per_client, sep, noise
        self.test_per_class, self.seed = test_per_class, seed
        self.clients = None  # type: ignore[assignment]

    def _draw(self, labels: Tensor, means: Tensor, generator: torch.Generator) -> Tensor:
        return means[labels] + self.noise * torch.randn(len(labels), self.dim, generator=generator)

    def setup(self, stage: str | None = None) -> None:
        if self.clients is not None:
            return
        generator = torch.Generator().manual_seed(self.seed)
        self.means = self.sep * torch.randn(self.num_classes, self.dim, generator=generator)
        xs, ys = [], []
        for g in self.groups.tolist():
            y = 2 * g + (torch.arange(self.samples_per_client) % 2)
            xs.append(self._draw(y, self.means, generator))
            ys.append(y)
        self.clients = ClientData.from_tensors(xs, ys)
        y_test = torch.arange(self.num_classes).repeat_interleave(self.test_per_class)
        self.test_set = TensorDataset(self._draw(y_test, self.means, generator), y_test)
