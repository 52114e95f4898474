"""STSL (second order, 50 steps) vs PSLD (first order, 50, 200 and 1000 steps) on the latent prior ``natural-latent``.

Tasks on 64x64 RGB images in [0, 1], Gaussian noise sigma_y = 0.01:
  deblur  : Gaussian blur, 15x15 kernel, sigma 2 px, circular padding;
  sr      : 4x super-resolution, antialiased bicubic;
  inpaint : random inpainting, 70 % of the pixels missing (mask seed 0, shared by the channels).

Methods: ``stsl`` (50 steps, N = 2, eta = 0.02: 250 NFE; capped Polyak step with the tuned ``rho`` and ``cap``),
``stsl_eta0`` (its first-order variant, 150 NFE), ``stsl_cap1`` / ``stsl_eta0_cap1`` (the sampler's default cap 1,
tuned ``rho``), ``stsl_residual`` / ``stsl_residual_eta0`` (the same with the residual (DPS) step
rule, the default before the Polyak step), ``psld50`` / ``psld200`` / ``psld1000`` (reference omega = 1,
gamma = 0.1, not tuned; 1000 steps is the paper's count, 4x STSL's NFE).
Metrics: PSNR / SSIM (data range 1) per image, NFE (batched network calls) and wall seconds per image; also the
autoencoder ceiling PSNR of ``D(E(x))``.

* ``--validate``: STSL's step size ``rho`` (both step rules; with the Polyak rule also its ``cap``, see ``CAPS``) is
  chosen on VALIDATION crops of the training photos (``natural`` training source, generator seed 2024), never on the
  held-out test photos; PSLD with 1000 steps runs there too, as a reference; results go to
  ``results/stsl_vs_psld_validation_<task>.json``.
* default: held-out photos (``invsolve.data.natural.heldout_photos``, full views of astronaut, coffee, chelsea,
  flower), results per task in ``results/stsl_vs_psld_<task>.json`` (resumable: finished methods are skipped
  unless their tuned knobs changed);
  ``--merge`` combines them into ``results/stsl_vs_psld.json``.

Reproduce (``--device cuda`` on a GPU; ``--prior DIR`` for another latent prior, ``--results DIR`` elsewhere)::

    python benchmarks/bench_stsl_vs_psld.py --validate --n-images 4
    python benchmarks/bench_stsl_vs_psld.py --task deblur sr inpaint --n-images 4
    python benchmarks/bench_stsl_vs_psld.py --seeds 1 2 3 --only stsl stsl_eta0    # the trace term over seeds
    python benchmarks/bench_stsl_vs_psld.py --only psld1000 --suffix _cpu          # PSLD-1000 on the CPU too
    python benchmarks/bench_stsl_vs_psld.py --merge
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, update_benchmarks_md, write_json  # noqa: E402

SIGMA_Y = 0.01
TASKS = ("deblur", "sr", "inpaint")
RHOS = {"polyak": (0.1, 0.3, 1.0),  # STSL step sizes tried on validation crops, per step rule
        "residual": (0.05, 0.1, 0.15, 0.25, 0.5)}
CAPS = (4.0, 16.0)  # Polyak step caps (x PSLD's step) tried with rho 0.3 and 1 besides the default cap 1


def rule_of(name: str) -> str:
    """The STSL step rule of a validation run's name (``stsl_polyak_rho<r>`` / ``stsl_rho<r>``), else the name."""
    return "polyak" if name.startswith("stsl_polyak_") else "residual" if name.startswith("stsl_rho") else name


def tuned(task: str, results: Path = RESULTS, rule: str = "polyak", cap=None) -> dict:
    """STSL step knobs (``rho``, and ``cap`` for the Polyak rule) of step rule ``rule`` with the best mean validation
    PSNR (``--validate`` results), among runs with this ``cap`` if given; the sampler's defaults if none are there
    yet. Runs from before the ``cap`` knob existed had cap 1."""
    p = results / f"stsl_vs_psld_validation_{task}.json"
    runs = json.loads(p.read_text())["methods"] if p.exists() else {}
    runs = [v for k, v in runs.items() if rule_of(k) == rule and (cap is None or v["knobs"].get("cap", 1.0) == cap)]
    if rule == "residual":
        return {"rho": float(max(runs, key=mean_psnr)["knobs"]["rho"]) if runs else 0.5}
    if not runs:
        return {"rho": 1.0, "cap": 1.0 if cap is None else cap}
    best = max(runs, key=mean_psnr)["knobs"]
    return {"rho": float(best["rho"]), "cap": float(best.get("cap", 1.0))}


def mean_psnr(m: dict) -> float:
    return sum(m["psnr"]) / len(m["psnr"])


def operator(task: str):
    from invsolve.operators import Blur, Inpainting, SuperResolution, gaussian_kernel, random_mask

    if task == "deblur":
        return Blur(gaussian_kernel(15, 2.0), padding="circular", image_size=64)
    if task == "sr":
        return SuperResolution(4, mode="bicubic", image_size=64)
    if task == "inpaint":
        return Inpainting(random_mask((64, 64), 0.7, seed=0))
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")


def images(validate: bool, n: int):
    if validate:
        from invsolve.data.base import build_train_source

        src = build_train_source(kind="natural", image_size=64)
        x = (src.sample(n, torch.Generator().manual_seed(2024), "cpu") + 1) / 2
        return x, [f"validation/{i}" for i in range(n)]
    from invsolve.data.natural import heldout_photos

    x, names = heldout_photos(64, n_crops_per_photo=1)
    return x[:n], names[:n]


def methods(task: str, validate: bool, results: Path = RESULTS):
    """name -> (sampler, knobs)."""
    if validate:  # "stsl_rho<r>": the residual (DPS) rule, measured before the Polyak step became the default
        return {**{f"stsl_polyak_rho{r}": ("stsl", dict(steps=50, rho=r, cap=1.0)) for r in RHOS["polyak"]},
                **{f"stsl_polyak_rho{r}_cap{c:g}": ("stsl", dict(steps=50, rho=r, cap=c))
                   for r in (0.3, 1.0) for c in CAPS},
                **{f"stsl_rho{r}": ("stsl", dict(steps=50, rho=r, step="residual")) for r in RHOS["residual"]},
                "psld1000": ("psld", dict(steps=1000))}  # reference: how much of the held-out gap is the prior
    best, cap1, res = tuned(task, results), tuned(task, results, cap=1.0), tuned(task, results, "residual")
    return {"stsl": ("stsl", dict(steps=50, **best)),
            "stsl_eta0": ("stsl", dict(steps=50, **best, eta=0.0)),
            "stsl_cap1": ("stsl", dict(steps=50, **cap1)),  # the default before the cap was tuned
            "stsl_eta0_cap1": ("stsl", dict(steps=50, **cap1, eta=0.0)),
            "stsl_residual": ("stsl", dict(steps=50, **res, step="residual")),
            "stsl_residual_eta0": ("stsl", dict(steps=50, **res, step="residual", eta=0.0)),
            "psld50": ("psld", dict(steps=50)),
            "psld200": ("psld", dict(steps=200)),
            "psld1000": ("psld", dict(steps=1000))}  # the reference step count (4x STSL's NFE)


def run_task(task: str, validate: bool, n: int, only=None, prior_src: str = "natural-latent", device: str = "cpu",
             results: Path = RESULTS, suffix: str = "", seed: int = 0):
    import invsolve as inv
    from invsolve.eval.metrics import psnr, ssim

    prior = inv.load_prior(prior_src, device=device)
    x, names = images(validate, n)
    op = operator(task)
    g = torch.Generator().manual_seed(7)
    ax = op(x)
    y = ax + SIGMA_Y * torch.randn(ax.shape, generator=g)  # measured on CPU: the same y on every device
    name = f"stsl_vs_psld_{'validation_' if validate else ''}{task}"
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"{name}.json"
    rec = json.loads(path.read_text()) if path.exists() else {
        "task": task, "operator": repr(op), "sigma_y": SIGMA_Y, "images": names,
        "image_set": "validation crops of training photos (seed 2024)" if validate else "held-out photos",
        "prior": prior_src, "prior_card": prior.card.get("training", {}).get("autoencoder"), "methods": {}}
    with torch.no_grad():
        ceiling = prior.decode(prior.encode(x.to(device))).cpu().clamp(0, 1)
    if "autoencoder_ceiling" not in rec or len(rec["images"]) == n:
        rec["autoencoder_ceiling"] = {"psnr": psnr(ceiling, x, 1.0), "ssim": ssim(ceiling, x, 1.0)}
    for base, (sampler, knobs) in methods(task, validate, results).items():
        mname = base + suffix + (f"_seed{seed}" if seed else "")
        if (only and base not in only) or (mname in rec["methods"] and same_knobs(rec["methods"][mname], knobs)):
            continue
        t0 = time.time()
        res = inv.solve(y, op, prior=prior, sampler=sampler, seed=seed, device=device, **knobs)
        xr = res.x.cpu().clamp(0, 1)
        rec["methods"][mname] = {
            "sampler": sampler, "knobs": res.config["knobs"], "psnr": psnr(xr, x, 1.0), "ssim": ssim(xr, x, 1.0),
            "nfe": res.nfe, "seconds_per_image": res.seconds / x.shape[0], "wall_seconds": time.time() - t0,
            "batch": x.shape[0], "images": names, "machine": machine()}
        m = rec["methods"][mname]
        if path.exists():  # another process may have finished other methods of this task meanwhile
            rec["methods"] = {**json.loads(path.read_text())["methods"], **rec["methods"]}
        print(f"{task} {mname}: PSNR {sum(m['psnr']) / n:.2f} SSIM {sum(m['ssim']) / n:.3f} NFE {m['nfe']} "
              f"{m['seconds_per_image']:.0f} s/image", flush=True)
        write_json(path, rec, indent=2)
    return rec


def same_knobs(run: dict, knobs: dict) -> bool:
    """Whether a stored run used ``knobs`` (a finished method is re-run when its tuned knobs changed)."""
    # runs from before the cap knob had cap 1; before the step knob, normalize=True was the residual rule
    have = {"cap": 1.0, **({"step": "residual"} if run["knobs"].get("normalize") else {}), **run["knobs"]}
    return all(have.get(k) == v for k, v in knobs.items())


def merge(results: Path = RESULTS):
    out = {"tasks": {}, "sigma_y": SIGMA_Y, "prior": "natural-latent", "summary": {}, "validation": {}}
    for task in TASKS:
        v = results / f"stsl_vs_psld_validation_{task}.json"
        if v.exists():
            runs = json.loads(v.read_text())["methods"]
            out["validation"][task] = {k: {"rho": m["knobs"].get("rho"), "cap": m["knobs"].get("cap", 1.0),
                                           "psnr_mean": sum(m["psnr"]) / len(m["psnr"]),
                                           "rule": rule_of(k),
                                           "n_images": len(m["psnr"])} for k, m in runs.items()}
        p = results / f"stsl_vs_psld_{task}.json"
        if not p.exists():
            continue
        rec = json.loads(p.read_text())
        out["tasks"][task] = rec
        out["summary"][task] = {k: {"n_images": len(v["psnr"]), "psnr_mean": sum(v["psnr"]) / len(v["psnr"]),
                                    "ssim_mean": sum(v["ssim"]) / len(v["ssim"]), "nfe": v["nfe"],
                                    "seconds_per_image": v["seconds_per_image"],
                                    "device": v.get("machine", {}).get("device", "?")}
                                for k, v in rec["methods"].items()}
        c = rec["autoencoder_ceiling"]
        out["summary"][task]["autoencoder_ceiling"] = {"psnr_mean": sum(c["psnr"]) / len(c["psnr"]),
                                                       "ssim_mean": sum(c["ssim"]) / len(c["ssim"])}
    print(json.dumps(out["summary"], indent=1))
    path = write_json(results / "stsl_vs_psld.json", out, indent=2)
    update_benchmarks_md("stsl-vs-psld", markdown(out))
    return path


LABELS = {"stsl": "STSL, 50 steps (eta 0.02, N = 2, Polyak step, rho and cap tuned)",
          "stsl_eta0": "STSL eta = 0 (first order), 50 steps, Polyak step, rho and cap tuned",
          "stsl_cap1": "STSL, 50 steps, Polyak step with the default cap 1 (rho tuned)",
          "stsl_eta0_cap1": "STSL eta = 0, 50 steps, Polyak step with cap 1",
          "stsl_residual": "STSL, 50 steps, residual (DPS) step rule",
          "stsl_residual_eta0": "STSL eta = 0, 50 steps, residual step rule",
          "psld50": "PSLD, 50 steps", "psld200": "PSLD, 200 steps", "psld1000": "PSLD, 1000 steps",
          "psld1000_cpu": "PSLD, 1000 steps (on the CPU, like the tuned STSL rows)"}


def knob_key(run: dict, rule: str) -> tuple:
    """(rho, cap) of a merged validation run (cap 1 for the residual rule, which has none)."""
    return run["rho"], (run.get("cap", 1.0) if rule == "polyak" else 1.0)


def paired_over_seeds(runs: dict, a: str, b: str, what: str) -> list:
    """BENCHMARKS.md lines comparing methods ``a`` and ``b`` paired per image and seed (seed 0 and the ``_seed<s>``
    runs of ``--seeds`` that both have); none if only one seed is there."""
    import numpy as np
    from scipy import stats

    seeds = [0] + sorted(int(k.rsplit("_seed", 1)[1]) for k in runs if k.startswith(f"{a}_seed")
                         and f"{b}_seed{k.rsplit('_seed', 1)[1]}" in runs)
    if len(seeds) < 2 or a not in runs or b not in runs:
        return []
    sfx = ["" if s == 0 else f"_seed{s}" for s in seeds]
    pa = np.array([runs[a + x]["psnr"] for x in sfx])
    pb = np.array([runs[b + x]["psnr"] for x in sfx])
    d = (pa - pb).ravel()
    per_image = " / ".join(f"{v:+.2f}" for v in (pa - pb).mean(0))
    return [f"{what} over seeds {', '.join(map(str, seeds))} (paired per image and seed): mean {pa.mean():.2f} "
            f"against {pb.mean():.2f} dB, difference {d.mean():+.2f} ± {d.std(ddof=1) / np.sqrt(d.size):.2f} dB "
            f"(standard error), higher in {(d > 0).sum()} of {d.size} pairs, paired t-test p = "
            f"{stats.ttest_1samp(d, 0).pvalue:.2g}; per image {per_image} dB.", ""]


def markdown(out: dict) -> str:
    """The BENCHMARKS.md section: one table per task, every method measured (no missing-run placeholders)."""
    lines = ["## STSL vs PSLD on the latent prior `natural-latent` (issue #6)", "",
             f"Held-out photos (full views of astronaut, coffee, chelsea, flower; never trained on), 64x64 RGB in "
             f"[0, 1], Gaussian noise sigma_y = {out['sigma_y']}; seed 0 in the tables (the paired comparisons under "
             "them add seeds 1-3, `--seeds`), one batch of all images per method. NFE = "
             "batched network calls per image (STSL: 2 per inner iteration + 1 per step). STSL's rho and cap were "
             "chosen on validation crops of the training photos (`--validate`, tables below); PSLD runs the "
             "reference omega = 1, gamma = 0.1 (not tuned). The autoencoder ceiling is the PSNR of D(E(x)): no "
             "latent sampler can exceed it. Seconds per image are for the device in the row (batch of 4): the tuned "
             "STSL rows ran on the 2-core CPU (no GPU in that session), the others on an H100, and PSLD-1000 on "
             "both. Floating-point rounding differs between devices and grows along the 100 gradient steps: "
             "the cap-1 STSL runs gave 18.38 / 16.75 / 20.92 dB on the CPU against the H100's 18.37 / 16.89 / "
             "20.96 (per image within 0.6 dB, up to 1.3 dB for the eta = 0 variant), and PSLD's 1000 steps moved "
             "its deblurring mean by 1.2 dB between the two: compare methods on the same device.", "",
             "Reproduce: `python benchmarks/bench_stsl_vs_psld.py --validate --n-images 4`, then "
             "`python benchmarks/bench_stsl_vs_psld.py --task deblur sr inpaint --n-images 4 --device cuda` (or "
             "`--device cpu`; `--only psld1000 --suffix _cpu` for the CPU reference rows), then `--merge`.", ""]
    for task, rec in out["tasks"].items():
        summ = out["summary"][task]
        c = summ["autoencoder_ceiling"]
        lines += [f"### {task}: {rec['operator']}", "",
                  f"autoencoder ceiling {c['psnr_mean']:.2f} dB / SSIM {c['ssim_mean']:.3f}", "",
                  "| method | PSNR (dB) | per image | SSIM | NFE | s / image | device |",
                  "|---|---|---|---|---|---|---|"]
        for k, v in summ.items():
            if k == "autoencoder_ceiling" or "_seed" in k:
                continue
            per = " / ".join(f"{p:.1f}" for p in rec["methods"][k]["psnr"])
            lines.append(f"| {LABELS.get(k, k)} | {v['psnr_mean']:.2f} | {per} | {v['ssim_mean']:.3f} | {v['nfe']} | "
                         f"{v['seconds_per_image']:.1f} | {v['device']} |")
        lines.append("")
        lines += paired_over_seeds(rec["methods"], "stsl", "stsl_eta0", "Trace term: tuned STSL against its eta = 0 "
                                   "variant")
        lines += paired_over_seeds(rec["methods"], "stsl", "psld1000_cpu", "Tuned STSL (250 NFE) against PSLD-1000, "
                                   "both on the CPU,")
    for rule in ("polyak", "residual"):
        val = {t: [r for r in v.values() if r["rule"] == rule] for t, v in out.get("validation", {}).items()}
        keys = sorted({knob_key(r, rule) for v in val.values() for r in v})
        if not keys:
            continue
        lines += [f"### STSL step size on validation crops, {rule} step rule (mean PSNR, dB)", "",
                  "| task | " + " | ".join(f"rho = {r:g}" + (f", cap {c:g}" if rule == "polyak" else "")
                                          for r, c in keys) + " | images |",
                  "|---|" + "---|" * (len(keys) + 1)]
        for task, v in val.items():
            by = {knob_key(r, rule): r["psnr_mean"] for r in v}
            best = max(by, key=by.get)
            cells = [("**%.2f**" if k == best else "%.2f") % by[k] if k in by else "–" for k in keys]
            lines.append(f"| {task} | " + " | ".join(cells) + f" | {v[0]['n_images']} |")
        lines.append("")
    ref = {t: [r for r in v.values() if r["rule"] == "psld1000"] for t, v in out.get("validation", {}).items()}
    if any(ref.values()):
        lines += ["PSLD with 1000 steps on the same validation crops (reference, not tuned): " + ", ".join(
            f"{t} {r[0]['psnr_mean']:.2f} dB" for t, r in ref.items() if r) + ".", ""]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=TASKS, nargs="*", default=list(TASKS))
    ap.add_argument("--validate", action="store_true", help="tune step sizes on validation crops")
    ap.add_argument("--n-images", type=int, default=None, help="default: 2 (validate) / 4 (held-out)")
    ap.add_argument("--only", nargs="*", default=None, help="run only these method names")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--merge", action="store_true", help="combine per-task results into stsl_vs_psld.json")
    ap.add_argument("--prior", default="natural-latent", help="embedded name or directory of the latent prior")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--results", type=Path, default=RESULTS, help=f"results directory (default {RESULTS})")
    ap.add_argument("--seeds", type=int, nargs="*", default=[0], help="sampling seeds (runs of seed s > 0 are stored "
                                                                        "as <method>_seed<s>)")
    ap.add_argument("--suffix", default="", help="store the runs under the method name + SUFFIX (e.g. '_cpu' for "
                                                 "the same method on another device)")
    args = ap.parse_args(argv)
    if args.merge:
        print(merge(args.results))
        return
    torch.set_num_threads(args.threads)
    n = args.n_images or (2 if args.validate else 4)
    for task in args.task:
        for seed in args.seeds:
            run_task(task, args.validate, n, args.only, args.prior, args.device, args.results, args.suffix, seed)


if __name__ == "__main__":
    main()
