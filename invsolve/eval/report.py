"""Benchmark reports built only from a suite's files (``plan.json``, ``items/**.json``, ``cache/*.pt``).

:func:`write_report` writes into the suite's output directory:

* ``results.csv``: one row per item (metrics, cost, status, error);
* ``table.csv`` and ``report.md``: per task, one row per method with mean ± std over images and seeds (best mean
  per quality column in bold), then the pairs that do not apply, unavailable tasks/methods, failures, pending items;
* ``figures/<task>.png``: truth | Aᴴy | each method, with error maps below; ``figures/<task>_std.png``: per-pixel
  posterior standard deviation when the suite draws ``num_samples > 1``;
* paired comparisons (``compare:``), the validation tasks' tune grids with the chosen points, and ``tuned.yaml``
  (the choices in the preset format of ``invsolve/presets/``);
* optionally a section of ``BENCHMARKS.md`` between ``<!-- suite:NAME:begin -->`` and ``<!-- suite:NAME:end -->``
  (other sections are kept), with the command that reproduces it, the machine and the dates.
  :func:`update_section` is the one writer of BENCHMARKS.md (the benchmark scripts use it too).

Running it twice on the same files gives the same tables: it is the merge step of a sharded run. A partial result
set (planned items without a current result) is reported into ``partial/`` and destroys nothing (see
:func:`write_report`).
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

# key, column title, direction for "best" (+1 higher, -1 lower, 0 none), format
METRICS: List[Tuple[str, str, int, str]] = [
    ("psnr", "PSNR (dB) ↑", +1, "{:.2f}"),
    ("ssim", "SSIM ↑", +1, "{:.4f}"),
    ("lpips", "LPIPS ↓", -1, "{:.4f}"),
    ("relative_l2", "rel. L2 ↓", -1, "{:.4f}"),
    ("dc_residual", "‖Ax−y‖/‖y‖", 0, "{:.2e}"),
]
# shown only where a task has them (``whole: true`` volume items)
EXTRA_METRICS: List[Tuple[str, str, int, str]] = [
    ("z_flicker_excess", "excess z-flicker", 0, "{:.5f}"),
    ("z_difference_rmse", "z-diff RMSE ↓", -1, "{:.5f}"),
]
ITEM_COLUMNS = ["task", "split", "method", "sampler", "image", "name", "seed", "status", "psnr", "ssim", "lpips",
                "relative_l2", "dc_residual", "nfe", "seconds", "peak_memory_mib", "device", "hardware",
                "finished_at", "lpips_note", "error"]


# ---------------------------------------------------------------------------------------------------- reading
def load_plan(out) -> Dict[str, Any]:
    p = Path(out) / "plan.json"
    if not p.is_file():
        raise FileNotFoundError(f"{p} not found: run `invsolve evaluate SUITE` first")
    return json.loads(p.read_text())


def collect(out, plan: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """Current result records of the planned items, by item key (stale configurations are left out)."""
    out = Path(out)
    records = {}
    for key in plan["items"]:
        task, method, stem = key.split("/")
        try:
            rec = json.loads((out / "items" / task / method / f"{stem}.json").read_text())
        except (OSError, ValueError):
            continue
        if rec.get("task_hash") == plan["tasks"][task]["hash"] and \
                rec.get("method_hash") == plan["pairs"][f"{task}/{method}"]["hash"]:
            records[key] = rec
    return records


def _num(v) -> Optional[float]:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


# ---------------------------------------------------------------------------------------------------- tables
def summarize(plan: Dict[str, Any], records: Dict[str, Dict[str, Any]]) -> Dict[str, List[Dict[str, Any]]]:
    """Per task, one row per method that runs there: counts, and (mean, std) of every metric and cost."""
    by_pair: Dict[str, List[str]] = {}
    for key in plan["items"]:
        task, method, _ = key.split("/")
        by_pair.setdefault(f"{task}/{method}", []).append(key)
    tables: Dict[str, List[Dict[str, Any]]] = {}
    for t in plan["suite"]["tasks"]:
        rows = []
        for m in plan["suite"]["methods"]:
            keys = by_pair.get(f"{t['id']}/{m['id']}")
            if not keys:
                continue
            recs = [records[k] for k in keys if k in records]
            ok = [r for r in recs if r.get("status") == "ok"]
            tuned = plan["pairs"][f"{t['id']}/{m['id']}"].get("tuned")
            row: Dict[str, Any] = {"task": t["id"], "method": m["id"], "sampler": m["sampler"], "planned": len(keys),
                                   "ok": len(ok), "failed": sum(r.get("status") == "failed" for r in recs),
                                   "knobs": _knob_text(plan, t["id"], m["id"]),
                                   "tuned": None if tuned is None else tuned["job"]}
            notes = set()
            for key, *_ in METRICS + EXTRA_METRICS:
                vals = [_num(r["metrics"].get(key)) for r in ok]
                notes |= {str(r["metrics"].get(key)) for r in ok if _num(r["metrics"].get(key)) is None}
                row[key] = _stats([v for v in vals if v is not None])
                if key == "lpips":
                    row["lpips_note"] = sorted(notes)
            row["nfe"] = _stats([float(r["nfe"]) for r in ok])
            row["seconds"] = _stats([float(r["seconds"]) for r in ok])
            row["peak_memory_mib"] = _stats([r["peak_memory"] / 2**20 for r in ok if _num(r.get("peak_memory"))
                                             is not None])
            rows.append(row)
        tables[t["id"]] = rows
    return tables


def _knob_text(plan: Dict[str, Any], task: str, method: str) -> str:
    """The knobs a method ran with on a task that differ from its sampler's registered defaults, the steps it ran
    (its preset's where the method sets none) and the preset that set the rest, e.g. ``steps=300 (preset
    reddiff-ct)``."""
    from ..samplers.base import get_sampler

    m = plan["methods"].get(method, {})
    pair = plan["pairs"].get(f"{task}/{method}", {})
    knobs = dict((m.get("task_knobs") or {}).get(task, m.get("knobs")) or {})
    if "steps" in (pair.get("knobs") or {}):
        knobs["steps"] = pair["knobs"]["steps"]
    tuned = (pair.get("tuned") or {}).get("point") or {}
    try:
        defaults = get_sampler(m["sampler"]).defaults
    except Exception:  # noqa: BLE001 - a sampler of another build: show every knob
        defaults = {}
    shown = {k: v for k, v in knobs.items() if k == "steps" or k in tuned or k not in defaults or defaults[k] != v}
    if (m.get("num_samples") or 1) > 1:
        shown["num_samples"] = m["num_samples"]
    text = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items())
    return f"{text} (preset {pair['preset']})".strip() if pair.get("preset") else text


def _stats(vals: List[float]) -> Optional[Tuple[float, float, int]]:
    if not vals:
        return None
    a = np.asarray(vals, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0, len(a)


def _best(rows: List[Dict[str, Any]], key: str, direction: int) -> Optional[float]:
    means = [r[key][0] for r in rows if r[key] is not None]
    if direction == 0 or len(means) < 2:
        return None
    return max(means) if direction > 0 else min(means)


def _metrics_of(rows: List[Dict[str, Any]]) -> List[Tuple[str, str, int, str]]:
    return METRICS + [m for m in EXTRA_METRICS if any(r.get(m[0]) is not None for r in rows)]


def markdown_table(rows: List[Dict[str, Any]]) -> str:
    """Markdown table of :func:`summarize` rows; best mean per quality column in bold (ties all bold)."""
    metrics = _metrics_of(rows)
    head = ["method", "sampler", "knobs", "n"] + [title for _, title, _, _ in metrics] + \
        ["NFE", "time (s)", "peak mem (MiB)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 4 + ["---:"] * (len(head) - 4)) + "|"]
    best = {key: _best(rows, key, d) for key, _, d, _ in metrics}
    for r in rows:
        waiting = r["planned"] - r["ok"] - r["failed"]
        n = f"{r['ok']}/{r['planned']}" + (f" ({r['failed']} failed)" if r["failed"] else "") + \
            (f" ({waiting} pending)" if waiting else "")
        knobs = (r.get("knobs") or "defaults") + (" (tuned)" if r.get("tuned") else "")
        cells = [r["method"], r["sampler"], knobs, n]
        for key, _, _, fmt in metrics:
            s = r[key]
            if s is None:
                cells.append("n/a")
                continue
            txt = fmt.format(s[0]) + (f" ± {fmt.format(s[1])}" if s[2] > 1 else "")
            cells.append(f"**{txt}**" if best[key] is not None and s[0] == best[key] else txt)
        cells.append("n/a" if r["nfe"] is None else f"{r['nfe'][0]:.0f}")
        sec = r["seconds"]
        cells.append("n/a" if sec is None else f"{sec[0]:.2f}" + (f" ± {sec[1]:.2f}" if sec[2] > 1 else ""))
        cells.append("n/a" if r["peak_memory_mib"] is None else f"{r['peak_memory_mib'][0]:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_csv(out, plan: Dict[str, Any], records: Dict[str, Dict[str, Any]],
              tables: Dict[str, List[Dict[str, Any]]]) -> Tuple[Path, Path]:
    """``results.csv`` (per item, planned order) and ``table.csv`` (per task and method: mean, std, n)."""
    from .datasets import write_atomic

    buf = io.StringIO()
    w = csv.DictWriter(buf, ITEM_COLUMNS, lineterminator="\n")
    w.writeheader()
    for key in plan["items"]:
        r = records.get(key)
        task, method, stem = key.split("/")
        split = plan["tasks"][task].get("split", "test")
        if r is None:
            w.writerow({"task": task, "split": split, "method": method, "status": "pending",
                        "image": int(stem[1:4]), "seed": int(stem.split("_s")[1])})
            continue
        m = r.get("metrics", {})
        row = {k: r.get(k) for k in ("task", "method", "sampler", "image", "name", "seed", "status", "nfe", "seconds",
                                     "device", "hardware", "finished_at", "error")}
        row.update({k: m.get(k) for k in ("psnr", "ssim", "relative_l2", "dc_residual")}, split=split)
        row["lpips"] = _num(m.get("lpips"))
        row["lpips_note"] = None if row["lpips"] is not None or not m else m.get("lpips")
        row["peak_memory_mib"] = None if _num(r.get("peak_memory")) is None else r["peak_memory"] / 2**20
        w.writerow(row)
    results = write_atomic(Path(out) / "results.csv", lambda t: t.write_text(buf.getvalue()))

    buf = io.StringIO()
    cols = ["task", "method", "sampler", "planned", "ok", "failed"]
    stat_keys = [k for k, *_ in _metrics_of([r for rows in tables.values() for r in rows])] + \
        ["nfe", "seconds", "peak_memory_mib"]
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols + [f"{k}_{s}" for k in stat_keys for s in ("mean", "std", "n")])
    for rows in tables.values():
        for r in rows:
            vals = []
            for k in stat_keys:
                vals += list(r[k]) if r[k] is not None else ["", "", 0]
            w.writerow([r[c] for c in cols] + vals)
    table = write_atomic(Path(out) / "table.csv", lambda t: t.write_text(buf.getvalue()))
    return results, table


# ---------------------------------------------------------------------------------------------------- figures
def _load_problem(out: Path, task: str, plan: Dict[str, Any]):
    import torch

    p = out / "cache" / f"{task}.pt"
    if not p.is_file():
        return None
    blob = torch.load(p, map_location="cpu", weights_only=False)
    if blob.get("key") != plan["tasks"][task].get("cache_key", plan["tasks"][task]["hash"]):
        return None
    return blob


def _display(x: np.ndarray) -> np.ndarray:
    """``(C, H, W)`` (complex or real) -> ``(H, W)`` magnitude/grey or ``(H, W, 3)`` RGB."""
    x = np.abs(x) if np.iscomplexobj(x) else x
    if x.shape[0] == 3:
        return np.moveaxis(x, 0, -1)
    if x.shape[0] == 2:  # [Re, Im] channels
        return np.hypot(x[0], x[1])
    return x[0]


def _scaled_to(a: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """``a`` times the least-squares scale onto ``ref`` (so that Aᴴy is shown on the truth's scale)."""
    den = float((a * a).sum())
    return a * (float((a * ref).sum()) / den if den > 0 else 1.0)


def _figure(path: Path, truth: np.ndarray, adj: Optional[np.ndarray], recons: Dict[str, List[Optional[np.ndarray]]],
            names: List[str], psnrs: Dict[str, List[Optional[float]]], title: str):
    """Rows per image: truth | Aᴴy | methods, then their |error| maps; ``recons[m][i]`` is ``(C, H, W)`` or
    ``None`` (method ``m`` did not run image ``i``)."""
    from ..plotting import pyplot

    plt = pyplot()
    cols = ["truth"] + (["Aᴴy (scaled)"] if adj is not None else []) + list(recons)
    n = len(names)
    fig, axes = plt.subplots(2 * n, len(cols), figsize=(1.75 * len(cols), 3.6 * n + 0.5), squeeze=False)
    for i in range(n):
        t = _display(truth[i])
        signed = t.min() < 0
        rgb = t.ndim == 3
        vmax = float(np.abs(t).max()) if signed else float(np.percentile(t, 99.5)) or 1.0
        kw = {} if rgb else dict(cmap="RdBu_r" if signed else "gray", vmin=-vmax if signed else 0.0, vmax=vmax)
        panels = {"truth": t}
        if adj is not None:
            panels["Aᴴy (scaled)"] = _scaled_to(_display(adj[i]), t)
        panels.update({k: _display(v[i]) for k, v in recons.items() if v[i] is not None})
        errs = {k: np.abs(panels[k] - t) if not rgb else np.abs(panels[k] - t).mean(-1) for k in recons
                if k in panels}
        # one error scale per row: the median over methods of their 99.5th percentiles (outliers saturate)
        emax = max(float(np.median([np.percentile(e, 99.5) for e in errs.values()])) if errs else 0.0, 1e-12)
        for c, k in enumerate(cols):
            ax, ax_e = axes[2 * i, c], axes[2 * i + 1, c]
            ax.axis("off")
            ax_e.axis("off")
            p = psnrs.get(k, [None] * n)[i]
            label = (f"{k}\n" if i == 0 else "") + (names[i] if c == 0 else f"{p:.2f} dB" if p is not None else "")
            ax.set_title(label, fontsize=7)
            if k not in panels:
                ax.text(0.5, 0.5, "not run", ha="center", va="center", fontsize=7, transform=ax.transAxes)
                continue
            ax.imshow(np.clip(panels[k] / (vmax or 1.0), 0, 1) if rgb else panels[k], **kw)
            if k in errs:
                ax_e.imshow(errs[k], cmap="inferno", vmin=0, vmax=emax)
                ax_e.set_title("|error|", fontsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _std_figure(path: Path, stds: Dict[str, List[Optional[np.ndarray]]], names: List[str], title: str):
    from ..plotting import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(len(names), len(stds), figsize=(1.9 * len(stds), 1.9 * len(names) + 0.5),
                             squeeze=False)
    for c, (k, s) in enumerate(stds.items()):
        for i in range(len(names)):
            axes[i, c].axis("off")
            axes[i, c].set_title(k if i == 0 else "", fontsize=7)
            if s[i] is not None:
                d = _display(s[i])
                axes[i, c].imshow(d.mean(-1) if d.ndim == 3 else d, cmap="viridis")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def figures(out, plan: Dict[str, Any], records: Dict[str, Dict[str, Any]],
            kept: Optional[Dict[str, str]] = None) -> Dict[str, List[Path]]:
    """Figure grids per task for the first suite seed and the first ``figures`` images that any method finished
    (methods run on fewer images leave those panels empty); returns ``{task: [paths]}``.

    Where reconstruction files are missing (a clone: they are not versioned) an existing figure is kept rather than
    redrawn with empty panels, and ``kept[task]`` says why (the report prints it under the figure)."""
    out = Path(out)
    n_img, seed = int(plan["suite"].get("figures") or 0), plan["suite"]["seeds"][0]
    result: Dict[str, List[Path]] = {}
    if n_img <= 0:
        return result
    for t in plan["suite"]["tasks"]:
        tid = t["id"]
        if t.get("split", "test") != "test":
            continue
        done = {}
        for m in plan["suite"]["methods"]:
            keys = [k for k in plan["items"] if k.startswith(f"{tid}/{m['id']}/") and k.endswith(f"_s{seed}")]
            recs = [records.get(k) for k in keys]
            ok = {r["image"]: r for r in recs if r is not None and r.get("status") == "ok"}
            if ok:
                done[m["id"]] = ok
        blob = _load_problem(out, tid, plan) if done else None
        if blob is None or "problem" not in blob or blob["problem"].x_true is None:
            continue
        problem = blob["problem"]
        images = sorted(set().union(*[set(v) for v in done.values()]))[:n_img]
        truth = problem.x_true[images].numpy()
        adj = None
        if getattr(problem.operator, "is_linear", False):
            import torch

            with torch.no_grad():
                adj = problem.operator.adjoint(problem.y)[images].numpy()
        paths = [out / "figures" / f"{tid}.png"]
        missing = [out / "items" / tid / mid / recs[i][key] for mid, recs in done.items() for i in images if i in recs
                   for key in ("reconstruction", "std") if recs[i].get(key)
                   and not (out / "items" / tid / mid / recs[i][key]).exists()]
        if missing:  # e.g. a clone: the .npy reconstructions are not versioned; keep the figure drawn from them
            warnings.warn(f"{len(missing)} reconstruction file(s) of task {tid!r} are missing (e.g. {missing[0]}); "
                          f"{'kept the existing figure' if paths[0].exists() else 'no figure drawn'}", stacklevel=2)
            if paths[0].exists():
                result[tid] = [p for p in (paths[0], out / "figures" / f"{tid}_std.png") if p.exists()]
                if kept is not None:
                    kept[tid] = (f"figure kept from an earlier run: {len(missing)} reconstruction file(s) were not at "
                                 "hand to redraw it, so panels of methods re-run since then may not match the table")
            elif kept is not None:
                kept[tid] = (f"no figure: {len(missing)} reconstruction file(s) are missing (they are not versioned; "
                             "rerun the suite's items to redraw it)")
            continue
        recons, psnrs, stds = {}, {}, {}
        for mid, recs in done.items():
            base = out / "items" / tid / mid
            recons[mid] = [np.load(base / recs[i]["reconstruction"])[0] if i in recs else None for i in images]
            psnrs[mid] = [recs[i]["metrics"]["psnr"] if i in recs else None for i in images]
            if any(recs[i].get("std") for i in images if i in recs):
                stds[mid] = [np.load(base / recs[i]["std"])[0] if i in recs and recs[i].get("std") else None
                             for i in images]
        names = [problem.names[i] for i in images]
        _figure(paths[0], truth, adj, recons, names, psnrs, f"{plan['suite']['name']} / {tid} (seed {seed})")
        if stds:
            paths.append(out / "figures" / f"{tid}_std.png")
            _std_figure(paths[1], stds, names, f"{tid}: posterior std over {plan['suite']['num_samples']} samples")
        result[tid] = paths
    return result


# ---------------------------------------------------------------------------------------------------- markdown
def _task_line(plan: Dict[str, Any], t: Dict[str, Any]) -> str:
    given = ", ".join(f"{k}={v}" for k, v in t.items() if k not in ("id", "task", "split", "family", "whole"))
    info = plan["tasks"][t["id"]]
    names = info.get("names") or []
    shown = ", ".join(names[:8]) + (f", … ({len(names)} images)" if len(names) > 8 else "")
    whole = "; one item per volume, metrics are means over its slices" if t.get("whole") else ""
    return f"task `{t['task']}` ({given or 'defaults'}); images: {shown or 'n/a'}{whole}"


# ---------------------------------------------------------------------------------------------------- tuning
def tuning_rows(plan: Dict[str, Any], records: Dict[str, Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """Per tune job (``"method@family"``): its grid points scored from the current validation records, and the
    chosen index (``None`` while results are missing or no point is eligible); see :mod:`invsolve.eval.tune`."""
    from . import tune

    by_pair: Dict[str, List[str]] = {}
    for key in plan["items"]:
        task, method, _ = key.split("/")
        by_pair.setdefault(f"{task}/{method}", []).append(key)
    out = {}
    for jk, job in (plan.get("tuning") or {}).items():
        per_point = [[records.get(k) for vt in job["validation_tasks"] for k in by_pair.get(f"{vt}/{vid}", [])]
                     for vid in job["variants"]]
        rows = tune.score_points(job["points"], per_point, job["metric"])
        out[jk] = {**job, "rows": rows, "chosen": tune.choose(rows, job["metric"])}
    return out


def tuned_entries(plan: Dict[str, Any], tuning: Dict[str, Dict[str, Any]], out: Path) -> List[Dict[str, Any]]:
    """Preset entries (with their ``prior``) of the tune jobs that chose a point (``tuned.yaml``)."""
    from ..samplers.base import get_sampler
    from . import tune

    entries = []
    for job in tuning.values():
        if job["chosen"] is None:
            continue
        vid, vts = job["variants"][job["chosen"]], job["validation_tasks"]
        m = plan["methods"][vid]
        prior = next((plan["pairs"][f"{vt}/{vid}"].get("prior") for vt in vts
                      if plan["pairs"].get(f"{vt}/{vid}", {}).get("prior")), None)
        if prior is None:  # a classical method tuned on validation data: no prior to file it under
            continue
        defaults = get_sampler(m["sampler"]).defaults  # the tuned knobs are stated even where they equal a default
        knobs = {k: v for k, v in m["knobs"].items() if k in m["point"] or k not in defaults or defaults[k] != v}
        noise = tune.noise_label([plan["tasks"][vt]["options"].get("noise_sigma", 0.0) for vt in vts])
        fam = plan["tasks"][vts[0]].get("operator_family") or plan["tasks"][vts[0]]["task"]
        val = "; ".join(_validation_line(plan, vt, vid) for vt in vts)
        row = job["rows"][job["chosen"]]
        entries.append({"prior": prior, "id": tune.preset_id(job["family"], job["method"], noise), "task": fam,
                        "sampler": m["sampler"], "noise": noise, "knobs": knobs,
                        "validation": f"{val}; seeds {m.get('seeds') or plan['suite']['seeds']}; mean "
                                      f"{job['metric']} {row['mean']:.4g} over {row['ok']} item(s), best of "
                                      f"{len(job['rows'])} grid point(s)",
                        "source": f"{plan['command']} -> {(out / 'tuned.yaml').as_posix()}"})
    return entries


def _validation_line(plan: Dict[str, Any], task: str, variant: str) -> str:
    """``"mri-val: task mri (example=mni-guard, ...); images: mni-z94"`` with the images the variant ran on."""
    t = next(t for t in plan["suite"]["tasks"] if t["id"] == task)
    given = ", ".join(f"{k}={v}" for k, v in t.items() if k not in ("id", "task", "split", "family", "whole"))
    names = plan["tasks"][task].get("names") or []
    used = [names[i] for i in plan["pairs"].get(f"{task}/{variant}", {}).get("images", []) if i < len(names)]
    return f"{task}: task {t['task']} ({given or 'defaults'}), images {', '.join(used) or 'n/a'}"


def _tuning_md(h: str, tuning: Dict[str, Dict[str, Any]]) -> List[str]:
    from . import tune

    lines = []
    for job in tuning.values():
        metric = job["metric"]
        state = (f"chosen: **{job['rows'][job['chosen']]['label']}**" if job["chosen"] is not None
                 else "no choice yet (validation results missing or every point failed)")
        own = metric not in ("psnr", "ssim")  # the criterion gets its own column
        lines += [f"{h}## Tuning `{job['method']}` on family `{job['family']}` (validation tasks "
                  f"{', '.join('`' + v + '`' for v in job['validation_tasks'])})", "",
                  f"Rule: best mean {metric} over every validation item of a point (ties within "
                  f"{tune.METRICS[metric][1]:g}: fewer NFE, then grid order); {state}.", "",
                  "| knobs | n | " + (f"mean {metric} | " if own else "") + "mean PSNR (dB) | mean SSIM | mean NFE | "
                  "mean time (s) |", "|---|---|" + ("---:|" if own else "") + "---:|---:|---:|---:|"]
        for i, r in enumerate(job["rows"]):
            n = f"{r['ok']}/{r['planned']}" + (f" ({r['failed']} failed)" if r["failed"] else "")
            cells = ([_fmt(r["mean"], "{:.4f}")] if own else []) + [
                _fmt(r["psnr"], "{:.2f}"), _fmt(r["ssim"], "{:.4f}"), _fmt(r["nfe"], "{:.0f}"),
                _fmt(r["seconds"], "{:.1f}")]
            label = f"**{r['label']}** (chosen)" if i == job["chosen"] else r["label"]
            lines.append(f"| {label} | {n} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def _fmt(v, fmt: str) -> str:
    return "n/a" if v is None else fmt.format(v)


# ---------------------------------------------------------------------------------------------------- paired
def comparisons(plan: Dict[str, Any], records: Dict[str, Dict[str, Any]]) -> List[Dict[str, Any]]:
    """For each ``compare: [a, b]`` pair and test task: PSNR / SSIM of ``a`` minus ``b`` paired per image and seed
    (items where both are ``ok``): mean difference, its standard error (sample std / sqrt(n)), the two-sided paired
    t-test p-value (scipy; ``None`` for n < 2) and how many pairs ``a`` wins."""
    from scipy import stats

    rows = []
    for a, b in plan["suite"].get("compare") or []:
        for t in plan["suite"]["tasks"]:
            if t.get("split", "test") != "test":
                continue
            ra = {(r["image"], r["seed"]): r for k, r in records.items() if k.startswith(f"{t['id']}/{a}/")
                  and r.get("status") == "ok"}
            rb = {(r["image"], r["seed"]): r for k, r in records.items() if k.startswith(f"{t['id']}/{b}/")
                  and r.get("status") == "ok"}
            keys = sorted(set(ra) & set(rb))
            if not keys:
                continue
            row = {"task": t["id"], "a": a, "b": b, "n": len(keys),
                   "time_ratio": _ratio([rb[k].get("seconds") for k in keys], [ra[k].get("seconds") for k in keys]),
                   "memory_ratio": _ratio([ra[k].get("peak_memory") for k in keys],
                                          [rb[k].get("peak_memory") for k in keys])}
            for metric in ("psnr", "ssim", "relative_l2"):
                if not all(_num(r[k]["metrics"].get(metric)) is not None for r in (ra, rb) for k in keys):
                    row[metric] = None
                    continue
                xa = np.array([ra[k]["metrics"][metric] for k in keys], dtype=np.float64)
                xb = np.array([rb[k]["metrics"][metric] for k in keys], dtype=np.float64)
                d = xa - xb
                se = float(d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else None
                p = float(stats.ttest_rel(xa, xb).pvalue) if d.size > 1 and np.ptp(d) > 0 else None
                row[metric] = {"a": float(xa.mean()), "b": float(xb.mean()), "diff": float(d.mean()), "se": se,
                               "p": p, "wins": int((d > 0).sum())}
            rows.append(row)
    return rows


def _ratio(num, den) -> Optional[float]:
    """``mean(num) / mean(den)`` over the finite values (``None`` when either is missing or ``den`` is 0)."""
    a = [float(v) for v in num if _num(v) is not None]
    b = [float(v) for v in den if _num(v) is not None]
    return float(np.mean(a) / np.mean(b)) if a and b and np.mean(b) > 0 else None


def _compare_md(h: str, rows: List[Dict[str, Any]]) -> List[str]:
    if not rows:
        return []
    lines = [f"{h}# Paired comparisons", "",
             "Per test task, method a minus method b on the same images and seeds (items where both finished): "
             "mean difference ± standard error of the mean difference, two-sided paired t-test p-value, the "
             "number of pairs a wins; speed-up = mean time of b / mean time of a, memory ratio = mean peak memory "
             "of a / of b.", "",
             "| task | a | b | pairs | PSNR a | PSNR b | Δ PSNR (dB) | p | a better | Δ SSIM | p (SSIM) | Δ rel. L2 | "
             "speed-up | memory a/b |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def diff(d, fmt):
        if d is None:
            return "n/a"
        return fmt.format(d["diff"]) + (f" ± {fmt.format(d['se']).lstrip('+')}" if d["se"] is not None else "")

    for r in rows:
        P, S = r["psnr"], r["ssim"]
        if P is None:
            continue
        lines.append(f"| {r['task']} | {r['a']} | {r['b']} | {r['n']} | {P['a']:.2f} | {P['b']:.2f} | "
                     f"{diff(P, '{:+.2f}')} | {_fmt(P['p'], '{:.2g}')} | {P['wins']}/{r['n']} | {diff(S, '{:+.4f}')} | "
                     f"{_fmt(S and S['p'], '{:.2g}')} | {diff(r['relative_l2'], '{:+.4f}')} | "
                     f"{_fmt(r['time_ratio'], '{:.3g}x')} | {_fmt(r['memory_ratio'], '{:.2g}')} |")
    return lines + [""]


# ---------------------------------------------------------------------------------------------------- markdown
PLUS_MINUS = ("± in the tables = sample standard deviation (ddof = 1) over the images and seeds of a row; in paired "
              "comparisons = standard error of the mean paired difference.")


def render(out, plan: Dict[str, Any], records: Dict[str, Dict[str, Any]], tables, figs: Dict[str, List[Path]],
           link_base: Path, level: int = 1, kept: Optional[Dict[str, str]] = None,
           partial: Optional[str] = None) -> str:
    """The report body (markdown); figure links relative to ``link_base``; headings start at ``level``;
    ``partial``: a banner saying the result set is incomplete."""
    from .machine import summary

    h = "#" * level
    suite = plan["suite"]
    recs = list(records.values())
    ok = sum(r.get("status") == "ok" for r in recs)
    failed = [r for r in recs if r.get("status") == "failed"]
    pending = len(plan["items"]) - len(recs)
    hardware = sorted({r.get("hardware", r.get("device", "?")) for r in recs})
    loads = [r["load_average"][0] for r in recs if r.get("load_average")]
    dates = sorted(r["finished_at"] for r in recs if r.get("finished_at"))
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    val_ids = {t["id"] for t in suite["tasks"] if t.get("split", "test") != "test"}
    lines = [f"{h} Benchmark suite `{suite['name']}`", ""]
    if partial:
        lines += [f"**PARTIAL RESULTS:** {partial}", ""]
    if suite.get("description"):
        lines += [suite["description"].strip(), ""]
    lines += [
        f"- Reproduce: `{plan['command']}` (resumable; shard it with `--shards N --shard-index i` then "
        f"`{plan['command']} action=report`, or run it under `torchrun --nproc_per_node N -m invsolve.cli evaluate …`)",
        f"- Hardware of the items: {'; '.join(hardware) or 'n/a'}"
        + (f"; 1-minute load average when items finished {min(loads):.1f}–{max(loads):.1f}" if loads else ""),
    ]
    if plan.get("machine"):
        lines.append(f"- Planned on: {summary(plan['machine'])}")
    lines += [
        f"- Measured: {dates[0][:10] + ' to ' + dates[-1][:10] if dates else 'n/a'}; generated {now}; "
        f"invsolve {plan.get('invsolve', '?')}, torch {plan.get('torch', '?')}",
        f"- Items: {len(plan['items'])} planned = {ok} ok + {len(failed)} failed + {pending} pending; "
        f"seeds {suite['seeds']}, {suite['num_samples']} sample(s) per item (unless a method sets its own)"
        + (f"; validation (tuning) tasks {', '.join(sorted(val_ids))} are never reported as test results"
           if val_ids else ""),
        "- Metrics: mean ± std over images and seeds (" + PLUS_MINUS.split(" = ", 1)[1].split(";")[0] + "); "
        "PSNR/SSIM (scikit-image) on magnitudes with the task's data "
        "range (default: each truth's peak); LPIPS (AlexNet) only where its weights exist; rel. L2 = ‖x−x*‖/‖x*‖; "
        "‖Ax−y‖/‖y‖ = data consistency; NFE = batched network calls per image (the samples of num_samples > 1 "
        "share them); time = sampler wall time per image (prior loading excluded); peak mem = "
        "CUDA peak allocated or CPU resident-set growth"
        + (" (methods run in their own process: `isolate`)" if suite.get("isolate")
           or any(m.get("isolate") for m in suite["methods"]) else "")
        + ". Knobs: what the method sets that differs from the sampler's registered defaults ((tuned): chosen on the "
        "validation tasks), the steps it ran, and the prior's preset that set the rest (invsolve/presets/). "
        "Bold: best mean per quality column.",
        "",
    ]
    for t in suite["tasks"]:
        tid = t["id"]
        if tid in val_ids:
            continue
        info = plan["tasks"][tid]
        lines += [f"{h}# {tid}", "", _task_line(plan, t), ""]
        if info["status"] != "ok":
            lines += [f"**Unavailable:** {info['reason']}", ""]
            continue
        rows = tables.get(tid) or []
        if rows:
            lines += [markdown_table(rows), ""]
            notes = sorted({n for r in rows for n in r.get("lpips_note", [])})
            if notes and all(r["lpips"] is None for r in rows):
                lines += [f"LPIPS: {'; '.join(notes)}", ""]
        else:
            lines += ["No method applies to this task.", ""]
        for p in figs.get(tid, []):
            lines += [f"![{p.stem}]({os.path.relpath(p, link_base)})", ""]
        if kept and tid in kept:
            lines += [f"*{kept[tid][0].upper()}{kept[tid][1:]}.*", ""]
    lines += _compare_md(h, comparisons(plan, records))
    tuning = tuning_rows(plan, records)
    val_tables = [(t, tables.get(t["id"])) for t in suite["tasks"] if t["id"] in val_ids and tables.get(t["id"])]
    if tuning or val_tables:
        lines += [f"{h}# Validation (tuning; never reported as test results)", ""]
        for t in suite["tasks"]:
            if t["id"] in val_ids:
                lines.append(f"- `{t['id']}` (family `{t.get('family', t['task'])}`): {_task_line(plan, t)}")
        lines.append("")
        lines += _tuning_md(h, tuning)
        for t, rows in val_tables:
            lines += [f"{h}## Reference runs on `{t['id']}`", "", markdown_table(rows), ""]
    na = [(k, v["reason"]) for k, v in plan["pairs"].items() if v["status"] == "n/a"]
    if na:
        lines += [f"{h}# Pairs that do not apply (skipped)", ""] + [f"- `{k}`: {r}" for k, r in na] + [""]
    unavailable = [(f"task `{k}`", v["reason"]) for k, v in plan["tasks"].items() if v["status"] != "ok"]
    unavailable += [(f"method `{k}`", v["reason"]) for k, v in plan["methods"].items() if v["status"] != "ok"
                    and "variant_of" not in v]
    if unavailable:
        lines += [f"{h}# Unavailable in this build (rerun the suite when they exist: finished items are kept)", ""]
        lines += [f"- {k}: {r}" for k, r in unavailable] + [""]
    if failed:
        lines += [f"{h}# Failed items", ""] + [f"- `{r['key']}`: {r['error']}" for r in failed] + [""]
    if pending:
        miss = [k for k in plan["items"] if k not in records]
        lines += [f"{h}# Pending items ({pending})", "", ", ".join(f"`{k}`" for k in miss[:40])
                  + (" …" if len(miss) > 40 else ""), ""]
    return "\n".join(lines).rstrip() + "\n"


BENCHMARKS_HEADER = (
    "# Benchmarks\n\n"
    "Measured tables, generated from result files only, never typed by hand: each `suite:NAME` section by "
    "`invsolve evaluate configs/bench/NAME.yaml` (the harness report, from the suite's per-item result files under "
    "`results/NAME/`), each other section by the script in `benchmarks/` that names it, from its result JSON under "
    "`benchmarks/results/`. A section is replaced in place, only from a complete result set unless forced; everything "
    "outside the markers is kept.\n\n"
    f"{PLUS_MINUS}\n")


def update_section(path, begin: str, end: str, body: str) -> Path:
    """The one writer of BENCHMARKS.md: replace (or append) the block between the ``begin`` and ``end`` marker
    lines with ``body`` and keep everything else; the block ``<!-- header:begin/end -->`` at the top is
    :data:`BENCHMARKS_HEADER` (it states what "±" means)."""
    from .datasets import write_atomic

    path = Path(path)
    text = path.read_text() if path.is_file() else ""
    head = f"{HEADER_BEGIN}\n{BENCHMARKS_HEADER.rstrip()}\n{HEADER_END}"
    text = _replace_block(text, HEADER_BEGIN, HEADER_END, head, at_top=True)
    text = _replace_block(text, begin, end, f"{begin}\n{body.rstrip()}\n{end}")
    return write_atomic(path, lambda t: t.write_text(text))


HEADER_BEGIN, HEADER_END = "<!-- header:begin -->", "<!-- header:end -->"


def _replace_block(text: str, begin: str, end: str, block: str, at_top: bool = False) -> str:
    if begin in text and end in text and text.index(begin) < text.index(end):
        return text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    if at_top:
        return block + "\n" + ("\n" + text.lstrip() if text.strip() else "")
    return text.rstrip() + "\n\n" + block + "\n"


def update_benchmarks(path, suite_name: str, body: str) -> Path:
    """Replace (or append) the section between ``<!-- suite:NAME:begin -->`` and ``<!-- suite:NAME:end -->``."""
    return update_section(path, f"<!-- suite:{suite_name}:begin -->", f"<!-- suite:{suite_name}:end -->",
                          "<!-- generated by invsolve.eval.report from the result files; do not edit by hand -->\n"
                          + body)


def write_report(out, benchmarks: Optional[str] = None, force: bool = False, plan_path=None) -> Path:
    """Write ``results.csv``, ``table.csv``, ``tuned.yaml``, figures and ``report.md`` from the files under ``out``;
    with ``benchmarks`` (a path such as ``BENCHMARKS.md``) also regenerate this suite's section there.

    Nothing measured is destroyed by a report from a partial result set (planned items without a current result,
    e.g. a fresh clone or a copy of some result files): unless ``force``, everything goes to ``out/partial/``
    (no figures) with a banner naming what is missing, and the existing report, tables, figures and BENCHMARKS.md
    are left byte-identical. ``plan_path``: the plan to report (default ``out/plan.json``). Returns the report path.
    """
    from . import tune
    from .datasets import write_atomic

    out = Path(out)
    plan = json.loads(Path(plan_path).read_text()) if plan_path is not None else load_plan(out)
    records = collect(out, plan)
    missing = [k for k in plan["items"] if k not in records]
    partial = None
    if missing:
        partial = (f"{len(missing)} of {len(plan['items'])} planned items have no current result (e.g. "
                   f"`{missing[0]}`; all listed under Pending items)")
    dest = out / "partial" if partial and not force else out
    tables = summarize(plan, records)
    write_csv(dest, plan, records, tables)
    kept: Dict[str, str] = {}
    figs = figures(out, plan, records, kept) if dest == out else {}
    if dest != out:
        partial += ("; this partial report is written to partial/ and leaves report.md, the tables, figures and "
                    "BENCHMARKS.md unchanged (force it with --force or force_report=true); no figures drawn")
    tuning = tuning_rows(plan, records)
    entries = tuned_entries(plan, tuning, out)
    if entries:
        write_atomic(dest / "tuned.yaml", lambda t: t.write_text(tune.dump_documents(
            tune.tuned_documents(entries), header=f"Tuned by `{plan['command']}` on the suite's validation tasks "
                                                  f"(see report.md). Merge into invsolve/presets/ with:\n"
                                                  f"{plan['command']} action=export-presets [--overwrite]")))
    report = write_atomic(dest / "report.md", lambda t: t.write_text(
        render(out, plan, records, tables, figs, dest, kept=kept, partial=partial)))
    if benchmarks and dest == out:
        bpath = Path(benchmarks)
        update_benchmarks(bpath, plan["suite"]["name"], render(out, plan, records, tables, figs,
                                                               bpath.resolve().parent, level=2, kept=kept,
                                                               partial=partial))
    return report
