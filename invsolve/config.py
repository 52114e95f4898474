"""Config helpers shared by ``reconstruct``, ``evaluate`` and ``train-prior`` (OmegaConf)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf

from .errors import ConfigError, InputFileError, UnknownNameError


def load_mapping(path, what: str, expected: str) -> DictConfig:
    """Read a YAML file that must hold a non-empty mapping; ``what`` names the file kind ("config", "recipe") and
    ``expected`` says what it must contain, for the one-line :class:`ConfigError` of an empty file, a top-level
    list or scalar, or invalid YAML."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise InputFileError(f"{what} {str(path)!r} not found")
    try:
        cfg = OmegaConf.load(p)
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" (line {where.line + 1}, column {where.column + 1})" if where is not None else ""
        raise ConfigError(f"{what} {str(path)!r} is not valid YAML{line}: {getattr(e, 'problem', None) or e}") \
            from None
    except Exception as e:  # noqa: BLE001 - OmegaConf rejects some YAML (e.g. non-string keys)
        raise ConfigError(f"{what} {str(path)!r} cannot be read: {str(e).splitlines()[0]}") from None
    if isinstance(cfg, ListConfig):
        raise ConfigError(f"{what} {str(path)!r} holds a list at the top level; expected a mapping with {expected}")
    if len(cfg) == 0:
        raise ConfigError(f"{what} {str(path)!r} is empty; expected a mapping with {expected}")
    return cfg


def parse_overrides(overrides: Sequence[str]) -> DictConfig:
    """``key=value`` strings -> a config; malformed ones raise :class:`ConfigError` naming them."""
    bad = [o for o in overrides if "=" not in o or o.startswith("=")]
    if bad:
        raise ConfigError(f"overrides must look like key=value, got {bad}")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except Exception as e:  # noqa: BLE001 - YAML errors in a value, e.g. an unclosed list
        raise ConfigError(f"cannot parse the overrides {list(overrides)}: {str(e).splitlines()[0]}") from None


def require_mapping(cfg, key: str, what: str = "config") -> None:
    """``cfg[key]`` must be a mapping (a section), else :class:`ConfigError`."""
    v = cfg.get(key) if isinstance(cfg, DictConfig) else None
    if v is not None and not isinstance(v, DictConfig):
        raise ConfigError(f"{key}={OmegaConf.to_container(v) if isinstance(v, ListConfig) else v!r} is not accepted "
                          f"in the {what}; expected a section (a mapping of keys)")


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
