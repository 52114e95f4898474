"""The task registry: :class:`Problem`, :func:`register_task`, :func:`check_options` and the lookups (the package
imports every task). Each task registers its option defaults and, with the sampler options' mechanism
(:class:`~invsolve.samplers.knobs.Knob`), what each option accepts; :func:`check_options` validates a ``problem:``
section before anything is built, unknown options and out-of-range values being errors."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import torch

from ..errors import InvalidValueError, UnknownNameError
from ..operators.base import Operator
from ..samplers.knobs import Knob


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
        joint: the batch is one object (the slices of a volume, solved together): ``invsolve reconstruct`` then
            gives slice ``b`` the seed ``seed + b`` (its place in the object) instead of every image ``seed``.
    """

    operator: Operator
    y: torch.Tensor
    x_true: Optional[torch.Tensor]
    names: List[str]
    meta: Dict[str, Any] = field(default_factory=dict)
    data_range: Optional[float] = None
    default_baselines: List[str] = field(default_factory=lambda: ["adjoint"])
    joint: bool = False
    sigma_y: Optional[float] = None


@dataclass
class TaskSpec:
    name: str
    build: Callable[..., Problem]
    defaults: Dict[str, Any]
    summary: str = ""
    knobs: Dict[str, Knob] = field(default_factory=dict)

    def describe(self) -> Dict[str, Dict[str, Any]]:
        """Option -> ``{"default", "accepts", "doc"}`` (what ``invsolve list --task NAME`` prints)."""
        return {k: {"default": v, "accepts": self.knobs[k].describe() if k in self.knobs else "not declared",
                    "doc": self.knobs[k].doc if k in self.knobs else ""} for k, v in sorted(self.defaults.items())}


_TASKS: Dict[str, TaskSpec] = {}


def register_task(name: str, defaults: Dict[str, Any], summary: str = "", knobs: Optional[Dict[str, Knob]] = None):
    """Decorator registering a problem builder; ``knobs`` declares what each option accepts (the defaults must
    pass their declarations; a default of ``None`` for a non-optional declaration makes the option required)."""
    knobs = dict(knobs or {})

    def deco(fn):
        extra = sorted(set(knobs) - set(defaults))
        if extra:
            raise TypeError(f"task {name!r}: knobs declared for options that have no default: {extra}")
        for k, v in defaults.items():
            if k in knobs and not (v is None and not knobs[k].optional):
                knobs[k].check(v, f"default of task {name!r}: problem.{k}")
        _TASKS[name] = TaskSpec(name, fn, dict(defaults), summary, knobs)
        return fn

    return deco


def get_task(name: str) -> TaskSpec:
    if name not in _TASKS:
        raise UnknownNameError(f"unknown task {name!r}; available: {', '.join(sorted(_TASKS))}")
    return _TASKS[name]


def available_tasks() -> Dict[str, str]:
    return {k: v.summary for k, v in sorted(_TASKS.items())}


def check_options(options: Dict[str, Any], prefix: str = "problem.") -> Dict[str, Any]:
    """Validate ``{"task": name, **options}`` without building anything; returns the task's full options (defaults
    filled in, values normalised by their declarations). Unknown tasks and options raise
    :class:`UnknownNameError` with the valid list, values outside what an option accepts
    :class:`~invsolve.errors.InvalidValueError` naming ``problem.<option>``, the value and the accepted range."""
    opts = dict(options)
    name = opts.pop("task", None)
    if name is None:
        raise UnknownNameError(f"{prefix}task is required; available tasks: {', '.join(sorted(available_tasks()))}")
    spec = get_task(name)
    unknown = sorted(set(opts) - set(spec.defaults))
    if unknown:
        raise UnknownNameError(f"unknown option(s) {[prefix + u for u in unknown]} for task {name!r}; valid: "
                               f"{', '.join(prefix + k for k in sorted(spec.defaults))}")
    kw = dict(spec.defaults)
    for k, v in opts.items():
        kw[k] = spec.knobs[k].check(v, f"{prefix}{k}") if k in spec.knobs else v
    missing = [k for k, v in kw.items() if v is None and k in spec.knobs and not spec.knobs[k].optional]
    if missing:
        k = missing[0]
        raise InvalidValueError(f"{prefix}{k} is required for task {name!r}; expected {spec.knobs[k].describe()} "
                                f"({spec.knobs[k].doc})")
    return kw


def build_problem(options: Dict[str, Any]) -> Problem:
    """Build a problem from ``{"task": name, **options}`` (validated first by :func:`check_options`)."""
    kw = check_options(options)
    return get_task(options["task"]).build(**kw)
