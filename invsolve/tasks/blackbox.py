"""Black-box imaging problems for derivative-free samplers: ``phase-retrieval``, ``nonlinear-blur`` and ``blackbox``
(your own Python/numpy forward model).

Images come from the natural-image sources of :mod:`invsolve.tasks.imaging` (held-out photo crops or your image,
RGB in [0, 1]); ``noise_sigma`` adds white Gaussian noise to the measurement.

* ``phase-retrieval``: ``y = |F(pad x)|`` (:class:`~invsolve.operators.phase_retrieval.PhaseRetrieval`).
* ``nonlinear-blur``: ``y = tanh(gain (k * x)) / tanh(gain)``
  (:class:`~invsolve.operators.phase_retrieval.SaturatingBlur`).
* ``blackbox``: ``function: "path/to/file.py:name"`` or ``"package.module:name"`` — a function
  ``fn(x: numpy (n, C, H, W)) -> numpy (n, ...)`` (``batched: false``: one item at a time), evaluated through
  :class:`~invsolve.operators.blackbox.BlackBox` with ``executor: none | threads | processes`` and ``workers``.

``black_box: true`` (default for the first two) wraps the torch model as a numpy ``BlackBox``, so the run exercises
exactly the path a user's numpy code takes; ``false`` keeps the differentiable torch operator (for ``dps``).
"""
from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from ..errors import InputFileError, InvalidValueError, InvsolveError
from ..operators.blackbox import BlackBox
from ..operators.phase_retrieval import PhaseRetrieval, SaturatingBlur, as_black_box
from ..samplers.knobs import Bool, Choice, Float, Int, Ints, Str
from .imaging import NOISE_KNOB, SOURCE, SOURCE_KNOBS, load_images, make_problem
from .registry import register_task

PR_DEFAULTS = dict(SOURCE, oversample=2.0, noise_sigma=0.0, black_box=True, workers=None, executor="none")
NLB_DEFAULTS = dict(SOURCE, gain=2.0, kernel_size=9, kernel_sigma=2.0, padding="reflect", noise_sigma=0.01,
                    black_box=True, workers=None, executor="none")
BB_DEFAULTS = dict(SOURCE, function=None, batched=True, output_shape=None, noise_sigma=0.0, executor="none",
                   workers=None, chunk_size=None)
_RUN_KNOBS = dict(black_box=Bool("wrap the torch model as a numpy BlackBox (false: differentiable, for dps)"),
                  workers=Int(1, optional=True, doc="executor workers (None: the executor's default)"),
                  executor=Choice("none", "threads", "processes", doc="where the forward model runs"))
PR_KNOBS = dict(SOURCE_KNOBS, oversample=Float(0, doc="zero-padding factor of the Fourier transform"),
                noise_sigma=NOISE_KNOB, **_RUN_KNOBS)
NLB_KNOBS = dict(SOURCE_KNOBS, gain=Float(0, low_open=True, doc="saturation gain of tanh(gain (k * x)) / tanh(gain)"),
                 kernel_size=Int(1, doc="Gaussian kernel size"),
                 kernel_sigma=Float(0, low_open=True, doc="Gaussian kernel std (pixels)"),
                 padding=Choice("circular", "reflect", "replicate", "zeros", doc="blur boundary handling"),
                 noise_sigma=NOISE_KNOB, **_RUN_KNOBS)
BB_KNOBS = dict(SOURCE_KNOBS, function=Str(doc="your forward model: 'path/to/file.py:name' or 'module:name'"),
                batched=Bool("fn takes a batch (true) or one item (false)"),
                output_shape=Ints(1, optional=True, doc="fn's per-item output shape (checked); None: y's shape"),
                noise_sigma=NOISE_KNOB, executor=_RUN_KNOBS["executor"], workers=_RUN_KNOBS["workers"],
                chunk_size=Int(1, optional=True, doc="items per call / executor task"))


def _executor(kind: str, workers):
    if kind in (None, "none"):
        return None
    from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

    if kind == "threads":
        return ThreadPoolExecutor(workers)
    if kind == "processes":
        return ProcessPoolExecutor(workers)
    raise InvalidValueError(f"problem.executor must be 'none', 'threads' or 'processes', got {kind!r}")


def load_function(spec: str):
    """``"file.py:name"`` or ``"package.module:name"`` -> the callable."""
    if not isinstance(spec, str) or ":" not in spec:
        raise InvsolveError(f"problem.function must look like 'path/to/file.py:name' or 'module:name', got {spec!r}")
    where, name = spec.rsplit(":", 1)
    if where.endswith(".py"):
        p = Path(where).expanduser()
        if not p.exists():
            raise InputFileError(f"problem.function file {str(p)!r} not found")
        s = importlib.util.spec_from_file_location(p.stem, p)
        mod = importlib.util.module_from_spec(s)
        s.loader.exec_module(mod)
    else:
        mod = importlib.import_module(where)
    fn = getattr(mod, name, None)
    if not callable(fn):
        raise InvsolveError(f"{where} has no callable {name!r}")
    return fn


def _maybe_black_box(op, black_box: bool, executor, workers):
    return as_black_box(op, executor=_executor(executor, workers)) if black_box else op


@register_task("phase-retrieval", PR_DEFAULTS, summary="Fourier phase retrieval |F(pad x)| of held-out photos "
                                                       "(black box; EnKG)", knobs=PR_KNOBS)
def build_phase_retrieval(source, index, path, key, size, resize, noise_seed, oversample, noise_sigma, black_box,
                          workers, executor):
    x, names, origin, keys = load_images(source, index, path, key, size, resize)
    op = _maybe_black_box(PhaseRetrieval(size, x.shape[1], oversample), black_box, executor, workers)
    meta = {"oversample": oversample, "black_box": black_box}
    return make_problem(op, x, names, origin, noise_sigma, noise_seed, meta, [], keys)


@register_task("nonlinear-blur", NLB_DEFAULTS, summary="Gaussian blur + saturating sensor response of held-out "
                                                       "photos (black box; EnKG)", knobs=NLB_KNOBS)
def build_nonlinear_blur(source, index, path, key, size, resize, noise_seed, gain, kernel_size, kernel_sigma,
                         padding, noise_sigma, black_box, workers, executor):
    x, names, origin, keys = load_images(source, index, path, key, size, resize)
    op = SaturatingBlur(gain=gain, padding=padding, size=kernel_size, sigma=kernel_sigma, image_size=size)
    meta = {"gain": gain, "kernel_size": kernel_size, "kernel_sigma": kernel_sigma, "padding": padding,
            "black_box": black_box}
    return make_problem(_maybe_black_box(op, black_box, executor, workers), x, names, origin, noise_sigma, noise_seed,
                    meta, [], keys)


@register_task("blackbox", BB_DEFAULTS, summary="your own numpy forward model (problem.function='file.py:fn') on "
                                                "held-out photos or your image", knobs=BB_KNOBS)
def build_blackbox(source, index, path, key, size, resize, noise_seed, function, batched, output_shape, noise_sigma,
                   executor, workers, chunk_size):
    fn = load_function(function)
    x, names, origin, keys = load_images(source, index, path, key, size, resize)
    if isinstance(output_shape, int):
        output_shape = [output_shape]
    op = BlackBox(fn, input_shape=tuple(x.shape[1:]), output_shape=None if output_shape is None else
                  tuple(output_shape), batched=batched, executor=_executor(executor, workers), chunk_size=chunk_size,
                  default_prior="natural")
    meta = {"function": function, "batched": batched, "executor": executor, "workers": workers}
    return make_problem(op, x, names, origin, noise_sigma, noise_seed, meta, [], keys)
