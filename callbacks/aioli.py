"""``AioliMixing``: Aioli's online mixture proportions (arXiv 2411.05735) as a drop-in callback.

The maths (one-hot mixtures, un-mixing, normalisation, exponentiated gradient) is in :mod:`zoo.aioli`;
this file holds the round schedule, the per-group validation losses and the checkpointed state.

>>> from zoo.callbacks import AioliMixing
>>> cb = AioliMixing(update_steps=100, lp_rounds=1, lp_steps=2, eta=1.0)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor
from typing_extensions import override

from zoo.aioli import exponentiated_gradient, learn_params_plan, normalize_mixing_matrix, one_hot_mixtures, unmix
from zoo.datamodules.mixture import MixtureSampler

__all__ = ["AioliMixing"]


class AioliMixing(Callback):
    """Re-estimates the mixing-law matrix ``A`` every ``update_steps`` steps and sets the mixture proportions.

    Needs a DataModule with ``sampler`` (a :class:`zoo.datamodules.mixture.MixtureSampler`) and
    ``val_groups()`` (one fixed ``(x, y)`` batch per group). The extension point is
    :meth:`group_loss` (default: cross-entropy of ``forward(x)`` logits, any leading shape).
    Logs ``aioli/p_<j>`` at every step where the mixture changes; ``history`` holds ``[step, p_0, ..., p_{k-1}]`` per round.
    """

    def __init__(
        self,
        update_steps: int = 250,
        lp_rounds: int = 4,
        lp_steps: int = 4,
        eta: float = 0.2,
        ema: float | None = 0.1,
        one_hot_factor: float = 0.625,
        normalize_A: bool = True,
        prior: list[float] | None = None,
        prior_steps: int = 0,
        seed: int = 0,
    ) -> None:
        if min(update_steps, lp_rounds, lp_steps) < 1 or prior_steps < 0:
            raise ValueError("update_steps, lp_rounds and lp_steps must be >= 1 and prior_steps >= 0")
        self.update_steps, self.lp_rounds, self.lp_steps = update_steps, lp_rounds, lp_steps
        self.eta, self.ema, self.one_hot_factor, self.normalize_A = eta, ema, one_hot_factor, normalize_A
        self.prior, self.prior_steps, self.seed = prior, prior_steps, seed
        self.p: Tensor | None = None
        self.A_bar: Tensor | None = None
        self.A_hat: Tensor | None = None
        self.loss_prev: Tensor | None = None
        self.history: list[list[float]] = []
        self._sampler: MixtureSampler | None = None
        self._val: list[tuple[Tensor, Tensor]] = []
        self._W: Tensor | None = None
        self._logged: Tensor | None = None
        self._plans: dict[int, list[int]] = {}

    # ------------------------------------------------------------------ schedule
    def _where(self, step: int) -> tuple[int, int] | None:
        """``(round, position)`` of a step inside the dynamic rounds; None during the prior phase."""
        if step < self.prior_steps:
            return None
        s = step - self.prior_steps
        return s // self.update_steps, s % self.update_steps

    def mixture_at(self, step: int) -> Tensor:
        """The proportions batch ``step`` is drawn with: a one-hot mixture during LearnParams, else ``p``."""
        assert self._W is not None and self.p is not None
        where = self._where(step)
        if where is None:
            return self._prior()
        t, pos = where
        if pos < self._lp_total:
            return self._W[self._plan(t)[pos // self.lp_steps]]
        return self.p

    def _plan(self, t: int) -> list[int]:
        if t not in self._plans:
            assert self.p is not None
            self._plans = {t: learn_params_plan(len(self.p), self.lp_rounds, self.seed, t)}
        return self._plans[t]

    def _prior(self) -> Tensor:
        assert self._sampler is not None
        return self._sampler.proportions if self.prior is None else torch.as_tensor(self.prior, dtype=torch.float64)

    def group_loss(self, pl_module: LightningModule, x: Tensor, y: Tensor) -> Tensor:
        """The one extension point: a group's validation loss (default: mean cross-entropy of the logits)."""
        logits = pl_module(x)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))

    @torch.no_grad()
    def _val_losses(self, trainer: Trainer, pl_module: LightningModule) -> Tensor:
        was_training = pl_module.training
        pl_module.eval()
        losses = torch.stack([self.group_loss(pl_module, x.to(pl_module.device), y.to(pl_module.device)) for x, y in self._val])
        pl_module.train(was_training)
        return trainer.strategy.reduce(losses.double(), reduce_op="mean").cpu()  # ranks agree

    # ------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        dm = trainer.datamodule
        sampler = getattr(dm, "sampler", None)
        if not isinstance(sampler, MixtureSampler) or not callable(getattr(dm, "val_groups", None)):
            raise RuntimeError(
                "AioliMixing needs a mixture DataModule: one with `sampler` (zoo.datamodules.mixture.MixtureSampler) "
                "and `val_groups()` (one fixed (x, y) batch per group), e.g. zoo.datamodules.MarkovMixtureDataModule"
            )
        self._sampler, self._val = sampler, list(dm.val_groups())
        k = sampler.k
        if len(self._val) != k:
            raise RuntimeError(f"val_groups() returned {len(self._val)} groups, the sampler mixes {k}")
        if self.prior is not None and len(self.prior) != k:
            raise ValueError(f"prior needs {k} proportions, got {len(self.prior)}")
        self._lp_total = k * self.lp_rounds * self.lp_steps
        if self._lp_total >= self.update_steps:
            raise ValueError(f"update_steps ({self.update_steps}) must exceed k * lp_rounds * lp_steps ({self._lp_total})")
        self._W = one_hot_mixtures(k, self.one_hot_factor)
        if self.p is None:
            self.p = self._prior().double() / self._prior().sum()
        sampler.mixture_fn, sampler.rank = self.mixture_at, trainer.global_rank

    @override
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._step = trainer.global_step
        where = self._where(self._step)
        if where is not None and where[1] == 0:  # Algorithm 2, line 1: losses before LearnParams
            self.loss_prev = self._val_losses(trainer, pl_module)
            self.A_hat = torch.zeros(len(self.loss_prev), len(self.loss_prev), dtype=torch.float64)

    @override
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        assert self.p is not None
        where = self._where(self._step)
        if where is not None and where[1] < self._lp_total and (where[1] + 1) % self.lp_steps == 0:
            t, pos = where
            assert self.A_hat is not None and self.loss_prev is not None
            j = self._plan(t)[pos // self.lp_steps]
            loss = self._val_losses(trainer, pl_module)
            self.A_hat[:, j] += self.loss_prev - loss  # Algorithm 2: column j = trained (mostly) on group j
            self.loss_prev = loss
            if pos + 1 == self._lp_total:
                self._update(trainer.global_step)
        mixture = self.mixture_at(self._step)
        if self._logged is None or not torch.equal(mixture, self._logged):  # log each change: the trajectory is a step function
            self._logged = mixture
            for j, pj in enumerate(mixture.tolist()):
                pl_module.log(f"aioli/p_{j}", pj, on_step=True, on_epoch=False)

    def _update(self, step: int) -> None:
        """Steps 1 (average, un-mix), 2 (normalise) and 3 (exponentiated gradient) of a round."""
        assert self.A_hat is not None and self.p is not None and self._W is not None
        A = self.A_hat / self.lp_rounds
        if self.one_hot_factor < 1:
            A = unmix(A, self._W)
        if self.normalize_A:
            A = normalize_mixing_matrix(A)
        self.p, self.A_bar = exponentiated_gradient(A, self.p, self.eta, self.ema, self.A_bar)
        self.history.append([float(step), *self.p.tolist()])

    # ------------------------------------------------------------------ checkpoint
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"p": self.p, "A_bar": self.A_bar, "A_hat": self.A_hat, "loss_prev": self.loss_prev, "history": self.history}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.p, self.A_bar, self.A_hat = state_dict["p"], state_dict["A_bar"], state_dict["A_hat"]
        self.loss_prev, self.history = state_dict["loss_prev"], list(state_dict["history"])
