"""Forward operators ``y = A(x)``: a shared protocol (:mod:`.base`) and the physics of each modality.

Linear operators compose (``A @ B``, ``A.H``, ``A.N``, ``2.0 * A``) and have exact adjoints.
"""
from . import coils, masks, noise
from .base import (
    Adjoint,
    Composed,
    ComposedLinear,
    Identity,
    LinearOperator,
    Normal,
    Operator,
    Scaled,
    adjoint_mismatch,
    inner,
)
from .blur import Blur, gaussian_kernel, motion_kernel, uniform_kernel
from .ct import ParallelBeamCT, fbp, limited_angle_angles, sparse_view_angles
from .fanbeam import FanBeamCT
from .fft import fft2c, ifft2c
from .inpainting import Inpainting, box_mask, random_mask
from .mri import MultiCoilMRI, SingleCoilMRI
from .noise import GaussianNoise, PoissonNoise
from .resolution import SuperResolution

__all__ = [
    "Operator", "LinearOperator", "Composed", "ComposedLinear", "Adjoint", "Normal", "Scaled", "Identity",
    "adjoint_mismatch", "inner", "fft2c", "ifft2c", "MultiCoilMRI", "SingleCoilMRI", "masks", "coils", "noise",
    "GaussianNoise", "PoissonNoise", "ParallelBeamCT", "FanBeamCT", "fbp", "sparse_view_angles", "limited_angle_angles",
    "Blur", "gaussian_kernel", "uniform_kernel", "motion_kernel", "Inpainting", "SuperResolution", "random_mask",
    "box_mask",
]


def __getattr__(name):  # black-box and PDE operators are imported lazily (heavier modules)
    if name in ("BlackBox", "BlackBoxError"):
        from . import blackbox

        return getattr(blackbox, name)
    if name == "from_deepinv":
        from .deepinv_adapter import from_deepinv

        return from_deepinv
    if name in ("NavierStokes2D",):
        from . import navier_stokes

        return getattr(navier_stokes, name)
    raise AttributeError(name)
