"""The zoo's LightningCLI: any registered ZooModule and any LightningDataModule, by name or config.

``zoo fit|validate|test|predict`` and ``zoo reproduce`` both build it here, so a claim trains
exactly what a user's command line trains.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from typing import Any

__all__ = ["build_lightning_cli"]


def _import_all_entries() -> None:
    """Import every registered class and the datamodules, so LightningCLI resolves short names."""
    import zoo.datamodules  # noqa: F401
    from zoo.registry import SHARED_MODULES, list_entries

    for entry in list_entries():
        entry.load_target()
        for path in entry.module_paths:
            entry.load_module_class(path)
    for shared in SHARED_MODULES:
        shared.load()


def build_lightning_cli(args: Sequence[str], *, run: bool = True) -> Any:
    """The zoo's LightningCLI: any ZooModule and any LightningDataModule, by class name or config."""
    from lightning.pytorch import LightningDataModule
    from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

    from zoo.hub import ZooModule

    class ZooCLI(LightningCLI):
        def parse_arguments(self, parser: Any, args: Any) -> None:
            with warnings.catch_warnings():  # main() passes sys.argv[1:] on, which LightningCLI warns about
                warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
                super().parse_arguments(parser, args)
            _check_ckpt_path(self.config)  # before LightningCLI reads it, seeds or builds anything
            _check_registered_model(self.config)

        def after_instantiate_classes(self) -> None:
            """Hand the run's config (seed resolved) to the model: checkpoints keep it, zoo publish
            writes it as training_config.yaml, zoo verify retrains from it."""
            if not isinstance(self.model, ZooModule):
                return
            config = self.config.get(str(self.subcommand), self.config) if self.subcommand else self.config
            seed = config.get("seed_everything")
            try:
                text: str | None = _training_config(self._parser(self.subcommand).dump(config, skip_none=False))
            except Exception as err:  # noqa: BLE001 - a config jsonargparse cannot dump must not stop training
                warnings.warn(f"the run's config could not be recorded for training_config.yaml ({type(err).__name__}: {err})", stacklevel=2)
                text = None
            self.model.record_training_run(text, seed if isinstance(seed, int) and not isinstance(seed, bool) else None)

    _import_all_entries()
    return ZooCLI(
        ZooModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=list(args),
        run=run,
        parser_kwargs={"exit_on_error": False, "prog": "zoo"},
        save_config_kwargs={"overwrite": True},
        # in-process runs (reproduce, tests) write no config.yaml beside the caller
        save_config_callback=SaveConfigCallback if run else None,
    )


def _check_registered_model(config: Any) -> None:
    """Refuse, in one line and before anything is built, a ``--model`` the registry does not list
    (an abstract template such as ClassifierModule, a private base, a user's own ZooModule): what
    ``zoo fit`` trains must be publishable, and ``config.json`` can only name registered classes."""
    from zoo.registry import import_object, module_identity

    subcommand = config.get("subcommand")
    section = config[subcommand] if subcommand else config
    model = section.get("model") if section is not None else None
    path = model.get("class_path") if model is not None and hasattr(model, "get") else None
    if not isinstance(path, str):
        return
    from zoo.errors import UnknownEntryError

    try:
        module_identity(import_object(path))  # type: ignore[arg-type]
    except UnknownEntryError:
        raise UnknownEntryError(
            f"--model {path.rpartition('.')[2]}: not a registered zoo module, so what it trains could not be published; "
            f"pick an entry's module or a shared one (zoo list), or register it in zoo/registry.py"
        ) from None


def _training_config(dumped: str) -> str:
    """The dumped LightningCLI config minus what belongs to this machine or run, not the recipe:
    ``ckpt_path`` (a resumed run's file) and ``trainer.default_root_dir`` (where it wrote)."""
    import yaml

    config = yaml.safe_load(dumped)
    config.pop("ckpt_path", None)
    config.pop("config", None)
    if isinstance(config.get("trainer"), dict):
        config["trainer"].pop("default_root_dir", None)
    return yaml.safe_dump(config, sort_keys=False)


#: names Lightning resolves to checkpoints its own ModelCheckpoint wrote in this run's folder
_SPECIAL_CKPT_PATHS = ("best", "last", "hpc")
#: Lightning's model-registry form ("registry", "registry:name:version:v2"), matched as Lightning does
_REGISTRY = re.compile(r"^registry(:.*|$)", re.IGNORECASE)


def _check_ckpt_path(config: Any) -> None:
    """Gate ``--ckpt_path``: a missing, unsafe or unreadable file, or one of another class, ends in one line.

    Runs right after parsing, so the error comes before LightningCLI swaps in the checkpoint's
    own ``_class_path``, seeds, or builds a Trainer (whose warnings would bury it). A URL
    (``http(s)://``, ``file://``, any fsspec protocol) is fetched to a local file first and the
    config is pointed at that file, so Lightning never unpickles the URL itself (it would, with
    ``weights_only=False``, for ``http``): every checkpoint passes ``torch.load(weights_only=True)``.
    """
    subcommand = config.get("subcommand")
    section = config[subcommand] if subcommand else None
    ckpt_path = section.get("ckpt_path") if section is not None else None
    if not ckpt_path or ckpt_path in _SPECIAL_CKPT_PATHS:
        return
    from zoo.errors import WrongClassError, ZooLoadError
    from zoo.hub import fetch_checkpoint, read_checkpoint

    if _REGISTRY.match(str(ckpt_path)):
        raise ZooLoadError(
            f"--ckpt_path {ckpt_path}: Lightning's model registry downloads and loads checkpoints past the zoo's "
            f"weights_only=True check; download it (litmodels.download_model) and pass the local .ckpt path"
        )
    path = fetch_checkpoint(ckpt_path)
    ckpt = read_checkpoint(path, name=str(ckpt_path))
    section["ckpt_path"] = str(path)  # Lightning reads the checked local file, never the URL
    model = section.get("model")
    wanted = model.get("class_path") if model is not None and hasattr(model, "get") else None
    record, hparams = ckpt.get("zoo"), ckpt.get("hyper_parameters", {})
    if not isinstance(hparams, dict):  # LightningCLI reads them next, as a mapping
        raise ZooLoadError(f"{ckpt_path}: its hyper_parameters are a {type(hparams).__name__}, not a mapping of init arguments")
    saved = (record.get("zoo_class") if isinstance(record, dict) else None) or hparams.get("_class_path")
    # class names, not import paths: a module that moved still holds the same class
    if isinstance(wanted, str) and isinstance(saved, str) and saved.rpartition(".")[2] != wanted.rpartition(".")[2]:
        raise WrongClassError(  # LightningCLI would otherwise quietly swap in the saved class
            f"{ckpt_path} holds a {saved.rpartition('.')[2]}, not a {wanted.rpartition('.')[2]}; "
            f"pick the matching --model ({saved})"
        )
