"""Config helpers shared by ``reconstruct``, ``evaluate`` and ``train-prior`` (OmegaConf)."""
from __future__ import annotations

from typing import Iterable

from omegaconf import DictConfig, OmegaConf

from .errors import UnknownNameError


def check_keys(user, base, allow_free: Iterable[str] = (), prefix: str = ""):
    """Raise :class:`UnknownNameError` for keys of ``user`` missing from ``base`` (recursively).

    Sections named in ``allow_free`` (dotted paths, e.g. ``"problem"`` or ``"solver.options"``) and sections whose
    default is an empty mapping accept any keys (e.g. model kwargs, sampler options); those are validated by
    whoever consumes them.
    """
    if not isinstance(user, DictConfig):
        return
    for k in user.keys():
        path = f"{prefix}{k}"
        if k not in base:
            valid = ", ".join(sorted(str(b) for b in base.keys()))
            where = f" under {prefix[:-1]}" if prefix else ""
            raise UnknownNameError(f"unknown config key {path!r}; valid keys{where}: {valid}")
        if path in allow_free:
            continue
        sub_u, sub_b = user[k], base[k]
        if isinstance(sub_u, DictConfig) and isinstance(sub_b, DictConfig) and len(sub_b) > 0:
            check_keys(sub_u, sub_b, allow_free, prefix=f"{path}.")


def to_dict(cfg) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)
