"""The synthetic-router claim arm: SyntheticRouter + SyntheticRouterScores under the ALF-LB callback
log exactly what :func:`zoo.alf_lb.synthetic_router_run` returns, through the card's own config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from zoo.alf_lb import SyntheticRouter, synthetic_router_run, synthetic_scores
from zoo.datamodules.tokens import SyntheticRouterScores
from zoo.lightning_cli import build_lightning_cli
from zoo.reproduce import load_claim

ROOT = Path(__file__).resolve().parents[2]
SYNTHETIC = ROOT / "cards" / "alf-lb" / "synthetic.yaml"
SMALL = ["--model.init_args.num_experts=6", "--data.init_args.num_experts=6", "--data.init_args.tokens_per_batch=256",
         "--data.init_args.batches=40", "--model.init_args.last=10"]  # fmt: skip


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _fit(tmp_path: Path, *args: str) -> dict[str, float]:
    run = build_lightning_cli(
        ["--config", str(SYNTHETIC), *args, "--trainer.logger=false", "--trainer.enable_progress_bar=false",
         "--trainer.enable_checkpointing=false", f"--trainer.default_root_dir={tmp_path}"],
        run=False,
    )  # fmt: skip
    run.trainer.fit(run.model, datamodule=run.datamodule)
    logged = {k: float(v) for k, v in run.trainer.callback_metrics.items()}
    run.trainer.test(run.model, datamodule=run.datamodule, verbose=False)
    logged["test/maxvio"] = float(run.trainer.callback_metrics["test/maxvio"])
    return logged


@pytest.mark.parametrize(
    ("args", "rule", "rate"),
    [
        (["--trainer.callbacks=[]"], None, 0.0),
        ([], "sign", 1e-3),
        (['--trainer.callbacks=[{"class_path": "zoo.callbacks.alf_lb.AuxFreeLoadBalancing", '
          '"init_args": {"rule": "proportional", "update_rate": 0.01}}]'], "proportional", 1e-2),
    ],
    ids=["none", "sign", "proportional"],
)  # fmt: skip
def test_the_claim_arm_logs_what_synthetic_router_run_returns(tmp_path: Path, args: list[str], rule: str | None, rate: float) -> None:
    for seed in (3, 4):
        logged = _fit(tmp_path, *SMALL, *args, f"--seed_everything={seed}", f"--data.init_args.seed={seed}")
        direct = synthetic_router_run(rule, rate, num_experts=6, tokens=256, batches=40, last=10, seed=seed)
        assert logged["synthetic/maxvio"] == pytest.approx(direct, rel=1e-6, abs=1e-9), (seed, logged, direct)


def test_the_card_config_reproduces_the_default_synthetic_run(tmp_path: Path) -> None:
    logged = _fit(tmp_path)  # the full 16 experts x 4,096 tokens x 300 batches, sign u = 1e-3, seed 0
    assert logged["synthetic/maxvio"] == pytest.approx(synthetic_router_run("sign", 1e-3), rel=1e-6)
    assert 0 <= logged["test/maxvio"] < 1.0


def test_scores_datamodule_streams_the_same_batches_and_tests_on_the_next_ones() -> None:
    dm = SyntheticRouterScores(num_experts=4, tokens_per_batch=8, batches=3, eval_batches=2, seed=7)
    stream = list(synthetic_scores(7, 4, 8, 5))
    train, test = list(dm.train_dataloader()), list(dm.test_dataloader())
    assert len(train) == 3 and len(test) == 2
    for got, want in zip(train + test, stream):
        assert torch.equal(got, want)
    assert torch.equal(list(dm.train_dataloader())[0], train[0])  # every epoch the same batches


def test_router_refuses_scores_of_another_width() -> None:
    with pytest.raises(ValueError, match="same num_experts"):
        SyntheticRouter(num_experts=4)(torch.rand(3, 5))


def test_the_claim_gates_the_tenfold_cut_per_seed() -> None:
    claim = load_claim("alf-lb")
    synthetic = {name for name, arm in claim.arms.items() if arm.config.name == "synthetic.yaml"}
    assert {"synth_none", "synth_sign", "synth_prop"} <= synthetic
    checks = {c.check: c for c in claim.conditions}
    for arm in ("synth_sign", "synth_prop"):
        cond = checks[f"{arm}.synth <= 0.1 * synth_none.synth"]
        assert cond.mode == "each_seed"
