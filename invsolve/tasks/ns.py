"""Navier–Stokes initial-state inversion (task ``ns``), the EnKG paper's problem (Zheng et al., arXiv 2409.20175).

Truth: held-out initial vorticity fields (the ``"test"`` seed stream of :mod:`invsolve.data.ns_bank`, generated
exactly like the ``ns-vorticity`` prior's training bank but never trained on; ``source: example``), or the user's
own fields (``source: file``: ``.npy``/``.npz`` of raw vorticity ``(H, W)`` or ``(N, H, W)``, about [-10, 10]).
Measurement: the vorticity at time ``T`` on every ``stride``-th grid point
(:class:`~invsolve.operators.navier_stokes.NavierStokes2D`), plus white noise of std ``noise_sigma`` in raw units
(the benchmark uses 0, 1 and 2). The operator domain (and ``x_true``) is vorticity / 10 (the prior's units).
``max_solver_steps`` bounds the solver's time steps per call: an iterate that blows up fails its item in minutes
instead of keeping the solver busy for hours (in-range fields need 300-1000 steps).
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import InvalidValueError, ShapeError
from ..operators.navier_stokes import NavierStokes2D
from ..samplers.knobs import Choice, Float, Int, Ints, Str
from .mri import load_array
from .noise import add_noise, source_keys
from .registry import Problem, register_task

DEFAULTS = dict(source="example", index=[0, 1, 2, 3], path=None, key=None, size=64, solver_size=64, T=1.0,
                stride=2, noise_sigma=0.0, noise_seed=0, cache=None, seed=0, max_solver_steps=100_000)
KNOBS = dict(
    source=Choice("example", "file", doc="held-out test-stream fields, or your vorticity file (path)"),
    index=Ints(0, doc="which held-out fields (source=example)"),
    path=Str(optional=True, doc="your raw vorticity (.npy/.npz, (H, W) or (N, H, W)) for source=file"),
    key=Str(optional=True, doc="array name inside an .npz file"),
    size=Int(8, doc="field size (pixels); the prior's size"),
    solver_size=Int(8, doc="grid of the solver that generates the held-out fields"),
    T=Float(0, low_open=True, doc="time of the observed flow"),
    stride=Int(1, doc="observe every stride-th grid point"),
    noise_sigma=Float(0, doc="std of white noise on the observations (raw vorticity units)"),
    noise_seed=Int(0, doc="seed of the noise (each field's noise is keyed by its source index)"),
    cache=Str(optional=True, doc="file caching the held-out bank"),
    seed=Int(0, doc="seed stream of the held-out bank"),
    max_solver_steps=Int(1, doc="most time steps of the PDE solver per forward evaluation (a guard against a "
                         "diverging field)"),
)


def heldout_truth(index, size: int = 64, solver_size: int = 64, seed: int = 0, cache=None):
    """Held-out raw fields ``(len(index), 1, size, size)`` and their names (``ns-test-<i>``)."""
    from ..data.ns_bank import heldout_bank

    idx = [index] if isinstance(index, int) else list(index)
    if not idx or min(idx) < 0:
        raise InvalidValueError(f"problem.index must be non-negative integers, got {index!r}")
    w = heldout_bank(max(idx) + 1, size, seed, solver_size=solver_size, cache=cache)
    return w[idx], [f"ns-test-{i}" for i in idx]


@register_task("ns", DEFAULTS, summary="Navier-Stokes initial vorticity from the flow at T=1 on every 2nd grid "
                                       "point (black-box PDE solver; EnKG)", knobs=KNOBS)
def build(source, index, path, key, size, solver_size, T, stride, noise_sigma, noise_seed, cache, seed,
          max_solver_steps) -> Problem:
    if source == "example":
        w, names = heldout_truth(index, size, solver_size, seed, cache)
    elif source == "file":
        a = np.asarray(load_array(path, key), dtype=np.float32)
        a = a[None] if a.ndim == 2 else a
        if a.ndim != 3 or a.shape[1] != a.shape[2]:
            raise ShapeError(f"vorticity file {path} must hold (H, W) or (N, H, W) square fields, got {a.shape}")
        w, names = torch.from_numpy(a)[:, None], [f"{path}[{i}]" for i in range(a.shape[0])]
        size = a.shape[-1]
    else:
        raise InvalidValueError(f"problem.source must be 'example' or 'file', got {source!r}")
    op = NavierStokes2D(size, T=T, stride=stride, max_steps=max_solver_steps)
    x = w / op.scale
    with torch.no_grad():
        y = op(x)
    keys = source_keys(index, x.shape[0], source == "example")
    y = add_noise(y, noise_sigma, noise_seed, keys)
    meta = {"noise_keys": keys, "T": T, "stride": stride, "noise_sigma_raw": noise_sigma, "noise_seed": noise_seed,
            "truth": "held-out 'test' stream" if source == "example" else str(path), "solver_size": solver_size,
            "metric": "relative L2 in raw units (configs/bench/enkg-ns.yaml)"}
    return Problem(op, y, x, names, meta=meta, data_range=None, default_baselines=[], sigma_y=noise_sigma)
