"""Auxiliary-loss-free load balancing (ALF-LB) for mixture-of-experts routers, as a drop-in Callback.

Papers: arXiv 2512.03915 (ALF-LB as a primal-dual method) and Wang et al. 2024, arXiv 2408.15664,
Algorithm 1. After each training batch this callback reads the tokens each router sent to each
expert, all-reduces them across data-parallel ranks, and moves every router's selection-only bias
towards balance with :func:`zoo.alf_lb.bias_update` at the step size :func:`zoo.alf_lb.step_size`.
The rules, schedules, the router protocol (:class:`zoo.alf_lb.BiasedRouter`: an ``expert_bias``
persistent buffer and ``pop_expert_load()``) and the guesses made are documented in :mod:`zoo.alf_lb`.

>>> from zoo.callbacks import AuxFreeLoadBalancing
>>> cb = AuxFreeLoadBalancing(update_rate=1e-3, rule="sign")  # Trainer(callbacks=[cb]).fit(moe_model)

The update runs after every training batch (with gradient accumulation that is every micro-batch,
which only makes the bias react faster); loads counted by a forward are used for the next batch's
routing only (causal).
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor, nn
from typing_extensions import override

from zoo.alf_lb import RULES, SCHEDULES, Rule, Schedule, bias_update, find_routers, max_violation, step_size

__all__ = ["AuxFreeLoadBalancing"]


class AuxFreeLoadBalancing(Callback):
    """Update every router's selection bias from its observed loads after each training batch.

    Args:
        update_rate: ``u``, the (initial) bias step size (Wang et al.'s best: 1e-3 for the sign rule).
        rule: ``"sign"`` or ``"proportional"`` (see the module docstring).
        schedule: ``"constant"``, ``"1/n"`` or ``"1/sqrt(n)"``.
        schedule_offset: ``n0`` in the decaying schedules.
        recenter: subtract the mean bias after each update (selection is unchanged by a common shift;
            this only stops drift).
        log_maxvio: log ``alf_lb/maxvio`` (per epoch: the mean over its batches of the routers' mean
            MaxVio) and, every ``log_every_n_steps``, ``alf_lb/maxvio_step`` and ``alf_lb/step_size``.
    """

    def __init__(
        self,
        update_rate: float = 1e-3,
        rule: Rule = "sign",
        schedule: Schedule = "constant",
        schedule_offset: float = 100.0,
        recenter: bool = False,
        log_maxvio: bool = True,
    ) -> None:
        if rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        if not update_rate > 0:
            raise ValueError(f"update_rate must be positive, got {update_rate}")
        if not schedule_offset > 0:
            raise ValueError(f"schedule_offset must be positive, got {schedule_offset}")
        self.update_rate = float(update_rate)
        self.rule = rule
        self.schedule = schedule
        self.schedule_offset = float(schedule_offset)
        self.recenter = recenter
        self.log_maxvio = log_maxvio
        self.num_updates = 0
        self._routers: list[tuple[str, nn.Module]] = []
        self._vio_sum, self._vio_count = torch.zeros(()), 0

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(rule=self.rule, schedule=self.schedule)

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._routers = find_routers(pl_module)
        if not self._routers and stage == "fit":
            raise RuntimeError(
                f"AuxFreeLoadBalancing: {type(pl_module).__qualname__} has no router to balance. It needs a submodule with "
                "an `expert_bias` tensor of shape (num_experts,) (a persistent buffer, added to the affinities for top-k "
                "selection only) and a `pop_expert_load()` method returning the tokens routed to each expert by training "
                "forwards since its last call; see zoo.alf_lb.BiasedRouter (zoo.alf_lb.BiasedTopKRouter implements it)."
            )
        for name, router in self._routers:
            if router.expert_bias.ndim != 1 or not router.expert_bias.is_floating_point():  # type: ignore[union-attr]
                raise RuntimeError(f"AuxFreeLoadBalancing: router {name or '<root>'!r} has a non-1-D or non-float expert_bias")

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for _, router in self._routers:  # forget loads counted outside training batches
            router.pop_expert_load()  # type: ignore[operator]

    @override
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        rate = step_size(self.update_rate, self.schedule, self.num_updates, self.schedule_offset)
        violations = []
        for _, router in self._routers:
            loads = router.pop_expert_load().detach().float()  # type: ignore[operator]
            if trainer.world_size > 1:  # every rank must apply the same update
                loads = trainer.strategy.reduce(loads, reduce_op="sum")
            if loads.sum() <= 0:
                continue
            bias: Tensor = router.expert_bias  # type: ignore[assignment]
            with torch.no_grad():
                bias.add_(bias_update(loads, rate, self.rule).to(bias))
                if self.recenter:
                    bias.sub_(bias.mean())
            violations.append(max_violation(loads))
        if not violations:
            return
        self.num_updates += 1
        if self.log_maxvio:
            vio = torch.stack(violations).mean().detach()
            self._vio_sum, self._vio_count = self._vio_sum + vio, self._vio_count + 1
            if trainer.global_step % max(trainer.log_every_n_steps, 1) == 0:  # Lightning's log() is the costly part
                pl_module.log("alf_lb/maxvio_step", vio, on_step=True, on_epoch=False, batch_size=1)
                pl_module.log("alf_lb/step_size", rate, on_step=True, on_epoch=False, batch_size=1)

    @override
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._vio_sum, self._vio_count = torch.zeros(()), 0

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.log_maxvio and self._vio_count:
            pl_module.log("alf_lb/maxvio", self._vio_sum / self._vio_count, on_step=False, on_epoch=True, batch_size=1)

    @override
    def state_dict(self) -> dict[str, Any]:
        # the biases themselves are router buffers and travel with the model's state_dict
        return {"num_updates": self.num_updates}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.num_updates = int(state_dict["num_updates"])
