"""Sampler contract and registry.

A sampler is a function::

    run(prior, operator, y, *, generators, progress=False, **knobs) -> SamplerOutput

* ``prior``: a :class:`~invsolve.priors.Prior` (``None`` for classical methods);
* ``operator``: an :class:`~invsolve.operators.base.Operator`; ``y``: measurements ``(B, ...)`` already
  validated and on the operator's device;
* ``generators``: one ``torch.Generator`` per batch item — every random draw of item ``b`` comes from
  ``generators[b]`` so that a sample never depends on the rest of its batch;
* ``knobs``: the sampler's options; its defaults are the function's keyword-only parameters.

It returns operator-domain reconstructions. :func:`register_sampler` records the function with what each option
accepts (:mod:`.knobs`) and what the sampler requires (prior, linear operator, operator method, latent priors), and
returns the function wrapped so that every call validates its options before any work and reports the network
evaluations it made: the loop receives the prior behind a :class:`PriorView` that counts them (one per batched call
of ``eps``, ``tweedie`` or ``denoise``) and can chunk them (:meth:`PriorView.chunked`); samplers do not count.
"""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from ..errors import DTypeError, InvalidValueError, InvsolveError, ShapeError, UnknownNameError
from .knobs import Knob

REQUIRES = ("linear", "differentiable", "forward")


class NonFiniteEnsembleError(InvsolveError, FloatingPointError):
    """A forward-model output or a particle (EnKG) / perturbed input (DPS-GSG) became NaN/Inf."""


@dataclass
class SamplerOutput:
    """What a sampler returns.

    Attributes:
        x: reconstructions in the operator domain, ``(B, *operator.input_shape)``.
        nfe: network function evaluations (one per batched network call; 0 for classical methods), set by the
            registered wrapper from the prior's :class:`PriorView`.
        info: extra diagnostics (e.g. CG residual norms, the initial estimate), JSON-friendly where possible.
    """

    x: torch.Tensor
    nfe: int = 0
    info: Dict[str, Any] = field(default_factory=dict)


@dataclass
class SamplerSpec:
    """A registered sampler: its function, options and requirements.

    Attributes:
        defaults: from the function's signature (every keyword-only parameter but ``generators`` and ``progress``).
        knob_specs: for each option, what it accepts and means (:class:`~.knobs.Knob`).
        requires: ``"linear"`` (needs ``adjoint``), ``"differentiable"`` (autograd through ``A``) or ``"forward"``
            (black-box forward evaluations only).
        needs_prior: a diffusion prior is required (``False``: classical method).
        latent_ok: runs on latent priors too.
        adjoint_knobs: for non-``"linear"`` samplers with options that need the adjoint (an ``Aᵀy`` start, a gluing
            term): resolved knobs -> a phrase naming the option that does (``None``: they run on any operator).
        operator_method: a method the operator must have (e.g. ``"fbp"``).
        nfe: ``(resolved knobs, prior) ->`` the documented network evaluations of one run (``None``: not declared).
        independent_items: items of a batch are independent problems (``False``: the batch is one volume).
    """

    name: str
    fn: Callable[..., SamplerOutput]
    defaults: Dict[str, Any]
    knob_specs: Dict[str, Knob]
    requires: str = "linear"
    needs_prior: bool = True
    latent_ok: bool = False
    summary: str = ""
    adjoint_knobs: Optional[Callable[[Dict[str, Any]], Optional[str]]] = None
    operator_method: Optional[str] = None
    nfe: Optional[Callable[[Dict[str, Any], Any], int]] = None
    independent_items: bool = True

    def knobs(self) -> List[str]:
        return sorted(self.defaults)

    def describe(self) -> Dict[str, Dict[str, Any]]:
        """Option -> ``{"default", "accepts", "doc"}`` (what ``invsolve list --sampler NAME`` prints)."""
        return {k: {"default": self.defaults[k], "accepts": self.knob_specs[k].describe(),
                    "doc": self.knob_specs[k].doc} for k in self.knobs()}


_REGISTRY: Dict[str, SamplerSpec] = {}
_NOT_KNOBS = ("generators", "progress")


def signature_defaults(fn: Callable) -> Dict[str, Any]:
    """Keyword-only parameters of a sampler function with their defaults (``generators``/``progress`` excluded)."""
    out = {}
    for p in inspect.signature(fn).parameters.values():
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in _NOT_KNOBS:
            if p.default is inspect.Parameter.empty:
                raise TypeError(f"sampler option {p.name!r} of {fn.__name__} needs a default")
            out[p.name] = p.default
    return out


# ---------------------------------------------------------------------------------------------- the prior view
class PriorView:
    """A prior as a sampler sees it: every attribute of ``prior``, with its network calls counted and optionally
    chunked.

    ``eps``, ``tweedie`` and ``denoise`` each count one network evaluation per call, whatever the batch (the usual
    NFE convention); with ``chunk`` a call on more items runs the network on at most ``chunk`` items at a time
    (memory bound), still counting one. :meth:`chunked` gives a view with another chunk size sharing the count.
    """

    def __init__(self, prior, chunk: Optional[int] = None, _count: Optional[List[int]] = None):
        self._prior = prior
        self._count = [0] if _count is None else _count
        self.chunk = chunk

    @property
    def nfe(self) -> int:
        """Network evaluations through this view (and the views sharing its count)."""
        return self._count[0]

    def chunked(self, chunk: Optional[int]) -> "PriorView":
        return PriorView(self._prior, chunk, self._count)

    def _call(self, method: str, x: torch.Tensor, s):
        self._count[0] += 1
        f = getattr(self._prior, method)
        if self.chunk is None or x.shape[0] <= self.chunk:
            return f(x, s)
        s_parts = s.split(self.chunk) if isinstance(s, torch.Tensor) and s.dim() else [s] * x.shape[0]
        parts = [f(xc, sc) for xc, sc in zip(x.split(self.chunk), s_parts)]
        if isinstance(parts[0], tuple):
            return tuple(torch.cat(p) for p in zip(*parts))
        return torch.cat(parts)

    def eps(self, x: torch.Tensor, t):
        return self._call("eps", x, t)

    def tweedie(self, x: torch.Tensor, t):
        return self._call("tweedie", x, t)

    def denoise(self, x: torch.Tensor, sigma):
        return self._call("denoise", x, sigma)

    def __getattr__(self, name):
        if name.startswith("__") or name in ("_prior", "_count"):  # not set yet (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self._prior, name)


def counted(spec: SamplerSpec, fn: Callable) -> Callable:
    """``fn`` validating its options (:func:`resolve_knobs`) and reporting the network evaluations it made."""

    @functools.wraps(fn)
    def run(prior, op, y, *, generators=None, progress=False, **knobs) -> SamplerOutput:
        knobs = resolve_knobs(spec, knobs)
        view = None if prior is None else PriorView(prior)
        out = fn(view, op, y, generators=generators, progress=progress, **knobs)
        out.nfe = 0 if view is None else view.nfe
        return out

    return run


def register_sampler(name: str, *, knobs: Dict[str, Knob], requires: str = "linear", needs_prior: bool = True,
                     latent_ok: bool = False, summary: str = "", adjoint_knobs=None,
                     operator_method: Optional[str] = None, nfe: Optional[Callable[[Dict[str, Any], Any], int]] = None,
                     independent_items: bool = True):
    """Decorator registering a sampler function under ``name`` (see :class:`SamplerSpec` for the arguments).

    Its options and their defaults are the function's keyword-only parameters; ``knobs`` declares what each one
    accepts (every option must be declared, and only those). Returns the function wrapped by :func:`counted`.
    """
    if requires not in REQUIRES:
        raise TypeError(f"sampler {name!r}: requires must be one of {REQUIRES}, got {requires!r}")

    def deco(fn):
        defaults = signature_defaults(fn)
        missing, extra = sorted(set(defaults) - set(knobs)), sorted(set(knobs) - set(defaults))
        if missing or extra:
            raise TypeError(f"sampler {name!r}: knobs= must declare exactly the signature's options; "
                            f"undeclared {missing}, not in the signature {extra}")
        for k, v in defaults.items():  # the declared range must admit the default
            knobs[k].check(v, f"default of sampler {name!r}: {k}")
        doc = (fn.__doc__ or "").strip().splitlines()
        spec = SamplerSpec(name, fn, defaults, dict(knobs), requires, needs_prior, latent_ok,
                           summary or (doc[0] if doc else ""), adjoint_knobs, operator_method, nfe,
                           independent_items)
        spec.fn = counted(spec, fn)
        _REGISTRY[name] = spec
        return spec.fn

    return deco


# ---------------------------------------------------------------------------------------------- lookups, checks
def get_sampler(name: str) -> SamplerSpec:
    """The registered sampler ``name`` (the package imports every built-in sampler module when it is imported)."""
    if not isinstance(name, str) or name not in _REGISTRY:
        raise UnknownNameError(f"unknown sampler {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def available_samplers() -> Dict[str, str]:
    """Sampler names -> one-line summaries (``get_sampler(name).describe()`` lists a sampler's options)."""
    return {k: v.summary for k, v in sorted(_REGISTRY.items())}


def resolve_knobs(spec: SamplerSpec, knobs: Dict[str, Any], steps: Optional[int] = None) -> Dict[str, Any]:
    """Registered defaults overridden by ``knobs`` (and ``steps``, the common argument of ``solve`` and the configs),
    each value checked against its declaration.

    Unknown names raise :class:`UnknownNameError` listing the valid ones; values outside what an option accepts
    (or ``steps`` for a sampler without steps) raise :class:`~invsolve.errors.InvalidValueError` naming the
    sampler, the option, the value and the range.
    """
    if steps is not None:
        if "steps" not in spec.defaults:
            raise InvalidValueError(f"sampler {spec.name!r} has no 'steps' option (got steps={steps!r}); leave "
                                    "steps unset")
        knobs = {**knobs, "steps": steps}
    unknown = sorted(set(knobs) - set(spec.defaults))
    if unknown:
        raise UnknownNameError(f"unknown option(s) {unknown} for sampler {spec.name!r}; valid options: "
                               f"{', '.join(spec.knobs()) or 'none'}")
    out = dict(spec.defaults)
    for k, v in knobs.items():
        out[k] = spec.knob_specs[k].check(v, f"sampler {spec.name!r}: {k}")
    return out


def check_prior_fits(prior, operator) -> None:
    """The prior models the operator's input domain: complex vs real images, and their shape."""
    if operator.is_complex != prior.is_complex:
        kind = "complex" if operator.is_complex else "real"
        raise DTypeError(f"prior {prior.name!r} models {'complex' if prior.is_complex else 'real'} images but "
                         f"{type(operator).__name__} acts on {kind} images")
    want = operator.input_shape
    have = prior.operator_shape
    if want is not None and (len(want) != len(have) or any(w is not None and w != h for w, h in zip(want, have))):
        raise ShapeError(f"prior {prior.name!r} models images of shape {tuple(have)} but the operator expects "
                         f"{tuple(want)}; use a prior trained at that size or resize the problem")


def check_compatible(spec: SamplerSpec, operator, prior, knobs: Optional[Dict[str, Any]] = None) -> None:
    """Every requirement ``spec`` declares, checked against this operator, prior (``None``: none loaded) and
    resolved ``knobs``: the one place callers (``solve``, the evaluation harness) ask; clear errors otherwise."""
    linear = getattr(operator, "is_linear", False)
    if spec.requires == "linear" and not linear:
        raise InvsolveError(f"sampler {spec.name!r} needs a linear operator with an adjoint; "
                            f"{type(operator).__name__} is nonlinear. Try sampler='enkg' or 'dps'.")
    if spec.adjoint_knobs is not None and not linear:
        what = spec.adjoint_knobs({**spec.defaults, **(knobs or {})})
        if what:
            raise InvsolveError(f"sampler {spec.name!r} with {what} needs a linear operator with an adjoint; "
                                f"{type(operator).__name__} is nonlinear. Start from noise (init='noise') without "
                                "gluing, or try sampler='enkg' or 'dps'.")
    if spec.operator_method and not hasattr(operator, spec.operator_method):
        raise InvsolveError(f"sampler {spec.name!r} needs an operator with a {spec.operator_method}() method; "
                            f"{type(operator).__name__} has none")
    if spec.needs_prior and prior is None:
        raise InvsolveError(f"sampler {spec.name!r} needs a diffusion prior")
    if prior is not None and spec.needs_prior:
        if getattr(prior, "is_latent", False) and not spec.latent_ok:
            raise InvsolveError(f"sampler {spec.name!r} works on pixel-space priors; {prior.name!r} is a latent "
                                f"prior (use sampler='stsl' or 'psld')")
        check_prior_fits(prior, operator)


# ---------------------------------------------------------------------------------------------- helpers
def randn(shape: Sequence[int], generators: Sequence[torch.Generator], device, dtype=torch.float32) -> torch.Tensor:
    """Standard normal batch ``(len(generators), *shape)``; item ``b`` drawn from ``generators[b]``.

    Draws from CPU generators reach a CUDA device through pinned memory without blocking the host (a plain
    pageable copy would synchronise once per sampling step).
    """
    z = torch.stack([torch.randn(tuple(shape), generator=g, device=g.device, dtype=dtype) for g in generators])
    dev = torch.device(device)
    if z.device.type == "cpu" and dev.type != "cpu":
        return (z.pin_memory() if dev.type == "cuda" else z).to(dev, non_blocking=True)
    return z.to(dev)


def bshape(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample vector ``(B,)`` to broadcast against ``like`` ``(B, ...)``."""
    return v.reshape((-1,) + (1,) * (like.dim() - 1))


def progress_bar(iterable, enabled: bool, desc: str, total: Optional[int] = None):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, dynamic_ncols=True, leave=False)
