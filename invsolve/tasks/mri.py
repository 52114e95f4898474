"""Multi-coil MRI problems: held-out examples with simulated k-space, or the user's own data.

Sources (``problem.source``):

* ``example``: built-in held-out brain slices (``mni``: the held-out MNI152 slab; ``dipy``: dipy's real T1
  slice, out of distribution; ``mni-guard``: the 8 guard slices beside the slab, z = 92..95 and 112..115, never
  trained on and disjoint from the test slab: validation images for tuning), simulated 8-coil k-space with the
  chosen mask and noise.
* ``image``: a ground-truth image file (``.npy``/``.npz``, real or complex, ``(H, W)`` or ``(B, H, W)``);
  k-space is simulated as for examples.
* ``kspace``: measured multi-coil k-space ``(Nc, H, W)`` / ``(B, Nc, H, W)`` from ``.npy``/``.npz`` (key
  ``kspace``) or a fastMRI-style ``.h5`` (dataset ``kspace``, slice ``slice``); the mask is the set of non-zero
  columns/entries unless ``mask_file`` is given; coil maps from ``maps_file`` or ESPIRiT (sigpy, extra ``mri``).
  ``kspace_crop`` centre-crops k-space (a lower-resolution image of the same field of view) to the prior size.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ..errors import InputFileError, ShapeError, missing_extra
from ..operators import coils as coil_lib
from ..operators import masks as mask_lib
from ..operators.mri import MultiCoilMRI
from ..operators.noise import GaussianNoise
from . import Problem, register_task

DEFAULTS = dict(source="example", example="mni", index=[0, 1, 2, 3], path=None, key=None, slice=None,
                size=64, mask="uniform1d", acceleration=4.0, center_fraction=0.08, mask_seed=0, mask_file=None,
                coils=8, maps_file=None, noise_sigma=0.0, noise_seed=0, kspace_crop=None, espirit_calib=16)


def _load_array(path: str, key: Optional[str], h5_slice: Optional[int] = None) -> np.ndarray:
    p = Path(path).expanduser()
    if not p.exists():
        raise InputFileError(f"input file {str(p)!r} not found")
    suf = p.suffix.lower()
    if suf == ".npy":
        return np.load(p)
    if suf == ".npz":
        with np.load(p) as z:
            k = key or (list(z.keys())[0] if len(z.keys()) == 1 else None)
            if k is None or k not in z:
                raise InputFileError(f"{p} holds arrays {list(z.keys())}; choose one with problem.key")
            return z[k]
    if suf in (".h5", ".hdf5"):
        try:
            import h5py
        except ImportError as e:
            raise missing_extra("h5py", "data", "Reading .h5 k-space") from e
        with h5py.File(p, "r") as f:
            k = key or "kspace"
            if k not in f:
                raise InputFileError(f"{p} has datasets {list(f.keys())}; choose one with problem.key")
            d = f[k]
            return np.asarray(d[h5_slice if h5_slice is not None else d.shape[0] // 2])
    raise InputFileError(f"unsupported input format {suf!r} for {p}; use .npy, .npz or .h5")


def _images_from_source(source, example, index, path, key, size):
    from ..data import mri as mri_data

    idx = [index] if isinstance(index, int) else list(index)
    if source == "example":
        if example == "mni":
            x, names = mri_data.heldout_slices(size, n=len(mri_data.HELDOUT_Z))
        elif example == "dipy":
            x, names = mri_data.dipy_slice(size)
        elif example == "mni-guard":
            x, names = mri_data.guard_slices(size)
        else:
            raise ValueError(f"problem.example must be 'mni', 'dipy' or 'mni-guard', got {example!r}")
        bad = [i for i in idx if not 0 <= i < x.shape[0]]
        if bad:
            raise ValueError(f"problem.index {bad} out of range: example {example!r} has {x.shape[0]} images")
        return x[idx], [names[i] for i in idx]
    arr = _load_array(path, key)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ShapeError(f"image file {path} must hold (H, W) or (B, H, W), got shape {arr.shape}")
    x = torch.from_numpy(arr).to(torch.complex64)[:, None]
    return x, [f"{Path(path).stem}[{i}]" for i in range(x.shape[0])]


def _mask(kind, shape, acceleration, center_fraction, seed, mask_file):
    if mask_file:
        return torch.from_numpy(np.asarray(_load_array(mask_file, None), dtype=np.float32))
    kw = dict(acceleration=acceleration, seed=seed)
    if kind in ("uniform1d", "gaussian1d"):
        kw["center_fraction"] = center_fraction
    return mask_lib.make_mask(kind, shape, **kw)


@register_task("mri", DEFAULTS, summary="multi-coil Cartesian MRI (simulated from held-out slices or your data)")
def build(source, example, index, path, key, slice, size, mask, acceleration, center_fraction, mask_seed,
          mask_file, coils, maps_file, noise_sigma, noise_seed, kspace_crop, espirit_calib) -> Problem:
    if source not in ("example", "image", "kspace"):
        raise ValueError(f"problem.source must be 'example', 'image' or 'kspace', got {source!r}")
    meta = {"mask_type": mask, "acceleration": acceleration, "center_fraction": center_fraction,
            "mask_seed": mask_seed, "noise_sigma": noise_sigma, "noise_seed": noise_seed}
    if source == "kspace":
        return _from_kspace(path, key, slice, mask_file, maps_file, kspace_crop, espirit_calib, meta)
    x, names = _images_from_source(source, example, index, path, key, size)
    H, W = x.shape[-2:]
    m = _mask(mask, (H, W), acceleration, center_fraction, mask_seed, mask_file)
    maps = coil_lib.birdcage(coils, (H, W))
    op = MultiCoilMRI(maps, m)
    y = op(x)
    if noise_sigma > 0:  # sigma relative to the 99th-percentile image magnitude (images are normalised to 1)
        y = GaussianNoise(noise_sigma, mask=op.mask)(y, torch.Generator().manual_seed(noise_seed))
    meta.update({"coils": coils, "coil_maps": "birdcage", "sampled_fraction": float(m.mean())})
    return Problem(op, y, x, names, meta=meta, default_baselines=["adjoint", "cg"])


def _centre_crop(k: np.ndarray, crop: Sequence[int]) -> np.ndarray:
    H, W = k.shape[-2:]
    h, w = crop
    if h > H or w > W:
        raise ShapeError(f"problem.kspace_crop {crop} is larger than the k-space {H}x{W}")
    return k[..., (H - h) // 2:(H - h) // 2 + h, (W - w) // 2:(W - w) // 2 + w]


def _from_kspace(path, key, h5_slice, mask_file, maps_file, kspace_crop, espirit_calib, meta) -> Problem:
    if path is None:
        raise InputFileError("problem.path is required when problem.source='kspace'")
    k = _load_array(path, key or ("kspace" if str(path).endswith((".h5", ".hdf5")) else None), h5_slice)
    if not np.iscomplexobj(k):
        raise ShapeError(f"k-space in {path} must be complex, got dtype {k.dtype}")
    if k.ndim == 3:
        k = k[None]
    if k.ndim != 4:
        raise ShapeError(f"k-space must have shape (Nc, H, W) or (B, Nc, H, W), got {k.shape}")
    if kspace_crop:
        k = _centre_crop(k, kspace_crop)
    ks = torch.from_numpy(np.ascontiguousarray(k)).to(torch.complex64)
    if mask_file:
        m = torch.from_numpy(np.asarray(_load_array(mask_file, None), dtype=np.float32))
        if kspace_crop:
            m = torch.from_numpy(_centre_crop(m.numpy(), kspace_crop).copy())
    else:
        m = (ks.abs().sum(dim=(0, 1)) > 0).to(torch.float32)
    if maps_file:
        maps = torch.from_numpy(np.asarray(_load_array(maps_file, None))).to(torch.complex64)
        if kspace_crop and maps.shape[-2:] != ks.shape[-2:]:
            raise ShapeError("coil maps do not match the cropped k-space; give maps at the cropped size")
        meta["coil_maps"] = str(maps_file)
    else:
        maps = torch.stack([coil_lib.espirit(ks[b], calib_width=espirit_calib) for b in range(ks.shape[0])])
        meta["coil_maps"] = f"ESPIRiT (sigpy), calib {espirit_calib}"
    op = MultiCoilMRI(maps if maps.dim() == 4 else maps[None], m)
    meta.update({"source_file": str(path), "sampled_fraction": float(m.mean())})
    y = ks * op.mask
    return Problem(op, y, None, [f"{Path(path).stem}[{b}]" for b in range(ks.shape[0])], meta=meta,
                   default_baselines=["adjoint", "cg"])
