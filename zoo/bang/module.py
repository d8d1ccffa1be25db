"""``BANGClassifier``: K members trained in one fit, tested single, averaged, over-confident and balanced."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.func import functional_call
from torchmetrics.classification import MulticlassAccuracy

from zoo.bang.maths import (
    FalseFalseTrueRatio,
    LogitTemperature,
    balance_factors,
    mixup_label_smoothing_loss,
    scale_head,
    weight_average,
    wise_ft,
)
from zoo.nn.backbones import build_backbone
from zoo.templates import ClassifierModule

__all__ = ["BANGClassifier"]

# ------------------------------------------------------------------------- the module
class BANGClassifier(ClassifierModule):
    """``K`` members trained in one fit on diverse spurious features, averaged in weight space.

    Args:
        num_classes: output classes.
        backbone: ``mlp`` (default) = linear / MLP members on the flat MultiColor vectors
            (``num_invariant + num_patches * num_colours`` features); a timm model name (or
            ``cnn``) = two image members (:func:`zoo.nn.backbones.build_backbone`).
        pretrained: load the timm backbone's pre-trained weights (downloads; off by default).
        resize_to: resize images to this side before the backbone (CLIP ViTs expect 224).
        hidden_dims: hidden widths of MLP members; ``[]`` (default) = linear softmax members.
        num_invariant / num_patches / num_colours: the MultiColor layout (must match the data).
        member_patches: the spurious patches each member sees, one list per member; None = two
            members on the two halves of the patches (A: 0-15, B: 16-31). One list
            = a single model (the no-averaging baseline). Must be None with an image ``backbone``
            (two members on the same images: the WiSE-FT endpoints).
        shared_init: start every member from member 0's initial weights (one basin; WiSE-FT's
            fine-tuned model starts from the zero-shot one). Off: independent inits.
        probe_members: members whose backbone is frozen and only the head trains (the
            zero-shot / linear-probe endpoint at full scale).
        wise_alpha: WiSE-FT mixing weight of the last member (two members); more members are
            averaged uniformly.
        balance: ``forward`` returns the temperature-balanced average (each member's head
            rescaled to the members' mean ID logit std); False = the plain WiSE-FT average.
        overconfidence: the test's over-confidence control multiplies the last member's logits
            (its head) by this before averaging.
        mixup_alpha: Mixup's Beta(alpha, alpha) in training (0 = off); every member but the
            probe members (BANG regularises the fine-tuned model only).
        label_smoothing: label-smoothing epsilon in training (0 = off); same members.
        train_temperature: one training temperature per member (None = all 1): member ``k``'s loss
            sees its logits divided by ``T_k``, so ``T_k > 1`` makes it over-confident by training
            (its raw logits must grow to fit as well), not by a post-hoc logit scale.
        optimizer: ``adam`` or ``adamw``; lr, weight_decay; ``warmup_steps`` then cosine decay
            when ``cosine`` (the WiSE-FT recipe), else a constant rate.

    Logged: ``val/acc_member{k}``, ``val/acc_avg``; and per test loader (``test/id/``,
    ``test/ood/`` with :class:`~zoo.datamodules.multicolor.MultiColorDigitsDataModule`):
    ``acc_member{k}``, ``acc_single`` (their mean), ``acc_avg`` (weight average),
    ``acc_ensemble`` (logit average), ``gain`` (avg - single), ``fft``, ``acc_overconf`` and
    ``fft_overconf`` (last member x ``overconfidence``), ``acc_balanced`` (that over-confident
    pair, temperature-balanced); ``test/temperature_{k}``. The deployed model (``forward``) gets
    :class:`zoo.templates.ClassifierModule`'s metrics too: ``val/acc``, ``val/balanced_acc``,
    ``val/worst_class_acc``, ``val/acc_class{k}`` and the same per test loader (``test/ood/acc``).
    """

    def __init__(
        self,
        num_classes: int = 10,
        backbone: str = "mlp",
        pretrained: bool = False,
        resize_to: int | None = None,
        hidden_dims: list[int] | None = None,
        num_invariant: int = 64,
        num_patches: int = 32,
        num_colours: int = 10,
        member_patches: list[list[int]] | None = None,
        shared_init: bool = False,
        probe_members: list[int] | None = None,
        wise_alpha: float = 0.5,
        balance: bool = True,
        overconfidence: float = 5.0,
        mixup_alpha: float = 0.0,
        label_smoothing: float = 0.0,
        train_temperature: list[float] | None = None,
        optimizer: str = "adam",
        lr: float = 0.05,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        cosine: bool = False,
    ) -> None:
        super().__init__(num_classes)
        flat = backbone in ("mlp", None)  # None: configs written before the shared builder
        if not flat and member_patches is not None:
            raise ValueError("member_patches selects spurious patches of flat MultiColor vectors; leave it None with an image backbone")
        patches = member_patches if member_patches is not None else self._halves(num_patches, 2 if flat else 1)
        num_members = len(patches) if flat else 2
        if num_members < 1:
            raise ValueError("member_patches needs at least one member")
        for group in patches:
            if not set(group) <= set(range(num_patches)):
                raise ValueError(f"member_patches must hold patch indices 0..{num_patches - 1}, got {group}")
        if not set(probe_members or []) <= set(range(num_members)):
            raise ValueError(f"probe_members must be member indices 0..{num_members - 1}, got {probe_members}")
        if not 0.0 <= wise_alpha <= 1.0:
            raise ValueError(f"wise_alpha must be in [0, 1], got {wise_alpha}")
        if overconfidence <= 0 or mixup_alpha < 0 or not 0.0 <= label_smoothing < 1.0:
            raise ValueError(
                f"need overconfidence > 0, mixup_alpha >= 0 and label_smoothing in [0, 1); got {overconfidence}, {mixup_alpha}, {label_smoothing}"
            )
        if train_temperature is not None and (
            len(train_temperature) != num_members or not all(math.isfinite(t) and t > 0 for t in train_temperature)
        ):
            raise ValueError(f"train_temperature needs {num_members} positive numbers (one per member), got {train_temperature}")
        if optimizer not in ("adam", "adamw"):
            raise ValueError(f"optimizer must be 'adam' or 'adamw', got {optimizer!r}")
        self.save_hyperparameters()
        self.num_members = num_members
        if shared_init:  # one basin: every member starts from member 0's weights
            first = self._build_member()
            members = [first] + [copy.deepcopy(first) for _ in range(num_members - 1)]
        else:
            members = [self._build_member() for _ in range(num_members)]
        self.members = nn.ModuleList(members)
        self.head_name = self._find_head(self.members[0])
        # which input features each member sees: invariant part + its patches (flat vectors only)
        if flat:
            masks = torch.stack([self._feature_mask(group) for group in patches])
            self.register_buffer("masks", masks, persistent=False)
            with torch.no_grad():  # unseen inputs get zero weights and, with zero inputs, zero gradients
                for member, mask in zip(self.members, masks):
                    layer = next(m for m in member.modules() if isinstance(m, nn.Linear))
                    layer.weight.mul_(mask)
        else:
            self.masks = None
        for k in probe_members or []:
            for name, param in self.members[k].named_parameters():
                param.requires_grad_(name.startswith(self.head_name + "."))
        self.register_buffer("temperature", torch.ones(num_members))
        self._temperature_step: int | None = None
        self.val_acc = nn.ModuleList([MulticlassAccuracy(num_classes, average="micro") for _ in range(num_members + 1)])
        self.val_temp = nn.ModuleList([LogitTemperature() for _ in range(num_members)])
        self.test_metrics = nn.ModuleDict()

    # ----------------------------------------------------------------------------- building
    @staticmethod
    def _halves(num_patches: int, parts: int) -> list[list[int]]:
        size = math.ceil(num_patches / parts)
        return [list(range(i * size, min((i + 1) * size, num_patches))) for i in range(parts)]

    @property
    def flat_inputs(self) -> bool:
        """Whether the members read flat MultiColor vectors (``mlp``) rather than images."""
        return self.hparams["backbone"] in ("mlp", None)

    @property
    def input_dim(self) -> int:
        return self.hparams["num_invariant"] + self.hparams["num_patches"] * self.hparams["num_colours"]

    def _feature_mask(self, patches: list[int]) -> Tensor:
        hp = self.hparams
        mask = torch.zeros(hp["num_patches"], hp["num_colours"])
        mask[sorted(set(patches))] = 1.0
        return torch.cat([torch.ones(hp["num_invariant"]), mask.flatten()])

    def _build_member(self) -> nn.Module:
        hp = self.hparams
        if self.flat_inputs:
            return build_backbone("mlp", self.num_classes, input_dim=self.input_dim, hidden_dims=hp["hidden_dims"] or [], flatten=False)
        return build_backbone(hp["backbone"], self.num_classes, pretrained=hp["pretrained"])

    @staticmethod
    def _find_head(member: nn.Module) -> str:
        """Name of the last layer (the classifier) of a member: timm's ``get_classifier`` or the last Linear."""
        head = member.get_classifier() if hasattr(member, "get_classifier") else None
        if isinstance(head, nn.Linear):
            return next(name for name, m in member.named_modules() if m is head)
        return [name for name, m in member.named_modules() if isinstance(m, nn.Linear)][-1]

    # ----------------------------------------------------------------------------- forward
    def _prepare(self, x: Tensor) -> Tensor:
        size = self.hparams["resize_to"]
        if size is not None and x.ndim == 4 and x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        return x

    def member_logits(self, x: Tensor, k: int) -> Tensor:
        """Logits of member ``k`` on the features it sees."""
        x = self._prepare(x)
        return self.members[k](x * self.masks[k] if self.masks is not None else x)

    def averaging_weights(self) -> list[float]:
        """WiSE-FT's ``(1 - alpha, alpha)`` for two members; uniform otherwise."""
        if self.num_members == 2:
            alpha = self.hparams["wise_alpha"]
            return [1.0 - alpha, alpha]
        return [1.0 / self.num_members] * self.num_members

    def averaged_state(self, scales: Sequence[float] | Tensor | None = None) -> dict[str, Tensor]:
        """The members' weight average, each member's head first multiplied by ``scales[k]``."""
        states = [m.state_dict() for m in self.members]
        if scales is not None:
            states = [scale_head(s, self.head_name, float(c)) for s, c in zip(states, scales)]
        if self.num_members == 2:  # WiSE-FT, Eq. 1
            return wise_ft(states[0], states[1], self.hparams["wise_alpha"])
        return weight_average(states, self.averaging_weights())

    def _average_logits(self, x: Tensor, state: Mapping[str, Tensor]) -> Tensor:
        x = self._prepare(x)
        if self.masks is not None:
            x = x * self.masks.amax(0)  # the union of what the members see
        return functional_call(self.members[0], dict(state), (x,))

    def balanced_scales(self, overconfident: bool = False) -> Tensor:
        """Head multipliers of the temperature-balanced average (:func:`balance_factors`).

        ``overconfident``: the last member's logits are first multiplied by ``overconfidence``,
        which also multiplies its temperature, so balancing undoes it.
        """
        boost = self._boost() if overconfident else torch.ones(self.num_members)
        temps = self.temperature.detach().cpu() * boost
        return balance_factors(temps) * boost

    def _boost(self) -> Tensor:
        boost = torch.ones(self.num_members)
        boost[-1] = self.hparams["overconfidence"]
        return boost

    def forward(self, x: Tensor) -> Tensor:
        """Logits of the deployed model: the (temperature-balanced, if ``balance``) weight average."""
        scales = self.balanced_scales() if self.hparams["balance"] else None
        return self._average_logits(x, self.averaged_state(scales))

    # ----------------------------------------------------------------------------- training
    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if self.flat_inputs and dm is not None:
            for name in ("num_patches", "num_colours", "num_invariant", "num_classes"):
                want = getattr(dm, name, None)
                if want is not None and want != self.hparams[name]:
                    raise ValueError(f"the datamodule has {name}={want} but the model {self.hparams.get(name)}; set --model.init_args.{name}={want}")

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        hp = self.hparams
        probes = set(hp["probe_members"] or [])
        lam, perm, mixed = 1.0, None, x
        if hp["mixup_alpha"] > 0:  # Mixup: lam ~ Beta(a, a), each example paired with a random other
            lam = float(torch.distributions.Beta(hp["mixup_alpha"], hp["mixup_alpha"]).sample())
            perm = torch.randperm(x.shape[0], device=x.device)
            mixed = lam * x + (1.0 - lam) * x[perm]
        temps = hp.get("train_temperature") or [1.0] * self.num_members
        losses = []
        for k in range(self.num_members):
            if k in probes:  # the zero-shot / probe endpoint is not BANG-regularised: plain cross-entropy
                losses.append(F.cross_entropy(self.member_logits(x, k) / temps[k], y))
            else:  # BANG's fine-tuning (Sec. 5): Mixup + label smoothing, soft-target cross-entropy
                logits = self.member_logits(mixed, k) / temps[k]
                losses.append(mixup_label_smoothing_loss(logits, y, self.num_classes, lam, perm, hp["label_smoothing"]))
        loss = torch.stack(losses).sum()
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def on_train_epoch_start(self) -> None:
        for k in self.hparams["probe_members"] or []:  # frozen backbone: keep its BatchNorm/dropout in eval
            self.members[k].eval()

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        member_logits = [self.member_logits(x, k) for k in range(self.num_members)]
        for k, logits in enumerate(member_logits):
            self.val_acc[k].update(logits, y)
            self.val_temp[k].update(logits)
        avg = self._average_logits(x, self.averaged_state())
        self.val_acc[-1].update(avg, y)
        self.update_metrics("val", self(x) if self.hparams["balance"] else avg, y)  # the deployed model
        self.log("val/loss", F.cross_entropy(avg, y))

    def on_validation_epoch_end(self) -> None:
        accs = [m.compute() for m in self.val_acc]
        for k in range(self.num_members):
            self.log(f"val/acc_member{k}", accs[k])
        self.log("val/acc_avg", accs[-1], prog_bar=True)
        temps = torch.stack([m.compute() for m in self.val_temp]).to(self.temperature)
        if not self.trainer.sanity_checking and torch.isfinite(temps).all() and (temps > 0).all():
            self.temperature.copy_(temps)  # the ID logit std per member, for balancing
            self._temperature_step = self.global_step
        for m in [*self.val_acc, *self.val_temp]:
            m.reset()
        self.log_metrics("val")

    def on_train_end(self) -> None:
        if self._temperature_step != self.global_step:
            rank_zero_warn(
                f"BANG: the balancing temperatures were last measured at step {self._temperature_step}, not at the "
                f"end of training (step {self.global_step}); set check_val_every_n_epoch to divide max_epochs"
            )

    # ----------------------------------------------------------------------------- testing
    def metric_key(self, key: str, dataloader_idx: int, num_loaders: int) -> str:
        """``test/ood/acc`` for a named test loader (the base's metrics, as this module's own)."""
        if key.startswith("test/") and self._trainer is not None:
            return f"{self._test_prefix(dataloader_idx)}/{key[len('test/'):]}"
        return super().metric_key(key, dataloader_idx, num_loaders)

    def _test_prefix(self, dataloader_idx: int) -> str:
        names = getattr(getattr(self.trainer, "datamodule", None), "test_names", None)
        if names is not None and dataloader_idx < len(names):
            return f"test/{names[dataloader_idx]}"
        loaders = self.trainer.test_dataloaders
        return "test" if not isinstance(loaders, (list, tuple)) or len(loaders) == 1 else f"test/{dataloader_idx}"

    def on_test_epoch_start(self) -> None:
        # the averaged models are fixed during testing: build them once
        # (one member: the "average" is the model itself, so gain and FFT are 0 by definition)
        self._test_states = {
            "avg": self.averaged_state(),
            "overconf": self.averaged_state(self._boost()),
            "balanced": self.averaged_state(self.balanced_scales(overconfident=True)),
        }
        self._deployed_state = self.averaged_state(self.balanced_scales()) if self.hparams["balance"] else self._test_states["avg"]
        self.test_metrics = nn.ModuleDict().to(self.device)

    def _metrics_for(self, prefix: str) -> nn.ModuleDict:
        key = prefix.replace("/", "_")
        if key not in self.test_metrics:
            accs = {f"acc_member{k}": MulticlassAccuracy(self.num_classes, average="micro") for k in range(self.num_members)}
            accs.update({f"acc_{name}": MulticlassAccuracy(self.num_classes, average="micro") for name in ("ensemble", *self._test_states)})
            accs.update({"fft": FalseFalseTrueRatio(), "fft_overconf": FalseFalseTrueRatio()})
            self.test_metrics[key] = nn.ModuleDict(accs).to(self.device)
        return self.test_metrics[key]  # type: ignore[return-value]

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y = batch
        metrics = self._metrics_for(self._test_prefix(dataloader_idx))
        member_logits = torch.stack([self.member_logits(x, k) for k in range(self.num_members)])
        for k in range(self.num_members):
            metrics[f"acc_member{k}"].update(member_logits[k], y)
        weights = torch.tensor(self.averaging_weights(), device=x.device).view(-1, 1, 1)
        metrics["acc_ensemble"].update((weights * member_logits).sum(0), y)  # output-space ensemble
        averaged = {name: self._average_logits(x, state) for name, state in self._test_states.items()}
        for name, logits in averaged.items():
            metrics[f"acc_{name}"].update(logits, y)
        self.update_metrics("test", self._average_logits(x, self._deployed_state), y, dataloader_idx)
        metrics["fft"].update(member_logits, averaged["avg"], y)
        metrics["fft_overconf"].update(member_logits, averaged["overconf"], y)

    def on_test_epoch_end(self) -> None:
        for key, metrics in self.test_metrics.items():
            prefix = key.replace("_", "/", 1)
            values = {name: metric.compute() for name, metric in metrics.items()}
            values["acc_single"] = torch.stack([values[f"acc_member{k}"] for k in range(self.num_members)]).mean()
            values["gain"] = values["acc_avg"] - values["acc_single"]
            self.log_dict({f"{prefix}/{name}": value for name, value in values.items()}, add_dataloader_idx=False)
        for k in range(self.num_members):
            self.log(f"test/temperature_{k}", self.temperature[k], add_dataloader_idx=False)
        self.log_metrics("test")
        self.test_metrics = nn.ModuleDict()
        del self._test_states, self._deployed_state

    # ----------------------------------------------------------------------------- optimizers
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        opt_cls = torch.optim.AdamW if hp["optimizer"] == "adamw" else torch.optim.Adam
        optimizer = opt_cls(params, lr=hp["lr"], weight_decay=hp["weight_decay"])
        if not hp["cosine"] and hp["warmup_steps"] == 0:
            return optimizer
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = hp["warmup_steps"]

        def factor(step: int) -> float:  # linear warm-up, then cosine to 0 (WiSE-FT's schedule)
            if step < warmup:
                return (step + 1) / warmup
            if not hp["cosine"]:
                return 1.0
            progress = min((step - warmup) / max(total - warmup, 1), 1.0)
            return 0.5 * (1.0 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
