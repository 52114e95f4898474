"""Checks that need no computation, run before any work by :func:`invsolve.solve`, ``invsolve reconstruct`` and
``invsolve train-prior``: seeds, devices, positive counts, output directories, and whether a method applies to an
operator. Each raises an :class:`~invsolve.errors.InvsolveError` subclass whose one-line message names the argument
(``where``), the value and what is accepted.
"""
from __future__ import annotations

import numbers
import os
import tempfile
from pathlib import Path
from typing import Any, List, Optional, Sequence, Union

import torch

from .errors import DeviceError, InvalidValueError, OutputError, ShapeError

MAX_SEED = 2**63 - 1


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def check_count(value: Any, where: str, low: int = 1) -> int:
    """An integer ``>= low`` (``num_samples``, ``steps``); integral floats such as ``3.0`` are accepted."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not _is_int(value) or value < low:
        raise InvalidValueError(f"{where}={value!r} is not accepted; expected an integer >= {low}")
    return int(value)


def check_seed(value: Any, where: str = "seed") -> int:
    """A seed: an integer in ``[0, 2**63 - 1]``."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not _is_int(value) or not 0 <= value <= MAX_SEED:
        raise InvalidValueError(f"{where}={value!r} is not accepted; expected an integer in [0, 2**63 - 1]")
    return int(value)


def check_seeds(value: Any, batch: Optional[int], where: str = "seed") -> Union[int, List[int]]:
    """One seed, or a list of one seed per batch item (``batch``: the number of items, ``None`` if unknown)."""
    if isinstance(value, (list, tuple)):
        seeds = [check_seed(s, f"{where}[{i}]") for i, s in enumerate(value)]
        if batch is not None and len(seeds) != batch:
            raise ShapeError(f"{where} is a list of {len(seeds)} seeds but y has a batch of {batch}; give one seed "
                             f"per item or a single int")
        return seeds
    if isinstance(value, torch.Tensor) or hasattr(value, "tolist") and not _is_int(value):
        return check_seeds(value.tolist(), batch, where)
    return check_seed(value, where)


def check_device(device: Any, where: str = "device") -> torch.device:
    """``None`` (CUDA when available, else CPU), or a torch device this machine has."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    accepted = "None (CUDA when available), 'cpu', 'cuda', 'cuda:N' or 'mps'"
    if isinstance(device, torch.device):
        dev = device
    elif isinstance(device, str) or _is_int(device):
        try:
            dev = torch.device(device)
        except (RuntimeError, ValueError, TypeError):
            raise DeviceError(f"{where}={device!r} is not a torch device; expected {accepted}") from None
    else:
        raise DeviceError(f"{where}={device!r} is not a torch device; expected {accepted}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"{where}={device!r} but this machine has no usable CUDA device (torch "
                              f"{torch.__version__}, CUDA build {torch.version.cuda or 'none'}); use {where}='cpu' "
                              f"or None")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise DeviceError(f"{where}={device!r} but this machine has {n} CUDA device(s): cuda:0 .. cuda:{n - 1}")
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise DeviceError(f"{where}={device!r} but MPS is not available on this machine; use {where}='cpu' "
                              f"or None")
    elif dev.type != "cpu":
        raise DeviceError(f"{where}={device!r}: invsolve runs on {accepted}")
    return dev


def writable_dir(path: Union[str, Path], where: str) -> Path:
    """Check (creating nothing) that directory ``path`` exists and is writable or can be created; returns it.

    The nearest existing ancestor must be a directory in which a file can be created (tried with a temporary
    file that is removed at once: permission bits alone do not say, e.g. for root or on read-only mounts).
    """
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise OutputError(f"{where}={str(path)!r} is a file, not a directory")
    anc = p
    while not anc.exists():
        anc = anc.parent
    if not anc.is_dir():
        raise OutputError(f"{where}={str(path)!r} cannot be created: {str(anc)!r} is a file")
    try:
        fd, probe = tempfile.mkstemp(prefix=".invsolve-write-test-", dir=anc)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(f"{where}={str(path)!r} is not writable ({str(anc)!r}: {e.strerror or e}); choose a "
                          f"writable directory") from None
    return p


def inside(path: Union[str, Path], root: Union[str, Path]) -> bool:
    """Whether ``path`` is ``root`` or lies under it (symlinks resolved)."""
    p, r = Path(path).expanduser().resolve(), Path(root).resolve()
    return p == r or r in p.parents


def package_dir() -> Path:
    """The installed ``invsolve`` package directory (nothing is ever written there at run time)."""
    return Path(__file__).resolve().parent


def method_problem(name: str, operator, knobs: Optional[dict] = None) -> Optional[str]:
    """Why method ``name`` (with resolved ``knobs``) cannot run on ``operator``, the prior aside, or ``None``.

    Covers the operator requirements of the sampler registry (a linear operator with an adjoint, options that need
    one) and methods that call an operator method (``fbp`` needs ``operator.fbp``).
    """
    import dataclasses

    from .errors import InvsolveError
    from .samplers.base import check_compatible, get_sampler

    spec = get_sampler(name)
    try:  # the prior is checked where it is loaded
        check_compatible(dataclasses.replace(spec, needs_prior=False), operator, None, knobs)
    except InvsolveError as e:
        return str(e)
    if name == "fbp" and not hasattr(operator, "fbp"):
        return (f"'fbp' (filtered back-projection) needs a CT operator; {type(operator).__name__} has no fbp(); "
                f"classical methods for it: {', '.join(applicable_methods(operator))}")
    return None


def applicable_methods(operator, classical_only: bool = True) -> List[str]:
    """Registered classical (``classical_only``) or all method names that can run on ``operator``."""
    from .samplers.base import available_samplers, get_sampler

    out = []
    for n in available_samplers():
        if classical_only and get_sampler(n).needs_prior:
            continue
        if n == "fbp" and not hasattr(operator, "fbp"):
            continue
        if get_sampler(n).requires == "linear" and not getattr(operator, "is_linear", False):
            continue
        out.append(n)
    return out


def nested_sampler(spec, knobs: dict, where: str) -> None:
    """Options that name another sampler (DDS ``init`` with ``init_knobs``) must name a registered classical one,
    with options it accepts. ``where`` prefixes the option in messages (``"sampler 'dds': "``,
    ``"solver.options.dds."``)."""
    from .errors import UnknownNameError
    from .samplers.base import available_samplers, get_sampler, resolve_knobs

    init = knobs.get("init")
    if spec.knob_specs.get("init") is None or spec.knob_specs["init"].kind != "any" or init is None:
        return
    classical = [n for n in available_samplers() if not get_sampler(n).needs_prior]
    if not isinstance(init, str) or init not in classical:
        kind = UnknownNameError if isinstance(init, str) and init not in available_samplers() else InvalidValueError
        raise kind(f"{where}init={init!r} is not accepted; expected None (start from noise) or a classical sampler:"
                   f" {', '.join(classical)}")
    try:
        resolve_knobs(get_sampler(init), dict(knobs.get("init_knobs") or {}))
    except (InvalidValueError, UnknownNameError) as e:
        raise type(e)(f"{where}init_knobs: {e}") from None


def seeds_for(seed: Union[int, Sequence[int]], batch: int, num_samples: int) -> List[int]:
    """Generator seed of item ``b``, sample ``s``: ``seed[b] + s`` for a list (one seed per item, so an item's
    draws depend on its own seed only), ``seed + b * num_samples + s`` for an int."""
    if isinstance(seed, (list, tuple)):
        return [int(s) + k for s in seed for k in range(num_samples)]
    return [int(seed) + i for i in range(batch * num_samples)]
