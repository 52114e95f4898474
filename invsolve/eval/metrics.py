"""Image-quality metrics with explicit conventions.

* Complex images are compared by **magnitude**.
* PSNR / SSIM use an explicit ``data_range``; the default is the reference's peak value (max of |ref|) per
  image, which is the usual choice for MRI magnitude images normalised to an arbitrary scale. Natural images
  in [0, 1] should pass ``data_range=1``.
* SSIM comes from scikit-image (``structural_similarity``, Gaussian window, σ = 1.5, as in Wang et al. 2004).
* ``relative_l2`` is ``||x - ref|| / ||ref||`` on the raw values (physical fields).
All functions take ``(B, C, H, W)`` tensors (or ``(C, H, W)`` / ``(H, W)``) and return one value per item.
"""
from __future__ import annotations

from typing import List, Optional

import numpy as np
import torch


def _batch(x) -> torch.Tensor:
    x = torch.as_tensor(x).detach().cpu()
    if x.dim() == 2:
        x = x[None, None]
    elif x.dim() == 3:
        x = x[None]
    return x


def _mag(x: torch.Tensor) -> torch.Tensor:
    return (x.abs() if x.is_complex() else x).double()


def _check(x, ref):
    if x.shape != ref.shape:
        raise ValueError(f"x has shape {tuple(x.shape)} but ref has shape {tuple(ref.shape)}")


def psnr(x, ref, data_range: Optional[float] = None) -> List[float]:
    """PSNR in dB per item: ``10 log10(R² / MSE)`` with ``R = data_range`` or the peak of ``|ref|``."""
    x, ref = _mag(_batch(x)), _mag(_batch(ref))
    _check(x, ref)
    mse = ((x - ref) ** 2).flatten(1).mean(1)
    r = ref.flatten(1).amax(1) if data_range is None else torch.full_like(mse, float(data_range))
    return (10 * torch.log10(r**2 / mse.clamp_min(1e-30))).tolist()


def ssim(x, ref, data_range: Optional[float] = None) -> List[float]:
    """SSIM per item (scikit-image, Gaussian weights, channels averaged)."""
    from skimage.metrics import structural_similarity

    x, ref = _mag(_batch(x)).numpy(), _mag(_batch(ref)).numpy()
    _check(x, ref)
    out = []
    for a, b in zip(x, ref):
        r = float(b.max()) if data_range is None else float(data_range)
        vals = [structural_similarity(ai, bi, data_range=r, gaussian_weights=True, sigma=1.5,
                                      use_sample_covariance=False) for ai, bi in zip(a, b)]
        out.append(float(np.mean(vals)))
    return out


def relative_l2(x, ref) -> List[float]:
    """``||x - ref||_2 / ||ref||_2`` per item (complex-aware, no magnitude)."""
    x, ref = _batch(x), _batch(ref)
    _check(x, ref)
    d = (x - ref).flatten(1).abs().double().norm(dim=1)
    return (d / ref.flatten(1).abs().double().norm(dim=1).clamp_min(1e-30)).tolist()


def minmax_psnr(x, ref) -> List[float]:
    """DDS's reporting protocol: PSNR between min-max-normalised magnitudes (data range 1)."""
    def nrm(v):
        v = _mag(_batch(v))
        lo = v.flatten(1).amin(1).reshape(-1, 1, 1, 1)
        hi = v.flatten(1).amax(1).reshape(-1, 1, 1, 1)
        return (v - lo) / (hi - lo).clamp_min(1e-30)

    return psnr(nrm(x), nrm(ref), data_range=1.0)
