"""SubclassClustering: its schedule, what it hands the module, its checkpoint state and its setup errors.

The drop-in, crash-and-resume and DDP cases are in tests/callbacks/test_contract.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import LightningDataModule, Trainer
from torch import Tensor
from torch.utils.data import DataLoader

from tests.conftest import TRAINER_KWARGS, ForeignClassifier, blob_data
from zoo.callbacks import SubclassClustering
from zoo.sbcl import class_temperature_scales, cluster_subclasses, subclass_counts

torch.set_num_threads(1)


class _Recorder(ForeignClassifier):
    """A foreign classifier that records every ``set_subclasses`` call and embeds with ``forward``."""

    def __init__(self, lr: float = 0.1) -> None:
        super().__init__(lr=lr)
        self.calls: list[tuple[int, Tensor, Tensor]] = []

    def set_subclasses(self, subclass_targets: Tensor, temperature_scales: Tensor) -> None:
        self.calls.append((self.trainer.current_epoch, subclass_targets, temperature_scales))


class _Blobs(LightningDataModule):
    def __init__(self) -> None:
        super().__init__()
        self.data = blob_data(n_per_class=(40, 20, 10))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=16)

    def eval_train_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=16)


def _fit(callback: SubclassClustering, model: ForeignClassifier, epochs: int, tmp_path: Path, data: object = None) -> Trainer:
    trainer = Trainer(max_epochs=epochs, callbacks=[callback], enable_checkpointing=False, default_root_dir=tmp_path, **TRAINER_KWARGS)
    trainer.fit(model, datamodule=data or _Blobs())
    return trainer


def test_schedule_is_warmup_then_every_n() -> None:
    cb = SubclassClustering(every_n_epochs=10, warmup_epochs=10)
    assert [e for e in range(45) if cb.should_cluster(e)] == [10, 20, 30, 40]
    cb = SubclassClustering(every_n_epochs=3, warmup_epochs=2)
    assert [e for e in range(10) if cb.should_cluster(e)] == [2, 5, 8]


def test_hands_the_module_what_the_maths_gives(tmp_path: Path) -> None:
    model, cb = _Recorder(lr=0.0), SubclassClustering(cluster_min_size=10, every_n_epochs=2, warmup_epochs=1)  # lr 0: a fixed model
    _fit(cb, model, 4, tmp_path)
    assert cb.clustered_epochs == [1, 3]
    assert [c[0] for c in model.calls] == [1, 2, 3]  # nothing during warm-up; every epoch after, the latest clustering
    assert cb.counts == subclass_counts([40, 20, 10], 10) == [4, 2, 1]
    model.eval()  # the model never moved (lr 0): the clustering can be redone from it
    x, y = _Blobs().data.tensors
    with torch.no_grad():
        z = torch.nn.functional.normalize(model(x), dim=1)
    assert cb.subclass_targets is not None and cb.temperature_scales is not None
    assert cb.subclass_targets.shape == (70,) and set(cb.subclass_targets[60:].tolist()) == {6}  # class 2 kept whole, offset 4 + 2
    assert set(cb.subclass_targets[:40].tolist()) <= {0, 1, 2, 3} and set(cb.subclass_targets[40:60].tolist()) <= {4, 5}
    assert torch.equal(cluster_subclasses(z, y, cb.counts), cb.subclass_targets)
    torch.testing.assert_close(class_temperature_scales(z, y, cb.counts), cb.temperature_scales)
    assert cb.temperature_scales[2] == 1.0 and torch.equal(model.calls[-1][1], cb.subclass_targets)


def test_state_round_trips() -> None:
    cb = SubclassClustering()
    cb.subclass_targets, cb.temperature_scales, cb.counts, cb.clustered_epochs = torch.arange(5), torch.ones(2), [4, 1], [10]
    other = SubclassClustering()
    other.load_state_dict(cb.state_dict())
    assert torch.equal(other.subclass_targets, cb.subclass_targets) and other.counts == [4, 1] and other.clustered_epochs == [10]


def test_setup_errors_name_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="set_subclasses"):
        _fit(SubclassClustering(), ForeignClassifier(), 1, tmp_path)

    class _NoEvalLoader(LightningDataModule):
        def train_dataloader(self) -> DataLoader:
            return DataLoader(blob_data(), batch_size=16)

    with pytest.raises(RuntimeError, match="eval_train_dataloader"):
        _fit(SubclassClustering(), _Recorder(), 1, tmp_path, _NoEvalLoader())
    with pytest.raises(ValueError, match="every_n_epochs"):
        SubclassClustering(every_n_epochs=0)
