"""balance-zoo: learning-balance methods as Lightning modules, callbacks, losses and optimizers.

>>> import zoo
>>> [e.name for e in zoo.list_entries()][:2]
['anyloss', 'neural-collapse']
"""

from zoo.errors import UnknownEntryError, UnsafeCheckpointError, WrongClassError, ZooError, ZooLoadError
from zoo.hub import ZooModule, load
from zoo.registry import Entry, get_entry, list_entries

__all__ = [
    "Entry",
    "ZooModule",
    "load",
    "list_entries",
    "get_entry",
    "ZooError",
    "ZooLoadError",
    "UnknownEntryError",
    "UnsafeCheckpointError",
    "WrongClassError",
]
