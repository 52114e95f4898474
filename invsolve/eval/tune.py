"""Tuning on validation tasks: grids of sampler knobs, the choice, tuned presets and their export.

A suite method with ``tune:`` runs every point of its grid on the suite's *validation* tasks (``split:
validation``) of a task family; the point with the best mean score becomes the method's knobs on the test tasks of
that family (and so part of their configuration hash). The grid is

* a mapping ``knob -> list of values``: the Cartesian product, in the order written (``{scale: [0.3, 1, 3]}``);
* or a list of mappings: exactly those points (``[{gamma: 10}, {dc: normal, cg_iters: 100}]``).

Choice (:func:`choose`): the highest mean of the tuning metric (PSNR by default; ``relative_l2`` is minimised)
over every validation item of the point (tasks × images × seeds); a point with a failed or missing item is not
eligible. Means that agree to the metric's reported precision (0.01 dB, 1e-4 otherwise) are ties, won by the
cheaper point (fewer network evaluations on average), then by the first in grid order.

The choices are written to the suite's output directory as ``tuned.yaml`` (one YAML document per prior, each in the
preset format of ``invsolve/presets/<prior>.yaml``), never into the package. :func:`export_presets` is the separate,
explicit step (``invsolve evaluate SUITE action=export-presets [--overwrite]``) that merges them into
``invsolve/presets/`` of a source checkout.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..errors import InvsolveError

# metric -> (direction: +1 maximise / -1 minimise, precision that separates two means)
METRICS = {"psnr": (+1, 0.01), "ssim": (+1, 1e-4), "relative_l2": (-1, 1e-4), "lpips": (-1, 1e-4)}
NOISE = ("noiseless", "noisy", "any")


def grid_points(grid, where: str) -> List[Dict[str, Any]]:
    """The points of a ``tune:`` grid (see the module docstring); raises :class:`InvsolveError` on a bad grid."""
    if isinstance(grid, dict):
        if not grid:
            raise InvsolveError(f"{where}: tune grid is empty; give knob: [values, ...]")
        lists = []
        for k, v in grid.items():
            vals = list(v) if isinstance(v, (list, tuple)) else [v]
            if not vals:
                raise InvsolveError(f"{where}: tune grid knob {k!r} has no values")
            lists.append([(k, x) for x in vals])
        return [dict(p) for p in itertools.product(*lists)]
    if isinstance(grid, (list, tuple)) and grid and all(isinstance(p, dict) for p in grid):
        return [dict(p) for p in grid]
    raise InvsolveError(f"{where}: tune must be a mapping knob -> [values] or a list of knob mappings, got {grid!r}")


def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def point_label(point: Dict[str, Any]) -> str:
    """``"dc=normal, cg_iters=100"`` (``"defaults"`` for the empty point)."""
    return ", ".join(f"{k}={_fmt(v)}" for k, v in point.items()) or "defaults"


def variant_id(method: str, point: Dict[str, Any]) -> str:
    """Method id of one grid point, used as its directory name: ``dps~scale=0.3``; long or unusual labels become
    ``dps~t<hash>``."""
    slug = "_".join(f"{k}={_fmt(v)}" for k, v in point.items()) or "defaults"
    if len(slug) > 48 or not re.fullmatch(r"[A-Za-z0-9_=.+-]+", slug):
        slug = "t" + hashlib.sha256(json.dumps(point, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"{method}~{slug}"


def score_points(points: Sequence[Dict[str, Any]], records: Sequence[Sequence[Optional[dict]]],
                 metric: str = "psnr") -> List[Dict[str, Any]]:
    """Per grid point: ``{"point", "label", "planned", "ok", "failed", "mean", "ssim", "nfe", "seconds"}`` from its
    validation records (``records[i]``: one entry per planned item, ``None`` when it has no current result)."""
    import numpy as np

    rows = []
    for p, recs in zip(points, records):
        ok = [r for r in recs if r is not None and r.get("status") == "ok"]

        def mean(key, src=ok):
            vals = [r["metrics"].get(key) if key in r.get("metrics", {}) else r.get(key) for r in src]
            vals = [float(v) for v in vals if isinstance(v, (int, float)) and not isinstance(v, bool)]
            return float(np.mean(vals)) if vals else None

        rows.append({"point": dict(p), "label": point_label(p), "planned": len(recs), "ok": len(ok),
                     "failed": sum(r is not None and r.get("status") == "failed" for r in recs),
                     "mean": mean(metric), "psnr": mean("psnr"), "ssim": mean("ssim"), "nfe": mean("nfe"),
                     "seconds": mean("seconds")})
    return rows


def choose(rows: Sequence[Dict[str, Any]], metric: str = "psnr") -> Optional[int]:
    """Index of the chosen grid point of :func:`score_points`' rows, or ``None`` while any item has no result or no
    point is eligible (every item ok)."""
    if metric not in METRICS:
        raise InvsolveError(f"tune_metric must be one of {sorted(METRICS)}, got {metric!r}")
    if any(r["ok"] + r["failed"] < r["planned"] for r in rows):
        return None
    direction, eps = METRICS[metric]
    eligible = [i for i, r in enumerate(rows) if r["ok"] == r["planned"] > 0 and r["mean"] is not None]
    if not eligible:
        return None
    best = max(direction * rows[i]["mean"] for i in eligible)
    ties = [i for i in eligible if direction * rows[i]["mean"] >= best - eps / 2]
    return min(ties, key=lambda i: (rows[i]["nfe"] or 0.0, i))


# ----------------------------------------------------------------------------------------------- presets
def noise_label(sigmas: Sequence[float]) -> str:
    """``noiseless`` when every validation task is noiseless, ``noisy`` when every one is noisy, else ``any``."""
    s = [float(v or 0.0) for v in sigmas]
    if all(v == 0 for v in s):
        return "noiseless"
    if all(v > 0 for v in s):
        return "noisy"
    return "any"


def preset_id(family: str, method: str, noise: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", f"{family}-{method}-{noise}").strip("-")


def tuned_documents(entries: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Group preset entries (each with a ``prior`` key) into one ``{"prior", "presets"}`` document per prior."""
    docs: Dict[str, Dict[str, Any]] = {}
    for e in entries:
        e = dict(e)
        prior = e.pop("prior")
        docs.setdefault(prior, {"prior": prior, "presets": []})["presets"].append(e)
    return list(docs.values())


def dump_documents(docs: Sequence[Dict[str, Any]], header: str = "") -> str:
    import yaml

    body = "---\n".join(yaml.safe_dump(_plain(d), sort_keys=False, allow_unicode=True, width=200) for d in docs)
    return "".join(f"# {ln}\n" if ln else "#\n" for ln in header.splitlines()) + body


def _plain(x):
    """YAML-safe copy (tuples -> lists, numpy scalars -> Python)."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        return x.item()
    return x


def read_documents(path) -> List[Dict[str, Any]]:
    """The preset documents of a ``tuned.yaml`` (or a package preset file)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise InvsolveError(f"{p} not found: run the suite (its validation tasks and tune grids) first")
    docs = [d for d in yaml.safe_load_all(p.read_text()) if d is not None]
    for d in docs:
        if not isinstance(d, dict) or not isinstance(d.get("prior"), str) or not isinstance(d.get("presets"), list):
            raise InvsolveError(f"{p}: every document must have 'prior' (a name) and 'presets' (a list)")
        for e in d["presets"]:
            missing = [k for k in ("id", "task", "sampler", "noise", "knobs") if k not in e]
            if missing or e.get("noise") not in NOISE:
                raise InvsolveError(f"{p}: preset {e.get('id')!r} of prior {d['prior']!r} needs id, task, sampler, "
                                    f"noise (one of {', '.join(NOISE)}) and knobs; missing {missing}")
    return docs


def source_checkout() -> Path:
    """``invsolve/`` of a source checkout (a ``pyproject.toml`` naming invsolve beside it, not in site-packages);
    raises :class:`InvsolveError` otherwise: an installed package is never written to."""
    import invsolve

    pkg = Path(invsolve.__file__).resolve().parent
    pyproject = pkg.parent / "pyproject.toml"
    installed = any(part in ("site-packages", "dist-packages") for part in pkg.parts)
    if installed or not pyproject.is_file() or not re.search(r'(?m)^name\s*=\s*"invsolve"', pyproject.read_text()):
        raise InvsolveError(f"export-presets writes into the source tree of invsolve, but {pkg} is not a source "
                            f"checkout (no pyproject.toml naming invsolve beside it); run it from a git clone "
                            f"installed with `pip install -e .`")
    return pkg


def export_presets(tuned_path, overwrite: bool = False, presets_dir=None, ids: Optional[Sequence[str]] = None
                   ) -> List[Path]:
    """Merge the presets of ``tuned_path`` (only those in ``ids`` if given) into ``presets_dir`` (default:
    ``invsolve/presets/`` of this source checkout), one ``<prior>.yaml`` per prior; returns the files written.

    Refuses, before writing anything: two exported presets with the same lookup key (prior, task, sampler, noise),
    which ``find`` could not tell apart (choose with ``ids``); a preset whose id already exists in the target file,
    or another preset there for the same (task, sampler, noise), unless ``overwrite`` (then those are replaced).
    """
    from .datasets import write_atomic

    docs = read_documents(tuned_path)
    if ids is not None:
        known = {e["id"] for d in docs for e in d["presets"]}
        unknown = sorted(set(ids) - known)
        if unknown:
            raise InvsolveError(f"export_ids names preset(s) {unknown} that {tuned_path} does not have; it has "
                                f"{sorted(known)}")
        docs = [{**d, "presets": [e for e in d["presets"] if e["id"] in ids]} for d in docs]
        docs = [d for d in docs if d["presets"]]
    for d in docs:
        seen: Dict[Tuple[str, str, str], str] = {}
        for e in d["presets"]:
            key = (e["task"], e["sampler"], e["noise"])
            if key in seen:
                raise InvsolveError(f"presets {seen[key]!r} and {e['id']!r} of prior {d['prior']!r} have the same "
                                    f"lookup key (task {key[0]}, sampler {key[1]}, noise {key[2]}); export one of "
                                    f"them with export_ids=[...]")
            seen[key] = e["id"]
    target = Path(presets_dir) if presets_dir is not None else source_checkout() / "presets"
    plans: List[Tuple[Path, Dict[str, Any]]] = []
    conflicts = []
    for d in docs:
        path = target / f"{d['prior']}.yaml"
        old = read_documents(path)[0] if path.is_file() else {"prior": d["prior"], "presets": []}
        kept = []
        for e in old["presets"]:
            clash = [n["id"] for n in d["presets"] if n["id"] == e["id"]
                     or (n["task"], n["sampler"], n["noise"]) == (e["task"], e["sampler"], e["noise"])]
            if clash:
                conflicts.append(f"{path.name}: {e['id']!r} (replaced by {clash[0]!r})")
                continue
            kept.append(e)
        plans.append((path, {"prior": d["prior"], "presets": kept + list(d["presets"])}))
    if conflicts and not overwrite:
        raise InvsolveError("export-presets would replace existing preset(s) " + "; ".join(conflicts) +
                            "; pass --overwrite to replace them")
    written = []
    for path, doc in plans:
        text = dump_documents([doc], header=f"Tuned presets of prior {doc['prior']!r} (merged by `invsolve evaluate "
                                            f"SUITE action=export-presets` from {Path(tuned_path).as_posix()}).")
        written.append(write_atomic(path, lambda t, s=text: Path(t).write_text(s)))
    return written
