"""SavePretrained: a ZooModule trained with it loads back from the folder; anything else is refused at setup."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.demos.boring_classes import BoringModel
from torch.utils.data import DataLoader, TensorDataset

import zoo
from zoo.callbacks import SavePretrained
from zoo.sinkgd import SinkGDClassifier


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _trainer(tmp_path: Path, callback: SavePretrained) -> Trainer:
    return Trainer(
        max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, callbacks=[callback],
    )  # fmt: skip


def test_writes_the_trained_module_at_fit_end(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = SinkGDClassifier(input_dim=6, hidden_dims=[8], num_classes=3, optimizer="adam", lr=0.1)
    data = DataLoader(TensorDataset(torch.randn(8, 6), torch.arange(8) % 3), batch_size=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _trainer(tmp_path, SavePretrained(str(tmp_path / "out"))).fit(model, data)
    loaded = zoo.load(tmp_path / "out")
    assert isinstance(loaded, SinkGDClassifier) and loaded.hparams["hidden_dims"] == [8]
    for key, value in model.state_dict().items():  # the weights after training, not before
        assert torch.equal(loaded.state_dict()[key], value), key
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_plain_lightning_module_is_refused_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="needs a zoo.ZooModule.*ModelCheckpoint"):
        _trainer(tmp_path, SavePretrained(str(tmp_path / "out"))).fit(BoringModel())
    assert not (tmp_path / "out").exists()
