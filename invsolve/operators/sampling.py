"""Sampling operators: inpainting (pixel masks) and super-resolution (average pooling or antialiased bicubic).

* :class:`Inpainting`: ``A x = m ⊙ x`` with a 0/1 mask ``m`` (1 = observed); self-adjoint, an orthogonal
  projection, so ``A^+ = A``.
* :class:`SuperResolution`: ``(B, C, H, W) -> (B, C, H/f, W/f)``. ``"avgpool"``: mean of each ``f x f`` block
  (``A A^T = I / f²``, so nearest upsampling is ``A^+``). ``"bicubic"``: the separable map ``Y = A_H X A_W^T`` with
  ``A_n`` the ``(n/f, n)`` matrix of antialiased bicubic downsampling (Keys cubic, ``a = -0.5``, stretched by ``f``;
  output pixel ``i`` centred at input coordinate ``(i + 1/2) f - 1/2``; taps beyond the border mirrored with edge
  repetition and rows summing to 1, as in MATLAB's ``imresize``/Shocher's ``Resizer``). Away from the border it equals
  ``F.interpolate(x, scale_factor=1/f, mode="bicubic", antialias=True)``. Adjoint ``A_H^T Y A_W``; ``A^+`` in closed
  form ``A_H^+ Y (A_W^+)^T``.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DTypeError, ShapeError
from .base import LinearOperator, check_tensor


def _spatial(shape: Sequence[int], name: str = "shape") -> Tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    if not 2 <= len(shape) <= 4 or min(shape) < 1:
        raise ShapeError(f"{name} must be (H, W), (B, H, W) or (B, C, H, W) with positive sizes, got {shape}")
    return shape


# -- masks ---------------------------------------------------------------------------------------------------------
def random_mask(shape: Sequence[int], fraction_missing: float, seed: int = 0) -> torch.Tensor:
    """0/1 mask (1 = observed) with exactly ``round(fraction_missing · H · W)`` missing pixels per ``(H, W)`` slice.

    ``shape`` is ``(H, W)`` or has leading batch axes (``(B, H, W)``); each slice gets its own pixels, drawn
    without replacement by ``numpy.random.default_rng(seed)``. Returns float32 of ``shape``.
    """
    shape = _spatial(shape)
    if not 0 <= fraction_missing <= 1:
        raise ValueError(f"fraction_missing must lie in [0, 1], got {fraction_missing!r}")
    rng = np.random.default_rng(seed)
    H, W = shape[-2:]
    n_missing = int(round(fraction_missing * H * W))
    slices = []
    for _ in range(int(np.prod(shape[:-2], dtype=np.int64))):
        m = np.ones(H * W, dtype=np.float32)
        m[rng.permutation(H * W)[:n_missing]] = 0
        slices.append(m)
    return torch.from_numpy(np.stack(slices).reshape(shape))


def box_mask(shape: Sequence[int], box_size: Union[int, Sequence[int]], seed: Optional[int] = None,
             center: Optional[Sequence[int]] = None) -> torch.Tensor:
    """0/1 mask (1 = observed) missing one ``box_size`` rectangle per ``(H, W)`` slice.

    The box is centred on ``center = (row, col)`` if given (box rows ``row - h//2 .. row - h//2 + h - 1``), else
    placed uniformly at random inside the image with ``numpy.random.default_rng(seed)`` if ``seed`` is given
    (one position per slice), else centred in the image. Returns float32 of ``shape``.
    """
    shape = _spatial(shape)
    H, W = shape[-2:]
    h, w = (box_size, box_size) if isinstance(box_size, int) else tuple(int(b) for b in box_size)
    if not (1 <= h <= H and 1 <= w <= W):
        raise ValueError(f"box_size ({h}, {w}) must be positive and fit in the image ({H}, {W})")
    if center is not None and seed is not None:
        raise ValueError("give either center or seed for box_mask, not both")
    n = int(np.prod(shape[:-2], dtype=np.int64))
    if center is not None:
        r0, c0 = int(center[0]) - h // 2, int(center[1]) - w // 2
        if not (0 <= r0 <= H - h and 0 <= c0 <= W - w):
            raise ValueError(f"a ({h}, {w}) box centred at {tuple(center)} does not fit in the image ({H}, {W})")
        corners = [(r0, c0)] * n
    elif seed is not None:
        rng = np.random.default_rng(seed)
        corners = [(int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))) for _ in range(n)]
    else:
        corners = [((H - h) // 2, (W - w) // 2)] * n
    m = torch.ones((n, H, W), dtype=torch.float32)
    for k, (r0, c0) in enumerate(corners):
        m[k, r0:r0 + h, c0:c0 + w] = 0
    return m.reshape(shape)


def _check_real(t: torch.Tensor, name: str):
    if not t.is_floating_point():
        raise DTypeError(f"{name} must be a real floating-point tensor, got dtype {t.dtype}")


# -- inpainting ----------------------------------------------------------------------------------------------------
class Inpainting(LinearOperator):
    """Inpainting ``A x = mask ⊙ x`` on ``(B, C, H, W)`` real images; missing pixels of ``A x`` are 0.

    Args:
        mask: values in {0, 1} (1 = observed), shape ``(H, W)`` (shared), ``(B, H, W)`` (one per item, shared by
            the channels) or ``(B, C, H, W)`` (``B`` or ``C`` may be 1 to broadcast). Stored as the float32 buffer
            ``op.mask`` of shape ``(B|1, C|1, H, W)``.
    """

    default_prior = "natural"
    task_family = "inpaint"

    def __init__(self, mask):
        super().__init__()
        m = mask.detach() if isinstance(mask, torch.Tensor) else torch.as_tensor(np.asarray(mask))
        if m.is_complex():
            raise DTypeError(f"mask must be real 0/1 values, got dtype {m.dtype}")
        if not 2 <= m.dim() <= 4:
            raise ShapeError(f"mask must have shape (H, W), (B, H, W) or (B, C, H, W), got {tuple(m.shape)}")
        m = m.to(torch.float32)
        if not bool(((m == 0) | (m == 1)).all()):
            raise ValueError("mask must contain only 0 (missing) and 1 (observed)")
        m = m.reshape((1,) * (4 - m.dim()) + tuple(m.shape)) if m.dim() != 3 else m[:, None]
        self.register_buffer("mask", m)
        C = m.shape[1]
        self.input_shape = self.output_shape = (None if C == 1 else C,) + tuple(m.shape[-2:])

    def batch_size(self) -> Optional[int]:
        return self.mask.shape[0] if self.mask.shape[0] > 1 else None

    def repeat_interleave(self, n: int) -> "Inpainting":
        if self.batch_size() is None or n == 1:
            return self
        return Inpainting(self.mask.repeat_interleave(n, 0))

    def _check(self, t: torch.Tensor, name: str, shape) -> torch.Tensor:
        if isinstance(t, torch.Tensor) and t.dim() == 4 and t.shape[-2:] != self.mask.shape[-2:]:
            raise ShapeError(f"{name} has shape {tuple(t.shape)} but the mask is {tuple(self.mask.shape[-2:])}: "
                             f"expected (B, C, {self.mask.shape[-2]}, {self.mask.shape[-1]})")
        check_tensor(t, name, shape, False)
        _check_real(t, name)
        b = self.batch_size()
        if b is not None and t.shape[0] != b:
            raise ShapeError(f"{name} has batch size {t.shape[0]} but the mask holds {b} per-item masks")
        return t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x, "x", self.input_shape)
        return self.mask.to(x.dtype) * x

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        self._check(y, "y", self.output_shape)
        return self.mask.to(y.dtype) * y

    normal = forward

    def pinv(self, y: torch.Tensor, iterations: int = 0, reg: float = 0.0) -> torch.Tensor:
        """``mask ⊙ y / (1 + reg)`` (exact: ``A`` is an orthogonal projection)."""
        return self.adjoint(y) / (1 + reg)


# -- super-resolution ----------------------------------------------------------------------------------------------
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
        _check_real(x, "x")
        H, W = x.shape[-2:]
        self._check_divisible(H, W, "x")
        if self.mode == "avgpool":
            return F.avg_pool2d(x, self.factor)
        Ah, Aw = self._mats(H, W, x)
        return Ah @ x @ Aw.T

    def _check_y(self, y: torch.Tensor) -> Tuple[int, int]:
        check_tensor(y, "y", self.output_shape, False)
        _check_real(y, "y")
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

