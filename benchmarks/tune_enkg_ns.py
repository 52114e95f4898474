"""Issue #5 validation sweep: EnKG knobs on Navier–Stokes *validation* fields (held-out stream index 7 by default;
8 and 9 are validation fields too; never one of the fields the benchmark reports: 0, 1, 2), one run per call, so
that settings are chosen before the reported runs. One field is a noisy judge (docs/samplers.md): use several.

Each run writes ``runs/enkg_ns_tune/<tag>.json`` with the relative L2 of the ensemble mean and per particle, the data
misfit of the mean, the per-update misfit trajectory (mean over particles of ``||G(x0_j) - y|| / ||y||``), the
forward-solve count and the network calls per particle. ``--summary`` collects them into
``benchmarks/results/enkg_ns_validation.json``.

    python benchmarks/tune_enkg_ns.py --ensemble 64 --steps 20 --updates 2 --max-inner 20 --guidance 1 \\
        --normalize trace --tag J64_N20_trace_w1_inner20
    python benchmarks/tune_enkg_ns.py --ensemble 64 --steps 20 --updates 0 --tag unguided_J64_N20
    python benchmarks/tune_enkg_ns.py --summary
    python benchmarks/tune_enkg_ns.py --data-fit 160   # no prior: Adam on the IC through the differentiable solver
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
from _common import RESULTS, ROOT, machine, prior_revision, write_json, write_result  # noqa: E402

WORK = Path("runs/enkg_ns_tune")


def _problem(a):
    """Operator, truth (prior units) and measurement of field ``a.field`` (noise as in bench_enkg_ns.py)."""
    import invsolve as inv
    from invsolve.tasks.ns import heldout_truth

    w, _ = heldout_truth([a.field], 64, 64, cache="runs/ns_bank_test.npy")
    op = inv.operators.NavierStokes2D(64, max_steps=a.max_solver_steps)
    x_true = w / op.scale
    with torch.no_grad():
        y = op(x_true)
    if a.noise > 0:
        y = y + a.noise * torch.randn(y.shape, generator=torch.Generator().manual_seed(1000 + a.field))
    return op, x_true, y


def restore_runs() -> int:
    """Write the runs recorded in ``benchmarks/results/enkg_ns_validation.json`` that ``WORK`` lacks (a fresh
    checkout has no ``runs/``), so that ``--summary`` keeps every earlier run instead of overwriting the committed
    file with the new ones only. Returns how many were restored; existing files are never touched."""
    path = RESULTS / "enkg_ns_validation.json"
    if not path.exists():
        return 0
    WORK.mkdir(parents=True, exist_ok=True)
    n = 0
    for tag, row in json.loads(path.read_text()).get("runs", {}).items():
        target = WORK / f"{tag}.json"
        if not target.exists():
            write_json(target, row)
            n += 1
    return n


def run(a) -> dict:
    import invsolve as inv
    from invsolve.eval.metrics import relative_l2

    op, x_true, y = _problem(a)
    t0 = time.time()
    res = inv.solve(y, op, prior=inv.load_prior(a.prior), sampler="enkg", seed=a.field,
                    ensemble_size=a.ensemble, steps=a.steps, updates=a.updates, guidance=a.guidance,
                    max_inner=a.max_inner, inner_div=a.inner_div, normalize=a.normalize, kalman_reg=a.kalman_reg,
                    thr_start=a.thr_start, localize=a.localize, max_step=a.max_step, batch=64)
    parts = res.info["particles"][0]
    with torch.no_grad():
        fit = float((op(res.x.cpu()) - y).norm() / y.norm())
    return dict(prior=a.prior, prior_revision=prior_revision(a.prior),
                ensemble=a.ensemble, steps=a.steps, updates=a.updates, max_inner=a.max_inner, inner_div=a.inner_div,
                guidance=a.guidance, normalize=a.normalize, kalman_reg=a.kalman_reg, thr_start=a.thr_start,
                field=a.field, noise=a.noise,
                localize=a.localize, max_step=a.max_step, rel_l2_mean=relative_l2(res.x.cpu(), x_true)[0],
                rel_l2_particles=float(np.mean(relative_l2(parts, x_true.expand_as(parts)))), data_misfit=fit,
                misfit_trajectory=[round(float(m), 4) for m in res.info["misfit"][:, 0] / y.norm()],
                step_ratio_trajectory=[round(float(r), 3) for r in res.info["step_ratio"][:, 0]],
                capped_updates=int(res.info["capped"].sum()),
                forward_evaluations=res.info["forward_evaluations"], nfe_per_particle=res.info["nfe_per_particle"],
                seconds=time.time() - t0)


def data_fit(a) -> None:
    """How much of the initial field the data pin down without a prior (``bench_enkg_ns.data_fit``: Adam, lr 0.02,
    from 0, autograd through the solver); prints misfit and relative L2 every 20 iterations and at the end."""
    from bench_enkg_ns import data_fit as fit

    op, x_true, y = _problem(a)

    def report(it, x, r):
        print(f"{it:4d} misfit {float(r.norm() / y.norm()):.3f} "
              f"rel. L2 {float((x - x_true).norm() / x_true.norm()):.3f}", flush=True)

    x = fit(op, y, a.data_fit, callback=lambda it, x, r: report(it, x, r) if it % 20 == 0 else None)
    with torch.no_grad():
        report(a.data_fit, x, op(x) - y)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--ensemble", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--updates", type=int, default=2)
    ap.add_argument("--max-inner", type=int, default=20)
    ap.add_argument("--inner-div", type=int, default=4, help="inner steps n_i = min(1 + (N - i) // DIV, max_inner)")
    ap.add_argument("--guidance", type=float, default=1.0)
    ap.add_argument("--normalize", default="trace")
    ap.add_argument("--kalman-reg", type=float, default=1.0)
    ap.add_argument("--thr-start", type=float, default=0.05)
    ap.add_argument("--localize", type=float, default=None, help="localisation radius in grid cells (extension)")
    ap.add_argument("--max-step", type=float, default=None,
                    help="trust region: cap each particle's update at MAX_STEP * sigma_i * sqrt(d) (extension)")
    ap.add_argument("--max-solver-steps", type=int, default=20_000,
                    help="NavierStokes2D max_steps: a diverging particle fails after minutes (as bench_enkg_ns.py)")
    ap.add_argument("--field", type=int, default=7, help="validation field (7, 8 or 9; 0-2 are the reported ones)")
    ap.add_argument("--prior", default="ns-vorticity", help="embedded prior name or a prior directory")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--noise", type=float, default=0.0)
    ap.add_argument("--tag")
    ap.add_argument("--summary", action="store_true")
    ap.add_argument("--data-fit", type=int, default=0, metavar="ITERS")
    a = ap.parse_args(argv)
    os.chdir(ROOT)
    if a.data_fit:
        torch.set_num_threads(1)
        return data_fit(a)
    if a.summary:
        restore_runs()
        rows = {p.stem: json.loads(p.read_text()) for p in sorted(WORK.glob("*.json"))}
        path = write_result("enkg_ns_validation", {
            "benchmark": "EnKG knob sweep on Navier-Stokes validation fields (held-out stream indices 7-9; each row "
                         "names its field)",
            "machine": machine(), "runs": rows,
            "reproduce": "python benchmarks/tune_enkg_ns.py --ensemble J --steps N --updates K --max-inner n "
                         "[--inner-div d] --guidance w --normalize NORM [--kalman-reg r] [--thr-start t] "
                         "[--localize R] [--prior P] --tag TAG",
            "prior_revisions": "rows without prior_revision used the stage-1 ns-vorticity weights (bbde8671d8d8); "
                               "rows tagged ft_ the stage-2 weights (b9a35012586c)"})
        for k, r in rows.items():
            print(f"{k:40s} relL2 mean {r['rel_l2_mean']:.3f} particles {r['rel_l2_particles']:.3f} "
                  f"misfit {r['data_misfit']:.3f} fwd {r['forward_evaluations']} {r['seconds']:.0f}s")
        print(f"wrote {path}")
        return
    if not a.tag:
        ap.error("--tag is required for a run")
    torch.set_num_threads(a.threads)
    WORK.mkdir(parents=True, exist_ok=True)
    r = run(a)
    write_json(WORK / f"{a.tag}.json", r)
    print({k: v for k, v in r.items() if k != "misfit_trajectory"})


if __name__ == "__main__":
    main()
