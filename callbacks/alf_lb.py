"""Auxiliary-loss-free load balancing (ALF-LB) for mixture-of-experts routers, as a drop-in Callback.

Papers: *A Theoretical Framework for Auxiliary-Loss-Free Load Balancing of Sparse Mixture-of-Experts
in Large-Scale AI Models* (arXiv 2512.03915), which reads ALF-LB as a primal-dual method for the
per-batch token-to-expert assignment problem; the method itself is Wang et al. 2024, *Auxiliary-Loss-
Free Load Balancing Strategy for Mixture-of-Experts* (arXiv 2408.15664, DeepSeek), Algorithm 1.

Each router adds a per-expert bias ``b_i`` to its affinities **for top-k selection only** (the gate
weights stay the unbiased scores; no gradient reaches ``b``). After each training batch this
callback reads the tokens each expert received, ``c_i``, all-reduces them across data-parallel
ranks, and moves the bias towards balance with ``e_i = mean(c) - c_i`` (under-loaded experts go up):

- ``rule="sign"`` (Wang et al.):            ``b_i <- b_i + u_n * sign(e_i)``
- ``rule="proportional"``:                  ``b_i <- b_i + u_n * e_i / mean(c)``

In the primal-dual reading ``b`` is the dual variable of the capacity constraint
``sum_t x_{i,t} = K T / E`` and each update is one (sign-)subgradient step on it.
Step sizes ``u_n`` (``n`` = updates so far): ``schedule="constant"`` (``u``), ``"1/n"``
(``u * n0 / (n0 + n)``, the strongly-convex schedule behind the paper's logarithmic-regret bound)
and ``"1/sqrt(n)"`` (``u * sqrt(n0 / (n0 + n))``), with ``n0 = schedule_offset``.

The router protocol (:class:`BiasedRouter`), which any module can implement:

- ``expert_bias``: a float tensor of shape ``(num_experts,)``, registered as a **persistent buffer**
  (so checkpoints and ``from_pretrained`` restore it), added to the affinities only to pick the
  top-k experts;
- ``pop_expert_load() -> Tensor``: the number of tokens routed to each expert (shape
  ``(num_experts,)``) by training-mode forwards since the previous call, and reset the count.

Guesses and deviations (the paper's full text was not read; see ``cards/alf-lb``): the proportional
rule is normalised by the mean load (so ``u`` is unitless, as in the brief's feasibility check);
the ``"1/n"`` offset ``n0`` is a guess; the update runs after every training batch (with gradient
accumulation that is every micro-batch, which only makes the bias react faster); loads counted by a
forward are used for the next batch's routing only (causal). The paper's ``dual_subgradient``
variant is the proportional rule without normalisation and is not offered separately.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor, nn
from typing_extensions import override

__all__ = ["AuxFreeLoadBalancing", "BiasedRouter", "RULES", "SCHEDULES", "bias_update", "find_routers", "max_violation", "step_size"]

Rule = Literal["sign", "proportional"]
Schedule = Literal["constant", "1/n", "1/sqrt(n)"]
RULES: tuple[str, ...] = ("sign", "proportional")
SCHEDULES: tuple[str, ...] = ("constant", "1/n", "1/sqrt(n)")


@runtime_checkable
class BiasedRouter(Protocol):
    """What :class:`AuxFreeLoadBalancing` needs from a router (see the module docstring)."""

    expert_bias: Tensor

    def pop_expert_load(self) -> Tensor: ...


def is_biased_router(module: nn.Module) -> bool:
    return isinstance(getattr(module, "expert_bias", None), Tensor) and callable(getattr(module, "pop_expert_load", None))


def find_routers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every submodule (the module itself included, named ``""``) that implements the router protocol."""
    return [(name, m) for name, m in module.named_modules() if is_biased_router(m)]


def max_violation(loads: Tensor) -> Tensor:
    """MaxVio = (max_i c_i - mean c) / mean c (Wang et al.); 0 for perfect balance."""
    loads = loads.float()
    mean = loads.mean()
    return (loads.max() - mean) / mean.clamp_min(1e-12)


def step_size(update_rate: float, schedule: str, n: int, offset: float = 100.0) -> float:
    """The step size ``u_n`` of the ``n``-th update (``n`` = 0 for the first)."""
    if schedule == "constant":
        return update_rate
    if schedule == "1/n":
        return update_rate * offset / (offset + n)
    if schedule == "1/sqrt(n)":
        return update_rate * math.sqrt(offset / (offset + n))
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")


def bias_update(loads: Tensor, rate: float, rule: str = "sign") -> Tensor:
    """The bias increment from one batch's per-expert loads ``c``: ``e = mean(c) - c`` then the rule."""
    loads = loads.float()
    mean = loads.mean()
    err = mean - loads
    if rule == "sign":
        return rate * torch.sign(err)
    if rule == "proportional":
        return rate * err / mean.clamp_min(1e-12)
    raise ValueError(f"rule must be one of {RULES}, got {rule!r}")


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
                "forwards since its last call; see zoo.callbacks.alf_lb.BiasedRouter (zoo.moe.BiasedTopKRouter implements it)."
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
