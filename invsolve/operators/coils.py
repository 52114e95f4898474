"""Coil sensitivity maps: simulated birdcage maps and ESPIRiT estimation (through sigpy)."""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch

from ..errors import ShapeError, missing_extra


def normalize_maps(maps: torch.Tensor, support: Optional[torch.Tensor] = None, eps: float = 1e-8) -> torch.Tensor:
    """Scale maps ``(..., Nc, H, W)`` so that ``Σ_c |S_c|^2 = 1`` (inside ``support`` if given, zero outside)."""
    rss = (maps.abs() ** 2).sum(dim=-3, keepdim=True).sqrt()
    out = maps / rss.clamp_min(eps)
    if support is not None:
        out = out * support.to(out.real.dtype)
    return out


def birdcage(n_coils: int = 8, shape: Tuple[int, int] = (64, 64), radius: float = 1.5, n_rings: int = 1,
             dtype: torch.dtype = torch.complex64, extent: Tuple[float, float] = (1.0, 1.0)) -> torch.Tensor:
    """Simulated birdcage coil maps ``(Nc, H, W)``, normalised to unit sum of squares everywhere.

    ``n_coils`` loops are placed evenly on ``n_rings`` rings of radius ``radius`` (in units of the half field of
    view) around the image; each loop's sensitivity falls off as ``1/distance`` and carries the phase of its
    angular position (the usual Biot–Savart-like 2-D approximation). ``extent``: the grid's half-size along
    (H, W) in those units (default 1: the grid is the field of view); e.g. ``(2.0, 1.15)`` for a 640x368 grid
    around a 320x320 field of view (2x readout oversampling, as in fastMRI).
    """
    if n_coils < 1:
        raise ValueError(f"n_coils must be >= 1, got {n_coils}")
    if len(shape) != 2:
        raise ShapeError(f"shape must be (H, W), got {shape}")
    H, W = shape
    y, x = np.meshgrid(np.linspace(-1, 1, H) * extent[0], np.linspace(-1, 1, W) * extent[1], indexing="ij")
    per_ring = int(np.ceil(n_coils / n_rings))
    maps = []
    for c in range(n_coils):
        ring, k = divmod(c, per_ring)
        theta = 2 * np.pi * k / per_ring + ring * np.pi / per_ring
        cy, cx = radius * np.sin(theta), radius * np.cos(theta)
        dist = np.sqrt((y - cy) ** 2 + (x - cx) ** 2)
        phase = np.arctan2(y - cy, x - cx) - theta
        maps.append(np.exp(1j * phase) / dist)
    S = torch.from_numpy(np.stack(maps)).to(dtype)
    return normalize_maps(S)


def espirit(kspace, calib_width: int = 24, thresh: float = 0.02, kernel_width: int = 6, crop: float = 0.95,
            max_iter: int = 100, show_pbar: bool = False) -> torch.Tensor:
    """Estimate coil maps ``(Nc, H, W)`` complex64 from (undersampled) multi-coil k-space ``(Nc, H, W)``.

    Uses sigpy's ESPIRiT calibration on the fully sampled centre (``calib_width`` lines; the ACS block must be
    at least that wide). Requires the optional extra ``mri`` (sigpy).
    """
    try:
        from sigpy.mri.app import EspiritCalib
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise missing_extra("sigpy", "mri", "ESPIRiT coil-map estimation") from e
    k = kspace.detach().cpu().numpy() if isinstance(kspace, torch.Tensor) else np.asarray(kspace)
    if k.ndim == 4 and k.shape[0] == 1:
        k = k[0]
    if k.ndim != 3 or not np.iscomplexobj(k):
        raise ShapeError(f"kspace must be complex with shape (Nc, H, W), got {k.shape} {k.dtype}")
    maps = EspiritCalib(k.astype(np.complex64), calib_width=calib_width, thresh=thresh, kernel_width=kernel_width,
                        crop=crop, max_iter=max_iter, show_pbar=show_pbar).run()
    return torch.from_numpy(np.asarray(maps)).to(torch.complex64)
