"""Hub safety and loading: the save_pretrained -> zoo.load round trip, the published identity
(format 2 and format-1 folders, a class whose file moved, provenance, training config), refusal
of pickles and foreign or mismatched files, and the class checks on Lightning checkpoints.

A malicious pickle here is real: its ``__reduce__`` runs ``exec`` that writes a marker file, and
``test_malicious_payload_is_live`` shows that an unsafe load does run it, so the tests that find
no marker after a refusal are not vacuous. ``load`` is ``zoo.load``, imported from ``zoo.hub`` so
that the tests do not depend on which ``zoo`` the test runner's ``sys.path`` finds first.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import sys
import types
from pathlib import Path

import lightning
import pytest
import torch
import yaml
from lightning.pytorch import Trainer
from safetensors.torch import load_file, save_file

import zoo.anyloss
import zoo.registry
from tests.conftest import Payload, save_checkpoint, write_pickled
from zoo.anyloss import AnyLossClassifier
from zoo.datamodules.tabular import SyntheticBinaryDataModule
from zoo.errors import UnknownEntryError, UnsafeCheckpointError, WrongClassError, ZooLoadError
from zoo.hub import FORMAT_VERSION, ZooModule, load, module_from_checkpoint
from zoo.neural_collapse import DeepLinearUFM
from zoo.templates.continual import ContinualClassifier

ARGS = {"input_dim": 6, "hidden_dims": [8, 4], "loss": "bce", "lr": 0.02}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def write_malicious(path: Path, marker: Path, *, torch_format: bool = True) -> Path:
    """A 'state dict' whose unpickling writes ``marker``: torch.save's zip format or a bare pickle."""
    return write_pickled(path, {"net.0.weight": Payload(marker), "state_dict": {"w": Payload(marker)}}, torch_format=torch_format)




@pytest.fixture
def model() -> AnyLossClassifier:
    torch.manual_seed(0)
    return AnyLossClassifier(**ARGS).eval()


@pytest.fixture
def folder(model: AnyLossClassifier, tmp_path: Path) -> Path:
    model.save_pretrained(tmp_path / "hub")
    return tmp_path / "hub"


def outputs(module: torch.nn.Module, n_features: int = 6) -> torch.Tensor:
    with torch.no_grad():
        return module(torch.linspace(-2, 2, 5 * n_features).reshape(5, n_features))


# ------------------------------------------------------------------------------ round trip
def test_round_trip_config_and_card(model: AnyLossClassifier, tmp_path: Path) -> None:
    out = tmp_path / "published"
    model.save_pretrained(out, metrics={"test/f1": 0.625, "test/balanced_accuracy": 0.75})
    pictures = sorted(p.name for p in zoo.registry.get_entry("anyloss").card_dir.glob("*.png"))
    assert sorted(p.name for p in out.iterdir()) == sorted(["README.md", "config.json", "model.safetensors", *pictures])

    loaded, via_class = load(out), AnyLossClassifier.from_pretrained(out)
    for other in (loaded, via_class):
        assert type(other) is AnyLossClassifier and not other.training
        assert torch.equal(outputs(other), outputs(model))
        assert other.hparams["hidden_dims"] == [8, 4] and other.hparams["loss"] == "bce"
    assert not torch.equal(outputs(AnyLossClassifier(**ARGS)), outputs(model))  # a fresh init differs

    config = json.loads((out / "config.json").read_text())
    provenance = config.pop("zoo_provenance")
    assert FORMAT_VERSION == 2 and config == {
        **dict(AnyLossClassifier(**ARGS).hparams),
        "architecture": "anyloss",
        "zoo_class": "AnyLossClassifier",  # a name the registry resolves, never an import path
        "zoo_format_version": 2,
    }
    assert config["input_dim"] == 6 and config["lr"] == 0.02
    assert "zoo.anyloss" not in (out / "config.json").read_text()
    assert provenance["torch"] == torch.__version__ and provenance["lightning"] == lightning.__version__
    assert provenance["python"] == ".".join(map(str, sys.version_info[:3])) and provenance["torch_threads"] == 1
    assert provenance["zoo_version"] and "seed" in provenance
    commit = provenance["git_commit"]  # this suite runs from a git checkout
    assert commit is None or (len(commit) == 40 and int(commit, 16) >= 0)

    text = (out / "README.md").read_text()
    assert text.startswith("---\n")
    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta["library_name"] == "balance-zoo"
    results = meta["model-index"][0]["results"]
    measured = {m["type"]: m["value"] for r in results for m in r["metrics"]}
    assert measured == {"test/f1": 0.625, "test/balanced_accuracy": 0.75}


# ------------------------------------------------------------------------------ identity
V1_CONFIG = {**ARGS, "architecture": "anyloss", "zoo_class": "zoo.anyloss.AnyLossClassifier", "zoo_format_version": 1}


def format1_folder(tmp_path: Path, model: AnyLossClassifier) -> Path:
    """A folder as the zoo wrote it before the identity change: an import path, no provenance."""
    folder = tmp_path / "v1"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(V1_CONFIG))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    return folder


def test_format1_folder_loads(tmp_path: Path, model: AnyLossClassifier) -> None:
    loaded = load(format1_folder(tmp_path, model))
    assert type(loaded) is AnyLossClassifier and torch.equal(outputs(loaded), outputs(model))
    assert loaded.hparams["hidden_dims"] == [8, 4]


def test_folders_load_after_a_file_move(tmp_path: Path, model: AnyLossClassifier, folder: Path) -> None:
    v1 = format1_folder(tmp_path, model)
    ckpt = save_checkpoint(model, tmp_path / "model.ckpt")
    # the move: the class now lives in another module, its old path is gone, the registry lists the new one
    with pytest.MonkeyPatch.context() as patch:
        relocated = types.ModuleType("zoo_relocated_models")
        relocated.AnyLossClassifier = AnyLossClassifier  # type: ignore[attr-defined]
        patch.setitem(sys.modules, "zoo_relocated_models", relocated)
        patch.delattr(zoo.anyloss, "AnyLossClassifier")
        entries = tuple(
            dataclasses.replace(e, module="zoo_relocated_models.AnyLossClassifier") if e.name == "anyloss" else e
            for e in zoo.registry._ENTRIES
        )
        patch.setattr(zoo.registry, "_ENTRIES", entries)
        with pytest.raises(AttributeError):  # the old import path no longer exists
            zoo.registry.import_object("zoo.anyloss.AnyLossClassifier")
        for published in (folder, v1):  # saved before the move, in format 2 and format 1
            loaded = load(published)
            assert type(loaded) is AnyLossClassifier and torch.equal(outputs(loaded), outputs(model))
        assert torch.equal(outputs(module_from_checkpoint(ckpt)), outputs(model))
        model.save_pretrained(tmp_path / "after")  # published after the move: same identity
        assert json.loads((tmp_path / "after" / "config.json").read_text())["zoo_class"] == "AnyLossClassifier"
        assert torch.equal(outputs(load(tmp_path / "after")), outputs(model))


def test_card_without_metrics_claims_none(folder: Path) -> None:
    meta = yaml.safe_load((folder / "README.md").read_text().split("---\n")[1])
    assert meta["library_name"] == "balance-zoo" and "model-index" not in meta


def test_override_changes_the_built_model(folder: Path) -> None:
    loaded = load(folder, lr=0.5)
    assert loaded.hparams["lr"] == 0.5
    assert loaded.configure_optimizers().param_groups[0]["lr"] == 0.5
    assert load(folder).configure_optimizers().param_groups[0]["lr"] == 0.02
    with pytest.raises(ZooLoadError, match="do not"):  # an override that changes the shapes
        load(folder, hidden_dims=[16, 4])


# ------------------------------------------------------------------------------ pickles
def test_malicious_payload_is_live(tmp_path: Path) -> None:
    for torch_format in (True, False):
        marker = tmp_path / f"ran-{torch_format}"
        path = write_malicious(tmp_path / f"evil-{torch_format}.bin", marker, torch_format=torch_format)
        if torch_format:  # what an unsafe loader does
            torch.load(path, weights_only=False)
        else:
            pickle.loads(path.read_bytes())
        assert marker.read_text() == "pwned"


def pickle_only_folder(tmp_path: Path, folder: Path, marker: Path) -> Path:
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "config.json").write_text((folder / "config.json").read_text())
    write_malicious(evil / "pytorch_model.bin", marker)
    return evil


def test_pickle_only_folder_is_refused_without_running_it(tmp_path: Path, folder: Path) -> None:
    marker = tmp_path / "marker"
    evil = pickle_only_folder(tmp_path, folder, marker)
    with pytest.raises(UnsafeCheckpointError, match="allow_pickle=True"):
        load(evil)
    with pytest.raises(UnsafeCheckpointError):
        AnyLossClassifier.from_pretrained(evil)
    assert not marker.exists()

    with pytest.raises(ZooLoadError, match="could not be read safely") as info:
        load(evil, allow_pickle=True)  # opted in: still weights_only=True, which refuses exec
    assert not isinstance(info.value, UnsafeCheckpointError)
    assert not marker.exists()


def test_malicious_pickle_next_to_safetensors_is_never_read(tmp_path: Path, folder: Path, model: AnyLossClassifier) -> None:
    marker = tmp_path / "marker"
    write_malicious(folder / "pytorch_model.bin", marker)
    assert torch.equal(outputs(load(folder, allow_pickle=True)), outputs(model))
    assert not marker.exists()


def test_genuine_state_dict_pickle_loads_only_when_allowed(tmp_path: Path, folder: Path, model: AnyLossClassifier) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.json").write_text((folder / "config.json").read_text())
    torch.save(model.state_dict(), plain / "pytorch_model.bin")
    with pytest.raises(UnsafeCheckpointError):
        load(plain)
    assert torch.equal(outputs(load(plain, allow_pickle=True)), outputs(model))


# ------------------------------------------------------------------------------ bad folders
def test_truncated_safetensors(folder: Path) -> None:
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ZooLoadError, match="corrupted or truncated"):
        load(folder)


@pytest.mark.parametrize("path", ["./nope", "/tmp/does/not/exist", "nope", Path("/tmp/does/not/exist/either")])
def test_missing_path_is_not_found(path: str | Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        load(path)


def test_folder_without_config_or_weights(tmp_path: Path, folder: Path) -> None:
    with pytest.raises(ZooLoadError, match="no config.json"):
        load(tmp_path)
    (folder / "model.safetensors").unlink()
    with pytest.raises(ZooLoadError, match="no model.safetensors") as info:
        load(folder)
    assert not isinstance(info.value, UnsafeCheckpointError)
    with pytest.raises(ZooLoadError, match="is a file"):
        load(folder / "config.json")


def edit_config(folder: Path, **changes: object) -> None:
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_unknown_architecture(folder: Path) -> None:
    edit_config(folder, architecture="anyloz")
    with pytest.raises(UnknownEntryError, match="did you mean 'anyloss'"):
        load(folder)


def test_zoo_class_disagreeing_with_registry_is_refused(folder: Path) -> None:
    edit_config(folder, zoo_class="DeepLinearUFM")  # registered, but under another entry
    with pytest.raises(ZooLoadError, match=r"'DeepLinearUFM', but entry 'anyloss' publishes \['AnyLossClassifier'\]"):
        load(folder)
    edit_config(folder, zoo_class="os.system")  # never imported: format 2 records names only
    with pytest.raises(ZooLoadError, match="must be a class name, got 'os.system'"):
        load(folder)
    edit_config(folder, zoo_class="os.system", zoo_format_version=1)  # format 1: only 'system' is looked up
    with pytest.raises(ZooLoadError, match="os.system"):
        load(folder)
    edit_config(folder, architecture=None, zoo_class="AnyLossClassifier", zoo_format_version=2)  # not a shared module
    with pytest.raises(ZooLoadError, match="not a shared zoo module"):
        load(folder)


def test_unsupported_format_version(folder: Path) -> None:
    edit_config(folder, zoo_format_version=FORMAT_VERSION + 1)
    with pytest.raises(ZooLoadError, match="zoo_format_version"):
        load(folder)


def test_shared_module_publishes_without_an_entry(tmp_path: Path) -> None:
    torch.manual_seed(0)
    shared = ContinualClassifier(hidden_dims=[8], input_dim=6, num_classes=3)
    shared.save_pretrained(tmp_path / "shared")
    config = json.loads((tmp_path / "shared" / "config.json").read_text())
    assert (config["architecture"], config["zoo_class"]) == (None, "ContinualClassifier")
    loaded = load(tmp_path / "shared")
    assert type(loaded) is ContinualClassifier and torch.equal(outputs(loaded), outputs(shared.eval()))
    assert "# ContinualClassifier" in (tmp_path / "shared" / "README.md").read_text()


def test_unregistered_subclass_is_refused_with_the_fix(tmp_path: Path) -> None:
    class MyClassifier(AnyLossClassifier):  # a user's subclass: a different model, not AnyLossClassifier
        pass

    with pytest.raises(UnknownEntryError, match="MyClassifier is not registered.*SHARED_MODULES"):
        MyClassifier(**ARGS).save_pretrained(tmp_path / "mine")


def test_training_config_and_provenance_travel_from_checkpoint_to_folder(tmp_path: Path, model: AnyLossClassifier) -> None:
    recipe = "seed_everything: 7\nmodel:\n  class_path: zoo.anyloss.AnyLossClassifier\n"
    model.record_training_run(recipe, seed=7)
    ckpt = torch.load(save_checkpoint(model, tmp_path / "run.ckpt"), weights_only=True)
    record = ckpt["zoo"]
    assert (record["architecture"], record["zoo_class"], record["zoo_format_version"]) == ("anyloss", "AnyLossClassifier", 2)
    assert record["training_config"] == recipe and record["zoo_provenance"]["seed"] == 7

    rebuilt = module_from_checkpoint(tmp_path / "run.ckpt")
    assert rebuilt.training_config == recipe
    rebuilt.save_pretrained(tmp_path / "hub")
    assert (tmp_path / "hub" / "training_config.yaml").read_text() == recipe
    config = json.loads((tmp_path / "hub" / "config.json").read_text())
    assert config["zoo_provenance"] == record["zoo_provenance"]  # the training run's, not the publisher's
    assert "| seed | `7` |" in (tmp_path / "hub" / "README.md").read_text()


def test_card_pictures_are_copied(tmp_path: Path, model: AnyLossClassifier, monkeypatch: pytest.MonkeyPatch) -> None:
    cards = tmp_path / "cards"
    (cards / "anyloss").mkdir(parents=True)
    (cards / "anyloss" / "claim.png").write_bytes(b"\x89PNG fake")
    (cards / "anyloss" / "notes.txt").write_text("not a picture")
    monkeypatch.setattr(zoo.registry, "CARDS_DIR", cards)
    model.save_pretrained(tmp_path / "hub")
    assert (tmp_path / "hub" / "claim.png").read_bytes() == b"\x89PNG fake"
    assert not (tmp_path / "hub" / "notes.txt").exists()


@pytest.mark.parametrize("change", ["missing", "extra"])
def test_weights_must_match_key_for_key(folder: Path, change: str) -> None:
    weights = load_file(folder / "model.safetensors")
    if change == "missing":
        del weights["net.0.bias"]
    else:
        weights["net.9.weight"] = torch.zeros(2)
    save_file(weights, folder / "model.safetensors")
    with pytest.raises(ZooLoadError, match=r"missing \['net.0.bias'\]" if change == "missing" else r"unexpected \['net.9.weight'\]"):
        load(folder)


def test_from_pretrained_of_another_class(folder: Path) -> None:
    with pytest.raises(WrongClassError, match="not a DeepLinearUFM"):
        DeepLinearUFM.from_pretrained(folder)
    assert isinstance(ZooModule.from_pretrained(folder), AnyLossClassifier)  # the base takes any entry


# ------------------------------------------------------------------------------ checkpoints
def test_module_from_checkpoint_round_trip_and_class_check(tmp_path: Path, model: AnyLossClassifier) -> None:
    ckpt = save_checkpoint(model, tmp_path / "model.ckpt")
    rebuilt = module_from_checkpoint(ckpt, expected_class=AnyLossClassifier)
    assert type(rebuilt) is AnyLossClassifier and torch.equal(outputs(rebuilt), outputs(model))
    assert rebuilt.hparams["hidden_dims"] == [8, 4]
    with pytest.raises(WrongClassError, match="holds a AnyLossClassifier"):
        module_from_checkpoint(ckpt, expected_class=DeepLinearUFM)

    other = save_checkpoint(DeepLinearUFM(class_counts=[3, 2], hidden=4, depth=2), tmp_path / "other.ckpt")
    with pytest.raises(WrongClassError, match="holds a DeepLinearUFM"):
        module_from_checkpoint(other, expected_class=AnyLossClassifier)
    assert isinstance(module_from_checkpoint(other), DeepLinearUFM)


def test_trainer_refuses_a_checkpoint_of_another_class(tmp_path: Path) -> None:
    other = save_checkpoint(DeepLinearUFM(class_counts=[3, 2], hidden=4, depth=2), tmp_path / "other.ckpt")
    trainer = Trainer(
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path
    )
    data = SyntheticBinaryDataModule(n_samples=200, n_features=6, n_informative=3, positive_fraction=0.2)
    with pytest.raises(WrongClassError, match="holds a DeepLinearUFM, not a AnyLossClassifier"):
        trainer.test(AnyLossClassifier(**ARGS), datamodule=data, ckpt_path=other)


def test_foreign_checkpoints_are_refused(tmp_path: Path, model: AnyLossClassifier) -> None:
    plain = tmp_path / "plain.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, plain)
    with pytest.raises(ZooLoadError, match="not a balance-zoo checkpoint"):
        module_from_checkpoint(plain)

    marker = tmp_path / "marker"
    for torch_format in (True, False):
        evil = write_malicious(tmp_path / f"evil-{torch_format}.ckpt", marker, torch_format=torch_format)
        with pytest.raises(ZooLoadError, match="not a readable checkpoint"):
            module_from_checkpoint(evil)
    assert not marker.exists()

    with pytest.raises(FileNotFoundError, match="not found"):
        module_from_checkpoint(tmp_path / "missing.ckpt")
