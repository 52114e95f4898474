"""Centred orthonormal 2-D FFT on the last two axes (fastMRI ``fft2c`` convention).

``fft2c(x) = fftshift(fft2(ifftshift(x), norm="ortho"))``: the DC coefficient sits at index ``(H//2, W//2)``
and the transform is unitary, so ``ifft2c`` is its exact adjoint and inverse.
"""
from __future__ import annotations

import torch

_DIMS = (-2, -1)


def fft2c(x: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal 2-D DFT over the last two axes (complex in, complex out)."""
    return torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(x, dim=_DIMS), norm="ortho"), dim=_DIMS)


def ifft2c(k: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`fft2c` (and its adjoint)."""
    return torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(k, dim=_DIMS), norm="ortho"), dim=_DIMS)
