"""``invsolve evaluate SUITE [key=value ...]``: run a benchmark suite, resumable and sharded.

A suite (YAML) is a grid of tasks × methods × images × seeds::

    name: core                          # also the default output_dir: results/<name>
    description: ...
    output_dir: results/core
    tasks:                              # problem options as in `invsolve reconstruct`'s problem: section
      - {id: mri-4x, task: mri, acceleration: 4, index: [0, 5, 10, 15]}
    methods:                            # one sampler configuration each
      - {id: dds, sampler: dds, steps: 50, options: {gamma: 10}}
      - {id: dps, sampler: dps, steps: 200, max_images: 2}     # only the first 2 images of each task
      - {id: fbp, sampler: fbp, tasks: [ct-sparse]}            # only these tasks
      - {id: dps, sampler: dps, options: {scale: 0.5}, task_options: {mri-4x: {scale: 1.0}}}  # per-task options
    seeds: [0]
    num_samples: 1                      # > 1: posterior samples, the mean is scored, uncertainty maps are saved
    device: null                        # null: CUDA when available
    threads: null                       # torch CPU threads (null: leave as is)
    lpips: true                         # LPIPS where its weights are on disk, else reported as unavailable
    figures: 3                          # images per figure grid (0: none)
    benchmarks: null                    # e.g. BENCHMARKS.md: regenerate this suite's section there
    retry_failed: false                 # rerun items whose result says "failed"
    compare: [[dds, dps]]               # paired comparisons (per image and seed): mean difference ± SE, t-test
    isolate: false                      # true: each method's items run in a fresh process (CPU peak memory)
    force_report: false                 # true (or --force): report a partial result set into report.md
    action: run                         # run | report (only rebuild tables/figures) | export-presets
    export_ids: null                    # export-presets: only these preset ids of tuned.yaml (default: all)

A task entry with ``whole: true`` is one item (image 0) made of the whole batch, e.g. a volume whose slices
``dds-3d`` reconstructs together; its metrics are means over the slices plus the z-metrics of
:mod:`invsolve.eval.metrics`.

Validation and tuning. A task entry with ``split: validation`` is never reported as a test result; ``family``
(default: the task name) groups it with the test tasks it tunes for. A method's ``tune:`` grid (``{knob: [values]}``
for the Cartesian product, or a list of knob mappings; ``task_tune: {family: grid}`` per family) runs every point
on the family's validation tasks (``tune_max_images``: the first n images); the point with the best mean
``tune_metric`` (``psnr``; ``relative_l2`` is minimised) becomes the method's knobs on the family's test tasks and
so part of their configuration hash (:mod:`invsolve.eval.tune`). ``knobs_from: other`` takes another method's
chosen point (then this method's own options). A method may set its own ``seeds`` and ``num_samples``. The report
writes ``tuned.yaml`` (the choices in the preset format) to the output directory; ``action=export-presets``
(``--overwrite`` to replace) merges it into ``invsolve/presets/`` of a source checkout.

Overrides address list entries by id: ``methods.dds.steps=20``, ``tasks.mri-4x.index=[0]``, ``seeds=[0,1]``.

One *item* is (task, method, image, seed). Its result is ``items/<task>/<method>/i<image>_s<seed>.json`` (metrics,
cost, config; status ``ok`` or ``failed`` with the error) plus the reconstruction ``.npy`` beside it, each written
atomically, so a killed run resumes where it stopped and never leaves half-written results. A result is current
while its task's *content* hash (measurements, truth, item names) and its method's configuration hash match: a new
task option whose default leaves the measurements unchanged keeps finished results (older results keyed by the
options hash are relabelled), a change that alters the measurements or the method re-runs them. Items are assigned
to shards round-robin over the suite's item list (``--shards N --shard-index i``, or ``RANK`` / ``WORLD_SIZE`` under
``torchrun``, which also waits for every rank and lets rank 0 write the report). Problems (with their simulated
measurements) are built once and cached in ``cache/<task>.pt`` so every method and shard sees identical ``y``. A
(task, method) pair that cannot work (linear-only sampler on a nonlinear operator, a prior of the wrong domain or
size, a missing prior) is skipped and listed; tasks or samplers not registered in this build are reported as
unavailable. Tables, figures and ``report.md`` come from :mod:`invsolve.eval.report`; a report from a partial result
set (items without a current result, e.g. a fresh clone) goes to ``partial/`` and changes nothing else unless forced.
``plan.json`` and the report header describe the machine (:mod:`invsolve.eval.machine`); every item records its
hardware, process, load average and prior revision.
"""
from __future__ import annotations

import copy
import json
import os
import platform
import re
import shlex
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch

from .._json import json_safe
from ..errors import InvsolveError, UnknownNameError
from . import datasets
from .machine import hardware, load_average

SUITE_DEFAULTS: Dict[str, Any] = dict(name=None, description="", output_dir=None, tasks=[], methods=[], seeds=[0],
                                      num_samples=1, device=None, threads=None, lpips=True, figures=3,
                                      benchmarks=None, retry_failed=False, action="run", compare=[], isolate=False,
                                      force_report=False, overwrite=False, export_ids=None)
METHOD_DEFAULTS: Dict[str, Any] = dict(id=None, sampler=None, prior=None, steps=None, options={}, task_options={},
                                       tasks=None, max_images=None, data_scale="auto", preset=None, tune=None,
                                       task_tune={},
                                       tune_metric="psnr", tune_max_images=None, knobs_from=None, seeds=None,
                                       num_samples=None, isolate=None)
TASK_KEYS = ("id", "task", "split", "family", "whole")  # the other keys of a task entry are problem options
ACTIONS = ("run", "report", "export-presets")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_+-]*$")


# ---------------------------------------------------------------------------------------------------- suite
def _parse_value(text: str):
    import yaml

    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text


def _apply_override(suite: Dict[str, Any], override: str):
    """Apply ``a.b.c=value``; under ``tasks`` / ``methods`` the component after the list name is an entry id."""
    if "=" not in override:
        raise InvsolveError(f"overrides must look like key=value, got {override!r}")
    path, value = override.split("=", 1)
    parts = path.strip().split(".")
    node: Any = suite
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            match = [e for e in node if isinstance(e, dict) and e.get("id") == part]
            if not match:
                ids = [e.get("id") for e in node if isinstance(e, dict)]
                raise UnknownNameError(f"override {override!r}: no entry with id {part!r} in "
                                       f"{'.'.join(parts[:i])}; ids: {ids}")
            node = match[0]
        else:
            if part not in node or node[part] is None:
                node[part] = {}
            node = node[part]
    if isinstance(node, list):
        raise InvsolveError(f"override {override!r}: address an entry by id, e.g. {path}.<id>.<key>=...")
    node[parts[-1]] = _parse_value(value)


def _check_id(kind: str, entry: Dict[str, Any], seen: set) -> str:
    i = entry.get("id")
    if not isinstance(i, str) or not _ID.match(i):
        raise InvsolveError(f"every {kind} needs an id of letters, digits, '_', '+', '-' (got {i!r})")
    if i in seen:
        raise InvsolveError(f"duplicate {kind} id {i!r}")
    seen.add(i)
    return i


def load_suite(path, overrides: Sequence[str] = ()) -> Dict[str, Any]:
    """Read a suite YAML, apply overrides, fill defaults and validate; returns a plain dict.

    Unknown top-level or method keys raise :class:`UnknownNameError` naming them; task keys other than ``id`` and
    ``task`` are problem options, checked against the task's options when the task is registered.
    """
    from omegaconf import OmegaConf

    p = Path(path)
    if not p.is_file():
        raise InvsolveError(f"suite file {str(path)!r} not found")
    raw = OmegaConf.to_container(OmegaConf.load(p), resolve=False)
    if not isinstance(raw, dict):
        raise InvsolveError(f"suite {path} must be a mapping with keys {sorted(SUITE_DEFAULTS)}")
    for o in overrides:
        _apply_override(raw, o)
    unknown = sorted(set(raw) - set(SUITE_DEFAULTS))
    if unknown:
        raise UnknownNameError(f"unknown suite key(s) {unknown}; valid keys: {', '.join(sorted(SUITE_DEFAULTS))}")
    suite = copy.deepcopy(SUITE_DEFAULTS)
    suite.update(raw)
    suite = OmegaConf.to_container(OmegaConf.create(suite), resolve=True)
    if not isinstance(suite["name"], str) or not _ID.match(suite["name"]):
        raise InvsolveError(f"suite name must be letters, digits, '_', '+', '-', got {suite['name']!r}")
    suite["output_dir"] = suite["output_dir"] or f"results/{suite['name']}"
    if suite["action"] not in ACTIONS:
        raise InvsolveError(f"action must be one of {', '.join(ACTIONS)}, got {suite['action']!r}")
    suite["seeds"] = _seeds(suite["seeds"], "seeds")
    _positive_int(suite["num_samples"], "num_samples")
    seen: set = set()
    families: Dict[str, set] = {"test": set(), "validation": set()}
    for t in suite["tasks"] or []:
        if not isinstance(t, dict) or "task" not in t:
            raise InvsolveError(f"every task entry needs 'id' and 'task' (a registered task name), got {t!r}")
        _check_id("task", t, seen)
        split = t.setdefault("split", "test")
        if split not in families:
            raise InvsolveError(f"task {t['id']!r}: split must be 'test' or 'validation', got {split!r}")
        fam = t.setdefault("family", t["task"])
        if not isinstance(fam, str) or not _ID.match(fam):
            raise InvsolveError(f"task {t['id']!r}: family must be letters, digits, '_', '+', '-', got {fam!r}")
        families[split].add(fam)
    task_ids = set(seen)
    seen = set()
    methods = []
    for m in suite["methods"] or []:
        if not isinstance(m, dict) or "sampler" not in m:
            raise InvsolveError(f"every method entry needs 'id' and 'sampler', got {m!r}")
        _check_id("method", m, seen)
        bad = sorted(set(m) - set(METHOD_DEFAULTS))
        if bad:
            raise UnknownNameError(f"unknown key(s) {bad} in method {m['id']!r}; valid keys: "
                                   f"{', '.join(sorted(METHOD_DEFAULTS))} (sampler options go under 'options')")
        full = copy.deepcopy(METHOD_DEFAULTS)
        full.update(m)
        full["options"] = dict(full["options"] or {})
        full["task_options"] = {k: dict(v or {}) for k, v in (full["task_options"] or {}).items()}
        full["task_tune"] = dict(full["task_tune"] or {})
        methods.append(full)
    method_ids = {m["id"] for m in methods}
    for m in methods:
        bad = sorted(set(m["task_options"]) - task_ids) + sorted(set(m["tasks"] or []) - task_ids)
        if bad:
            raise UnknownNameError(f"method {m['id']!r} names unknown task id(s) {bad}; task ids: {sorted(task_ids)}")
        _check_tuning(m, families["validation"], {k["id"]: k for k in methods})
        if m["seeds"] is not None:
            m["seeds"] = _seeds(m["seeds"], f"methods.{m['id']}.seeds")
        if m["num_samples"] is not None:
            _positive_int(m["num_samples"], f"methods.{m['id']}.num_samples")
    suite["compare"] = _check_compare(suite["compare"], method_ids)
    suite["methods"] = methods
    suite["tasks"] = list(suite["tasks"] or [])
    if not suite["tasks"] or not suite["methods"]:
        raise InvsolveError("a suite needs at least one task and one method")
    return suite


def _seeds(seeds, where: str) -> List[int]:
    seeds = [seeds] if isinstance(seeds, int) and not isinstance(seeds, bool) else seeds
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                                           for s in seeds):
        raise InvsolveError(f"{where} must be a list of non-negative ints, got {seeds!r}")
    return seeds


def _positive_int(v, where: str):
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise InvsolveError(f"{where} must be a positive int, got {v!r}")


def _check_tuning(m: Dict[str, Any], val_families: set, by_id: Dict[str, Dict[str, Any]]):
    """Grids parse, ``task_tune`` names validation families, ``knobs_from`` names a tuned method."""
    from . import tune

    where = f"method {m['id']!r}"
    if m["tune"] is not None:
        tune.grid_points(m["tune"], where)
    for fam, grid in m["task_tune"].items():
        if fam not in val_families:
            raise UnknownNameError(f"{where}: task_tune names {fam!r}, which is no family of a validation task "
                                   f"(split: validation); families with validation tasks: {sorted(val_families)}")
        tune.grid_points(grid, f"{where}, task_tune.{fam}")
    if m["tune_metric"] not in tune.METRICS:
        raise InvsolveError(f"{where}: tune_metric must be one of {sorted(tune.METRICS)}, got {m['tune_metric']!r}")
    src = m["knobs_from"]
    if src is not None:
        if src not in by_id or src == m["id"]:
            raise UnknownNameError(f"{where}: knobs_from={src!r} must name another method of the suite")
        if by_id[src]["tune"] is None and not by_id[src]["task_tune"]:
            raise InvsolveError(f"{where}: knobs_from={src!r} names a method without a tune grid")


def _check_compare(pairs, method_ids: set) -> List[List[str]]:
    pairs = pairs or []
    if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 for p in pairs):
        raise InvsolveError(f"compare must be a list of [method_a, method_b] pairs, got {pairs!r}")
    bad = sorted({x for p in pairs for x in p} - method_ids)
    if bad:
        raise UnknownNameError(f"compare names unknown method id(s) {bad}; method ids: {sorted(method_ids)}")
    return [list(p) for p in pairs]


# ---------------------------------------------------------------------------------------------------- plan
class Item(NamedTuple):
    task: str
    method: str
    image: int
    seed: int

    @property
    def key(self) -> str:
        return f"{self.task}/{self.method}/i{self.image:03d}_s{self.seed}"

    def path(self, out: Path, suffix: str = ".json") -> Path:
        return out / "items" / self.task / self.method / f"i{self.image:03d}_s{self.seed}{suffix}"


@dataclass
class Plan:
    """Everything a process needs to run or report a suite: built problems, priors, the item list."""

    suite: Dict[str, Any]
    out: Path
    device: torch.device
    tasks: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # id -> status, reason, options, hash, names
    methods: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # id -> status, reason, knobs
    pairs: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # "task/method" -> status, reason, hash
    items: List[Item] = field(default_factory=list)
    problems: Dict[str, Any] = field(default_factory=dict)
    priors: Dict[str, Any] = field(default_factory=dict)
    # "method@family" -> the tune grid's validation runs and choice (see invsolve.eval.tune)
    tuning: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    machine: Dict[str, Any] = field(default_factory=dict)  # invsolve.eval.machine.describe() of this process


def _default_device(device, local_rank: Optional[int]) -> torch.device:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None and local_rank is not None:
        dev = torch.device("cuda", local_rank)
    return dev


def _prepare_tasks(plan: Plan, log):
    from ..tasks import get_task

    registered = []
    split = {t["id"]: t.get("split", "test") for t in plan.suite["tasks"]}
    family = {t["id"]: t.get("family", t["task"]) for t in plan.suite["tasks"]}
    whole = {t["id"]: bool(t.get("whole", False)) for t in plan.suite["tasks"]}
    for t in plan.suite["tasks"]:  # validate every entry before building anything
        tid, opts = t["id"], {k: v for k, v in t.items() if k == "task" or k not in TASK_KEYS}
        try:
            spec = get_task(opts["task"])
        except UnknownNameError as e:
            plan.tasks[tid] = {"status": "unavailable", "task": opts["task"], "split": split[tid],
                               "family": family[tid],
                               "reason": f"task {opts['task']!r} is not registered in this build ({e})"}
            log(f"task {tid}: UNAVAILABLE - {plan.tasks[tid]['reason']}")
            continue
        unknown = sorted(set(opts) - {"task"} - set(spec.defaults))
        if unknown:
            raise UnknownNameError(f"unknown problem option(s) {unknown} in task {tid!r} ({opts['task']}); valid: "
                                   f"{', '.join(sorted(spec.defaults))}")
        registered.append((tid, opts))
    for tid, opts in registered:
        full = datasets.problem_options(opts)
        # "hash" (stored in every result) is the problem's content hash once built; "cache_key" keys cache/<tid>.pt
        entry = {"status": "ok", "task": opts["task"], "options": full, "hash": datasets.options_hash(full),
                 "cache_key": datasets.options_hash(full), "split": split[tid], "family": family[tid]}
        try:
            problem, content_hash, before = datasets.cached_problem(opts, plan.out / "cache" / f"{tid}.pt")
        except Exception as e:  # noqa: BLE001 - a task that cannot be built (missing data or extra) is reported
            entry.update(status="unavailable", reason=f"building the problem failed: {type(e).__name__}: {e}")
            log(f"task {tid}: UNAVAILABLE - {entry['reason']}")
        else:
            if "sigma_y" not in vars(problem):  # cached before Problem.sigma_y existed: what the task says now
                problem.sigma_y = datasets._build(opts).sigma_y
            plan.problems[tid] = problem
            entry["hash"] = content_hash
            if before is not None and before[1] == entry["hash"]:
                # results written by versions that keyed them by the options hash: same measurements, still valid
                entry["legacy_hashes"] = sorted({before[0], entry["cache_key"]} - {entry["hash"]})
            entry["names"] = list(problem.names)
            if whole[tid]:  # one item: the whole batch (a volume's slices), scored as a whole
                entry["whole"] = len(problem.names)
                entry["names"] = [f"{problem.names[0]}..{problem.names[-1]} ({len(problem.names)} slices)"]
            entry["has_truth"] = problem.x_true is not None
            entry["operator_family"] = getattr(problem.operator, "task_family", None) or opts["task"]
        plan.tasks[tid] = entry


def _prepare_methods(plan: Plan, log):
    from ..samplers.base import get_sampler, resolve_knobs

    for m in plan.suite["methods"]:
        try:
            spec = get_sampler(m["sampler"])
        except UnknownNameError as e:
            plan.methods[m["id"]] = {"status": "unavailable", "sampler": m["sampler"],
                                     "reason": f"sampler {m['sampler']!r} is not registered in this build ({e})"}
            log(f"method {m['id']}: UNAVAILABLE - {plan.methods[m['id']]['reason']}")
            continue
        knobs = dict(m["options"], **({} if m["steps"] is None else {"steps": m["steps"]}))
        resolved = resolve_knobs(spec, knobs)  # unknown option names are config errors
        per_task = {t: resolve_knobs(spec, {**knobs, **o}) for t, o in m["task_options"].items()}
        plan.methods[m["id"]] = {"status": "ok", "sampler": spec.name, "prior": m["prior"], "knobs": resolved,
                                 "task_knobs": per_task, "data_scale": m["data_scale"], "preset": m["preset"],
                                 "explicit": {t: {**knobs, **o} for t, o in m["task_options"].items()},
                                 "explicit_all": knobs,
                                 "num_samples": m["num_samples"] or plan.suite["num_samples"],
                                 "options": m["options"], "steps": m["steps"], "base": knobs,
                                 "seeds": m["seeds"] or plan.suite["seeds"]}


def _selected(m: Dict[str, Any], t: Dict[str, Any], tasks: Sequence[Dict[str, Any]], tuned: bool) -> bool:
    """Whether method ``m`` runs on task entry ``t``: test tasks unless ``m['tasks']`` leaves them out; validation
    tasks only when named in ``m['tasks']`` (a reference run) or, for a tuned method (``tuned``), when a selected
    test task has their family."""
    if t["split"] == "test":
        return m["tasks"] is None or t["id"] in m["tasks"]
    if m["tasks"] is None or t["id"] in m["tasks"]:
        return tuned or (m["tasks"] is not None)
    return tuned and any(u["split"] == "test" and u["family"] == t["family"] and u["id"] in m["tasks"] for u in tasks)


def _resolve(spec, knobs: Dict[str, Any], where: str) -> Dict[str, Any]:
    from ..samplers.base import resolve_knobs

    try:
        return resolve_knobs(spec, knobs)
    except InvsolveError as e:
        raise type(e)(f"{where}: {e}") from None


def _plan_tuning(plan: Plan):
    """One tune job per (tuned method, family with validation tasks): a variant method per grid point."""
    from ..samplers.base import get_sampler
    from . import tune

    tasks = plan.suite["tasks"]
    families = list(dict.fromkeys(t["family"] for t in tasks if t["split"] == "validation"))
    for m in plan.suite["methods"]:
        base = plan.methods[m["id"]]
        if base["status"] != "ok" or (m["tune"] is None and not m["task_tune"]):
            continue
        spec = get_sampler(m["sampler"])
        for fam in families:
            grid = m["task_tune"].get(fam, m["tune"])
            vts = [t["id"] for t in tasks if t["split"] == "validation" and t["family"] == fam
                   and _selected(m, t, tasks, True)]
            if grid is None or not vts:
                continue
            points = tune.grid_points(grid, f"method {m['id']!r}")
            variants = []
            for p in points:
                vid = tune.variant_id(m["id"], p)
                where = f"method {m['id']!r}, tune point {tune.point_label(p)}"
                v = plan.methods.setdefault(vid, {
                    **{k: base[k] for k in ("status", "sampler", "prior", "data_scale", "num_samples", "seeds",
                                            "preset")},
                    "knobs": _resolve(spec, {**base["base"], **p}, where), "task_knobs": {},
                    "explicit": {}, "explicit_all": {**base["base"], **p}, "variant_of": m["id"], "point": p})
                for vt in vts:
                    v["explicit"][vt] = {**base["base"], **m["task_options"].get(vt, {}), **p}
                    v["task_knobs"][vt] = _resolve(spec, v["explicit"][vt], where)
                variants.append(vid)
            plan.tuning[f"{m['id']}@{fam}"] = {"method": m["id"], "family": fam, "metric": m["tune_metric"],
                                               "points": points, "variants": variants, "validation_tasks": vts,
                                               "status": "waiting", "rows": None, "chosen": None}


def _add_pair(plan: Plan, t: Dict[str, Any], m: Dict[str, Any], waiting: Optional[str] = None):
    """Check (task ``t``, method entry ``m``) and list its items; ``waiting``: the tune job its knobs wait for."""
    pair = f"{t['id']}/{m['id']}"
    info = {"split": t["split"], "family": t["family"]}
    if plan.tasks[t["id"]]["status"] != "ok" or plan.methods[m["id"]]["status"] != "ok":
        plan.pairs[pair] = {"status": "unavailable", **info}
        return
    reason, prior = _applicability(plan, t["id"], m)
    if reason is not None:
        plan.pairs[pair] = {"status": "n/a", "reason": reason, "prior": prior, **info}
        return
    n = len(plan.tasks[t["id"]]["names"])
    images = list(range(n if m["max_images"] is None else min(n, int(m["max_images"]))))
    seeds = plan.methods[m["id"]]["seeds"]
    plan.pairs[pair] = {"status": "run", "images": images, "seeds": seeds, "prior": prior, **info, "hash": None}
    if waiting:
        plan.pairs[pair]["waiting"] = waiting
    else:
        plan.pairs[pair].update(_pair_preset(plan, t["id"], m["id"], prior))
        plan.pairs[pair]["hash"] = datasets.options_hash(method_config(plan, t["id"], m["id"]))
    plan.items += [Item(t["id"], m["id"], i, s) for i in images for s in seeds]


def _pair_items(plan: Plan, pair_key: str) -> List[Item]:
    task, method = pair_key.split("/")
    pair = plan.pairs[pair_key]
    return [Item(task, method, i, s) for i in pair.get("images", []) for s in pair.get("seeds", [])]


def resolve_tuning(plan: Plan) -> None:
    """Score every unfinished tune job from its validation results; once all are in, choose the grid point and give
    the waiting test pairs their knobs and configuration hash (a job with no eligible point makes them n/a)."""
    from ..samplers.base import get_sampler
    from . import tune

    for job in plan.tuning.values():
        if job["status"] != "waiting":
            continue
        per_point = []
        for vid in job["variants"]:
            recs = []
            for vt in job["validation_tasks"]:
                pk = f"{vt}/{vid}"
                if plan.pairs.get(pk, {}).get("status") == "run":
                    recs += [read_record(it.path(plan.out)) if is_done(plan, it, False) else None
                             for it in _pair_items(plan, pk)]
            per_point.append(recs)
        job["rows"] = tune.score_points(job["points"], per_point, job["metric"])
        if all(r["planned"] == 0 for r in job["rows"]):
            job.update(status="failed", reason="no validation item applies (see the pairs that do not apply)")
        elif all(r["ok"] + r["failed"] == r["planned"] for r in job["rows"]):
            idx = tune.choose(job["rows"], job["metric"])
            if idx is None:
                job.update(status="failed", reason="every grid point failed on some validation item")
            else:
                job.update(status="chosen", chosen=idx, knobs=job["rows"][idx]["point"])
    by_id = {m["id"]: m for m in plan.suite["methods"]}
    for pk, pair in plan.pairs.items():
        job = plan.tuning.get(pair.get("waiting") or "")
        if job is None or pair["hash"] is not None or pair["status"] != "run" or job["status"] == "waiting":
            continue
        if job["status"] == "failed":
            pair.update(status="n/a", reason=f"tuning {pair['waiting']} failed: {job['reason']}")
            continue
        tid, mid = pk.split("/")
        m = by_id[mid]
        own = {**plan.methods[mid]["base"], **m["task_options"].get(tid, {})}
        knobs = {**job["knobs"], **own} if m["knobs_from"] else {**own, **job["knobs"]}
        plan.methods[mid]["task_knobs"][tid] = _resolve(get_sampler(m["sampler"]), knobs, f"method {mid!r}")
        plan.methods[mid]["explicit"][tid] = knobs  # the preset (if any) fills in the knobs neither sets
        pair.update(_pair_preset(plan, tid, mid, pair["prior"]))
        pair["hash"] = datasets.options_hash(method_config(plan, tid, mid))
        pair["tuned"] = {"job": pair["waiting"], "point": job["knobs"]}


def method_config(plan: Plan, task_id: str, method_id: str) -> Dict[str, Any]:
    """What determines a method's result on a task (hashed into every result file)."""
    from ..samplers.base import get_sampler
    from .identity import method_identity

    m = plan.methods[method_id]
    pair = plan.pairs.get(f"{task_id}/{method_id}", {})
    knobs = pair.get("knobs", m["task_knobs"].get(task_id, m["knobs"]))  # with the preset applied, once planned
    return method_identity(m["sampler"], get_sampler(m["sampler"]).defaults, knobs, m["prior"], m["data_scale"],
                           m["num_samples"], pair.get("sigma_y"))


_PRIORS: Dict[Tuple[str, str], Any] = {}  # loaded priors kept for later suites in the same process


def _prior(plan: Plan, name: str):
    from ..priors import load_prior

    key = (name, str(plan.device))
    if key not in _PRIORS:
        try:
            _PRIORS[key] = load_prior(name, device=plan.device)
        except Exception as e:  # noqa: BLE001 - a prior that cannot be loaded makes its pairs not applicable
            return e
    plan.priors[name] = _PRIORS[key]
    return plan.priors[name]


_REVISIONS: Dict[str, str] = {}


def prior_revision(name_or_path: str) -> str:
    """First 12 hex digits of the SHA-256 of a prior's weights file(s) (embedded name or directory), recorded in
    every result so that results of other weights under the same name can be told apart; priors without weight
    files (e.g. analytic ones) give their name."""
    import hashlib

    if name_or_path not in _REVISIONS:
        from ..priors.registry import prior_dir

        try:
            d = prior_dir(name_or_path)
        except InvsolveError:  # not an embedded name: a directory, or a non-file prior
            d = Path(name_or_path)
        files = sorted(Path(d).glob("*.safetensors")) if Path(d).is_dir() else []
        h = hashlib.sha256()
        for f in files:
            h.update(f.read_bytes())
        _REVISIONS[name_or_path] = h.hexdigest()[:12] if files else str(name_or_path)
    return _REVISIONS[name_or_path]


def _applicability(plan: Plan, task_id: str, method: Dict[str, Any]) -> Tuple[Optional[str], Optional[str]]:
    """``(reason, prior)``: ``reason`` is ``None`` if ``method`` can run on ``task_id``; ``prior`` is its prior."""
    from ..samplers.base import check_compatible, get_sampler

    op = plan.problems[task_id].operator
    spec = get_sampler(method["sampler"])
    name, prior = None, None
    if spec.needs_prior:
        name = method["prior"] or getattr(op, "default_prior", None)
        if name is None:
            return f"{type(op).__name__} has no default prior and the method names none", None
        prior = _prior(plan, name)
        if isinstance(prior, Exception):
            return f"prior {name!r} unavailable: {prior}", name
    m = plan.methods[method["id"]]
    try:
        check_compatible(spec, op, prior, m["task_knobs"].get(task_id, m["knobs"]))
    except InvsolveError as e:
        return str(e), name
    if plan.problems[task_id].x_true is None:
        return "the task has no ground truth to score against", name
    return None, name


def _pair_preset(plan: Plan, task_id: str, method_id: str, prior: Optional[str]) -> Dict[str, Any]:
    """``{"preset": id or None, "knobs": resolved knobs, "sigma_y": ...}`` of a (task, method) pair: registered
    defaults < the preset of (prior, operator family, sampler, the task's noise) (:mod:`invsolve.presets`) < the
    method's options. A task whose noise level is unknown (measured data) matches only presets for any noise. The
    chosen knobs (not the preset's id) and the noise level the sampler gets go into the configuration hash."""
    from .. import presets
    from ..samplers.base import get_sampler, resolve_knobs

    m = plan.methods[method_id]
    spec = get_sampler(m["sampler"])
    problem = plan.problems[task_id]
    sigma = problem.sigma_y
    chosen = presets.select(m["preset"], prior if spec.needs_prior else None,
                            getattr(problem.operator, "task_family", None), spec.name,
                            None if sigma is None else sigma > 0)
    explicit = m["explicit"].get(task_id, m["explicit_all"])
    knobs = resolve_knobs(spec, {**(chosen.knobs if chosen else {}), **explicit})
    return {"preset": None if chosen is None else chosen.id, "knobs": knobs,
            "sigma_y": explicit.get("sigma_y", sigma) if "sigma_y" in spec.defaults else None}


def prepare(suite: Dict[str, Any], device=None, log=print) -> Plan:
    """Build (or load) every task's problem, check every (task, method) pair and list the items."""
    local = os.environ.get("LOCAL_RANK")
    plan = Plan(suite, Path(suite["output_dir"]),
                _default_device(device or suite["device"], int(local) if local is not None else None))
    from .machine import describe

    plan.machine = describe(plan.device)
    _prepare_methods(plan, log)
    _prepare_tasks(plan, log)
    _plan_tuning(plan)
    tasks = suite["tasks"]
    for m in suite["methods"]:  # method-major: a partial run has the cheap methods on every task first
        for job in plan.tuning.values():  # a tuned method's validation runs come before its test items
            if job["method"] == m["id"]:
                for vid in job["variants"]:
                    for vt in job["validation_tasks"]:
                        _add_pair(plan, next(t for t in tasks if t["id"] == vt),
                                  {**m, "id": vid, "max_images": m["tune_max_images"]})
        src = m["knobs_from"] or m["id"]
        for t in tasks:
            if not _selected(m, t, tasks, False):
                plan.pairs[f"{t['id']}/{m['id']}"] = {"status": "not selected", "split": t["split"],
                                                      "family": t["family"]}
                continue
            waiting = f"{src}@{t['family']}" if t["split"] == "test" and f"{src}@{t['family']}" in plan.tuning \
                else None
            _add_pair(plan, t, m, waiting)
    resolve_tuning(plan)
    return plan


def shard_items(items: Sequence[Item], shards: int, index: int) -> List[Item]:
    """Deterministic round-robin: item ``k`` of the suite's item list goes to shard ``k % shards``."""
    if shards < 1 or not 0 <= index < shards:
        raise InvsolveError(f"--shard-index must be in [0, {shards}) for --shards {shards}, got {index}")
    return list(items[index::shards])


def shard_from_env(shards: Optional[int], shard_index: Optional[int]) -> Tuple[int, int, bool]:
    """``(shards, index, under_torchrun)``: explicit arguments, else ``WORLD_SIZE`` / ``RANK``, else (1, 0)."""
    if shards is not None or shard_index is not None:
        if shards is None or shard_index is None:
            raise InvsolveError("--shards and --shard-index go together")
        return int(shards), int(shard_index), False
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        return world, int(os.environ.get("RANK", "0")), True
    return 1, 0, False


# ---------------------------------------------------------------------------------------------------- items
def _select(problem, b: int, whole: bool = False):
    """Operator, measurement and truth of batch item ``b`` (per-item operator buffers are sliced); ``whole``: the
    whole batch (a volume whose slices a sampler reconstructs together)."""
    if whole:
        return problem.operator, problem.y, problem.x_true
    op = problem.operator
    B = op.batch_size()
    if B is not None:
        op = copy.deepcopy(op)
        for mod in op.modules():
            for name, buf in list(mod._buffers.items()):
                if buf is not None and buf.dim() > 0 and buf.shape[0] == B:
                    mod._buffers[name] = buf[b:b + 1].clone()
        if op.batch_size() not in (None, 1):
            raise InvsolveError(f"cannot take item {b} of {type(problem.operator).__name__} with per-item "
                                f"parameters for a batch of {B}")
    x = None if problem.x_true is None else problem.x_true[b:b + 1]
    return op, problem.y[b:b + 1], x


def _metrics(problem, op, y, x_true, x, want_lpips: bool, whole: bool = False) -> Dict[str, Any]:
    """Per-item metrics; a ``whole`` item (a volume) gets the means over its slices and the z-metrics."""
    from . import metrics as M

    def one(vals):
        return float(np.mean(vals)) if whole else vals[0]

    out = {"psnr": one(M.psnr(x, x_true, problem.data_range)), "ssim": one(M.ssim(x, x_true, problem.data_range)),
           "relative_l2": one(M.relative_l2(x, x_true)), "dc_residual": one(M.data_consistency(op, x, y))}
    if whole:
        out.update(z_flicker_excess=M.z_flicker_excess(x, x_true), z_difference_rmse=M.z_difference_rmse(x, x_true))
    if not want_lpips:
        out["lpips"] = "unavailable: disabled in the suite (lpips: false)"
    else:
        try:
            out["lpips"] = one(M.lpips(x, x_true, problem.data_range))
        except (M.MetricUnavailable, ValueError) as e:
            out["lpips"] = f"unavailable: {e}"
    return out


def run_item(plan: Plan, item: Item, shard: Tuple[int, int]) -> Dict[str, Any]:
    """Solve one item, score it and write its result (``status`` ``ok`` or ``failed``); returns the record."""
    from ..api import solve

    problem, task, pair = plan.problems[item.task], plan.tasks[item.task], plan.pairs[f"{item.task}/{item.method}"]
    method = method_config(plan, item.task, item.method)
    rec: Dict[str, Any] = {
        "schema": 1, "key": item.key, "task": item.task, "method": item.method, "image": item.image,
        "name": task["names"][item.image], "seed": item.seed, "sampler": method["sampler"],
        "task_hash": task["hash"], "method_hash": pair["hash"], "device": str(plan.device),
        "hardware": hardware(plan.device), "shard": list(shard), "host": platform.node(), "process": os.getpid(),
        "config": {"task": task["options"], "method": method},
    }
    t0 = time.perf_counter()
    try:
        op, y, x_true = _select(problem, item.image, bool(task.get("whole")))
        prior_name = pair["prior"]
        rec["prior_revision"] = None if prior_name is None else prior_revision(prior_name)
        m = plan.methods[item.method]
        # the method's options (or its tuned point); solve() adds the pair's preset and the registered defaults
        kn = dict(m["explicit"].get(item.task, m["explicit_all"]))
        rec["preset"] = pair.get("preset")
        steps = kn.pop("steps", None)
        # a method's sigma_y option wins over the task's noise level; an explicit null means "unknown: estimate it"
        sigma_y = kn.pop("sigma_y") if "sigma_y" in kn else problem.sigma_y
        res = solve(y, op, prior=None if prior_name is None else plan.priors[prior_name],
                    sampler=method["sampler"], steps=steps, seed=item.seed, num_samples=method["num_samples"],
                    device=plan.device, data_scale=method["data_scale"], sigma_y=sigma_y,
                    preset=pair.get("preset") or False, **kn)
        x = res.x.detach().cpu()
        if not bool(torch.isfinite(torch.view_as_real(x) if x.is_complex() else x).all()):
            raise FloatingPointError("the reconstruction has NaN/Inf values (the sampler diverged)")
        rec["metrics"] = _metrics(problem, op, y, x_true, x, bool(plan.suite["lpips"]), bool(task.get("whole")))
        rec.update(nfe=int(res.nfe), seconds=float(res.seconds), peak_memory=res.peak_memory,
                   solve_config=json_safe(res.config), status="ok", error=None)
        datasets.write_atomic(item.path(plan.out, ".npy"), lambda t: _save_npy(t, x.numpy()))
        rec["reconstruction"] = item.path(plan.out, ".npy").name
        if res.samples is not None:
            std = res.std.detach().cpu().numpy()
            datasets.write_atomic(item.path(plan.out, "_std.npy"), lambda t: _save_npy(t, std))
            rec["std"] = item.path(plan.out, "_std.npy").name
    except Exception as e:  # noqa: BLE001 - one failing item is recorded and the suite goes on
        rec.update(status="failed", error=f"{type(e).__name__}: {e}",
                   traceback="".join(traceback.format_exception(type(e), e, e.__traceback__)[-6:]))
    rec["wall_seconds"] = time.perf_counter() - t0
    rec["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    rec["load_average"] = load_average()  # wall times on a shared machine are only comparable at similar load
    rec = json_safe(rec)
    datasets.write_atomic(item.path(plan.out), lambda t: t.write_text(json.dumps(rec, indent=1)))
    return rec


def _save_npy(path: Path, arr: np.ndarray):
    with open(path, "wb") as f:
        np.save(f, arr)


def read_record(path: Path) -> Optional[Dict[str, Any]]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def relabel_legacy_results(plan: Plan, items: Sequence[Item]) -> int:
    """Give results stored under a task's legacy hash (older versions hashed the options, not the measurements)
    the task's content hash when the measurements are unchanged; returns how many were rewritten (atomically)."""
    n = 0
    for it in items:
        legacy = plan.tasks[it.task].get("legacy_hashes")
        if not legacy:
            continue
        path = it.path(plan.out)
        rec = read_record(path)
        if rec is not None and rec.get("task_hash") in legacy:
            rec["task_hash"] = plan.tasks[it.task]["hash"]
            datasets.write_atomic(path, lambda t, r=rec: Path(t).write_text(json.dumps(r, indent=1)))
            n += 1
    return n


def is_done(plan: Plan, item: Item, retry_failed: bool) -> bool:
    """A current result exists: same task and method configuration, and ``ok`` (or ``failed`` unless retrying)."""
    rec = read_record(item.path(plan.out))
    if rec is None or rec.get("task_hash") != plan.tasks[item.task]["hash"] \
            or rec.get("method_hash") != plan.pairs[f"{item.task}/{item.method}"]["hash"]:
        return False
    return rec.get("status") == "ok" or (rec.get("status") == "failed" and not retry_failed)


# ---------------------------------------------------------------------------------------------------- run
def _command(suite_path, overrides: Sequence[str]) -> str:
    p = Path(suite_path)
    try:
        p = p.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        pass
    kept = [o for o in overrides if not o.startswith(("action=", "benchmarks=", "force_report=", "overwrite="))]
    return " ".join(["invsolve", "evaluate", shlex.quote(str(p))] + [shlex.quote(o) for o in kept])


def _live(plan: Plan, it: Item) -> bool:
    """The item's pair runs (items of pairs made n/a by a failed tune job are neither run nor pending)."""
    return plan.pairs[f"{it.task}/{it.method}"]["status"] == "run"


def pending_items(plan: Plan) -> List[Item]:
    """Planned items without a current result (``ok`` or ``failed``)."""
    return [it for it in plan.items if _live(plan, it) and not is_done(plan, it, False)]


def write_plan(plan: Plan, command: str, path: Optional[Path] = None):
    """``plan.json``: the suite, the command that reproduces it, the machine, tasks, methods, pairs, tune jobs and
    the item list."""
    blob = {"suite": plan.suite, "command": command, "machine": plan.machine, "tasks": plan.tasks,
            "methods": plan.methods, "pairs": plan.pairs, "tuning": plan.tuning,
            "items": [it.key for it in plan.items if _live(plan, it)],
            "invsolve": plan.machine.get("invsolve", "unknown"), "torch": torch.__version__}
    blob = json_safe(blob)
    datasets.write_atomic(path or plan.out / "plan.json", lambda t: t.write_text(json.dumps(blob, indent=1)))


def _progress(items, enabled: bool, desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=len(items), desc=desc, unit="item", dynamic_ncols=True, file=sys.stderr)


def _base_method(plan: Plan, it: Item) -> str:
    return plan.methods[it.method].get("variant_of", it.method)


def _run_items(plan: Plan, items: Sequence[Item], retry: bool, shard: Tuple[int, int], counts: Dict[str, int],
               bar, log, position: Tuple[int, int] = (0, 0)):
    """Run ``items`` in order (skipping those done meanwhile); a test item whose knobs wait for a tune job re-scores
    the job first and is counted ``blocked`` while the job's validation results are incomplete. ``position``:
    (items before these, total) for the log lines."""
    start, total = position[0], position[1] or len(items)
    for k, it in enumerate(items, start):
        pair = plan.pairs[f"{it.task}/{it.method}"]
        if pair["status"] == "run" and pair["hash"] is None:
            resolve_tuning(plan)
        if bar is not None:
            bar.set_postfix_str(it.key, refresh=True)
        if pair["status"] != "run" or pair["hash"] is None:
            counts["blocked"] += 1
        elif is_done(plan, it, retry):
            counts["done_before"] += 1
        else:
            rec = run_item(plan, it, shard)
            counts[rec["status"]] += 1
            if rec["status"] == "failed":
                (bar.write if bar is not None else log)(f"FAILED {it.key}: {rec['error']}")
            elif bar is None:
                log(f"[{k + 1}/{total}] {it.key} ok: PSNR {rec['metrics']['psnr']:.2f} dB, "
                    f"SSIM {rec['metrics']['ssim']:.4f}, {rec['nfe']} NFE, {rec['seconds']:.1f} s")
        if bar is not None:
            bar.update(1)


def _run_isolated(plan: Plan, method: str, shard: Tuple[int, int], retry: bool, progress: bool, log
                  ) -> Dict[str, int]:
    """Run this shard's items of ``method`` (its tune variants included) in a fresh Python process, so that its CPU
    peak memory (resident-set growth) is not masked by memory another method freed; returns the child's counts."""
    import subprocess
    import tempfile

    plan.out.mkdir(parents=True, exist_ok=True)
    fd, spec_path = tempfile.mkstemp(prefix=f".worker-{method}-", suffix=".json", dir=plan.out)
    os.close(fd)
    counts_path = Path(spec_path).with_suffix(".counts")
    Path(spec_path).write_text(json.dumps(json_safe({"suite": plan.suite, "method": method, "shard": list(shard),
                                                     "retry": retry, "progress": progress,
                                                     "counts": str(counts_path)})))
    env = dict(os.environ)
    if plan.suite["threads"]:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(int(plan.suite["threads"]))
    code = "from invsolve.eval.harness import worker_main; worker_main()"
    try:
        rc = subprocess.call([sys.executable, "-c", code, spec_path], env=env)
        counts = json.loads(counts_path.read_text()) if counts_path.is_file() else {}
    finally:
        Path(spec_path).unlink(missing_ok=True)
        counts_path.unlink(missing_ok=True)
    if rc != 0:
        log(f"the process running method {method!r} exited with status {rc}; its finished items are kept, the rest "
            f"stay pending (rerun the command to resume)")
        counts["worker_failures"] = counts.get("worker_failures", 0) + 1
    return counts


def worker_main(argv: Optional[Sequence[str]] = None):
    """Entry of the process :func:`_run_isolated` starts: prepare the suite quietly, run one method's items."""
    spec = json.loads(Path((argv or sys.argv[1:])[0]).read_text())
    suite = spec["suite"]
    if suite["threads"]:
        torch.set_num_threads(int(suite["threads"]))
    plan = prepare(suite, log=lambda *a, **k: None)
    index, n_shards = spec["shard"]
    mine = [it for it in shard_items(plan.items, n_shards, index) if _live(plan, it)
            and _base_method(plan, it) == spec["method"]]
    todo = [it for it in mine if not is_done(plan, it, spec["retry"])]
    counts = dict.fromkeys(("done_before", "ok", "failed", "blocked"), 0)  # done before: the parent counted them
    bar = _progress(todo, spec["progress"], f"{suite['name']} [{spec['method']}]")
    try:
        _run_items(plan, todo, spec["retry"], (index, n_shards), counts, bar, print)
    finally:
        if bar is not None:
            bar.close()
        Path(spec["counts"]).write_text(json.dumps(counts))


def _isolated(plan: Plan, method: str) -> bool:
    m = next(m for m in plan.suite["methods"] if m["id"] == method)
    return bool(plan.suite["isolate"] if m["isolate"] is None else m["isolate"])


def _report(plan: Plan, command: str, force: bool, log) -> Path:
    """Write the report; a partial result set writes ``partial/`` (plan, report, tables) and leaves the existing
    report, tables, figures and the BENCHMARKS.md section as they are, unless ``force``."""
    from . import report

    missing = pending_items(plan)
    partial = bool(missing) and not force
    if plan.suite["action"] == "report" or partial:  # a run has written plan.json already
        write_plan(plan, command, plan.out / "partial" / "plan.json" if partial else None)
    path = report.write_report(plan.out, benchmarks=plan.suite["benchmarks"], force=force,
                               plan_path=plan.out / "partial" / "plan.json" if partial else None)
    if partial:
        log(f"PARTIAL result set: {len(missing)} of {len(plan.items)} planned item(s) have no current result (e.g. "
            f"{missing[0].key}); wrote {path} and left report.md, the tables, figures"
            f"{' and the ' + str(plan.suite['benchmarks']) + ' section' if plan.suite['benchmarks'] else ''} "
            f"unchanged (run the missing items, or force with --force / force_report=true)")
    else:
        log(f"report: {path} (+ results.csv, table.csv, figures/)")
    return path


def run(suite: Dict[str, Any], suite_path, overrides: Sequence[str] = (), shards: Optional[int] = None,
        shard_index: Optional[int] = None, progress: bool = True, log=print) -> Dict[str, Any]:
    """Run this process's share of a suite and (when it is the one to) write the report.

    Returns counts: ``items`` (suite), ``mine`` (this shard), ``done_before``, ``ok`` / ``failed`` (run now),
    ``blocked`` (test items waiting for tune jobs of other shards), ``failed_total`` (this shard's failed results),
    ``pending`` (suite items without a result), ``report`` (path).
    """
    if suite["action"] == "export-presets":
        from . import tune

        files = tune.export_presets(Path(suite["output_dir"]) / "tuned.yaml", overwrite=bool(suite["overwrite"]),
                                    ids=suite["export_ids"])
        log("exported presets to " + ", ".join(str(f) for f in files))
        return {"items": 0, "mine": 0, "done_before": 0, "ok": 0, "failed": 0, "failed_total": 0, "pending": 0,
                "report": None, "exported": [str(f) for f in files]}
    n_shards, index, torchrun = shard_from_env(shards, shard_index)
    dist = _init_dist() if torchrun else None
    threads0 = torch.get_num_threads()
    if suite["threads"]:
        torch.set_num_threads(int(suite["threads"]))
    try:
        plan = prepare(suite, log=log)
        command = _command(suite_path, overrides)
        if suite["action"] == "run":
            write_plan(plan, command)
        for pair, info in plan.pairs.items():
            if info["status"] == "n/a":
                log(f"skipped (not applicable) {pair}: {info['reason']}")
        mine = [it for it in shard_items(plan.items, n_shards, index) if _live(plan, it)]
        datasets.remove_stale_tmp(plan.out)
        relabelled = relabel_legacy_results(plan, mine)
        if relabelled:
            log(f"{relabelled} result(s) keyed by an older options hash have unchanged measurements: relabelled")
        counts = {"items": len(plan.items), "mine": len(mine), "done_before": 0, "ok": 0, "failed": 0, "blocked": 0}
        if suite["action"] == "run":
            retry = bool(suite["retry_failed"])
            todo = [it for it in mine if not is_done(plan, it, retry)]
            counts["done_before"] = len(mine) - len(todo)
            shard_txt = f" shard {index + 1}/{n_shards}" if n_shards > 1 else ""
            log(f"suite {suite['name']}{shard_txt}: {len(plan.items)} items in the suite, {len(mine)} in this "
                f"process, {counts['done_before']} already done, {len(todo)} to run on {plan.device}")
            groups: List[Tuple[str, List[Item]]] = []  # consecutive items of one method (items are method-major)
            for it in todo:
                b = _base_method(plan, it)
                if not groups or groups[-1][0] != b:
                    groups.append((b, []))
                groups[-1][1].append(it)
            any_isolated = any(_isolated(plan, b) for b, _ in groups)
            bar = _progress(todo, progress and not any_isolated, f"{suite['name']}{shard_txt}")
            start = 0
            for b, group in groups:
                if _isolated(plan, b):
                    for k, v in _run_isolated(plan, b, (index, n_shards), retry, progress, log).items():
                        counts[k] = counts.get(k, 0) + v
                else:
                    _run_items(plan, group, retry, (index, n_shards), counts, bar, log, (start, len(todo)))
                start += len(group)
                resolve_tuning(plan)  # keep plan.json current (tune choices, test hashes) during a long run
                write_plan(plan, command)
            if bar is not None:
                bar.close()
            resolve_tuning(plan)
            write_plan(plan, command)
        if dist is not None:
            dist.barrier()
        resolve_tuning(plan)
        pending = pending_items(plan)
        counts["pending"] = len(pending)
        counts["items"] = sum(_live(plan, it) for it in plan.items)
        pend = set(pending)
        counts["failed_total"] = sum(read_record(it.path(plan.out)).get("status") == "failed"
                                     for it in mine if it not in pend and _live(plan, it))
        writes_report = suite["action"] == "report" or (index == 0 if torchrun else (n_shards == 1 or not pending))
        counts["report"] = None
        if writes_report:
            counts["report"] = str(_report(plan, command, bool(suite["force_report"]), log))
        elif pending:
            log(f"{len(pending)} item(s) still pending in other shards; when all shards are done, merge with: "
                f"{command} action=report")
        return counts
    finally:
        torch.set_num_threads(threads0)
        if dist is not None:
            dist.destroy_process_group()


def _init_dist():
    """Join the torchrun process group (gloo: CPU barrier only) so that rank 0 can wait for every shard."""
    import datetime as _dt

    import torch.distributed as dist

    if not dist.is_available() or "MASTER_ADDR" not in os.environ:
        return None
    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=_dt.timedelta(days=7))
    return dist


def main(suite: str, overrides: Optional[Sequence[str]] = None, shards: Optional[int] = None,
         shard_index: Optional[int] = None, progress: bool = True, force: bool = False,
         overwrite: bool = False) -> int:
    """CLI entry (``invsolve evaluate``): 0 when every item of this process succeeded, 1 if any failed.

    ``force``: write the report (and BENCHMARKS.md section) from a partial result set; ``overwrite``: let
    ``action=export-presets`` replace existing presets."""
    overrides = list(overrides or []) + (["force_report=true"] if force else []) + \
        (["overwrite=true"] if overwrite else [])
    cfg = load_suite(suite, overrides)
    counts = run(cfg, suite, overrides, shards=shards, shard_index=shard_index, progress=progress)
    if cfg["action"] == "export-presets":
        return 0
    blocked = f" ({counts['blocked']} waiting for tune jobs of other shards)" if counts.get("blocked") else ""
    print(f"{counts['ok'] + counts['failed']} item(s) ran ({counts['failed']} failed), {counts['done_before']} "
          f"were already done; {counts['failed_total']} of this process's {counts['mine']} items failed; "
          f"{counts['pending']} of the suite's {counts['items']} items pending{blocked}", flush=True)
    return 1 if counts["failed_total"] else 0
