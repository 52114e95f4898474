"""Benchmark reports built only from a suite's files (``plan.json``, ``items/**.json``, ``cache/*.pt``).

:func:`write_report` writes into the suite's output directory:

* ``results.csv``: one row per item (metrics, cost, status, error);
* ``table.csv`` and ``report.md``: per task, one row per method with mean ± std over images and seeds (best mean
  per quality column in bold), then the pairs that do not apply, unavailable tasks/methods, failures, pending items;
* ``figures/<task>.png``: truth | Aᴴy | each method, with error maps below; ``figures/<task>_std.png``: per-pixel
  posterior standard deviation when the suite draws ``num_samples > 1``;
* optionally a section of ``BENCHMARKS.md`` between ``<!-- suite:NAME:begin -->`` and ``<!-- suite:NAME:end -->``
  (other sections are kept), with the command that reproduces it, the hardware and the dates.

Running it twice on the same files gives the same tables: it is the merge step of a sharded run.
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
ITEM_COLUMNS = ["task", "method", "sampler", "image", "name", "seed", "status", "psnr", "ssim", "lpips",
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
            row: Dict[str, Any] = {"task": t["id"], "method": m["id"], "sampler": m["sampler"], "planned": len(keys),
                                   "ok": len(ok), "failed": sum(r.get("status") == "failed" for r in recs)}
            notes = set()
            for key, *_ in METRICS:
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


def markdown_table(rows: List[Dict[str, Any]]) -> str:
    """Markdown table of :func:`summarize` rows; best mean per quality column in bold (ties all bold)."""
    head = ["method", "sampler", "n"] + [title for _, title, _, _ in METRICS] + ["NFE", "time (s)", "peak mem (MiB)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * (len(head) - 3)) + "|"]
    best = {key: _best(rows, key, d) for key, _, d, _ in METRICS}
    for r in rows:
        waiting = r["planned"] - r["ok"] - r["failed"]
        n = f"{r['ok']}/{r['planned']}" + (f" ({r['failed']} failed)" if r["failed"] else "") + \
            (f" ({waiting} pending)" if waiting else "")
        cells = [r["method"], r["sampler"], n]
        for key, _, _, fmt in METRICS:
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
        if r is None:
            w.writerow({"task": task, "method": method, "status": "pending",
                        "image": int(stem[1:4]), "seed": int(stem.split("_s")[1])})
            continue
        m = r.get("metrics", {})
        row = {k: r.get(k) for k in ("task", "method", "sampler", "image", "name", "seed", "status", "nfe", "seconds",
                                     "device", "hardware", "finished_at", "error")}
        row.update({k: m.get(k) for k in ("psnr", "ssim", "relative_l2", "dc_residual")})
        row["lpips"] = _num(m.get("lpips"))
        row["lpips_note"] = None if row["lpips"] is not None or not m else m.get("lpips")
        row["peak_memory_mib"] = None if _num(r.get("peak_memory")) is None else r["peak_memory"] / 2**20
        w.writerow(row)
    results = write_atomic(Path(out) / "results.csv", lambda t: t.write_text(buf.getvalue()))

    buf = io.StringIO()
    cols = ["task", "method", "sampler", "planned", "ok", "failed"]
    stat_keys = [k for k, *_ in METRICS] + ["nfe", "seconds", "peak_memory_mib"]
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
    given = ", ".join(f"{k}={v}" for k, v in t.items() if k not in ("id", "task"))
    info = plan["tasks"][t["id"]]
    names = info.get("names") or []
    shown = ", ".join(names[:8]) + (f", … ({len(names)} images)" if len(names) > 8 else "")
    return f"task `{t['task']}` ({given or 'defaults'}); images: {shown or 'n/a'}"


def render(out, plan: Dict[str, Any], records: Dict[str, Dict[str, Any]], tables, figs: Dict[str, List[Path]],
           link_base: Path, level: int = 1, kept: Optional[Dict[str, str]] = None) -> str:
    """The report body (markdown); figure links relative to ``link_base``; headings start at ``level``."""
    h = "#" * level
    suite = plan["suite"]
    recs = list(records.values())
    ok = sum(r.get("status") == "ok" for r in recs)
    failed = [r for r in recs if r.get("status") == "failed"]
    pending = len(plan["items"]) - len(recs)
    hardware = sorted({r.get("hardware", r.get("device", "?")) for r in recs})
    dates = sorted(r["finished_at"] for r in recs if r.get("finished_at"))
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"{h} Benchmark suite `{suite['name']}`", ""]
    if suite.get("description"):
        lines += [suite["description"].strip(), ""]
    lines += [
        f"- Reproduce: `{plan['command']}` (resumable; shard it with `--shards N --shard-index i` then "
        f"`{plan['command']} action=report`, or run it under `torchrun --nproc_per_node N -m invsolve.cli evaluate …`)",
        f"- Hardware: {'; '.join(hardware) or 'n/a'}",
        f"- Measured: {dates[0][:10] + ' to ' + dates[-1][:10] if dates else 'n/a'}; generated {now}; "
        f"invsolve {plan.get('invsolve', '?')}, torch {plan.get('torch', '?')}",
        f"- Items: {len(plan['items'])} planned = {ok} ok + {len(failed)} failed + {pending} pending; "
        f"seeds {suite['seeds']}, {suite['num_samples']} sample(s) per item",
        "- Metrics: mean ± std over images and seeds; PSNR/SSIM (scikit-image) on magnitudes with the task's data "
        "range (default: each truth's peak); LPIPS (AlexNet) only where its weights exist; rel. L2 = ‖x−x*‖/‖x*‖; "
        "‖Ax−y‖/‖y‖ = data consistency; time = sampler wall time per image (prior loading excluded); peak mem = "
        "CUDA peak allocated or CPU resident-set growth. Bold: best mean per quality column.",
        "",
    ]
    for t in suite["tasks"]:
        tid = t["id"]
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
    na = [(k, v["reason"]) for k, v in plan["pairs"].items() if v["status"] == "n/a"]
    if na:
        lines += [f"{h}# Pairs that do not apply (skipped)", ""] + [f"- `{k}`: {r}" for k, r in na] + [""]
    unavailable = [(f"task `{k}`", v["reason"]) for k, v in plan["tasks"].items() if v["status"] != "ok"]
    unavailable += [(f"method `{k}`", v["reason"]) for k, v in plan["methods"].items() if v["status"] != "ok"]
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


def update_benchmarks(path, suite_name: str, body: str) -> Path:
    """Replace (or append) the section between ``<!-- suite:NAME:begin -->`` and ``<!-- suite:NAME:end -->``."""
    from .datasets import write_atomic

    path = Path(path)
    begin, end = f"<!-- suite:{suite_name}:begin -->", f"<!-- suite:{suite_name}:end -->"
    block = f"{begin}\n<!-- generated by invsolve.eval.report from the result files; do not edit by hand -->\n" \
            f"{body}{end}"
    text = path.read_text() if path.is_file() else (
        "# Benchmarks\n\nMeasured tables generated by `invsolve evaluate` from per-item result files (never typed by "
        "hand). Each suite's section is rewritten in place; everything outside the markers is kept.\n")
    if begin in text and end in text and text.index(begin) < text.index(end):
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    return write_atomic(path, lambda t: t.write_text(text))


def write_report(out, benchmarks: Optional[str] = None) -> Path:
    """Write ``results.csv``, ``table.csv``, figures and ``report.md`` from the files under ``out``; with
    ``benchmarks`` (a path such as ``BENCHMARKS.md``) also regenerate this suite's section there."""
    from .datasets import write_atomic

    out = Path(out)
    plan = load_plan(out)
    records = collect(out, plan)
    tables = summarize(plan, records)
    write_csv(out, plan, records, tables)
    kept: Dict[str, str] = {}
    figs = figures(out, plan, records, kept)
    report = write_atomic(out / "report.md",
                          lambda t: t.write_text(render(out, plan, records, tables, figs, out, kept=kept)))
    if benchmarks:
        bpath = Path(benchmarks)
        update_benchmarks(bpath, plan["suite"]["name"],
                          render(out, plan, records, tables, figs, bpath.resolve().parent, level=2, kept=kept))
    return report
