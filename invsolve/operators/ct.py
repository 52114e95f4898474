"""Parallel-beam CT: a ray-driven (Joseph) projector stored as a sparse matrix, its exact transpose, and FBP.

Geometry, units and layout (shared by :class:`ParallelBeamCT` and :func:`fbp`):

* image ``x``: ``(B, 1, N, N)`` real float. Unit pixels: pixel ``(row i, column j)`` is centred at
  ``x = j - N//2`` (to the right), ``y = N//2 - i`` (up); rotation centre = pixel ``(N//2, N//2)``.
* view ``θ`` (radians) integrates along the lines ``x cos θ + y sin θ = s``; detector ``k`` sits at
  ``s = k - n_detectors//2`` (unit spacing). ``θ = 0`` sums the image down its columns (detector index grows with
  the column index); ``θ = π/2`` sums along rows (detector index grows upwards, i.e. with decreasing row index).
* sinogram ``y``: ``(B, 1, n_views, n_detectors)``: views on axis -2 (in the order of ``angles``), detectors last.
* values are line integrals in pixel units (an image of ones gives chord lengths in pixels).

With ``n_detectors = ceil(√2 N)`` this is the geometry of ``skimage.transform.radon(img, theta=np.rad2deg(angles),
circle=False)``, whose output is our ``y[b, 0].T`` (skimage: detectors x views); for ``circle=True`` (an image zero
outside the inscribed disc) take detectors ``n_detectors//2 - N//2 ... + N``. skimage samples a bilinearly rotated
image, we interpolate linearly along rows or columns (Joseph's method), so the two agree to interpolation error.

The projector ``A`` is a sparse CSR matrix (2 non-zeros per ray and crossed row/column); the adjoint multiplies by
its stored transpose, so ``<A x, y> = <x, A^T y>`` up to rounding. Memory: about ``1.8 · n_views · N²`` non-zeros
per matrix, 8 bytes each in float32 (both matrices, 180 views: ~85 MB at 128², ~340 MB at 256²); building them takes
about a second at 128² on one CPU core. Keep the operator in the dtype of the data (``op.double()`` for float64 work)
to avoid converting the matrix values on every call.
"""
from __future__ import annotations

import math
import warnings
from typing import Optional

import numpy as np
import scipy.sparse
import torch

from ..errors import DTypeError
from .base import LinearOperator, check_tensor

FILTERS = ("ramp", "shepp-logan", "hann", "cosine", "hamming")


# -- angles --------------------------------------------------------------------------------------------------------
def sparse_view_angles(n_views: int) -> torch.Tensor:
    """``n_views`` angles uniformly over ``[0, π)``: ``θ_k = π k / n_views`` (float64 radians, ``(n_views,)``)."""
    if int(n_views) != n_views or n_views < 1:
        raise ValueError(f"n_views must be a positive integer, got {n_views!r}")
    return torch.arange(int(n_views), dtype=torch.float64) * (math.pi / int(n_views))


def limited_angle_angles(arc_degrees: float = 120.0, step_degrees: float = 1.0, start: float = 0.0) -> torch.Tensor:
    """A contiguous arc: ``start + step_degrees · k`` degrees for ``k = 0 .. round(arc/step) - 1``, in radians.

    The default (120 views at 1°, 0..119°) is the DDS limited-angle setting (60° missing). ``start`` is in degrees;
    the arc must stay inside ``[0°, 360°)``. Returns float64 ``(n_views,)``.
    """
    if not (step_degrees > 0 and arc_degrees >= step_degrees):
        raise ValueError(f"need step_degrees > 0 and arc_degrees >= step_degrees, got arc_degrees={arc_degrees}, "
                         f"step_degrees={step_degrees}")
    n = int(round(arc_degrees / step_degrees))
    deg = start + step_degrees * torch.arange(n, dtype=torch.float64)
    if start < 0 or float(deg[-1]) >= 360:
        raise ValueError(f"the arc start={start}° .. {float(deg[-1])}° must lie in [0°, 360°)")
    return torch.deg2rad(deg)


def check_angles(angles) -> torch.Tensor:
    a = torch.as_tensor(angles)
    if a.is_complex() or not (a.is_floating_point() or a.dtype in (torch.int32, torch.int64)):
        raise DTypeError(f"angles must be a real tensor of radians, got dtype {a.dtype}")
    a = a.detach().to("cpu", torch.float64)
    if a.dim() != 1 or a.numel() == 0:
        raise ValueError(f"angles must be a non-empty 1-D tensor (n_views,) of radians, got shape {tuple(a.shape)}")
    if not torch.isfinite(a).all() or bool((a < 0).any()) or bool((a >= 2 * math.pi).any()):
        raise ValueError(f"angles must be finite radians in [0, 2π), got values in [{float(a.min()):.4g}, "
                         f"{float(a.max()):.4g}] (degrees? convert with torch.deg2rad)")
    return a


def default_detectors(image_size: int) -> int:
    return math.ceil(math.sqrt(2) * image_size)


# -- system matrix -------------------------------------------------------------------------------------------------
def joseph_rays(N: int, theta: np.ndarray, s: np.ndarray, chunk: int = 8192):
    """COO entries ``(ray, pixel, weight)`` of Joseph's projector for arbitrary lines ``x cos θ_r + y sin θ_r = s_r``
    (``theta``, ``s``: ``(R,)`` float64, pixel units, the module's coordinates); pixel = i · N + j.

    A ray crossing the image mostly vertically (``|cos θ| ≥ |sin θ|``) meets every row once: linear interpolation
    along that row at ``x = (s - y sin θ) / cos θ``, times the step length ``1/|cos θ|``. Otherwise it meets every
    column once (``y = (s - x cos θ) / sin θ``, step ``1/|sin θ|``). Rays are processed in chunks of ``chunk``.
    """
    theta, s = np.asarray(theta, np.float64), np.asarray(s, np.float64)
    line = np.arange(N)[None, :]  # (1, N): the crossed rows or columns
    rays, pixels, weights = [], [], []
    for r0 in range(0, theta.size, chunk):
        th, sr = theta[r0:r0 + chunk, None], s[r0:r0 + chunk, None]
        ray_ids = np.arange(r0, r0 + th.shape[0])[:, None]
        c, sn = np.cos(th), np.sin(th)
        vertical = (np.abs(c) >= np.abs(sn))[:, 0]
        for is_vertical in (True, False):
            sel = vertical if is_vertical else ~vertical
            if not sel.any():
                continue
            cs, ss, s_ = c[sel], sn[sel], sr[sel]
            if is_vertical:
                pos = (s_ - (N // 2 - line) * ss) / cs + N // 2  # column coordinate of the crossing in each row
                step = 1.0 / np.abs(cs)
            else:
                pos = N // 2 - (s_ - (line - N // 2) * cs) / ss  # row coordinate of the crossing in each column
                step = 1.0 / np.abs(ss)
            pos = np.where(np.abs(pos - np.round(pos)) < 1e-9, np.round(pos), pos)  # exact on axis-aligned views
            i0 = np.floor(pos)
            frac = pos - i0
            i0 = i0.astype(np.int64)
            ray = np.broadcast_to(ray_ids[sel], pos.shape)
            lines = np.broadcast_to(line, pos.shape)
            for idx, w in ((i0, (1.0 - frac) * step), (i0 + 1, frac * step)):
                keep = (idx >= 0) & (idx < N) & (w > 0)
                pix = lines * N + idx if is_vertical else idx * N + lines
                rays.append(ray[keep])
                pixels.append(pix[keep])
                weights.append(w[keep])
    return np.concatenate(rays), np.concatenate(pixels), np.concatenate(weights)


def _csr_pair(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, shape):
    """CSR arrays ``(crow, col, val)`` of the COO matrix and of its transpose (sorted column indices per row).

    Indices are int32 when they fit (faster sparse products), values float32.
    """
    A = scipy.sparse.coo_matrix((vals, (rows, cols)), shape=shape).tocsr()
    A.sort_indices()
    out = []
    for M in (A, A.T.tocsr()):
        itype = torch.int32 if M.nnz < 2**31 - 1 else torch.int64
        out.append((torch.from_numpy(M.indptr.astype(np.int64)).to(itype),
                    torch.from_numpy(M.indices.astype(np.int64)).to(itype),
                    torch.from_numpy(M.data).to(torch.float32)))
    return out


def _sparse(crow, col, val, shape, dtype) -> torch.Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, val.to(dtype), shape, check_invariants=False)


class _SparseApply(torch.autograd.Function):
    """``out = M @ v`` on batches ``(B, n)`` (rows of v); the backward multiplies by the stored transpose ``Mt``."""

    @staticmethod
    def forward(ctx, v, M, Mt):
        ctx.M, ctx.Mt = M, Mt
        return (M @ v.t().contiguous()).t()

    @staticmethod
    def backward(ctx, grad):
        return _SparseApply.apply(grad, ctx.Mt, ctx.M), None, None


# -- filtered back-projection --------------------------------------------------------------------------------------
def _filter_response(n: int, name: str, dtype, device) -> torch.Tensor:
    """Frequency response (length ``n``, FFT order) of the band-limited ramp times the apodisation window.

    The ramp is the DFT of the sampled impulse response of ``|ν|`` band-limited to ``|ν| ≤ 1/2`` cycles/pixel
    (``h[0] = 1/4``, ``h[k odd] = -1/(π k)²``, else 0), which avoids the DC bias of a sampled ``|ν|``.
    Windows (``ν`` in cycles/pixel): shepp-logan ``sinc(ν)``, cosine ``cos(πν)``, hamming ``0.54 + 0.46 cos(2πν)``,
    hann ``0.5 + 0.5 cos(2πν)``.
    """
    k = torch.fft.fftfreq(n, d=1.0 / n, dtype=torch.float64)  # signed integer lags in FFT order
    h = torch.where(k.abs() % 2 == 1, -1.0 / (math.pi * k) ** 2, torch.zeros_like(k))
    h[0] = 0.25
    resp = torch.fft.fft(h).real
    nu = torch.fft.fftfreq(n, dtype=torch.float64)
    if name == "shepp-logan":
        resp = resp * torch.sinc(nu)
    elif name == "cosine":
        resp = resp * torch.cos(math.pi * nu)
    elif name == "hamming":
        resp = resp * (0.54 + 0.46 * torch.cos(2 * math.pi * nu))
    elif name == "hann":
        resp = resp * (0.5 + 0.5 * torch.cos(2 * math.pi * nu))
    return resp.to(device=device, dtype=dtype)


def _angle_weight(angles: torch.Tensor) -> float:
    """Angular quadrature weight per view: the median gap between sorted angles, capped at ``π / n_views``.

    Uniform views over ``[0, π)`` get ``π / n_views``; a limited-angle arc gets its step; views over ``[0, 2π)``
    (each line measured twice) get half their step.
    """
    n = angles.numel()
    if n == 1:
        return math.pi
    gap = float(torch.diff(torch.sort(angles.to(torch.float64)).values).median())
    return min(gap, math.pi / n) if gap > 0 else math.pi / n


def fbp(sinogram: torch.Tensor, angles, image_size: int, filter: str = "ramp") -> torch.Tensor:
    """Filtered back-projection for the geometry of this module (see the module docstring).

    ``x = Δθ Σ_v q_v(x cos θ_v + y sin θ_v)``, ``q_v`` = view ``v`` filtered along the detectors, read off by linear
    interpolation (pixel-driven back-projection), ``Δθ`` from :func:`_angle_weight`. For full-view data the result
    approximates the image in its own units; sparse or limited-angle data give the usual streaks/wedge artefacts.

    Args:
        sinogram: ``(B, 1, n_views, n_detectors)`` real float.
        angles: ``(n_views,)`` radians in ``[0, 2π)``.
        image_size: ``N`` of the ``(B, 1, N, N)`` output.
        filter: one of ``"ramp"``, ``"shepp-logan"``, ``"hann"``, ``"cosine"``, ``"hamming"``.
    """
    a = check_angles(angles)
    if filter not in FILTERS:
        raise ValueError(f"filter must be one of {FILTERS}, got {filter!r}")
    check_tensor(sinogram, "sinogram", (1, a.numel(), None), False)
    if not sinogram.is_floating_point():
        raise DTypeError(f"sinogram must be a floating-point tensor, got dtype {sinogram.dtype}")
    B, _, V, D = sinogram.shape
    N = int(image_size)
    dev, dt = sinogram.device, sinogram.dtype
    n_fft = max(64, 2 ** math.ceil(math.log2(2 * D)))
    resp = _filter_response(n_fft, filter, dt, dev)
    q = torch.fft.irfft(torch.fft.rfft(sinogram[:, 0], n=n_fft) * resp[: n_fft // 2 + 1], n=n_fft)[..., :D]
    coords = torch.arange(N, dtype=torch.float64) - N // 2
    xs, ys = coords[None, :], -coords[:, None]  # x grows with the column, y with decreasing row
    out = torch.zeros(B, N * N, dtype=dt, device=dev)
    q = q.reshape(B, V * D)
    for v0 in range(0, V, 16):  # chunks of views bound the memory of the gather
        th = a[v0:v0 + 16]
        pos = (xs * torch.cos(th)[:, None, None] + ys * torch.sin(th)[:, None, None]).reshape(len(th), -1) + D // 2
        i0 = torch.floor(pos)
        frac = (pos - i0).to(device=dev, dtype=dt)
        i0 = i0.to(torch.int64)
        base = (torch.arange(v0, v0 + len(th), dtype=torch.int64) * D)[:, None]
        for idx, w in ((i0, 1 - frac), (i0 + 1, frac)):
            inside = ((idx >= 0) & (idx < D)).to(dev)
            flat = (base + idx.clamp(0, D - 1)).to(dev).reshape(-1)
            vals = q.index_select(1, flat).reshape(B, len(th), N * N)
            out += (vals * (w * inside)).sum(dim=1)
    return (_angle_weight(a) * out).reshape(B, 1, N, N)


# -- operator ------------------------------------------------------------------------------------------------------
class JosephProjector(LinearOperator):
    """Base of the CT geometries: image ``(B, 1, N, N)`` -> sinogram ``(B, 1, n_views, n_detectors)`` through a
    Joseph system matrix over the lines ``x cos θ_r + y sin θ_r = s_r`` (:func:`joseph_rays`), ray ``r = view ·
    n_detectors + detector``, stored as CSR with its transpose (the exact adjoint). Subclasses give the lines."""

    def _set_rays(self, N: int, n_views: int, n_detectors: int, theta: np.ndarray, s: np.ndarray):
        self.image_size, self.n_views, self.n_detectors = N, n_views, n_detectors
        self.input_shape = (1, N, N)
        self.output_shape = (1, n_views, n_detectors)
        rays, pixels, w = joseph_rays(N, theta, s)
        for name, arrays in zip(("A", "At"), _csr_pair(rays, pixels, w, (n_views * n_detectors, N * N)), strict=True):
            for part, t in zip(("crow", "col", "val"), arrays, strict=True):
                self.register_buffer(f"_{name}_{part}", t, persistent=False)

    def _matrices(self, dtype):
        V, D, N = self.n_views, self.n_detectors, self.image_size
        A = _sparse(self._A_crow, self._A_col, self._A_val, (V * D, N * N), dtype)
        At = _sparse(self._At_crow, self._At_col, self._At_val, (N * N, V * D), dtype)
        return A, At

    @staticmethod
    def _check_float(t: torch.Tensor, name: str):
        if t.dtype not in (torch.float32, torch.float64):
            raise DTypeError(f"{name} must be float32 or float64, got dtype {t.dtype}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        self._check_float(x, "x")
        A, At = self._matrices(x.dtype)
        y = _SparseApply.apply(x.reshape(x.shape[0], -1), A, At)
        return y.reshape(x.shape[0], 1, self.n_views, self.n_detectors)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        check_tensor(y, "y", self.output_shape, False)
        self._check_float(y, "y")
        A, At = self._matrices(y.dtype)
        x = _SparseApply.apply(y.reshape(y.shape[0], -1), At, A)
        return x.reshape(y.shape[0], 1, self.image_size, self.image_size)


class ParallelBeamCT(JosephProjector):
    """Parallel-beam CT: image ``(B, 1, N, N)`` -> sinogram ``(B, 1, n_views, n_detectors)`` (module docstring).

    Args:
        image_size: ``N``.
        angles: view angles ``(n_views,)`` in radians, each in ``[0, 2π)`` (see :func:`sparse_view_angles`,
            :func:`limited_angle_angles`).
        n_detectors: detector count, at least and by default ``ceil(√2 N)`` (every ray through the image lands on
            the detector).

    ``forward``/``adjoint`` accept float32 or float64 on any device (``op.to(device)`` moves the matrices) and are
    differentiable; items of a batch are independent. ``fbp(y, filter)`` is the filtered back-projection baseline;
    ``pinv`` (CG on the normal equations) is inherited.
    """

    default_prior = "ct-phantom"
    task_family = "ct"

    def __init__(self, image_size: int, angles, n_detectors: Optional[int] = None):
        super().__init__()
        if int(image_size) != image_size or image_size < 2:
            raise ValueError(f"image_size must be an integer >= 2, got {image_size!r}")
        N = int(image_size)
        a = check_angles(angles)
        d_min = default_detectors(N)
        D = d_min if n_detectors is None else int(n_detectors)
        if D < d_min:
            raise ValueError(f"n_detectors must be >= ceil(sqrt(2) * image_size) = {d_min}, got {n_detectors}")
        self.register_buffer("angles", a)
        s = (np.arange(D) - D // 2).astype(np.float64)  # detector k sits at s = k - D//2
        self._set_rays(N, a.numel(), D, np.repeat(a.numpy(), D), np.tile(s, a.numel()))

    def fbp(self, y: torch.Tensor, filter: str = "ramp") -> torch.Tensor:
        """Filtered back-projection of a sinogram ``(B, 1, n_views, n_detectors)`` (see :func:`fbp`)."""
        check_tensor(y, "y", self.output_shape, False)
        return fbp(y, self.angles, self.image_size, filter=filter)

    def extra_repr(self) -> str:
        return f"image_size={self.image_size}, n_views={self.n_views}, n_detectors={self.n_detectors}"
