"""Navier–Stokes initial-state inversion (task ``ns``), ALGORITHMS.md §3.4.

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

from ..errors import ShapeError
from ..operators.navier_stokes import NavierStokes2D
from . import Problem, register_task
from .mri import _load_array

DEFAULTS = dict(source="example", index=[0, 1, 2, 3], path=None, key=None, size=64, solver_size=64, T=1.0,
                stride=2, noise_sigma=0.0, noise_seed=0, cache=None, seed=0, max_solver_steps=100_000)


def heldout_truth(index, size: int = 64, solver_size: int = 64, seed: int = 0, cache=None):
    """Held-out raw fields ``(len(index), 1, size, size)`` and their names (``ns-test-<i>``)."""
    from ..data.ns_bank import heldout_bank

    idx = [index] if isinstance(index, int) else list(index)
    if not idx or min(idx) < 0:
        raise ValueError(f"problem.index must be non-negative integers, got {index!r}")
    w = heldout_bank(max(idx) + 1, size, seed, solver_size=solver_size, cache=cache)
    return w[idx], [f"ns-test-{i}" for i in idx]


@register_task("ns", DEFAULTS, summary="Navier-Stokes initial vorticity from the flow at T=1 on every 2nd grid "
                                       "point (black-box PDE solver; EnKG)")
def build(source, index, path, key, size, solver_size, T, stride, noise_sigma, noise_seed, cache, seed,
          max_solver_steps) -> Problem:
    if source == "example":
        w, names = heldout_truth(index, size, solver_size, seed, cache)
    elif source == "file":
        a = np.asarray(_load_array(path, key), dtype=np.float32)
        a = a[None] if a.ndim == 2 else a
        if a.ndim != 3 or a.shape[1] != a.shape[2]:
            raise ShapeError(f"vorticity file {path} must hold (H, W) or (N, H, W) square fields, got {a.shape}")
        w, names = torch.from_numpy(a)[:, None], [f"{path}[{i}]" for i in range(a.shape[0])]
        size = a.shape[-1]
    else:
        raise ValueError(f"problem.source must be 'example' or 'file', got {source!r}")
    op = NavierStokes2D(size, T=T, stride=stride, max_steps=max_solver_steps)
    x = w / op.scale
    with torch.no_grad():
        y = op(x)
    if noise_sigma > 0:
        g = torch.Generator().manual_seed(int(noise_seed))
        y = y + noise_sigma * torch.randn(y.shape, generator=g)
    meta = {"T": T, "stride": stride, "noise_sigma_raw": noise_sigma, "noise_seed": noise_seed,
            "truth": "held-out 'test' stream" if source == "example" else str(path), "solver_size": solver_size,
            "metric": "relative L2 in raw units (configs/bench/enkg-ns.yaml)"}
    return Problem(op, y, x, names, meta=meta, data_range=None, default_baselines=[])
