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
    from zoo.registry import list_entries

    for entry in list_entries():
        entry.load_target()
        for path in entry.module_paths:
            entry.load_module_class(path)


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
