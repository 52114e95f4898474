"""``invsolve reconstruct CONFIG [key=value ...]``: one reconstruction job from a YAML config.

Writes into ``output.dir``: ``reconstruction.npy`` (operator domain; complex for MRI), one ``<baseline>.npy`` per
baseline, ``std.npy`` when ``solver.num_samples > 1``, ``figure.png`` and ``run.json`` (config, metrics, cost,
seeds, meta). An existing non-empty ``output.dir`` is never touched: the run goes to the first free
``<dir>-2``, ``<dir>-3``, ... (and says so) unless ``output.overwrite`` (``--overwrite``) replaces it.

Every check that needs no computation runs first (:func:`preflight`): config completeness, unknown keys, every
problem option and sampler option against its declaration, seeds, device, the output directory's writability;
then the problem is built and every method is checked against its operator, and only then does anything run.
Every image is solved with its own generator seeded by ``solver.seed`` (sample ``s``: ``seed + s``), exactly like a
benchmark item, so an image's result never depends on which other images are selected with it (the slices of one
volume, a ``joint`` problem, get ``seed + slice index``).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from . import checks
from ._json import json_safe
from .config import check_keys, load_mapping, parse_overrides, require_mapping
from .errors import ConfigError, InvalidValueError, InvsolveError, UnknownNameError

DEFAULTS: Dict[str, Any] = {
    "problem": {},
    "solver": {"prior": None, "sampler": "dds", "steps": None, "seed": 0, "num_samples": 1, "device": None,
               "data_scale": "auto", "preset": None, "options": {}, "prior_options": {}, "prior_adapter": None},
    "baselines": None,
    "output": {"dir": None, "overwrite": False, "figure": True},
}
SECTIONS = "sections problem (with problem.task), solver, baselines, output"


def load_config(path, overrides: Sequence[str] = ()):
    """The config file merged over :data:`DEFAULTS` and ``key=value`` overrides; malformed or incomplete configs
    (empty file, top-level list, unknown keys, sections that are not mappings, no ``problem.task``) raise."""
    from .tasks import available_tasks

    base = OmegaConf.create(DEFAULTS)
    user = load_mapping(path, "config", SECTIONS)
    check_keys(user, base, allow_free=("problem",))  # problem.* is validated by the task, options by the sampler
    for key in ("problem", "solver", "output"):
        require_mapping(user, key)
    cfg = OmegaConf.merge(base, user)
    if overrides:
        ov = parse_overrides(overrides)
        # solver.options.<sampler>.<knob> may add knobs the file does not set; the sampler validates them
        check_keys(ov, cfg, allow_free=("problem", "solver.options"))
        for key in ("problem", "solver", "output"):
            require_mapping(ov, key)
        cfg = OmegaConf.merge(cfg, ov)
    if cfg.problem.get("task") is None:
        raise ConfigError(f"problem.task is missing in {str(path)!r}; expected one of: "
                          f"{', '.join(available_tasks())} (e.g. problem.task=mri)")
    return cfg


def _fresh_dir(out: Path) -> Path:
    """``out`` if it is absent or empty, else the first of ``out-2``, ``out-3``, ... that is."""
    k, cand = 1, out
    while cand.exists() and (not cand.is_dir() or any(cand.iterdir())):
        k += 1
        cand = out.with_name(f"{out.name}-{k}")
    return cand


def _sampler_knobs(all_options: Dict[str, Any], name: str, steps=None) -> Dict[str, Any]:
    """Resolved options of method ``name`` from ``solver.options.<name>`` (errors name the config key)."""
    from .samplers import get_sampler
    from .samplers.base import resolve_knobs
    from .samplers.knobs import Float

    spec = get_sampler(name)
    knobs = _sampler_options(all_options, name)
    if "sigma_y" in knobs and "sigma_y" not in spec.defaults:  # the noise level of y: solve()'s, for any method
        Float(0, doc="noise std of y").check(knobs.pop("sigma_y"), f"solver.options.{name}.sigma_y")
    if steps is not None and "steps" in spec.defaults:
        knobs["steps"] = checks.check_count(steps, "solver.steps")
    try:
        kn = resolve_knobs(spec, knobs)
        checks.nested_sampler(spec, kn, f"solver.options.{name}.")
    except (InvalidValueError, UnknownNameError) as e:
        msg, head = str(e), f"sampler {name!r}: "
        if msg.startswith(head):
            msg = f"solver.options.{name}.{msg[len(head):]}"
        elif not msg.startswith("solver."):
            msg = f"solver.options.{name}: {msg}"
        raise type(e)(msg) from None
    return kn


def preflight(cfg) -> Dict[str, Any]:
    """Every check that needs no computation; returns the validated pieces (problem options, knobs, seed,
    device, output directory). Nothing is built, loaded or written."""
    from .priors import available_priors
    from .samplers import get_sampler
    from .tasks import check_options

    sv = cfg.solver
    if not isinstance(sv.options, DictConfig):
        raise ConfigError("solver.options must map sampler names to option sections, e.g. solver.options.dds.gamma=10")
    all_options = OmegaConf.to_container(sv.options, resolve=True) or {}
    spec = get_sampler(sv.sampler)
    knobs = _sampler_knobs(all_options, sv.sampler, sv.steps)  # solver.steps is ignored by samplers without steps
    baselines = cfg.baselines
    if isinstance(baselines, ListConfig):
        baselines = OmegaConf.to_container(baselines, resolve=True)
    if baselines is not None and (not isinstance(baselines, list) or not all(isinstance(b, str) for b in baselines)):
        raise InvalidValueError(f"baselines={baselines!r} is not accepted; expected a list of method names, e.g. "
                                f"baselines=[adjoint,cg], [] for none, or null for the task's defaults")
    # every options section is validated now, also those of the task's default baselines (known once it is built)
    base_knobs = {b: _sampler_knobs(all_options, b) for b in sorted(set(baselines or []) | set(all_options))}
    options = _sampler_options(all_options, sv.sampler)  # what the user set (validated above)
    if "steps" in knobs and sv.steps is not None:
        options["steps"] = knobs["steps"]
    preset = sv.get("preset")
    if preset is not None and not isinstance(preset, (bool, str)):
        raise InvalidValueError(f"solver.preset={preset!r} is not accepted; expected null (look one up), false (off) "
                                f"or a preset id (invsolve.presets.available())")
    if not isinstance(sv.prior_options, DictConfig):
        raise ConfigError("solver.prior_options must be a mapping of load_prior keywords, e.g. "
                          "solver.prior_options.dtype=bf16")
    from .priors.adapters import ADAPTERS

    if sv.prior_adapter is not None and sv.prior_adapter not in ADAPTERS:
        raise InvalidValueError(f"solver.prior_adapter={sv.prior_adapter!r} is not accepted; expected one of "
                                f"{sorted(ADAPTERS)} or null")
    prior = sv.prior
    if spec.needs_prior and prior is not None:
        if not isinstance(prior, str):
            raise InvalidValueError(f"solver.prior={prior!r} is not accepted; expected an embedded prior name, a "
                                    f"directory or a hub id")
        from .priors.registry import ARCH_PRESETS

        if (prior not in available_priors() and prior not in ARCH_PRESETS and not Path(prior).expanduser().exists()
                and "/" not in prior):
            raise UnknownNameError(f"solver.prior={prior!r} is not an embedded prior ({', '.join(available_priors())}),"
                                   f" an ADM architecture preset ({', '.join(sorted(ARCH_PRESETS))}; with "
                                   f"solver.prior_options.random_init=true), an existing directory or a hub id "
                                   f"('org/name')")
    for key in ("overwrite", "figure"):
        if not isinstance(cfg.output[key], bool):
            raise InvalidValueError(f"output.{key}={cfg.output[key]!r} is not accepted; expected true or false")
    ds = sv.data_scale
    if not (ds is None or ds == "auto" or (isinstance(ds, (int, float)) and not isinstance(ds, bool)
                                           and np.isfinite(ds) and ds > 0)):
        raise InvalidValueError(f"solver.data_scale={ds!r} is not accepted; expected 'auto', a number > 0 or null")
    problem = check_options(OmegaConf.to_container(cfg.problem, resolve=True))
    out = Path(cfg.output.dir or f"outputs/{cfg.problem.task}_{sv.sampler}")
    checks.writable_dir(out, "output.dir")
    return {
        "problem": {"task": cfg.problem.task, **problem}, "knobs": knobs, "baselines": baselines,
        "baseline_knobs": base_knobs, "options": options, "preset": preset,
        "baseline_options": {b: _sampler_options(all_options, b) for b in base_knobs},
        "seed": checks.check_seed(sv.seed, "solver.seed"),
        "num_samples": checks.check_count(sv.num_samples, "solver.num_samples"),
        "device": checks.check_device(sv.device, "solver.device"), "requested_dir": out,
        "output_dir": out if cfg.output.overwrite else _fresh_dir(out),
    }


def check_methods(problem, pre: Dict[str, Any], sampler: str) -> None:
    """Each method applies to the built problem's operator (e.g. ``fbp`` only to CT), before anything runs."""
    why = checks.method_problem(sampler, problem.operator, pre["knobs"])
    if why:
        raise InvalidValueError(f"solver.sampler={sampler!r} cannot run on this problem: {why}")
    for b in (problem.default_baselines if pre["baselines"] is None else pre["baselines"]):
        why = checks.method_problem(b, problem.operator, pre["baseline_knobs"].get(b))
        if why:
            raise InvalidValueError(f"baselines: {b!r} cannot run on this problem: {why}")


def run(cfg, progress: bool = True) -> Dict[str, Any]:
    """Run a reconstruction config; returns the run record (also written to ``run.json``)."""
    from .api import solve
    from .eval.metrics import psnr, relative_l2, ssim
    from .samplers import get_sampler
    from .tasks import build_problem

    pre = preflight(cfg)
    out = pre["output_dir"]
    sv = cfg.solver
    prior = _load_prior(sv) if get_sampler(sv.sampler).needs_prior else None
    problem = build_problem(pre["problem"])
    prior = _adapt(prior, sv, problem.operator)
    check_methods(problem, pre, sv.sampler)
    B = problem.y.shape[0]
    seed = pre["seed"] if problem.joint else [pre["seed"]] * B  # a volume's slices: seed + slice index
    preset = pre["preset"]
    # only the user's options are passed: solve() adds the preset and the registered defaults under them
    res = _solve(solve, problem, pre["options"], sampler=sv.sampler, prior=prior, seed=seed,
                 num_samples=pre["num_samples"], device=pre["device"], data_scale=sv.data_scale, progress=progress,
                 preset=preset)
    baselines = problem.default_baselines if pre["baselines"] is None else pre["baselines"]
    base_res = {b: _solve(solve, problem, pre["baseline_options"].get(b, {}), sampler=b, device=pre["device"],
                          preset=False if preset is False else None) for b in baselines}

    metrics: Dict[str, Any] = {}
    signed = _signed_field(problem)
    if problem.x_true is not None:
        for name, r in [(sv.sampler, res)] + list(base_res.items()):
            x = r.x.detach().cpu()
            metrics[name] = {"psnr": psnr(x, problem.x_true, problem.data_range),
                             "ssim": ssim(x, problem.x_true, problem.data_range)}
            metrics[name]["psnr_mean"] = float(np.mean(metrics[name]["psnr"]))
            metrics[name]["ssim_mean"] = float(np.mean(metrics[name]["ssim"]))
            if signed:  # a physical field (vorticity): relative L2 is the metric
                metrics[name]["relative_l2"] = relative_l2(x, problem.x_true)
                metrics[name]["relative_l2_mean"] = float(np.mean(metrics[name]["relative_l2"]))

    record = {
        "config": OmegaConf.to_container(cfg, resolve=True), "names": problem.names, "metrics": metrics,
        "cost": {"nfe": res.nfe, "seconds": res.seconds, "peak_memory_bytes": res.peak_memory},
        "solve_config": res.config, "problem_meta": json_safe(problem.meta),
        "seeds": {"rule": "slice b of the volume: solver.seed + b (sample s: + s)" if problem.joint else
                  "every image: solver.seed (sample s: solver.seed + s), independent of the selection",
                  "per_image": dict(zip(problem.names, res.config["seeds"][::pre["num_samples"]]))},
        "baseline_cost": {b: {"seconds": r.seconds} for b, r in base_res.items()},
        "baseline_configs": {b: json_safe(r.config) for b, r in base_res.items()}, "output_dir": str(out),
    }
    if out != pre["requested_dir"]:
        record["note"] = (f"{pre['requested_dir']} exists and is not empty; wrote {out} instead (--overwrite "
                          f"replaces it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        np.save(tmp / "reconstruction.npy", res.x.detach().cpu().numpy())
        for b, r in base_res.items():
            np.save(tmp / f"{b}.npy", r.x.detach().cpu().numpy())
        if res.samples is not None:
            np.save(tmp / "samples.npy", res.samples.detach().cpu().numpy())
            np.save(tmp / "std.npy", res.std.detach().cpu().numpy())
        if "mask" in problem.meta or hasattr(problem.operator, "mask"):
            m = getattr(problem.operator, "mask", None)
            if isinstance(m, torch.Tensor):
                np.save(tmp / "mask.npy", m.detach().cpu().numpy())
        if cfg.output.figure:
            _figure(tmp / "figure.png", problem, res, base_res, metrics, sv.sampler, signed)
        (tmp / "run.json").write_text(json.dumps(record, indent=2))
        if out.exists():
            shutil.rmtree(out)  # only reached with overwrite=true (else out is a fresh name)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return record


def _solve(solve, problem, options: Dict[str, Any], **kw):
    """``solve`` on the problem: the noise level is the problem's (``problem.noise_sigma`` of simulated data) unless
    the sampler's options set ``sigma_y``, which wins (both in ``y``'s units); presets apply unless ``solver.preset``
    is false or names one."""
    options = dict(options)
    source = "sampler option (solver.options)" if "sigma_y" in options else "problem (problem.noise_sigma)"
    sigma_y = options.pop("sigma_y", problem.sigma_y)
    res = solve(problem.y, problem.operator, sigma_y=sigma_y, **kw, **options)
    if res.config.get("sigma_y", {}).get("source") == "argument":
        res.config["sigma_y"]["source"] = source
    return res


def _load_prior(sv):
    """``solver.prior`` as given (a name, loaded by :func:`solve`), or loaded here with ``solver.prior_options``
    (``load_prior`` keywords: ``arch``, ``dtype``, ``random_init``, ``channels_last``, ``compile``, ...) when those
    or ``solver.prior_adapter`` are set; runs before the problem is built, so bad options fail first."""
    from .priors.adapters import ADAPTERS

    options = OmegaConf.to_container(sv.prior_options, resolve=True) or {}
    if sv.prior_adapter is not None and sv.prior_adapter not in ADAPTERS:
        raise InvalidValueError(f"solver.prior_adapter must be one of {sorted(ADAPTERS)} or null, got "
                                f"{sv.prior_adapter!r}")
    if not options and sv.prior_adapter is None:
        return sv.prior
    if sv.prior is None:
        raise InvsolveError("solver.prior_options / solver.prior_adapter need solver.prior")
    from .priors import load_prior

    try:
        return load_prior(sv.prior, **options)
    except TypeError as e:  # an unknown keyword in solver.prior_options
        raise InvalidValueError(f"solver.prior_options {sorted(options)}: {e}") from None


def _adapt(prior, sv, operator):
    """Wrap a loaded prior with ``solver.prior_adapter`` (``resize`` | ``pad``) to the operator's image size."""
    if sv.prior_adapter is None or isinstance(prior, str) or prior is None:
        return prior
    from .priors.adapters import fit_to

    return fit_to(prior, tuple(operator.input_shape[-2:]), sv.prior_adapter)


def _sampler_options(options: Dict[str, Any], sampler: str) -> Dict[str, Any]:
    """``solver.options`` maps sampler names to their options; return those of ``sampler``."""
    from .samplers import available_samplers

    names = available_samplers()
    bad = [k for k in options if k not in names]
    if bad:
        raise UnknownNameError(f"solver.options.{bad[0]}: {bad[0]!r} is not a sampler; solver.options maps sampler "
                               f"names ({', '.join(names)}) to their options, e.g. solver.options.dds.gamma=10")
    v = options.get(sampler) or {}
    if not isinstance(v, dict):
        raise ConfigError(f"solver.options.{sampler}={v!r} is not accepted; expected a section of {sampler}'s "
                          f"options (see invsolve list --sampler {sampler})")
    return dict(v)


def _signed_field(problem) -> bool:
    """A real truth with negative values and no fixed data range (a physical field such as vorticity)."""
    x = problem.x_true
    return problem.data_range is None and x is not None and not x.is_complex() and float(x.min()) < 0


def _figure(path, problem, res, base_res, metrics, sampler: str, signed: bool = False):
    from .plotting import displayable, reconstruction_figure

    panels, titles = {}, {}
    if problem.x_true is not None:
        panels["truth"] = displayable(problem.x_true)
    for name, r in list(base_res.items()) + [(sampler, res)]:
        panels[name] = displayable(r.x)
        if name in metrics:
            if "relative_l2" in metrics[name]:
                for i, e in enumerate(metrics[name]["relative_l2"]):
                    titles[f"{name}#{i}"] = f"rel. L2 {e:.3f}"
            else:
                for i, (p, s) in enumerate(zip(metrics[name]["psnr"], metrics[name]["ssim"])):
                    titles[f"{name}#{i}"] = f"{p:.2f} dB / {s:.3f}"
    if res.samples is not None:
        panels["std"] = displayable(res.std[:, None] if res.std.dim() == 3 else res.std)
    m = problem.meta
    sup = f"{sampler}: {res.nfe} NFE, {res.seconds:.1f} s"
    if "acceleration" in m:
        sup += f"; {m.get('mask_type', '')} x{m['acceleration']:g}"
    reconstruction_figure(panels, path, truth_key="truth" if problem.x_true is not None else None, titles=titles,
                          suptitle=sup, error_of=sampler, signed=signed)


def main(config: str, overrides: Optional[Sequence[str]] = None, overwrite: bool = False,
         progress: bool = True) -> Dict[str, Any]:
    cfg = load_config(config, overrides or ())
    if overwrite:
        cfg.output.overwrite = True
    return run(cfg, progress=progress)
