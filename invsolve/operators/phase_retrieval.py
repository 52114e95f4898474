"""Nonlinear imaging forward models for derivative-free samplers (EnKG, DPS-GSG) and, being plain differentiable
torch code, for gradient samplers (DPS) too.

* :class:`PhaseRetrieval`: Fourier magnitudes ``y = |F(pad(x))|`` — zero-padding by ``int(oversample/8 * H)`` pixels
  per side (oversampling 2: a quarter of the image size on each side, the DPS/EnKG setting at 256 px) and the
  centred orthonormal 2-D FFT (:func:`invsolve.operators.fft.fft2c`), per channel. Invariant to translations (with
  the padding), to ``x -> -x`` and to the point reflection ``x(r) -> x(-r)``: the measurement never pins these down.
* :class:`SaturatingBlur`: a blur followed by a smooth saturating sensor response,
  ``y = tanh(gain * (k * x)) / tanh(gain)`` (maps [0, 1] onto [0, 1], compressing highlights; ``gain -> 0`` is the
  linear blur). A stand-in for the learned nonlinear-blur model of the DPS paper, which needs pretrained weights.

Both act on operator-domain images ``(B, C, H, W)`` (natural prior: RGB in [0, 1]; ``mri-brain``: complex images,
for which the magnitudes of the complex image are used) and wrap into a :class:`~invsolve.operators.blackbox.BlackBox`
with :func:`as_black_box` to exercise the numpy path.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

from ..errors import ShapeError
from .base import Operator
from .blur import Blur, gaussian_kernel
from .fft import fft2c

__all__ = ["PhaseRetrieval", "SaturatingBlur", "as_black_box"]


def _hw(image_size: Union[int, Sequence[int]]):
    return (image_size, image_size) if isinstance(image_size, int) else tuple(int(s) for s in image_size)


class PhaseRetrieval(Operator):
    """``y = |fft2c(pad(x))|`` per channel (module docstring).

    Args:
        image_size: ``H`` or ``(H, W)``.
        channels: ``C`` (3 for the natural prior, 1 for grey or MRI images).
        oversample: padding ``int(oversample / 8 * H)`` pixels per side (2.0: ``H/4``).
        complex_input: the images are complex (``mri-brain``); the magnitude spectrum of the complex image.
        default_prior: prior used by :func:`invsolve.solve` when none is given.

    ``forward``: ``(B, C, H, W)`` -> real ``(B, C, H + 2p, W + 2p)``, same real dtype/device.
    """

    is_linear = False
    task_family = "phase-retrieval"

    def __init__(self, image_size: Union[int, Sequence[int]] = 64, channels: int = 3, oversample: float = 2.0,
                 complex_input: bool = False, default_prior: Optional[str] = None):
        super().__init__()
        H, W = _hw(image_size)
        if oversample < 0:
            raise ValueError(f"oversample must be >= 0, got {oversample}")
        self.pad = (int(oversample / 8 * H), int(oversample / 8 * W))
        self.oversample = oversample
        self.is_complex = bool(complex_input)
        self.measurement_complex = False
        self.default_prior = default_prior or ("mri-brain" if complex_input else "natural")
        self.input_shape = (channels, H, W)
        self.output_shape = (channels, H + 2 * self.pad[0], W + 2 * self.pad[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        ph, pw = self.pad
        xp = F.pad(x, (pw, pw, ph, ph))
        return fft2c(xp if xp.is_complex() else xp.to(torch.complex64 if x.dtype != torch.float64
                                                      else torch.complex128)).abs()

    def extra_repr(self) -> str:
        return f"input_shape={self.input_shape}, oversample={self.oversample}, pad={self.pad}"


class SaturatingBlur(Operator):
    """``y = tanh(gain * Blur(x)) / tanh(gain)`` on real images (module docstring).

    Args:
        kernel: blur kernel (sums to 1); default a Gaussian of ``sigma`` on a ``size x size`` grid.
        gain: saturation strength (``> 0``; 2.0 compresses values near 1 by about 3x in slope).
        padding: boundary mode of :class:`~invsolve.operators.blur.Blur` (``"reflect"`` as in the DPS tasks).
        image_size: optional ``H`` / ``(H, W)`` fixing the shapes.

    ``forward``: ``(B, C, H, W)`` -> ``(B, C, H, W)``.
    """

    is_linear = False
    default_prior = "natural"
    task_family = "nonlinear-deblur"

    def __init__(self, kernel=None, gain: float = 2.0, padding: str = "reflect", *, size: int = 9,
                 sigma: float = 2.0, image_size: Optional[Union[int, Sequence[int]]] = None):
        super().__init__()
        if not gain > 0:
            raise ValueError(f"gain must be > 0, got {gain}")
        self.blur = Blur(gaussian_kernel(size, sigma) if kernel is None else kernel, padding=padding,
                         image_size=image_size)
        self.gain = float(gain)
        self.input_shape, self.output_shape = self.blur.input_shape, self.blur.output_shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_complex():
            raise ShapeError("SaturatingBlur acts on real images; got a complex tensor")
        g = torch.tensor(self.gain, dtype=x.dtype)
        return torch.tanh(g * self.blur(x)) / torch.tanh(g)

    def extra_repr(self) -> str:
        return f"gain={self.gain}, kernel={tuple(self.blur.kernel.shape)}, padding={self.blur.padding}"


class _NumpyCall:
    """``op`` as a picklable numpy function (works with process pools and Dask)."""

    def __init__(self, op: Operator):
        self.op, self.__name__ = op, type(op).__name__

    def __call__(self, x):
        with torch.no_grad():
            return self.op(torch.from_numpy(x)).numpy()


def as_black_box(op: Operator, **kwargs):
    """The same forward model as a numpy :class:`~invsolve.operators.blackbox.BlackBox` (no gradients; picklable,
    so any executor works): ``fn`` receives and returns numpy arrays. ``kwargs`` go to ``BlackBox`` (``executor``,
    ``chunk_size``...)."""
    from .blackbox import BlackBox

    return BlackBox(_NumpyCall(op), input_shape=op.input_shape, output_shape=op.output_shape,
                    input_complex=op.is_complex, default_prior=op.default_prior, **kwargs)
