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
    action: run                         # run | report (only rebuild tables/figures from the result files)

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
unavailable. Tables, figures and ``report.md`` come from :mod:`invsolve.eval.report`.
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

SUITE_DEFAULTS: Dict[str, Any] = dict(name=None, description="", output_dir=None, tasks=[], methods=[], seeds=[0],
                                      num_samples=1, device=None, threads=None, lpips=True, figures=3,
                                      benchmarks=None, retry_failed=False, action="run")
METHOD_DEFAULTS: Dict[str, Any] = dict(id=None, sampler=None, prior=None, steps=None, options={}, task_options={},
                                       tasks=None, max_images=None, data_scale="auto", preset=None)
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
    if suite["action"] not in ("run", "report"):
        raise InvsolveError(f"action must be 'run' or 'report', got {suite['action']!r}")
    if isinstance(suite["seeds"], int):
        suite["seeds"] = [suite["seeds"]]
    if not suite["seeds"] or not all(isinstance(s, int) and s >= 0 for s in suite["seeds"]):
        raise InvsolveError(f"seeds must be a list of non-negative ints, got {suite['seeds']!r}")
    if not isinstance(suite["num_samples"], int) or suite["num_samples"] < 1:
        raise InvsolveError(f"num_samples must be a positive int, got {suite['num_samples']!r}")
    seen: set = set()
    for t in suite["tasks"] or []:
        if not isinstance(t, dict) or "task" not in t:
            raise InvsolveError(f"every task entry needs 'id' and 'task' (a registered task name), got {t!r}")
        _check_id("task", t, seen)
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
        methods.append(full)
    for m in methods:
        bad = sorted(set(m["task_options"]) - task_ids) + sorted(set(m["tasks"] or []) - task_ids)
        if bad:
            raise UnknownNameError(f"method {m['id']!r} names unknown task id(s) {bad}; task ids: {sorted(task_ids)}")
    suite["methods"] = methods
    suite["tasks"] = list(suite["tasks"] or [])
    if not suite["tasks"] or not suite["methods"]:
        raise InvsolveError("a suite needs at least one task and one method")
    return suite


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
    for t in plan.suite["tasks"]:  # validate every entry before building anything
        tid, opts = t["id"], {k: v for k, v in t.items() if k != "id"}
        try:
            spec = get_task(opts["task"])
        except UnknownNameError as e:
            plan.tasks[tid] = {"status": "unavailable", "task": opts["task"],
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
                 "cache_key": datasets.options_hash(full)}
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
            entry["has_truth"] = problem.x_true is not None
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
        knobs = dict(m["options"])
        resolved = resolve_knobs(spec, knobs, steps=m["steps"])  # unknown option names are config errors
        per_task = {t: resolve_knobs(spec, {**knobs, **o}, steps=m["steps"]) for t, o in m["task_options"].items()}
        plan.methods[m["id"]] = {"status": "ok", "sampler": spec.name, "prior": m["prior"], "knobs": resolved,
                                 "task_knobs": per_task, "data_scale": m["data_scale"], "preset": m["preset"],
                                 "explicit": {t: {**knobs, **o} for t, o in m["task_options"].items()},
                                 "explicit_all": knobs,
                                 "num_samples": plan.suite["num_samples"], "options": m["options"],
                                 "steps": m["steps"]}


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
    _prepare_methods(plan, log)
    _prepare_tasks(plan, log)
    for m in suite["methods"]:  # method-major: a partial run has the cheap methods on every task first
        for t in suite["tasks"]:
            pair = f"{t['id']}/{m['id']}"
            if plan.tasks[t["id"]]["status"] != "ok" or plan.methods[m["id"]]["status"] != "ok":
                plan.pairs[pair] = {"status": "unavailable"}
                continue
            if m["tasks"] is not None and t["id"] not in m["tasks"]:
                plan.pairs[pair] = {"status": "not selected"}
                continue
            reason, prior = _applicability(plan, t["id"], m)
            if reason is not None:
                plan.pairs[pair] = {"status": "n/a", "reason": reason, "prior": prior}
                continue
            n = len(plan.tasks[t["id"]]["names"])
            images = list(range(n if m["max_images"] is None else min(n, int(m["max_images"]))))
            plan.pairs[pair] = {"status": "run", "images": images, "prior": prior,
                                **_pair_preset(plan, t["id"], m["id"], prior)}
            plan.pairs[pair]["hash"] = datasets.options_hash(method_config(plan, t["id"], m["id"]))
            plan.items += [Item(t["id"], m["id"], i, s) for i in images for s in suite["seeds"]]
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
def _select(problem, b: int):
    """Operator, measurement and truth of batch item ``b`` (per-item operator buffers are sliced)."""
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


def _hardware(dev: torch.device) -> str:
    if dev.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(dev)}"
    model = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), model)
    except OSError:
        pass
    return f"cpu: {model}, {os.cpu_count()} cores visible, {torch.get_num_threads()} torch thread(s)"


def _metrics(problem, op, y, x_true, x, want_lpips: bool) -> Dict[str, Any]:
    from . import metrics as M

    out = {"psnr": M.psnr(x, x_true, problem.data_range)[0], "ssim": M.ssim(x, x_true, problem.data_range)[0],
           "relative_l2": M.relative_l2(x, x_true)[0], "dc_residual": M.data_consistency(op, x, y)[0]}
    if not want_lpips:
        out["lpips"] = "unavailable: disabled in the suite (lpips: false)"
    else:
        try:
            out["lpips"] = M.lpips(x, x_true, problem.data_range)[0]
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
        "hardware": _hardware(plan.device), "shard": list(shard), "host": platform.node(),
        "config": {"task": task["options"], "method": method},
    }
    t0 = time.perf_counter()
    try:
        op, y, x_true = _select(problem, item.image)
        prior_name = pair["prior"]
        m = plan.methods[item.method]
        kn = dict(m["explicit"].get(item.task, m["explicit_all"]))  # the preset and defaults are added by solve()
        steps = kn.pop("steps", None)
        sigma_y = kn.pop("sigma_y", problem.sigma_y)  # a method's sigma_y option wins over the task's noise level
        res = solve(y, op, prior=None if prior_name is None else plan.priors[prior_name],
                    sampler=method["sampler"], steps=steps, seed=item.seed, num_samples=plan.suite["num_samples"],
                    device=plan.device, data_scale=method["data_scale"], sigma_y=sigma_y,
                    preset=pair["preset"] or False, **kn)
        x = res.x.detach().cpu()
        if not bool(torch.isfinite(torch.view_as_real(x) if x.is_complex() else x).all()):
            raise FloatingPointError("the reconstruction has NaN/Inf values (the sampler diverged)")
        rec["metrics"] = _metrics(problem, op, y, x_true, x, bool(plan.suite["lpips"]))
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
    kept = [o for o in overrides if not o.startswith(("action=", "benchmarks="))]  # how results were made
    return " ".join(["invsolve", "evaluate", shlex.quote(str(p))] + [shlex.quote(o) for o in kept])


def write_plan(plan: Plan, command: str):
    """``plan.json``: the suite, the command that reproduces it, tasks, methods, pairs and the item list."""
    blob = {"suite": plan.suite, "command": command, "tasks": plan.tasks, "methods": plan.methods,
            "pairs": plan.pairs, "items": [it.key for it in plan.items],
            "invsolve": _version(), "torch": torch.__version__}
    blob = json_safe(blob)
    datasets.write_atomic(plan.out / "plan.json", lambda t: t.write_text(json.dumps(blob, indent=1)))


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("invsolve")
    except Exception:  # noqa: BLE001
        return "unknown"


def _progress(items, enabled: bool, desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=len(items), desc=desc, unit="item", dynamic_ncols=True, file=sys.stderr)


def run(suite: Dict[str, Any], suite_path, overrides: Sequence[str] = (), shards: Optional[int] = None,
        shard_index: Optional[int] = None, progress: bool = True, log=print) -> Dict[str, Any]:
    """Run this process's share of a suite and (when it is the one to) write the report.

    Returns counts: ``items`` (suite), ``mine`` (this shard), ``done_before``, ``ok`` / ``failed`` (run now),
    ``failed_total`` (this shard's failed results), ``pending`` (suite items without a result), ``report`` (path).
    """
    from . import report

    n_shards, index, torchrun = shard_from_env(shards, shard_index)
    dist = _init_dist() if torchrun else None
    threads0 = torch.get_num_threads()
    if suite["threads"]:
        torch.set_num_threads(int(suite["threads"]))
    try:
        plan = prepare(suite, log=log)
        command = _command(suite_path, overrides)
        write_plan(plan, command)
        for pair, info in plan.pairs.items():
            if info["status"] == "n/a":
                log(f"skipped (not applicable) {pair}: {info['reason']}")
        mine = shard_items(plan.items, n_shards, index)
        datasets.remove_stale_tmp(plan.out)
        relabelled = relabel_legacy_results(plan, mine)
        if relabelled:
            log(f"{relabelled} result(s) keyed by an older options hash have unchanged measurements: relabelled")
        counts = {"items": len(plan.items), "mine": len(mine), "done_before": 0, "ok": 0, "failed": 0}
        if suite["action"] == "run":
            todo = [it for it in mine if not is_done(plan, it, bool(suite["retry_failed"]))]
            counts["done_before"] = len(mine) - len(todo)
            shard_txt = f" shard {index + 1}/{n_shards}" if n_shards > 1 else ""
            log(f"suite {suite['name']}{shard_txt}: {len(plan.items)} items in the suite, {len(mine)} in this "
                f"process, {counts['done_before']} already done, {len(todo)} to run on {plan.device}")
            bar = _progress(todo, progress, f"{suite['name']}{shard_txt}")
            for k, it in enumerate(todo):
                if bar is not None:
                    bar.set_postfix_str(it.key, refresh=True)
                rec = run_item(plan, it, (index, n_shards))
                counts[rec["status"]] += 1
                if rec["status"] == "failed":
                    msg = f"FAILED {it.key}: {rec['error']}"
                    (bar.write if bar is not None else log)(msg)
                elif bar is None:
                    log(f"[{k + 1}/{len(todo)}] {it.key} ok: PSNR {rec['metrics']['psnr']:.2f} dB, "
                        f"SSIM {rec['metrics']['ssim']:.4f}, {rec['nfe']} NFE, {rec['seconds']:.1f} s")
                if bar is not None:
                    bar.update(1)
            if bar is not None:
                bar.close()
        if dist is not None:
            dist.barrier()
        pending = {it for it in plan.items if not is_done(plan, it, False)}
        counts["pending"] = len(pending)
        counts["failed_total"] = sum(read_record(it.path(plan.out)).get("status") == "failed"
                                     for it in mine if it not in pending)
        writes_report = suite["action"] == "report" or (index == 0 if torchrun else (n_shards == 1 or not pending))
        counts["report"] = None
        if writes_report:
            counts["report"] = str(report.write_report(plan.out, benchmarks=suite["benchmarks"]))
            log(f"report: {counts['report']} (+ results.csv, table.csv, figures/)")
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
         shard_index: Optional[int] = None, progress: bool = True) -> int:
    """CLI entry (``invsolve evaluate``): 0 when every item of this process succeeded, 1 if any failed."""
    overrides = list(overrides or [])
    cfg = load_suite(suite, overrides)
    counts = run(cfg, suite, overrides, shards=shards, shard_index=shard_index, progress=progress)
    print(f"{counts['ok'] + counts['failed']} item(s) ran ({counts['failed']} failed), {counts['done_before']} "
          f"were already done; {counts['failed_total']} of this process's {counts['mine']} items failed; "
          f"{counts['pending']} of the suite's {counts['items']} items pending", flush=True)
    return 1 if counts["failed_total"] else 0
