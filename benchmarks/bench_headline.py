"""Issue #4 headline benchmark: DDS vs DPS (and every baseline sampler) on multi-coil MRI 4x and 16-view CT.

Test images (never trained on, never tuned on), the same prior, seeds and measurements for every method:
* MRI: ``--n-images`` held-out MNI152 slab slices (:func:`invsolve.data.mri.heldout_slices`, complex, smooth
  phase), 8 simulated birdcage coils, uniform-1D 4x mask with 8 % ACS (mask seed 0), noiseless; prior ``mri-brain``.
* CT: parallel-beam, 16 views uniform over [0, pi), noiseless sinograms; prior ``ct-phantom``. Only 3 real CT
  slices exist on disk (:func:`invsolve.data.ct.heldout_ct_slices`: the pydicom test files; pydicom's other CT
  files are 16x16 thumbnails or have no pixel data), so the batch is those 3 real slices followed by
  ``n - 3`` procedural phantoms drawn with a dedicated test seed (``sample_phantoms(n - 3, 64,
  Generator().manual_seed(4242))``). Phantoms come from the prior's training distribution (in-distribution), so
  metrics are reported over all images and over the 3 real slices alone.

Validation (tuning) images, disjoint from the test images: MRI guard slices z = 94, 113 of the MNI volume (excluded
from training and from the test slab; phase seed 99), CT procedural phantoms ``sample_phantoms(k, 64,
Generator().manual_seed(1234))`` (the issue-#3 validation set). DPS's ``scale`` is chosen on them from
``--dps-grid`` at the test step count (``--tune-steps``, default ``--dps-steps``), maximising mean PSNR.

Every other method runs with its registered defaults except where stated in ``METHODS`` (DDS: the data-consistency
setting with the best mean PSNR on the same validation images, ``dds_tuning`` in the results; these measurements
are noiseless, so the exact normal equations ``AᴴA u = Aᴴy`` win over the proximal form; MCG's step count is
``--mcg-steps``).
Each method runs in a fresh subprocess so that CPU peak memory (resident-set growth, ``Result.peak_memory``)
is not masked by memory freed by a previous method; on CUDA it is ``max_memory_allocated``. Wall time is
``Result.seconds`` (the sampler only, not prior loading).

Results accumulate in benchmarks/results/headline.json (finished entries are skipped unless --force; entries
measured with different settings are re-run); benchmarks/results/headline.md and the ``headline`` section of
BENCHMARKS.md are rewritten from it after each one (notes belong in the JSON's ``notes`` list).

Run:  OMP_NUM_THREADS=1 python benchmarks/bench_headline.py [--tasks mri,ct] [--methods all] [--n-images 8]
      [--dps-steps 1000] [--mcg-steps 1000] [--dps-grid 0.3,1,3] [--dps-grid-ct GRID] [--tune-images 2]
      [--device cpu] [--threads 1] [--force]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, update_benchmarks_md, write_result  # noqa: E402

NAME = "headline"
PRIOR = {"mri": "mri-brain", "ct": "ct-phantom"}
# method -> (label, solve() knobs per task); None = not applicable to that task
METHODS = {
    "adjoint": ("zero-filled / back-projection (adjoint)", {"mri": {}, "ct": {}}),
    "cg": ("CG-SENSE / CG least squares (30 it)", {"mri": {}, "ct": {}}),
    "fbp": ("FBP (ramp)", {"mri": None, "ct": {}}),
    "tv": ("TV (PDHG, lam 0.01, 300 it)", {"mri": {}, "ct": {}}),
    # validation-tuned (``dds_tuning`` in headline.json; CT: configs/reconstruct/ct_sparse_view_dds.yaml)
    "dds": ("DDS (50 steps)", {"mri": {"dc": "normal", "cg_iters": 100}, "ct": {"dc": "normal", "cg_iters": 50}}),
    "ddnm": ("DDNM (100 steps)", {"mri": {}, "ct": {}}),
    "diffpir": ("DiffPIR (100 steps)", {"mri": {}, "ct": {}}),
    "pigdm": ("ΠGDM (100 steps)", {"mri": {}, "ct": {}}),
    "mcg": ("MCG", {"mri": {}, "ct": {}}),
    "dps": ("DPS", {"mri": {}, "ct": {}}),
}
DIFFUSION = {"dds", "ddnm", "diffpir", "pigdm", "mcg", "dps"}


# ----------------------------------------------------------------------------------------------- problems
def test_images(task, n):
    if task == "mri":
        from invsolve.data.mri import heldout_slices
        return heldout_slices(64, n=n)
    from invsolve.data.ct import heldout_ct_slices, sample_phantoms
    x, names = heldout_ct_slices(64)
    x, names = x[:n], list(names[:n])
    if n > x.shape[0]:
        k = n - x.shape[0]
        x = torch.cat([x, sample_phantoms(k, 64, torch.Generator().manual_seed(4242))])
        names += [f"phantom-seed4242-{i}" for i in range(k)]
    return x, names


def validation_images(task, n):
    if task == "mri":
        from invsolve.data.mri import axial_slices, smooth_phase, to_complex
        z = [94, 113, 92, 115][:n]
        x = to_complex(axial_slices(z, 64), smooth_phase(len(z), 64, torch.Generator().manual_seed(99), "cpu"))
        return x, [f"mni-z{k}" for k in z]
    from invsolve.data.ct import sample_phantoms
    return sample_phantoms(n, 64, torch.Generator().manual_seed(1234)), [f"phantom-seed1234-{i}" for i in range(n)]


def operator(task):
    if task == "mri":
        from invsolve.operators import MultiCoilMRI, coils, masks
        return MultiCoilMRI(coils.birdcage(8, (64, 64)), masks.uniform1d((64, 64), 4, 0.08, seed=0))
    from invsolve.operators.ct import ParallelBeamCT, sparse_view_angles
    return ParallelBeamCT(64, sparse_view_angles(16))


def metrics(x, truth, task):
    from invsolve.eval.metrics import psnr, ssim
    rng = None if task == "mri" else 1.0  # MRI: peak = max |truth| on magnitudes; CT: images live in [0, 1]
    return [float(v) for v in psnr(x, truth, rng)], [float(v) for v in ssim(x, truth, rng)]


# ----------------------------------------------------------------------------------------------- one run
def run_one(spec):
    """Child process: one solve() call described by ``spec``; prints a JSON line."""
    import invsolve as inv
    torch.set_num_threads(spec["threads"])
    task = spec["task"]
    x, names = (validation_images if spec["images"] == "validation" else test_images)(task, spec["n"])
    op = operator(task)
    y = op(x)
    kw = dict(spec["knobs"])
    diffusion = spec["sampler"] in DIFFUSION
    if diffusion:
        kw["prior"] = inv.load_prior(PRIOR[task], device=spec["device"])
    res = inv.solve(y, op, sampler=spec["sampler"], seed=0, device=spec["device"], **kw)
    p, s = metrics(res.x.detach().cpu(), x, task)
    print("RESULT " + json.dumps({"names": names, "psnr": p, "ssim": s, "nfe": res.nfe, "seconds": res.seconds,
                                  "peak_memory_bytes": res.peak_memory}), flush=True)


def launch(spec):
    out = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": str(spec["threads"])})
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if out.returncode or not lines:
        raise RuntimeError(f"run {spec} failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def _stats(v):
    return {"mean": round(float(np.mean(v)), 3), "std": round(float(np.std(v)), 3)}


# ----------------------------------------------------------------------------------------------- driver
def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--tasks", default="mri,ct")
    ap.add_argument("--methods", default="all", help="comma list of " + ",".join(METHODS))
    ap.add_argument("--n-images", type=int, default=8)
    ap.add_argument("--dps-steps", type=int, default=1000)
    ap.add_argument("--mcg-steps", type=int, default=1000)
    ap.add_argument("--dps-grid", default="0.3,1,3", help="DPS scales tried on the validation images")
    ap.add_argument("--dps-grid-ct", default=None, help="DPS scales for CT (default: --dps-grid)")
    ap.add_argument("--tune-images", type=int, default=2)
    ap.add_argument("--tune-steps", type=int, default=None, help="DPS steps when tuning (default: --dps-steps)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()
    if a.one:
        return run_one(json.loads(a.one))
    torch.set_num_threads(a.threads)
    path = RESULTS / f"{NAME}.json"
    out = json.loads(path.read_text()) if path.exists() else {"runs": {}, "tuning": {}}
    methods = list(METHODS) if a.methods == "all" else a.methods.split(",")
    tune_steps = a.tune_steps or a.dps_steps
    for task in a.tasks.split(","):
        for m in methods:
            label, per_task = METHODS[m]
            if per_task[task] is None:
                continue
            knobs = dict(per_task[task])
            if m == "mcg":
                knobs["steps"] = a.mcg_steps
            if m == "dps":
                knobs["steps"] = a.dps_steps
                grid = a.dps_grid_ct if task == "ct" and a.dps_grid_ct else a.dps_grid
                knobs["scale"] = tune_dps(out, path, a, task, tune_steps, grid)
            spec = dict(task=task, sampler=m, knobs=knobs, images="test", n=a.n_images, device=a.device,
                        threads=a.threads)
            key = f"{task}/{m}@{knobs['steps']}" if m in ("dps", "mcg") else f"{task}/{m}"
            if not a.force and out["runs"].get(key, {}).get("spec") == spec:
                continue
            print(f"running {key} {knobs}", flush=True)
            r = launch(spec)
            TOUCHED.add(key)
            out["runs"][key] = {"label": label, "spec": spec, **r, "psnr_stats": _stats(r["psnr"]),
                                "ssim_stats": _stats(r["ssim"]), "machine": machine_info(a)}
            save(out, path)
            print(f"  {key}: PSNR {out['runs'][key]['psnr_stats']} {r['seconds']:.1f} s", flush=True)


def tune_dps(out, path, a, task, steps, grid):
    key = f"{task}/dps/steps{steps}/n{a.tune_images}/grid{grid}"
    entry = out["tuning"].setdefault(key, {"scores": {}})
    for s in [float(v) for v in grid.split(",")]:
        if str(s) in entry["scores"]:  # tuning is keyed by steps/images/grid; --force re-runs test entries only
            continue
        spec = dict(task=task, sampler="dps", knobs={"steps": steps, "scale": s}, images="validation",
                    n=a.tune_images, device=a.device, threads=a.threads)
        print(f"tuning {task} dps scale={s}", flush=True)
        r = launch(spec)
        entry["scores"][str(s)] = {"names": r["names"], "psnr": r["psnr"], "ssim": r["ssim"],
                                   "mean_psnr": round(float(np.mean(r["psnr"])), 3), "seconds": r["seconds"]}
        save(out, path)
    entry["chosen"] = float(max(entry["scores"], key=lambda k: entry["scores"][k]["mean_psnr"]))
    save(out, path)
    return entry["chosen"]


def machine_info(a):
    m = machine()
    m.update({"cpu": _cpu_name(), "threads_requested": a.threads, "device_arg": a.device,
              "load_average_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None})
    return m


def _cpu_name():
    try:
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith("model name"):
                return ln.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def save(out, path):
    """Write the JSON and markdown; the recorded command repeats every flag but --tasks/--methods/--force.

    Several drivers may run at once (e.g. ``--tasks mri`` and ``--tasks ct`` on two cores): under an exclusive lock
    the file on disk is re-read and merged with ``out`` (this process's runs and tuning scores win), so one
    driver never drops another's finished entries.
    """
    import fcntl
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        disk = json.loads(path.read_text()) if path.exists() else {}
        _merge(out, disk)
        _save_locked(out, path)


TOUCHED: set[str] = set()  # run keys measured by this process (they win over the file's copy when merging)


def _merge(out, disk):
    for k, v in disk.get("runs", {}).items():
        if k not in TOUCHED:
            out["runs"][k] = v
    for k, v in disk.get("tuning", {}).items():
        mine = out["tuning"].setdefault(k, {"scores": {}})
        for s, r in v.get("scores", {}).items():
            mine["scores"].setdefault(s, r)
        if "chosen" not in mine and "chosen" in v:
            mine["chosen"] = v["chosen"]
    for k, v in disk.items():  # notes, superseded entries, sweeps: edited in the file, never by a driver
        if k not in ("runs", "tuning", "command"):
            out[k] = v


def _save_locked(out, path):
    args, skip = [], False
    for tok in sys.argv[1:]:
        if skip or tok == "--force":
            skip = False
            continue
        if tok in ("--tasks", "--methods"):
            skip = True
            continue
        if not tok.startswith(("--tasks=", "--methods=")):
            args.append(tok)
    out["command"] = "OMP_NUM_THREADS=1 python benchmarks/bench_headline.py " + " ".join(args)
    write_result(NAME, out)
    (RESULTS / f"{NAME}.md").write_text(report(out))
    update_benchmarks_md(NAME, report(out))


# ----------------------------------------------------------------------------------------------- report
def report(out) -> str:
    lines = ["## Headline: DDS vs DPS and all baselines, MRI 4x and CT 16 views (issue #4)", "",
             "Same prior, seed 0, noiseless measurements and test batch for every method; PSNR/SSIM from "
             "`invsolve.eval.metrics` (MRI: magnitudes, peak = max |truth|; CT: data range 1), mean ± std over the "
             "test images. Wall time = `Result.seconds` (sampler only); peak memory = `Result.peak_memory` (CPU: "
             "resident-set growth, each method in a fresh process; CUDA: max allocated). Registered defaults "
             "except: DDS's data-consistency setting and DPS's `scale`, both tuned on validation images (below); step "
             "counts as listed.", ""]
    dps_steps = {r["spec"]["knobs"].get("steps") for k, r in out["runs"].items() if "/dps@" in k}
    if dps_steps and max(dps_steps) < 1000:
        lines += [f"**Reduced run:** DPS used {sorted(dps_steps)} steps, not the reference 1000, to fit the CPU "
                  "budget; the DDS/DPS ratios below are for that step count (measured, not extrapolated). "
                  "Rerun with `--dps-steps 1000 --mcg-steps 1000` (e.g. on a GPU) for the 1000-step headline.", ""]
    for task, title in (("mri", "Multi-coil MRI, uniform-1D 4x (8 % ACS), 8 birdcage coils, prior `mri-brain`"),
                        ("ct", "Parallel-beam CT, 16 views over [0, π), prior `ct-phantom`")):
        runs = {k.split("/")[1]: v for k, v in out["runs"].items() if k.startswith(task + "/")}
        # DPS / MCG may be present at several step counts ("dps@100", "dps@1000"): fewest steps first
        order = sorted(runs, key=lambda k: (list(METHODS).index(k.split("@")[0]), int(k.split("@")[1]) if "@" in k
                                            else 0))
        if not runs:
            continue
        names = next(iter(runs.values()))["names"]
        real = [i for i, n in enumerate(names) if not n.startswith("phantom")]
        lines += [f"### {title}", "", f"Test images ({len(names)}): {', '.join(names)}.", ""]
        head = "| method | steps / knobs | PSNR (dB) | SSIM |"
        if task == "ct":
            head += f" PSNR real ({len(real)}) | SSIM real ({len(real)}) |"
        lines += [head + " NFE | wall (s) | peak mem (MiB) | load avg |", "|" + "---|" * (head.count("|") + 3)]
        for m in order:
            r = runs[m]
            p, s = r["psnr_stats"], r["ssim_stats"]
            mem = "n/a" if r["peak_memory_bytes"] is None else f"{r['peak_memory_bytes'] / 2**20:.0f}"
            knobs = ", ".join(f"{k}={v}" for k, v in r["spec"]["knobs"].items()) or "defaults"
            row = f"| {r['label']} | {knobs} | {p['mean']:.2f} ± {p['std']:.2f} | {s['mean']:.3f} ± {s['std']:.3f} |"
            if task == "ct":
                pr, sr = np.array(r["psnr"])[real], np.array(r["ssim"])[real]
                row += f" {pr.mean():.2f} ± {pr.std():.2f} | {sr.mean():.3f} ± {sr.std():.3f} |"
            load = r["machine"]["load_average_1_5_15"][0]
            lines.append(row + f" {r['nfe']} | {r['seconds']:.1f} | {mem} | {load:.1f} |")
        for q in [runs[k] for k in order if k.startswith("dps@")]:
            d = runs.get("dds")
            if d is None:
                break
            mem = (f"{d['peak_memory_bytes'] / q['peak_memory_bytes']:.2f}"
                   if d["peak_memory_bytes"] and q["peak_memory_bytes"] else "n/a")
            lines += ["", f"DDS / DPS ({q['spec']['knobs']['steps']} steps): speed-up (DPS wall / DDS wall) "
                          f"**{q['seconds'] / d['seconds']:.1f}x**, NFE {d['nfe']} vs {q['nfe']}, peak-memory "
                          f"ratio DDS/DPS {mem}, PSNR difference DDS − DPS "
                          f"{d['psnr_stats']['mean'] - q['psnr_stats']['mean']:+.2f} dB."]
        sweep = [r for r in out.get("dds_tuning", []) if r["task"] == task]
        if sweep:
            grid = "; ".join(f"{', '.join(f'{k}={v}' for k, v in r['knobs'].items()) or 'defaults'}: "
                             f"{r['mean']:.2f} dB" for r in sweep)
            lines += ["", f"DDS tuning (50 steps, validation images {', '.join(sweep[0]['names'])}; mean PSNR): "
                          f"{grid}."]
        for key, t in out["tuning"].items():
            if key.startswith(task + "/dps/"):
                grid = ", ".join(f"{s}: {v['mean_psnr']:.2f} dB" for s, v in t["scores"].items())
                names_v = next(iter(t["scores"].values()))["names"]
                lines += ["", f"DPS `scale` tuning ({key.split('/')[2]}, validation images "
                              f"{', '.join(names_v)}; mean PSNR): {grid} → chosen **{t.get('chosen')}**."]
        mach = next(iter(runs.values()))["machine"]
        lines += ["", f"Machine: {mach['cpu']}, {mach['device']}, torch {mach['torch']}, "
                      f"{mach['torch_threads']} thread(s), {mach['date']}. `load avg` = 1-minute load average when "
                      f"the run finished (a shared 2-core machine: wall times are only comparable at similar load).",
                  ""]
    lines += [f"Command: `{out.get('command', '')}`", ""]
    if out.get("notes"):
        lines += ["Notes on these runs:", ""] + [f"* {n}" for n in out["notes"]] + [""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
