"""Linear classical baselines: zero-filled / back-projection (``adjoint``), least squares / CG-SENSE (``cg``),
filtered back-projection (``fbp``) and the operator's pseudo-inverse (``pinv``)."""
from __future__ import annotations

import torch

from ..linalg import cg
from ..samplers.base import SamplerOutput, register_sampler
from ..samplers.knobs import Choice, Float, Int


@register_sampler("adjoint", knobs={}, needs_prior=False,
                  summary="Aᴴy: zero-filled reconstruction (MRI) / unfiltered back-projection (CT)")
@torch.no_grad()
def adjoint(prior, op, y, *, generators=None, progress=False) -> SamplerOutput:
    """``x = Aᴴ y``."""
    return SamplerOutput(x=op.adjoint(y))


@register_sampler("cg", knobs=dict(iterations=Int(1, doc="CG iterations at most"),
                                   reg=Float(0, doc="Tikhonov weight reg in ||y - Ax||² + reg ||x||²"),
                                   tol=Float(0, doc="relative residual tolerance (0: run all iterations)")),
                  needs_prior=False,
                  summary="least squares by CG on the normal equations (CG-SENSE for MRI); reg>0: Tikhonov")
@torch.no_grad()
def cg_sense(prior, op, y, *, generators=None, iterations=30, reg=0.0, tol=1e-6, progress=False) -> SamplerOutput:
    """``argmin_x ||y - A x||² + reg ||x||²`` by CG from zero (``iterations`` at most, relative ``tol``)."""

    def K(v):
        return op.normal(v) + reg * v if reg else op.normal(v)

    res = cg(K, op.adjoint(y), max_iter=iterations, tol=tol)
    return SamplerOutput(x=res.x, info={"cg_iterations": res.iterations.tolist(),
                                        "cg_residual": res.residual_norm.tolist()})


@register_sampler("fbp", knobs=dict(filter=Choice("ramp", "shepp-logan", "cosine", "hamming", "hann",
                                                  doc="the ramp filter's apodisation window")),
                  needs_prior=False, operator_method="fbp",
                  summary="filtered back-projection (CT operators with an .fbp method)")
@torch.no_grad()
def fbp(prior, op, y, *, generators=None, filter="ramp", progress=False) -> SamplerOutput:
    """Filtered back-projection through ``op.fbp(y, filter)``."""
    return SamplerOutput(x=op.fbp(y, filter=filter))


@register_sampler("pinv", knobs={}, needs_prior=False,
                  summary="the operator's pseudo-inverse A⁺y (closed form where it has one, else least squares by CG)")
@torch.no_grad()
def pseudo_inverse(prior, op, y, *, generators=None, progress=False) -> SamplerOutput:
    """``x = op.pinv(y)``: e.g. the bicubic pseudo-inverse for super-resolution, ``m ⊙ y`` for inpainting."""
    return SamplerOutput(x=op.pinv(y))
