"""Cartesian k-space sampling masks (seeded, returned as float32 ``(H, W)`` tensors of 0/1).

1-D masks select whole columns (last axis = phase encoding), with a fully sampled auto-calibration (ACS) block
of ``int(W * center_fraction)`` columns starting at ``W//2 - ACS//2``.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import torch

from ..errors import ShapeError


def _check(shape, acceleration: float):
    if len(shape) != 2 or min(shape) < 2:
        raise ShapeError(f"shape must be (H, W) with H, W >= 2, got {tuple(shape)}")
    if not acceleration >= 1:
        raise ValueError(f"acceleration must be >= 1, got {acceleration}")


def _acs_cols(W: int, center_fraction: float) -> np.ndarray:
    if not 0 <= center_fraction <= 1:
        raise ValueError(f"center_fraction must lie in [0, 1], got {center_fraction}")
    acs = int(W * center_fraction)
    start = W // 2 - acs // 2
    return np.arange(start, start + acs)


def _columns(shape, cols) -> torch.Tensor:
    H, W = shape
    m = np.zeros((H, W), dtype=np.float32)
    m[:, np.unique(cols)] = 1
    return torch.from_numpy(m)


def uniform1d(shape: Tuple[int, int], acceleration: float = 4, center_fraction: float = 0.08, seed: int = 0,
              replace: bool = True) -> torch.Tensor:
    """Uniform random 1-D column mask with an ACS block.

    ``W // acceleration`` nominal lines: the ACS block plus ``N - ACS`` columns drawn uniformly. With
    ``replace=True`` (the DDS reference rule) draws may repeat, so slightly fewer unique lines are sampled;
    ``replace=False`` draws distinct columns outside the ACS block (fastMRI style), hitting the nominal count.
    """
    _check(shape, acceleration)
    H, W = shape
    rng = np.random.default_rng(seed)
    n_total = int(W // acceleration)
    acs = _acs_cols(W, center_fraction)
    n_rest = max(n_total - len(acs), 0)
    if replace:
        extra = rng.integers(0, W, size=n_rest)
    else:
        pool = np.setdiff1d(np.arange(W), acs)
        extra = rng.choice(pool, size=min(n_rest, len(pool)), replace=False)
    return _columns(shape, np.concatenate([acs, extra]))


def gaussian1d(shape: Tuple[int, int], acceleration: float = 4, center_fraction: float = 0.08,
               seed: int = 0) -> torch.Tensor:
    """Variable-density 1-D mask: ``int(1.2 N)`` columns from ``Normal(W/2, W*15/128)`` (with replacement) + ACS."""
    _check(shape, acceleration)
    H, W = shape
    rng = np.random.default_rng(seed)
    n = int(1.2 * (W // acceleration))
    cols = np.clip(rng.normal(W / 2, W * 15 / 128, size=n).astype(int), 0, W - 1)
    return _columns(shape, np.concatenate([_acs_cols(W, center_fraction), cols]))


def gaussian2d(shape: Tuple[int, int], acceleration: float = 8, seed: int = 0) -> torch.Tensor:
    """2-D Gaussian random points: ``H*W // acceleration`` draws around the centre, std ``W*1.5/128 * sqrt(W)``."""
    _check(shape, acceleration)
    H, W = shape
    rng = np.random.default_rng(seed)
    n = int(H * W // acceleration)
    std = np.sqrt(W * (W * 1.5 / 128))
    pts = rng.normal([H / 2, W / 2], std, size=(n, 2)).astype(int)
    pts = pts[(pts[:, 0] >= 0) & (pts[:, 0] < H) & (pts[:, 1] >= 0) & (pts[:, 1] < W)]
    m = np.zeros((H, W), dtype=np.float32)
    m[pts[:, 0], pts[:, 1]] = 1
    return torch.from_numpy(m)


def _poisson_disc(shape, radius_scale: float, power: float, rng, calib: int) -> np.ndarray:
    """Variable-density Poisson-disc sampling by dart throwing on the grid.

    The exclusion radius grows with the normalised k-space radius ``r``: ``R(r) = radius_scale * (1 + 4 r^power)``
    so the centre is denser than the periphery. Points are visited in random order and kept if no kept point
    lies within ``R`` of them (checked on a local window of the occupancy map).
    """
    H, W = shape
    ky, kx = np.meshgrid(np.linspace(-1, 1, H), np.linspace(-1, 1, W), indexing="ij")
    r = np.sqrt(ky**2 + kx**2) / np.sqrt(2)
    R = radius_scale * (1 + 4 * r**power)
    m = np.zeros((H, W), dtype=bool)
    order = rng.permutation(H * W)
    for idx in order:
        i, j = divmod(int(idx), W)
        rad = R[i, j]
        w = int(np.ceil(rad))
        i0, i1, j0, j1 = max(i - w, 0), min(i + w + 1, H), max(j - w, 0), min(j + w + 1, W)
        win = m[i0:i1, j0:j1]
        if win.any():
            ii, jj = np.nonzero(win)
            if np.min((ii + i0 - i) ** 2 + (jj + j0 - j) ** 2) < rad**2:
                continue
        m[i, j] = True
    c0, c1 = H // 2 - calib // 2, W // 2 - calib // 2
    m[c0:c0 + calib, c1:c1 + calib] = True
    return m


def poisson_disc(shape: Tuple[int, int], acceleration: float = 8, calib: int = 12, power: float = 1.0,
                 seed: int = 0, tol: float = 0.05, max_tries: int = 20) -> torch.Tensor:
    """Variable-density Poisson-disc 2-D mask with a fully sampled ``calib x calib`` centre.

    The disc radius is bisected until the sampled fraction is within ``tol`` (relative) of ``1/acceleration``.
    """
    _check(shape, acceleration)
    target = 1.0 / acceleration
    lo, hi = 0.3, max(shape) / 4.0
    best = None
    for _ in range(max_tries):
        mid = np.sqrt(lo * hi)
        m = _poisson_disc(shape, mid, power, np.random.default_rng(seed), calib)
        frac = m.mean()
        if best is None or abs(frac - target) < abs(best.mean() - target):
            best = m
        if abs(frac - target) <= tol * target:
            break
        if frac > target:
            lo = mid
        else:
            hi = mid
    return torch.from_numpy(best.astype(np.float32))


def acceleration_of(mask: torch.Tensor) -> float:
    """Effective acceleration ``numel / number of sampled entries``."""
    return float(mask.numel() / mask.count_nonzero().clamp_min(1))


MASKS = {"uniform1d": uniform1d, "gaussian1d": gaussian1d, "gaussian2d": gaussian2d, "poisson": poisson_disc}


def make_mask(kind: str, shape, **kwargs) -> torch.Tensor:
    """Build a mask by name (``uniform1d``, ``gaussian1d``, ``gaussian2d``, ``poisson``)."""
    from ..errors import UnknownNameError

    if kind not in MASKS:
        raise UnknownNameError(f"unknown mask type {kind!r}; available: {sorted(MASKS)}")
    return MASKS[kind](tuple(shape), **kwargs)
