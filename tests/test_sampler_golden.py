"""Golden outputs: every core sampler on small fixed problems, compared with outputs stored before the sampler
package was restructured (issue #25).

``tests/golden/samplers.npz`` holds, for each case below, what ``invsolve.solve`` returned at commit cb61635
(before the refactor): the SHA-256 of the reconstruction's bytes (dtype, shape and every value), every 4th pixel
along both image axes (to measure a difference, at 1/16 of the size) and the NFE. The problems are built from the
embedded priors and held-out data with fixed seeds and few steps, on one torch thread so that the result does not
depend on the machine's core count. The comparison is **bit-for-bit** (equal SHA-256) unless a case names a
tolerance in ``TOLERANCE`` (none does at present).

Regenerate (only when an algorithm is meant to change, and say so in the commit):
``python tests/test_sampler_golden.py --write``.
"""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

GOLDEN = Path(__file__).parent / "golden" / "samplers.npz"

# case -> (problem, sampler, knobs); every core sampler and the classical ones, with the knobs that switch branches
# DDS's data consistency became noise-aware after these outputs were stored (issue #22, DDS version 2); its cases name
# the released settings that were its defaults then (RELEASED_DDS).
RELEASED_DDS = dict(dc="prox", gamma=1.0, cg_iters=5, cg_tol=None, cg_precision="single")
CASES = {
    "dds": ("mri", "dds", dict(RELEASED_DDS, steps=4, gamma=10.0)),
    "dds-normal-ddim": ("ct", "dds", dict(RELEASED_DDS, steps=4, dc="normal", cg_iters=8, renoise="ddim", eta=0.5)),
    "dds-clip-quirks": ("mri", "dds", dict(RELEASED_DDS, steps=4, clip=1.0, reproduce_reference_rhs=True,
                                            reference_complex_inner_product=True, reference_last_step=False)),
    "dds-warm-start": ("deblur", "dds", dict(RELEASED_DDS, steps=8, init="wiener", t_start=0.5)),
    "dds-3d": ("ct-volume", "dds-3d", dict(steps=3, chunk=2, power_iterations=5)),
    "dds-3d-prox": ("ct-volume", "dds-3d", dict(steps=3, chunk=3, rho=0.0, gamma=0.5, normalize=False)),
    "ddnm": ("mri", "ddnm", dict(steps=4, pinv_iters=10)),
    "ddnm-plus": ("deblur", "ddnm", dict(steps=4, sigma_y=0.01)),
    "diffpir": ("mri", "diffpir", dict(steps=4, cg_iters=5)),
    # sigma_floor (issue #22) split off sigma_y's second role; 0.01 keeps the stored rho_t
    "diffpir-deblur": ("deblur", "diffpir", dict(steps=4, sigma_y=0.01, sigma_floor=0.01, zeta=0.3)),
    "pigdm": ("mri", "pigdm", dict(steps=4, pinv_iters=10)),
    "pigdm-noisy": ("deblur", "pigdm", dict(steps=4, sigma_y=0.01, eta=0.0)),
    "dps": ("mri", "dps", dict(steps=4)),
    "dps-edm-beta": ("deblur", "dps", dict(steps=4, form="edm", variance="beta", clip=None)),
    "mcg": ("mri", "mcg", dict(steps=4, pinv_iters=10)),
    "stsl-pixel": ("mri", "stsl", dict(steps=3)),
    "stsl-pixel-gluing": ("inpaint", "stsl", dict(steps=3, inner=1, gluing=0.1, step="residual", init="pinv")),
    "stsl-latent": ("inpaint-latent", "stsl", dict(steps=3)),
    "stsl-latent-fixed": ("deblur-latent", "stsl", dict(steps=2, step="fixed", rho=0.01, eta=0.0, init="noise")),
    "psld-pixel": ("mri", "psld", dict(steps=4, init="adjoint")),
    "psld-latent": ("sr-latent", "psld", dict(steps=4)),
    "enkg": ("deblur", "enkg", dict(steps=4, ensemble_size=4, batch=3, max_inner=2, max_step=0.5)),
    "enkg-kalman": ("deblur", "enkg", dict(steps=4, ensemble_size=3, normalize="kalman", guidance=1.0,
                                           return_particles=False)),
    "dps-gsg": ("deblur", "dps-gsg", dict(steps=4, queries=6)),
    # added with the samplers (issue #26), after the refactor: stored when they were introduced (--write-missing)
    "daps": ("mri", "daps", dict(budget="cheap", steps=3, ode_steps=2, langevin_steps=3, lr=2e-4, sigma_max=10.0)),
    "daps-heun-deblur": ("deblur", "daps", dict(steps=2, ode_steps=2, langevin_steps=2, ode_solver="heun")),
    "daps-exact": ("mri", "daps", dict(budget="cheap", steps=3, ode_steps=1, x0_step="exact", beta_y=1e-3,
                                       sigma_min=0.01, sigma_max=10.0)),
    "reddiff": ("mri", "reddiff", dict(steps=4, lr=0.1)),
    "reddiff-zeros-sqrt": ("inpaint", "reddiff", dict(steps=4, lr=0.3, init="zeros", weighting="sqrt")),
    "dps-gsg-forward": ("deblur", "dps-gsg", dict(steps=3, queries=3, estimator="forward", jacobian="identity")),
    "adjoint": ("mri", "adjoint", {}),
    "cg": ("mri", "cg", dict(iterations=10)),
    "tv": ("mri", "tv", dict(iterations=20, lam=0.003)),
    "wiener": ("deblur", "wiener", {}),
    "wiener-cg": ("sr", "wiener", dict(reg=0.01, iterations=20)),
    "pinv": ("sr", "pinv", {}),
    "fbp": ("ct", "fbp", {}),
}

# case -> (rtol, reason): cases whose output may differ from the stored one by rounding (relative to max |x|)
TOLERANCE: dict = {
    "dds": (1e-5, "issue #22 rewrote the proximal step as (AᴴA + I/gamma) u = Aᴴy + z0/gamma, the stored system "
                  "(I + gamma AᴴA) u = z0 + gamma Aᴴy divided by gamma: the same CG iterates up to float32 rounding "
                  "(1.7e-6 measured)"),
}


def _problem(name: str):
    """``(y, operator, prior)`` of a fixed small problem (held-out data, seeded noise and masks)."""
    from invsolve import operators as O
    from invsolve.operators.noise import GaussianNoise

    if name == "mri":
        from invsolve.data.mri import heldout_slices

        x, _ = heldout_slices(64, n=16)
        op = O.MultiCoilMRI(O.coils.birdcage(8, (64, 64)), O.masks.uniform1d((64, 64), 4, 0.08, seed=0))
        return op(x[2:3]), op, "mri-brain"
    if name in ("ct", "ct-volume"):
        from invsolve.data.ct import sample_phantoms

        x = sample_phantoms(3 if name == "ct-volume" else 1, 64, generator=torch.Generator().manual_seed(0))
        op = O.ParallelBeamCT(image_size=64, angles=O.sparse_view_angles(16))
        return op(x), op, "ct-phantom"
    from invsolve.data.natural import heldout_photos

    x, _ = heldout_photos(64, n_crops_per_photo=1)
    x = x[:1]
    kind, latent = name.replace("-latent", ""), name.endswith("-latent")
    prior = "natural-latent" if latent else "natural"
    if kind == "deblur":
        op = O.Blur(O.gaussian_kernel(9, 1.5), padding="circular")
    elif kind == "inpaint":
        op = O.Inpainting(O.random_mask((64, 64), 0.5, seed=0))
    elif kind == "sr":
        op = O.SuperResolution(4)
    else:
        raise KeyError(name)
    y = GaussianNoise(0.01)(op(x), torch.Generator().manual_seed(0))
    return y, op, prior


def run_case(case: str):
    """``(x, nfe)`` of one golden case on one torch thread (x as numpy, complex for MRI)."""
    import invsolve as inv

    problem, sampler, knobs = CASES[case]
    y, op, prior = _problem(problem)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # as stored: no presets, and the noise level the samplers assumed then (their sigma_y option, else 0)
        knobs = dict(knobs)
        res = inv.solve(y, op, prior=prior, sampler=sampler, seed=7, device="cpu", preset=False,
                        sigma_y=knobs.pop("sigma_y", 0.0), **knobs)
    finally:
        torch.set_num_threads(threads)
    return res.x.detach().cpu().numpy(), int(res.nfe)


def digest(x: np.ndarray) -> str:
    """SHA-256 of an array's dtype, shape and bytes."""
    h = hashlib.sha256(f"{x.dtype.str}{x.shape}".encode())
    h.update(np.ascontiguousarray(x).tobytes())
    return h.hexdigest()


def subsample(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x[..., ::4, ::4])


@pytest.fixture(scope="module")
def golden():
    with np.load(GOLDEN) as f:
        return {k: f[k] for k in f.files}


def test_every_core_sampler_has_a_golden_case(golden):
    from invsolve.samplers import available_samplers, get_sampler

    builtin = {n for n in available_samplers() if get_sampler(n).fn.__module__.startswith("invsolve.")}
    covered = {s for _, s, _ in CASES.values()}
    assert len(builtin) >= 17 and builtin <= covered, sorted(builtin - covered)
    assert {f"{c}/sha256" for c in CASES} <= set(golden), sorted({f"{c}/sha256" for c in CASES} - set(golden))


@pytest.mark.parametrize("case", sorted(CASES))
def test_sampler_output_matches_the_golden_output(golden, case):
    x, nfe = run_case(case)
    assert nfe == int(golden[f"{case}/nfe"])
    if digest(x) == str(golden[f"{case}/sha256"]):
        return  # bit-for-bit
    want, got = golden[f"{case}/sub"], subsample(x)
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, got.dtype, want.shape, want.dtype)
    diff = float(np.abs(got - want).max() / np.abs(want).max())
    assert case in TOLERANCE, f"not bit-for-bit: max |diff| / max |x| = {diff:.3g} on the stored pixels"
    assert diff <= TOLERANCE[case][0], f"max |diff| / max |x| = {diff:.3g} > {TOLERANCE[case][0]:g}"


def write(path: Path = GOLDEN, missing_only: bool = False):
    """Run every case and store its output (``--write``); ``--write-missing`` adds only the cases not stored yet and
    keeps every stored output as it is."""
    out = {}
    if missing_only and path.exists():
        with np.load(path) as f:
            out = {k: f[k] for k in f.files}
    for case in sorted(CASES):
        if missing_only and f"{case}/sha256" in out:
            continue
        x, nfe = run_case(case)
        out[f"{case}/sha256"], out[f"{case}/sub"], out[f"{case}/nfe"] = np.array(digest(x)), subsample(x), np.array(nfe)
        print(f"{case:22s} nfe={nfe:4d} shape={x.shape} dtype={x.dtype}", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **out)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    if "--write" in sys.argv:
        write()
    elif "--write-missing" in sys.argv:
        write(missing_only=True)
