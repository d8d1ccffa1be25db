"""``AdaB2NCallback``: trains the AdaB²N layers of any LightningModule (arXiv:2310.08855).

The AdaB²N layer (:class:`zoo.adab2n.AdaB2N`, convert a model with
:func:`zoo.adab2n.convert_bn_to_adab2n`) needs three things from the training loop, which the
official ``er_ace_ada.py`` writes into its ``observe``; this callback does them for any module:

1. **counts before every training forward** (``set_counts``): from the ``(x, y)`` batch at
   ``on_train_batch_start``; a module that runs its own forwards on other samples (replay)
   announces each forward's labels through the hook ``on_train_forward_labels(trainer,
   pl_module, labels)``, as :class:`zoo.templates.continual.ContinualClassifier` does, and the
   announced labels replace the batch's;
2. **the regularizer** ``lambd * sum_layers (MSE(mu, r_mu) + MSE(sigma^2, r_sigma^2))`` on the
   loss, from task ``max(1, ada_t0)`` on (the official code adds it only in its ``task > 0``
   branch, and only when ``task >= ada_t0``);
3. **the task counter** (``end_task``) at every task end: from the continual DataModule's
   schedule (:func:`zoo.datamodules.continual.task_schedule`), or every ``epochs_per_task`` epochs,
   or by calling :meth:`AdaB2NCallback.end_task` yourself.

How the regularizer reaches the loss: Lightning gives callbacks no hook that can change the loss
(``on_before_backward`` sees it after the fact), so at ``setup`` the callback wraps the module's
``training_step`` on the instance (``teardown`` removes the wrapper): the wrapper adds
``lambd * penalty`` to the returned loss (a tensor, or the ``"loss"`` of a dict). The penalty
is collected by forward hooks on the AdaB²N layers, so a step with several training forwards
(stream and replay forwarded separately) is regularized for each. Precision plugins, gradient
accumulation and DDP see one ordinary loss. With manual optimization, pass
``add_to_loss=False`` and add :meth:`AdaB2NCallback.penalty` to your loss yourself.

State: the layers' state (running statistics, ``last_eta``, ``cur_tasks``, ``task_weight``) lives
in the model's ``state_dict``; the callback saves the number of task ends it made and, on
resume, brings the layers' counters up to it and to the schedule. Under DDP every process
normalizes with its own batch (as BatchNorm2d without SyncBatchNorm), and DDP's buffer
broadcast keeps the running statistics identical across processes.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.utils.hooks import RemovableHandle
from typing_extensions import override

from zoo.adab2n import AdaB2N, adab2n_layers
from zoo.datamodules.continual import task_schedule

__all__ = ["AdaB2NCallback"]

_WRAPPED = "_adab2n_wrapped_training_step"


class AdaB2NCallback(Callback):
    """Feeds task counts to every AdaB²N layer, adds its regularizer, advances its task counter.

    Args:
        lambd: weight of the statistics regularizer (official ``--lambd``; the paper's grid is
            {0.01, 0.1, 1, 10} on CIFAR, {1e-5 .. 1e-2} on Mini-ImageNet; 0.1 was best in the
            CPU check on Split Digits in ``cards/adab2n``).
        ada_t0: first task whose loss gets the regularizer (official ``--ada_t0``, grid {0, 1}).
        classes_per_task: task of label ``y`` is ``y // classes_per_task``; ``None`` reads it from
            the continual DataModule (:class:`zoo.datamodules.continual.SplitTasks`).
        epochs_per_task: without a continual DataModule, end a task every this many epochs
            (``None``: only the schedule or explicit :meth:`end_task` calls end tasks).
        add_to_loss: wrap ``training_step`` to add the regularizer (needs automatic optimization).

    >>> callback = AdaB2NCallback(lambd=0.1, classes_per_task=2, epochs_per_task=1)
    >>> callback.regularizes()  # no layers seen yet: task 0, no regularizer
    False
    """

    def __init__(
        self,
        lambd: float = 0.1,
        ada_t0: int = 0,
        classes_per_task: int | None = None,
        epochs_per_task: int | None = None,
        add_to_loss: bool = True,
    ) -> None:
        if lambd < 0:
            raise ValueError(f"lambd must be >= 0, got {lambd}")
        if ada_t0 < 0:
            raise ValueError(f"ada_t0 must be >= 0, got {ada_t0}")
        if classes_per_task is not None and classes_per_task < 1:
            raise ValueError(f"classes_per_task must be positive, got {classes_per_task}")
        if epochs_per_task is not None and epochs_per_task < 1:
            raise ValueError(f"epochs_per_task must be positive, got {epochs_per_task}")
        self.lambd, self.ada_t0 = float(lambd), int(ada_t0)
        self.classes_per_task, self.epochs_per_task = classes_per_task, epochs_per_task
        self.add_to_loss = add_to_loss
        self.tasks_ended = 0
        self._layers: list[AdaB2N] = []
        self._terms: list[Tensor] = []
        self._hooks: list[RemovableHandle] = []
        self._cpt = 1

    # ------------------------------------------------------------------------- set up
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._layers = adab2n_layers(pl_module)
        if not self._layers:
            raise RuntimeError(
                f"AdaB2NCallback: {type(pl_module).__name__} has no AdaB2N layer; convert its BatchNorm2d first: "
                "zoo.adab2n.convert_bn_to_adab2n(model, num_tasks=..., kappa=...) before building the optimizer"
            )
        schedule = task_schedule(trainer)
        cpt = self.classes_per_task or getattr(schedule, "classes_per_task", None)
        if cpt is None:
            raise RuntimeError(
                "AdaB2NCallback: pass classes_per_task (task of label y = y // classes_per_task); "
                "it is read from the DataModule only for continual ones such as zoo.datamodules.continual.SplitTasks"
            )
        self._cpt = int(cpt)
        if stage != "fit":
            return
        if self.add_to_loss:
            if not pl_module.automatic_optimization:
                raise RuntimeError(
                    "AdaB2NCallback adds its regularizer to the loss training_step returns, which needs automatic "
                    "optimization; with manual optimization use AdaB2NCallback(add_to_loss=False) and add "
                    "callback.penalty(self) to your loss before manual_backward"
                )
            self._wrap(pl_module)
        self._hooks = [layer.register_forward_hook(self._collect) for layer in self._layers]

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        if _WRAPPED in pl_module.__dict__:
            del pl_module.__dict__[_WRAPPED]
            pl_module.__dict__.pop("training_step", None)
        self._reset()

    def _wrap(self, pl_module: LightningModule) -> None:
        if _WRAPPED in pl_module.__dict__:
            return
        original = pl_module.training_step

        @functools.wraps(original)
        def training_step(*args: Any, **kwargs: Any) -> Any:
            self._terms.clear()
            return self._add_penalty(pl_module, original(*args, **kwargs))

        pl_module.__dict__[_WRAPPED] = original
        pl_module.__dict__["training_step"] = training_step

    def _collect(self, layer: AdaB2N, args: Any, output: Tensor) -> None:
        if layer.training and layer.regularizer is not None and torch.is_grad_enabled():
            self._terms.append(layer.regularizer)

    # ---------------------------------------------------------------------- the penalty
    @property
    def current_task(self) -> int:
        """The task the layers are at (their ``cur_tasks`` counter)."""
        return int(self._layers[0].cur_tasks) if self._layers else 0

    def regularizes(self) -> bool:
        """Whether this step's loss gets the regularizer (official: ``task > 0 and task >= ada_t0``)."""
        task = self.current_task
        return self.lambd > 0 and task > 0 and task >= self.ada_t0

    def penalty(self, pl_module: LightningModule) -> Tensor:
        """``lambd *`` the sum of the regularizers of this step's training forwards (0 when off)."""
        if not self.regularizes() or not self._terms:
            return torch.zeros((), device=pl_module.device)
        return self.lambd * torch.stack(self._terms).sum()

    def _add_penalty(self, pl_module: LightningModule, output: Any) -> Any:
        if output is None or not self.regularizes():
            return output
        penalty = self.penalty(pl_module)
        pl_module.log("train/adab2n_penalty", penalty.detach(), on_step=True, on_epoch=False)
        if isinstance(output, Tensor):
            return output + penalty
        if isinstance(output, dict) and "loss" in output:
            return {**output, "loss": output["loss"] + penalty}
        raise TypeError(f"AdaB2NCallback: training_step returned {type(output).__name__}; expected a loss tensor or a dict with 'loss'")

    # ------------------------------------------------------------------------ the counts
    def set_counts(self, labels: Tensor) -> None:
        """Announce the labels of the next training forward to every AdaB²N layer."""
        for i, layer in enumerate(self._layers):
            layer.set_counts(labels, self._cpt, validate=i == 0)

    def on_train_forward_labels(self, trainer: Trainer, pl_module: LightningModule, labels: Tensor) -> None:
        """The module is about to run a training forward on samples with these labels."""
        self.set_counts(labels)

    @override
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._terms.clear()
        labels = _batch_labels(batch)
        if labels is None:  # not an (x, y) batch: the module must announce its forwards
            self._clear()
        else:
            self.set_counts(labels)

    @override
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._reset()

    def _clear(self) -> None:
        for layer in self._layers:
            layer.clear_counts()

    def _reset(self) -> None:
        self._clear()
        self._terms.clear()
        for layer in self._layers:
            layer.regularizer = None  # let the step's graph go

    # ---------------------------------------------------------------------- task ends
    def end_task(self, pl_module: LightningModule | None = None) -> None:
        """Advance the task counter of every AdaB²N layer (official ``end_task``)."""
        layers = adab2n_layers(pl_module) if pl_module is not None else self._layers
        for layer in layers:
            layer.end_task()
        self.tasks_ended += 1

    def _tasks_done(self, trainer: Trainer, epoch: int) -> int | None:
        """Tasks finished before ``epoch`` starts, from the schedule or ``epochs_per_task``."""
        schedule = task_schedule(trainer)
        if schedule is not None:
            return min(epoch // schedule.epochs_per_task, schedule.num_tasks)
        if self.epochs_per_task is not None:
            return epoch // self.epochs_per_task
        return None

    @override
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # catch up after a resume from a checkpoint written before this callback's task end
        done = self._tasks_done(trainer, trainer.current_epoch)
        target = max(self.tasks_ended, done if done is not None else 0)
        for layer in self._layers:
            if int(layer.cur_tasks) < target:
                layer.cur_tasks.fill_(target)
        self.tasks_ended = target

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        done = self._tasks_done(trainer, trainer.current_epoch + 1)
        if done is not None and done > self.tasks_ended:
            self.end_task()
            rank_zero_info(f"AdaB2N: task {done - 1} ended; layers now at task {self.current_task}")

    # -------------------------------------------------------------------------- state
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"tasks_ended": self.tasks_ended}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.tasks_ended = int(state_dict["tasks_ended"])


def _batch_labels(batch: Any) -> Tensor | None:
    """``y`` of an ``(x, y)`` batch whose ``y`` holds one integer label per sample, else None."""
    if not isinstance(batch, (list, tuple)) or len(batch) < 2:
        return None
    x, y = batch[0], batch[1]
    if not isinstance(x, Tensor) or not isinstance(y, Tensor) or y.dim() != 1 or y.is_floating_point() or len(y) != len(x):
        return None
    return y
