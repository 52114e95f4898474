"""Sampler contract and registry.

A sampler is a function::

    run(prior, operator, y, *, generators, progress=False, **knobs) -> SamplerOutput

* ``prior``: a :class:`~invsolve.priors.Prior` (``None`` for classical methods);
* ``operator``: an :class:`~invsolve.operators.base.Operator`; ``y``: measurements ``(B, ...)`` already
  validated and on the operator's device;
* ``generators``: one ``torch.Generator`` per batch item — every random draw of item ``b`` comes from
  ``generators[b]`` so that a sample never depends on the rest of its batch;
* ``knobs``: the sampler's documented parameters (its registered defaults fill the rest).

It returns operator-domain reconstructions. Register with :func:`register_sampler`.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ..errors import InvsolveError, UnknownNameError
from .knobs import Knob


@dataclass
class SamplerOutput:
    """What a sampler returns.

    Attributes:
        x: reconstructions in the operator domain, ``(B, *operator.input_shape)``.
        nfe: network function evaluations (one per batched network call; 0 for classical methods).
        info: extra diagnostics (e.g. CG residual norms, the initial estimate), JSON-friendly where possible.
    """

    x: torch.Tensor
    nfe: int = 0
    info: Dict[str, Any] = field(default_factory=dict)


@dataclass
class SamplerSpec:
    """A registered sampler: its function, options and requirements.

    ``defaults`` come from the function's signature (every keyword-only parameter but ``generators`` and
    ``progress``); ``knobs`` declares, for each of them, what it accepts and means (:class:`~.knobs.Knob`).
    ``requires``: ``"linear"`` (needs ``adjoint``), ``"differentiable"`` (autograd through ``A``) or
    ``"forward"`` (black-box forward evaluations only). ``needs_prior``: diffusion prior required.
    """

    name: str
    fn: Callable[..., SamplerOutput]
    defaults: Dict[str, Any]
    requires: str = "linear"
    needs_prior: bool = True
    latent_ok: bool = False
    summary: str = ""
    # options whose default leaves the algorithm unchanged ("off"); a result's configuration hash leaves them out
    # while they hold that default, so adding such an option keeps stored evaluation results valid
    neutral: Tuple[str, ...] = ()
    # for "differentiable" samplers with options that need ``adjoint`` (an ``Aᵀy`` start, a gluing term):
    # knobs -> a phrase naming the option that does (``None``: the knobs run on a nonlinear operator)
    adjoint_knobs: Optional[Callable[[Dict[str, Any]], Optional[str]]] = None
    # bumped when a default or the update rule changes what the same knobs compute; part of a result's
    # configuration hash from version 2 on, so stored evaluation results of the older rule are re-run
    version: int = 1
    knob_specs: Dict[str, Knob] = field(default_factory=dict)

    def identity_knobs(self, knobs: Dict[str, Any]) -> Dict[str, Any]:
        """``knobs`` without the neutral options that are at their default."""
        return {k: v for k, v in knobs.items() if not (k in self.neutral and v == self.defaults[k])}

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


def register_sampler(name: str, *, knobs: Dict[str, Knob], requires: str = "linear", needs_prior: bool = True,
                     latent_ok: bool = False, summary: str = "", neutral: Tuple[str, ...] = (), adjoint_knobs=None,
                     version: int = 1):
    """Decorator registering a sampler function under ``name``.

    Its options and their defaults are the function's keyword-only parameters; ``knobs`` declares what each one
    accepts (every option must be declared, and only those). ``neutral``, ``version``: see :class:`SamplerSpec`.
    """

    def deco(fn):
        defaults = signature_defaults(fn)
        missing, extra = sorted(set(defaults) - set(knobs)), sorted(set(knobs) - set(defaults))
        if missing or extra:
            raise TypeError(f"sampler {name!r}: knobs= must declare exactly the signature's options; "
                            f"undeclared {missing}, not in the signature {extra}")
        for k, v in defaults.items():  # the declared range must admit the default
            knobs[k].check(v, f"default of sampler {name!r}: {k}")
        doc = (fn.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = SamplerSpec(name, fn, defaults, requires, needs_prior, latent_ok,
                                      summary or (doc[0] if doc else ""), tuple(neutral), adjoint_knobs,
                                      int(version), dict(knobs))
        return fn

    return deco


def _load_builtin():
    import importlib

    for mod in ("dds", "classical", "dps", "ddnm", "diffpir", "pigdm", "mcg", "stsl", "psld", "enkg", "dps_gsg",
                "tv", "dds3d", "wiener"):
        try:
            importlib.import_module(f"{__package__}.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"{__package__}.{mod}":
                raise


def get_sampler(name: str) -> SamplerSpec:
    _load_builtin()
    if not isinstance(name, str) or name not in _REGISTRY:
        raise UnknownNameError(f"unknown sampler {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def available_samplers() -> Dict[str, str]:
    """Sampler names -> one-line summaries (``get_sampler(name).describe()`` lists a sampler's options)."""
    _load_builtin()
    return {k: v.summary for k, v in sorted(_REGISTRY.items())}


def resolve_knobs(spec: SamplerSpec, knobs: Dict[str, Any]) -> Dict[str, Any]:
    """Registered defaults overridden by ``knobs``, each value checked against its declaration.

    Unknown names raise :class:`UnknownNameError` listing the valid ones; values outside what an option accepts
    raise :class:`~invsolve.errors.InvalidValueError` naming the sampler, the option, the value and the range.
    """
    unknown = sorted(set(knobs) - set(spec.defaults))
    if unknown:
        raise UnknownNameError(f"unknown option(s) {unknown} for sampler {spec.name!r}; valid options: "
                               f"{', '.join(spec.knobs()) or 'none'}")
    out = dict(spec.defaults)
    for k, v in knobs.items():
        out[k] = spec.knob_specs[k].check(v, f"sampler {spec.name!r}: {k}")
    return out


def check_compatible(spec: SamplerSpec, operator, prior, knobs: Optional[Dict[str, Any]] = None) -> None:
    """Clear errors when a sampler cannot run on this operator/prior combination (with these resolved ``knobs``,
    for samplers whose options decide whether they need the adjoint)."""
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
    if spec.needs_prior and prior is None:
        raise InvsolveError(f"sampler {spec.name!r} needs a diffusion prior")
    if prior is not None and getattr(prior, "is_latent", False) and not spec.latent_ok:
        raise InvsolveError(f"sampler {spec.name!r} works on pixel-space priors; {prior.name!r} is a latent prior "
                            f"(use sampler='stsl' or 'psld')")


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


def accepts(fn: Callable, name: str) -> bool:
    return name in inspect.signature(fn).parameters
