"""``ZooModule``, the base of every trainable entry, and ``zoo.load``, the one way weights come in.

A published entry is a folder (local or a Hub repo) holding ``model.safetensors``,
``config.json``, the rendered model card, ``training_config.yaml`` (the LightningCLI config of
the run, which ``zoo verify`` retrains from) when the model was trained by ``zoo fit``, and the
card's pictures. ``config.json`` (format 2) records the init arguments plus:

- ``architecture``: the entry name (None for a shared module such as ``ContinualClassifier``);
- ``zoo_class``: the class NAME, which the registry resolves, never an import path, so a file
  can move without breaking a published model;
- ``zoo_format_version``: 2; format-1 folders (``zoo_class`` an import path) still load: the
  path's last component is looked up within the entry;
- ``zoo_provenance``: zoo, torch, lightning and python versions, the git commit of the
  checkout that trained it (when known), torch's thread count and the seed.

``zoo.load`` picks the class from the registry and loads the weights with strict key matching.
Lightning checkpoints carry the same identity in their ``zoo`` record. Nothing here unpickles
unless the caller opts in, and then only with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import atexit
import inspect
import json
import logging
import os
import pickle
import platform
import re
import shutil
import tempfile
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import lightning
import torch
from huggingface_hub import ModelCard, PyTorchModelHubMixin, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError
from lightning.pytorch import LightningModule
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from zoo.errors import UnknownEntryError, UnsafeCheckpointError, WrongClassError, ZooLoadError
from zoo.registry import SHARED_MODULES, Entry, SharedModule, get_entry, module_identity, resolve_module_class
from zoo.version_info import git_commit, zoo_version

__all__ = [
    "ZooModule",
    "load",
    "module_from_checkpoint",
    "fetch_checkpoint",
    "read_checkpoint",
    "provenance",
    "FORMAT_VERSION",
    "READABLE_FORMATS",
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "TRAINING_CONFIG_NAME",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
#: 1: ``zoo_class`` is an import path (before the identity change); 2: a class name + provenance.
READABLE_FORMATS = (1, 2)
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TRAINING_CONFIG_NAME = "training_config.yaml"
PICKLE_NAMES = ("pytorch_model.bin", "model.ckpt", "last.ckpt")
MAX_CONFIG_BYTES = 1_000_000  # a config.json holds init arguments: kilobytes; a bigger one is refused unparsed
RESERVED_KEYS = ("architecture", "zoo_class", "zoo_format_version", "zoo_provenance")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def provenance(seed: int | None = None) -> dict[str, Any]:
    """Where a model comes from: package versions, git commit, torch's thread count and the seed.

    ``seed`` defaults to the one ``seed_everything`` last set (``PL_GLOBAL_SEED``). The thread
    count matters on CPU: a sum splits differently over threads, so ``zoo verify`` uses it.
    """
    if seed is None and os.environ.get("PL_GLOBAL_SEED", "").lstrip("-").isdigit():
        seed = int(os.environ["PL_GLOBAL_SEED"])
    return {
        "zoo_version": zoo_version(),
        "git_commit": git_commit(),
        "torch": str(torch.__version__),  # a TorchVersion, which weights_only=True would refuse
        "lightning": str(lightning.__version__),
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "seed": seed,
    }


class ZooModule(LightningModule, PyTorchModelHubMixin, library_name="balance-zoo", tags=["balance-zoo"]):
    """A LightningModule that publishes to and loads from the Hugging Face Hub.

    Subclasses take only JSON-able init arguments and call ``self.save_hyperparameters()``, so
    LightningCLI, Lightning checkpoints and the hub's ``config.json`` describe the same model.
    """

    # ----------------------------------------------------------------------------- identity
    @classmethod
    def zoo_identity(cls) -> tuple[str | None, str]:
        """``(entry name, class name)`` as published; the entry is None for a shared module."""
        return module_identity(cls)

    @classmethod
    def zoo_entry(cls) -> Entry | None:
        """The entry this class publishes under; None for a shared module (no entry's own)."""
        entry, _ = module_identity(cls)
        return None if entry is None else get_entry(entry)

    def _zoo_identity_record(self) -> dict[str, Any]:
        entry, name = self.zoo_identity()
        return {"architecture": entry, "zoo_class": name, "zoo_format_version": FORMAT_VERSION}

    # ----------------------------------------------------------------------------- training run
    def record_training_run(self, training_config: str | None, seed: int | None = None) -> None:
        """Remember the LightningCLI config (YAML text) and seed of the run training this model.

        ``zoo fit`` calls it before training; checkpoints keep it and ``zoo publish`` writes it
        to ``training_config.yaml``, from which ``zoo verify`` retrains.
        """
        self._zoo_run = {"training_config": training_config, "seed": seed, "provenance": None}

    @property
    def training_config(self) -> str | None:
        """The LightningCLI config (YAML) that trained this model, when it is known."""
        return self._zoo_run_record().get("training_config")

    def _zoo_run_record(self) -> dict[str, Any]:
        return self.__dict__.get("_zoo_run") or {}

    def zoo_provenance(self) -> dict[str, Any]:
        """The provenance recorded when this model's checkpoint was saved, else measured now."""
        return self._zoo_run_record().get("provenance") or provenance(self._zoo_run_record().get("seed"))

    def init_args(self) -> dict[str, Any]:
        """The JSON-able init arguments recorded by ``save_hyperparameters``."""
        params = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        if params and not self.hparams:
            raise TypeError(f"{type(self).__qualname__}.__init__ must call self.save_hyperparameters()")
        args = {k: v for k, v in self.hparams.items() if not k.startswith("_")}
        for key in RESERVED_KEYS:
            if key in args:
                raise TypeError(f"{type(self).__qualname__}: init argument {key!r} is reserved by config.json")
        json.dumps(args)  # fails loudly on a non-JSON-able argument
        return args

    def hub_config(self) -> dict[str, Any]:
        """``config.json``: the init arguments, the entry and class names, format and provenance."""
        return {**self.init_args(), **self._zoo_identity_record(), "zoo_provenance": self.zoo_provenance()}

    #: state_dict key prefixes kept in Lightning checkpoints but not published (replay
    #: buffers, frozen teachers loaded by name): ``zoo.load`` rebuilds them from the init args.
    hub_ignore: tuple[str, ...] = ()

    def hub_state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors ``model.safetensors`` holds: the state_dict minus ``hub_ignore``."""
        return {k: v for k, v in self.state_dict().items() if not (self.hub_ignore and k.startswith(self.hub_ignore))}

    # ----------------------------------------------------------------------------- saving
    def _save_pretrained(self, save_directory: Path) -> None:
        # clone: safetensors refuses tensors that share memory (tied weights)
        state = {k: v.detach().cpu().clone().contiguous() for k, v in self.hub_state_dict().items()}
        save_file(state, str(Path(save_directory) / WEIGHTS_NAME), metadata={"format": "pt"})
        if self.training_config is not None:
            (Path(save_directory) / TRAINING_CONFIG_NAME).write_text(self.training_config)
        entry = self.zoo_entry()
        if entry is not None and entry.card_dir.is_dir():  # the card's pictures, which README.md shows
            for picture in sorted(entry.card_dir.glob("*.png")):
                shutil.copyfile(picture, Path(save_directory) / picture.name)

    def save_pretrained(  # type: ignore[override]
        self,
        save_directory: str | Path,
        *,
        metrics: dict[str, float] | None = None,
        repo_id: str | None = None,
        push_to_hub: bool = False,
        config: dict[str, Any] | None = None,
        model_card_kwargs: dict[str, Any] | None = None,
        **push_to_hub_kwargs: Any,
    ) -> str | None:
        """Write ``model.safetensors``, ``config.json``, the rendered card, ``training_config.yaml``
        (when known) and the card's pictures; optionally push.

        ``metrics`` (measured, e.g. from ``trainer.test``) go into the card's model-index.
        ``config`` and ``model_card_kwargs`` exist because the mixin's ``push_to_hub`` calls
        ``save_pretrained(tmp, config=..., model_card_kwargs=...)`` again: ``config.json`` is
        always :meth:`hub_config`, and the card keeps the metrics and repo id passed first.
        """
        save_directory = Path(save_directory)
        save_directory.mkdir(parents=True, exist_ok=True)
        (save_directory / "README.md").unlink(missing_ok=True)  # always re-render the card
        card_kwargs: dict[str, Any] = {"metrics": metrics, "repo_id": repo_id}
        for key, value in (model_card_kwargs or {}).items():
            if card_kwargs.get(key) is None:
                card_kwargs[key] = value
        return super().save_pretrained(
            save_directory,
            config=self.hub_config(),
            repo_id=repo_id,
            push_to_hub=push_to_hub,
            model_card_kwargs=card_kwargs,
            **push_to_hub_kwargs,
        )

    def generate_model_card(self, *args: Any, **kwargs: Any) -> ModelCard:
        from zoo.cards import render_card

        entry, name = self.zoo_identity()
        owner: Entry | SharedModule = get_entry(entry) if entry is not None else next(s for s in SHARED_MODULES if s.name == name)
        return render_card(
            owner,
            self.init_args(),
            metrics=kwargs.get("metrics"),
            repo_id=kwargs.get("repo_id"),
            provenance=self.zoo_provenance(),
        )

    # ----------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs: Any) -> ZooModule:  # type: ignore[override]
        """Load weights published for this class (or a subclass); see :func:`zoo.load`."""
        return load(pretrained_model_name_or_path, expected_class=cls, **kwargs)

    # ----------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The ``zoo`` record: the published identity, provenance and the run's config."""
        record = {**self._zoo_identity_record(), "zoo_provenance": provenance(self._zoo_run_record().get("seed"))}
        if self.training_config is not None:
            record["training_config"] = self.training_config
        checkpoint["zoo"] = record

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("zoo", {}).get("zoo_class")
        if isinstance(saved, str) and saved.rpartition(".")[2] != type(self).__name__:
            raise WrongClassError(
                f"checkpoint holds a {saved.rpartition('.')[2]}, not a {type(self).__qualname__}; "
                f"pick the matching --model or use zoo publish, which reads the class from the checkpoint"
            )


# --------------------------------------------------------------------------------- zoo.load
def load(
    path_or_repo_id: str | Path,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | None = None,
    local_files_only: bool = False,
    force_download: bool = False,
    allow_pickle: bool = False,
    expected_class: type | None = None,
    map_location: str = "cpu",
    **overrides: Any,
) -> ZooModule:
    """Load a published entry from a local folder or a Hub repo id, in eval mode.

    ``config.json`` names the entry and class; the class comes from the registry (format 1 and
    2 folders). ``overrides`` replace init arguments (e.g. ``lr=...``); weights must match the
    built model key for key.
    A folder that holds only pickled weights is refused unless ``allow_pickle=True``, and even
    then it is read with ``torch.load(weights_only=True)``.
    """
    source = _Source(path_or_repo_id, revision, cache_dir, token, local_files_only, force_download)
    config = source.read_config()
    cls = _registered_class(config, expected_class, source)
    init_args = {k: v for k, v in config.items() if k not in RESERVED_KEYS}
    init_args.update(overrides)
    model = _build(cls, init_args, source)
    state = source.read_weights(allow_pickle=allow_pickle, map_location=map_location)
    _load_state_strict(model, state, source)
    return model.eval()


def _registered_class(record: dict[str, Any], expected_class: type | None, source: object) -> type:
    """The class a ``config.json`` or checkpoint record names, taken only from the registry.

    Format 2 records a class name; format 1 an import path, of which only the last component
    is used (looked up within the entry), so folders published before a file move still load.
    """
    version = record.get("zoo_format_version")
    if version not in READABLE_FORMATS:
        raise ZooLoadError(f"{source}: zoo_format_version {version!r} is not supported (this zoo reads {list(READABLE_FORMATS)})")
    entry, saved_class = record.get("architecture"), record.get("zoo_class")
    if entry is not None and not isinstance(entry, str):
        raise ZooLoadError(f"{source}: 'architecture' must be an entry name, got {entry!r}")
    if entry is None and version == 1:
        raise ZooLoadError(f"{source}: a format-1 record must name its entry in 'architecture'")
    if entry is not None:
        get_entry(entry)  # an unknown entry: UnknownEntryError with close names
    if not isinstance(saved_class, str) or (version == 2 and "." in saved_class):
        raise ZooLoadError(f"{source}: 'zoo_class' must be a class name, got {saved_class!r}")
    try:
        cls = resolve_module_class(entry, saved_class)
    except UnknownEntryError as err:
        raise ZooLoadError(f"{source}: records class {saved_class!r}, but {err}") from None
    if expected_class is not None and not issubclass(cls, expected_class):
        owner = f" ({entry})" if entry else ""
        raise WrongClassError(f"{source} holds a {cls.__qualname__}{owner}, not a {expected_class.__qualname__}")
    return cls


def _build(cls: type, init_args: dict[str, Any], source: object) -> ZooModule:
    """``cls(**init_args)``; arguments from a file that do not build the class are bad input, named in one line."""
    try:
        return cls(**init_args)
    except (TypeError, ValueError, KeyError, RuntimeError) as err:
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise ZooLoadError(f"{source}: its init arguments do not build a {cls.__qualname__} ({type(err).__name__}: {first})") from None


#: lossless casts ``load_state_dict`` may do; any other dtype difference is refused, not cast silently
_WIDENINGS = {
    (torch.float16, torch.float32), (torch.float16, torch.float64), (torch.bfloat16, torch.float32),
    (torch.bfloat16, torch.float64), (torch.float32, torch.float64),
}


def _load_state_strict(model: ZooModule, state: dict[str, torch.Tensor], source: object) -> None:
    """Every published key present with the model's shape and dtype, nothing else (keys under
    ``hub_ignore`` may be absent). A float64 or integer tensor where the model holds float32 is
    refused rather than cast: it is not what the model published, and casting would hide that."""
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ZooLoadError(f"{source}: the weights are not a state dict (parameter names to tensors)")
    expected = set(model.hub_state_dict())
    found = {k for k in state if not (model.hub_ignore and k.startswith(model.hub_ignore))}
    if expected != found:
        missing, unexpected = sorted(expected - found), sorted(found - expected)
        raise ZooLoadError(f"{source}: weights do not match the model (missing {missing[:5]}, unexpected {unexpected[:5]})")
    reference = model.state_dict()
    for key in sorted(expected):
        got, want = state[key], reference[key]
        if got.shape != want.shape:
            raise ZooLoadError(f"{source}: weights do not fit the model: {key} has shape {tuple(got.shape)}, the model {tuple(want.shape)}")
        if got.dtype != want.dtype and (got.dtype, want.dtype) not in _WIDENINGS:
            raise ZooLoadError(f"{source}: weights do not fit the model: {key} is {got.dtype}, the model holds {want.dtype} (refused, not cast)")
    try:
        model.load_state_dict(state, strict=not model.hub_ignore)
    except RuntimeError as err:  # shape mismatch
        first = str(err).strip().splitlines()[-1].strip()
        raise ZooLoadError(f"{source}: weights do not fit the model: {first}") from None


class _Source:
    """A local hub folder or a Hub repo, read one file at a time."""

    def __init__(
        self,
        path_or_repo_id: str | Path,
        revision: str | None,
        cache_dir: str | Path | None,
        token: str | None,
        local_files_only: bool,
        force_download: bool,
    ) -> None:
        self.name = str(path_or_repo_id)
        path = Path(os.path.expanduser(self.name))
        self.local: Path | None = None
        if path.exists():
            if not path.is_dir():
                raise ZooLoadError(f"{self.name} is a file; zoo.load takes a hub folder or a repo id (zoo publish turns a .ckpt into one)")
            self.local = path
        elif isinstance(path_or_repo_id, Path) or not _REPO_ID.match(self.name):
            raise FileNotFoundError(f"{self.name}: not found (neither a local folder nor a Hub repo id like 'org/name')")
        self.hub_kwargs = {
            "revision": revision,
            "cache_dir": cache_dir,
            "token": token,
            "local_files_only": local_files_only,
            "force_download": force_download,
        }

    def __str__(self) -> str:
        return self.name

    def file(self, filename: str) -> Path | None:
        """The local path of ``filename``, downloading it from the Hub if needed; None if absent."""
        if self.local is not None:
            candidate = self.local / filename
            if not os.path.lexists(candidate):
                return None
            resolved = candidate.resolve()  # no file outside the folder is read, whatever links point to
            if not resolved.is_relative_to(self.local.resolve()):
                raise ZooLoadError(f"{self}: {filename} is a link to a file outside the folder; refusing to read it (copy the file in)")
            return resolved if resolved.is_file() else None
        try:
            return Path(hf_hub_download(self.name, filename, **self.hub_kwargs))
        except EntryNotFoundError:
            return None
        except LocalEntryNotFoundError:
            raise FileNotFoundError(f"{self.name}: not found locally and the Hub could not be reached (offline?)") from None
        except HfHubHTTPError as err:
            raise FileNotFoundError(f"{self.name}: not found on the Hub ({type(err).__name__})") from None

    def read_config(self) -> dict[str, Any]:
        path = self.file(CONFIG_NAME)
        if path is None:
            raise ZooLoadError(f"{self}: no {CONFIG_NAME}; this is not a balance-zoo hub folder")
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ZooLoadError(f"{self}: {CONFIG_NAME} is {size:,} bytes, more than the {MAX_CONFIG_BYTES:,} a config may have; not parsed")
        try:
            config = json.loads(path.read_bytes().decode("utf-8"))
        except UnicodeDecodeError as err:
            raise ZooLoadError(f"{self}: {CONFIG_NAME} is not UTF-8 text ({err.reason} at byte {err.start})") from None
        except RecursionError:
            raise ZooLoadError(f"{self}: {CONFIG_NAME} nests too deeply to be a config") from None
        except ValueError as err:  # JSONDecodeError, or an integer literal past Python's digit limit
            raise ZooLoadError(f"{self}: {CONFIG_NAME} is not valid JSON ({err})") from None
        if not isinstance(config, dict):
            raise ZooLoadError(f"{self}: {CONFIG_NAME} holds a JSON {type(config).__name__}, not an object; this is not a balance-zoo hub folder")
        if "architecture" not in config:
            raise ZooLoadError(f"{self}: {CONFIG_NAME} has no 'architecture'; this is not a balance-zoo hub folder")
        return config

    def read_weights(self, *, allow_pickle: bool, map_location: str) -> dict[str, torch.Tensor]:
        path = self.file(WEIGHTS_NAME)
        if path is not None:
            try:
                return load_file(str(path), device=map_location)
            except (SafetensorError, OSError, ValueError) as err:
                raise ZooLoadError(f"{self}: {WEIGHTS_NAME} is corrupted or truncated ({err})") from None
        pickled = next((p for p in map(self.file, PICKLE_NAMES) if p is not None), None)
        if pickled is None:
            raise ZooLoadError(f"{self}: no {WEIGHTS_NAME} found")
        if not allow_pickle:
            raise UnsafeCheckpointError(
                f"{self}: holds only pickled weights ({pickled.name}), which can run code when loaded; "
                f"pass allow_pickle=True to read them with torch.load(weights_only=True) if you trust the source"
            )
        _require_safe_torch()
        try:
            obj = torch.load(pickled, map_location=map_location, weights_only=True)
        except Exception as err:  # noqa: BLE001 - an unpickling refusal or a corrupt file: both are bad input
            first = (str(err).strip().splitlines() or [""])[0][:200]
            raise ZooLoadError(f"{self}: {pickled.name} could not be read safely ({type(err).__name__}: {first})") from None
        return obj.get("state_dict", obj) if isinstance(obj, dict) else obj  # checked by _load_state_strict


# --------------------------------------------------------------------------- checkpoints
def module_from_checkpoint(ckpt_path: str | Path, expected_class: type | None = None) -> ZooModule:
    """Rebuild a ZooModule from a Lightning checkpoint, read with ``weights_only=True``.

    The class comes from the registry through the ``zoo`` record that :class:`ZooModule`
    writes into every checkpoint, so a checkpoint of another class, or not of this zoo at
    all, is refused with a clear error instead of loading half its keys. The record's training
    config and provenance travel on to :meth:`ZooModule.save_pretrained`.
    """
    path = fetch_checkpoint(ckpt_path)
    ckpt = read_checkpoint(path, name=str(ckpt_path))
    record, hparams = ckpt.get("zoo"), ckpt.get("hyper_parameters", {})
    if not isinstance(record, dict) or "state_dict" not in ckpt:
        raise ZooLoadError(f"{ckpt_path}: not a balance-zoo checkpoint (no 'zoo' record); train it with zoo fit")
    if not isinstance(hparams, dict):
        raise ZooLoadError(f"{ckpt_path}: its hyper_parameters are a {type(hparams).__name__}, not a mapping of init arguments")
    cls = _registered_class(record, expected_class, ckpt_path)
    model = _build(cls, {k: v for k, v in hparams.items() if not str(k).startswith("_")}, ckpt_path)
    _load_state_strict(model, ckpt["state_dict"], ckpt_path)
    config, recorded = record.get("training_config"), record.get("zoo_provenance")
    model._zoo_run = {
        "training_config": config if isinstance(config, str) else None,
        "seed": recorded.get("seed") if isinstance(recorded, dict) else None,
        "provenance": recorded if isinstance(recorded, dict) else None,
    }
    return model.eval()


_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_SAFE_NAME = re.compile(r"^[\w][\w.-]*$")


def fetch_checkpoint(ckpt_path: str | Path) -> Path:
    """The local file behind a checkpoint path or URL, so every checkpoint meets :func:`read_checkpoint`.

    A ``file://`` URL is its local path; ``http(s)://`` and other fsspec URLs (``s3://`` ...) are
    copied into a temporary folder removed at exit. Lightning itself would unpickle an ``http``
    checkpoint with ``weights_only=False``; the zoo hands Lightning the checked local copy instead.
    """
    text = str(ckpt_path)
    if not _URL.match(text):
        path = Path(os.path.expanduser(text))
    elif urlsplit(text).scheme.lower() == "file":
        path = Path(urllib.request.url2pathname(urlsplit(text).path))
    else:
        path = _download(text)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {text} not found")
    return path


def _download(url: str) -> Path:
    """``url`` copied to a fresh temporary folder (removed when the process exits)."""
    folder = Path(tempfile.mkdtemp(prefix="zoo-ckpt-"))
    atexit.register(shutil.rmtree, folder, True)
    name = Path(urlsplit(url).path).name
    target = folder / (name if _SAFE_NAME.match(name) else "checkpoint.ckpt")
    try:
        if urlsplit(url).scheme.lower() in ("http", "https"):
            source = urllib.request.urlopen(url, timeout=60)
        else:
            import fsspec

            source = fsspec.open(url, "rb").open()
        with source, target.open("wb") as out:
            shutil.copyfileobj(source, out)
    except (OSError, ValueError, ImportError) as err:  # URLError and HTTPError are OSErrors
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise ZooLoadError(f"checkpoint {url} could not be downloaded ({type(err).__name__}: {first}); download it and pass the local path") from None
    return target


#: below this, torch.load(weights_only=True) can be made to run code (CVE-2026-24747)
SAFE_TORCH = (2, 10)


def _require_safe_torch() -> None:
    """Refuse to unpickle anything on a torch whose ``weights_only=True`` gate can be bypassed."""
    if torch.torch_version.TorchVersion(str(torch.__version__)) < SAFE_TORCH:
        raise ZooLoadError(
            f"torch {torch.__version__} can be tricked into running code by a checkpoint even with weights_only=True "
            f"(CVE-2026-24747); upgrade to torch>={'.'.join(map(str, SAFE_TORCH))} to read checkpoints"
        )


def read_checkpoint(path: Path, *, name: str | None = None) -> dict[str, Any]:
    """A Lightning checkpoint read with ``torch.load(weights_only=True)``, memory-mapped (the weights
    are not read until used); a pickle that would run code, a legacy or corrupt file is a ZooLoadError."""
    name = name or str(path)
    _require_safe_torch()
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError:
        raise ZooLoadError(
            f"{name}: not a readable checkpoint: torch.load(weights_only=True) refused it (it unpickles objects "
            f"other than tensors and plain data, which could run code)"
        ) from None
    except Exception as err:  # noqa: BLE001 - a legacy, truncated or corrupt file: bad input either way
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise ZooLoadError(f"{name}: not a readable checkpoint ({type(err).__name__}: {first})") from None
    if not isinstance(ckpt, dict):
        raise ZooLoadError(f"{name}: not a Lightning checkpoint (it holds a {type(ckpt).__name__}, not a dict)")
    return ckpt
