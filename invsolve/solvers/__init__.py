"""Classical reconstructions (no diffusion prior), registered in the method registry next to the samplers:
``adjoint``, ``cg``, ``fbp``, ``pinv`` (:mod:`.linear`), ``tv`` (:mod:`.tv`) and ``wiener`` (:mod:`.wiener`)."""
from . import linear, tv, wiener  # noqa: F401  (importing registers them)
from .linear import adjoint, cg_sense, fbp, pseudo_inverse
from .tv import grad2d, grad2d_adjoint, tv_norm
from .wiener import noise_sigma_mad

__all__ = ["adjoint", "cg_sense", "fbp", "pseudo_inverse", "grad2d", "grad2d_adjoint", "tv_norm", "noise_sigma_mad"]
