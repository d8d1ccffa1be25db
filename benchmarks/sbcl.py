"""SBCL's clustering cost per epoch as a fraction of the training epoch it serves (target: < 10 %).

The peer is the SBCL training epoch itself, measured in the same run: ``SubclassClustering``
(embed the training set, k-means per class, class temperatures) against the epoch's training
steps. Two settings: the claim's (long-tailed digits, MLP 64-128-64, batch 256) and one of
CIFAR-100-LT's size (10,847 samples in 100 classes with the ratio-100 profile, 3072-d random
inputs, an MLP 3072-512-512 encoder, projection 128, batch 512): the same number of samples,
classes and subclasses the paper's clustering faces, with an encoder far cheaper than ResNet-32,
so its fraction is an upper bound for the real run. Printed per clustering epoch and amortised over
``every_n_epochs`` (the official schedule re-clusters every 10 epochs). Medians over the
clustering epochs; process CPU time beside wall time.

    python -m benchmarks.sbcl [--epochs 6] [--threads 1] [--setting digits|cifar100lt|both]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer, seed_everything
from torch.utils.data import DataLoader, TensorDataset

from benchmarks._common import bare_trainer, quiet_lightning
from zoo.callbacks import SubclassClustering
from zoo.datamodules import ContrastiveDigitsDataModule, longtail_counts
from zoo.sbcl import SBCLModule


class _EpochTimer(Callback):
    """Wall and CPU seconds of each training epoch (placed first: it starts before the clustering)."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start = (time.perf_counter(), time.process_time())

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.wall.append(time.perf_counter() - self._start[0])
        self.cpu.append(time.process_time() - self._start[1])


class _TimedClustering(SubclassClustering):
    """SubclassClustering that also records its wall and CPU seconds per clustering."""

    def __init__(self, **kwargs: int) -> None:
        super().__init__(**kwargs)
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def recluster(self, trainer: Trainer, pl_module: LightningModule) -> None:
        start = (time.perf_counter(), time.process_time())
        super().recluster(trainer, pl_module)
        self.wall.append(time.perf_counter() - start[0])
        self.cpu.append(time.process_time() - start[1])


class _SyntheticLT(LightningDataModule):
    """CIFAR-100-LT's size (10,847 samples, ratio 100 over 100 classes), random 3072-d inputs, two noisy views."""

    def __init__(self, batch_size: int = 512) -> None:
        super().__init__()
        counts = longtail_counts(500, 100, 100.0)
        g = torch.Generator().manual_seed(0)
        y = torch.repeat_interleave(torch.arange(100), torch.tensor(counts))
        centres = torch.randn(100, 3072, generator=g)
        self.x, self.y, self.batch_size = centres[y] + torch.randn(len(y), 3072, generator=g), y, batch_size

    def train_class_counts(self) -> list[int]:
        return torch.bincount(self.y).tolist()

    def _views(self, batch: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
        x, y, i = (torch.stack(t) for t in zip(*batch))
        return x + 0.1 * torch.randn_like(x), x + 0.1 * torch.randn_like(x), y, i

    def train_dataloader(self) -> DataLoader:
        data = TensorDataset(self.x, self.y, torch.arange(len(self.y)))
        return DataLoader(data, self.batch_size, shuffle=True, collate_fn=self._views)

    def eval_train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.x, self.y), 1024)


def measure(setting: str, epochs: int) -> dict[str, float]:
    """Train SBCL with clustering at every epoch after a 1-epoch warm-up; fractions of the training-only epoch."""
    seed_everything(0, verbose=False)
    if setting == "digits":
        model, data = SBCLModule(many_shot=50, few_shot=12), ContrastiveDigitsDataModule(batch_size=256)
    else:
        model = SBCLModule(num_classes=100, input_dim=3072, hidden_dims=[512, 512], proj_dims=[512, 128])
        data = _SyntheticLT()
    timer, clustering = _EpochTimer(), _TimedClustering(every_n_epochs=1, warmup_epochs=1)
    trainer = bare_trainer(max_epochs=epochs, callbacks=[timer, clustering], limit_val_batches=0)
    trainer.fit(model, data)
    cluster_wall, cluster_cpu = statistics.median(clustering.wall), statistics.median(clustering.cpu)
    train_wall = statistics.median(w - c for w, c in zip(timer.wall[1:], clustering.wall))  # epochs 1.. cluster
    train_cpu = statistics.median(w - c for w, c in zip(timer.cpu[1:], clustering.cpu))
    return {"cluster_wall": cluster_wall, "cluster_cpu": cluster_cpu, "epoch_wall": train_wall, "epoch_cpu": train_cpu}


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sbcl", description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--every", type=int, default=10, help="the schedule's every_n_epochs, for the amortised fraction")
    parser.add_argument("--setting", choices=("digits", "cifar100lt", "both"), default="both")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    quiet_lightning()
    worst = 0.0
    for setting in ("digits", "cifar100lt") if args.setting == "both" else (args.setting,):
        r = measure(setting, args.epochs)
        per_wall, per_cpu = r["cluster_wall"] / r["epoch_wall"], r["cluster_cpu"] / r["epoch_cpu"]
        amortised = per_cpu / args.every
        worst = max(worst, amortised)
        print(
            f"{setting}: clustering {r['cluster_wall'] * 1e3:.0f} ms wall / {r['cluster_cpu'] * 1e3:.0f} ms CPU, "
            f"training epoch {r['epoch_wall'] * 1e3:.0f} ms wall / {r['epoch_cpu'] * 1e3:.0f} ms CPU; "
            f"clustering / epoch = {per_wall:.1%} wall, {per_cpu:.1%} CPU at a clustering epoch; "
            f"{amortised:.1%} of each epoch amortised over every {args.every} epochs (target < 10 %)"
        )
    return worst


if __name__ == "__main__":
    main()
