"""``ns-vorticity-bank``: a CPU-feasible Navier–Stokes training bank with a held-out set, for the ``ns-vorticity``
prior.

Same law as :mod:`invsolve.data.ns` (GRF, evolved ``t_evolve = 5`` at Re = 200 under ``-4 cos(4y)`` forcing), but
with a selectable ``solver_size`` (64 here: about 2.5 s per field on one busy CPU core instead of about 20 s at
128), a resumable cached bank and a ``heldout`` set drawn from the disjoint ``"test"`` seed stream **with the same
generator settings**, so that prior, held-out figures and benchmark truth fields share one distribution.

At ``solver_size = 64`` the 2/3-rule cut-off (k ≈ 21) is not resolved at Re = 200 (ns.py docstring): the fields are
a coarser, numerically diffused version of the reference 128-grid data. They are the exact fields of the 64×64
:class:`~invsolve.operators.navier_stokes.NavierStokes2D` forward model, which is what the EnKG benchmark inverts.
"""
from __future__ import annotations

import json
import os
import time
from typing import Optional

import numpy as np
import torch

from ..errors import ShapeError
from .base import TrainSource, register_dataset
from .ns import ALPHA, TAU, generate_vorticity, torus_augment

__all__ = ["load_bank", "heldout_bank"]


def _meta(split: str, n: int, size: int, seed: int, t_evolve: float, solver_size: int) -> dict:
    return dict(split=split, n=int(n), size=int(size), seed=int(seed), t_evolve=float(t_evolve), Re=200.0,
                alpha=ALPHA, tau=TAU, solver_size=int(solver_size))


def load_bank(path: Optional[str], split: str, n: int, size: int = 64, seed: int = 0, t_evolve: float = 5.0,
              solver_size: int = 64, chunk: int = 32, verbose: bool = True) -> torch.Tensor:
    """Raw vorticity fields ``(n, 1, size, size)`` float32 (CPU) of ``split``, cached at ``path`` (``.npy`` with a
    ``.npy.json`` side file of the generation parameters; a cache of more fields with the same parameters serves
    its first ``n``).

    Generation is resumable: finished chunks of ``chunk`` fields are kept in ``path + ".partial.npy"``, so an
    interrupted run continues where it stopped. A cache with other parameters is regenerated. ``path=None``:
    generate in memory.
    """
    meta = _meta(split, n, size, seed, t_evolve, solver_size)
    if path and os.path.exists(path) and os.path.exists(path + ".json"):
        with open(path + ".json") as fh:
            have = json.load(fh)
        if have.pop("n", -1) >= n and have == {k: v for k, v in meta.items() if k != "n"}:
            return torch.from_numpy(np.load(path)[:n])  # field i depends on (split, seed, i) only
    partial, done = None, np.zeros((0, 1, size, size), np.float32)
    if path:
        partial = path + ".partial.npy"
        if os.path.exists(partial) and os.path.exists(partial + ".json"):
            with open(partial + ".json") as fh:
                if json.load(fh) == meta:
                    done = np.load(partial)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    t0 = time.time()
    while done.shape[0] < n:
        lo = done.shape[0]
        hi = min(n, lo + chunk)
        w = generate_vorticity(hi - lo, size, seed, split=split, t_evolve=t_evolve, solver_size=solver_size,
                               batch=hi - lo, start=lo).numpy()
        done = np.concatenate([done, w])
        if partial:
            np.save(partial, done)
            with open(partial + ".json", "w") as fh:
                json.dump(meta, fh)
        if verbose:
            print(f"ns-vorticity-bank[{split}]: {hi}/{n} fields ({time.time() - t0:.0f} s this run)", flush=True)
    if path:
        np.save(path, done)
        with open(path + ".json", "w") as fh:
            json.dump(meta, fh)
        if partial and os.path.exists(partial):
            os.remove(partial)
            os.remove(partial + ".json")
    return torch.from_numpy(done)


def heldout_bank(n: int = 16, size: int = 64, seed: int = 0, t_evolve: float = 5.0, solver_size: int = 64,
                 cache: Optional[str] = None) -> torch.Tensor:
    """Held-out raw fields ``(n, 1, size, size)`` from the ``"test"`` stream (never in any training bank)."""
    return load_bank(cache, "test", n, size, seed, t_evolve, solver_size, verbose=False)


def _test_cache(cache: Optional[str]) -> Optional[str]:
    return None if not cache else cache[: -len(".npy")] + "_test.npy" if cache.endswith(".npy") else cache + "_test"


@register_dataset("ns-vorticity-bank")
def build(image_size=64, bank_size=1024, solver_size=64, seed=0, t_evolve=5.0, scale=10.0, cache=None,
          n_heldout=16, device=None, **_) -> TrainSource:
    """Training source: ``bank_size`` cached fields (``cache``: ``.npy`` path; the held-out set goes next to it as
    ``*_test.npy``), divided by ``scale`` (prior units, about [-1.7, 1.7], std ≈ 0.45), under a random symmetry of
    the forced flow (:func:`invsolve.data.ns.torus_augment`)."""
    size = image_size if isinstance(image_size, int) else int(image_size[0])
    if not isinstance(image_size, int) and tuple(image_size) != (size, size):
        raise ShapeError(f"image_size must be square for ns-vorticity-bank, got {image_size}")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    bank = load_bank(cache, "train", bank_size, size, seed, t_evolve, solver_size).to(dev)

    def sample(batch: int, generator: torch.Generator, device) -> torch.Tensor:
        idx = torch.randint(bank.shape[0], (batch,), generator=generator, device=bank.device)
        return torus_augment(bank[idx], generator).to(device) / scale

    def heldout() -> torch.Tensor:
        return heldout_bank(n_heldout, size, seed, t_evolve, solver_size, _test_cache(cache)) / scale

    desc = (
        f"{bank_size} Navier-Stokes vorticity fields at {size}x{size} on the torus [0, 2pi]^2: isotropic Gaussian "
        f"random fields (alpha={ALPHA}, tau={TAU}) evolved {t_evolve} time units at Re=200 under Kolmogorov forcing "
        f"-4cos(4y) with the pseudo-spectral solver at {solver_size}x{solver_size} (the reference data use 128x128; "
        f"{solver_size} was chosen so that the bank could be generated on CPU), divided by {scale}. Augmentation: the "
        "symmetries of the forced flow (x-translations, y-translations by pi/2, rotation by pi, sign-flipping mirrors "
        f"with a pi/4 y-shift). Held out: {n_heldout} fields of the disjoint 'test' seed stream, same generator."
    )
    info = dict(_meta("train", bank_size, size, seed, t_evolve, solver_size), scale=float(scale),
                cache=cache, data_std_raw=float(bank.std()), data_absmax_raw=float(bank.abs().max()),
                heldout_name=f"{n_heldout} 'test'-stream fields (same generator, solver {solver_size}x{solver_size})")
    return TrainSource(sample=sample, channels=1, image_size=(size, size), description=desc, info=info,
                       heldout=heldout)
