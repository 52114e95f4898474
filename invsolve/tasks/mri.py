"""Multi-coil MRI problems: held-out examples with simulated k-space, or the user's own data.

Sources (``problem.source``):

* ``example``: built-in slices no prior was trained on, simulated 8-coil k-space with the chosen mask and noise:
  ``mni`` (the held-out MNI152 slab), the real slices of other subjects and scanners (out of distribution):
  ``dipy`` (dipy's T1 coronal slice), ``matplotlib`` (matplotlib's sample head MRI), ``pydicom`` (pydicom's two
  MR test images: a head crop and an abdomen), ``real`` (those four, in that order); and for tuning the MNI152
  guard slices beside the held-out slab, never trained on and disjoint from it: ``mni-validation`` (z = 94, 113)
  and ``mni-guard`` (all 8: z = 92..95 and 112..115).
* ``image``: a ground-truth image file (``.npy``/``.npz``, real or complex, ``(H, W)`` or ``(B, H, W)``);
  k-space is simulated as for examples.
* ``kspace``: measured multi-coil k-space ``(Nc, H, W)`` / ``(B, Nc, H, W)`` from ``.npy``/``.npz`` (key
  ``kspace``) or a fastMRI-format ``.h5`` (dataset ``kspace``; ``slice``: an index, a list of indices or ``None``
  for the middle one, read one slice at a time). With an ISMRMRD header (fastMRI files) the readout oversampling is
  removed (inverse FFT along the readout, centred crop to the header's recon matrix, FFT back). **Fully sampled**
  k-space (every acquired line non-zero, no ``mask`` dataset; fastMRI training/validation files) is cropped to the
  recon matrix on both axes (e.g. 320x320) and undersampled retrospectively with ``mask``/``acceleration``/...;
  its coil-combined image is the ground truth. **Undersampled** k-space keeps its sampled lines (the file's
  ``mask`` dataset, ``mask_file``, or the non-zero columns/entries) and, with a header, its phase-encoding matrix.
  Coil maps from ``maps_file`` or ESPIRiT (sigpy, extra ``mri``) on the sampled centre. ``kspace_crop``
  centre-crops k-space (a lower-resolution image of the same field of view) to the prior size.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ..errors import InputFileError, InvalidValueError, ShapeError, missing_extra
from ..operators import coils as coil_lib
from ..operators import masks as mask_lib
from ..operators.mri import MultiCoilMRI
from ..samplers.knobs import Choice, Float, Int, Ints, Str
from .noise import add_noise, source_keys
from .registry import Problem, register_task

DEFAULTS = dict(source="example", example="mni", index=[0, 1, 2, 3], path=None, key=None, slice=None,
                size=64, mask="uniform1d", acceleration=4.0, center_fraction=0.08, mask_seed=0, mask_file=None,
                coils=8, maps_file=None, noise_sigma=0.0, noise_seed=0, kspace_crop=None, espirit_calib=16)
KNOBS = dict(
    source=Choice("example", "image", "kspace", doc="held-out example slices, your image file, or measured k-space"),
    example=Choice("mni", "dipy", "matplotlib", "pydicom", "real", "mni-validation", "mni-guard",
                   doc="built-in set: held-out MNI152 slab (16 slices), real slices no prior saw (dipy, matplotlib, "
                       "pydicom, or all four: real), or MNI152 guard slices for tuning (mni-validation: z = 94, 113; "
                       "mni-guard: all 8)"),
    index=Ints(0, doc="which images of the built-in set (source=example)"),
    path=Str(optional=True, doc="input file (source=image: .npy/.npz image; source=kspace: .npy/.npz/.h5)"),
    key=Str(optional=True, doc="array name inside an .npz/.h5 file"),
    slice=Ints(0, optional=True, doc="slice(s) of an .h5 k-space file (default: the middle one)"),
    size=Int(8, doc="image size (pixels) of the built-in examples; the prior's size"),
    mask=Choice("uniform1d", "gaussian1d", "gaussian2d", "poisson", doc="undersampling mask type"),
    acceleration=Float(1, doc="undersampling factor (1 = fully sampled)"),
    center_fraction=Float(0, 1, doc="fraction of central k-space columns always sampled (1D masks)"),
    mask_seed=Int(0, doc="seed of the random mask"),
    mask_file=Str(optional=True, doc="your mask (.npy, (H, W) or (B, H, W)) instead of mask/acceleration"),
    coils=Int(1, doc="number of simulated birdcage coils"),
    maps_file=Str(optional=True, doc="coil sensitivity maps (.npy) for source=kspace (default: ESPIRiT)"),
    noise_sigma=Float(0, doc="std of complex Gaussian k-space noise, relative to the 99th-percentile magnitude"),
    noise_seed=Int(0, doc="seed of the noise (each image's noise is keyed by its source index)"),
    kspace_crop=Ints(1, length=2, optional=True, doc="centre-crop measured k-space to [H, W]"),
    espirit_calib=Int(2, doc="ESPIRiT calibration width (source=kspace without maps_file)"),
)


def load_array(path: str, key: Optional[str], h5_slice: Optional[int] = None) -> np.ndarray:
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
        loaders = {"mni": lambda: mri_data.heldout_slices(size, n=len(mri_data.HELDOUT_Z)),
                   "dipy": lambda: mri_data.dipy_slice(size), "matplotlib": lambda: mri_data.matplotlib_slice(size),
                   "pydicom": lambda: mri_data.pydicom_mr_slices(size),
                   "real": lambda: mri_data.unseen_real_slices(size),
                   "mni-validation": lambda: mri_data.validation_slices(size),
                   "mni-guard": lambda: mri_data.guard_slices(size)}
        if example not in loaders:
            raise InvalidValueError(f"problem.example must be one of {', '.join(repr(k) for k in loaders)}, "
                                    f"got {example!r}")
        x, names = loaders[example]()
        bad = [i for i in idx if not 0 <= i < x.shape[0]]
        if bad:
            raise InvalidValueError(f"problem.index={idx} is out of range: example {example!r} has {x.shape[0]} "
                                    f"images (0 .. {x.shape[0] - 1})")
        return x[idx], [names[i] for i in idx]
    arr = load_array(path, key)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ShapeError(f"image file {path} must hold (H, W) or (B, H, W), got shape {arr.shape}")
    x = torch.from_numpy(arr).to(torch.complex64)[:, None]
    return x, [f"{Path(path).stem}[{i}]" for i in range(x.shape[0])]


def _mask(kind, shape, acceleration, center_fraction, seed, mask_file):
    if mask_file:
        m = torch.from_numpy(np.asarray(load_array(mask_file, None), dtype=np.float32))
        if not bool((m != 0).any()):
            raise InvalidValueError(f"problem.mask_file={str(mask_file)!r} samples no k-space entry (all zeros); "
                                    f"expected 1 where k-space is sampled")
        return m
    kw = dict(acceleration=acceleration, seed=seed)
    if kind in ("uniform1d", "gaussian1d"):
        kw["center_fraction"] = center_fraction
    return mask_lib.make_mask(kind, shape, **kw)


@register_task("mri", DEFAULTS, summary="multi-coil Cartesian MRI (simulated from held-out slices or your data)",
               knobs=KNOBS)
def build(source, example, index, path, key, slice, size, mask, acceleration, center_fraction, mask_seed,
          mask_file, coils, maps_file, noise_sigma, noise_seed, kspace_crop, espirit_calib) -> Problem:
    if source not in ("example", "image", "kspace"):
        raise InvalidValueError(f"problem.source must be 'example', 'image' or 'kspace', got {source!r}")
    meta = {"mask_type": mask, "acceleration": acceleration, "center_fraction": center_fraction,
            "mask_seed": mask_seed, "noise_sigma": noise_sigma, "noise_seed": noise_seed}
    if source == "kspace":
        retro = dict(kind=mask, acceleration=acceleration, center_fraction=center_fraction, seed=mask_seed)
        return _from_kspace(path, key, slice, mask_file, maps_file, kspace_crop, espirit_calib, meta, retro)
    x, names = _images_from_source(source, example, index, path, key, size)
    H, W = x.shape[-2:]
    m = _mask(mask, (H, W), acceleration, center_fraction, mask_seed, mask_file)
    maps = coil_lib.birdcage(coils, (H, W))
    op = MultiCoilMRI(maps, m)
    # noise sigma is relative to the 99th-percentile image magnitude (images are normalised to 1)
    keys = source_keys(index, x.shape[0], source == "example")
    y = add_noise(op(x), noise_sigma, noise_seed, keys, mask=op.mask)
    meta.update({"coils": coils, "coil_maps": "birdcage", "sampled_fraction": float(m.mean()), "noise_keys": keys})
    return Problem(op, y, x, names, meta=meta, default_baselines=["adjoint", "cg"], sigma_y=noise_sigma)


def _centre_crop(k: np.ndarray, crop: Sequence[int]) -> np.ndarray:
    H, W = k.shape[-2:]
    h, w = crop
    if h > H or w > W:
        raise ShapeError(f"problem.kspace_crop {crop} is larger than the k-space {H}x{W}")
    return k[..., (H - h) // 2:(H - h) // 2 + h, (W - w) // 2:(W - w) // 2 + w]


def _read_fastmri(path, key, h5_slice, meta):
    """fastMRI-format slices -> (k-space ``(B, Nc, H, W)`` complex64, fully sampled?, file mask or None)."""
    from ..data import fastmri

    idx = list(h5_slice) if isinstance(h5_slice, (list, tuple)) else [h5_slice]
    ks, full, file_mask, info = [], [], None, {}
    for i in idx:
        s = fastmri.read_slice(path, i, key or "kspace")
        if not np.iscomplexobj(s.kspace):
            raise ShapeError(f"k-space in {path} must be complex, got dtype {s.kspace.dtype}")
        k = torch.from_numpy(s.kspace).to(torch.complex64)
        cols = slice(None)
        if s.header is not None:
            h = s.header
            if tuple(k.shape[-2:]) != h.encoded[:2]:
                raise ShapeError(f"k-space slice in {path} has shape {tuple(k.shape[-2:])} but its ismrmrd_header "
                                 f"encodes a {h.encoded[0]}x{h.encoded[1]} matrix")
            k = fastmri.crop_readout(k, h.recon[0])
            cols = h.acquired_columns()
            info = {"encoded_matrix": list(h.encoded[:2]), "recon_matrix": list(h.recon[:2]),
                    "readout_oversampling": h.readout_oversampling, "acquired_columns": [cols.start, cols.stop]}
        sampled = k.abs().sum(dim=(0, 1)) > 0  # (W,) columns holding data
        full.append(s.mask is None and bool(sampled[cols].all()) and bool((k.abs().sum(dim=0) > 0)[:, cols].all()))
        if full[-1] and s.header is not None:
            k = fastmri.crop_to_recon(k, s.header.recon[:2])
        file_mask = s.mask if s.mask is not None else file_mask
        ks.append(k)
        meta.setdefault("slices", []).append(s.index)
    if len(set(full)) > 1:
        raise InputFileError(f"{path}: slices {idx} mix fully sampled and undersampled k-space")
    meta.update(info)
    return torch.stack(ks), full[0], file_mask


def _acs_width(m: torch.Tensor) -> int:
    """Width of the fully sampled block of columns around the k-space centre of a mask ``(H, W)``."""
    cols = (m > 0).all(dim=0).tolist()
    c = len(cols) // 2
    lo, hi = c, c
    while lo > 0 and cols[lo - 1]:
        lo -= 1
    while hi < len(cols) and cols[hi]:
        hi += 1
    return hi - lo


def _from_kspace(path, key, h5_slice, mask_file, maps_file, kspace_crop, espirit_calib, meta,
                 retro=None) -> Problem:
    if path is None:
        raise InputFileError("problem.path is required when problem.source='kspace'")
    if str(path).lower().endswith((".h5", ".hdf5")):
        ks, full, file_mask = _read_fastmri(path, key, h5_slice, meta)
        if kspace_crop:
            ks = torch.from_numpy(_centre_crop(ks.numpy(), kspace_crop).copy())
        if full and not mask_file and retro is not None:
            return _retrospective(path, ks, maps_file, espirit_calib, meta, retro)
        if file_mask is not None and not mask_file:
            m = torch.from_numpy(np.asarray(file_mask, dtype=np.float32))
            m = m[None, :].expand(ks.shape[-2], -1) if m.dim() == 1 else m
            if tuple(m.shape) != tuple(ks.shape[-2:]):
                m = torch.from_numpy(_centre_crop(m.numpy(), ks.shape[-2:]).copy())
            return _measured(path, ks * m, m.contiguous(), maps_file, espirit_calib, meta)
        return _measured(path, ks, _data_mask(ks, mask_file, kspace_crop), maps_file, espirit_calib, meta)
    k = load_array(path, key, h5_slice)
    if not np.iscomplexobj(k):
        raise ShapeError(f"k-space in {path} must be complex, got dtype {k.dtype}")
    if k.ndim == 3:
        k = k[None]
    if k.ndim != 4:
        raise ShapeError(f"k-space must have shape (Nc, H, W) or (B, Nc, H, W), got {k.shape}")
    if kspace_crop:
        k = _centre_crop(k, kspace_crop)
    ks = torch.from_numpy(np.ascontiguousarray(k)).to(torch.complex64)
    return _measured(path, ks, _data_mask(ks, mask_file, kspace_crop), maps_file, espirit_calib, meta)


def _retrospective(path, ks, maps_file, espirit_calib, meta, retro) -> Problem:
    """Fully sampled k-space ``(B, Nc, H, W)``: undersample with the configured mask; truth = coil-combined image."""
    H, W = ks.shape[-2:]
    m = _mask(retro["kind"], (H, W), retro["acceleration"], retro["center_fraction"], retro["seed"], None)
    y = ks * m
    if maps_file:
        maps = _maps_from_file(maps_file, ks, meta)
    else:
        acs = _acs_width(m)
        if retro["kind"] in ("uniform1d", "gaussian1d") and acs < espirit_calib:
            raise InvalidValueError(
                f"problem.espirit_calib={espirit_calib} needs a fully sampled centre at least that wide, but the "
                f"{retro['kind']} mask (center_fraction={retro['center_fraction']}) samples {acs} central lines; "
                f"lower problem.espirit_calib or raise problem.center_fraction")
        maps = _espirit(y, espirit_calib, meta)
    op = MultiCoilMRI(maps if maps.dim() == 4 else maps[None], m)
    x_true = op.sense_combine(ks)
    meta.update({"source_file": str(path), "sampled_fraction": float(m.mean()), "retrospective": True,
                 "kspace_shape": list(ks.shape[1:])})
    names = [f"{Path(path).stem}[{i}]" for i in meta.get("slices", range(ks.shape[0]))]
    return Problem(op, y, x_true, names, meta=meta, default_baselines=["adjoint", "cg"],
                   sigma_y=meta.get("noise_sigma") or None)  # measured: 0 = unknown


def _maps_from_file(maps_file, ks, meta):
    maps = torch.from_numpy(np.asarray(load_array(maps_file, None))).to(torch.complex64)
    if tuple(maps.shape[-2:]) != tuple(ks.shape[-2:]):
        raise ShapeError(f"coil maps in {maps_file} have spatial shape {tuple(maps.shape[-2:])} but the k-space is "
                         f"{tuple(ks.shape[-2:])} (after cropping); give maps at that size")
    meta["coil_maps"] = str(maps_file)
    return maps


def _espirit(ks, espirit_calib, meta):
    maps = torch.stack([coil_lib.espirit(ks[b], calib_width=espirit_calib) for b in range(ks.shape[0])])
    meta["coil_maps"] = f"ESPIRiT (sigpy), calib {espirit_calib}"
    return maps


def _measured(path, ks, m, maps_file, espirit_calib, meta) -> Problem:
    """Measured (undersampled) k-space ``(B, Nc, H, W)`` and its mask ``(H, W)``; no ground truth."""
    maps = _maps_from_file(maps_file, ks, meta) if maps_file else _espirit(ks, espirit_calib, meta)
    op = MultiCoilMRI(maps if maps.dim() == 4 else maps[None], m)
    meta.update({"source_file": str(path), "sampled_fraction": float(m.mean())})
    y = ks * op.mask
    names = [f"{Path(path).stem}[{i}]" for i in meta.get("slices", range(ks.shape[0]))]
    return Problem(op, y, None, names, meta=meta, default_baselines=["adjoint", "cg"],
                   sigma_y=meta.get("noise_sigma") or None)  # measured: 0 = unknown


def _data_mask(ks, mask_file, kspace_crop) -> torch.Tensor:
    """The mask of measured k-space: ``mask_file`` (centre-cropped like the k-space), else its non-zero entries."""
    if mask_file:
        m = np.asarray(load_array(mask_file, None), dtype=np.float32)
        return torch.from_numpy(_centre_crop(m, kspace_crop).copy() if kspace_crop else m)
    return (ks.abs().sum(dim=(0, 1)) > 0).to(torch.float32)
