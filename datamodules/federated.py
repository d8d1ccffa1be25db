"""Clients from any classification DataModule: Dirichlet label partitions and label-correlated participation.

>>> import torch
>>> labels = torch.arange(100) % 5
>>> parts = dirichlet_partition(labels, num_clients=4, alpha=0.5, seed=0)
>>> sorted(torch.cat(parts).tolist()) == list(range(100))  # every index exactly once
True
>>> from zoo.datamodules import DigitsDataModule, PartitionedDataModule
>>> dm = PartitionedDataModule(DigitsDataModule(), num_clients=10, alpha=0.3, seed=0)
>>> dm.setup("fit")
>>> dm.client_data().num_clients
10
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from zoo.federated import ClientData

__all__ = ["FederatedDataModule", "PartitionedDataModule", "dirichlet_partition", "label_correlated_participation"]


def dirichlet_partition(labels: Tensor, num_clients: int, alpha: float, seed: int, min_size: int = 1) -> list[Tensor]:
    """Split example indices among clients with class shares drawn from ``Dirichlet(alpha)`` per class.

    The usual non-iid split of federated benchmarks (Hsu et al., 2019, arXiv 1909.06335): for each
    class, a ``Dirichlet(alpha * 1)`` draw over clients says which share of that class's examples each
    client gets (small ``alpha``: few classes per client; large: iid). Every index appears exactly
    once; deterministic by ``seed``. Draws are repeated (same generator) until every client holds at
    least ``min_size`` examples, which fails clearly when that cannot be.
    """
    labels = torch.as_tensor(labels).reshape(-1)
    if num_clients < 1 or alpha <= 0:
        raise ValueError(f"need num_clients >= 1 and alpha > 0, got {num_clients}, {alpha}")
    if num_clients * min_size > len(labels):
        raise ValueError(f"{len(labels)} examples cannot give {num_clients} clients {min_size} each")
    generator = torch.Generator().manual_seed(seed)
    concentration = torch.full((num_clients,), float(alpha), dtype=torch.float64)
    for _ in range(1000):
        parts: list[list[Tensor]] = [[] for _ in range(num_clients)]
        for c in labels.unique(sorted=True).tolist():
            idx = (labels == c).nonzero().reshape(-1)
            idx = idx[torch.randperm(len(idx), generator=generator)]
            shares = _dirichlet(concentration, generator)
            cuts = (shares.cumsum(0) * len(idx)).round().long().clamp(max=len(idx))
            for k, piece in enumerate(torch.tensor_split(idx, cuts[:-1].tolist())):
                parts[k].append(piece)
        out = [torch.cat(p).sort().values if p else torch.zeros(0, dtype=torch.long) for p in parts]
        if min(len(p) for p in out) >= min_size:
            return out
    raise ValueError(f"no Dirichlet({alpha}) draw in 1000 gave every one of {num_clients} clients >= {min_size} examples; raise alpha")


def _dirichlet(concentration: Tensor, generator: torch.Generator) -> Tensor:
    """A ``Dirichlet(concentration)`` draw from normalised Gamma draws (seeded by ``generator``)."""
    gammas = torch._standard_gamma(concentration.expand(1, -1).clone(), generator=generator)[0]
    return gammas / gammas.sum()


def label_correlated_participation(labels: Tensor, parts: list[Tensor], low: float = 0.05, high: float = 0.9) -> Tensor:
    """Participation probability per client rising with its mean label: ``low`` for the lowest, ``high`` for the highest.

    Models anarchic or biased participation where who shows up correlates with the data they hold
    (clients of rare classes join least), the effect AFA and FedFix-style corrections address.
    """
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"need 0 <= low <= high <= 1, got {low}, {high}")
    labels = torch.as_tensor(labels).reshape(-1).double()
    means = torch.stack([labels[p].mean() if len(p) else labels.mean() for p in parts])
    span = (means.max() - means.min()).clamp_min(1e-12)
    return low + (high - low) * (means - means.min()) / span


class FederatedDataModule(LightningDataModule):
    """The base of federated data: :meth:`client_data` for the simulator, pooled loaders for Lightning.

    Subclasses set ``self.clients`` (a :class:`~zoo.federated.ClientData`) and ``self.test_set`` in
    ``setup``. ``train_dataloader`` yields one batch per call of the module's ``training_step``
    (the pooled clients' data, unused by the server), so Lightning's loop drives the server steps.
    """

    clients: ClientData
    test_set: Any

    def client_data(self) -> ClientData:
        if getattr(self, "clients", None) is None:
            raise RuntimeError(f"{type(self).__name__}.client_data() before setup(): call setup('fit') first")
        return self.clients

    def train_dataloader(self) -> DataLoader:
        x, y = self.client_data().x[:, :1].flatten(0, 1), self.client_data().y[:, :1].flatten(0, 1)
        return DataLoader(TensorDataset(x, y), batch_size=len(x))

    def val_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=1024)


class PartitionedDataModule(FederatedDataModule):
    """Any classification DataModule's train set split among clients by :func:`dirichlet_partition`.

    Args:
        base: a DataModule whose train loader yields ``(x, y)`` (e.g. ``DigitsDataModule``); its
            test loader is the federation's test set.
        num_clients / alpha / seed: the partition (``alpha`` small: non-iid).
    """

    def __init__(self, base: LightningDataModule, num_clients: int = 10, alpha: float = 0.5, seed: int = 0) -> None:
        super().__init__()
        self.base, self.num_clients, self.alpha, self.seed = base, num_clients, alpha, seed
        self.clients = None  # type: ignore[assignment]

    def setup(self, stage: str | None = None) -> None:
        if self.clients is not None:
            return
        self.base.setup("fit")
        xs, ys = zip(*self.base.train_dataloader(), strict=True)
        x, y = torch.cat(xs), torch.cat(ys)
        self.parts = dirichlet_partition(y, self.num_clients, self.alpha, self.seed)
        self.clients = ClientData.from_tensors([x[p] for p in self.parts], [y[p] for p in self.parts])
        self.base.setup("test")
        xs, ys = zip(*self.base.test_dataloader(), strict=True)
        self.test_set = TensorDataset(torch.cat(xs), torch.cat(ys))
