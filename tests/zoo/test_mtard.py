"""MTARD against hand computations of the official code's rules, and its teacher handling.

The references below are written out term by term from ``zhaoshiji123/MTARD-extension``'s
training loop (KL ``-a*b + log(b + 1e-5)*b`` averaged over all entries, the sign rule on the
temperatures, the relative-loss rule on the weights), independently of ``zoo.mtard``.
"""

from __future__ import annotations

import functools
import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, Trainer
from safetensors.torch import load_file
from torch.utils.data import DataLoader, TensorDataset

import zoo
from tests.conftest import Job, run_ddp
from zoo import cli
from zoo.callbacks import SavePretrained
from zoo.hub import module_from_checkpoint
from zoo.mtard import (
    MTARD,
    TeacherClassifier,
    entropy_balance_update,
    kd_loss,
    loss_balance_update,
    soft_labels,
    teacher_entropy,
)

CARD = Path(__file__).resolve().parents[2] / "cards" / "mtard"


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


# ------------------------------------------------------------------------ references
def ref_kl(student_logits: list[list[float]], teacher_probs: list[list[float]]) -> float:
    """Official ``kl_loss``: mean over all B x C entries of p log(p + 1e-5) - p log_softmax(s)."""
    total, count = 0.0, 0
    for s_row, p_row in zip(student_logits, teacher_probs):
        log_z = math.log(sum(math.exp(v) for v in s_row))
        for s, p in zip(s_row, p_row):
            total += p * math.log(p + 1e-5) - p * (s - log_z)
            count += 1
    return total / count


def ref_softmax(logits: list[list[float]], tau: float) -> list[list[float]]:
    out = []
    for row in logits:
        e = [math.exp(v / tau) for v in row]
        out.append([v / sum(e) for v in e])
    return out


def ref_neg_entropy(probs: list[list[float]]) -> float:
    """Official ``entropy_value`` averaged: mean of p log(p + 1e-5) (the negative entropy)."""
    vals = [p * math.log(p + 1e-5) for row in probs for p in row]
    return sum(vals) / len(vals)


def ref_sign(v: float) -> float:
    return 1.0 if v > 0 else -1.0 if v < 0 else 0.0


def ref_controllers(state: dict[str, float], l_adv: float, l_nat: float, ne_adv: float, ne_nat: float, temp_lr: float, weight_lr: float) -> None:
    """One step of the official loop's controller updates, in its order, on a dict of floats."""
    state["tau_adv"] = max(min(10.0, state["tau_adv"] - temp_lr * ref_sign(ne_adv / ne_nat - 1)), 1.0)
    state["tau_nat"] = max(min(10.0, state["tau_nat"] - temp_lr * ref_sign(ne_nat / ne_adv - 1)), 1.0)
    state.setdefault("l0_nat", l_nat)
    state.setdefault("l0_adv", l_adv)
    lhat_adv, lhat_nat = l_adv / state["l0_adv"], l_nat / state["l0_nat"]
    avg = (lhat_adv + lhat_nat) / 2
    inv_adv, inv_nat = lhat_adv / avg, lhat_nat / avg
    state["w_nat"] = state["w_nat"] - weight_lr * (state["w_nat"] - inv_nat / (inv_adv + inv_nat))
    state["w_adv"] = state["w_adv"] - weight_lr * (state["w_adv"] - inv_adv / (inv_adv + inv_nat))
    state["w_adv"], state["w_nat"] = max(state["w_adv"], 0.0), max(state["w_nat"], 0.0)
    coef = 1.0 / (state["w_adv"] + state["w_nat"])
    state["w_adv"] *= coef
    state["w_nat"] *= coef


# ------------------------------------------------------------------------ pure maths
def test_kd_loss_matches_official_elementwise_kl_mean() -> None:
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 4, generator=g, dtype=torch.float64), torch.randn(5, 4, generator=g, dtype=torch.float64)
    for tau in (1.0, 3.7):
        p = soft_labels(t, tau)
        want = ref_kl(s.tolist(), ref_softmax(t.tolist(), tau))
        assert float(kd_loss(s, p)) == pytest.approx(want, rel=1e-12)
    # averaged over B x C, not batchmean: 1/C of PyTorch's batchmean KL (up to the 1e-5)
    p = soft_labels(t, 1.0)
    batchmean = F.kl_div(F.log_softmax(s, -1), p, reduction="batchmean")
    assert float(kd_loss(s, p)) == pytest.approx(float(batchmean) / 4, abs=1e-4)
    assert float(kd_loss(s, p)) != pytest.approx(float(batchmean), abs=1e-3)


def test_kd_loss_has_gradient_only_through_the_student() -> None:
    s = torch.randn(3, 5, requires_grad=True)
    t = torch.randn(3, 5, requires_grad=True)
    kd_loss(s, soft_labels(t, 2.0)).backward()
    assert s.grad is not None and t.grad is None


def test_teacher_entropy_is_minus_the_official_mean() -> None:
    t = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]], dtype=torch.float64)
    probs = ref_softmax(t.tolist(), 2.0)
    assert float(teacher_entropy(soft_labels(t, 2.0))) == pytest.approx(-ref_neg_entropy(probs), rel=1e-12)


@pytest.mark.parametrize(
    ("tau", "h", "want"),
    [
        ((1.0, 1.0), (0.9, 0.3), (1.0, 1.01)),  # adv teacher more uncertain: sharpen it (floor 1), soften clean
        ((3.0, 3.0), (0.9, 0.3), (2.99, 3.01)),
        ((3.0, 3.0), (0.2, 0.3), (3.01, 2.99)),  # clean teacher more uncertain
        ((3.0, 3.0), (0.3, 0.3), (3.0, 3.0)),  # equal entropy: sign(0) = 0, no move
        ((5.0, 9.995), (0.9, 0.3), (4.99, 10.0)),  # ceiling 10
    ],
)
def test_entropy_balance_update_follows_the_sign_rule(tau: tuple[float, float], h: tuple[float, float], want: tuple[float, float]) -> None:
    got = entropy_balance_update(tau[0], tau[1], h[0], h[1], lr=0.01)
    ne_adv, ne_nat = -h[0], -h[1]  # the official code feeds negative entropies: same ratio
    ref = {"tau_adv": tau[0], "tau_nat": tau[1]}
    ref["tau_adv"] = max(min(10.0, ref["tau_adv"] - 0.01 * ref_sign(ne_adv / ne_nat - 1)), 1.0)
    ref["tau_nat"] = max(min(10.0, ref["tau_nat"] - 0.01 * ref_sign(ne_nat / ne_adv - 1)), 1.0)
    assert got == pytest.approx(want, abs=1e-12)
    assert got == pytest.approx((ref["tau_adv"], ref["tau_nat"]), abs=1e-12)


def test_loss_balance_update_by_hand() -> None:
    # r = (0.8, 0.4), mean 0.6, rho = (4/3, 2/3), target shares (2/3, 1/3)
    w_adv, w_nat = loss_balance_update(0.5, 0.5, 0.8, 0.4, 1.0, 1.0, lr=0.025)
    assert w_adv == pytest.approx(0.5 - 0.025 * (0.5 - 2 / 3), rel=1e-12)
    assert w_nat == pytest.approx(0.5 - 0.025 * (0.5 - 1 / 3), rel=1e-12)
    # first step: losses equal their normalisers, weights stay
    assert loss_balance_update(0.5, 0.5, 0.3, 0.7, 0.3, 0.7, lr=0.025) == pytest.approx((0.5, 0.5))
    # normalised by the first-step losses: only the relative decrease matters
    assert loss_balance_update(0.5, 0.5, 8.0, 0.04, 10.0, 0.1, lr=0.025) == pytest.approx((w_adv, w_nat), rel=1e-12)
    # clamp at 0 and renormalise
    assert loss_balance_update(0.5, 0.5, 0.8, 0.4, 1.0, 1.0, lr=4.0) == pytest.approx((1.0, 0.0))
    # against the official loop, over a sequence of steps
    state = {"tau_adv": 1.0, "tau_nat": 1.0, "w_adv": 0.5, "w_nat": 0.5}
    w = (0.5, 0.5)
    for l_adv, l_nat in [(1.0, 2.0), (0.9, 1.2), (0.95, 0.8), (0.7, 0.9)]:
        ref_controllers(state, l_adv, l_nat, -0.1, -0.2, 0.0, 0.3)
        w = loss_balance_update(*w, l_adv, l_nat, state["l0_adv"], state["l0_nat"], lr=0.3)
        assert w == pytest.approx((state["w_adv"], state["w_nat"]), rel=1e-12)


# ------------------------------------------------------------------------ the module
def _teacher(path: Path, seed: int, hidden: int = 16) -> Path:
    torch.manual_seed(seed)
    TeacherClassifier(hidden_dims=[hidden]).save_pretrained(path)
    return path


@pytest.fixture
def teachers(tmp_path: Path) -> tuple[str, str]:
    return str(_teacher(tmp_path / "clean", 1)), str(_teacher(tmp_path / "robust", 2))


def _batch(n: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 64, generator=g), torch.randint(0, 10, (n,), generator=g)


def _fixed_attack(monkeypatch: pytest.MonkeyPatch, examples: dict[str, torch.Tensor]) -> None:
    """Make MTARD's attack return ``examples["x_adv"]`` (or the clean batch), so a reference sees the same inputs."""
    monkeypatch.setattr(MTARD, "attack", property(lambda self: lambda net, x, y: examples.get("x_adv", x)))


def test_training_steps_match_the_official_loop(teachers: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Three steps: losses, temperatures and weights against the reference loop on the same examples."""
    torch.manual_seed(0)
    model = MTARD(*teachers, hidden_dims=[16], temp_lr=0.3, weight_lr=0.2, epsilon=0.2, attack_step_size=0.05)
    model.load_teachers()
    clean, robust = zoo.load(teachers[0]), zoo.load(teachers[1])
    state = {"tau_adv": 1.0, "tau_nat": 1.0, "w_adv": 0.5, "w_nat": 0.5}
    examples: dict[str, torch.Tensor] = {}
    _fixed_attack(monkeypatch, examples)  # the same adversarial examples for the module and the reference
    for step in range(3):
        x, y = _batch(seed=step)
        x_adv = examples["x_adv"] = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
        with torch.no_grad():
            s_adv, s_nat = model.student(x_adv).tolist(), model.student(x).tolist()
            t_adv, t_nat = robust(x_adv).tolist(), clean(x).tolist()
        p_adv, p_nat = ref_softmax(t_adv, state["tau_adv"]), ref_softmax(t_nat, state["tau_nat"])
        l_adv, l_nat = ref_kl(s_adv, p_adv), ref_kl(s_nat, p_nat)
        ref_controllers(state, l_adv, l_nat, ref_neg_entropy(p_adv), ref_neg_entropy(p_nat), 0.3, 0.2)
        loss = model.training_step((x, y), step)
        assert float(loss.detach()) == pytest.approx(state["w_adv"] * l_adv + state["w_nat"] * l_nat, rel=1e-5)
        for key in ("tau_adv", "tau_nat", "w_adv", "w_nat"):
            assert float(getattr(model, key)) == pytest.approx(state[key], rel=1e-5), (step, key)
        loss.backward()  # the student learns between steps so the losses move
        with torch.no_grad():
            for p in model.student.parameters():
                p -= 0.5 * p.grad
                p.grad = None
    assert float(model.init_loss_adv) == pytest.approx(state["l0_adv"], rel=1e-5)
    assert float(model.tau_adv) != 1.0 or float(model.tau_nat) != 1.0


def test_ablation_flags_freeze_the_controllers(teachers: tuple[str, str]) -> None:
    model = MTARD(*teachers, hidden_dims=[16], use_entropy_balance=False, use_loss_balance=False, w_adv_init=0.7, temp_init=2.0)
    model.load_teachers()
    for step in range(3):
        model.training_step(_batch(seed=step), step)
    assert (float(model.tau_adv), float(model.tau_nat)) == (2.0, 2.0)
    assert float(model.w_adv) == pytest.approx(0.7) and float(model.w_nat) == pytest.approx(0.3)


def test_controller_rates_decay_at_the_milestones() -> None:
    model = MTARD(milestones=[2, 4], gamma=0.1)
    for epoch, factor in [(0, 1.0), (1, 1.0), (2, 0.1), (3, 0.1), (4, 0.01)]:
        model._trainer = SimpleNamespace(current_epoch=epoch, world_size=1)  # type: ignore[assignment]
        assert model._decay() == pytest.approx(factor)


def test_no_teachers_means_labels_stand_in(monkeypatch: pytest.MonkeyPatch) -> None:
    model = MTARD(hidden_dims=[16], epsilon=0.1, attack_step_size=0.03)
    x, y = _batch()
    _fixed_attack(monkeypatch, {})  # x_adv = x
    loss = model.training_step((x, y), 0)
    ce = F.cross_entropy(model.student(x), y)
    assert float(loss) == pytest.approx((float(ce) + math.log(1 + 1e-5)) / 10, rel=1e-5)  # one-hot KL = CE / C
    assert (float(model.tau_adv), float(model.tau_nat)) == (1.0, 1.0)  # no teacher entropies to balance


def test_teachers_frozen_eval_and_out_of_the_optimizer(teachers: tuple[str, str]) -> None:
    model = MTARD(*teachers, hidden_dims=[16], optimizer="adam", lr=1e-2, epsilon=0.1, attack_step_size=0.03, attack_steps=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = DataLoader(TensorDataset(*_batch(32)), batch_size=8)
    trainer = Trainer(max_steps=4, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, data)
    assert set(model.teachers) == {"clean", "robust"}
    teacher_params = {id(p) for p in model.teachers.parameters()}
    optimised = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimised == {id(p) for p in model.student.parameters()} and not optimised & teacher_params
    assert all(not p.requires_grad for p in model.teachers.parameters())
    model.train()
    assert model.student.training and not any(t.training for t in model.teachers.modules())
    after = model.state_dict()
    assert any(not torch.equal(after[k], v) for k, v in before.items() if k.startswith("student."))
    for role, path in zip(("clean", "robust"), teachers):
        original = zoo.load(path).state_dict()
        assert all(torch.equal(original[k], v) for k, v in model.teachers[role].state_dict().items())


def test_published_student_has_no_teacher_tensors_and_loads_without_teachers(teachers: tuple[str, str], tmp_path: Path) -> None:
    model = MTARD(*teachers, hidden_dims=[16], epsilon=0.1, attack_step_size=0.03, attack_steps=2)
    data = DataLoader(TensorDataset(*_batch(32)), batch_size=8)
    trainer = Trainer(max_steps=3, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, data)
    ckpt = tmp_path / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    assert any(k.startswith("teachers.") for k in torch.load(ckpt, weights_only=True)["state_dict"])  # Lightning keeps them
    model.save_pretrained(tmp_path / "hub")
    weights = load_file(str(tmp_path / "hub" / "model.safetensors"))
    assert weights and not any(k.startswith("teachers.") for k in weights)
    assert set(weights) == {k for k in model.state_dict() if not k.startswith("teachers.")}
    assert json.loads((tmp_path / "hub" / "config.json").read_text())["clean_teacher"] == teachers[0]
    for path in teachers:
        shutil.rmtree(path)
    for loaded in (zoo.load(tmp_path / "hub"), module_from_checkpoint(ckpt)):
        assert isinstance(loaded, MTARD) and len(loaded.teachers) == 0
        x, _ = _batch()
        with torch.no_grad():
            assert torch.equal(loaded(x), model.eval()(x))
        for key in ("tau_adv", "tau_nat", "w_adv", "w_nat", "init_loss_adv"):
            assert torch.equal(getattr(loaded, key), getattr(model, key))


def test_missing_teacher_path_is_a_clear_error_at_fit(tmp_path: Path) -> None:
    missing = str(tmp_path / "no" / "such" / "teacher")
    model = MTARD(clean_teacher=missing, hidden_dims=[16])  # building never touches the teachers
    trainer = Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(FileNotFoundError, match=r"MTARD clean_teacher '.*no/such/teacher'.*cards/mtard/teacher.yaml"):
        trainer.fit(model, DataLoader(TensorDataset(*_batch(8)), batch_size=8))
    with pytest.raises(ValueError, match="robust_teacher"):
        MTARD(robust_teacher="")


def test_teacher_with_other_classes_is_refused(tmp_path: Path) -> None:
    TeacherClassifier(hidden_dims=[8], num_classes=3).save_pretrained(tmp_path / "t3")
    model = MTARD(clean_teacher=str(tmp_path / "t3"), hidden_dims=[16])
    model.load_teachers()
    with pytest.raises(ValueError, match="clean teacher gives 3 classes, the student 10"):
        model.training_step(_batch(), 0)


def _ddp_job(teachers: tuple[str, str], out: Path) -> Job:
    model = MTARD(*teachers, hidden_dims=[16], temp_lr=0.05, epsilon=0.1, attack_step_size=0.03, attack_steps=2)
    x, y = _batch(64, seed=3)
    return Job(model, [_DumpControllers(out)], {"train_dataloaders": DataLoader(TensorDataset(x, y), batch_size=8)}, {"max_steps": 4})


def test_ddp_keeps_controllers_identical_across_processes(teachers: tuple[str, str], tmp_path: Path) -> None:
    records = run_ddp(tmp_path / "runs", {"mtard": functools.partial(_ddp_job, teachers, tmp_path)})["mtard"]
    assert not isinstance(records, str), records
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]
    assert ranks[0]["w_adv"] != 0.5 and ranks[0]["tau_adv"] != ranks[0]["tau_nat"]


class _DumpControllers(Callback):
    def __init__(self, out: Path) -> None:
        self.out = out

    def on_train_end(self, trainer: Trainer, pl_module: MTARD) -> None:  # type: ignore[override]
        values = {k: float(getattr(pl_module, k)) for k in ("tau_adv", "tau_nat", "w_adv", "w_nat")}
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(values))


# ------------------------------------------------------------------------ teachers and cards
def test_save_pretrained_callback_writes_a_loadable_teacher(tmp_path: Path) -> None:
    teacher = TeacherClassifier(hidden_dims=[8], adversarial=True, epsilon=0.1, attack_step_size=0.05, attack_steps=2, optimizer="adam", lr=1e-2)
    trainer = Trainer(
        max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[SavePretrained(str(tmp_path / "robust"))],
    )  # fmt: skip
    trainer.fit(teacher, DataLoader(TensorDataset(*_batch(16)), batch_size=8))
    loaded = zoo.load(tmp_path / "robust")
    assert isinstance(loaded, TeacherClassifier) and loaded.hparams["adversarial"]
    x, _ = _batch()
    with torch.no_grad():
        assert torch.equal(loaded(x), teacher.eval()(x))


def test_cifar_stem_resnet() -> None:
    net = TeacherClassifier(backbone="resnet18", num_classes=10, in_chans=3, cifar_stem=True).net
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1) and isinstance(net.maxpool, torch.nn.Identity)
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="cifar_stem"):
        MTARD(backbone="vit_tiny_patch16_224", cifar_stem=True)


def test_claim_teacher_arm_sets_the_save_path(tmp_path: Path) -> None:
    """The claim's teacher arms point SavePretrained (the last callback of teacher.yaml) at their folder."""
    run = cli.build_lightning_cli(
        [
            "--config", str(CARD / "teacher.yaml"),
            f"--trainer.callbacks.dirpath={tmp_path}/seed3/robust",
            "--model.init_args.adversarial=true",
            "--trainer.logger=false",
        ],
        run=False,
    )
    saver = [c for c in run.trainer.callbacks if isinstance(c, SavePretrained)]
    assert len(saver) == 1 and saver[0].dirpath == f"{tmp_path}/seed3/robust" and run.model.hparams["adversarial"]
    full = cli.build_lightning_cli(["--config", str(CARD / "full_teacher.yaml"), "--trainer.logger=false"], run=False)
    assert isinstance(full.model, TeacherClassifier)


@pytest.mark.parametrize("cls", [MTARD, TeacherClassifier])
def test_setup_refuses_standardised_data_when_the_attack_clips_to_pixels(cls: type, tmp_path: Path) -> None:
    from zoo.datamodules.digits import DigitsDataModule

    kwargs = {"hidden_dims": [16], "epsilon": 0.1, "attack_step_size": 0.05, "attack_steps": 1}
    kwargs |= {"adversarial": True} if cls is TeacherClassifier else {}
    trainer_kwargs = dict(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(ValueError, match="normalize=True") as raised:
        Trainer(**trainer_kwargs).fit(cls(**kwargs), DigitsDataModule(normalize=True))
    assert any(entry.name == "setup" for entry in raised.traceback)
    model = cls(**kwargs, clip=None)  # standardised inputs are unbounded: the attack stays in the eps-ball only
    assert model.attack.clip is None and cls(**kwargs).attack.clip == (0.0, 1.0)
    Trainer(**trainer_kwargs).fit(model, DigitsDataModule(normalize=True))
