"""Old import paths kept for one release: names that moved, served with a DeprecationWarning."""
from __future__ import annotations

import importlib
import warnings
from typing import Dict, Union


def moved(old: str, new: Union[str, Dict[str, str]]):
    """A module ``__getattr__`` for the module ``old`` whose names moved: ``new`` is the module path they moved to,
    or a mapping ``{old name: "module" or "module:new name"}``; each access warns with a :class:`DeprecationWarning`
    naming where to import it from."""

    def __getattr__(name: str):
        target = new if isinstance(new, str) else new.get(name)
        if target is None or name.startswith("__"):
            raise AttributeError(f"module {old!r} has no attribute {name!r}")
        module, _, attr = target.partition(":")
        value = getattr(importlib.import_module(module), attr or name)
        warnings.warn(f"{old}.{name} is deprecated (kept for one release); use {module}.{attr or name}",
                      DeprecationWarning, stacklevel=2)
        return value

    return __getattr__
