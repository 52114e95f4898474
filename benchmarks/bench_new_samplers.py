"""Issue #26: DAPS and RED-diff on the embedded priors — validation sweeps and DAPS vs DPS on phase retrieval.

Stages (each entry is skipped when already in the results file; ``--force`` re-runs):

* ``tune``: validation images only (never the test images), 2 per task, seed 0, the embedded prior of the task:
  MRI 4x (``mri-brain``; MNI guard slices z = 94, 113, phase seed 99; 8 birdcage coils, uniform 1D mask with 8 % ACS,
  mask seed 0), CT 16 views (``ct-phantom``; procedural phantoms of seed 1234), 50 % random inpainting (``natural``;
  crops of the training photos drawn with seed 2024, mask seed 0), Gaussian deblurring (15 px, sigma 2, noise 0.01)
  and 4x bicubic super-resolution of the same crops — the core suite's operators. DAPS ``lr`` and RED-diff ``lr``
  grids; the chosen values go into ``configs/bench/core.yaml``.
* ``tune-exact``: DAPS with the exact Gaussian x0 step (``x0_step="exact"``) on every linear task, and RED-diff's
  step count and ``lam`` on CT, on the same validation images plus two CT groups *outside* the ``ct-phantom`` prior's
  distribution (the held-out CT slices are real and that prior is trained on phantoms): ``ct-mni`` (the MNI guard
  slices z = 94, 113 as attenuation maps, each scaled to peak 1) and ``ct-photo`` (the inpainting validation crops
  in grey). The CT settings are chosen by their worst gain over A⁺y across the three CT groups.
* ``pr-tune``: Fourier phase retrieval (oversampling 2, noise 0.05, ``natural`` prior) on 2 validation crops: DPS
  ``scale`` and DAPS ``lr`` grids (``sigma_max`` 100 and 10) at the same network-call budget (``--pr-nfe``).
* ``pr-test``: the chosen DPS and DAPS settings on held-out photos (``phase-retrieval`` task, index 0, 3, 6, 9,
  the differentiable operator), the same seeds and measurements.

Phase retrieval cannot tell an image from its point reflection ``x(r) -> x(-r)`` (rotation by 180 degrees), so both
the plain PSNR and the PSNR up to that reflection (the larger of the two) are recorded.

Wall times are measured on a shared machine; the 1-minute load average at the start of each run is stored with it.

Run:  OMP_NUM_THREADS=1 python benchmarks/bench_new_samplers.py tune|tune-exact|pr-tune|pr-test [--force]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, write_json  # noqa: E402

OUT = RESULTS / "new_samplers.json"
PRIOR = {"mri": "mri-brain", "ct": "ct-phantom", "ct-mni": "ct-phantom", "ct-photo": "ct-phantom",
         "inpaint": "natural", "deblur": "natural", "sr": "natural", "pr": "natural"}
PR_NOISE = 0.05

# DAPS's Langevin step is stable for about lr ||J||² / beta_y² < 2 (J: the operator in prior-space units; ||J||² is
# ~1 for the MRI operator, 1/4 for inpainting and ~250 for the CT operator), so CT gets a larger beta_y.
# sigma_max = 10: the small embedded priors' denoisers are biased at sigma = 100 (mean of D(100 n, 100): -0.74 for
# `natural`), and DAPS re-noises x0_hat, so the offset would persist (docs/samplers.md)
DAPS_GRID = {"mri": [dict(lr=v) for v in (1e-5, 3e-5, 1e-4, 2e-4)] + [dict(lr=2e-4, sigma_max=10.0)],
             "ct": [dict(lr=v, beta_y=0.1) for v in (1e-6, 3e-6, 1e-5, 3e-5, 6e-5)]
             + [dict(lr=6e-5, beta_y=0.1, langevin_steps=100)]  # CT's ill-conditioning: more Langevin steps
             + [dict(lr=6e-5, beta_y=0.1, langevin_steps=100, sigma_max=10.0)],
             "inpaint": [dict(lr=v) for v in (1e-4, 3e-4, 6e-4)] + [dict(lr=6e-4, sigma_max=10.0)],
             "deblur": [dict(lr=v) for v in (3e-4, 6e-4)],
             "sr": [dict(lr=v) for v in (3e-3, 1e-2)]}  # ||J||² = 1/64 for 4x bicubic SR in prior units
NOISE = {"deblur": 0.01}


def _label(prefix, kn):
    return prefix + "".join(f"_{k}{v:g}" for k, v in kn.items())


def tune_methods(task):
    """label -> (sampler, knobs): DAPS at the CPU preset, RED-diff at 100 steps (the released example script)."""
    out = {_label("daps_cheap", kn): ("daps", dict(budget="cheap", **kn)) for kn in DAPS_GRID[task]}
    lrs = {"deblur": (0.1, 0.3), "sr": (0.1, 0.3), "inpaint": (0.01, 0.03, 0.1, 0.3, 1.0)}.get(task,
                                                                                           (0.01, 0.03, 0.1, 0.3))
    out.update({_label("reddiff_100", dict(lr=lr)): ("reddiff", dict(steps=100, lr=lr)) for lr in lrs})
    return out


_EXACT = dict(budget="cheap", x0_step="exact", beta_y=1e-3, sigma_min=0.01, sigma_max=10.0)
_REDDIFF_CT = [dict(steps=100, lr=0.1, lam=10.0), dict(steps=100, lr=0.1, lam=2.5), dict(steps=300, lr=0.1, lam=2.5),
               dict(steps=300, lr=0.1, lam=10.0), dict(steps=1000, lr=0.1, lam=10.0)]


def exact_methods(task):
    """label -> (sampler, knobs) of the ``tune-exact`` stage (module docstring)."""
    base, cheap = dict(_EXACT, steps=100, ode_steps=1), dict(_EXACT, steps=50, ode_steps=2)
    grid = {"deblur": [dict(base, beta_y=0.01), dict(base, beta_y=0.02),  # its noise is 0.01: beta_y at and above it
                       dict(base, beta_y=0.01, sigma_min=0.1)],
            "sr": [dict(base, beta_y=1e-3), dict(base, beta_y=0.01)],
            "mri": [base, cheap, dict(cheap, beta_y=0.01, sigma_min=0.1)]}
    grid["ct"] = grid["mri"]
    out = {_label("daps_exact", {k: v for k, v in kn.items() if k not in ("budget", "x0_step")}): ("daps", kn)
           for kn in grid.get(task, [base, cheap])}
    if task.startswith("ct"):
        out.update({_label("reddiff", kn): ("reddiff", kn) for kn in _REDDIFF_CT})
    return out


def pr_methods(nfe: int):
    dps = {f"dps_{nfe}_scale{s:g}": ("dps", dict(steps=nfe, scale=s)) for s in (0.3, 1.0, 3.0, 10.0)}
    # DAPS at nfe network calls: nfe / 2 levels x 2 ODE steps, 50 Langevin steps per level (no network calls); from
    # sigma_max = 100 (the paper's) every validation sample converged to the negated image (9 dB), so sigma_max = 10
    base = dict(budget="cheap", steps=nfe // 2, ode_steps=2, langevin_steps=50)
    daps = {f"daps_{nfe}_lr{lr:g}": ("daps", dict(base, lr=lr)) for lr in (3e-5, 1e-4, 3e-4)}
    daps10 = {f"daps_{nfe}_lr{lr:g}_sigma_max10": ("daps", dict(base, lr=lr, sigma_max=10.0))
              for lr in (3e-5, 1e-4, 3e-4)}
    return {**dps, **daps, **daps10}


# ------------------------------------------------------------------------------------------------ problems
def validation(task: str, n: int = 2):
    """(x, op, names) for the validation images of ``task`` (module docstring)."""
    if task == "ct-mni":
        from invsolve.data.mri import axial_slices

        x = axial_slices([94, 113][:n], 64).abs().float()
        return x / x.amax(dim=(-2, -1), keepdim=True), validation("ct")[1], [f"mni-z{k}" for k in (94, 113)[:n]]
    if task == "ct-photo":
        x, _, names = validation("inpaint", n)
        return x.mean(dim=1, keepdim=True), validation("ct")[1], names
    if task == "mri":
        from invsolve.data.mri import axial_slices, smooth_phase, to_complex
        from invsolve.operators import MultiCoilMRI, coils, masks

        z = [94, 113][:n]
        x = to_complex(axial_slices(z, 64), smooth_phase(len(z), 64, torch.Generator().manual_seed(99), "cpu"))
        op = MultiCoilMRI(coils.birdcage(8, (64, 64)), masks.uniform1d((64, 64), 4, 0.08, seed=0))
        return x, op, [f"mni-z{k}" for k in z]
    if task == "ct":
        from invsolve.data.ct import sample_phantoms
        from invsolve.tasks import build_problem

        op = build_problem({"task": "ct", "index": [0], "geometry": "sparse_view", "n_views": 16}).operator
        return sample_phantoms(n, 64, torch.Generator().manual_seed(1234)), op, [f"phantom-{i}" for i in range(n)]
    from invsolve.data.base import build_train_source

    x = (build_train_source(kind="natural", image_size=64).sample(n, torch.Generator().manual_seed(2024), "cpu")
         + 1) / 2
    if task == "inpaint":
        from invsolve.operators import Inpainting
        from invsolve.operators.inpainting import random_mask

        return x, Inpainting(random_mask((64, 64), 0.5, seed=0)), [f"crop-{i}" for i in range(n)]
    if task == "deblur":
        from invsolve.operators import Blur, gaussian_kernel

        return x, Blur(gaussian_kernel(15, 2.0), padding="circular", image_size=64), [f"crop-{i}" for i in range(n)]
    if task == "sr":
        from invsolve.operators import SuperResolution

        return x, SuperResolution(4, mode="bicubic", image_size=64), [f"crop-{i}" for i in range(n)]
    from invsolve.operators.phase_retrieval import PhaseRetrieval

    return x, PhaseRetrieval(64, 3, 2.0), [f"crop-{i}" for i in range(n)]


def measure(op, x, noise: float):
    y = op(x)
    if noise:
        y = y + noise * torch.randn(y.shape, generator=torch.Generator().manual_seed(0), dtype=y.dtype)
    return y


def pr_test():
    from invsolve.tasks import build_problem

    p = build_problem({"task": "phase-retrieval", "index": [0, 3, 6, 9], "black_box": False,
                       "noise_sigma": PR_NOISE})
    return p.x_true, p.operator, p.y, p.names


def scores(xhat, x, task):
    from invsolve.eval.metrics import psnr, ssim

    rng = None if task == "mri" else 1.0  # [0, 1] images (ct-mni: each slice scaled to peak 1)
    out = {"psnr": [float(v) for v in psnr(xhat, x, rng)], "ssim": [float(v) for v in ssim(xhat, x, rng)]}
    if task == "pr":  # up to the point reflection (module docstring)
        flip = [float(v) for v in psnr(torch.flip(xhat, dims=(-2, -1)), x, rng)]
        out["psnr_up_to_reflection"] = [max(a, b) for a, b in zip(out["psnr"], flip)]
    return out


def run(task, label, sampler, knobs, x, op, y, names):
    import invsolve as inv

    load = os.getloadavg()[0]
    t0 = time.time()
    res = inv.solve(y, op, prior=PRIOR[task], sampler=sampler, seed=0, **knobs)
    entry = {"task": task, "label": label, "sampler": sampler, "knobs": knobs, "names": names, "nfe": res.nfe,
             "seconds": round(time.time() - t0, 1), "load_average_1min": round(load, 2),
             **scores(res.x.detach(), x, task)}
    entry["mean_psnr"] = round(float(np.mean(entry["psnr"])), 3)
    return entry


def _load():
    return json.loads(OUT.read_text()) if OUT.exists() else {"machine": machine(), "runs": {}}


def _baselines(task, x, op, y):
    """The initial estimates the samplers should improve on: A⁺y (RED-diff's start) and the adjoint."""
    from invsolve import solve

    out = {}
    for name in (("pinv", "adjoint") if op.is_linear else ()):
        out[name] = scores(solve(y, op, sampler=name).x, x, task)
    return out


def pr_choice(data, methods) -> dict:
    """Sampler -> the label of its best validation run (mean PSNR up to the reflection) among ``methods``."""
    best = {}
    for key, e in data["runs"].items():
        if key.startswith("pr-tune/") and e["label"] in methods and "error" not in e:
            score = float(np.mean(e["psnr_up_to_reflection"]))
            if e["sampler"] not in best or score > best[e["sampler"]][0]:
                best[e["sampler"]] = (score, e["label"])
    if set(best) != {"dps", "daps"}:
        raise SystemExit("run the pr-tune stage first (at the same --pr-nfe)")
    return {s: label for s, (_, label) in best.items()}


def main(argv=None):
    from invsolve.errors import InvsolveError

    ap = argparse.ArgumentParser()
    ap.add_argument("stage", choices=["tune", "tune-exact", "pr-tune", "pr-test"])
    ap.add_argument("--tasks", default="mri,ct,inpaint,deblur,sr")
    ap.add_argument("--pr-nfe", type=int, default=200)
    ap.add_argument("--only", default=None, help="comma-separated labels")
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    data = _load()
    jobs = []
    if a.stage in ("tune", "tune-exact"):
        tasks, methods = ((a.tasks.split(","), tune_methods) if a.stage == "tune" else
                          (("mri", "ct", "ct-mni", "ct-photo", "inpaint", "deblur", "sr"), exact_methods))
        for task in tasks:
            x, op, names = validation(task)
            y = measure(op, x, NOISE.get(task, 0.0))
            data.setdefault("baselines", {})[f"{a.stage}/{task}"] = _baselines(task, x, op, y)
            for label, (s, kn) in methods(task).items():
                jobs.append((f"{a.stage}/{task}/{label}", task, label, s, kn, x, op, y, names))
    elif a.stage == "pr-tune":
        x, op, names = validation("pr")
        y = measure(op, x, PR_NOISE)
        for label, (s, kn) in pr_methods(a.pr_nfe).items():
            jobs.append((f"pr-tune/{label}", "pr", label, s, kn, x, op, y, names))
    else:
        x, op, y, names = pr_test()
        methods = pr_methods(a.pr_nfe)
        data["pr_choice"] = tuned = pr_choice(data, methods)
        for label in tuned.values():
            jobs.append((f"pr-test/{label}", "pr", label, *methods[label], x, op, y, names))
    fresh = _load()  # another stage may be running: keep its entries
    fresh.setdefault("baselines", {}).update(data.get("baselines", {}))
    fresh.update({k: v for k, v in data.items() if k == "pr_choice"})
    write_json(OUT, fresh)
    data = fresh
    only = set(a.only.split(",")) if a.only else None
    for key, task, label, s, kn, x, op, y, names in jobs:
        if (only and label not in only) or (key in data["runs"] and not a.force):
            continue
        try:
            entry = run(task, label, s, kn, x, op, y, names)
        except InvsolveError as e:  # e.g. a divergent Langevin step: a result too
            entry = {"task": task, "label": label, "sampler": s, "knobs": kn, "error": str(e), "mean_psnr": None,
                     "nfe": 0, "seconds": 0, "load_average_1min": round(os.getloadavg()[0], 2)}
            print(f"{key}: failed: {e}", flush=True)
            data = _load()
            data["runs"][key] = entry
            write_json(OUT, data)
            continue
        data = _load()
        data["runs"][key] = entry
        write_json(OUT, data)
        print(f"{key}: {entry['mean_psnr']:.2f} dB, nfe {entry['nfe']}, {entry['seconds']} s "
              f"(load {entry['load_average_1min']})", flush=True)


if __name__ == "__main__":
    main()
