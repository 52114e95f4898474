"""Covariance localisation for ensemble-Kalman updates (an extension of EnKG, not in the paper).

A small ensemble's cross-covariance ``C^{xg}`` between particles and predicted measurements is rank ``J - 1`` and
carries sampling noise of order ``1/sqrt(J)`` in every entry, also between a pixel and a measurement far away from
it. Localisation multiplies it entrywise by a taper ``rho (n_x, n_y)`` that is 1 for a pixel at a measurement's
location and falls to 0 beyond a cut-off distance (Houtekamer & Mitchell 2001; Hamill et al. 2001), so the update is
no longer confined to the ensemble's span: ``x_j <- x_j - (w / s) (rho ∘ C^{xg}) (g_j - y)``.

The taper here is the Gaspari–Cohn (1999) fifth-order piecewise rational function: compactly supported, positive
definite as a correlation function in 2-D and 3-D, close to a Gaussian of the same width.
"""
from __future__ import annotations

from typing import Tuple

import torch


def gaspari_cohn(r: torch.Tensor) -> torch.Tensor:
    """Gaspari–Cohn correlation at scaled distance ``r = d / c`` (``c`` half the support): 1 at 0, 0 for ``r >= 2``.

    ``r``: any shape, non-negative, float. Returns a tensor of the same shape and dtype, values in [0, 1].
    """
    r = r.abs()
    inner = ((-0.25 * r + 0.5) * r + 0.625) * r**3 - 5.0 / 3.0 * r**2 + 1.0
    rs = r.clamp_min(1e-12)
    outer = ((((r / 12.0 - 0.5) * r + 0.625) * r + 5.0 / 3.0) * r - 5.0) * r + 4.0 - 2.0 / (3.0 * rs)
    return torch.where(r <= 1, inner, torch.where(r < 2, outer, torch.zeros_like(r))).clamp(0.0, 1.0)


def periodic_grid_taper(size: int, stride: int, radius: float, channels: int = 1,
                        dtype=torch.float64) -> torch.Tensor:
    """Taper between the pixels of a periodic ``size x size`` grid and the sub-grid observed at every ``stride``-th
    point (rows then columns, as ``x[..., ::stride, ::stride]``), by wrap-around Euclidean distance in grid cells.

    Args:
        size: grid side ``s``.
        stride: observation stride (``ceil(s/stride)`` observations per side).
        radius: cut-off distance in grid cells (the taper is 0 at and beyond it; Gaspari–Cohn with ``c = radius/2``).
        channels: image channels (the taper is repeated for each, unchanged).
    Returns:
        ``(channels * s * s, m * m)`` tensor, ``m = ceil(s / stride)``, values in [0, 1], 1 on co-located pairs.
    """
    if not radius > 0:
        raise ValueError(f"localisation radius must be > 0 grid cells, got {radius!r}")
    g = torch.arange(size, dtype=dtype)
    o = torch.arange(0, size, stride, dtype=dtype)
    d = (g[:, None] - o[None, :]).abs()
    d = torch.minimum(d, size - d)  # (s, m) wrap-around distance along one axis
    dist = (d[:, None, :, None] ** 2 + d[None, :, None, :] ** 2).sqrt()  # (s, s, m, m)
    rho = gaspari_cohn(dist / (radius / 2.0)).reshape(size * size, -1)
    return rho.repeat(channels, 1)


def check_taper(taper: torch.Tensor, n_x: int, n_g: int) -> torch.Tensor:
    """Validate a user's taper against the flattened particle and measurement sizes; float64."""
    if not isinstance(taper, torch.Tensor) or taper.shape != (n_x, n_g):
        shape: Tuple = tuple(getattr(taper, "shape", ()))
        raise ValueError(f"localize: the taper must be a tensor of shape (n_x, n_y) = ({n_x}, {n_g}) (particle "
                         f"entries x measurement entries, complex measurements counted as [Re, Im] pairs), got "
                         f"{shape or type(taper).__name__}")
    if not bool(torch.isfinite(taper).all()):
        raise ValueError("localize: the taper has NaN/Inf entries")
    return taper.double()


__all__ = ["gaspari_cohn", "periodic_grid_taper", "check_taper"]
