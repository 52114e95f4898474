"""User-facing error types.

Every error a user can cause (bad shapes, unknown names, missing files) is raised as an
:class:`InvsolveError` subclass so that the CLI can print it without a traceback.
"""
from __future__ import annotations


class InvsolveError(Exception):
    """Base class for errors caused by user input; the CLI prints the message only."""


class ShapeError(InvsolveError, ValueError):
    """A tensor does not have the shape an operator, prior or sampler expects."""


class DTypeError(InvsolveError, TypeError):
    """A tensor has the wrong dtype (e.g. real data for a complex operator)."""


class InvalidValueError(InvsolveError, ValueError):
    """A value is outside what an argument, option or config key accepts (the message names both)."""


class UnknownNameError(InvsolveError, KeyError):
    """An unknown prior / sampler / operator / config key was requested."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it verbatim
        return str(self.args[0]) if self.args else ""


class MissingDependencyError(InvsolveError, ImportError):
    """An optional dependency is required for the requested feature."""


class InputFileError(InvsolveError, FileNotFoundError):
    """An input file is missing or cannot be read."""


class ConfigError(InvsolveError, ValueError):
    """A config file is malformed or incomplete (empty, not a mapping, a required key missing)."""


class OutputError(InvsolveError, OSError):
    """An output location cannot be used: not writable, already holding other results, or inside the package."""


class DeviceError(InvalidValueError):
    """A device that is not a torch device, or one this machine does not have."""


def missing_extra(package: str, extra: str, feature: str) -> MissingDependencyError:
    return MissingDependencyError(
        f"{feature} needs the optional package '{package}'. "
        f"Install it with: pip install 'invsolve[{extra}]'  (or: pip install {package})"
    )
