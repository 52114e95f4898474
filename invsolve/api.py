"""``invsolve.solve``: one call from a measurement and an operator to a reconstruction."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from . import checks, noise_level, presets
from ._measure import Measure
from .errors import DTypeError, InvalidValueError, InvsolveError, ShapeError
from .operators.base import Operator
from .priors import Prior, load_prior
from .samplers.base import SamplerOutput, check_compatible, get_sampler, resolve_knobs


@dataclass
class Result:
    """Output of :func:`solve`.

    Attributes:
        x: reconstruction ``(B, *operator.input_shape)`` in the operator's domain and dtype (complex for MRI);
            the mean over samples when ``num_samples > 1``.
        samples: ``(B, num_samples, *operator.input_shape)`` when ``num_samples > 1``, else ``None``.
        nfe: network function evaluations (batched calls).
        seconds: wall time of the sampler (excluding prior loading).
        peak_memory: bytes (CUDA: peak allocated; CPU: peak resident-set growth), ``None`` if unknown.
        config: everything needed to rerun: sampler, knobs, prior, seeds, device, data scale, versions.
        info: sampler diagnostics (e.g. CG residuals).
    """

    x: torch.Tensor
    samples: Optional[torch.Tensor] = None
    nfe: int = 0
    seconds: float = 0.0
    peak_memory: Optional[int] = None
    config: Dict[str, Any] = field(default_factory=dict)
    info: Dict[str, Any] = field(default_factory=dict)

    @property
    def std(self) -> Optional[torch.Tensor]:
        """Per-pixel standard deviation over samples (of the magnitude for complex data), or ``None``."""
        if self.samples is None:
            return None
        s = self.samples.abs() if self.samples.is_complex() else self.samples
        return s.std(dim=1)


def _as_tensor(y, name: str = "y") -> torch.Tensor:
    if isinstance(y, np.ndarray):
        y = torch.from_numpy(np.ascontiguousarray(y))
    if not isinstance(y, torch.Tensor):
        raise DTypeError(f"{name} must be a torch.Tensor or numpy array, got {type(y).__name__}")
    if y.dtype == torch.float64:
        y = y.float()
    elif y.dtype == torch.complex128:
        y = y.to(torch.complex64)
    elif not (y.is_floating_point() or y.is_complex()):
        raise DTypeError(f"{name} must be a floating-point or complex array, got dtype {y.dtype}")
    return y


def _default_device(device) -> torch.device:
    return checks.check_device(device)


def _seeds(seed: Union[int, Sequence[int]], batch: int, num_samples: int) -> List[int]:
    """Seed of item ``b``, sample ``s``: ``seed[b] + s`` (a list) or ``seed + b * num_samples + s`` (an int)."""
    return checks.seeds_for(checks.check_seeds(seed, batch), batch, num_samples)


def _with_output_shape(operator: Operator, y: torch.Tensor) -> Operator:
    """A black box without ``output_shape`` checks its outputs against ``y``'s item shape (a shallow copy; the
    caller's operator is not modified), so a wrong output shape fails at the first evaluation with the items named."""
    from .operators.blackbox import BlackBox

    if isinstance(operator, BlackBox) and operator.output_shape is None and y.dim() > 1:
        operator = copy.copy(operator)
        operator.output_shape, operator.shape_from_y = tuple(y.shape[1:]), True
    return operator


@torch.no_grad()
def estimate_scale(op, y: torch.Tensor, iterations: int = 10, q: float = 0.99) -> torch.Tensor:
    """Per-item data scale ``(B,)``: the ``q``-quantile of ``|x_ls|`` for a short CG least-squares solve."""
    from .data.mri import robust_scale
    from .linalg import cg

    x = cg(op.normal, op.adjoint(y), max_iter=iterations).x
    return robust_scale(x, q)


def solve(y, operator: Operator, prior: Union[str, Prior, None] = None, sampler: str = "dds",
          steps: Optional[int] = None, seed: Union[int, Sequence[int]] = 0, num_samples: int = 1,
          device=None, *, data_scale: Union[str, float, None] = "auto", progress: bool = False,
          sigma_y=None, preset: Union[None, bool, str] = None, **knobs) -> Result:
    """Reconstruct ``x`` from ``y = A(x) + noise`` with a diffusion prior (or a classical method).

    Args:
        y: measurements ``(B, *operator.output_shape)`` (torch or numpy; complex for MRI k-space). A single
            unbatched item ``operator.output_shape`` is accepted and given a batch axis.
        operator: the forward model (an :class:`~invsolve.operators.base.Operator`).
        prior: embedded prior name, local directory, hub id or a loaded :class:`~invsolve.priors.Prior`;
            ``None`` uses the operator's ``default_prior``. Ignored by classical samplers.
        sampler: ``dds`` (default), a baseline or a classical method; see :func:`invsolve.available_samplers`.
        steps: sampling steps (sampler default if ``None``).
        seed: an int in [0, 2**63 - 1] (item ``b``, sample ``s`` uses ``seed + b * num_samples + s``) or one seed
            per item (item ``b``, sample ``s`` uses ``seed[b] + s``: an item's result depends on its own seed only,
            never on its batch-mates; ``invsolve reconstruct`` and the harness use this form).
        num_samples: posterior samples per item; ``Result.samples`` / ``Result.std`` hold them.
        device: ``"cpu"``, ``"cuda"``, ... (default: CUDA when available). Inputs are not modified.
        data_scale: for priors trained on scale-normalised data (``mri-brain``), ``"auto"`` rescales ``y`` so the
            reconstruction's 99th-percentile magnitude is 1 (estimated by a short CG solve), and scales the result
            back; a number sets the scale; ``None`` disables it. Priors with a fixed physical range ignore it.
        progress: show a progress bar.
        sigma_y: noise std of ``y`` in ``y``'s units (complex data: total variance ``sigma_y²`` per entry), a number
            or one per item. It reaches every sampler with a ``sigma_y`` option (DDS, DDNM+, ΠGDM, DiffPIR, DPS,
            STSL, EnKG), divided by the data scale when ``y`` is rescaled for the prior. ``None``: estimated from
            ``y`` where a standard estimator exists for the operator's family (:mod:`invsolve.noise_level`),
            otherwise each sampler keeps its default (a warning says which); a ``sigma_y`` sampler option in
            ``**knobs`` (the sampler's units) is used as given. ``Result.config["sigma_y"]`` records the value used and
            where it came from.
        preset: tuned settings of an embedded prior (:mod:`invsolve.presets`): ``None`` (default) applies the
            preset for this prior, operator family, sampler and noise level if there is one; ``False`` turns
            presets off; a preset id selects one. Registered defaults < preset < ``**knobs``.
            ``Result.config["preset"]`` records the preset applied (its id and options) or ``None``.
        **knobs: sampler options (e.g. ``eta``, ``cg_iters``, ``gamma`` for DDS); unknown names are errors.

    Returns:
        :class:`Result`.
    """
    spec = get_sampler(sampler)
    if not isinstance(operator, Operator):
        raise DTypeError(f"operator must be an invsolve Operator, got {type(operator).__name__}")
    num_samples = checks.check_count(num_samples, "num_samples")
    if steps is not None:
        steps = checks.check_count(steps, "steps")
    kn = resolve_knobs(spec, knobs, steps=steps)
    checks.nested_sampler(spec, kn, f"sampler {sampler!r}: ")
    seed = checks.check_seeds(seed, None)
    if preset is not None and not isinstance(preset, (bool, str)):
        raise InvalidValueError(f"preset={preset!r} is not accepted; expected None (look one up), False (off) or a "
                                f"preset id (see invsolve.presets.available())")
    dev = _default_device(device)
    if not (data_scale is None or data_scale == "auto" or (isinstance(data_scale, (int, float))
                                                            and not isinstance(data_scale, bool)
                                                            and np.isfinite(data_scale) and data_scale > 0)):
        raise InvalidValueError(f"data_scale={data_scale!r} is not accepted; expected 'auto', a number > 0 or None")

    y = _as_tensor(y)
    if operator.output_shape is not None and y.dim() == len(operator.output_shape):
        y = y[None]
    if y.dim() == 0 or y.shape[0] == 0:
        raise ShapeError(f"y has shape {tuple(y.shape)}: a batch of 0 items; expected at least one measurement "
                         f"(B, *operator.output_shape)")
    operator.check_measurement(y)
    B = y.shape[0]
    seeds = _seeds(seed, B, num_samples)
    operator = _with_output_shape(operator, y)
    sig_arg = noise_level.check_sigma_y(sigma_y, B)

    pr = None
    if spec.needs_prior:
        pr = load_prior(prior if prior is not None else _default_prior(operator), device=dev)
    check_compatible(spec, operator, pr, kn)

    op = operator
    if _module_device(operator) not in (None, dev):
        op = copy.deepcopy(operator).to(dev)
    op = op.repeat_interleave(num_samples)
    y_dev = y.to(dev).repeat_interleave(num_samples, 0)

    scale = None
    if pr is not None and operator.is_linear and (pr.card or {}).get("normalization") == "q99":
        if data_scale == "auto":
            scale = estimate_scale(op, y_dev)
        elif data_scale is not None:
            scale = torch.full((y_dev.shape[0],), float(data_scale), device=dev)
    if scale is not None:
        y_dev = y_dev / scale.reshape((-1,) + (1,) * (y_dev.dim() - 1)).to(y_dev.dtype)

    prior_name = None if pr is None else pr.name
    family = getattr(operator, "task_family", None)
    uses_sigma = "sigma_y" in spec.defaults
    level = noise_level.NoiseLevel(None, "not needed")
    if sig_arg is not None:  # y's units -> the sampler's (per sample row)
        rows = sig_arg.repeat_interleave(num_samples)
        level = noise_level.NoiseLevel(rows if scale is None else rows / scale.double().cpu(), "argument")
    elif uses_sigma and knobs.get("sigma_y") is not None:  # the sampler's own option (its units) counts as given
        level = noise_level.NoiseLevel(torch.full((B * num_samples,), float(kn["sigma_y"]), dtype=torch.float64),
                                       "sampler option")
    elif uses_sigma or presets.needs_noise(prior_name, family, spec.name):
        level = noise_level.resolve(op, y_dev, None, sampler=spec.name if uses_sigma else None,
                                    sampler_default=spec.defaults.get("sigma_y"))
    chosen = presets.select(preset, prior_name, family, spec.name, level.noisy)
    if chosen is not None:
        # registered defaults < preset < the user's options
        kn = resolve_knobs(spec, {**chosen.knobs, **knobs}, steps=steps)
    sig_rows = level.sigma if uses_sigma else None
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    with Measure(dev) as m:
        out = _run_sampler(spec, pr, op, y_dev, gens, progress, kn, sig_rows)
    x = out.x
    if scale is not None:
        x = x * scale.reshape((-1,) + (1,) * (x.dim() - 1)).to(x.dtype)
    samples = None
    if num_samples > 1:
        samples = x.reshape((B, num_samples) + tuple(x.shape[1:]))
        x = samples.mean(dim=1)
    if sig_rows is not None:  # the level the sampler ran with (sampler units; per item when they differ)
        per_item = [float(v) for v in sig_rows[::num_samples]]
        kn = {**kn, "sigma_y": per_item[0] if len(set(per_item)) == 1 else per_item}
    config = {
        "sampler": sampler, "knobs": kn, "prior": None if pr is None else pr.name, "seeds": seeds,
        "num_samples": num_samples, "device": str(dev), "operator": type(operator).__name__,
        "data_scale": None if scale is None else scale.reshape(B, num_samples)[:, 0].tolist(),
        "sigma_y": _sigma_record(level, scale, B, num_samples, uses_sigma),
        "preset": None if chosen is None else chosen.record(),
        "torch": torch.__version__,
    }
    return Result(x=x, samples=samples, nfe=out.nfe,
                  seconds=m.seconds, peak_memory=m.peak_memory, config=config, info=out.info)


def _rows(op: Operator, a: int, b: int) -> Operator:
    """The operator of batch rows ``a:b`` (per-row buffers sliced; shared ones kept)."""
    B = op.batch_size()
    if B is None:
        return op
    sub = copy.deepcopy(op)
    for mod in sub.modules():
        for name, buf in list(mod._buffers.items()):
            if buf is not None and buf.dim() > 0 and buf.shape[0] == B:
                mod._buffers[name] = buf[a:b].clone()
    return sub


def _run_sampler(spec, pr, op, y, gens, progress, kn, sigma):
    """Run the sampler with ``sigma_y`` (sampler units, one per row, or ``None``); rows with different levels run
    as separate calls (a sampler takes one ``sigma_y``; rows are independent, so the results are the same)."""
    if sigma is None:
        return spec.fn(pr, op, y, generators=gens, progress=progress, **kn)
    groups, start = [], 0
    for i in range(1, len(sigma) + 1):
        if i == len(sigma) or float(sigma[i]) != float(sigma[start]):
            groups.append((start, i))
            start = i
    outs = []
    for a, b in groups:
        k = {**kn, "sigma_y": spec.knob_specs["sigma_y"].check(float(sigma[a]), f"sampler {spec.name!r}: sigma_y")}
        o = op if len(groups) == 1 else _rows(op, a, b)
        outs.append(spec.fn(pr, o, y[a:b], generators=gens[a:b], progress=progress, **k))
    if len(outs) == 1:
        return outs[0]
    return SamplerOutput(x=torch.cat([o.x for o in outs]), nfe=max(o.nfe for o in outs),
                         info={"rows": [list(g) for g in groups], "per_group": [o.info for o in outs]})


def _sigma_record(level, scale, B: int, num_samples: int, uses_sigma: bool) -> Dict[str, Any]:
    """``Result.config["sigma_y"]``: per item, in y's units and the sampler's, and its source."""
    rec = level.record(scale)
    for k in ("value", "sampler_units"):
        if rec[k] is not None:
            rec[k] = rec[k][::num_samples][:B]
    rec["used_by_sampler"] = uses_sigma
    return rec


def _default_prior(operator: Operator) -> str:
    name = getattr(operator, "default_prior", None)
    if name is None:
        raise InvsolveError(f"{type(operator).__name__} has no default prior; pass prior=... "
                            f"(see invsolve.available_priors())")
    return name


def _module_device(op: Operator):
    for t in list(op.buffers()) + list(op.parameters()):
        return t.device
    return None

