"""``invsolve.solve``: one call from a measurement and an operator to a reconstruction."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from ._measure import Measure
from .errors import DTypeError, InvsolveError, ShapeError
from .operators.base import Operator
from .priors import Prior, load_prior
from .samplers.base import check_compatible, get_sampler, resolve_knobs


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
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _seeds(seed: Union[int, Sequence[int]], batch: int, num_samples: int) -> List[int]:
    """Seed of item ``b``, sample ``s``: ``seed[b] + s`` (a list) or ``seed + b * num_samples + s`` (an int)."""
    if isinstance(seed, (list, tuple)):
        if len(seed) != batch:
            raise ShapeError(f"seed is a list of {len(seed)} seeds but y has a batch of {batch}")
        return [int(s) + k for s in seed for k in range(num_samples)]
    return [int(seed) + i for i in range(batch * num_samples)]


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
          **knobs) -> Result:
    """Reconstruct ``x`` from ``y = A(x) + noise`` with a diffusion prior (or a classical method).

    Args:
        y: measurements ``(B, *operator.output_shape)`` (torch or numpy; complex for MRI k-space). A single
            unbatched item ``operator.output_shape`` is accepted and given a batch axis.
        operator: the forward model (an :class:`~invsolve.operators.base.Operator`).
        prior: embedded prior name, local directory, hub id or a loaded :class:`~invsolve.priors.Prior`;
            ``None`` uses the operator's ``default_prior``. Ignored by classical samplers.
        sampler: ``dds`` (default), a baseline or a classical method; see :func:`invsolve.available_samplers`.
        steps: sampling steps (sampler default if ``None``).
        seed: an int (item ``b``, sample ``s`` uses ``seed + b * num_samples + s``) or one seed per item.
        num_samples: posterior samples per item; ``Result.samples`` / ``Result.std`` hold them.
        device: ``"cpu"``, ``"cuda"``, ... (default: CUDA when available). Inputs are not modified.
        data_scale: for priors trained on scale-normalised data (``mri-brain``), ``"auto"`` rescales ``y`` so the
            reconstruction's 99th-percentile magnitude is 1 (estimated by a short CG solve), and scales the result
            back; a number sets the scale; ``None`` disables it. Priors with a fixed physical range ignore it.
        progress: show a progress bar.
        **knobs: sampler options (e.g. ``eta``, ``cg_iters``, ``gamma`` for DDS); unknown names are errors.

    Returns:
        :class:`Result`.
    """
    spec = get_sampler(sampler)
    if not isinstance(operator, Operator):
        raise DTypeError(f"operator must be an invsolve Operator, got {type(operator).__name__}")
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    kn = resolve_knobs(spec, knobs, steps=steps)
    dev = _default_device(device)

    y = _as_tensor(y)
    if operator.output_shape is not None and y.dim() == len(operator.output_shape):
        y = y[None]
    operator.check_measurement(y)
    B = y.shape[0]

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
        elif isinstance(data_scale, (int, float)):
            if data_scale <= 0:
                raise ValueError(f"data_scale must be > 0, got {data_scale}")
            scale = torch.full((y_dev.shape[0],), float(data_scale), device=dev)
        elif data_scale is not None:
            raise ValueError(f"data_scale must be 'auto', a positive number or None, got {data_scale!r}")
    if scale is not None:
        y_dev = y_dev / scale.reshape((-1,) + (1,) * (y_dev.dim() - 1)).to(y_dev.dtype)

    seeds = _seeds(seed, B, num_samples)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    with Measure(dev) as m:
        out = spec.fn(pr, op, y_dev, generators=gens, progress=progress, **kn)
    x = out.x
    if scale is not None:
        x = x * scale.reshape((-1,) + (1,) * (x.dim() - 1)).to(x.dtype)
    samples = None
    if num_samples > 1:
        samples = x.reshape((B, num_samples) + tuple(x.shape[1:]))
        x = samples.mean(dim=1)
    config = {
        "sampler": sampler, "knobs": kn, "prior": None if pr is None else pr.name, "seeds": seeds,
        "num_samples": num_samples, "device": str(dev), "operator": type(operator).__name__,
        "data_scale": None if scale is None else scale.reshape(B, num_samples)[:, 0].tolist(),
        "torch": torch.__version__,
    }
    return Result(x=x, samples=samples, nfe=out.nfe,
                  seconds=m.seconds, peak_memory=m.peak_memory, config=config, info=out.info)


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

