"""Issue #5 benchmark: Navier–Stokes initial-state inversion on held-out fields — EnKG vs DPS-GSG (zero-order),
DPS (autograd through the solver) and the unguided prior, at matched forward-model budgets.

Problem (ALGORITHMS.md §3.4, at 64x64): held-out initial vorticity fields (the 'test' seed stream of
``invsolve.data.ns_bank``, generated exactly like the prior's training bank, never trained on); ``y`` = vorticity at
T = 1 on every 2nd grid point (32x32 = 1024 values) + white noise ``sigma`` (raw units: 0 and 1).
Metric: relative L2 in raw units, of the ensemble mean and averaged over particles / samples (EnKG protocol).

Methods (same prior, measurements and seeds):
* ``unguided``: the EnKG sampler with ``updates=0`` — J prior samples through the same PF-ODE (their mean is the
  Monte-Carlo prior mean; the exact prior mean, 0 by symmetry, has relative L2 1).
* ``enkg``: J particles, N outer steps, K updates per guided step, inner steps capped at ``max_inner``.
* ``dps-gsg``: DPS with a central Gaussian-smoothing gradient (Q queries + 1 per step), steps chosen so that its
  forward evaluations equal EnKG's (``J K guided``).
* ``dps``: DPS with autograd through the differentiable solver (1 forward + 1 VJP of the solver per step).
* ``lsq``: no prior at all — Adam (lr 0.02, ``--lsq-iters`` steps from 0) on the data misfit through the
  differentiable solver: how much of the field the 32x32 observations alone determine (a reference, not a method
  for black boxes).

Per-item results go to ``--work`` (one JSON per method/field/noise; a killed run resumes); the summary to
``benchmarks/results/enkg_ns.json``. Items of the committed results that ``--work`` lacks (a fresh checkout) are
restored first, so the summary keeps every earlier row; ``--no-restore`` re-measures them instead.

Run (CPU, in the background):
    nice -n 10 python benchmarks/bench_enkg_ns.py --fields 0 1 2 --noise 0 1

Defaults are the paper's unlocalised update as chosen on the validation field (benchmarks/tune_enkg_ns.py): J = 64,
N = 20, K = 2, trace weighting w = 1, full inner steps. The localised setting of ``configs/reconstruct/ns_enkg.yaml``
is ``--guidance 32 --localize 24``.
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
from _common import RESULTS, ROOT, machine, prior_revision, update_benchmarks_md, write_json, write_result  # noqa: E402,E501

import invsolve as inv  # noqa: E402
from invsolve.errors import InvsolveError  # noqa: E402
from invsolve.eval.metrics import relative_l2  # noqa: E402
from invsolve.samplers.enkg import budget  # noqa: E402
from invsolve.tasks.ns import heldout_truth  # noqa: E402

# Weights of the first embedded ns-vorticity (4000 CPU steps on 256 fields); items and results written before
# revisions were recorded were all computed with it.
LEGACY_REVISION = "bbde8671d8d8"
COST_KEYS = ("forward_evaluations", "forward_calls", "network_evaluations", "nfe_per_particle", "vjp_evaluations")


def grf_prior(bank_path: str):
    """Analytic stationary Gaussian prior with the training bank's power spectrum (development / sanity baseline)."""
    from invsolve.priors.ve import DenoiserPrior, geometric_sigmas

    bank = torch.from_numpy(np.load(bank_path)) / 10.0
    S = (torch.fft.rfft2(bank[:, 0]).abs() ** 2).mean(0)  # E|X_k|^2, unnormalised rfft2

    class GRF(DenoiserPrior):
        def _denoise_net(self, x, sigma):
            s2 = (sigma.to(x.dtype) ** 2).reshape(-1, 1, 1) * x.shape[-1] * x.shape[-2]
            X = torch.fft.rfft2(x[:, 0])
            return torch.fft.irfft2(S / (S + s2) * X, s=x.shape[-2:])[:, None]

    return GRF(geometric_sigmas(0.002, 80, 1000), (64, 64), 1, data_range=(-1, 1), name="grf")


def run_one(method, prior, op, y, x_true, seed, a) -> dict:
    t0 = time.time()
    if method in ("unguided", "enkg"):
        kw = dict(ensemble_size=a.ensemble, steps=a.steps, updates=0 if method == "unguided" else a.updates,
                  guidance=a.guidance, max_inner=a.max_inner, inner_div=a.inner_div, normalize=a.normalize,
                  batch=a.batch, localize=a.localize, max_step=a.max_step)
        res = inv.solve(y, op, prior=prior, sampler="enkg", seed=seed, **kw)
        parts = res.info["particles"][0]
        info = {k: res.info[k] for k in ("nfe_per_particle", "network_evaluations", "forward_calls",
                                         "forward_evaluations", "guided_steps")}
        info["max_step_ratio"] = float(res.info["step_ratio"].max()) if res.info["step_ratio"].numel() else None
        info["capped_updates"] = int(res.info["capped"].sum())
        info["misfit_first_last"] = [float(res.info["misfit"][0, 0]), float(res.info["misfit"][-1, 0])] \
            if res.info["misfit"].numel() else None
    elif method == "dps-gsg":
        res = inv.solve(y, op, prior=prior, sampler="dps-gsg", seed=seed, steps=a.gsg_steps, queries=a.gsg_queries,
                        scale=a.gsg_scale, mu=a.gsg_mu, clip=a.clip, jacobian=a.gsg_jacobian)
        parts = res.x
        info = {"network_evaluations": res.nfe, "forward_evaluations": res.info["forward_evaluations"],
                "forward_calls": res.info["forward_calls"], "steps": a.gsg_steps, "queries": a.gsg_queries}
    elif method == "dps":
        res = inv.solve(y, op, prior=prior, sampler="dps", seed=seed, steps=a.dps_steps, scale=a.dps_scale,
                        clip=a.clip)
        parts = res.x
        info = {"network_evaluations": res.nfe, "forward_evaluations": a.dps_steps, "vjp_evaluations": a.dps_steps,
                "forward_calls": a.dps_steps, "steps": a.dps_steps}
    elif method == "lsq":
        x = data_fit(op, y, a.lsq_iters)
        parts = x
        info = {"network_evaluations": 0, "forward_evaluations": a.lsq_iters, "vjp_evaluations": a.lsq_iters,
                "forward_calls": a.lsq_iters, "steps": a.lsq_iters}
    else:
        raise ValueError(method)
    x = x if method == "lsq" else res.x.cpu()
    with torch.no_grad():
        fit = float((op(x) - y).norm() / y.norm())
    return dict(info, rel_l2_mean=relative_l2(x, x_true)[0],
                rel_l2_particles=float(np.mean(relative_l2(parts, x_true.expand_as(parts)))),
                data_misfit=fit, seconds=time.time() - t0, seed=seed)


def data_fit(op, y: torch.Tensor, iters: int, lr: float = 0.02, callback=None) -> torch.Tensor:
    """No prior: Adam from 0 on ``1/2 ||G(x) - y||^2`` (prior units) with autograd through the solver, ``iters`` steps.
    What the observations alone pin down (a reference, not a competitor: it needs gradients and ignores the prior).
    ``callback(it, x, residual)`` (detached) is called before each step."""
    x = torch.zeros((1, 1, op.image_size, op.image_size), requires_grad=True)
    opt = torch.optim.Adam([x], lr=lr)
    for it in range(iters):
        opt.zero_grad()
        r = op(x) - y
        if callback is not None:
            callback(it, x.detach(), r.detach())
        (0.5 * r.square().sum()).backward()
        opt.step()
    return x.detach()


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--fields", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--noise", type=float, nargs="+", default=[0.0, 1.0])
    ap.add_argument("--methods", nargs="+", default=["unguided", "enkg", "dps", "dps-gsg"])
    ap.add_argument("--prior", default="ns-vorticity")
    ap.add_argument("--ensemble", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--updates", type=int, default=2)
    ap.add_argument("--guidance", type=float, default=1.0)
    ap.add_argument("--max-inner", type=int, default=20)
    ap.add_argument("--inner-div", type=int, default=4,
                    help="EnKG inner steps n_i = min(1 + (N - i) // DIV, max_inner)")
    ap.add_argument("--normalize", default="trace")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--localize", type=float, default=None,
                    help="EnKG covariance-localisation radius in grid cells (an extension; default: none)")
    ap.add_argument("--max-step", type=float, default=None,
                    help="EnKG trust region: cap each particle's update at MAX_STEP * sigma_i * sqrt(d) (extension)")
    ap.add_argument("--gsg-queries", type=int, default=14)
    ap.add_argument("--gsg-scale", type=float, default=1.0)
    ap.add_argument("--gsg-mu", type=float, default=0.01)
    ap.add_argument("--gsg-jacobian", default="network")
    ap.add_argument("--dps-steps", type=int, default=100)
    ap.add_argument("--dps-scale", type=float, default=1.0)
    ap.add_argument("--clip", type=float, default=2.0)
    ap.add_argument("--lsq-iters", type=int, default=160, help="Adam steps of the no-prior data fit (method lsq)")
    ap.add_argument("--max-solver-steps", type=int, default=20_000,
                    help="time-step bound of one solve (in-range fields need 300-1000): a diverging iterate "
                         "fails the item quickly instead of keeping the solver busy for hours")
    ap.add_argument("--test-cache", default="runs/ns_bank_test.npy")
    ap.add_argument("--work", default="runs/enkg_ns")
    ap.add_argument("--out", default="enkg_ns")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-restore", action="store_true",
                    help="do not re-create items of the committed results missing from --work (they are re-run)")
    ap.add_argument("--remark", default="", help="a sentence for BENCHMARKS.md (e.g. what is still missing)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    os.chdir(ROOT)

    cost = budget(a.ensemble, steps=a.steps, updates=a.updates, max_inner=a.max_inner, inner_div=a.inner_div)
    # DPS-GSG at EnKG's forward budget: (1 + 2 (Q // 2)) evaluations per step (central estimator)
    per_step = 1 + 2 * (a.gsg_queries // 2)
    a.gsg_steps = max(1, cost["forward_evaluations"] // per_step)
    prior = grf_prior("runs/ns_bank256.npy") if a.prior == "grf" else inv.load_prior(a.prior)
    w, names = heldout_truth(a.fields, 64, 64, cache=a.test_cache)
    op = inv.operators.NavierStokes2D(64, max_steps=a.max_solver_steps)
    a.prior_revision = prior_revision(a.prior)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    restored = 0 if a.no_restore else sum(restore_items(work, out, a.prior_revision)
                                          for out in dict.fromkeys(("enkg_ns", a.out)))
    if restored:
        print(f"restored {restored} earlier items from the committed results into {work} (--no-restore: re-measure)")
    tag = f"{a.prior}_J{a.ensemble}_N{a.steps}_K{a.updates}_i{a.max_inner}_w{a.guidance}_{a.normalize}"
    if a.localize is not None:
        tag += f"_loc{a.localize:g}"
    if a.inner_div != 4:
        tag += f"_div{a.inner_div}"
    if a.max_step is not None:
        tag += f"_cap{a.max_step:g}"
    for sigma in a.noise:
        for f, wf in zip(a.fields, w):
            x_true = wf[None] / op.scale
            with torch.no_grad():
                y = op(x_true)
            if sigma > 0:
                y = y + sigma * torch.randn(y.shape, generator=torch.Generator().manual_seed(1000 + f))
            for m in a.methods:
                mtag = {"unguided": f"unguided_{a.prior}_J{a.ensemble}_N{a.steps}", "enkg": f"enkg_{tag}",
                        "dps-gsg": f"gsg_{a.prior}_S{a.gsg_steps}_Q{a.gsg_queries}_s{a.gsg_scale}_{a.gsg_jacobian}",
                        "dps": f"dps_{a.prior}_S{a.dps_steps}_s{a.dps_scale}",
                        "lsq": f"lsq_noprior_adam{a.lsq_iters}"}[m]
                path = work / f"{mtag}_field{f}_sigma{sigma:g}{_suffix(a.prior_revision)}.json"
                if path.exists():
                    continue
                print(f"[{time.strftime('%H:%M:%S')}] {m} field {f} sigma {sigma} ...", flush=True)
                try:
                    r = run_one(m, prior, op, y, x_true, seed=f, a=a)
                except InvsolveError as e:  # e.g. the solver blew up on a DPS iterate: record it
                    r = {"failed": f"{type(e).__name__}: {str(e).splitlines()[0]}"}
                r.update(method=m, field=f, sigma=sigma, tag=mtag, prior_revision=a.prior_revision)
                write_json(path, r)
                print("   ", {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}, flush=True)
    summarise(a, cost, work)


def _revision(item: dict) -> str:
    return item.get("prior_revision", LEGACY_REVISION)


def _suffix(revision: str) -> str:
    """Item-file suffix: items of other weights than the legacy ones get their own files (none is overwritten)."""
    return "" if revision == LEGACY_REVISION else f"_rev{revision}"


def restore_items(work: Path, out: str, revision: str = LEGACY_REVISION) -> int:
    """Re-create the per-item JSONs of ``benchmarks/results/<out>.json`` that ``work`` lacks (a fresh checkout has no
    ``runs/``), so that the summary keeps every earlier row instead of overwriting the committed file with the new
    items only. Per-field values come back at the 4 decimals the summary stores them with; each restored item says
    where it came from. Existing items are never touched, and results of other prior weights (``revision``) are not
    restored. Returns how many were restored."""
    path = RESULTS / f"{out}.json"
    if not path.exists():
        return 0
    committed = json.loads(path.read_text())
    if committed.get("settings", {}).get("prior_revision", LEGACY_REVISION) != revision:
        return 0
    work.mkdir(parents=True, exist_ok=True)
    n = 0
    for key, s in committed.get("results", {}).items():
        tag = key.split(" sigma=")[0]
        for i, f in enumerate(s["fields"]):
            target = work / f"{tag}_field{f}_sigma{s['sigma']:g}{_suffix(revision)}.json"
            if target.exists():
                continue
            r = {m: s[m]["per_field"][i] for m in ("rel_l2_mean", "rel_l2_particles", "data_misfit", "seconds")}
            r.update({m: s[m] for m in COST_KEYS if m in s})
            r.update(method=s["method"], field=f, sigma=s["sigma"], tag=tag, prior_revision=revision,
                     restored_from=f"{path.name} {key!r}")
            write_json(target, r)
            n += 1
    return n


def summarise(a, cost, work: Path):
    rows = [json.loads(p.read_text()) for p in sorted(work.glob("*.json"))]
    table = {}
    for r in rows:
        if r["field"] not in a.fields or r.get("failed") or _revision(r) != a.prior_revision:
            continue
        table.setdefault(f"{r['tag']} sigma={r['sigma']:g}", []).append(r)
    summary = {}
    for k, rs in sorted(table.items()):
        s = {"n_fields": len(rs), "fields": [r["field"] for r in rs], "method": rs[0]["method"],
             "sigma": rs[0]["sigma"]}
        for m in ("rel_l2_mean", "rel_l2_particles", "data_misfit", "seconds"):
            v = np.array([r[m] for r in rs])
            s[m] = {"mean": float(v.mean()), "std": float(v.std()), "per_field": [round(float(t), 4) for t in v]}
        for m in COST_KEYS:
            if m in rs[0]:
                s[m] = rs[0][m]
        summary[k] = s
    failed = [f"{r['tag']} field {r['field']} sigma {r['sigma']}: {r['failed']}" for r in rows
              if r.get("failed") and _revision(r) == a.prior_revision]
    payload = {"benchmark": "EnKG Navier-Stokes 64x64 held-out", "settings": vars(a), "enkg_budget": cost,
               "machine": machine(), "results": summary, "failed": failed,
               "reproduce": "nice -n 10 python benchmarks/bench_enkg_ns.py " + " ".join(_argv_without_remark())}
    path = write_result(a.out, payload)
    print(f"wrote {path}")
    if a.out == "enkg_ns":
        update_benchmarks_md("enkg-ns", markdown(payload))
    for k, s in summary.items():
        print(f"{k:70s} relL2 mean {s['rel_l2_mean']['mean']:.3f}±{s['rel_l2_mean']['std']:.3f}  particles "
              f"{s['rel_l2_particles']['mean']:.3f}  misfit {s['data_misfit']['mean']:.3f}  "
              f"fwd {s.get('forward_evaluations')}  {s['seconds']['mean']:.0f}s")


def _argv_without_remark():
    out, skip = [], False
    for t in sys.argv[1:]:
        if skip:
            skip = False
        elif t == "--remark":
            skip = True
        elif not t.startswith("--remark="):
            out.append(t)
    return out


def markdown(payload: dict) -> str:
    st, c = payload["settings"], payload["enkg_budget"]
    present = {s["method"] for s in payload["results"].values()}
    others = [m for m in ("dps-gsg", "dps", "unguided") if m in present]
    title = "EnKG" + "".join(f" vs {m.upper() if m != 'unguided' else 'unguided'}" for m in others)
    baselines = ("DPS-GSG at the same number of forward solves. " if "dps-gsg" in present else "") + \
        ("DPS with autograd through the solver. " if "dps" in present else "") + \
        ("lsq: no prior, Adam on the data misfit through the differentiable solver (what the observations alone "
         "determine; a reference, not a black-box method). " if "lsq" in present else "")
    lines = [
        f"## Navier-Stokes initial-state inversion (64x64, held-out fields): {title}",
        "",
        f"Observations: vorticity at T = 1 on every 2nd grid point (32x32). Prior `{st['prior']}` (weights "
        f"{st.get('prior_revision', LEGACY_REVISION)}). EnKG (as in "
        "the reproduce command): J = "
        f"{st['ensemble']} particles, N = {st['steps']}, K = {st['updates']}, w = {st['guidance']} ({st['normalize']}),"
        + (f" localisation radius {st['localize']:g} cells," if st.get("localize") is not None else "")
        + (f" trust region max_step = {st['max_step']:g} (updates <= max_step sigma_i sqrt(d))," if st.get("max_step")
           else "") +
        f" inner steps min(1 + (N - i) // {st.get('inner_div', 4)}, {st['max_inner']}): "
        f"{c['nfe_per_particle']} network calls per particle, "
        f"{c['forward_evaluations']} forward solves in {c['forward_calls']} batched calls per field. {baselines}"
        "EnKG rows name their settings: J particles, N outer steps, K updates, inner-step cap i, step w, weighting, "
        "loc = covariance-localisation radius in grid cells (our extension), div = inner-step divisor (4 if absent), "
        "cap = trust region max_step (our extension; none if absent). "
        "Relative L2 (raw units) of the ensemble mean / averaged over particles; mean ± std over fields. "
        f"{payload['machine']['device']}.",
        "",
        "| method | noise sigma | fields | rel. L2 (mean) | rel. L2 (per particle) | data misfit | forward solves |"
        " seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for k, s in payload["results"].items():
        lines.append(f"| {k.split(' sigma=')[0]} | {s['sigma']:g} | {s['n_fields']} | "
                     f"{s['rel_l2_mean']['mean']:.3f} ± {s['rel_l2_mean']['std']:.3f} | "
                     f"{s['rel_l2_particles']['mean']:.3f} | {s['data_misfit']['mean']:.3f} | "
                     f"{s.get('forward_evaluations', '')} | {s['seconds']['mean']:.0f} |")
    if payload.get("failed"):
        lines += ["", "Failed items (not in the rows above):", ""] + [f"- {f}" for f in payload["failed"]]
    if payload["settings"].get("remark"):
        lines += ["", payload["settings"]["remark"]]
    lines += ["", f"Reproduce: `{payload['reproduce']}`"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
