"""Inpainting: ``A x = m ⊙ x`` with a 0/1 pixel mask ``m`` (1 = observed); self-adjoint, an orthogonal projection,
so ``A^+ = A``. :func:`random_mask` and :func:`box_mask` draw the masks.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..errors import DTypeError, ShapeError
from .base import LinearOperator, check_real, check_tensor


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
        check_real(t, name)
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
