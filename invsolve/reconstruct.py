"""``invsolve reconstruct CONFIG [key=value ...]``: one reconstruction job from a YAML config.

Writes into ``output.dir`` (refusing to touch an existing non-empty directory unless ``output.overwrite``):
``reconstruction.npy`` (operator domain; complex for MRI), one ``<baseline>.npy`` per baseline, ``std.npy``
when ``solver.num_samples > 1``, ``figure.png`` and ``run.json`` (config, metrics, cost, seeds, meta).
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
from omegaconf import OmegaConf

from ._json import json_safe
from .config import check_keys
from .errors import InputFileError, InvalidValueError, InvsolveError

DEFAULTS: Dict[str, Any] = {
    "problem": {"task": "mri"},
    "solver": {"prior": None, "sampler": "dds", "steps": None, "seed": 0, "num_samples": 1, "device": None,
               "data_scale": "auto", "options": {}, "prior_options": {}, "prior_adapter": None},
    "baselines": None,
    "output": {"dir": "outputs/${problem.task}_${solver.sampler}", "overwrite": False, "figure": True},
}


def load_config(path, overrides: Sequence[str] = ()):
    p = Path(path)
    if not p.exists():
        raise InputFileError(f"config {str(path)!r} not found")
    base = OmegaConf.create(DEFAULTS)
    user = OmegaConf.load(p)
    check_keys(user, base, allow_free=("problem",))  # problem.* is validated by the task, options by the sampler
    cfg = OmegaConf.merge(base, user)
    if overrides:
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise InvsolveError(f"overrides must look like key=value, got {bad}")
        ov = OmegaConf.from_dotlist(list(overrides))
        # solver.options.<sampler>.<knob> may add knobs the file does not set; the sampler validates them
        check_keys(ov, cfg, allow_free=("problem", "solver.options"))
        cfg = OmegaConf.merge(cfg, ov)
    return cfg


def _check_output(out: Path, overwrite: bool):
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InvsolveError(f"output directory {str(out)!r} exists and is not empty; choose another output.dir "
                            f"or pass output.overwrite=true (or --overwrite)")


def run(cfg, progress: bool = True) -> Dict[str, Any]:
    """Run a reconstruction config; returns the run record (also written to ``run.json``)."""
    from .api import solve
    from .eval.metrics import psnr, relative_l2, ssim
    from .samplers import get_sampler
    from .tasks import build_problem

    out = Path(cfg.output.dir)
    _check_output(out, bool(cfg.output.overwrite))
    sv = cfg.solver
    prior = _load_prior(sv) if get_sampler(sv.sampler).needs_prior else None
    problem = build_problem(OmegaConf.to_container(cfg.problem, resolve=True))
    all_options = OmegaConf.to_container(sv.options, resolve=True) or {}
    options = _sampler_options(all_options, sv.sampler)
    steps = sv.steps if "steps" in get_sampler(sv.sampler).defaults else None
    prior = _adapt(prior, sv, problem.operator)
    res = solve(problem.y, problem.operator, prior=prior, sampler=sv.sampler, steps=steps, seed=sv.seed,
                num_samples=int(sv.num_samples), device=sv.device, data_scale=sv.data_scale, progress=progress,
                **options)
    baselines = problem.default_baselines if cfg.baselines is None else list(cfg.baselines)
    base_res = {b: solve(problem.y, problem.operator, sampler=b, device=sv.device,
                         **_sampler_options(all_options, b)) for b in baselines}

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
        "baseline_cost": {b: {"seconds": r.seconds} for b, r in base_res.items()},
    }
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
            shutil.rmtree(out)  # only reached with overwrite=true (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    record["output_dir"] = str(out)
    return record


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
        raise InvsolveError(f"solver.options must map sampler names to option dicts (e.g. solver.options.dds.gamma=10);"
                            f" {bad} are not sampler names")
    return dict(options.get(sampler) or {})


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
