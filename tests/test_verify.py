"""``zoo verify``: a freshly published anyloss folder verifies (exit 0), one whose card metrics were
edited does not (exit 1), and a folder without a recipe or measured metrics is bad input (exit 2)."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch

from zoo import cli
from zoo.cards import card_metrics
from zoo.verify import metric_matches, verify

CONFIG = Path(__file__).resolve().parent.parent / "cards" / "anyloss" / "config.yaml"
TINY = ["--trainer.max_epochs=2", "--data.init_args.n_samples=600"]
QUIET = ["--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, float]]:
    """anyloss trained for two epochs (``zoo fit``), tested, and published with its test metrics."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("run")
    run = cli.build_lightning_cli(["fit", "--config", str(CONFIG), *TINY, *QUIET, f"--trainer.default_root_dir={root}"])
    measured = run.trainer.test(run.model, datamodule=run.datamodule, verbose=False)[0]
    hub = root / "hub"
    argv = ["publish", "--ckpt_path", str(root / "checkpoints" / "last.ckpt"), "--local_dir", str(hub), "--metrics", json.dumps(measured)]
    assert cli.main(argv) == 0
    return hub, measured


@pytest.fixture
def folder(published: tuple[Path, dict[str, float]], tmp_path: Path) -> Path:
    return Path(shutil.copytree(published[0], tmp_path / "hub"))


def set_card_metric(folder: Path, name: str, value: str) -> None:
    card = folder / "README.md"
    text, count = re.subn(rf"(- type: {re.escape(name)}\n\s+value: )\S+", rf"\g<1>{value}", card.read_text())
    assert count == 1
    card.write_text(text)


def test_fresh_folder_verifies(folder: Path, published: tuple[Path, dict[str, float]], capsys: pytest.CaptureFixture[str]) -> None:
    assert card_metrics((folder / "README.md").read_text()) == pytest.approx(published[1], abs=0, rel=0)
    capsys.readouterr()
    assert cli.main(["verify", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "verified" in out and "not verified" not in out and "test/f1" in out
    result = verify(folder)
    assert result.passed and result.threads == 1 and result.weights_identical is True
    assert {c.name for c in result.checks} == set(published[1])
    assert all(c.measured == c.card for c in result.checks)  # to the last digit on CPU


def test_edited_card_metric_fails(folder: Path, published: tuple[Path, dict[str, float]], capsys: pytest.CaptureFixture[str]) -> None:
    f1 = published[1]["test/f1"]
    set_card_metric(folder, "test/f1", repr(f1 + 0.01))
    capsys.readouterr()
    assert cli.main(["verify", str(folder)]) == 1
    out = capsys.readouterr().out
    assert "not verified" in out and "test/f1" in out
    failed = [c for c in verify(folder).checks if not c.match]
    assert [c.name for c in failed] == ["test/f1"] and failed[0].measured == f1
    assert cli.main(["verify", str(folder), "--tolerance", "0.02"]) == 0  # within an explicit tolerance


def test_card_precision_decides(folder: Path, published: tuple[Path, dict[str, float]]) -> None:
    """A card that stores 3 decimals is checked to 3 decimals; one more unit in the last place fails."""
    f1 = published[1]["test/f1"]
    set_card_metric(folder, "test/f1", f"{f1:.3f}")
    assert cli.main(["verify", str(folder)]) == 0
    set_card_metric(folder, "test/f1", f"{round(f1, 3) + 0.001:.3f}")
    assert cli.main(["verify", str(folder)]) == 1


def one_error_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("zoo: error: "), err
    return err[0]


def test_folder_without_training_config_is_bad_input(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (folder / "training_config.yaml").unlink()
    assert "no training_config.yaml" in one_error_line(["verify", str(folder)], capsys)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"model: [unclosed", "not valid YAML"),
        (b"- just\n- a list\n", "not a LightningCLI config"),
        (b"\xff\xfe not utf-8", "not UTF-8"),
        (b"!!python/object/apply:os.system ['echo pwned']", "not valid YAML"),  # safe YAML builds no objects
    ],
)
def test_bad_training_config_is_bad_input(folder: Path, content: bytes, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    (folder / "training_config.yaml").write_bytes(content)
    assert message in one_error_line(["verify", str(folder)], capsys)


def test_card_without_metrics_is_bad_input(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    card = folder / "README.md"
    head, body = card.read_text().split("---\n", 2)[1:]
    card.write_text("---\n" + head.split("model-index:")[0] + "---\n" + body)
    assert "no measured metrics" in one_error_line(["verify", str(folder)], capsys)


@pytest.mark.parametrize(
    ("card", "measured", "tolerance", "expected"),
    [
        (0.8125, 0.8125, None, True),
        (0.81, 0.8149999, None, True),  # the card stores 2 decimals
        (0.81, 0.8150001, None, False),
        (0.0784313753247261, math.nextafter(0.0784313753247261, 1.0), None, False),  # full precision: one ulp fails
        (1e-05, 1.4e-05, None, True),
        (0.5, 0.53, 0.05, True),
        (0.5, 0.56, 0.05, False),
        (float("nan"), 0.5, None, False),
    ],
)
def test_metric_matches(card: float, measured: float, tolerance: float | None, expected: bool) -> None:
    assert metric_matches(card, measured, tolerance) is expected
