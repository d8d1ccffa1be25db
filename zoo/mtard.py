"""B-MTARD: Balanced Multi-Teacher Adversarial Robustness Distillation (Zhao, Wang, Wei).

"Mitigating Accuracy-Robustness Trade-off via Balanced Multi-Teacher Adversarial Distillation",
arXiv 2306.16170 (TPAMI 2024; the ECCV 2022 conference version is "MTARD"). Official code
(reference only, no licence, re-implemented here): ``zhaoshiji123/MTARD-extension``
(``resnet18_mtard_cifar10.py``) and ``zhaoshiji123/MTARD`` (``mtard/mtard_loss.py``).

A student is trained on two kinds of knowledge at once: a *clean* teacher's soft labels on clean
images and a *robust* (adversarially trained) teacher's soft labels on the student's own PGD
examples. Two controllers, updated every step without gradients, balance them:

- **Entropy-Based Balance** sets each teacher's softmax temperature so that both teachers' soft
  labels carry the same information entropy: the more uncertain teacher is sharpened (lower
  temperature), the other softened, by ``temp_lr`` per step, inside ``[temp_min, temp_max]``.
- **Normalization Loss Balance** weights the two KD losses by how slowly each falls relative to
  its value at the first step: the knowledge the student learns more slowly gets more weight.

The loss is ``w_adv * KL(p_adv || S(x')) + w_nat * KL(p_nat || S(x))``; there is no hard-label term.

Details kept from the official code (``resnet18_mtard_cifar10.py``, ``mtard_loss.py``): the attack is PGD on the
student's cross-entropy, started at ``x + 0.001 N(0, I)``, with the student in eval mode; the
student is *not* temperature-scaled; the KL is averaged over all ``B x C`` entries (batchmean / C)
with ``log(p + 1e-5)``; the first step's losses are the normalisers; the learning rate, ``temp_lr``
and ``weight_lr`` are all multiplied by ``gamma`` at the milestones.

Teachers are hub folders or Hub repo ids (``clean_teacher``, ``robust_teacher``), loaded with
:func:`zoo.load` at the start of ``fit`` only: building, evaluating, publishing and ``zoo.load``-ing
a student never touches them. Loaded teachers are frozen, kept in eval mode, left out of the
optimizer and out of the published weights (``hub_ignore``); Lightning checkpoints keep them.

Choices and guesses (also in ``cards/mtard/README.md``):

- A teacher left as ``None`` is replaced by the ground-truth labels (one-hot soft labels, on which
  temperatures have no effect; the Entropy-Based Balance then stays off). ``MTARD()`` and the
  registry's smoke runs use this; with both teachers ``None`` the student trains on natural CE +
  adversarial CE balanced by the Normalization Loss Balance. Real runs pass both teachers.
- Under DDP the controllers are updated from losses and entropies averaged over processes, so
  every process keeps the same temperatures and weights (the official code is single-GPU).
- The shared :class:`zoo.nn.attacks.PGD` projects its Gaussian start into the ε-ball and [0, 1];
  the official code clips only after the first step (a difference of at most 0.001 per pixel).
- :class:`TeacherClassifier` (natural or PGD-AT training) trains the teachers of the embedded claim
  and is the PGD-AT baseline; its PGD-AT attack starts uniformly in the ball (Madry et al.).

>>> import torch
>>> student_logits, teacher_logits = torch.zeros(2, 4), torch.zeros(2, 4)
>>> round(float(kd_loss(student_logits, soft_labels(teacher_logits, 1.0))), 7)  # KL(u || u) = 0 up to the 1e-5
1e-05
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from zoo.hub import load as zoo_load
from zoo.nn.attacks import PGD, as_clip, check_clip_matches_data
from zoo.nn.backbones import build_backbone
from zoo.templates import ClassifierModule

__all__ = [
    "MTARD",
    "TeacherClassifier",
    "soft_labels",
    "kd_loss",
    "teacher_entropy",
    "entropy_balance_update",
    "loss_balance_update",
    "LOG_EPS",
]

#: The official code's ``log(p + 1e-5)`` in the KL and the entropy.
LOG_EPS = 1e-5
ROLES = ("clean", "robust")
_STATS = ("loss_adv", "loss_nat", "entropy_adv", "entropy_nat")


# ------------------------------------------------------------------------------------- maths
def soft_labels(teacher_logits: Tensor, temperature: float) -> Tensor:
    """A teacher's soft labels ``softmax(t / tau)`` (paper: temperature-scaled teacher output)."""
    return F.softmax(teacher_logits.detach() / temperature, dim=-1)


def kd_loss(student_logits: Tensor, teacher_probs: Tensor) -> Tensor:
    """The KD term ``KL(p_teacher || softmax(s))`` as the official code computes it.

    Element-wise ``p log(p + 1e-5) - p log_softmax(s)``, then the mean over all ``B x C`` entries
    (the usual batchmean KL divided by ``C``). The student is not temperature-scaled and there is
    no ``T^2`` factor. Shapes: ``(B, C)`` logits and ``(B, C)`` probabilities -> scalar.
    """
    p = teacher_probs
    return (p * torch.log(p + LOG_EPS) - p * F.log_softmax(student_logits, dim=-1)).mean()


def teacher_entropy(probs: Tensor) -> Tensor:
    """Information entropy of soft labels, ``-mean(p log(p + 1e-5))`` over all ``B x C`` entries.

    The official code averages ``p log(p + 1e-5)`` (the negative entropy); the Entropy-Based
    Balance only uses the ratio of two of these, which is the same either way.
    """
    return -(probs * torch.log(probs + LOG_EPS)).mean()


def _sign(x: float) -> float:
    return float(x > 0) - float(x < 0)


def entropy_balance_update(
    tau_adv: float, tau_nat: float, h_adv: float, h_nat: float, lr: float, tau_min: float = 1.0, tau_max: float = 10.0
) -> tuple[float, float]:
    """Entropy-Based Balance: one step of the teachers' temperatures (paper, temperature update).

    ``tau_adv <- clip(tau_adv - lr * sign(H_adv / H_nat - 1))`` and
    ``tau_nat <- clip(tau_nat - lr * sign(H_nat / H_adv - 1))`` into ``[tau_min, tau_max]``: the
    teacher whose soft labels have more entropy is sharpened, the other softened, until both carry
    the same entropy. ``h_*`` are the entropies at the current temperatures. Returns the new pair.
    """
    new_adv = tau_adv - lr * _sign(h_adv / h_nat - 1.0)
    new_nat = tau_nat - lr * _sign(h_nat / h_adv - 1.0)
    return min(max(new_adv, tau_min), tau_max), min(max(new_nat, tau_min), tau_max)


def loss_balance_update(
    w_adv: float, w_nat: float, loss_adv: float, loss_nat: float, init_adv: float, init_nat: float, lr: float
) -> tuple[float, float]:
    """Normalization Loss Balance: one step of the KD losses' weights (paper, weight update).

    Relative losses ``r_i = L_i / L_i^0`` (``L^0`` from the first step), ``rho_i = r_i / mean(r)``;
    each weight moves towards its target share ``rho_i / (rho_adv + rho_nat)`` by ``lr``:
    ``w_i <- w_i - lr (w_i - rho_i / sum(rho))``, is clamped at 0 and the pair renormalised to sum 1.
    The loss that falls more slowly (larger ``r_i``) gets more weight. Returns ``(w_adv, w_nat)``.
    """
    r_adv, r_nat = loss_adv / init_adv, loss_nat / init_nat
    r_avg = (r_adv + r_nat) / 2
    rho_adv, rho_nat = r_adv / r_avg, r_nat / r_avg
    w_nat = w_nat - lr * (w_nat - rho_nat / (rho_adv + rho_nat))
    w_adv = w_adv - lr * (w_adv - rho_adv / (rho_adv + rho_nat))
    w_adv, w_nat = max(w_adv, 0.0), max(w_nat, 0.0)
    total = w_adv + w_nat
    return w_adv / total, w_nat / total


# ------------------------------------------------------------------------------------ modules
def _optimizers(module: LightningModule, params: Any) -> Any:
    hp = module.hparams
    if hp["optimizer"] == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=hp["lr"], momentum=hp["momentum"], weight_decay=hp["weight_decay"])
    else:
        opt = torch.optim.Adam(params, lr=hp["lr"], weight_decay=hp["weight_decay"])
    if not hp["milestones"]:
        return opt
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(hp["milestones"]), gamma=hp["gamma"])
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}


def _check_optimizer(optimizer: str) -> None:
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}")


class TeacherClassifier(ClassifierModule):
    """A classifier trained naturally (a clean teacher) or with PGD-AT (a robust teacher).

    MTARD's teachers in the embedded claim and, with a small network, its PGD-AT baseline
    (Madry et al. 2018: cross-entropy on PGD examples started uniformly in the ε-ball, generated
    with the model in eval mode). Save it with :class:`zoo.callbacks.SavePretrained` (or ``zoo publish``)
    and pass the folder to :class:`MTARD` as ``clean_teacher`` or ``robust_teacher``.

    Args:
        backbone / num_classes / input_dim / hidden_dims / in_chans / cifar_stem: see
            :func:`zoo.nn.backbones.build_backbone` (default: an MLP 64-256-256-10).
        adversarial: PGD-AT instead of natural training.
        epsilon / attack_step_size / attack_steps: the L-inf PGD of PGD-AT; ``clip`` its input
            range (pixels in [0, 1]) or None for unbounded inputs (``setup`` refuses a DataModule
            with ``normalize=True`` unless ``clip`` is None).
        optimizer (``sgd`` | ``adam``) / lr / momentum / weight_decay / milestones / gamma: training.
    """

    def __init__(
        self,
        backbone: str = "mlp",
        num_classes: int = 10,
        input_dim: int = 64,
        hidden_dims: list[int] | None = None,
        in_chans: int = 3,
        cifar_stem: bool = False,
        adversarial: bool = False,
        epsilon: float = 8 / 255,
        attack_step_size: float = 2 / 255,
        attack_steps: int = 10,
        clip: tuple[float, float] | None = (0.0, 1.0),
        optimizer: str = "sgd",
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 2e-4,
        milestones: list[int] | None = None,
        gamma: float = 0.1,
    ) -> None:
        super().__init__(num_classes)
        _check_optimizer(optimizer)
        self.save_hyperparameters()
        hidden = [256, 256] if hidden_dims is None else hidden_dims
        self.net = build_backbone(backbone, num_classes, input_dim=input_dim, hidden_dims=hidden, in_chans=in_chans, cifar_stem=cifar_stem)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    @property
    def attack(self) -> PGD:
        """PGD-AT's attack, built from the hparams (a property: PGD objects do not pickle, ddp_spawn pickles the module)."""
        hp = self.hparams
        return PGD(
            hp["epsilon"], hp["attack_step_size"], hp["attack_steps"], random_start=True, init="uniform",
            clip=as_clip(hp["clip"]), model_mode="eval",
        )  # fmt: skip

    @override
    def setup(self, stage: str) -> None:
        """Refuse standardised inputs when PGD-AT clips them to a pixel range."""
        if self.hparams["adversarial"]:
            check_clip_matches_data(self.trainer.datamodule, self.hparams["clip"], "TeacherClassifier")

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        if self.hparams["adversarial"]:
            x = self.attack(self.net, x, y)
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> Any:
        return _optimizers(self, self.net.parameters())


# ------------------------------------------------------------------------------------- MTARD
class MTARD(ClassifierModule):
    """A student distilled from a clean and a robust teacher with B-MTARD's two balances.

    Args:
        clean_teacher / robust_teacher: hub folder or Hub repo id of each teacher (any ZooModule
            whose ``forward`` gives logits), loaded with :func:`zoo.load` at the start of ``fit``;
            ``None`` lets the labels stand in (see the module docstring).
        backbone / num_classes / input_dim / hidden_dims / in_chans / cifar_stem: the student
            (:func:`zoo.nn.backbones.build_backbone`); defaults: the embedded digits MLP 64-64-10.
        epsilon / attack_step_size / attack_steps / attack_init_std: the student-driven L-inf PGD
            (official: 8/255, 2/255, 10, Gaussian start with std 0.001); ``clip`` its input range
            (pixels in [0, 1]) or None for unbounded inputs (``setup`` refuses a DataModule with
            ``normalize=True`` unless ``clip`` is None).
        use_entropy_balance / temp_init / temp_min / temp_max / temp_lr: Entropy-Based Balance;
            ``use_entropy_balance=False`` keeps both temperatures at ``temp_init`` (ECCV'22 MTARD).
        use_loss_balance / weight_lr / w_adv_init: Normalization Loss Balance; off keeps the
            weights at ``(w_adv_init, 1 - w_adv_init)``.
        optimizer (``sgd`` | ``adam``) / lr / momentum / weight_decay / milestones / gamma: the
            student's optimizer; ``temp_lr`` and ``weight_lr`` decay by ``gamma`` at the same
            milestones (epochs, 0-based like ``MultiStepLR``).
    """

    hub_ignore = ("teachers.",)

    def __init__(
        self,
        clean_teacher: str | None = None,
        robust_teacher: str | None = None,
        backbone: str = "mlp",
        num_classes: int = 10,
        input_dim: int = 64,
        hidden_dims: list[int] | None = None,
        in_chans: int = 3,
        cifar_stem: bool = False,
        epsilon: float = 8 / 255,
        attack_step_size: float = 2 / 255,
        attack_steps: int = 10,
        attack_init_std: float = 0.001,
        clip: tuple[float, float] | None = (0.0, 1.0),
        use_entropy_balance: bool = True,
        temp_init: float = 1.0,
        temp_min: float = 1.0,
        temp_max: float = 10.0,
        temp_lr: float = 0.001,
        use_loss_balance: bool = True,
        weight_lr: float = 0.025,
        w_adv_init: float = 0.5,
        optimizer: str = "sgd",
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 2e-4,
        milestones: list[int] | None = None,
        gamma: float = 0.1,
    ) -> None:
        super().__init__(num_classes)
        _check_optimizer(optimizer)
        if not 0 < temp_min <= temp_init <= temp_max:
            raise ValueError(f"need 0 < temp_min <= temp_init <= temp_max, got {temp_min}, {temp_init}, {temp_max}")
        if not 0 <= w_adv_init <= 1:
            raise ValueError(f"w_adv_init must be in [0, 1], got {w_adv_init}")
        if temp_lr < 0 or weight_lr < 0:
            raise ValueError(f"temp_lr and weight_lr must be >= 0, got {temp_lr}, {weight_lr}")
        for role, source in (("clean", clean_teacher), ("robust", robust_teacher)):
            if source is not None and (not isinstance(source, str) or not source.strip()):
                raise ValueError(f"{role}_teacher must be a hub folder or repo id (a non-empty string) or None, got {source!r}")
        self.save_hyperparameters()
        hidden = [64] if hidden_dims is None else hidden_dims
        self.student = build_backbone(backbone, num_classes, input_dim=input_dim, hidden_dims=hidden, in_chans=in_chans, cifar_stem=cifar_stem)
        self.teachers = nn.ModuleDict()  # filled by load_teachers() at the start of fit
        # the controllers, checkpointed and published with the student (its final balance state)
        self.register_buffer("tau_adv", torch.tensor(float(temp_init), dtype=torch.float64))
        self.register_buffer("tau_nat", torch.tensor(float(temp_init), dtype=torch.float64))
        self.register_buffer("w_adv", torch.tensor(float(w_adv_init), dtype=torch.float64))
        self.register_buffer("w_nat", torch.tensor(1.0 - float(w_adv_init), dtype=torch.float64))
        # the first step's KD losses, the normalisers of the loss balance (NaN until then)
        self.register_buffer("init_loss_adv", torch.tensor(float("nan"), dtype=torch.float64))
        self.register_buffer("init_loss_nat", torch.tensor(float("nan"), dtype=torch.float64))
        self._epoch_stats: dict[str, float] = {}

    def forward(self, x: Tensor) -> Tensor:
        """The student's logits (teachers are used only in training)."""
        return self.student(x)

    @property
    def attack(self) -> PGD:
        """The student-driven PGD (student in eval mode, Gaussian start), built from the hparams.

        A property, not an attribute: PGD objects do not pickle, and ``ddp_spawn`` pickles the module.
        """
        hp = self.hparams
        return PGD(
            hp["epsilon"], hp["attack_step_size"], hp["attack_steps"], random_start=True, init="normal",
            init_std=hp["attack_init_std"], clip=as_clip(hp["clip"]), model_mode="eval",
        )  # fmt: skip

    # --------------------------------------------------------------------------- teachers
    def load_teachers(self) -> None:
        """Load the teachers named by ``clean_teacher`` / ``robust_teacher`` (once), frozen, in eval mode."""
        for role in ROLES:
            source = self.hparams[f"{role}_teacher"]
            if source is None or role in self.teachers:
                continue
            try:
                teacher = zoo_load(source)
            except FileNotFoundError as err:
                raise FileNotFoundError(
                    f"MTARD {role}_teacher {source!r} could not be loaded ({err}); train it first, e.g. "
                    f"zoo fit --config cards/mtard/teacher.yaml (it saves itself with zoo.callbacks.SavePretrained), or pass a Hub repo id"
                ) from None
            self.teachers[role] = teacher.requires_grad_(False).eval().to(self.device)

    @override
    def setup(self, stage: str) -> None:
        check_clip_matches_data(self.trainer.datamodule, self.hparams["clip"], "MTARD")
        if stage == "fit":
            self.load_teachers()
            missing = [r for r in ROLES if r not in self.teachers]
            if missing:
                rank_zero_warn(
                    f"MTARD: no {' or '.join(f'{r}_teacher' for r in missing)} given; the labels stand in (one-hot soft labels"
                    f"{', Entropy-Based Balance off' if self.hparams['use_entropy_balance'] else ''}). Pass trained teachers for MTARD proper."
                )

    @override
    def train(self, mode: bool = True) -> MTARD:
        super().train(mode)
        self.teachers.eval()  # frozen teachers stay in eval mode (BatchNorm, dropout)
        return self

    def _teacher_probs(self, role: str, x: Tensor, y: Tensor, temperature: float) -> tuple[Tensor, bool]:
        """Soft labels of the ``role`` teacher at ``temperature``, or one-hot labels without one."""
        if role not in self.teachers:
            return F.one_hot(y, self.hparams["num_classes"]).to(x.dtype), False
        with torch.no_grad():
            logits = self.teachers[role](x)
        if logits.shape[-1] != self.hparams["num_classes"]:
            raise ValueError(f"the {role} teacher gives {logits.shape[-1]} classes, the student {self.hparams['num_classes']}")
        return soft_labels(logits.float(), temperature), True

    # --------------------------------------------------------------------------- training
    def _decay(self) -> float:
        """``gamma ** (milestones passed)``: the official code decays temp_lr and weight_lr with the lr."""
        if self._trainer is None:
            return 1.0
        epoch = self.trainer.current_epoch
        return self.hparams["gamma"] ** sum(epoch >= m for m in (self.hparams["milestones"] or []))

    def _mean_over_processes(self, values: Tensor) -> Tensor:
        if self._trainer is not None and self.trainer.world_size > 1:
            return self.trainer.strategy.reduce(values, reduce_op="mean")
        return values

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        hp = self.hparams
        # 1. adversarial examples of the student (its CE, Gaussian start, student in eval mode)
        x_adv = self.attack(self.student, x, y)
        # 2. the student in train mode on both; the robust teacher sees the student's adversarial
        #    examples, the clean teacher the clean images
        s_adv, s_nat = self.student(x_adv), self.student(x)
        tau_adv, tau_nat = float(self.tau_adv), float(self.tau_nat)
        p_adv, has_adv = self._teacher_probs("robust", x_adv, y, tau_adv)
        p_nat, has_nat = self._teacher_probs("clean", x, y, tau_nat)
        # 3. the two KD terms (KL averaged over B x C entries, as the official code)
        loss_adv, loss_nat = kd_loss(s_adv, p_adv), kd_loss(s_nat, p_nat)
        h_adv, h_nat = teacher_entropy(p_adv), teacher_entropy(p_nat)
        stats = self._mean_over_processes(torch.stack([loss_adv, loss_nat, h_adv, h_nat]).detach().double())
        l_adv, l_nat, e_adv, e_nat = (float(v) for v in stats)
        decay = self._decay()
        # 4. Entropy-Based Balance: temperatures towards equal teacher entropy (used from the next step)
        if hp["use_entropy_balance"] and has_adv and has_nat:
            tau_adv, tau_nat = entropy_balance_update(tau_adv, tau_nat, e_adv, e_nat, hp["temp_lr"] * decay, hp["temp_min"], hp["temp_max"])
            self.tau_adv.fill_(tau_adv)
            self.tau_nat.fill_(tau_nat)
        # 5. Normalization Loss Balance: the first step's losses normalise; weights used at once
        if math.isnan(float(self.init_loss_adv)):
            self.init_loss_adv.fill_(l_adv)
            self.init_loss_nat.fill_(l_nat)
        if hp["use_loss_balance"]:
            w_adv, w_nat = loss_balance_update(
                float(self.w_adv), float(self.w_nat), l_adv, l_nat, float(self.init_loss_adv), float(self.init_loss_nat), hp["weight_lr"] * decay
            )
            self.w_adv.fill_(w_adv)
            self.w_nat.fill_(w_nat)
        # 6. the student's loss: weighted KD terms, no hard-label term
        loss = float(self.w_adv) * loss_adv + float(self.w_nat) * loss_nat
        self.log("train/loss", loss, prog_bar=True)
        for key, value in zip(_STATS, (l_adv, l_nat, e_adv, e_nat)):
            self._epoch_stats[key] = self._epoch_stats.get(key, 0.0) + value
        self._epoch_stats["steps"] = self._epoch_stats.get("steps", 0.0) + 1
        return loss

    @override
    def on_train_epoch_end(self) -> None:
        # One log call per epoch (Lightning's self.log costs ~2 ms a call on a small model): the
        # controllers' values at the end of the epoch and the epoch means of the KD terms and entropies.
        steps = self._epoch_stats.pop("steps", 0.0)
        values = {f"train/{k}": v / steps for k, v in self._epoch_stats.items()} if steps else {}
        values.update({f"train/{k}": float(getattr(self, k)) for k in ("tau_adv", "tau_nat", "w_adv", "w_nat")})
        self.log_dict(values)
        self._epoch_stats = {}

    def configure_optimizers(self) -> Any:
        return _optimizers(self, self.student.parameters())
