"""fastMRI-format multi-coil k-space files: read one slice at a time, undo readout oversampling, write synthetic ones.

File layout (fastMRI multi-coil, Zbontar et al. 2018, arXiv:1811.08839; knee: 15 coils, 640x368):

* ``kspace``: ``(slices, coils, Nx, Ny)`` complex64; axis -2 is the readout (frequency encoding, ``x`` in the
  header), 2x oversampled; axis -1 the phase encoding (``y``). Fully sampled in training/validation files.
* ``ismrmrd_header``: ISMRMRD XML (namespace ``http://www.ismrm.org/ISMRMRD``); ``encoding/encodedSpace/matrixSize``
  is the k-space matrix (640, 368, 1), ``encoding/reconSpace/matrixSize`` the image matrix (320, 320, 1), and
  ``encoding/encodingLimits/kspace_encoding_step_1`` (minimum, maximum, center) the acquired phase-encoding lines
  (lines outside them are zero padding).
* ``reconstruction_rss``: ``(slices, rx, ry)`` float32, the root-sum-of-squares of the coil images cropped to the
  recon matrix (training/validation files); ``mask``: ``(Ny,)`` sampled lines (undersampled test files).
* attributes: ``acquisition`` (e.g. ``CORPD_FBK``, ``AXT1``), ``max`` and ``norm`` (of ``reconstruction_rss``),
  ``patient_id``.

Conventions: centred orthonormal FFTs (:mod:`invsolve.operators.fft`); the image is the centred crop of the inverse
FFT of the k-space to the recon matrix. :func:`crop_readout` removes readout oversampling exactly (inverse FFT along
the readout, centred crop, FFT back) and works on undersampled data, since every readout line is complete;
:func:`crop_to_recon` crops both axes, which is exact only for fully sampled k-space.

:func:`read_slice` reads one slice (HDF5 reads only that part of the dataset), so memory stays bounded by a slice
whatever the volume size. :func:`write_synthetic` writes test files of this layout from held-out MNI152 slices (or
pydicom's MR test image) with smooth synthetic phase and simulated birdcage coils:
``python -m invsolve.data.fastmri out.h5 --slices 2``.
"""
from __future__ import annotations

import hashlib
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputFileError, InvalidValueError, InvsolveError, ShapeError, missing_extra

NS = "http://www.ismrm.org/ISMRMRD"


# ---------------------------------------------------------------------------------------------- header
@dataclass(frozen=True)
class Header:
    """The parts of an ISMRMRD header a Cartesian reconstruction needs.

    ``encoded`` / ``recon``: matrix sizes ``(x, y, z)`` (x = readout = k-space axis -2); ``*_fov_mm``: fields of
    view; ``pe_limits``: ``(minimum, maximum, center)`` of ``kspace_encoding_step_1``.
    """

    encoded: Tuple[int, int, int]
    recon: Tuple[int, int, int]
    encoded_fov_mm: Tuple[float, float, float]
    recon_fov_mm: Tuple[float, float, float]
    pe_limits: Tuple[int, int, int]

    @property
    def readout_oversampling(self) -> float:
        return self.encoded[0] / self.recon[0]

    def acquired_columns(self) -> slice:
        """Phase-encoding columns holding data (fastMRI's padding rule: the rest is zero padding)."""
        lo = self.encoded[1] // 2 - self.pe_limits[2]
        return slice(max(lo, 0), min(lo + self.pe_limits[1] + 1, self.encoded[1]))


def header_xml(h: Header, n_coils: int, n_slices: int, vendor: str = "invsolve synthetic") -> str:
    """ISMRMRD XML for a 2-D Cartesian multi-slice acquisition described by ``h``."""
    def xyz(tag, v, fmt="{}"):
        return f"<{tag}><x>{fmt.format(v[0])}</x><y>{fmt.format(v[1])}</y><z>{fmt.format(v[2])}</z></{tag}>"

    def lim(tag, mn, mx, c):
        return f"<{tag}><minimum>{mn}</minimum><maximum>{mx}</maximum><center>{c}</center></{tag}>"

    return (
        f'<?xml version="1.0" encoding="utf-8"?>\n<ismrmrdHeader xmlns="{NS}">'
        f"<acquisitionSystemInformation><systemVendor>{vendor}</systemVendor>"
        f"<receiverChannels>{n_coils}</receiverChannels></acquisitionSystemInformation>"
        "<experimentalConditions><H1resonanceFrequency_Hz>127700000</H1resonanceFrequency_Hz></experimentalConditions>"
        "<encoding>"
        f"<encodedSpace>{xyz('matrixSize', h.encoded)}{xyz('fieldOfView_mm', h.encoded_fov_mm, '{:g}')}</encodedSpace>"
        f"<reconSpace>{xyz('matrixSize', h.recon)}{xyz('fieldOfView_mm', h.recon_fov_mm, '{:g}')}</reconSpace>"
        f"<encodingLimits>{lim('kspace_encoding_step_1', *h.pe_limits)}{lim('kspace_encoding_step_2', 0, 0, 0)}"
        f"{lim('slice', 0, max(n_slices - 1, 0), 0)}</encodingLimits>"
        "<trajectory>cartesian</trajectory></encoding></ismrmrdHeader>"
    )


def parse_header(xml, source: str = "ismrmrd_header") -> Header:
    """:class:`Header` from ISMRMRD XML (bytes or str); a missing field raises naming it and ``source``."""
    try:
        root = ET.fromstring(xml.encode() if isinstance(xml, str) else bytes(xml))
    except ET.ParseError as e:
        raise InputFileError(f"{source} is not valid XML ({e})") from None
    ns = {"m": NS}

    def get(*path, cast=int):
        node = root.find("/".join(f"m:{p}" for p in path), ns)
        if node is None or node.text is None:
            raise InputFileError(f"{source} has no {'/'.join(path)} (an ISMRMRD header needs it)")
        return cast(float(node.text)) if cast is int else cast(node.text)

    enc, rec = ("encoding", "encodedSpace"), ("encoding", "reconSpace")
    lims = ("encoding", "encodingLimits", "kspace_encoding_step_1")
    return Header(
        encoded=tuple(get(*enc, "matrixSize", a) for a in "xyz"),
        recon=tuple(get(*rec, "matrixSize", a) for a in "xyz"),
        encoded_fov_mm=tuple(get(*enc, "fieldOfView_mm", a, cast=float) for a in "xyz"),
        recon_fov_mm=tuple(get(*rec, "fieldOfView_mm", a, cast=float) for a in "xyz"),
        pe_limits=tuple(get(*lims, k) for k in ("minimum", "maximum", "center")),
    )


# ---------------------------------------------------------------------------------------------- FFT crops
def fftc(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Centred orthonormal 1-D DFT along ``dim``."""
    return torch.fft.fftshift(torch.fft.fft(torch.fft.ifftshift(x, dim=dim), dim=dim, norm="ortho"), dim=dim)


def ifftc(k: torch.Tensor, dim: int) -> torch.Tensor:
    """Inverse of :func:`fftc` (and its adjoint)."""
    return torch.fft.fftshift(torch.fft.ifft(torch.fft.ifftshift(k, dim=dim), dim=dim, norm="ortho"), dim=dim)


def _centre(n: int, m: int) -> slice:
    return slice((n - m) // 2, (n - m) // 2 + m)


def crop_readout(k: torch.Tensor, nx: int) -> torch.Tensor:
    """Remove readout oversampling from k-space ``(..., Nx, Ny)``: inverse FFT along the readout (axis -2),
    centred crop to ``nx`` rows, FFT back. Exact also for undersampled k-space (each readout line is complete)."""
    if nx > k.shape[-2]:
        raise ShapeError(f"cannot crop the readout of k-space with {k.shape[-2]} samples to {nx}")
    if nx == k.shape[-2]:
        return k
    return fftc(ifftc(k, -2)[..., _centre(k.shape[-2], nx), :], -2)


def crop_to_recon(k: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Fully sampled k-space ``(..., Nx, Ny)`` -> k-space of the centred ``size`` crop of its image (both axes)."""
    from ..operators.fft import fft2c

    if size[0] > k.shape[-2] or size[1] > k.shape[-1]:
        raise ShapeError(f"cannot crop k-space of shape {tuple(k.shape[-2:])} to the recon matrix {tuple(size)}")
    return fft2c(_crop_image(k, size))


def rss(coil_images: torch.Tensor) -> torch.Tensor:
    """Root-sum-of-squares over the coil axis (-3) of ``(..., Nc, H, W)``."""
    return (coil_images.abs() ** 2).sum(dim=-3).sqrt()


# ---------------------------------------------------------------------------------------------- reading
@dataclass
class Slice:
    """One slice of a fastMRI-format file: ``kspace`` ``(Nc, Nx, Ny)`` complex64 as stored, its ``header`` (or
    ``None``), the file's ``mask`` ``(Ny,)`` (or ``None``), ``rss`` ``(rx, ry)`` (or ``None``) and ``attrs``."""

    kspace: np.ndarray
    header: Optional[Header]
    mask: Optional[np.ndarray]
    rss: Optional[np.ndarray]
    attrs: dict
    index: int


def _h5py():
    try:
        import h5py
    except ImportError as e:
        raise missing_extra("h5py", "mri", "Reading .h5 k-space") from e
    return h5py


def read_slice(path, index: Optional[int] = None, key: str = "kspace") -> Slice:
    """Read slice ``index`` (default: the middle one) of a fastMRI-format ``.h5`` file; only that slice is read."""
    h5py = _h5py()
    p = Path(path).expanduser()
    if not p.exists():
        raise InputFileError(f"input file {str(p)!r} not found")
    with h5py.File(p, "r") as f:
        if key not in f:
            raise InputFileError(f"{p} has datasets {list(f.keys())}; choose one with problem.key")
        d = f[key]
        if d.ndim not in (3, 4):
            raise ShapeError(f"{p}:{key} must be (slices, coils, Nx, Ny) or (coils, Nx, Ny), got shape {d.shape}")
        if d.ndim == 3:  # a single slice stored without the slice axis
            if index not in (None, 0):
                raise InvalidValueError(f"problem.slice={index} but {p}:{key} holds one slice (shape {d.shape})")
            k, index = np.asarray(d[()]), 0
        else:
            n = d.shape[0]
            index = n // 2 if index is None else int(index)
            if not 0 <= index < n:
                raise InvalidValueError(f"problem.slice={index} is out of range: {p} has {n} slices (0..{n - 1})")
            k = np.asarray(d[index])
        header = parse_header(f["ismrmrd_header"][()], f"{p}:ismrmrd_header") if "ismrmrd_header" in f else None
        mask = np.asarray(f["mask"][()]).astype(np.float32) if "mask" in f else None
        r = np.asarray(f["reconstruction_rss"][index]) if "reconstruction_rss" in f and d.ndim == 4 else None
        attrs = {k_: (v.item() if hasattr(v, "item") else v) for k_, v in f.attrs.items()}
    return Slice(k, header, mask, r, attrs, index)


def n_slices(path, key: str = "kspace") -> int:
    with _h5py().File(Path(path).expanduser(), "r") as f:
        return int(f[key].shape[0]) if f[key].ndim == 4 else 1


# ---------------------------------------------------------------------------------------------- writing
def _images(source, n: int, size: Tuple[int, int], seed: int) -> Tuple[torch.Tensor, str]:
    """Complex test images ``(n, 1, rx, ry)`` with smooth random phase, ``|x|`` 99th percentile 1."""
    from . import mri

    rx, ry = size
    s = max(rx, ry)
    if isinstance(source, np.ndarray) or isinstance(source, torch.Tensor):
        mag = torch.as_tensor(np.abs(np.asarray(source)), dtype=torch.float32)
        mag = mag[None] if mag.dim() == 2 else mag
        if mag.dim() != 3:
            raise ShapeError(f"images must be (H, W) or (n, H, W), got shape {tuple(mag.shape)}")
        mag = F.interpolate(mag[:, None], size=(s, s), mode="bilinear", antialias=True, align_corners=False)
        mag = mag[torch.arange(n) % mag.shape[0]]
        what = f"user images {tuple(source.shape)}"
    elif source == "mni":
        z = [mri.HELDOUT_Z[i] for i in np.linspace(0, len(mri.HELDOUT_Z) - 1, n).round().astype(int)]
        mag = mri.axial_slices(z, s)
        what = f"MNI152 held-out slab z={z}"
    elif source == "pydicom":
        try:
            import pydicom
            from pydicom.data import get_testdata_file
        except ImportError as e:
            raise missing_extra("pydicom", "data", "Synthetic k-space from pydicom's MR image") from e
        arr = pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array.astype(np.float32)
        mag = torch.from_numpy(arr / arr.max())[None, None]
        mag = F.interpolate(mag, size=(s, s), mode="bilinear", antialias=True, align_corners=False).clamp_min(0)
        mag = mag.expand(n, -1, -1, -1)
        what = "pydicom MR_small.dcm"
    else:
        raise InvalidValueError(f"source must be 'mni', 'pydicom' or an array of images, got {source!r}")
    g = torch.Generator().manual_seed(seed)
    x = mri.to_complex(mag, mri.smooth_phase(n, s, g, "cpu"))
    return x[..., _centre(s, rx), _centre(s, ry)], what


def write_synthetic(path, *, n_slices: int = 2, n_coils: int = 15, encoded: Tuple[int, int] = (640, 368),
                    recon: Tuple[int, int] = (320, 320), source="mni", seed: int = 0, max_value: float = 3e-4,
                    noise: float = 0.0, acquisition: str = "AXT1", overwrite: bool = False) -> dict:
    """Write a fully sampled fastMRI-format multi-coil file (test data) and return what it holds.

    Each slice: a complex image ``recon`` (``source``: ``"mni"`` held-out MNI152 slices, ``"pydicom"`` or an array
    ``(n, H, W)``) with smooth random phase, scaled so the largest magnitude is ``max_value`` (the order of raw
    fastMRI values), embedded at the centre of the ``encoded`` grid (the object fills the central ``recon`` rows and
    columns: 2x readout oversampling for 640 over 320), times ``n_coils`` birdcage maps on that grid (unit sum of
    squares), Fourier transformed (centred, orthonormal); ``noise`` adds complex Gaussian noise of standard deviation
    ``noise * max_value`` per k-space sample. Slices are written one at a time.

    Returns ``{"path", "images"}``, ``images`` the ``(n, 1, rx, ry)`` complex ground truth (as embedded).
    """
    from ..operators import coils
    from ..operators.fft import fft2c

    h5py = _h5py()
    p = Path(path).expanduser()
    if p.exists() and not overwrite:
        raise InvsolveError(f"{str(p)!r} exists; pass overwrite=True (--overwrite) to replace it")
    (nx, ny), (rx, ry) = encoded, recon
    if rx > nx or ry > ny or min(n_slices, n_coils, rx, ry) < 1:
        raise ShapeError(f"need recon {recon} inside encoded {encoded}, n_slices >= 1 and n_coils >= 1")
    x, what = _images(source, n_slices, (rx, ry), seed)
    x = x * (max_value / x.abs().amax())
    maps = coils.birdcage(n_coils, (nx, ny), extent=(nx / rx, ny / ry))
    fov = 220.0  # mm, a brain field of view
    h = Header((nx, ny, 1), (rx, ry, 1), (fov * nx / rx, fov * ny / ry, 3.0), (fov, fov * ry / rx, 3.0),
               (0, ny - 1, ny // 2))
    g = torch.Generator().manual_seed(seed + 1)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    rss_all = np.zeros((n_slices, rx, ry), np.float32)
    try:
        with h5py.File(tmp, "w") as f:
            d = f.create_dataset("kspace", shape=(n_slices, n_coils, nx, ny), dtype=np.complex64,
                                 chunks=(1, n_coils, nx, ny))
            for i in range(n_slices):
                img = torch.zeros(1, nx, ny, dtype=torch.complex64)
                img[:, _centre(nx, rx), _centre(ny, ry)] = x[i]
                k = fft2c(maps * img)
                if noise > 0:
                    k = k + noise * max_value / 2**0.5 * torch.complex(
                        torch.randn(k.shape, generator=g), torch.randn(k.shape, generator=g))
                d[i] = k.numpy()
                rss_all[i] = rss(_crop_image(k, (rx, ry))).numpy()
            f.create_dataset("reconstruction_rss", data=rss_all)
            f.create_dataset("ismrmrd_header", data=header_xml(h, n_coils, n_slices))
            f.attrs["acquisition"] = acquisition
            f.attrs["max"] = float(rss_all.max())
            f.attrs["norm"] = float(np.linalg.norm(rss_all))
            f.attrs["patient_id"] = hashlib.sha256(f"{what}|{seed}".encode()).hexdigest()
            f.attrs["source"] = f"invsolve synthetic: {what}, {n_coils} birdcage coils, seed {seed}"
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {"path": str(p), "images": x}


def _crop_image(k: torch.Tensor, size) -> torch.Tensor:
    from ..operators.fft import ifft2c

    return ifft2c(k)[..., _centre(k.shape[-2], size[0]), _centre(k.shape[-1], size[1])]


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m invsolve.data.fastmri",
                                 description="Write a synthetic fully sampled fastMRI-format multi-coil .h5 file.")
    ap.add_argument("path")
    ap.add_argument("--slices", type=int, default=2)
    ap.add_argument("--coils", type=int, default=15)
    ap.add_argument("--encoded", type=int, nargs=2, default=(640, 368), metavar=("NX", "NY"))
    ap.add_argument("--recon", type=int, nargs=2, default=(320, 320), metavar=("RX", "RY"))
    ap.add_argument("--source", default="mni", choices=["mni", "pydicom"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--noise", type=float, default=0.0)
    ap.add_argument("--overwrite", action="store_true")
    a = ap.parse_args(argv)
    out = write_synthetic(a.path, n_slices=a.slices, n_coils=a.coils, encoded=tuple(a.encoded),
                          recon=tuple(a.recon), source=a.source, seed=a.seed, noise=a.noise, overwrite=a.overwrite)
    print(f"wrote {out['path']}: kspace ({a.slices}, {a.coils}, {a.encoded[0]}, {a.encoded[1]}) complex64")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
