"""One MTARD training step against one PGD-AT training step, same student, same batch, one run.

Both steps run the same PGD-k on the student; MTARD adds a second student forward (clean images),
the backward through both, and one no-grad forward of each teacher, plus the controllers'
bookkeeping (two ``.item()`` syncs and a few scalar updates). The ratio shows what the
multi-teacher distillation costs on top of adversarial training. Target: within 1.4x with
teachers of the student's size (bigger teachers, as in the paper, cost their two forwards more).
A step is ``training_step`` + ``backward`` + ``optimizer.step``; the two are timed alternately
after a warm-up and the medians compared.

    python -m benchmarks.mtard_step [--student resnet18] [--teacher resnet18] [--batch 16] [--steps 10] [--repeats 5]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

from zoo.mtard import MTARD, TeacherClassifier


def _step(module: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    loss = module.training_step(batch, 0)  # type: ignore[operator]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.mtard_step", description=__doc__.splitlines()[0])
    parser.add_argument("--student", default="resnet18", help="a timm model name (CIFAR stem), or mlp (64-64-10 on digits-sized inputs)")
    parser.add_argument("--teacher", default=None, help="teachers' timm model name (default: the student's)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10, help="PGD steps of both trainings")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*self.log.*")  # steps run without a Trainer
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.manual_seed(0)
    mlp = args.student == "mlp"
    arch = {"backbone": args.student, "cifar_stem": not mlp, "hidden_dims": [64]}
    teacher_arch = {"backbone": args.teacher or args.student, "cifar_stem": not mlp, "hidden_dims": [256, 256]}
    attack = {"epsilon": 8 / 255, "attack_step_size": 2 / 255, "attack_steps": args.steps}
    shape = (args.batch, 64) if mlp else (args.batch, 3, 32, 32)
    x, y = torch.rand(*shape, device=args.device), torch.randint(0, 10, (args.batch,), device=args.device)

    with tempfile.TemporaryDirectory() as tmp:
        for role in ("clean", "robust"):
            TeacherClassifier(**teacher_arch).save_pretrained(Path(tmp) / role)
        mtard = MTARD(clean_teacher=f"{tmp}/clean", robust_teacher=f"{tmp}/robust", **arch, **attack)
        mtard.load_teachers()
    pgd_at = TeacherClassifier(**arch, adversarial=True, **attack)
    pgd_at.net.load_state_dict(mtard.student.state_dict())  # the same student
    jobs = {}
    for name, module in (("mtard", mtard), ("pgd_at", pgd_at)):
        module.to(args.device).train()
        jobs[name] = (module, module.configure_optimizers())  # SGD over the student's parameters

    def timed(name: str) -> float:
        module, opt = jobs[name]
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        _step(module, opt, (x, y))
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for name in jobs:  # warm-up
        timed(name)
    runs: dict[str, list[float]] = {name: [] for name in jobs}
    for i in range(args.repeats):
        for name in (("mtard", "pgd_at") if i % 2 == 0 else ("pgd_at", "mtard")):
            runs[name].append(timed(name))
    m, p = statistics.median(runs["mtard"]), statistics.median(runs["pgd_at"])
    ratio = m / p
    where = f"{args.device}, {args.threads} threads" if args.device == "cpu" else args.device
    shape_txt = "64 features" if mlp else "3x32x32"
    print(f"student {args.student}, teachers {teacher_arch['backbone']}, batch {args.batch} ({shape_txt}), PGD-{args.steps}, {where}, median of {args.repeats}")
    print(f"MTARD step: {m * 1e3:.1f} ms   PGD-AT step: {p * 1e3:.1f} ms")
    print(f"ratio MTARD / PGD-AT: {ratio:.3f} (target <= 1.4)")
    return ratio


if __name__ == "__main__":
    main()
