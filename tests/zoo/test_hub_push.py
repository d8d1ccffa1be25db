"""Publishing with ``push_to_hub`` through a loopback stand-in of the Hub's HTTP API.

``tests/hub_server.py`` serves the few endpoints an upload calls (repo create, YAML validation,
preupload, NDJSON commit) on 127.0.0.1; huggingface_hub is pointed at it through
``constants.ENDPOINT`` (which it reads from ``HF_ENDPOINT`` only at import time), with a dummy
token and Xet off so files go base64 in the commit. Nothing leaves the machine.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub import constants
from lightning.pytorch import LightningModule, Trainer
from safetensors.torch import load as load_safetensors

from zoo import cli
from zoo.anyloss import AnyLossClassifier
from zoo.hub import load
from zoo.registry import get_entry

TOKEN = "hf_dummy_token_for_the_fake_hub"
#: what a folder of a model built in code holds (no training_config.yaml: no zoo fit run), plus
#: the card's pictures when the entry has some
FILES = {"README.md", "config.json", "model.safetensors"} | {p.name for p in get_entry("anyloss").card_dir.glob("*.png")}


def _import_hub_server():  # tests/ is not a package: load the stand-in by path
    name = "balance_zoo_tests_hub_server"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "hub_server.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


hub_server = _import_hub_server()


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> Iterator:
    with hub_server.serve_fake_hub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        # read from the environment at import time, so patch the values themselves
        monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", hub.endpoint)  # the module-level HfApi()
        yield hub


def assert_clean_upload(hub, repo_id: str) -> None:
    assert hub.unhandled == []
    posts = [(path, auth) for method, path, auth in hub.requests if method == "POST"]
    assert [p for p, _ in posts][:1] == ["/api/repos/create"]
    assert f"/api/models/{repo_id}/commit/main" in [p for p, _ in posts]
    assert all(auth == f"Bearer {TOKEN}" for _, auth in posts)


def assert_same_model(pushed: dict[str, bytes], model: AnyLossClassifier, tmp_path: Path) -> None:
    weights = load_safetensors(pushed["model.safetensors"])
    state = model.state_dict()
    assert weights.keys() == state.keys()
    assert all(torch.equal(weights[k], state[k]) for k in state)
    # the pushed bytes are a complete hub folder: zoo.load rebuilds the same model from them
    copy = tmp_path / "downloaded"
    copy.mkdir()
    for name, data in pushed.items():
        (copy / name).write_bytes(data)
    x = torch.randn(7, model.hparams["input_dim"])
    with torch.no_grad():
        assert torch.equal(load(copy)(x), model.eval()(x))


def test_save_pretrained_pushes_weights_config_and_card(fake_hub, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = AnyLossClassifier(input_dim=5, hidden_dims=[6], lr=0.03)
    url = model.save_pretrained(tmp_path / "local", repo_id="org/name", push_to_hub=True, metrics={"test/f1": 0.625})
    assert str(url).startswith(f"{fake_hub.endpoint}/org/name/commit/")

    pushed = fake_hub.repos["org/name"]
    assert set(pushed) == FILES
    for name in FILES:  # what was pushed is what was written locally
        assert pushed[name] == (tmp_path / "local" / name).read_bytes(), name
    assert json.loads(pushed["config.json"]) == model.hub_config()
    card = pushed["README.md"].decode()
    assert "library_name: balance-zoo" in card and "org/name" in card
    assert "- type: test/f1\n      value: 0.625" in card  # in the model-index metadata
    assert_same_model(pushed, model, tmp_path)
    assert_clean_upload(fake_hub, "org/name")

    # a second push to the existing repo (create answers 409, exist_ok) commits again
    model.save_pretrained(tmp_path / "again", repo_id="org/name", push_to_hub=True)
    assert [c["repo_id"] for c in fake_hub.commits] == ["org/name", "org/name"]
    assert "test/f1" not in fake_hub.repos["org/name"]["README.md"].decode()
    assert fake_hub.unhandled == []


def save_checkpoint(model: LightningModule, path: Path) -> Path:
    trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)
    return path


def test_zoo_publish_push(fake_hub, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(1)
    model = AnyLossClassifier(hidden_dims=[4], loss="wbce")
    ckpt = save_checkpoint(model, tmp_path / "last.ckpt")
    local = tmp_path / "hub"
    argv = ["publish", "--ckpt_path", str(ckpt), "--local_dir", str(local), "--push", "--repo_id", "org/cli-model"]
    assert cli.main([*argv, "--metrics", '{"test/f1": 0.5, "test/acc": 0.875}']) == 0
    assert "pushed to org/cli-model" in capsys.readouterr().out

    pushed = fake_hub.repos["org/cli-model"]
    assert set(pushed) == FILES
    for name in FILES:
        assert pushed[name] == (local / name).read_bytes(), name
    config = json.loads(pushed["config.json"])
    assert config["architecture"] == "anyloss" and config["loss"] == "wbce" and config["hidden_dims"] == [4]
    assert config["zoo_class"] == "AnyLossClassifier" and config["zoo_format_version"] == 2
    card = pushed["README.md"].decode()
    assert "value: 0.875" in card and "value: 0.5" in card
    assert_same_model(pushed, model, tmp_path)
    assert_clean_upload(fake_hub, "org/cli-model")
