"""Super-resolution: ``(B, C, H, W) -> (B, C, H/f, W/f)``.

``"avgpool"``: mean of each ``f x f`` block (``A A^T = I / f²``, so nearest upsampling is ``A^+``). ``"bicubic"``: the
separable map ``Y = A_H X A_W^T`` with ``A_n`` the ``(n/f, n)`` matrix of antialiased bicubic downsampling (Keys
cubic, ``a = -0.5``, stretched by ``f``; output pixel ``i`` centred at input coordinate ``(i + 1/2) f - 1/2``; taps
beyond the border mirrored with edge repetition and rows summing to 1, as in MATLAB's ``imresize``/Shocher's
``Resizer``). Away from the border it equals ``F.interpolate(x, scale_factor=1/f, mode="bicubic", antialias=True)``.
Adjoint ``A_H^T Y A_W``; ``A^+`` in closed form ``A_H^+ Y (A_W^+)^T``.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ShapeError
from .base import LinearOperator, check_real, check_tensor


def _keys_cubic(t: np.ndarray) -> np.ndarray:
    t = np.abs(t)
    return np.where(t <= 1, 1.5 * t**3 - 2.5 * t**2 + 1, np.where(t < 2, -0.5 * t**3 + 2.5 * t**2 - 4 * t + 2, 0.0))


@lru_cache(maxsize=32)
def bicubic_matrix(n: int, factor: int) -> torch.Tensor:
    """``(n // factor, n)`` float64 matrix of antialiased bicubic downsampling along one axis (module docstring)."""
    m = n // factor
    centre = (np.arange(m) + 0.5) * factor - 0.5
    taps = np.arange(-2 * factor, 2 * factor + 1)
    j = np.floor(centre)[:, None].astype(np.int64) + taps[None, :]
    w = _keys_cubic((j - centre[:, None]) / factor)
    w /= w.sum(axis=1, keepdims=True)
    j = np.where(j < 0, -j - 1, j)  # mirror with edge repetition: -1 -> 0, n -> n - 1
    j = np.where(j >= n, 2 * n - 1 - j, j)
    A = np.zeros((m, n))
    np.add.at(A, (np.broadcast_to(np.arange(m)[:, None], j.shape), j), w)
    return torch.from_numpy(A)


@lru_cache(maxsize=32)
def _bicubic_pinv(n: int, factor: int) -> torch.Tensor:
    return torch.linalg.pinv(bicubic_matrix(n, factor))


class SuperResolution(LinearOperator):
    """Downsampling by an integer ``factor``: ``(B, C, H, W) -> (B, C, H/f, W/f)`` (module docstring).

    Args:
        factor: integer ``f >= 1``; ``H`` and ``W`` must be divisible by it.
        mode: ``"avgpool"`` or ``"bicubic"``.
        image_size: optional ``(H, W)`` (or ``H``); fixes ``input_shape``/``output_shape``.
    """

    default_prior = "natural"
    task_family = "sr"
    MODES = ("avgpool", "bicubic")

    def __init__(self, factor: int, mode: str = "bicubic", image_size: Optional[Union[int, Sequence[int]]] = None):
        super().__init__()
        if int(factor) != factor or factor < 1:
            raise ValueError(f"factor must be a positive integer, got {factor!r}")
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        self.factor, self.mode = int(factor), mode
        self.input_shape = self.output_shape = (None, None, None)
        if image_size is not None:
            H, W = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
            self._check_divisible(H, W, "image_size")
            self.input_shape = (None, H, W)
            self.output_shape = (None, H // self.factor, W // self.factor)

    def _check_divisible(self, H: int, W: int, name: str):
        f = self.factor
        if H % f or W % f:
            raise ShapeError(f"{name} has spatial size ({H}, {W}); SuperResolution(factor={f}) needs both divisible "
                             f"by {f}, e.g. ({H - H % f}, {W - W % f}) after cropping")

    def _mats(self, H: int, W: int, like: torch.Tensor, pinv: bool = False):
        get = _bicubic_pinv if pinv else bicubic_matrix
        return (get(H, self.factor).to(like.device, like.dtype), get(W, self.factor).to(like.device, like.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        check_real(x, "x")
        H, W = x.shape[-2:]
        self._check_divisible(H, W, "x")
        if self.mode == "avgpool":
            return F.avg_pool2d(x, self.factor)
        Ah, Aw = self._mats(H, W, x)
        return Ah @ x @ Aw.T

    def _check_y(self, y: torch.Tensor) -> Tuple[int, int]:
        check_tensor(y, "y", self.output_shape, False)
        check_real(y, "y")
        return y.shape[-2] * self.factor, y.shape[-1] * self.factor

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        H, W = self._check_y(y)
        f = self.factor
        if self.mode == "avgpool":
            return y.repeat_interleave(f, dim=-2).repeat_interleave(f, dim=-1) / f**2
        Ah, Aw = self._mats(H, W, y)
        return Ah.T @ y @ Aw

    def pinv(self, y: torch.Tensor, iterations: int = 30, reg: float = 0.0) -> torch.Tensor:
        """Minimum-norm solution of ``A x = y`` in closed form (``reg > 0``: CG on the regularised normal
        equations). avgpool: nearest upsampling; bicubic: ``A_H^+ y (A_W^+)^T``."""
        if reg > 0:
            return super().pinv(y, iterations=iterations, reg=reg)
        H, W = self._check_y(y)
        if self.mode == "avgpool":
            return self.factor**2 * self.adjoint(y)
        Ph, Pw = self._mats(H, W, y, pinv=True)
        return Ph @ y @ Pw.T

    def extra_repr(self) -> str:
        return f"factor={self.factor}, mode={self.mode!r}"
