"""DDS for volumes: a 2D prior on every slice, coupled by total variation along z — DDS (:mod:`.dds`) with the
volume data-consistency step :class:`~.consistency.TVzADMM` (released 3D DDS: one ADMM iteration per diffusion step,
CG inside).

The batch ``(Z, C, H, W)`` is **one volume** in slice order. Every diffusion step makes one network evaluation of all
slices (in chunks of ``chunk`` slices) and then one ADMM iteration on the whole volume. ``L`` normalises the data
term: ``||A||²`` from power iteration when ``normalize=True`` (so ``ρ``, ``λ`` and ``γ`` mean the same for any
number of CT views), else 1 (the reference's form, whose values are tied to its operator scaling). The defaults
``ρ = 0.025``, ``λ = 1e-4`` are the released sparse-view values (``ρ = 10``, ``λ = 0.04``) divided by the reference
operator's ``||AᵀA|| ≈ 390`` (256², unfiltered back-projection scaled by ``π / (2 N_views)``; power iteration), so
the shrinkage threshold ``λ / ρ = 0.004`` (image units) is the reference's; for limited angle the reference's
``λ = 0.4`` maps to ``λ = 1e-3`` (the released values taken literally over-smooth along z: docs/tuning.md). ``γ =
None`` is the reference (``x0_hat`` enters only as the CG warm start); a number adds the DDS proximal term. With
``ρ = 0`` (no TV) every slice is solved on its own (per-slice CG), which is exactly 2D DDS: ``dc="normal"`` for
``γ = None``, else ``dc="prox"`` with weight ``γ / L``. With ``ρ > 0`` CG runs on the coupled volume (inner products
over the whole volume). :func:`z_flicker` and :func:`z_difference_rmse` measure slice-to-slice flicker.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..linalg import power_iteration
from .base import SamplerOutput, randn, register_sampler
from .consistency import TVzADMM, dz, dz_adjoint, soft_threshold, tv_z_consistency  # noqa: F401  (public here too)
from .dds import dds_loop
from .knobs import STEPS, Bool, Float, Int
from .steps import ddim_grid, prior_noise


def z_flicker(x: torch.Tensor) -> float:
    """Mean absolute difference between consecutive slices (non-circular) of a volume ``(Z, ...)``."""
    return float((x[1:] - x[:-1]).abs().double().mean())


def z_difference_rmse(x: torch.Tensor, ref: torch.Tensor) -> float:
    """RMS error of the slice-to-slice differences: ``rms((x_{k+1} - x_k) - (ref_{k+1} - ref_k))``."""
    return float(((x[1:] - x[:-1]) - (ref[1:] - ref[:-1])).double().square().mean().sqrt())


@register_sampler("dds-3d", knobs=dict(
    steps=STEPS, eta=Float(0, 1, doc="fraction (in std) of fresh noise when re-noising"),
    cg_iters=Int(1, doc="CG iterations per step"), rho=Float(0, doc="ADMM penalty (0: independent slices)"),
    lam=Float(0, doc="TV weight along z"),
    gamma=Float(0, low_open=True, optional=True, doc="proximal weight towards x0_hat (None: warm start only)"),
    normalize=Bool("divide the data term by ||A||²"), chunk=Int(1, doc="slices per network call"),
    power_iterations=Int(1, doc="power-iteration steps for ||A||²"),
    reference_last_step=Bool("jump straight to x0_c at t_next = 0, as released")),
                  summary="DDS on a volume (the batch = slices): ADMM with TV along z, CG inside, chunked network",
                  nfe=lambda k, prior: k["steps"], independent_items=False)
@torch.no_grad()
def dds3d(prior, op, y, *, generators, steps=50, eta=0.85, cg_iters=5, rho=0.025, lam=1e-4,
          gamma: Optional[float] = None, normalize=True, chunk=16, power_iterations=30, reference_last_step=True,
          progress=False) -> SamplerOutput:
    """DDS with TV_z-ADMM data consistency on a volume ``y`` = slices ``(Z, ...)`` (module docstring).

    ``steps``, ``eta``, ``cg_iters``, ``reference_last_step`` as for ``dds``; ``rho`` (0: independent slices),
    ``lam`` (shrinkage threshold ``lam / rho`` on slice differences, image units), ``gamma`` and ``normalize`` as in
    the module docstring (``||A||²`` by ``power_iterations`` power-iteration steps from a fixed seed, so the slices'
    generators are untouched); ``chunk``: slices per network call (one NFE per step counts all of them).
    Returns the volume ``(Z, ...)``; ``info``: ``cg_residual`` ``(S,)``, ``opnorm_sq``, ``z_flicker`` of the result.
    """
    L = 1.0
    if normalize:
        AHy = op.adjoint(y)
        v0 = randn(AHy.shape[1:], [torch.Generator().manual_seed(0)], AHy.device, dtype=AHy.dtype)
        L = float(power_iteration(op.normal, v0, iterations=power_iterations)[0])
    dc = TVzADMM(op, y, opnorm_sq=L, rho=rho, lam=lam, gamma=gamma, cg_iters=cg_iters)
    x = prior_noise(prior, generators, y.device)
    out, residuals = dds_loop(prior.chunked(min(chunk, prior.max_batch or chunk)), y, generators,
                              ddim_grid(prior, steps), x, dc, eta=eta, reference_last_step=reference_last_step,
                              progress=progress, desc="DDS-3D")
    return SamplerOutput(x=out, info={"cg_residual": torch.stack(residuals).cpu(), "opnorm_sq": L,
                                      "z_flicker": z_flicker(out)})
