"""Hostile input: files and URLs built to run code, read outside their folder or crash the loader.

Each case checks three things: the input is refused with the zoo's error type (exit code 2 at
the CLI), the message is one line that names the problem, and nothing ran or leaked. A pickle
payload here is live: its ``__reduce__`` calls ``exec``, which writes a marker file, and
``test_payload_is_live`` shows an unsafe load does write it, so "no marker" after a refusal is
evidence. A symlink case links to a *valid* file outside the folder, so a loader that followed
the link would load it and the test would fail.

Decided here: a tensor whose dtype differs from the model's is refused unless the cast loses
nothing (float16/bfloat16 -> float32/float64, float32 -> float64); float64 or integer weights
where the model holds float32 are refused, never cast silently.
"""

from __future__ import annotations

import functools
import http.server
import json
import pickle
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

import zoo.datamodules.tabular
import zoo.registry
from tests.conftest import Payload, save_checkpoint, write_pickled
from zoo import cli
from zoo.anyloss import AnyLossClassifier
from zoo.cards import render_card
from zoo.errors import UnknownEntryError, UnsafeCheckpointError, ZooError, ZooLoadError
from zoo.hub import (
    MAX_CONFIG_BYTES,
    PICKLE_NAMES,
    WEIGHTS_NAME,
    load,
    module_from_checkpoint,
)
from zoo.registry import get_entry
from zoo.reproduce import ClaimError, load_claim

ARGS = {"input_dim": 6, "hidden_dims": [8, 4], "loss": "bce", "lr": 0.02}
DATA = ["--data=SyntheticBinaryDataModule", "--data.init_args.n_samples=300"]
QUIET = ["--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    monkeypatch.chdir(tmp_path)  # whatever a CLI run writes lands in tmp
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)


# ----------------------------------------------------------------------------- helpers
def write_payload(path: Path, marker: Path, *, torch_format: bool = True) -> Path:
    """A checkpoint-shaped dict whose unpickling writes ``marker`` (torch.save zip or a bare pickle)."""
    checkpoint = {"state_dict": {"net.0.weight": Payload(marker)}, "zoo": {"architecture": "anyloss"}, "hyper_parameters": {}}
    return write_pickled(path, checkpoint, torch_format=torch_format)




def one_line(err: BaseException | str, *needles: str) -> str:
    """The message is a single line and names the problem (every needle in it)."""
    text = str(err)
    assert "\n" not in text.strip(), text
    for needle in needles:
        assert needle in text, text
    return text


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    """``zoo.cli.main(argv)``: exit code and the lines on stderr."""
    capsys.readouterr()
    code = cli.main(argv)
    return code, capsys.readouterr().err.splitlines()


def assert_refused(code: int, err: list[str], *needles: str) -> None:
    assert code == 2, err
    assert len(err) == 1, err
    assert err[0].startswith("zoo: error: "), err
    one_line(err[0], *needles)


@pytest.fixture
def marker(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "marker"
    yield path
    assert not path.exists(), "a payload ran"


@pytest.fixture
def model() -> AnyLossClassifier:
    torch.manual_seed(0)
    return AnyLossClassifier(**ARGS).eval()


@pytest.fixture
def folder(model: AnyLossClassifier, tmp_path: Path) -> Path:
    model.save_pretrained(tmp_path / "hub")
    return tmp_path / "hub"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A loopback HTTP server over a fresh folder: (folder, base URL)."""
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_payload_is_live(tmp_path: Path) -> None:
    """What an unsafe loader does with the payloads used below: it runs them."""
    for torch_format in (True, False):
        ran = tmp_path / f"ran-{torch_format}"
        path = write_payload(tmp_path / f"evil-{torch_format}.ckpt", ran, torch_format=torch_format)
        torch.load(path, weights_only=False) if torch_format else pickle.loads(path.read_bytes())
        assert ran.read_text() == "pwned"


# ------------------------------------------------------------- pickles under weight names
@pytest.mark.parametrize("allow_pickle", [False, True], ids=["default", "allow_pickle"])
@pytest.mark.parametrize("name", [*PICKLE_NAMES, WEIGHTS_NAME])
def test_pickle_payload_under_every_weight_name(name: str, allow_pickle: bool, folder: Path, marker: Path) -> None:
    (folder / WEIGHTS_NAME).unlink()
    write_payload(folder / name, marker)
    with pytest.raises(ZooLoadError) as info:
        load(folder, allow_pickle=allow_pickle)
    if name == WEIGHTS_NAME:  # a pickle renamed: safetensors reads a header, never unpickles
        one_line(info.value, WEIGHTS_NAME, "corrupted or truncated")
    elif allow_pickle:  # opted in, and still refused by weights_only=True
        assert not isinstance(info.value, UnsafeCheckpointError)
        one_line(info.value, name, "could not be read safely", "UnpicklingError")
    else:
        assert isinstance(info.value, UnsafeCheckpointError)
        one_line(info.value, name, "allow_pickle=True")


@pytest.mark.parametrize("torch_format", [True, False], ids=["zip", "bare-pickle"])
@pytest.mark.parametrize("name", ["model.ckpt", "last.ckpt", "registry_evil.ckpt"])
def test_pickle_payload_checkpoint_to_module_from_checkpoint(name: str, torch_format: bool, tmp_path: Path, marker: Path) -> None:
    evil = write_payload(tmp_path / name, marker, torch_format=torch_format)
    with pytest.raises(ZooLoadError) as info:
        module_from_checkpoint(evil)
    one_line(info.value, name, "not a readable checkpoint")


@pytest.mark.parametrize("version", ["2.9.1", "2.6.0+cpu", "2.10.0a0"])
def test_no_unpickling_on_a_torch_whose_gate_can_be_bypassed(
    version: str, tmp_path: Path, model: AnyLossClassifier, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Below torch 2.10 ``weights_only=True`` can be bypassed (CVE-2026-24747): even a genuine
    checkpoint is not unpickled there, and safetensors folders still load."""
    ckpt = save_checkpoint(model, tmp_path / "model.ckpt")
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "config.json").write_text((folder / "config.json").read_text())
    torch.save(model.state_dict(), tmp_path / "pickled" / "pytorch_model.bin")
    monkeypatch.setattr(torch, "__version__", version)
    for attempt in (lambda: module_from_checkpoint(ckpt), lambda: load(tmp_path / "pickled", allow_pickle=True)):
        with pytest.raises(ZooLoadError) as info:
            attempt()
        one_line(info.value, f"torch {version}", "CVE-2026-24747", "torch>=2.10")
    assert torch.equal(load(folder).net[0].weight, model.net[0].weight)


# ---------------------------------------------------------------- safetensors structure
def _header(tensors: dict[str, dict], length: int | None = None, tail: bytes = b"") -> bytes:
    header = json.dumps(tensors).encode()
    return struct.pack("<Q", len(header) if length is None else length) + header + tail


SAFETENSORS_LIES: dict[str, Callable[[bytes], bytes]] = {
    "header length 2**40": lambda good: struct.pack("<Q", 2**40) + good[8:],
    "header claims a 4 TiB tensor": lambda good: _header(
        {"net.0.weight": {"dtype": "F32", "shape": [2**20, 2**20], "data_offsets": [0, 4 * 2**40]}}, tail=b"\0" * 64
    ),
    "offsets past the end": lambda good: _header({"net.0.weight": {"dtype": "F32", "shape": [8, 6], "data_offsets": [0, 192]}}, tail=b"\0" * 16),
    "header is not JSON": lambda good: struct.pack("<Q", 8) + b"{{{{{{{{",
    "truncated to half": lambda good: good[: len(good) // 2],
    "truncated inside the length field": lambda good: good[:5],
    "empty": lambda good: b"",
}


@pytest.mark.parametrize("case", list(SAFETENSORS_LIES))
def test_broken_safetensors_is_one_line(case: str, folder: Path) -> None:
    weights = folder / WEIGHTS_NAME
    weights.write_bytes(SAFETENSORS_LIES[case](weights.read_bytes()))
    with pytest.raises(ZooLoadError) as info:
        load(folder)
    one_line(info.value, WEIGHTS_NAME, "corrupted or truncated")


# ------------------------------------------------------------------ shape, dtype and keys
WEIGHT_LIES: dict[str, tuple[Callable[[dict[str, torch.Tensor]], None], str]] = {
    "shape lie": (lambda w: w.update({"net.0.weight": torch.zeros(8, 7)}), "net.0.weight has shape (8, 7), the model (8, 6)"),
    "float64 weights": (lambda w: w.update({"net.0.weight": w["net.0.weight"].double()}), "net.0.weight is torch.float64"),
    "int64 weights": (lambda w: w.update({"net.0.bias": torch.zeros(8, dtype=torch.int64)}), "net.0.bias is torch.int64"),
    "bool weights": (lambda w: w.update({"net.0.bias": torch.zeros(8, dtype=torch.bool)}), "net.0.bias is torch.bool"),
    "extra key": (lambda w: w.update({"evil.weight": torch.zeros(1)}), "unexpected ['evil.weight']"),
    "missing key": (lambda w: w.pop("net.0.bias"), "missing ['net.0.bias']"),
}


@pytest.mark.parametrize("case", list(WEIGHT_LIES))
def test_weights_that_lie_about_the_model(case: str, folder: Path) -> None:
    edit, expected = WEIGHT_LIES[case]
    weights = load_file(folder / WEIGHTS_NAME)
    edit(weights)
    save_file(weights, folder / WEIGHTS_NAME)
    with pytest.raises(ZooLoadError) as info:
        load(folder)
    one_line(info.value, expected)


def test_lossless_half_precision_weights_load(folder: Path, model: AnyLossClassifier) -> None:
    """The one cast allowed: float16 -> float32 loses nothing, so a half-precision upload loads exactly."""
    weights = {k: v.half() for k, v in load_file(folder / WEIGHTS_NAME).items()}
    save_file(weights, folder / WEIGHTS_NAME)
    loaded = load(folder)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    assert torch.equal(loaded.net[0].weight, model.net[0].weight.half().float())


def test_dtype_lie_in_a_checkpoint(tmp_path: Path, model: AnyLossClassifier) -> None:
    ckpt = save_checkpoint(model, tmp_path / "model.ckpt")
    record = torch.load(ckpt, weights_only=True)
    record["state_dict"] = {k: v.double() for k, v in record["state_dict"].items()}
    torch.save(record, ckpt)
    with pytest.raises(ZooLoadError) as info:
        module_from_checkpoint(ckpt)
    one_line(info.value, "torch.float64", "refused, not cast")


# ---------------------------------------------------------------------------- config.json
def _class_key(config: dict) -> str:
    """The config key that names the class (whatever the format calls it)."""
    return next(k for k, v in config.items() if isinstance(v, str) and v.endswith("AnyLossClassifier"))


def _format1(folder: Path) -> dict:
    """The first published shape: the class as an import path."""
    args = {k: v for k, v in json.loads((folder / "config.json").read_text()).items() if k in AnyLossClassifier(**ARGS).hparams}
    return {**args, "architecture": "anyloss", "zoo_class": "zoo.anyloss.AnyLossClassifier", "zoo_format_version": 1}


CONFIG_LIES: dict[str, tuple[Callable[[dict], object], type[Exception], tuple[str, ...]]] = {
    "class of another entry": (
        lambda c: {
            **c,
            _class_key(c): c[_class_key(c)]
            .replace("zoo.anyloss.AnyLossClassifier", "zoo.neural_collapse.DeepLinearUFM")
            .replace("AnyLossClassifier", "DeepLinearUFM"),
        },
        ZooError,
        ("DeepLinearUFM",),
    ),
    "import path os.system": (lambda c: {**c, _class_key(c): "os.system"}, ZooError, ("os.system",)),
    "builtins exec": (lambda c: {**c, _class_key(c): "builtins.exec"}, ZooError, ("builtins.exec",)),
    "unknown entry": (lambda c: {**c, "architecture": "evil"}, UnknownEntryError, ("unknown entry 'evil'",)),
    "architecture not a string": (lambda c: {**c, "architecture": ["anyloss"]}, ZooError, ("['anyloss']",)),
    "a JSON list": (lambda c: [c], ZooLoadError, ("not an object",)),
    "a JSON string": (lambda c: "anyloss", ZooLoadError, ("not an object",)),
    "unknown init argument": (lambda c: {**c, "evil": "__import__('os')"}, ZooLoadError, ("do not build a AnyLossClassifier", "evil")),
    "init argument of the wrong type": (lambda c: {**c, "hidden_dims": "eight"}, ZooLoadError, ("do not build a AnyLossClassifier",)),
}


@pytest.mark.parametrize("shape", ["current", "format1"])
@pytest.mark.parametrize("case", list(CONFIG_LIES))
def test_config_naming_what_the_registry_does_not_hold(case: str, shape: str, folder: Path) -> None:
    edit, error, needles = CONFIG_LIES[case]
    config = json.loads((folder / "config.json").read_text()) if shape == "current" else _format1(folder)
    (folder / "config.json").write_text(json.dumps(edit(config)))
    with pytest.raises(error) as info:
        load(folder)
    one_line(info.value, *needles)


CONFIG_BYTES: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "over 1 MB": (lambda good: good[:-1] + b', "pad": "' + b"x" * MAX_CONFIG_BYTES + b'"}', "not parsed"),
    "non-UTF-8 bytes": (lambda good: b"\xff\xfe" + good, "not UTF-8"),
    "latin-1 inside a string": (lambda good: good.replace(b'"bce"', b'"b\xe9ce"'), "not UTF-8"),
    "nested 100000 deep": (lambda good: b"[" * 100_000 + b"]" * 100_000, "nests too deeply"),
    "integer of 10000 digits": (lambda good: good[:-1] + b', "n": ' + b"9" * 10_000 + b"}", "not valid JSON"),
    "not JSON": (lambda good: b"architecture = anyloss", "not valid JSON"),
    "empty": (lambda good: b"", "not valid JSON"),
}


@pytest.mark.parametrize("case", list(CONFIG_BYTES))
def test_config_bytes_that_are_not_a_config(case: str, folder: Path) -> None:
    edit, needle = CONFIG_BYTES[case]
    path = folder / "config.json"
    path.write_bytes(edit(path.read_bytes()))
    with pytest.raises(ZooLoadError) as info:
        load(folder)
    one_line(info.value, "config.json", needle)


# ----------------------------------------------------------------------------- symlinks
@pytest.fixture
def elsewhere(tmp_path: Path, model: AnyLossClassifier) -> Path:
    """A valid hub folder outside the one being loaded: following a link into it would succeed."""
    other = tmp_path / "elsewhere"
    model.save_pretrained(other)
    return other


@pytest.mark.parametrize(
    "name, target",
    [
        ("config.json", "/etc/passwd"),
        ("config.json", "elsewhere/config.json"),
        ("config.json", "../elsewhere/config.json"),
        (WEIGHTS_NAME, "elsewhere/model.safetensors"),
        (WEIGHTS_NAME, "/etc/passwd"),
    ],
)
def test_symlink_out_of_the_folder_is_refused(name: str, target: str, folder: Path, elsewhere: Path, tmp_path: Path) -> None:
    link = folder / name
    link.unlink()
    link.symlink_to(target if target.startswith(("/", "..")) else tmp_path / target)
    with pytest.raises(ZooLoadError) as info:
        load(folder)
    one_line(info.value, name, "outside the folder")


def test_symlink_inside_the_folder_is_fine(folder: Path, model: AnyLossClassifier) -> None:
    (folder / "weights").mkdir()
    (folder / WEIGHTS_NAME).rename(folder / "weights" / "w.safetensors")
    (folder / WEIGHTS_NAME).symlink_to("weights/w.safetensors")
    assert torch.equal(load(folder).net[0].weight, model.net[0].weight)


# ------------------------------------------------------------------------ --ckpt_path gate
def _where(kind: str, path: Path, served: tuple[Path, str]) -> str:
    """``path`` as the CLI is given it: a local path, an http URL or a file URL."""
    if kind == "local":
        return str(path)
    if kind == "file":
        return path.resolve().as_uri()
    root, base = served
    (root / path.name).write_bytes(path.read_bytes())
    return f"{base}/{path.name}"


@pytest.mark.parametrize("kind", ["local", "http", "file"])
@pytest.mark.parametrize("command", ["test", "validate", "publish"])
def test_ckpt_path_payload_runs_no_code(
    command: str, kind: str, tmp_path: Path, marker: Path, served: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    url = _where(kind, write_payload(tmp_path / "evil.ckpt", marker), served)
    if command == "publish":
        argv = ["publish", "--ckpt_path", url, "--local_dir", str(tmp_path / "hub")]
    else:
        argv = [command, "--model=AnyLossClassifier", *DATA, *QUIET, "--ckpt_path", url]
    assert_refused(*run_cli(argv, capsys), "not a readable checkpoint", "weights_only=True")
    assert not (tmp_path / "hub").exists()


@pytest.mark.parametrize(
    "ckpt_path, needle",
    [
        ("registry:evil-model", "model registry"),
        ("REGISTRY:evil:version:v2", "model registry"),
        ("registry", "model registry"),
        ("http://127.0.0.1:9/missing.ckpt", "could not be downloaded"),
        ("file:///does/not/exist.ckpt", "not found"),
        ("nosuchprotocol://host/evil.ckpt", "could not be downloaded"),
    ],
)
def test_ckpt_path_that_cannot_be_checked_is_refused(ckpt_path: str, needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert_refused(*run_cli(["test", "--model=AnyLossClassifier", *DATA, *QUIET, "--ckpt_path", ckpt_path], capsys), needle)


def test_ckpt_path_http_404(served: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["test", "--model=AnyLossClassifier", *DATA, *QUIET, "--ckpt_path", f"{served[1]}/absent.ckpt"]
    assert_refused(*run_cli(argv, capsys), "could not be downloaded", "404")


def test_ckpt_path_with_bad_hyper_parameters(tmp_path: Path, model: AnyLossClassifier, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = save_checkpoint(model, tmp_path / "model.ckpt")
    record = torch.load(ckpt, weights_only=True)
    record["hyper_parameters"] = ["not", "a", "mapping"]
    torch.save(record, ckpt)
    argv = ["test", "--model=AnyLossClassifier", *DATA, *QUIET, "--ckpt_path", str(ckpt)]
    assert_refused(*run_cli(argv, capsys), "hyper_parameters are a list")
    assert_refused(*run_cli(["publish", "--ckpt_path", str(ckpt), "--local_dir", str(tmp_path / "hub")], capsys), "hyper_parameters")


@pytest.mark.parametrize("kind", ["http", "file"])
def test_genuine_checkpoint_over_a_url_is_checked_and_used(
    kind: str, tmp_path: Path, model: AnyLossClassifier, served: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """The gate is not a blanket refusal: a checkpoint that ``zoo fit`` wrote, at a URL, tests and publishes."""
    argv = ["fit", "--model=AnyLossClassifier", *DATA, *QUIET, "--trainer.max_epochs=1", f"--trainer.default_root_dir={tmp_path}"]
    assert run_cli(argv, capsys)[0] == 0
    (good,) = (tmp_path / "checkpoints").glob("*.ckpt")
    url = _where(kind, good, served)
    code, err = run_cli(["test", "--model=AnyLossClassifier", *DATA, *QUIET, "--ckpt_path", url], capsys)
    assert code == 0, err
    code, err = run_cli(["publish", "--ckpt_path", url, "--local_dir", str(tmp_path / "hub")], capsys)
    assert code == 0, err
    assert torch.equal(load(tmp_path / "hub").net[0].weight, torch.load(good, weights_only=True)["state_dict"]["net.0.weight"])


# --------------------------------------------------------------------------- claim.yaml
GOOD_CLAIM = {
    "claim": "a beats b",
    "seeds": 1,
    "metrics": {"f1": "test/f1"},
    "arms": {"a": {"config": "config.yaml"}, "b": {"config": "config.yaml"}},
    "conditions": [{"check": "a.f1 > b.f1"}],
}


def _claim(edit: Callable[[dict], object]) -> str:
    return yaml.safe_dump(edit(json.loads(json.dumps(GOOD_CLAIM))))


CLAIM_LIES: dict[str, tuple[Callable[[Path], str], str]] = {
    "malformed YAML": (lambda m: "claim: [unclosed\narms: {", "not valid YAML"),
    "a list, not a mapping": (lambda m: "- claim\n- seeds\n", "expected a mapping"),
    "python object tag": (lambda m: f"claim: !!python/object/apply:os.system ['touch {m}']\n", "not valid YAML"),
    "python name tag": (lambda m: "claim: !!python/name:os.system\n", "not valid YAML"),
    "missing keys": (lambda m: "claim: x\n", "missing"),
    "__import__ in a check": (
        lambda m: _claim(lambda c: {**c, "conditions": [{"check": f"__import__('os').system('touch {m}') > a.f1"}]}),
        "unsupported term",
    ),
    "dunder attribute in a check": (
        lambda m: _claim(lambda c: {**c, "conditions": [{"check": "a.f1.__class__ > b.f1"}]}),
        "unsupported term",
    ),
    "call of a non-whitelisted function": (
        lambda m: _claim(lambda c: {**c, "conditions": [{"check": "exec('1') > b.f1"}]}),
        "unsupported term",
    ),
    "unknown arm": (lambda m: _claim(lambda c: {**c, "conditions": [{"check": "c.f1 > b.f1"}]}), "names arm 'c'"),
    "unknown metric": (lambda m: _claim(lambda c: {**c, "conditions": [{"check": "a.acc > b.f1"}]}), "names metric 'acc'"),
    "seeds not a number": (lambda m: _claim(lambda c: {**c, "seeds": "many"}), "seeds"),
    "arms a list": (lambda m: _claim(lambda c: {**c, "arms": ["a", "b"]}), "arms"),
    "conditions a number": (lambda m: _claim(lambda c: {**c, "conditions": 3}), "conditions"),
    "arm config outside the card": (
        lambda m: _claim(lambda c: {**c, "arms": {**c["arms"], "b": {"config": "/etc/passwd"}}}),
        "outside the card folder",
    ),
    "arm config through ..": (
        lambda m: _claim(lambda c: {**c, "arms": {**c["arms"], "b": {"config": "../other/config.yaml"}}}),
        "outside the card folder",
    ),
}


@pytest.fixture
def cards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cards folder for the 'anyloss' entry that a test may fill with hostile files."""
    root = tmp_path / "cards"
    (root / "anyloss").mkdir(parents=True)
    (root / "other").mkdir()
    for card in ("anyloss", "other"):
        (root / card / "config.yaml").write_text("model: {class_path: AnyLossClassifier}\n")
    monkeypatch.setattr(zoo.registry, "CARDS_DIR", root)
    return root / "anyloss"


def test_claim_fixture_is_valid(cards: Path) -> None:
    """The hostile claims below are this valid claim with one thing changed."""
    (cards / "claim.yaml").write_text(_claim(lambda c: c))
    claim = load_claim("anyloss")
    assert list(claim.arms) == ["a", "b"] and claim.seeds == (0,)


@pytest.mark.parametrize("case", list(CLAIM_LIES))
def test_hostile_claim_is_refused_up_front(case: str, cards: Path, marker: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write, needle = CLAIM_LIES[case]
    (cards / "claim.yaml").write_text(write(marker))
    with pytest.raises(ClaimError) as info:
        load_claim("anyloss")
    one_line(info.value, needle)
    assert_refused(*run_cli(["reproduce", "anyloss"], capsys), needle)  # no arm trained: refused before


# ------------------------------------------------------------------------- card README
CARD_LIES: dict[str, str] = {
    "malformed YAML header": "---\nlibrary_name: [balance-zoo\n---\n# card\n",
    "header a list": "---\n- balance-zoo\n---\n# card\n",
    "python object tag": "---\nlibrary_name: !!python/object/apply:os.system ['true']\n---\n# card\n",
}


@pytest.mark.parametrize("case", list(CARD_LIES))
def test_malformed_card_header(case: str, cards: Path, tmp_path: Path, model: AnyLossClassifier, capsys: pytest.CaptureFixture[str]) -> None:
    (cards / "README.md").write_text(CARD_LIES[case])
    with pytest.raises(ZooError) as info:
        render_card(get_entry("anyloss"), dict(model.hparams))
    one_line(info.value, "README.md", "YAML")
    ckpt = save_checkpoint(model, tmp_path / "model.ckpt")
    assert_refused(*run_cli(["publish", "--ckpt_path", str(ckpt), "--local_dir", str(tmp_path / "hub")], capsys), "README.md")
