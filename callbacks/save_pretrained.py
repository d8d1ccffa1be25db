"""``SavePretrained``: at the end of ``fit``, write the trained ZooModule as a hub folder.

A recipe that trains one model for another to load by path (MTARD's teachers, a WiSE-FT
endpoint) ends with this callback; the next run passes the folder to ``zoo.load``. Only rank 0
writes. Works on any :class:`zoo.hub.ZooModule`; a plain LightningModule has no
``save_pretrained`` and is refused at ``setup`` with the fix.

>>> callback = SavePretrained("teachers/clean")
>>> callback.dirpath
'teachers/clean'
"""

from __future__ import annotations

from lightning.pytorch import Callback, LightningModule, Trainer
from typing_extensions import override

from zoo.hub import ZooModule

__all__ = ["SavePretrained"]


class SavePretrained(Callback):
    """At the end of ``fit``, ``save_pretrained(dirpath)`` the ZooModule (rank 0 only).

    Args:
        dirpath: the folder to write (``model.safetensors``, ``config.json``, ``README.md``).
    """

    def __init__(self, dirpath: str) -> None:
        self.dirpath = dirpath

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not isinstance(pl_module, ZooModule):
            raise TypeError(
                f"SavePretrained needs a zoo.ZooModule (it calls save_pretrained), got {type(pl_module).__qualname__}; "
                "for a plain LightningModule use lightning's ModelCheckpoint"
            )

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.is_global_zero:
            pl_module.save_pretrained(self.dirpath)  # type: ignore[operator]
