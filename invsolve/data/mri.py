"""Brain MRI data: MNI152 T1 axial slices (training + held-out slab), dipy's T1 slice, synthetic phase.

* Training slices: axial slices of nilearn's MNI152 2009 T1 template (1 mm, skull-stripped) with brain content,
  **excluding** the held-out slab ``HELDOUT_Z`` and a ``GUARD``-slice margin on either side.
* Held-out: the slab ``HELDOUT_Z`` (never trained on), and dipy's real T1 coronal slice (a different subject,
  scanner and orientation: out of distribution).
* Complex images: magnitude × exp(i φ) with a smooth random phase φ (constant + linear ramp + low-frequency
  Fourier modes), the usual model of MR phase from B0 inhomogeneity and coil/receiver offsets.
* Scale: every image is normalised so that the 99th percentile of ``|x|`` is 1 (:func:`robust_scale`); the same
  rule sets the data scale inside :func:`invsolve.solve`, so prior and measurement agree.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import List, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import missing_extra
from .base import TrainSource, register_dataset

HELDOUT_Z = tuple(range(96, 112))  # axial slab (1 mm slices) never used for training
GUARD = 4  # extra slices on each side of the slab also excluded from training
Z_RANGE = (20, 150)  # axial slices with brain content


def robust_scale(x: torch.Tensor, q: float = 0.99) -> torch.Tensor:
    """Per-item ``q``-quantile of ``|x|`` over all but the batch axis, shape ``(B,)``."""
    a = x.abs().reshape(x.shape[0], -1).float()
    return torch.quantile(a, q, dim=1).clamp_min(1e-12)


@lru_cache(maxsize=1)
def mni_volume() -> np.ndarray:
    """MNI152 2009 T1 template cropped in-plane to the brain, float32 ``(X, Y, 189)`` in [0, 1] (z: inf→sup)."""
    try:
        from nilearn import datasets
    except ImportError as e:
        raise missing_extra("nilearn", "data", "The MNI152 brain data") from e
    v = np.asarray(datasets.load_mni152_template(resolution=1).get_fdata(), dtype=np.float32)
    # crop the in-plane field of view to the brain's bounding box (+4 voxels) so 64x64 keeps the detail
    mask = v.max(axis=2) > 0.05
    xs, ys = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    return v[max(xs[0] - 4, 0):xs[-1] + 5, max(ys[0] - 4, 0):ys[-1] + 5]


def _square(img: np.ndarray) -> np.ndarray:
    H, W = img.shape
    n = max(H, W)
    out = np.zeros((n, n), dtype=np.float32)
    out[(n - H) // 2:(n - H) // 2 + H, (n - W) // 2:(n - W) // 2 + W] = img
    return out


def _resize(imgs: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(imgs, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def axial_slices(z: List[int], size: int) -> torch.Tensor:
    """Axial MNI slices ``(n, 1, size, size)`` float32 in [0, 1], anterior up (radiological display)."""
    v = mni_volume()
    sl = [np.rot90(_square(v[:, :, k])).copy() for k in z]
    return _resize(torch.from_numpy(np.stack(sl))[:, None], size).clamp(0, 1)


def training_z() -> List[int]:
    lo, hi = HELDOUT_Z[0] - GUARD, HELDOUT_Z[-1] + GUARD
    return [z for z in range(*Z_RANGE) if not lo <= z <= hi]


def smooth_phase(n: int, size: int, generator: torch.Generator, device, max_order: int = 3,
                 amplitude: float = 1.0) -> torch.Tensor:
    """Random smooth phase maps ``(n, 1, size, size)`` in radians.

    φ = φ0 + a·x + b·y + Σ_{|k|<=max_order} c_k cos(k·r + θ_k), with φ0 ~ U(-π, π), ramps up to ±π/2 across the
    field of view, and low-frequency modes of total std ``amplitude`` radians.
    """
    def u(*shape):
        return torch.rand(*shape, generator=generator, device=device)

    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size, device=device),
                            torch.linspace(-1, 1, size, device=device), indexing="ij")
    phi = (u(n, 1, 1) * 2 - 1) * math.pi
    phi = phi + (u(n, 1, 1) * 2 - 1) * math.pi / 2 * xx + (u(n, 1, 1) * 2 - 1) * math.pi / 2 * yy
    ks = [(i, j) for i in range(max_order + 1) for j in range(-max_order, max_order + 1) if (i, j) > (0, 0)]
    coef = torch.randn(n, len(ks), 1, 1, generator=generator, device=device) * amplitude / math.sqrt(len(ks))
    theta = u(n, len(ks), 1, 1) * 2 * math.pi
    kk = torch.tensor(ks, device=device, dtype=torch.float32)
    arg = math.pi / 2 * (kk[:, 0, None, None] * xx + kk[:, 1, None, None] * yy)
    phi = phi + (coef * torch.cos(arg[None] + theta)).sum(1)
    return phi[:, None]


def to_complex(mag: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """``mag · exp(i phase)`` normalised by :func:`robust_scale`; complex64 ``(n, 1, H, W)``."""
    z = torch.polar(mag.float(), phase.float())
    return z / robust_scale(z).reshape(-1, 1, 1, 1)


def _augment(base: torch.Tensor, n: int, size: int, g: torch.Generator, device) -> torch.Tensor:
    """Random slices with flips, small affine (rot ±10°, scale 0.9–1.12, shift ±6 %), gamma and bias field."""
    idx = torch.randint(0, base.shape[0], (n,), generator=g, device=device)
    img = base[idx]

    def u(*shape):
        return torch.rand(*shape, generator=g, device=device)

    ang = (u(n) * 2 - 1) * math.radians(10)
    scale = 0.9 + 0.22 * u(n)
    flip = torch.where(u(n) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(ang) / scale, torch.sin(ang) / scale
    theta = torch.stack([torch.stack([cos * flip, -sin, (u(n) * 2 - 1) * 0.12], 1),
                         torch.stack([sin * flip, cos, (u(n) * 2 - 1) * 0.12], 1)], 1)
    grid = F.affine_grid(theta, list(img.shape), align_corners=False)
    img = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    img = F.avg_pool2d(img, img.shape[-1] // size) if img.shape[-1] != size else img
    gamma = torch.exp((u(n, 1, 1, 1) * 2 - 1) * math.log(1.3))
    img = img.clamp_min(0) ** gamma
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size, device=device),
                            torch.linspace(-1, 1, size, device=device), indexing="ij")
    bias = 1 + 0.15 * ((u(n, 1, 1, 1) * 2 - 1) * xx + (u(n, 1, 1, 1) * 2 - 1) * yy)
    return img * bias


@register_dataset("mri-brain")
def build(image_size: int = 64, oversample: int = 2, phase_amplitude: float = 1.0, seed: int = 0,
          **_) -> TrainSource:
    """Training source for the complex ``mri-brain`` prior (prior space: ``[Re, Im]``, 99th pct |x| = 1)."""
    z = training_z()
    base_cpu = axial_slices(z, image_size * oversample)

    cache = {}

    def sample(batch: int, g: torch.Generator, device) -> torch.Tensor:
        if device not in cache:
            cache[device] = base_cpu.to(device)
        mag = _augment(cache[device], batch, image_size, g, device)
        zc = to_complex(mag, smooth_phase(batch, image_size, g, device, amplitude=phase_amplitude))
        return torch.cat([zc.real, zc.imag], 1)

    desc = (f"{len(z)} axial slices (z = {z[0]}..{z[-1]}) of nilearn's MNI152 2009 T1 template (1 mm, skull-"
            f"stripped), excluding the held-out slab z = {HELDOUT_Z[0]}..{HELDOUT_Z[-1]} and {GUARD} guard slices "
            f"on each side. Augmentation on the fly: left-right flips, rotation ±10°, scale 0.9–1.12, shifts ±6 %, "
            f"gamma 1/1.3–1.3, linear bias field ±15 %, and a smooth random phase (constant, ramps, low-frequency "
            f"modes). Each image is scaled so that the 99th percentile of |x| is 1; channels [Re, Im].")
    def heldout() -> torch.Tensor:
        zc, _ = heldout_slices(image_size, n=len(HELDOUT_Z))
        return torch.cat([zc.real, zc.imag], 1)

    return TrainSource(sample=sample, channels=2, image_size=(image_size, image_size), description=desc,
                       info={"train_slices": len(z), "heldout_z": [HELDOUT_Z[0], HELDOUT_Z[-1]], "guard": GUARD,
                             "heldout_name": f"MNI152 slab z={HELDOUT_Z[0]}..{HELDOUT_Z[-1]}"},
                       heldout=heldout)


def heldout_slices(size: int = 64, n: int = 8, seed: int = 1234) -> Tuple[torch.Tensor, List[str]]:
    """Held-out complex test images from the slab (evenly spaced), complex64 ``(n, 1, size, size)`` + names."""
    z = [HELDOUT_Z[i] for i in np.linspace(0, len(HELDOUT_Z) - 1, n).round().astype(int)]
    mag = axial_slices(z, size)
    g = torch.Generator().manual_seed(seed)
    return to_complex(mag, smooth_phase(n, size, g, "cpu")), [f"mni-z{k}" for k in z]


VALIDATION_Z = (HELDOUT_Z[0] - 2, HELDOUT_Z[-1] + 2)  # guard slices: neither trained on nor in the test slab


def validation_slices(size: int = 64, seed: int = 99) -> Tuple[torch.Tensor, List[str]]:
    """The tuning images: MNI152 guard slices z = 94, 113 (excluded from training by the guard margin, disjoint from
    the held-out test slab), complex ``(2, 1, size, size)`` with smooth random phase (seed 99) + names."""
    mag = axial_slices(list(VALIDATION_Z), size)
    g = torch.Generator().manual_seed(seed)
    return to_complex(mag, smooth_phase(len(VALIDATION_Z), size, g, "cpu")), [f"mni-z{k}" for k in VALIDATION_Z]


def guard_z() -> List[int]:
    """The guard slices on either side of the held-out slab: never trained on and never tested on (validation)."""
    return [HELDOUT_Z[0] - GUARD + k for k in range(GUARD)] + [HELDOUT_Z[-1] + 1 + k for k in range(GUARD)]


def guard_slices(size: int = 64, seed: int = 99) -> Tuple[torch.Tensor, List[str]]:
    """Validation images: the guard slices (:func:`guard_z`, z = 92..95 and 112..115), complex64
    ``(8, 1, size, size)`` with a smooth phase drawn from ``seed``, and their names ``mni-z<k>``."""
    z = guard_z()
    g = torch.Generator().manual_seed(seed)
    return to_complex(axial_slices(z, size), smooth_phase(len(z), size, g, "cpu")), [f"mni-z{k}" for k in z]


def dipy_slice(size: int = 64, seed: int = 4321) -> Tuple[torch.Tensor, List[str]]:
    """dipy's real T1 coronal slice (another subject/scanner; out of distribution), complex ``(1, 1, size, size)``."""
    try:
        import dipy
    except ImportError as e:
        raise missing_extra("dipy", "data", "The dipy T1 test slice") from e
    from pathlib import Path

    arr = np.load(Path(dipy.__file__).parent / "data" / "files" / "t1_coronal_slice.npy").astype(np.float32)
    arr = np.rot90(arr).copy()
    mag = _resize(torch.from_numpy(_square(arr))[None, None], size).clamp_min(0)
    g = torch.Generator().manual_seed(seed)
    return to_complex(mag, smooth_phase(1, size, g, "cpu")), ["dipy-t1-coronal"]


def _complex_slice(arr: np.ndarray, size: int, seed: int) -> torch.Tensor:
    """A real magnitude image ``(H, W)`` -> square (zero-padded), antialiased resize, smooth random phase
    (seeded), normalised by :func:`robust_scale`; complex64 ``(1, 1, size, size)``."""
    mag = _resize(torch.from_numpy(_square(np.asarray(arr, dtype=np.float32)))[None, None], size).clamp_min(0)
    g = torch.Generator().manual_seed(seed)
    return to_complex(mag, smooth_phase(1, size, g, "cpu"))


def matplotlib_slice(size: int = 64, seed: int = 5432) -> Tuple[torch.Tensor, List[str]]:
    """matplotlib's sample head MRI ``s1045.ima.gz`` (256x256 uint16, a sagittal head slice with skull and scalp;
    another subject and contrast: out of distribution), complex ``(1, 1, size, size)`` with smooth random phase."""
    import gzip

    try:
        from matplotlib import cbook
    except ImportError as e:
        raise missing_extra("matplotlib", "data", "The matplotlib sample head MRI") from e
    with cbook.get_sample_data("s1045.ima.gz") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":  # some matplotlib versions hand back the still-compressed file
        raw = gzip.decompress(raw)
    arr = np.frombuffer(raw, np.uint16).reshape(256, 256).astype(np.float32)
    return _complex_slice(arr, size, seed), ["matplotlib-s1045"]


PYDICOM_MR_FILES = ("MR_small.dcm", "examples_overlay.dcm")  # the two distinct MR images among pydicom's test files


def pydicom_mr_slices(size: int = 64, seed: int = 6543) -> Tuple[torch.Tensor, List[str]]:
    """The two distinct MR images shipped with pydicom's test files (on disk, no download): ``MR_small.dcm``
    (64x64 head crop) and ``examples_overlay.dcm`` (300x484 abdomen), out of distribution for ``mri-brain``.
    Each is zero-padded to a square, resized, given a smooth random phase (seed ``seed + i``) and normalised;
    complex ``(2, 1, size, size)`` + names."""
    from .ct import pydicom_test_dir, read_hu

    root = pydicom_test_dir()
    imgs, names = [], []
    for i, name in enumerate(PYDICOM_MR_FILES):
        arr, _ = read_hu(root / name)
        imgs.append(_complex_slice(arr.numpy(), size, seed + i))
        names.append(f"pydicom-{name.removesuffix('.dcm')}")
    return torch.cat(imgs), names


def unseen_real_slices(size: int = 64) -> Tuple[torch.Tensor, List[str]]:
    """The four real MR slices no embedded prior was trained on (dipy's T1, matplotlib's head, pydicom's two),
    complex ``(4, 1, size, size)`` + names: the out-of-distribution check of issue #22."""
    parts = [dipy_slice(size), matplotlib_slice(size), pydicom_mr_slices(size)]
    return torch.cat([p[0] for p in parts]), [n for p in parts for n in p[1]]
