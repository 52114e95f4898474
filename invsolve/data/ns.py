"""Navier–Stokes vorticity fields: the ``ns-vorticity`` prior's training bank and held-out truth fields.

Recipe (InverseBench "Re200.0-t5.0" style, as in the EnKG paper): draw an isotropic Gaussian random field on the
torus ``[0, 2π]^2`` and evolve it ``t_evolve = 5`` time units under the Kolmogorov-forced Navier–Stokes equations
(``Re = 200``, ``f = -4 cos(4y)``) with :func:`invsolve.operators.navier_stokes.solve_vorticity`.

* GRF: zero mean, covariance ``C = τ^{2α-2} (-Δ + τ^2)^{-α}``; as a Fourier series ``w = Σ_k ŵ_k e^{ik·x}`` with
  independent ``E|ŵ_k|^2 = τ^{2α-2} (|k|^2 + τ^2)^{-α}`` (``k`` integer, ``ŵ_0 = 0``). ``α = 2.5, τ = 7`` give
  smooth fields of pointwise std ≈ 1.44. The evolved fields forget most of this: with std0 from 1.4 to 10 they end
  at std ≈ 3.5–4.5 with 1–99 % quantiles about ±11 — the InverseBench data range (about [-10, 10], "std 5").
* Resolution: the solver runs at ``solver_size = max(size, 128)`` and the result is spectrally truncated to
  ``size``. At 64×64 and Re = 200 the enstrophy spectrum piles up at the 2/3 cut-off (k ≈ 21); at 128 it is resolved
  (it falls below 1e-5 of the peak by k = 50). Cost: about 8× the 64×64 solve.
* Determinism: field ``i`` of a split is drawn from ``numpy.random.default_rng((split_id, seed, i))`` (train: 0,
  test: 1 — disjoint streams), independent of ``n``, ``batch`` and device; the solver steps every item with its own
  adaptive step, so batching does not change an item either. Results agree across devices up to float32 rounding
  (amplified by the chaotic flow over 5 time units: statistically, not pointwise, identical).
"""
from __future__ import annotations

import json
import os
import time
import warnings
from typing import Optional

import numpy as np
import torch

from ..errors import ShapeError
from ..operators.navier_stokes import solve_vorticity
from .base import TrainSource, register_dataset

__all__ = ["gaussian_random_field", "generate_vorticity", "heldout_fields", "torus_augment"]

SPLITS = {"train": 0, "test": 1}
ALPHA, TAU = 2.5, 7.0


def _split_id(split: str) -> int:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    return SPLITS[split]


def _device(device) -> torch.device:
    return torch.device(device) if device is not None else torch.device("cpu")


def gaussian_random_field(
    n: int,
    size: int = 128,
    *,
    alpha: float = ALPHA,
    tau: float = TAU,
    seed: int = 0,
    split: str = "train",
    start: int = 0,
    device=None,
) -> torch.Tensor:
    """``n`` GRF vorticity fields ``(n, size, size)`` float32 on ``device`` (module docstring for the law).

    Field ``i`` uses ``numpy.random.default_rng((split_id, seed, start + i))``.
    """
    sid = _split_id(split)
    rngs = [np.random.default_rng((sid, seed, start + i)) for i in range(n)]
    white = np.stack([rng.standard_normal((size, size), dtype=np.float32) for rng in rngs])
    white = torch.from_numpy(white).to(_device(device))
    kx = torch.fft.fftfreq(size, 1.0 / size, device=white.device, dtype=torch.float64)[:, None]
    ky = torch.fft.rfftfreq(size, 1.0 / size, device=white.device, dtype=torch.float64)[None, :]
    var = tau ** (2 * alpha - 2) * (kx**2 + ky**2 + tau**2) ** (-alpha)
    var[0, 0] = 0.0
    # ortho rfft2 of white noise has E|Z_k|^2 = 1; irfft2(s^2 ŵ) is the Fourier series sum_k ŵ_k e^{ik.x}.
    amp = (size * var.sqrt()).to(torch.float32)
    return torch.fft.irfft2(torch.fft.rfft2(white, norm="ortho") * amp, s=(size, size), norm="ortho")


def _spectral_truncate(w: torch.Tensor, size: int) -> torch.Tensor:
    """Fourier-truncate ``(..., S, S)`` fields to ``(..., size, size)`` (keeps ``|k| < size/2``)."""
    S = w.shape[-1]
    if S == size:
        return w
    w_hat = torch.fft.rfft2(w)
    half = size // 2
    kept = torch.cat([w_hat[..., :half, : half + 1], w_hat[..., S - half :, : half + 1]], dim=-2)
    kept[..., half, :] = 0  # Nyquist modes: drop so that the result stays exactly real-symmetric
    kept[..., :, half] = 0
    return torch.fft.irfft2(kept, s=(size, size)) * (size / S) ** 2


def generate_vorticity(
    n: int,
    size: int = 64,
    seed: int = 0,
    *,
    split: str = "train",
    t_evolve: float = 5.0,
    Re: float = 200.0,
    alpha: float = ALPHA,
    tau: float = TAU,
    solver_size: Optional[int] = None,
    batch: Optional[int] = None,
    device=None,
    start: int = 0,
    verbose: bool = False,
) -> torch.Tensor:
    """Evolved Navier–Stokes vorticity fields, raw units (about [-10, 10]), float32 ``(n, 1, size, size)`` on
    ``device``.

    GRF initial fields (items ``start .. start+n-1`` of ``split``) are evolved for ``t_evolve`` time units at
    ``Re`` under ``-4 cos(4y)`` forcing at ``solver_size`` (default ``max(size, 128)``), then Fourier-truncated to
    ``size``. ``batch`` fields are integrated together (default 2048 on CUDA, 64 otherwise).
    """
    if size % 2:
        raise ShapeError(f"size must be even, got {size}")
    dev = _device(device)
    solver_size = solver_size or max(size, 128)
    if solver_size < size or solver_size % 2:
        raise ShapeError(f"solver_size must be even and >= size ({size}), got {solver_size}")
    batch = batch or (2048 if dev.type == "cuda" else 64)
    out = torch.empty((n, 1, size, size), dtype=torch.float32, device=dev)
    t0 = time.time()
    for lo in range(0, n, batch):
        hi = min(n, lo + batch)
        w0 = gaussian_random_field(hi - lo, solver_size, alpha=alpha, tau=tau, seed=seed, split=split,
                                   start=start + lo, device=dev)
        w = solve_vorticity(w0, t_evolve, Re=Re) if t_evolve > 0 else w0
        out[lo:hi, 0] = _spectral_truncate(w, size)
        if verbose:
            print(f"ns-vorticity: {hi}/{n} fields ({time.time() - t0:.1f} s)", flush=True)
    return out


def heldout_fields(n: int = 10, size: int = 64, seed: int = 0, *, t_evolve: float = 5.0, Re: float = 200.0,
                   device=None, **kw) -> torch.Tensor:
    """Held-out truth fields (the ``"test"`` split, disjoint from any training bank): raw ``(n, 1, size, size)``."""
    return generate_vorticity(n, size, seed, split="test", t_evolve=t_evolve, Re=Re, device=device, **kw)


def torus_augment(w: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random symmetries of the Kolmogorov-forced flow, one per item of ``w`` ``(B, C, s, s)``.

    The forcing ``f = -4 cos(4y)`` (y = last axis) is kept by exactly these maps of ``w(x, y)``:

    * ``w(x + a, y + m π/2)``: any grid shift ``a`` in x, y-shifts by quarter periods only;
    * ``w(-x, -y)``: rotation by π (vorticity is a scalar under rotations; ``f`` is even);
    * ``-w(-x, y + π/4)`` and ``-w(x, π/4 - y)``: a mirror flips the sign of 2-D vorticity, and ``f`` must then be
      odd about the mirror line, which needs the extra quarter-wavelength shift. (A plain mirror, a plain sign flip
      or a y-shift by π/4 alone reverse the forcing and are *not* symmetries.)

    An isotropic GRF is invariant under all of them and the dynamics commute with them, so the evolved fields'
    law is too. The π/4 maps need ``s % 8 == 0`` and are skipped otherwise; y-shifts by π/2 need ``s % 4 == 0``
    (else shifts by π).
    """
    B, _, s, _ = w.shape
    dev = w.device

    def rand(high):
        return torch.randint(high, (B,), generator=generator, device=dev)

    ex = 1 - 2 * rand(2)  # x -> ex*x
    ey = 1 - 2 * rand(2) if s % 8 == 0 else ex  # mirrors only where the π/4 shift is on the grid
    sign = ex * ey
    quarter = s // 4 if s % 4 == 0 else s // 2
    dy = quarter * rand(s // quarter) + torch.where(sign < 0, s // 8, 0)
    dx = rand(s)
    i = torch.arange(s, device=dev)
    rows = (ex[:, None] * i + dx[:, None]) % s  # (B, s)
    cols = (ey[:, None] * i + dy[:, None]) % s
    b = torch.arange(B, device=dev)[:, None, None]
    out = w.permute(0, 2, 3, 1)[b, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    return out * sign.to(w.dtype)[:, None, None, None]


def _load_or_generate(cache, meta: dict, device) -> torch.Tensor:
    if cache:
        side = str(cache) + ".json"
        if os.path.exists(cache) and os.path.exists(side):
            with open(side) as fh:
                if json.load(fh) == meta:
                    return torch.from_numpy(np.load(cache)).to(device)
    gen_kw = {k: meta[k] for k in ("seed", "t_evolve", "Re", "alpha", "tau", "solver_size")}
    if device.type == "cpu" and meta["bank_size"] > 64:
        warnings.warn(
            f"generating {meta['bank_size']} Navier-Stokes fields on CPU: about 9 s per field on 2 cores "
            "(8192 fields: about 20 h; an H100 takes about 3 min). Pass device='cuda' or a cache file."
        )
    t0 = time.time()
    bank = generate_vorticity(meta["bank_size"], meta["size"], device=device, verbose=True, **gen_kw)
    print(f"ns-vorticity: generated {meta['bank_size']} fields in {time.time() - t0:.1f} s on {device}", flush=True)
    if cache:
        os.makedirs(os.path.dirname(os.path.abspath(cache)), exist_ok=True)
        np.save(cache, bank.cpu().numpy())
        with open(str(cache) + ".json", "w") as fh:
            json.dump(meta, fh)
    return bank


@register_dataset("ns-vorticity")
def build(image_size=64, bank_size=8192, seed=0, t_evolve=5.0, scale=10.0, cache=None, device=None, **_) -> TrainSource:
    """Training source for the ``ns-vorticity`` prior.

    Generates ``bank_size`` evolved fields once on ``device`` (a GPU for real training: 8192 fields take seconds
    to minutes there; on CPU each 64×64 field costs seconds, so keep the bank small), or loads them from the
    ``cache`` ``.npy`` (with a ``.npy.json`` side file of the generation parameters; a mismatch regenerates).
    ``sample`` returns random bank fields divided by ``scale`` (prior units, std ≈ 0.45, about [-1, 1]) under a
    random symmetry of the forced flow (:func:`torus_augment`).
    """
    size = image_size if isinstance(image_size, int) else int(image_size[0])
    if not isinstance(image_size, int) and tuple(image_size) != (size, size):
        raise ShapeError(f"image_size must be square for ns-vorticity, got {image_size}")
    dev = _device(device)
    meta = dict(size=size, bank_size=int(bank_size), seed=int(seed), t_evolve=float(t_evolve), Re=200.0,
                alpha=ALPHA, tau=TAU, solver_size=max(size, 128))
    bank = _load_or_generate(cache, meta, dev)
    banks = {bank.device: bank}

    def sample(batch: int, generator: torch.Generator, device) -> torch.Tensor:
        device = torch.device(device)
        if device not in banks:
            banks[device] = bank.to(device)
        data = banks[device]
        idx = torch.randint(data.shape[0], (batch,), generator=generator, device=device)
        return torus_augment(data[idx], generator) / scale

    desc = (
        f"{bank_size} Navier–Stokes vorticity fields at {size}x{size} on the torus [0, 2pi]^2: isotropic Gaussian "
        f"random fields (alpha={ALPHA}, tau={TAU}) evolved {t_evolve} time units at Re=200 under Kolmogorov forcing "
        f"-4cos(4y) (pseudo-spectral solver at {meta['solver_size']}x{meta['solver_size']}, Fourier-truncated), "
        f"divided by {scale}. Augmentation: the symmetries of the forced flow (x-translations, y-translations by "
        "pi/2, rotation by pi, sign-flipping mirrors with a pi/4 y-shift). Held out: the disjoint 'test' seed stream."
    )
    info = dict(meta, scale=float(scale), train_split="train", heldout_split="test",
                data_std_raw=float(bank.std()), data_absmax_raw=float(bank.abs().max()))
    return TrainSource(sample=sample, channels=1, image_size=(size, size), description=desc, info=info)
