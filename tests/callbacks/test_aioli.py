"""AioliMixing: the LearnParams schedule draws the right groups, and ``p`` matches an independent recomputation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from zoo.aioli import TinyGPT, learn_params_plan
from zoo.callbacks import AioliMixing
from zoo.datamodules.mixture import MarkovMixtureDataModule

torch.set_num_threads(1)
K, VOCAB = 3, 8


class _Recorder(AioliMixing):
    """Records every per-group validation-loss vector the callback measures."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.measured: list[np.ndarray] = []

    def _val_losses(self, trainer: Trainer, pl_module: LightningModule) -> torch.Tensor:
        out = super()._val_losses(trainer, pl_module)
        self.measured.append(out.numpy().copy())
        return out


class _Tags(Callback):
    def __init__(self) -> None:
        self.tags: list[list[int]] = []

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self.tags.append(sorted(set((batch[0][:, 0] - VOCAB).tolist())))


def _fit(tmp_path: Path, cb: AioliMixing, steps: int = 16) -> tuple[Trainer, _Tags]:
    torch.manual_seed(0)
    dm = MarkovMixtureDataModule(vocab=VOCAB, context=8, pool_size=64, val_size=8, test_size=8, batch_size=8, steps_per_epoch=steps)
    model = TinyGPT(vocab_size=VOCAB + K, context=8, d_model=16, n_heads=2, warmup_steps=2, total_steps=steps)
    tags = _Tags()
    trainer = Trainer(
        max_epochs=1,
        callbacks=[cb, tags],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
        accelerator="cpu",
    )
    trainer.fit(model, dm)
    return trainer, tags


def test_learn_params_steps_train_on_the_planned_group(tmp_path: Path) -> None:
    cb = AioliMixing(update_steps=8, lp_rounds=1, lp_steps=2, one_hot_factor=1.0, eta=1.0, ema=None, seed=3)
    _, tags = _fit(tmp_path, cb)
    for r in range(2):
        plan = learn_params_plan(K, 1, 3, r)
        for pos in range(6):  # k * lp_rounds * lp_steps = 6 one-hot steps, then 2 steps on p
            assert tags.tags[8 * r + pos] == [plan[pos // 2]], (r, pos)
    assert len(cb.history) == 2 and cb.history[0][0] == 6.0


def test_proportions_match_an_independent_recomputation(tmp_path: Path) -> None:
    f, eta = 0.625, 2.0
    cb = _Recorder(update_steps=8, lp_rounds=1, lp_steps=2, one_hot_factor=f, eta=eta, ema=None, seed=1)
    _fit(tmp_path, cb)
    assert len(cb.measured) == 2 * (K + 1)
    W = np.full((K, K), (1 - f) / (K - 1))
    np.fill_diagonal(W, f)
    p = np.full(K, 1 / K)
    for r in range(2):
        losses = cb.measured[r * (K + 1) : (r + 1) * (K + 1)]
        A_hat = np.zeros((K, K))
        for m, j in enumerate(learn_params_plan(K, 1, 1, r)):
            A_hat[:, j] = losses[m] - losses[m + 1]
        A = np.linalg.solve(W, A_hat.T).T
        A = A - min(A.min(), 0)
        A = A / A.sum()
        p = p * np.exp(eta * A.sum(0))
        p = p / p.sum()
        np.testing.assert_allclose(cb.history[r][1:], p, rtol=1e-9)
    np.testing.assert_allclose(cb.p.numpy(), p, rtol=1e-9)


def test_bad_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=">= 1"):
        AioliMixing(lp_steps=0)
    with pytest.raises(ValueError, match="must exceed"):
        _fit(tmp_path, AioliMixing(update_steps=6, lp_rounds=1, lp_steps=2))
