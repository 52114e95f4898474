"""Image-quality metrics with explicit conventions.

* Complex images are compared by **magnitude**.
* PSNR / SSIM use an explicit ``data_range``; the default is the reference's peak value (max of |ref|) per
  image, which is the usual choice for MRI magnitude images normalised to an arbitrary scale. Natural images
  in [0, 1] should pass ``data_range=1``.
* SSIM comes from scikit-image (``structural_similarity``, Gaussian window, σ = 1.5, as in Wang et al. 2004).
* ``relative_l2`` is ``||x - ref|| / ||ref||`` on the raw values (physical fields).
* ``data_consistency`` is ``||A(x) - y|| / ||y||`` in measurement space.
* ``z_flicker_excess`` / ``z_difference_rmse`` compare a volume's slice-to-slice changes with the reference's
  (slices along the batch axis).
* ``lpips`` (AlexNet) runs only when its weights are already on disk; otherwise :class:`MetricUnavailable` says
  why (never a substitute number).
All functions take ``(B, C, H, W)`` tensors (or ``(C, H, W)`` / ``(H, W)``) and return one value per item.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

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
    """PSNR in dB per item: ``10 log10(R² / MSE)`` with ``R = data_range`` or the peak of ``|ref|``.

    Computed by scikit-image (``peak_signal_noise_ratio``, float64); an exact match (MSE = 0) gives
    ``10 log10(R² / 1e-30)`` instead of infinity so that results stay valid JSON.
    """
    from skimage.metrics import peak_signal_noise_ratio

    x, ref = _mag(_batch(x)).numpy(), _mag(_batch(ref)).numpy()
    _check(x, ref)
    out = []
    for a, b in zip(x, ref):
        r = float(b.max()) if data_range is None else float(data_range)
        if np.mean((a - b) ** 2) < 1e-30:
            out.append(float(10 * np.log10(r**2 / 1e-30)))
        else:
            out.append(float(peak_signal_noise_ratio(b, a, data_range=r)))
    return out


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


def data_consistency(operator, x, y) -> List[float]:
    """Relative data-consistency residual ``||A(x) - y|| / ||y||`` per item (any operator, complex-aware).

    ``x``: reconstructions ``(B, *operator.input_shape)``; ``y``: the measurements they were computed from.
    """
    with torch.no_grad():
        r = (operator(x) - y).flatten(1).abs().double().norm(dim=1)
        return (r / y.flatten(1).abs().double().norm(dim=1).clamp_min(1e-30)).tolist()


# ---------------------------------------------------------------------------------------------------- LPIPS
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"  # torchvision's ImageNet AlexNet, the backbone of LPIPS(net="alex")
_LPIPS_MODEL: dict = {}


class MetricUnavailable(RuntimeError):
    """A metric cannot be computed here (missing package or weights); the message says why."""


def lpips_status() -> Tuple[bool, str]:
    """``(True, "")`` when LPIPS (AlexNet) can be computed offline, else ``(False, reason)``.

    Needs the ``lpips`` package (its linear-layer weights ship inside it) and torchvision's AlexNet weights in the
    torch hub cache (``torch.hub.get_dir()/checkpoints/alexnet-owt-7be5be79.pth``). Nothing is downloaded.
    """
    try:
        import lpips as lpips_pkg
    except ImportError:
        return False, "the 'lpips' package is not installed (pip install lpips)"
    from pathlib import Path

    lin = Path(lpips_pkg.__file__).parent / "weights" / "v0.1" / "alex.pth"
    if not lin.is_file():
        return False, f"lpips' linear weights are missing ({lin})"
    backbone = Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE
    if not backbone.is_file():
        return False, f"AlexNet backbone weights not in the torch hub cache ({backbone})"
    return True, ""


def _lpips_model():
    if "alex" not in _LPIPS_MODEL:
        ok, reason = lpips_status()
        if not ok:
            raise MetricUnavailable(reason)
        import warnings

        import lpips as lpips_pkg

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _LPIPS_MODEL["alex"] = lpips_pkg.LPIPS(net="alex", verbose=False).eval()
    return _LPIPS_MODEL["alex"]


def lpips(x, ref, data_range: Optional[float] = None) -> List[float]:
    """LPIPS (AlexNet, v0.1) per item; lower is closer. Raises :class:`MetricUnavailable` without the weights.

    Images are compared by magnitude when complex; 1-channel images are repeated to RGB; 3-channel images are
    taken as RGB. Values are mapped to LPIPS' [-1, 1] input by ``R = data_range`` (default: the peak of ``|ref|``
    per item): ``2 v / R - 1`` for non-negative references, ``v / R`` for signed ones (fields).
    """
    x, ref = _mag(_batch(x)), _mag(_batch(ref))
    _check(x, ref)
    if x.shape[1] not in (1, 3):
        raise ValueError(f"LPIPS needs 1- or 3-channel images, got {x.shape[1]} channels")
    model = _lpips_model()
    r = ref.flatten(1).abs().amax(1) if data_range is None else torch.full((ref.shape[0],), float(data_range))
    r = r.reshape(-1, 1, 1, 1).clamp_min(1e-30)
    signed = (ref.flatten(1).amin(1) < 0).reshape(-1, 1, 1, 1)

    def prep(v):
        v = torch.where(signed, v / r, 2 * v / r - 1).clamp(-1, 1).float()
        return v.expand(-1, 3, -1, -1) if v.shape[1] == 1 else v

    with torch.no_grad():
        return model(prep(x), prep(ref)).flatten().double().tolist()


def z_flicker_excess(x, ref) -> float:
    """Mean ``|x_{k+1} - x_k|`` over consecutive slices of ``x`` minus the same for ``ref`` (volumes ``(Z, ...)``,
    magnitudes): > 0 is flicker the truth does not have, < 0 is smoothing along z."""
    x, ref = _mag(_batch(x)), _mag(_batch(ref))
    _check(x, ref)
    return float((x[1:] - x[:-1]).abs().mean() - (ref[1:] - ref[:-1]).abs().mean())


def z_difference_rmse(x, ref) -> float:
    """RMS error of the slice-to-slice differences, ``rms((x_{k+1} - x_k) - (ref_{k+1} - ref_k))``."""
    x, ref = _mag(_batch(x)), _mag(_batch(ref))
    _check(x, ref)
    return float(((x[1:] - x[:-1]) - (ref[1:] - ref[:-1])).square().mean().sqrt())
