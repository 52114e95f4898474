"""Problem builders for ``invsolve reconstruct`` and ``invsolve evaluate``.

A *task* turns the ``problem:`` section of a config into a :class:`Problem`: the operator, the measurement and
(when known) the ground truth. Each task registers its option defaults; unknown options are errors.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import torch

from ..errors import UnknownNameError
from ..operators.base import Operator


@dataclass
class Problem:
    """An inverse problem instance.

    Attributes:
        operator: the forward model.
        y: measurements ``(B, ...)``.
        x_true: ground truth ``(B, ...)`` in the operator domain, or ``None`` for real data.
        names: one label per batch item.
        meta: facts to save with results (mask, kernel, seeds, noise level, source file, ...).
        data_range: value range for metrics (``None``: per-image peak of the truth).
        default_baselines: classical methods shown next to the reconstruction.
        sigma_y: noise std of ``y`` in its units when known (simulated data: ``problem.noise_sigma``, 0 when
            noiseless), ``None`` when unknown (measured data without ``problem.noise_sigma``); passed to
            :func:`invsolve.solve` as ``sigma_y``.
    """

    operator: Operator
    y: torch.Tensor
    x_true: Optional[torch.Tensor]
    names: List[str]
    meta: Dict[str, Any] = field(default_factory=dict)
    data_range: Optional[float] = None
    default_baselines: List[str] = field(default_factory=lambda: ["adjoint"])
    sigma_y: Optional[float] = None


@dataclass
class TaskSpec:
    name: str
    build: Callable[..., Problem]
    defaults: Dict[str, Any]
    summary: str = ""


_TASKS: Dict[str, TaskSpec] = {}


def register_task(name: str, defaults: Dict[str, Any], summary: str = ""):
    def deco(fn):
        _TASKS[name] = TaskSpec(name, fn, dict(defaults), summary)
        return fn

    return deco


def _load_builtin():
    for mod in ("mri", "ct", "imaging", "ns", "blackbox"):
        try:
            importlib.import_module(f"{__package__}.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"{__package__}.{mod}":
                raise


def get_task(name: str) -> TaskSpec:
    _load_builtin()
    if name not in _TASKS:
        raise UnknownNameError(f"unknown task {name!r}; available: {', '.join(sorted(_TASKS))}")
    return _TASKS[name]


def available_tasks() -> Dict[str, str]:
    _load_builtin()
    return {k: v.summary for k, v in sorted(_TASKS.items())}


def build_problem(options: Dict[str, Any]) -> Problem:
    """Build a problem from ``{"task": name, **options}``; unknown options raise with the valid list."""
    opts = dict(options)
    name = opts.pop("task", None)
    if name is None:
        raise UnknownNameError(f"problem.task is required; available tasks: {', '.join(sorted(available_tasks()))}")
    spec = get_task(name)
    unknown = sorted(set(opts) - set(spec.defaults))
    if unknown:
        raise UnknownNameError(f"unknown option(s) {['problem.' + u for u in unknown]} for task {name!r}; valid: "
                               f"{', '.join('problem.' + k for k in sorted(spec.defaults))}")
    kw = dict(spec.defaults)
    kw.update(opts)
    return spec.build(**kw)
