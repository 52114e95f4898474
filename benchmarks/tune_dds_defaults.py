"""Issue #22: the validation runs behind DDS's registered defaults and the `natural` DDS preset.

Validation images only (never the test slab, the real slices or the held-out photos):
* MRI: MNI152 guard slices z = 94, 113 (:func:`invsolve.data.mri.validation_slices`), 8 birdcage coils, uniform 1D
  masks (8 % ACS, mask seed 0), 4x / 8x, noiseless or complex noise sigma_y = 0.02 (noise seed 7); prior mri-brain.
* CT: 2 procedural phantoms (``sample_phantoms(2, 64, seed 1234)``), 16 parallel-beam views, noiseless or sinogram
  noise 0.2 (seed 7); prior ct-phantom.
* Photos: 8 crops of the training photos (``build_train_source('natural').sample(8, seed 1234)``), Gaussian blur
  15 px sigma 2 with noise 0.01, or 50 % random-pixel inpainting; prior natural; 20 steps.

Each row is ``solve(y, op, prior, sampler="dds", steps, seed=0, sigma_y=<the true level>, **knobs)`` (``estimated``:
no sigma_y) and prints one JSON line (mean PSNR, per-image PSNR, mean CG iterations, seconds, load average).
The harness cannot express these problems yet (no validation split for CT phantoms and photo crops).

Run:  OMP_NUM_THREADS=1 python benchmarks/tune_dds_defaults.py [--rows mri,ct,photo] [--out FILE.jsonl]
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

ROWS = {  # label -> DDS knobs ("sigma_mult": the level passed is this times the true one)
    "mri": [("4x", 0.0, "fixed-100", dict(cg_iters=100, cg_tol=None)),
            ("4x", 0.0, "fixed-200", dict(cg_iters=200, cg_tol=None)),
            ("4x", 0.0, "fixed-400", dict(cg_iters=400, cg_tol=None)),
            ("4x", 0.0, "default", {}), ("4x", 0.0, "estimated", dict(estimated=True)),
            ("8x", 0.0, "fixed-100", dict(cg_iters=100, cg_tol=None)),
            ("8x", 0.0, "fixed-200", dict(cg_iters=200, cg_tol=None)), ("8x", 0.0, "default", {}),
            ("8x", 0.0, "estimated", dict(estimated=True)),
            ("4x", 0.02, "default", {}), ("4x", 0.02, "weight/4", dict(sigma_mult=0.5)),
            ("4x", 0.02, "weight*4", dict(sigma_mult=2.0)), ("8x", 0.02, "default", {}),
            ("4x", 0.02, "gamma-10", dict(gamma=10.0, cg_iters=5, cg_tol=None))],
    "ct": [("16", 0.0, "fixed-100", dict(cg_iters=100, cg_tol=None)), ("16", 0.0, "default", {}),
           ("16", 0.2, "default", {}), ("16", 0.2, "weight/4", dict(sigma_mult=0.5)),
           ("16", 0.2, "weight*4", dict(sigma_mult=2.0))],
    "photo": [("deblur", 0.01, "default", {}), ("deblur", 0.01, "gamma-10", dict(gamma=10.0, cg_iters=5, cg_tol=None)),
              ("inpaint", 0.0, "default", {}), ("inpaint", 0.0, "eta-0.5", dict(eta=0.5))],
}


def problem(family, setting, sigma):
    from invsolve.operators.noise import GaussianNoise

    g = torch.Generator().manual_seed(7)
    if family == "mri":
        from invsolve.data.mri import validation_slices
        from invsolve.operators import MultiCoilMRI, coils, masks

        x, _ = validation_slices(64)
        op = MultiCoilMRI(coils.birdcage(8, (64, 64)), masks.uniform1d((64, 64), int(setting[0]), 0.08, seed=0))
        y = op(x)
        return op, (GaussianNoise(sigma, mask=op.mask)(y, g) if sigma else y), x, None, "mri-brain", 50
    if family == "ct":
        from invsolve.data.ct import sample_phantoms
        from invsolve.operators.ct import ParallelBeamCT, sparse_view_angles

        x = sample_phantoms(2, 64, torch.Generator().manual_seed(1234))
        op = ParallelBeamCT(64, sparse_view_angles(int(setting)))
        y = op(x)
        return op, (y + sigma * torch.randn(y.shape, generator=g) if sigma else y), x, 1.0, "ct-phantom", 50
    from invsolve.data.base import build_train_source
    from invsolve.operators.blur import Blur, gaussian_kernel
    from invsolve.operators.inpainting import Inpainting, random_mask

    x = (build_train_source("natural", image_size=64).sample(8, torch.Generator().manual_seed(1234), "cpu") + 1) / 2
    if setting == "deblur":
        op = Blur(gaussian_kernel(15, 2.0), image_size=64)
        y = op(x) + sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    else:
        op = Inpainting(random_mask((64, 64), 0.5, seed=0))
        y = op(x)
    return op, y, x, 1.0, "natural", 20


def main():
    import invsolve as inv
    from invsolve.eval.metrics import psnr

    a = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a.add_argument("--rows", default="mri,ct,photo")
    a.add_argument("--out", default=None, help="append the JSON lines to this file too")
    args = a.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    for family in args.rows.split(","):
        for setting, sigma, label, knobs in ROWS[family]:
            op, y, x, rng, prior, steps = problem(family, setting, sigma)
            kw = dict(knobs)
            level = None if kw.pop("estimated", False) else sigma * kw.pop("sigma_mult", 1.0)
            t = time.perf_counter()
            r = inv.solve(y, op, prior=prior, sampler="dds", steps=steps, seed=0, sigma_y=level, **kw)
            ps = [round(float(v), 3) for v in psnr(r.x, x, rng)]
            its = [i["cg_iterations"].float().mean() for i in r.info.get("per_group", [r.info])]
            rec = {"family": family, "setting": setting, "sigma_y": sigma, "label": label, "knobs": knobs,
                   "psnr_mean": round(float(np.mean(ps)), 3), "psnr": ps, "cg_iterations": float(np.mean(its)),
                   "seconds": round(time.perf_counter() - t, 1), "load_average": os.getloadavg()[0]}
            line = json.dumps(rec)
            print(line, flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(line + "\n")


if __name__ == "__main__":
    main()
