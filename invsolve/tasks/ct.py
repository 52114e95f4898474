"""CT problems: single slices (task ``ct``) and volumes as stacks of slices (task ``ct-volume``).

Images are in the units of the ``ct-phantom`` prior: the HU window [-1000, 1000] mapped to [0, 1]
(:mod:`invsolve.data.ct`). Geometry (``problem.geometry``): ``sparse_view`` (``n_views`` angles uniform over
[0, π)) or ``limited_angle`` (a contiguous arc of ``arc_degrees`` at ``step_degrees`` from ``start_degrees``);
``angles_file`` (a ``.npy`` of radians) overrides both. ``beam``: ``parallel`` (default, :class:`ParallelBeamCT`)
or ``fan`` (:class:`~invsolve.operators.fanbeam.FanBeamCT`, source at ``source_distance`` pixels, default 2 ``size``;
``sparse_view`` then spans [0, 2π), a full scan). ``noise_sigma`` adds white Gaussian noise to the sinogram,
in sinogram units (line integrals of [0, 1] images in pixel units; a 64-pixel body gives values up to ~40).

Task ``ct`` sources (``problem.source``):

* ``example``: the real CT slices shipped with pydicom (never used to train the prior), windowed, cropped to the
  body and resized to ``size`` (:func:`invsolve.data.ct.heldout_ct_slices`); ``index`` picks among them (``[]``:
  none). ``phantoms: n`` appends ``n`` procedural phantoms drawn by the prior's training generator from
  ``phantom_seed`` (``sample_phantoms(n, size, Generator().manual_seed(phantom_seed))``; in distribution, named
  ``phantom-seed<seed>-<i>``): the benchmarks test on seed 4242 and tune on seed 1234.
* ``image``: ``.npy``/``.npz`` ``(H, W)`` or ``(B, H, W)`` in [0, 1] (``image_units: hu`` for Hounsfield units);
  its size must equal ``size`` unless ``resize: true``.
* ``dicom``: a DICOM file or series directory (:func:`invsolve.data.ct.load_dicom`), HU windowed to [0, 1],
  cropped to the body (``crop_body``) or padded to a square, resized to ``size``.
* ``sinogram``: measured data ``(V, D)``, ``(B, V, D)`` or ``(B, 1, V, D)`` with ``V`` views (the angles of the
  geometry or ``angles_file``) and ``D >= ceil(√2 size)`` detectors; no ground truth.

Task ``ct-volume``: the slices of one volume form the batch (reconstruct with ``sampler: dds-3d``). There is no
real CT volume on disk, so the built-in sources are **synthetic** and say so:

* ``phantom3d`` (default): :func:`phantom_volume`, a procedural 3D phantom (elliptic-cylinder body, lungs, spine,
  organs, spherical lesions, smooth texture) sliced along z, drawn from ``seed`` (0 = the test volume; tuning used
  seed 1). It is not drawn by the prior's 2D training generator, but looks alike (ellipses in tissue).
* ``warped-slice``: a pseudo-volume made from one real pydicom slice (``index``) resampled with a smooth
  z-dependent scale and rotation (:func:`warped_slice_volume`): real texture, but not real 3D anatomy.
* ``dicom`` (a series directory) and ``volume`` (``.npy``/``.npz`` ``(Z, H, W)``) for the user's own data.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..data import ct as ct_data
from ..errors import InputFileError, InvalidValueError, ShapeError
from ..linalg import power_iteration
from ..operators.ct import ParallelBeamCT, limited_angle_angles, sparse_view_angles
from ..operators.fanbeam import FanBeamCT
from ..samplers.knobs import Bool, Choice, Float, Int, Ints, Str
from .mri import load_array
from .noise import add_noise, source_keys
from .registry import Problem, register_task

GEOMETRY = dict(geometry="sparse_view", beam="parallel", source_distance=None, n_views=16, arc_degrees=120.0,
                step_degrees=1.0, start_degrees=0.0, angles_file=None, n_detectors=None, noise_sigma=0.0,
                noise_seed=0)
CT_DEFAULTS = dict(source="example", index=[0, 1, 2], path=None, key=None, size=64, resize=False,
                   image_units="unit", crop_body=True, phantoms=0, phantom_seed=4242, **GEOMETRY)
VOLUME_DEFAULTS = dict(source="phantom3d", n_slices=32, seed=0, slice_spacing=2.0, index=0, path=None, key=None,
                       size=64, resize=False, image_units="unit", **GEOMETRY)
GEOMETRY_KNOBS = dict(
    geometry=Choice("sparse_view", "limited_angle", doc="view angles: uniform over the scan, or a contiguous arc"),
    beam=Choice("parallel", "fan", doc="parallel beam, or equiangular fan beam (full scan over [0, 2 pi))"),
    source_distance=Float(0, low_open=True, optional=True, doc="fan beam: source distance in pixels (None: 2 size)"),
    n_views=Int(1, doc="number of views (sparse_view)"),
    arc_degrees=Float(0, 360, low_open=True, doc="arc of the views (limited_angle)"),
    step_degrees=Float(0, low_open=True, doc="angular step (limited_angle)"),
    start_degrees=Float(doc="first angle (limited_angle)"),
    angles_file=Str(optional=True, doc="your view angles (.npy, radians) instead of the geometry"),
    n_detectors=Int(2, optional=True, doc="detector count (None: ceil(sqrt(2) size))"),
    noise_sigma=Float(0, doc="std of white Gaussian noise on the sinogram (line integrals, pixel units)"),
    noise_seed=Int(0, doc="seed of the noise (each image's noise is keyed by its source index)"),
)
_IMAGE_KNOBS = dict(
    path=Str(optional=True, doc="your data: .npy/.npz image(s), DICOM file/series, sinogram or volume"),
    key=Str(optional=True, doc="array name inside an .npz file"),
    size=Int(8, doc="image size (pixels); the prior's size"),
    resize=Bool("resize a user image of another size"),
    image_units=Choice("unit", "hu", doc="user images in [0, 1] (HU window [-1000, 1000]) or Hounsfield units"),
)
CT_KNOBS = dict(GEOMETRY_KNOBS, **_IMAGE_KNOBS,
                source=Choice("example", "image", "dicom", "sinogram", doc="where the images / data come from"),
                index=Ints(0, empty_ok=True, doc="which held-out pydicom slices (source=example; [] with phantoms)"),
                phantoms=Int(0, doc="procedural phantoms appended to the example slices (the prior's training "
                             "distribution; validation images)"),
                phantom_seed=Int(0, doc="seed of the appended phantoms (benchmarks: test 4242, tuning 1234)"),
                crop_body=Bool("crop DICOM slices to the body (else pad to a square)"))
VOLUME_KNOBS = dict(GEOMETRY_KNOBS, **_IMAGE_KNOBS,
                    source=Choice("phantom3d", "warped-slice", "volume", "dicom", doc="where the volume comes from"),
                    n_slices=Int(2, doc="slices of the volume (the batch)"),
                    seed=Int(0, doc="seed of the procedural phantom (source=phantom3d)"),
                    slice_spacing=Float(0, low_open=True, doc="pixels between slices (source=phantom3d)"),
                    index=Int(0, doc="the pydicom slice of source=warped-slice"))


# ----------------------------------------------------------------------------------------------- geometry
def angles_for(geometry: str, n_views: int, arc_degrees: float, step_degrees: float, start_degrees: float,
               angles_file: Optional[str], beam: str = "parallel") -> torch.Tensor:
    """View angles (float64 radians) of ``problem.geometry`` or from ``angles_file``; ``sparse_view`` spans
    ``[0, π)`` for parallel beams and ``[0, 2π)`` (a full scan) for fan beams."""
    if angles_file:
        a = np.asarray(load_array(angles_file, None), dtype=np.float64)
        if a.ndim != 1:
            raise ShapeError(f"problem.angles_file {angles_file} must hold a 1-D array of radians, got shape {a.shape}")
        return torch.from_numpy(a)
    if geometry == "sparse_view":
        return sparse_view_angles(n_views) * (2 if beam == "fan" else 1)
    if geometry == "limited_angle":
        return limited_angle_angles(arc_degrees, step_degrees, start_degrees)
    raise InvalidValueError(f"problem.geometry must be 'sparse_view' or 'limited_angle', got {geometry!r}")


def _operator(size, angles, n_detectors, geometry, noise_sigma, beam="parallel",
              source_distance=None) -> Tuple[ParallelBeamCT, dict]:
    if beam == "parallel":
        if source_distance is not None:
            raise InvalidValueError("problem.source_distance applies to problem.beam=fan only")
        op = ParallelBeamCT(size, angles, n_detectors=n_detectors)
    elif beam == "fan":
        op = FanBeamCT(size, angles, source_distance=source_distance, n_detectors=n_detectors)
    else:
        raise InvalidValueError(f"problem.beam must be 'parallel' or 'fan', got {beam!r}")
    g = torch.Generator().manual_seed(0)
    opnorm = float(power_iteration(op.normal, torch.randn((1, 1, size, size), generator=g), iterations=30)[0])
    meta = {"geometry": geometry, "beam": beam, "n_views": op.n_views, "n_detectors": op.n_detectors,
            "angles_degrees": [round(float(a), 4) for a in torch.rad2deg(op.angles)], "noise_sigma": noise_sigma,
            "opnorm_sq": opnorm}
    if beam == "fan":
        meta.update(source_distance=op.source_distance, fan_angle_degrees=math.degrees(op.fan_angle))
    return op, meta


def _measure(op, x, noise_sigma, noise_seed, keys):
    """``op(x)`` plus noise, image ``b``'s noise keyed by ``keys[b]`` (its index in the source)."""
    if noise_sigma < 0:
        raise InvalidValueError(f"problem.noise_sigma must be >= 0, got {noise_sigma}")
    return add_noise(op(x), noise_sigma, noise_seed, keys)


# ----------------------------------------------------------------------------------------------- images
def _fit(img: torch.Tensor, size: int, crop_body: bool) -> torch.Tensor:
    """Windowed slice ``(H, W)`` in [0, 1] -> ``(size, size)``: crop to the body, or pad to a square with air."""
    if crop_body:
        return ct_data.crop_to_body(img, size)
    h, w = img.shape
    s = max(h, w)
    sq = F.pad(img[None, None], ((s - w) // 2, s - w - (s - w) // 2, (s - h) // 2, s - h - (s - h) // 2))
    return F.interpolate(sq, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0, 0]


def _units(x: torch.Tensor, image_units: str) -> torch.Tensor:
    if image_units == "hu":
        return ct_data.window(x)
    if image_units != "unit":
        raise InvalidValueError(f"problem.image_units must be 'unit' ([0, 1] = HU window [-1000, 1000]) or 'hu', "
                         f"got {image_units!r}")
    return x


def _image_file(path, key, size, resize, image_units, what="image") -> torch.Tensor:
    if path is None:
        raise InputFileError(f"problem.path is required when problem.source='{what}'")
    arr = np.asarray(load_array(path, key))
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or np.iscomplexobj(arr):
        raise ShapeError(f"{what} file {path} must hold a real (H, W) or (N, H, W) array, got shape {arr.shape} "
                         f"and dtype {arr.dtype}")
    x = _units(torch.from_numpy(arr.astype(np.float32))[:, None], image_units)
    if tuple(x.shape[-2:]) != (size, size):
        if not resize:
            raise ShapeError(f"{what} in {path} is {x.shape[-2]}x{x.shape[-1]} but the CT operator and prior use "
                             f"{size}x{size} (problem.size); set problem.resize=true to resize it")
        x = torch.stack([_fit(s[0], size, crop_body=False) for s in x])[:, None]
    if image_units == "unit" and (float(x.min()) < -0.5 or float(x.max()) > 1.5):
        raise InvalidValueError(f"{what} in {path} has values in [{float(x.min()):.4g}, {float(x.max()):.4g}], far "
                                f"outside [0, 1]; if it is in Hounsfield units set problem.image_units=hu")
    return x


def _pick(x, names, index):
    idx = [index] if isinstance(index, int) else list(index)
    bad = [i for i in idx if not 0 <= i < x.shape[0]]
    if bad:
        raise InvalidValueError(f"problem.index={idx} is out of range: the source has {x.shape[0]} images "
                                f"(0 .. {x.shape[0] - 1})")
    return x[idx], [names[i] for i in idx]


def _examples(index, size: int, phantoms: int, phantom_seed: int) -> Tuple[torch.Tensor, List[str]]:
    """The selected real slices followed by ``phantoms`` procedural phantoms drawn from ``phantom_seed``."""
    if int(phantoms) != phantoms or phantoms < 0:
        raise InvalidValueError(f"problem.phantoms must be an integer >= 0, got {phantoms!r}")
    idx = [index] if isinstance(index, int) else list(index)
    if idx:
        x, names = _pick(*ct_data.heldout_ct_slices(size), idx)
    else:
        x, names = torch.zeros((0, 1, size, size)), []
    if phantoms:
        g = torch.Generator().manual_seed(int(phantom_seed))
        x = torch.cat([x, ct_data.sample_phantoms(int(phantoms), size, g)])
        names = list(names) + [f"phantom-seed{phantom_seed}-{i}" for i in range(int(phantoms))]
    if not names:
        raise InvalidValueError("problem.index is empty and problem.phantoms is 0: the task has no image")
    return x, names


def _sinogram(path, key, angles, size, min_detectors: Optional[int] = None) -> torch.Tensor:
    if path is None:
        raise InputFileError("problem.path is required when problem.source='sinogram'")
    s = np.asarray(load_array(path, key))
    if np.iscomplexobj(s) or s.ndim not in (2, 3, 4) or (s.ndim == 4 and s.shape[1] != 1):
        raise ShapeError(f"sinogram in {path} must be real with shape (V, D), (B, V, D) or (B, 1, V, D), got "
                         f"{s.shape} ({s.dtype})")
    s = torch.from_numpy(s.astype(np.float32)).reshape((-1, 1) + s.shape[-2:])
    V, D = s.shape[-2:]
    if V != angles.numel():
        raise ShapeError(f"sinogram in {path} has {V} views (axis -2) but the geometry gives {angles.numel()} angles; "
                         f"set problem.n_views / problem.angles_file to match")
    if min_detectors is not None:
        if D < min_detectors:
            raise ShapeError(f"sinogram in {path} has {D} detectors (last axis); need at least {min_detectors}")
    elif D < math.ceil(math.sqrt(2) * size):
        raise ShapeError(f"sinogram in {path} has {D} detectors (last axis); a {size}x{size} image needs at least "
                         f"ceil(sqrt(2)*{size}) = {math.ceil(math.sqrt(2) * size)}")
    return s


@register_task("ct", CT_DEFAULTS, summary="parallel- or fan-beam CT, sparse view or limited angle (held-out real "
                                          "slices or your image / DICOM / sinogram)", knobs=CT_KNOBS)
def build(source, index, path, key, size, resize, image_units, crop_body, phantoms, phantom_seed, geometry, beam,
          source_distance, n_views, arc_degrees, step_degrees, start_degrees, angles_file, n_detectors, noise_sigma,
          noise_seed) -> Problem:
    angles = angles_for(geometry, n_views, arc_degrees, step_degrees, start_degrees, angles_file, beam)
    if source == "sinogram":
        y = _sinogram(path, key, angles, size, min_detectors=2 if beam == "fan" else None)
        op, meta = _operator(size, angles, y.shape[-1], geometry, noise_sigma, beam, source_distance)
        meta["source_file"] = str(path)
        return Problem(op, y, None, [f"{Path(path).stem}[{b}]" for b in range(y.shape[0])], meta=meta,
                       data_range=1.0, default_baselines=["fbp", "cg"], sigma_y=noise_sigma or None)  # 0 = unknown
    if source == "example":
        x, names = _examples(index, size, phantoms, phantom_seed)
        origin = "real pydicom CT slices (held out from prior training)" + (
            f" + {phantoms} procedural phantoms (seed {phantom_seed}, the prior's training distribution)"
            if phantoms else "")
    elif source == "image":
        x = _image_file(path, key, size, resize, image_units)
        names, origin = [f"{Path(path).stem}[{i}]" for i in range(x.shape[0])], str(path)
    elif source == "dicom":
        hu = ct_data.load_dicom(path)
        x = torch.stack([_fit(ct_data.window(s[0]), size, crop_body) for s in hu])[:, None]
        names, origin = [f"{Path(path).name}[{i}]" for i in range(x.shape[0])], str(path)
    else:
        raise InvalidValueError(f"problem.source must be 'example', 'image', 'dicom' or 'sinogram', got {source!r}")
    op, meta = _operator(size, angles, n_detectors, geometry, noise_sigma, beam, source_distance)
    if source == "example":  # a phantom's key: its seed and place in the drawn set (never a slice index)
        idx = [index] if isinstance(index, int) else list(index)
        keys = source_keys(idx, len(idx), True) + [10**6 * (1 + int(phantom_seed)) + i for i in range(int(phantoms))]
    else:
        keys = source_keys(index, x.shape[0], False)
    meta.update({"source": origin, "noise_seed": noise_seed, "noise_keys": keys})
    return Problem(op, _measure(op, x, noise_sigma, noise_seed, keys), x, names, meta=meta, data_range=1.0,
                   default_baselines=["fbp", "cg"], sigma_y=noise_sigma)


# ----------------------------------------------------------------------------------------------- volumes
def _ellipsoids(X, Y, Z, centre, axes, theta, px):
    """Anti-aliased indicators ``(K, Z, H, W)`` of ellipsoids rotated by ``theta`` about the z axis.

    ``centre``/``axes``: ``(K, 3)`` (x, y, z); the boundary distance is ``(q - 1) min(axes) / 2`` (first order)
    with ``q`` the ellipsoid's quadratic form, ramped over one pixel ``px``.
    """
    v = lambda a: a.reshape(-1, 1, 1, 1)  # noqa: E731
    c, s = v(torch.cos(theta)), v(torch.sin(theta))
    dx, dy, dz = X - v(centre[:, 0]), Y - v(centre[:, 1]), Z - v(centre[:, 2])
    xr, yr = c * dx + s * dy, -s * dx + c * dy
    q = (xr / v(axes[:, 0])) ** 2 + (yr / v(axes[:, 1])) ** 2 + (dz / v(axes[:, 2])) ** 2
    return (0.5 - (q - 1) * v(axes.min(dim=1).values) / (2 * px)).clamp(0, 1)


def phantom_volume(n_slices: int = 32, size: int = 64, seed: int = 0, slice_spacing: float = 2.0) -> torch.Tensor:
    """A synthetic CT-like volume ``(n_slices, 1, size, size)`` float32 in [0, 1] (HU-window units), seeded.

    In-plane coordinates span [-1, 1] (pixel ``2/size``); slices are ``slice_spacing`` pixels apart. Content,
    all drawn by ``numpy.random.default_rng(seed)``: an elliptic-cylinder body (soft tissue 0.47–0.53, darker skin
    rim) whose axes vary smoothly with z; two lungs (ellipsoids, -0.28); a spine (bone, +0.35) along z; 4
    organs (ellipsoids, ±0.05–0.15); 5 spherical lesions of radius 1.5–4 pixels (±0.12–0.25, half with soft
    Gaussian profiles); a smooth 3D Gaussian-random-field texture (std 0.015) in the tissue.
    """
    if int(n_slices) != n_slices or n_slices < 2:
        raise InvalidValueError(f"problem.n_slices must be an integer >= 2, got {n_slices!r}")
    rng = np.random.default_rng(seed)
    Z, N, px = int(n_slices), int(size), 2.0 / size
    lin = (torch.arange(N, dtype=torch.float64) + 0.5) * px - 1.0
    zs = (torch.arange(Z, dtype=torch.float64) - (Z - 1) / 2) * slice_spacing * px
    zr = float(zs.abs().max())
    X, Y, Zg = lin.view(1, 1, 1, N), -lin.view(1, 1, N, 1), zs.view(1, Z, 1, 1)
    t = lambda *a: torch.tensor(a, dtype=torch.float64)  # noqa: E731
    u = rng.uniform

    # body: elliptic cylinder, axes modulated along z
    a0, b0, ph = u(0.72, 0.85), u(0.55, 0.68), u(0, 2 * math.pi)
    mod = 1 + 0.07 * torch.sin(math.pi * zs / max(zr, 1e-6) + ph)
    a, b = (a0 * mod).view(1, Z, 1, 1), (b0 * mod).view(1, Z, 1, 1)
    rim = 0.035
    body = (0.5 - (((X / a) ** 2 + (Y / b) ** 2).sqrt() - 1) * b / px).clamp(0, 1)
    inner = (0.5 - (((X / (a - rim)) ** 2 + (Y / (b - rim)) ** 2).sqrt() - 1) * (b - rim) / px).clamp(0, 1)
    tissue = u(0.47, 0.53)
    img = (tissue - 0.06) * (body - inner) + tissue * inner

    # lungs (dark), spine (bright), organs
    ly = u(0.0, 0.15)
    lungs = _ellipsoids(X, Y, Zg, t([-0.38 * a0, ly, u(-0.2, 0.2) * zr], [0.38 * a0, ly, u(-0.2, 0.2) * zr]),
                        t([0.22 * a0, 0.42 * b0, 0.75 * zr], [0.22 * a0, 0.42 * b0, 0.75 * zr]),
                        t(u(-0.3, 0.3), u(-0.3, 0.3)), px)
    spine = _ellipsoids(X, Y, Zg, t([0.0, -0.62 * b0, 0.0]), t([0.12, 0.11, 4 * zr + 1]), t(0.0), px)
    k = 4
    ang, rad = rng.uniform(-math.pi, math.pi, k), np.sqrt(rng.uniform(0, 1, k)) * 0.45
    oc = torch.from_numpy(np.stack([rad * np.cos(ang) * a0, rad * np.sin(ang) * b0, rng.uniform(-0.6, 0.6, k) * zr], 1))
    oa = torch.from_numpy(np.stack([rng.uniform(0.08, 0.25, k), rng.uniform(0.06, 0.2, k),
                                    rng.uniform(0.3, 0.9, k) * zr + 0.1], 1))
    organs = _ellipsoids(X, Y, Zg, oc, oa, torch.from_numpy(rng.uniform(-math.pi, math.pi, k)), px)
    amp = torch.from_numpy(rng.choice([-1, 1], k) * rng.uniform(0.05, 0.15, k)).view(k, 1, 1, 1)
    img = img + (-0.28 * lungs.sum(0, keepdim=True) + 0.35 * spine + (amp * organs).sum(0, keepdim=True)) * inner

    # lesions: small spheres, hard or soft, bright or dark
    k = 5
    ang, rad = rng.uniform(-math.pi, math.pi, k), np.sqrt(rng.uniform(0, 1, k)) * 0.6
    lc = torch.from_numpy(np.stack([rad * np.cos(ang) * a0, rad * np.sin(ang) * b0, rng.uniform(-0.7, 0.7, k) * zr], 1))
    lr = torch.from_numpy(rng.uniform(1.5, 4.0, k) * px).view(k, 1, 1, 1)
    r2 = ((X - lc[:, 0].view(k, 1, 1, 1)) ** 2 + (Y - lc[:, 1].view(k, 1, 1, 1)) ** 2
          + (Zg - lc[:, 2].view(k, 1, 1, 1)) ** 2) / lr**2
    hard = (0.5 + (1 - r2) * lr / (2 * px)).clamp(0, 1)
    soft = torch.from_numpy(rng.uniform(0, 1, k) < 0.5).view(k, 1, 1, 1)
    lamp = torch.from_numpy(rng.choice([-1, 1], k) * rng.uniform(0.12, 0.25, k)).view(k, 1, 1, 1)
    img = img + (lamp * torch.where(soft, torch.exp(-2 * r2), hard)).sum(0, keepdim=True) * inner

    # texture: smooth 3D Gaussian random field
    g = torch.Generator().manual_seed(int(rng.integers(2**31)))
    noise = torch.randn((Z, N, N), generator=g, dtype=torch.float64)
    kz, ky, kx = (torch.fft.fftfreq(n, dtype=torch.float64) for n in (Z, N, N))
    k2 = (kz.view(-1, 1, 1) * slice_spacing) ** 2 + ky.view(1, -1, 1) ** 2 + kx.view(1, 1, -1) ** 2
    field = torch.fft.ifftn(torch.fft.fftn(noise) * torch.exp(-0.5 * k2 * (2 * math.pi * 2.5) ** 2)).real
    img = img + 0.015 * (field / field.std())[None] * inner
    return img[0].clamp(0, 1)[:, None].to(torch.float32)


def warped_slice_volume(n_slices: int = 32, size: int = 64, index: int = 0) -> Tuple[torch.Tensor, str]:
    """A pseudo-volume ``(n_slices, 1, size, size)`` from one real held-out pydicom slice: slice ``k`` (at
    ``z ∈ [-1, 1]``) is the slice magnified by ``1 + 0.12 z²`` and rotated by ``3° z`` (bicubic, clipped to [0, 1]).
    Real texture, smooth in z, but not real 3D anatomy. Returns the volume and the slice's file name."""
    x, names = _pick(*ct_data.heldout_ct_slices(size), index)
    z = torch.linspace(-1, 1, int(n_slices), dtype=torch.float64)
    s, th = 1 + 0.12 * z**2, torch.deg2rad(3 * z)
    theta = torch.zeros(len(z), 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 1] = torch.cos(th) / s, -torch.sin(th) / s
    theta[:, 1, 0], theta[:, 1, 1] = torch.sin(th) / s, torch.cos(th) / s
    grid = F.affine_grid(theta.float(), (len(z), 1, size, size), align_corners=False)
    vol = F.grid_sample(x[:1].expand(len(z), -1, -1, -1), grid, mode="bicubic", align_corners=False)
    return vol.clamp(0, 1), names[0]


def _centre_slices(x: torch.Tensor, n: Optional[int]) -> torch.Tensor:
    if n is None or n >= x.shape[0]:
        return x
    start = (x.shape[0] - int(n)) // 2
    return x[start:start + int(n)]


@register_task("ct-volume", VOLUME_DEFAULTS, summary="CT volume as a stack of slices (synthetic 3D phantom, "
                                                     "pseudo-volume, or your DICOM series / .npy volume)",
               knobs=VOLUME_KNOBS)
def build_volume(source, n_slices, seed, slice_spacing, index, path, key, size, resize, image_units, geometry,
                 beam, source_distance, n_views, arc_degrees, step_degrees, start_degrees, angles_file, n_detectors,
                 noise_sigma, noise_seed) -> Problem:
    if source == "phantom3d":
        x = phantom_volume(n_slices, size, seed, slice_spacing)
        origin = f"synthetic 3D procedural phantom (seed {seed}, slice spacing {slice_spacing} px)"
    elif source == "warped-slice":
        x, fname = warped_slice_volume(n_slices, size, index)
        origin = f"pseudo-volume: real pydicom slice {fname} smoothly scaled/rotated along z (not real 3D anatomy)"
    elif source == "volume":
        x = _centre_slices(_image_file(path, key, size, resize, image_units, what="volume"), n_slices)
        origin = str(path)
    elif source == "dicom":
        hu = _centre_slices(ct_data.load_dicom(path), n_slices)
        x = torch.stack([_fit(ct_data.window(s[0]), size, crop_body=False) for s in hu])[:, None]
        origin = str(path)
    else:
        raise InvalidValueError(f"problem.source must be 'phantom3d', 'warped-slice', 'volume' or 'dicom', "
                                f"got {source!r}")
    if x.shape[0] < 2:
        raise ShapeError(f"a CT volume needs at least 2 slices, got {x.shape[0]} from {origin}")
    angles = angles_for(geometry, n_views, arc_degrees, step_degrees, start_degrees, angles_file, beam)
    op, meta = _operator(size, angles, n_detectors, geometry, noise_sigma, beam, source_distance)
    meta.update({"source": origin, "n_slices": int(x.shape[0]), "noise_seed": noise_seed})
    names: List[str] = [f"slice{k:03d}" for k in range(x.shape[0])]
    keys = list(range(x.shape[0]))  # the volume is the item; its slices are keyed by their position in it
    return Problem(op, _measure(op, x, noise_sigma, noise_seed, keys), x, names, meta=meta, data_range=1.0,
                   default_baselines=["fbp", "cg"], joint=True,
                   sigma_y=noise_sigma)

