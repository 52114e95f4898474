"""CT training data (procedural phantoms) and held-out real CT slices.

Intensity convention shared by phantoms and real slices: attenuation-like units in [0, 1] obtained from the HU
window ``[-1000, 1000]`` (``u = (HU + 1000) / 2000``): 0 = air, 0.5 = water / soft tissue, ~0.25 = lung,
>= 0.75 = bone. Training batches are mapped to prior space ``2u - 1`` (so [-1, 1]).

* :func:`sample_phantoms` draws a batch of random phantoms on any device, fully vectorised over the batch.
* ``ct-phantom`` (registered training source) wraps it.
* :func:`heldout_ct_slices` returns the real CT slices shipped with pydicom (never used for training).
* :func:`load_dicom` reads a user's DICOM file or series directory.
"""
from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import List, Tuple

import torch
import torch.nn.functional as F

from ..errors import InputFileError, missing_extra
from .base import TrainSource, register_dataset

HU_WINDOW = (-1000.0, 1000.0)

_N_ELLIPSES = 10  # inner ellipses per phantom (a random number of them are switched on)
_N_LESIONS = 4  # small lesions per phantom (a random number of them are switched on)


# ----------------------------------------------------------------------------------------------- phantoms
def _u(shape, g, device, lo=0.0, hi=1.0):
    return lo + (hi - lo) * torch.rand(shape, generator=g, device=device)


def _superellipse(x, y, cx, cy, a, b, theta, p, px):
    """Anti-aliased indicator of the superellipse ``|x'/a|^p + |y'/b|^p <= 1`` (x', y' rotated by theta).

    Grid ``x``: (1, 1, 1, W), ``y``: (1, 1, H, 1); parameters: (B, K, 1, 1). Returns (B, K, H, W) in [0, 1]
    with a ~1-pixel ramp (``px`` = pixel size in grid units).
    """
    c, s = torch.cos(theta), torch.sin(theta)
    dx, dy = x - cx, y - cy
    xr = (c * dx + s * dy) / a
    yr = (-s * dx + c * dy) / b
    r = (xr.abs().clamp_min(1e-12) ** p + yr.abs().clamp_min(1e-12) ** p) ** (1.0 / p)
    dist = (r - 1.0) * torch.minimum(a, b)  # approximate signed distance to the boundary
    return (0.5 - dist / px).clamp(0.0, 1.0)


def _ellipses(x, y, cx, cy, a, b, theta, px):
    """Anti-aliased ellipse indicators, same shapes as :func:`_superellipse` with p = 2, in few full-size ops.

    With ``q = x'^2/a^2 + y'^2/b^2`` (a quadratic form in dx, dy) the boundary distance is approximated by
    ``(q - 1) min(a, b) / 2`` (exact to first order at the boundary, where the ramp lives).
    """
    c, s = torch.cos(theta), torch.sin(theta)
    k = torch.minimum(a, b) / (2.0 * px)
    ia, ib = 1.0 / (a * a), 1.0 / (b * b)
    dx, dy = x - cx, y - cy  # (B, K, 1, W), (B, K, H, 1)
    qx = dx * dx * ((c * c * ia + s * s * ib) * k)
    qy = dy * dy * ((s * s * ia + c * c * ib) * k)
    q = (dx * (2.0 * c * s * (ia - ib) * k)) * dy + qx + qy  # k * (x'^2/a^2 + y'^2/b^2)
    return (0.5 + k - q).clamp(0.0, 1.0)


def _gaussian_random_field(batch, size, g, device):
    """Smooth zero-mean unit-std Gaussian random fields (B, 1, size, size) with a random correlation length."""
    noise = torch.randn(batch, 1, size, size, generator=g, device=device)
    k = torch.fft.fftfreq(size, device=device)
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    ell = _u((batch, 1, 1, 1), g, device, 0.015, 0.07) * size  # correlation length in pixels
    spec = torch.exp(-0.5 * k2 * (2 * math.pi * ell) ** 2)
    field = torch.fft.ifft2(torch.fft.fft2(noise) * spec).real
    field = field - field.mean(dim=(-2, -1), keepdim=True)
    return field / field.std(dim=(-2, -1), keepdim=True).clamp_min(1e-6)


def sample_phantoms(batch: int, size: int = 64, generator: torch.Generator = None, device=None,
                    return_variants: bool = False):
    """Draw ``batch`` random CT-like phantoms, (B, 1, size, size) float32 in [0, 1] (see module units).

    Every phantom has a body (superellipse, exponent 1.7-4, random axes, centre and rotation: round heads to
    boxy trunks) of soft tissue (0.42-0.58) with a skin/fat rim; half get a skull-like bright ring (0.75-1.0).
    Up to 10 inner ellipses (random position inside the body, axes, angle, additive intensity -0.35..+0.35,
    e.g. lung-like dark or bone-like bright regions) are added; ~half the phantoms have their tissue modulated by
    a smooth Gaussian random field (random correlation length and amplitude); ~half get 1-4 small lesions (hard
    discs or soft blobs, bright or dark). A global contrast factor (0.85-1.1) varies overall intensity.
    Drawn entirely with ``generator`` on ``device``: the same generator state gives the same batch.
    With ``return_variants`` also returns ``{"skull", "textured", "lesions"}``: bool tensors (B,) saying which
    variants each phantom has.
    """
    if generator is None:
        generator = torch.Generator(device=device or "cpu").manual_seed(0)
    device = torch.device(device) if device is not None else generator.device
    g, B, K, L = generator, batch, _N_ELLIPSES, _N_LESIONS
    px = 2.0 / size
    lin = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) * px - 1.0
    y = lin.view(1, 1, size, 1)
    x = lin.view(1, 1, 1, size)

    def u(shape, lo=0.0, hi=1.0):
        return _u(shape, g, device, lo, hi)

    # body: superellipse, rotated and shifted
    one = (B, 1, 1, 1)
    bcx, bcy = u(one, -0.08, 0.08), u(one, -0.08, 0.08)
    ba, bb = u(one, 0.55, 0.9), u(one, 0.45, 0.85)
    bth = u(one, -math.pi, math.pi)
    bp = u(one, 1.7, 4.0)
    reach = torch.maximum(torch.maximum(ba, bb), 2.0 ** (-1.0 / bp) * (ba**2 + bb**2).sqrt())  # max radius
    fit = ((0.92 - (bcx**2 + bcy**2).sqrt()) / reach).clamp(max=1.0)  # keep the body inside the image
    ba, bb = ba * fit, bb * fit
    body = _superellipse(x, y, bcx, bcy, ba, bb, bth, bp, px)
    skull = (u(one) < 0.5).float()
    rim = skull * u(one, 0.04, 0.1) + (1 - skull) * u(one, 0.015, 0.04)  # skull / skin thickness
    inner = _superellipse(x, y, bcx, bcy, ba - rim, bb - rim, bth, bp, px)
    tissue = u(one, 0.42, 0.58)
    rim_val = skull * u(one, 0.75, 1.0) + (1 - skull) * (tissue - u(one, 0.0, 0.1))
    img = rim_val * (body - inner) + tissue * inner

    # inner ellipses (additive), centres inside the body in its own frame
    kk = (B, K, 1, 1)
    on = (torch.arange(K, device=device).view(1, K, 1, 1) < torch.randint(3, K + 1, one, generator=g, device=device))
    rad, ang = u(kk).sqrt() * 0.7, u(kk, -math.pi, math.pi)
    ex, ey = rad * torch.cos(ang) * (ba - rim), rad * torch.sin(ang) * (bb - rim)
    c, s = torch.cos(bth), torch.sin(bth)
    ecx, ecy = bcx + c * ex - s * ey, bcy + s * ex + c * ey
    scale = u(kk) ** 1.5  # favour small structures
    ea, eb = 0.04 + 0.32 * scale * u(kk, 0.6, 1.0), 0.04 + 0.32 * scale * u(kk, 0.3, 1.0)
    amp = u(kk, -0.35, 0.35) * on
    ell = _ellipses(x, y, ecx, ecy, ea, eb, u(kk, -math.pi, math.pi), px)
    img = img + (amp * ell).sum(1, keepdim=True) * inner

    # texture: smooth random field modulating the tissue
    textured = (u(one) < 0.5).float()
    tex_amp = textured * u(one, 0.02, 0.08)
    img = img + tex_amp * _gaussian_random_field(B, size, g, device) * inner

    # lesions: small discs or gaussian blobs, bright or dark
    ll = (B, L, 1, 1)
    has_lesions = u(one) < 0.5
    lon = has_lesions & (torch.arange(L, device=device).view(1, L, 1, 1)
                         < torch.randint(1, L + 1, one, generator=g, device=device))
    rad, ang = u(ll).sqrt() * 0.75, u(ll, -math.pi, math.pi)
    lx, ly = rad * torch.cos(ang) * (ba - rim), rad * torch.sin(ang) * (bb - rim)
    lcx, lcy = bcx + c * lx - s * ly, bcy + s * lx + c * ly
    lr = u(ll, 0.025, 0.07)
    r2 = (x - lcx) ** 2 / lr**2 + (y - lcy) ** 2 / lr**2  # (B, L, H, W), one full-size add
    soft = u(ll) < 0.5
    disc = (0.5 + (1.0 - r2) * (lr / (2.0 * px))).clamp(0.0, 1.0)  # ramp as in _ellipses
    profile = torch.where(soft, torch.exp(-2.0 * r2), disc)
    sign = torch.where(u(ll) < 0.6, 1.0, -1.0)
    lamp = sign * u(ll, 0.1, 0.3) * lon
    img = img + (lamp * profile).sum(1, keepdim=True) * inner

    img = (img * u(one, 0.85, 1.1)).clamp(0.0, 1.0)
    if return_variants:
        return img, {"skull": skull.view(B) > 0, "textured": textured.view(B) > 0, "lesions": has_lesions.view(B)}
    return img


@register_dataset("ct-phantom")
def build(image_size: int = 64, seed: int = 0, **_) -> TrainSource:
    """Training source of procedural CT phantoms (1 channel, prior space ``2u - 1`` in [-1, 1])."""
    size = int(image_size)

    def sample(batch_size: int, generator: torch.Generator, device) -> torch.Tensor:
        return sample_phantoms(batch_size, size, generator, device) * 2.0 - 1.0

    description = (
        f"Procedural CT-like phantoms at {size}x{size}, drawn on the fly on the training device (unlimited, no "
        "image repeats). Units: HU window [-1000, 1000] mapped to [0, 1] (air 0, soft tissue ~0.5, bone >= 0.75), "
        "then to prior space 2u-1. Each phantom: a rotated superellipse body (round heads to boxy trunks) of "
        "soft tissue with a skin rim, half with a bright skull-like ring; 3-10 additive inner ellipses (dark "
        "lung-like to bright bone-like) inside the body; half with smooth Gaussian-random-field texture in the "
        "tissue; half with 1-4 small bright or dark lesions (discs or blobs); random global contrast. Held out "
        "(never used for training): the real CT slices shipped with pydicom (CT_small.dcm and the 512x512 "
        "JPEG 2000 head slices), see invsolve.data.ct.heldout_ct_slices."
    )
    info = {"kind": "ct-phantom", "procedural": True, "seed": int(seed), "hu_window": list(HU_WINDOW),
            "heldout": list(HELDOUT_CT_FILES)}
    info["heldout_name"] = "real pydicom CT slices"

    def heldout() -> torch.Tensor:
        return heldout_ct_slices(size)[0] * 2 - 1

    return TrainSource(sample=sample, channels=1, image_size=(size, size), description=description, info=info,
                       heldout=heldout)


# ----------------------------------------------------------------------------------------------- real slices
HELDOUT_CT_FILES = ("CT_small.dcm", "693_J2KI.dcm", "J2K_pixelrep_mismatch.dcm")


def _pydicom():
    try:
        import pydicom
    except ImportError as e:
        raise missing_extra("pydicom", "data", "Reading DICOM files") from e
    return pydicom


def read_hu(path) -> Tuple[torch.Tensor, object]:
    """One DICOM file -> (HU image (H, W) float32, dataset)."""
    pydicom = _pydicom()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(str(path))
            arr = ds.pixel_array
    except FileNotFoundError as e:
        raise InputFileError(f"DICOM file not found: {path}") from e
    except Exception as e:  # invalid file, missing pixel data, no decoder for the transfer syntax
        raise InputFileError(f"cannot read DICOM image from {path}: {type(e).__name__}: {e}") from e
    if arr.ndim != 2:
        raise InputFileError(f"DICOM file {path} holds an array of shape {arr.shape}; expected one 2D slice")
    slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
    return torch.from_numpy(arr.astype("float32")) * slope + intercept, ds


def load_dicom(path) -> torch.Tensor:
    """Read a DICOM slice or a series directory into HU values (rescale slope/intercept applied).

    Args:
        path: a DICOM file, or a directory whose DICOM files form one series (sorted by ImagePositionPatient
            along the slice normal when present, else InstanceNumber).
    Returns:
        float32 tensor (1, 1, H, W) for a file, (N, 1, H, W) for a directory, in Hounsfield units (unwindowed).
    Raises:
        InputFileError: the path does not exist, holds no readable DICOM slices, or slices differ in size.
        MissingDependencyError: pydicom is not installed.
    """
    _pydicom()
    p = Path(path)
    if not p.exists():
        raise InputFileError(f"load_dicom: path {str(p)!r} does not exist (expected a DICOM file or directory)")
    if p.is_file():
        return read_hu(p)[0][None, None]
    slices = []
    for f in sorted(q for q in p.iterdir() if q.is_file()):
        try:
            slices.append(read_hu(f))
        except InputFileError:
            continue  # not a DICOM image (DICOMDIR, notes, ...)
    if not slices:
        raise InputFileError(f"load_dicom: directory {str(p)!r} contains no readable DICOM image slices")

    def key(item):
        ds = item[1]
        pos, orient = getattr(ds, "ImagePositionPatient", None), getattr(ds, "ImageOrientationPatient", None)
        if pos is not None and orient is not None:
            r, c = [float(v) for v in orient[:3]], [float(v) for v in orient[3:]]
            n = (r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0])
            return (0, sum(float(a) * b for a, b in zip(pos, n, strict=True)))
        return (1, float(getattr(ds, "InstanceNumber", 0) or 0))

    slices.sort(key=key)
    shapes = {tuple(s[0].shape) for s in slices}
    if len(shapes) > 1:
        raise InputFileError(f"load_dicom: slices in {str(p)!r} have different sizes {sorted(shapes)}")
    return torch.stack([s[0] for s in slices])[:, None]


def window(hu: torch.Tensor, lo: float = HU_WINDOW[0], hi: float = HU_WINDOW[1]) -> torch.Tensor:
    """Map HU to [0, 1] through the window [lo, hi] (clipped)."""
    return ((hu - lo) / (hi - lo)).clamp(0.0, 1.0)


def crop_to_body(img: torch.Tensor, size: int, threshold: float = 0.25, margin: float = 0.06) -> torch.Tensor:
    """Crop a windowed slice (H, W) in [0, 1] to a square around its largest connected region above
    ``threshold`` (the body; drops table/headrest lines), pad with air, resize antialiased -> (size, size)."""
    from scipy import ndimage

    fg = (img > threshold).numpy()
    labels, n = ndimage.label(ndimage.binary_opening(fg, iterations=2) if fg.sum() else fg)
    if n:
        largest = 1 + int(torch.bincount(torch.from_numpy(labels).flatten())[1:].argmax())
        rows, cols = (labels == largest).any(1).nonzero()[0], (labels == largest).any(0).nonzero()[0]
        r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    else:
        r0, r1, c0, c1 = 0, img.shape[0], 0, img.shape[1]
    h, w = img.shape
    side = int(round(max(r1 - r0, c1 - c0) * (1 + 2 * margin)))
    side = min(side, max(r1 - r0, c1 - c0, min(h, w)))  # a body filling the image: no artificial air frame
    top = min(max((r0 + r1) // 2 - side // 2, 0), max(h - side, 0)) if side <= h else (r0 + r1) // 2 - side // 2
    left = min(max((c0 + c1) // 2 - side // 2, 0), max(w - side, 0)) if side <= w else (c0 + c1) // 2 - side // 2
    pad = max(0, -top, -left, top + side - h, left + side - w)
    padded = F.pad(img[None, None], (pad, pad, pad, pad), value=0.0)
    crop = padded[..., top + pad: top + pad + side, left + pad: left + pad + side]
    return F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0, 0]


def pydicom_test_dir() -> Path:
    pydicom = _pydicom()
    return Path(os.path.dirname(pydicom.__file__)) / "data" / "test_files"


def heldout_ct_slices(size: int = 64) -> Tuple[torch.Tensor, List[str]]:
    """Real CT slices shipped with pydicom, for evaluating the CT prior (never used in training).

    Files read from pydicom's on-disk test-file folder only (no download): ``CT_small.dcm`` (128x128 chest /
    spine crop) and the 512x512 JPEG 2000 head slices ``693_J2KI.dcm`` and ``J2K_pixelrep_mismatch.dcm`` (those
    need a JPEG 2000 decoder such as Pillow with OpenJPEG; slices that cannot be decoded are skipped).
    Each slice: HU via RescaleSlope/Intercept, window [-1000, 1000] HU -> [0, 1], cropped to the body (largest
    connected region above -500 HU, square with a 6% margin, air padding), bilinear antialiased resize.

    Returns:
        (images (n, 1, size, size) float32 in [0, 1], names (file names, length n)).
    Raises:
        InputFileError: not one slice could be read.
    """
    root = pydicom_test_dir()
    images, names = [], []
    for name in HELDOUT_CT_FILES:
        path = root / name
        if not path.is_file():
            continue
        try:
            hu, _ = read_hu(path)
        except InputFileError:
            continue
        images.append(crop_to_body(window(hu), size))
        names.append(name)
    if not images:
        raise InputFileError(f"no held-out CT slice could be read from {root} (files {HELDOUT_CT_FILES})")
    return torch.stack(images)[:, None], names
