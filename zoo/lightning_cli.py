"""The zoo's LightningCLI: any registered ZooModule and any LightningDataModule, by name or config.

``zoo fit|validate|test|predict`` and ``zoo reproduce`` both build it here, so a claim trains
exactly what a user's command line trains.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
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


_SPECIAL_CKPT_PATHS = ("best", "last", "hpc")


def _check_ckpt_path(config: Any) -> None:
    """Refuse a missing, unsafe or unreadable ``--ckpt_path``, or one of another class, in one line.

    Runs right after parsing, so the error comes before LightningCLI swaps in the checkpoint's
    own ``_class_path``, seeds, or builds a Trainer (whose warnings would bury it), and before
    the Trainer reads the file with ``weights_only=False``: a file that does not load with
    ``weights_only=True`` never gets that far.
    """
    subcommand = config.get("subcommand")
    ckpt_path = config[subcommand].get("ckpt_path") if subcommand else None
    if not ckpt_path or ckpt_path in _SPECIAL_CKPT_PATHS or str(ckpt_path).startswith("registry") or "://" in str(ckpt_path):
        return
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {ckpt_path} not found")
    import torch

    from zoo.errors import WrongClassError, ZooLoadError

    try:  # mmap: only the small records are read, not the weights
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001 - unpickling refused, legacy or corrupt file: bad input
        raise ZooLoadError(f"{path}: not a readable checkpoint ({type(err).__name__} under weights_only=True)") from None
    model = config[subcommand].get("model")
    wanted = model.get("class_path") if model is not None and hasattr(model, "get") else None
    record = ckpt.get("zoo") if isinstance(ckpt, dict) else None
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    saved = (record or {}).get("zoo_class") or (hparams or {}).get("_class_path")
    if wanted and saved and saved != wanted:  # LightningCLI would otherwise quietly swap in the saved class
        raise WrongClassError(
            f"{path} holds a {saved.rpartition('.')[2]}, not a {wanted.rpartition('.')[2]}; "
            f"pick the matching --model ({saved})"
        )
