"""Cartesian MRI forward models with the centred orthonormal FFT (:mod:`invsolve.operators.fft`).

``MultiCoilMRI``:  ``(A x)_c = M ⊙ F(S_c x)``,  ``A^H k = Σ_c conj(S_c) ⊙ F^{-1}(M ⊙ k_c)``.
With unit-sum-of-squares maps the spectrum of ``A^H A`` lies in [0, 1].
"""
from __future__ import annotations

from typing import Optional

import torch

from ..errors import DTypeError, ShapeError
from .base import LinearOperator
from .fft import fft2c, ifft2c


def _as_mask(mask, H: Optional[int] = None, W: Optional[int] = None) -> torch.Tensor:
    """Mask ``(H, W)`` or ``(B, H, W)`` -> float32 ``(B|1, 1, H, W)``; a 1-D ``(W,)`` mask selects columns."""
    m = torch.as_tensor(mask)
    if m.is_complex():
        raise DTypeError("mask must be real (0/1 or sampling weights), got a complex tensor")
    if m.dim() == 1:
        if H is None:
            raise ShapeError("a 1-D mask (W,) needs the image height; pass a 2-D mask (H, W) instead")
        m = m[None, :].expand(H, -1)
    if m.dim() == 2:
        m = m[None]
    if m.dim() != 3:
        raise ShapeError(f"mask must have shape (H, W) or (B, H, W), got {tuple(m.shape)}")
    if (H is not None and m.shape[-2] != H) or (W is not None and m.shape[-1] != W):
        raise ShapeError(f"mask has spatial shape {tuple(m.shape[-2:])}, expected ({H}, {W}) to match coil_maps")
    return m.to(torch.float32)[:, None]


class MultiCoilMRI(LinearOperator):
    """Multi-coil Cartesian MRI: complex image ``(B, 1, H, W)`` -> masked k-space ``(B, Nc, H, W)``.

    Args:
        coil_maps: complex sensitivities ``(Nc, H, W)`` (shared by the batch) or ``(B, Nc, H, W)``.
            Conventionally normalised so that ``Σ_c |S_c|^2 = 1`` inside the object
            (see :func:`invsolve.operators.coils.normalize_maps`).
        mask: sampling mask ``(H, W)`` or ``(B, H, W)`` with values in {0, 1} (or density weights), or a 1-D
            column mask ``(W,)``. Unsampled k-space entries of ``A x`` are exactly zero.
    """

    is_complex = True
    default_prior = "mri-brain"
    task_family = "mri"

    def __init__(self, coil_maps, mask):
        super().__init__()
        S = torch.as_tensor(coil_maps)
        if not S.is_complex():
            raise DTypeError(f"coil_maps must be complex (Nc, H, W) or (B, Nc, H, W), got dtype {S.dtype}")
        if S.dim() == 3:
            S = S[None]
        if S.dim() != 4:
            raise ShapeError(f"coil_maps must have shape (Nc, H, W) or (B, Nc, H, W), got {tuple(S.shape)}")
        S = S.to(torch.complex64) if S.dtype == torch.complex32 else S
        _, nc, H, W = S.shape
        M = _as_mask(mask, H, W)
        if M.shape[0] not in (1, S.shape[0]) and S.shape[0] != 1:
            raise ShapeError(f"mask batch {M.shape[0]} does not match coil_maps batch {S.shape[0]}")
        self.register_buffer("maps", S)
        self.register_buffer("mask", M.to(S.real.dtype))
        self.input_shape = (1, H, W)
        self.output_shape = (nc, H, W)

    @property
    def n_coils(self) -> int:
        return self.maps.shape[1]

    def batch_size(self) -> Optional[int]:
        b = max(self.maps.shape[0], self.mask.shape[0])
        return b if b > 1 else None

    def repeat_interleave(self, n: int) -> "MultiCoilMRI":
        if self.batch_size() is None or n == 1:
            return self
        return MultiCoilMRI(self.maps.repeat_interleave(n, 0), self.mask[:, 0].repeat_interleave(n, 0))

    def _check_batch(self, t: torch.Tensor, name: str):
        b = self.batch_size()
        if b is not None and t.shape[0] != b:
            raise ShapeError(f"{name} has batch size {t.shape[0]} but this operator holds per-slice "
                             f"coil maps/masks for a batch of {b}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        self._check_batch(x, "x")
        return self.mask * fft2c(self.maps * x)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        self.check_measurement_shape(y)
        return (self.maps.conj() * ifft2c(self.mask * y)).sum(dim=1, keepdim=True)

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        self._check_batch(x, "x")
        m2 = self.mask * self.mask
        return (self.maps.conj() * ifft2c(m2 * fft2c(self.maps * x))).sum(dim=1, keepdim=True)

    def check_measurement_shape(self, y: torch.Tensor, name: str = "y"):
        from .base import check_tensor

        check_tensor(y, name, self.output_shape, True)
        self._check_batch(y, name)

    def sense_combine(self, kspace_full: torch.Tensor) -> torch.Tensor:
        """Coil-combine fully sampled k-space ``(B, Nc, H, W)`` with the maps: ``Σ conj(S_c) F^{-1} k_c``."""
        return (self.maps.conj() * ifft2c(kspace_full)).sum(dim=1, keepdim=True)


class SingleCoilMRI(LinearOperator):
    """Single-coil Cartesian MRI: complex image ``(B, 1, H, W)`` -> masked k-space ``(B, 1, H, W)``.

    ``A^H A`` is an orthogonal projection for a 0/1 mask, so ``pinv = adjoint`` (zero-filled reconstruction).
    """

    is_complex = True
    default_prior = "mri-brain"
    task_family = "mri"

    def __init__(self, mask, image_shape: Optional[tuple] = None):
        super().__init__()
        H, W = (image_shape if image_shape is not None else (None, None))
        M = _as_mask(mask, H, W)
        self.register_buffer("mask", M)
        self.input_shape = self.output_shape = (1,) + tuple(M.shape[-2:])

    def batch_size(self) -> Optional[int]:
        return self.mask.shape[0] if self.mask.shape[0] > 1 else None

    def repeat_interleave(self, n: int) -> "SingleCoilMRI":
        if self.batch_size() is None or n == 1:
            return self
        return SingleCoilMRI(self.mask[:, 0].repeat_interleave(n, 0))

    def forward(self, x):
        self.check_input(x)
        return self.mask * fft2c(x)

    def adjoint(self, y):
        from .base import check_tensor

        check_tensor(y, "y", self.output_shape, True)
        return ifft2c(self.mask * y)

    def normal(self, x):
        return ifft2c(self.mask * self.mask * fft2c(x))

    def pinv(self, y, iterations: int = 0, reg: float = 0.0):
        binary = bool(((self.mask == 0) | (self.mask == 1)).all())
        if binary and reg == 0:
            return self.adjoint(y)
        return super().pinv(y, iterations=iterations or 30, reg=reg)
