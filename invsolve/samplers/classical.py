"""Classical baselines: zero-filled / back-projection (``adjoint``), least squares / CG-SENSE (``cg``), ``fbp``."""
from __future__ import annotations

import torch

from ..errors import InvsolveError
from ..linalg import cg as _cg
from .base import SamplerOutput, register_sampler
from .knobs import Any_, Float, Int


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
    if reg < 0:
        raise ValueError(f"reg must be >= 0, got {reg}")

    def K(v):
        return op.normal(v) + reg * v if reg else op.normal(v)

    res = _cg(K, op.adjoint(y), max_iter=iterations, tol=tol)
    return SamplerOutput(x=res.x, info={"cg_iterations": res.iterations.tolist(),
                                        "cg_residual": res.residual_norm.tolist()})


@register_sampler("fbp", knobs=dict(filter=Any_("filter name of the operator's fbp() (e.g. 'ramp')", optional=False)),
                  needs_prior=False,
                  summary="filtered back-projection (CT operators with an .fbp method)")
@torch.no_grad()
def fbp(prior, op, y, *, generators=None, filter="ramp", progress=False) -> SamplerOutput:
    """Filtered back-projection through ``op.fbp(y, filter)``."""
    if not hasattr(op, "fbp"):
        raise InvsolveError(f"sampler 'fbp' needs a CT operator with an fbp() method; got {type(op).__name__}")
    return SamplerOutput(x=op.fbp(y, filter=filter))
