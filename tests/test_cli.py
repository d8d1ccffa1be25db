"""The ``zoo`` CLI end to end, in process: fit -> publish (with the run's training config) ->
zoo.load, list, and bad input.

Every bad input must end with exit code 2 and exactly one line on stderr (``zoo: error: ...``),
no traceback and no warning: the user sees the mistake, not the machinery.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import LightningModule, Trainer

# LightningCLI resolves --data by short name among the DataModule classes already imported.
import zoo.datamodules.tabular  # noqa: F401
from zoo import cli
from zoo.hub import load
from zoo.neural_collapse import DeepLinearUFM
from zoo.registry import list_entries

CONFIG = Path(__file__).resolve().parent.parent / "cards" / "anyloss" / "config.yaml"
QUIET = ["--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
DATA = ["--data=SyntheticBinaryDataModule", "--data.init_args.n_samples=600"]


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    monkeypatch.chdir(tmp_path)  # anything written to the working directory lands in tmp
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)  # each call seeds as a fresh process would


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"log: {record.getMessage()}")


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, list[str]]:
    """``cli.main(argv)``: exit code, stdout, and what a console user would see on stderr.

    That is the stderr lines plus the warnings and Lightning's log lines, which reach the
    console through their own handlers and so bypass ``capsys``.
    """
    capsys.readouterr()
    logged = _Lines()
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    for logger in loggers:
        logger.addHandler(logged)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            code = cli.main(argv)
    finally:
        for logger in loggers:
            logger.removeHandler(logged)
    out, err = capsys.readouterr()
    ignored = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)
    noise = [f"warning: {w.message}" for w in caught if not issubclass(w.category, ignored)]
    return code, out, err.splitlines() + noise + logged.lines


def save_checkpoint(model: LightningModule, path: Path) -> Path:
    trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``zoo fit`` of the AnyLoss card for two epochs; its ``last.ckpt``."""
    root = tmp_path_factory.mktemp("fit")
    code = cli.main(["fit", "--config", str(CONFIG), "--trainer.max_epochs=2", f"--trainer.default_root_dir={root}", *QUIET])
    assert code == 0
    ckpt = root / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    return ckpt


@pytest.fixture(scope="module")
def other_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A zoo checkpoint of another registered class (the neural-collapse entry's module)."""
    return save_checkpoint(DeepLinearUFM(class_counts=[3, 2], hidden=4, depth=2), tmp_path_factory.mktemp("other") / "other.ckpt")


def test_fit_publish_load(fitted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hub = tmp_path / "hub"
    code, out, _ = run(["publish", "--ckpt_path", str(fitted), "--local_dir", str(hub), "--metrics", '{"test/f1": 0.5}'], capsys)
    assert code == 0 and "published anyloss (AnyLossClassifier)" in out

    ckpt = torch.load(fitted, weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["global_step"] > 0  # trained: two epochs ran
    model = load(hub)
    state = model.state_dict()
    assert state.keys() == ckpt["state_dict"].keys()
    for key, value in state.items():
        assert torch.equal(value, ckpt["state_dict"][key]), key
    config = json.loads((hub / "config.json").read_text())
    assert config["architecture"] == "anyloss" and config["loss"] == "anyloss" and config["hidden_dims"] == []
    assert config["zoo_class"] == "AnyLossClassifier" and config["zoo_provenance"]["seed"] == 0  # the card config's seed
    assert "with its training_config.yaml" in out
    recipe = yaml.safe_load((hub / "training_config.yaml").read_text())  # the run's config, overrides included
    assert recipe["seed_everything"] == 0 and recipe["trainer"]["max_epochs"] == 2
    assert recipe["model"]["class_path"] == "zoo.anyloss.AnyLossClassifier" and recipe["model"]["init_args"]["metric"] == "f1"
    assert "ckpt_path" not in recipe and "default_root_dir" not in recipe["trainer"]  # this machine's, not the recipe
    card = (hub / "README.md").read_text()
    assert "test/f1" in card and "0.5" in card.split("---")[1]  # in the model-index metadata

    argv = ["test", "--model=AnyLossClassifier", *DATA, "--ckpt_path", str(fitted), f"--trainer.default_root_dir={tmp_path}", *QUIET]
    code, _, err = run(argv, capsys)
    assert code == 0, err


def test_fit_by_short_class_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["fit", "--model=AnyLossClassifier", *DATA, "--trainer.fast_dev_run=true", f"--trainer.default_root_dir={tmp_path}"]
    code, _, _ = run(argv, capsys)
    assert code == 0


def test_list(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["list"], capsys)
    assert code == 0 and not err
    for entry in list_entries():
        assert entry.name in out
    code, out, err = run(["list", "--markdown"], capsys)
    assert code == 0 and not err
    lines = out.strip().splitlines()
    assert lines[0].startswith("| entry |") and lines[1].startswith("|---")
    assert [line.split("|")[1].strip() for line in lines[2:]] == [f"`{e.name}`" for e in list_entries()]
    for entry in list_entries():
        assert entry.paper in out and entry.target in out


def bad_inputs(ckpt: Path, other: Path, tmp: Path) -> dict[str, tuple[list[str], str]]:
    missing, hub = str(tmp / "missing.ckpt"), str(tmp / "hub")
    return {
        "unknown entry": (["reproduce", "anyloz"], "did you mean 'anyloss'"),
        "missing config": (["fit", "--config", str(tmp / "missing.yaml")], "missing.yaml"),
        "publish missing checkpoint": (["publish", "--ckpt_path", missing, "--local_dir", hub], "not found"),
        "test missing checkpoint": (["test", "--model=AnyLossClassifier", *DATA, "--ckpt_path", missing], "not found"),
        "checkpoint of another class": (
            ["test", "--model=AnyLossClassifier", *DATA, "--ckpt_path", str(other)],
            "holds a DeepLinearUFM, not a AnyLossClassifier",
        ),
        "push without repo id": (["publish", "--ckpt_path", str(ckpt), "--local_dir", hub, "--push"], "--repo_id"),
        "unknown publish option": (["publish", "--ckpt_path", str(ckpt), "--local_dir", hub, "--bogus"], "--bogus"),
        "unknown lightning option": (["fit", "--config", str(CONFIG), "--bogus=1"], "--bogus"),
        "unknown command": (["bogus"], "bogus"),
        "missing argument": (["reproduce"], "name"),
        "bad metrics": (["publish", "--ckpt_path", str(ckpt), "--local_dir", hub, "--metrics", "{oops"], "--metrics"),
        "verify missing folder": (["verify", str(tmp / "nowhere")], "not found"),
        "verify not a hub folder": (["verify", str(tmp)], "no config.json"),
        "verify negative tolerance": (["verify", str(tmp), "--tolerance", "-1"], "--tolerance"),
        "verify without a path": (["verify"], "PATH_OR_REPO_ID"),
        "fit an abstract template": (["fit", "--model=SolverModule", *DATA], "not a registered zoo module"),
    }


CASES = list(bad_inputs(Path("c"), Path("o"), Path("t")))


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_and_exit_2(
    case: str, fitted: Path, other_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv, expected = bad_inputs(fitted, other_ckpt, tmp_path)[case]
    code, _, err = run(argv, capsys)
    assert code == 2, err
    assert len(err) == 1, err
    assert err[0].startswith("zoo: error: ") and expected in err[0]
    assert not (tmp_path / "hub").exists()


def test_malicious_checkpoint_is_refused_without_running(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "marker"

    class Payload:
        def __reduce__(self) -> tuple:
            return (exec, (f"open({str(marker)!r}, 'w').write('pwned')",))

    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": Payload()}, "hyper_parameters": {}}, evil)
    for argv in (
        ["test", "--model=AnyLossClassifier", *DATA, "--ckpt_path", str(evil)],
        ["publish", "--ckpt_path", str(evil), "--local_dir", str(tmp_path / "hub")],
    ):
        code, _, err = run(argv, capsys)
        assert code == 2 and len(err) == 1 and "not a readable checkpoint" in err[0], err
    assert not marker.exists()
