"""Fan-beam CT with an equiangular (arc) detector, on the parallel-beam module's projector and conventions.

Geometry (image coordinates of :mod:`invsolve.operators.ct`: unit pixels, ``x`` to the right, ``y`` up, rotation
centre at pixel ``(N//2, N//2)``):

* view ``β`` (radians, ``[0, 2π)``) puts the point source at ``S_β = R (sin β, -cos β)``, ``R`` = ``source_distance``
  (pixels from the rotation centre); at ``β = 0`` the source is below the image and the central ray goes straight
  up, like the parallel-beam view ``θ = 0``.
* detector ``k`` (``0 .. D-1``) receives the ray that leaves the source at the fan angle
  ``γ_k = (k - (D-1)/2) Δγ``, turned clockwise from the central ray; ``Δγ = 2 γ_max / (D - 1)`` with ``γ_max`` (half
  the fan) defaulting to ``asin(r / R)``, ``r = N/√2`` the radius of the circle around the image, so that every
  ray through the image is measured.
* that ray is the parallel-beam line ``θ = β - γ_k``, ``s = R sin γ_k`` (it passes through ``S_β``), so the system
  matrix is the same Joseph projector (:func:`~invsolve.operators.ct.joseph_rays`) evaluated on those lines and
  its adjoint is the stored transpose (exact).
* sinogram ``(B, 1, n_views, n_detectors)``; values are line integrals in pixel units, as for parallel beam.

:meth:`FanBeamCT.fbp` rebins the fan data to parallel rays (``θ = β - γ``, linear interpolation in ``β`` and
``γ``) and applies the parallel-beam FBP; it needs a full scan, views uniform over ``[0, 2π)``.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from .base import check_tensor
from .ct import JosephProjector, check_angles, default_detectors, fbp


class FanBeamCT(JosephProjector):
    """Fan-beam CT: image ``(B, 1, N, N)`` -> sinogram ``(B, 1, n_views, n_detectors)`` (module docstring).

    Args:
        image_size: ``N``.
        angles: source angles ``β`` ``(n_views,)`` in radians, each in ``[0, 2π)`` (a full scan covers
            ``[0, 2π)``; see :func:`~invsolve.operators.ct.sparse_view_angles` times 2 for uniform views).
        source_distance: ``R``, source to rotation centre in pixels (default ``2 N``); must exceed ``N/√2`` so the
            source lies outside the image's circumscribed circle.
        n_detectors: ``D``, detector elements (default ``ceil(√2 N)``: about one pixel per ray at the centre).
        fan_angle: full fan ``2 γ_max`` in radians (default ``2 asin(N / (√2 R))``, just covering the image).

    ``forward``/``adjoint`` accept float32/float64 on any device, are differentiable and batch-independent;
    ``fbp(y, filter)`` is the rebinned filtered back-projection; ``pinv`` (CG on the normal equations) is inherited.
    """

    default_prior = "ct-phantom"
    task_family = "ct"

    def __init__(self, image_size: int, angles, source_distance: Optional[float] = None,
                 n_detectors: Optional[int] = None, fan_angle: Optional[float] = None):
        super().__init__()
        if int(image_size) != image_size or image_size < 2:
            raise ValueError(f"image_size must be an integer >= 2, got {image_size!r}")
        N = int(image_size)
        a = check_angles(angles)
        r = N / math.sqrt(2)
        R = 2.0 * N if source_distance is None else float(source_distance)
        if not R > r:
            raise ValueError(f"source_distance must exceed N/sqrt(2) = {r:.4g} pixels (the source must lie outside "
                             f"the image), got {source_distance}")
        D = default_detectors(N) if n_detectors is None else int(n_detectors)
        if D < 2:
            raise ValueError(f"n_detectors must be >= 2, got {n_detectors}")
        half = math.asin(r / R) if fan_angle is None else float(fan_angle) / 2
        if not 0 < half < math.pi / 2:
            raise ValueError(f"fan_angle must lie in (0, π) radians, got {fan_angle}")
        self.source_distance, self.fan_angle = R, 2 * half
        self.register_buffer("angles", a)
        gammas = (torch.arange(D, dtype=torch.float64) - (D - 1) / 2) * (2 * half / (D - 1))
        self.register_buffer("gammas", gammas)
        theta = (a[:, None] - gammas[None, :]).numpy().ravel()
        self._set_rays(N, a.numel(), D, theta, np.tile(R * np.sin(gammas.numpy()), a.numel()))

    def source_positions(self) -> torch.Tensor:
        """``(n_views, 2)`` float64 source coordinates ``(x, y)`` in pixels: ``R (sin β, -cos β)``."""
        return self.source_distance * torch.stack([torch.sin(self.angles), -torch.cos(self.angles)], dim=1)

    def rebin(self, y: torch.Tensor) -> torch.Tensor:
        """Parallel-beam sinogram ``(B, 1, n_views, ceil(√2 N))`` at ``θ = β_v``, ``s = k - D'//2`` from fan data.

        Each parallel ray is the fan ray ``γ = asin(s / R)``, ``β = θ + γ``, read off by linear interpolation
        (periodic in ``β``); rays outside the fan are 0. Needs views uniform over ``[0, 2π)``.
        """
        check_tensor(y, "y", self.output_shape, False)
        a = self.angles.detach().cpu()
        V = self.n_views
        step = 2 * math.pi / V
        uniform = torch.allclose(torch.diff(a), torch.full((V - 1,), step, dtype=a.dtype), atol=1e-6) if V > 1 \
            else False
        if not uniform:
            raise ValueError("fan-beam FBP (rebinning) needs a full scan: views uniform over [0, 2π) "
                             "(e.g. angles = 2 * sparse_view_angles(n)); use sampler='cg' or 'tv' otherwise")
        Dp = default_detectors(self.image_size)
        s = torch.arange(Dp, dtype=torch.float64) - Dp // 2
        gam = torch.asin((s / self.source_distance).clamp(-1, 1))  # (Dp,)
        beta = (a[:, None] + gam[None, :] - a[0]) / step  # fractional view index (V, Dp)
        dg = float(self.gammas[1] - self.gammas[0])  # Python floats and CPU index maths; y may be on a GPU
        kk = gam / dg + (self.n_detectors - 1) / 2  # fractional detector index (Dp,)
        b0 = torch.floor(beta)
        fb = (beta - b0).to(y.dtype)
        b0 = b0.to(torch.int64)
        k0 = torch.floor(kk)
        fk = (kk - k0).to(y.dtype)
        k0 = k0.to(torch.int64)
        out = torch.zeros(y.shape[0], V, Dp, dtype=y.dtype, device=y.device)
        yy = y[:, 0]
        for db, wb in ((0, 1 - fb), (1, fb)):
            vi = ((b0 + db) % V).to(y.device)
            for dk, wk in ((0, 1 - fk), (1, fk)):
                ki = k0 + dk
                inside = ((ki >= 0) & (ki < self.n_detectors)).to(y.dtype)
                vals = yy[:, vi, ki.clamp(0, self.n_detectors - 1).to(y.device)[None, :].expand(V, Dp)]
                out += vals * (wb * (wk * inside)[None, :]).to(y.device)
        return out[:, None]

    def fbp(self, y: torch.Tensor, filter: str = "ramp") -> torch.Tensor:
        """Filtered back-projection of fan data: :meth:`rebin` then the parallel-beam
        :func:`~invsolve.operators.ct.fbp` (full scans only)."""
        return fbp(self.rebin(y), self.angles.detach().cpu(), self.image_size, filter=filter)

    def extra_repr(self) -> str:
        return (f"image_size={self.image_size}, n_views={self.n_views}, n_detectors={self.n_detectors}, "
                f"source_distance={self.source_distance:g}, fan_angle={self.fan_angle:.4g}")
