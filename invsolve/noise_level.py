"""The measurement noise level ``sigma_y``: estimators, and the rule :func:`invsolve.solve` follows to find it.

``sigma_y`` is the standard deviation of the noise on each entry of ``y`` (complex data: total variance ``sigma_y²``
per entry, ``sigma_y² / 2`` on each of the real and imaginary parts, as :class:`~invsolve.operators.noise.
GaussianNoise` draws it), so ``E ||noise||² = m sigma_y²`` over the ``m`` measured entries.

Where it comes from (:func:`resolve`, recorded in ``Result.config["sigma_y"]``):

1. the sampler option ``sigma_y=`` the user passed (it wins; in the sampler's units);
2. ``solve(..., sigma_y=...)`` or a config's ``problem.noise_sigma`` (in the units of ``y``; divided by the data
   scale when ``solve`` rescales ``y`` for the prior, e.g. ``mri-brain``);
3. an estimate from ``y`` where a standard estimator exists for the operator's ``task_family``
   (:func:`estimate_sigma_y`);
4. otherwise unknown: each sampler uses its registered default (DDS: noiseless), with a warning (once per family).

Estimators (per batch item; all are biased *upwards* by signal that looks like noise, so noiseless data give a
small positive value rather than 0):

* ``mri`` (multi-coil Cartesian k-space): the smaller of (a) the robust level of the sampled k-space entries in the
  outer frame ``max(|k_y|/H, |k_x|/W) >= 3/8``, where the image's spectrum has decayed and noise dominates:
  ``median |y| / sqrt(ln 2)`` (``|n|²`` of circular complex noise is exponential with mean ``sigma²``); and, when
  the system is overdetermined (``m >= 1.25 n`` measured entries for ``n`` unknowns), (b) the residual variance of
  the least-squares fit, ``||y - A x_ls||² / (m - n)`` (the unbiased regression estimator; ``x_ls`` by 100 CG
  iterations, whose unconverged directions add a little).
* ``deblur`` / ``inpaint`` (images): Donoho's MAD estimator ``median |h| / 0.6745`` of the finest Haar diagonal
  detail ``h`` of ``y`` (:func:`invsolve.samplers.wiener.noise_sigma_mad`), over the 2x2 blocks whose pixels are all
  measured.
* ``ct`` (sinograms ``(B, 1, views, detectors)``): the MAD of the third differences along the detector axis,
  ``median |s_{k-1} - 3 s_k + 3 s_{k+1} - s_{k+2}| / (sqrt(20) 0.6745)`` (a projection is smooth along the detector
  away from edges; third differences cancel its quadratic part). On 8 validation phantoms (seed 1234, 16 views)
  noiseless sinograms read 0.008-0.049 (below 2e-3 of their 99th percentile), noise 0.05 / 0.2 read 0.073-0.094 /
  0.22-0.245.
* An estimate below ``DETECTION_FLOOR`` (1e-3; CT 2e-3) times the 99th-percentile magnitude of ``Aᴴy`` (images and
  sinograms: of ``y``) is below what these estimators resolve (noiseless 4x k-space reads about 2e-4 of it, the
  residual of an unconverged least-squares fit) and counts as 0, noiseless; on the MRI validation slices a level
  of 0.005 reads 0.0058.
* ``sr`` and the rest: none. Low-resolution images keep real detail at their finest scale, which a MAD estimator
  would mistake for noise; give ``sigma_y`` for noisy data.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch

from .errors import InvalidValueError, ShapeError

OUTER_FRAME = 3 / 8  # k-space entries with max(|ky|/H, |kx|/W) >= this form the "outer frame"
LS_OVERDETERMINED = 1.25  # least-squares residual estimator when m >= this * n
LS_CG_ITERS = 100
ESTIMATED = ("mri", "ct", "deblur", "inpaint")  # families with an estimator (estimate_sigma_y)
DETECTION_FLOOR = {"ct": 2e-3}  # estimates below this fraction of the data's 99th percentile count as 0
DEFAULT_FLOOR = 1e-3
_WARNED: set = set()


@dataclass
class NoiseLevel:
    """A resolved noise level.

    Attributes:
        sigma: ``(B,)`` float64 in the units of ``y`` as the sampler sees it, or ``None`` (unknown).
        source: ``"sampler option"``, ``"argument"`` (``solve(sigma_y=...)``, a config's ``problem.noise_sigma``),
            ``"estimated"`` or ``"unknown"``.
        method: the estimator used (``source == "estimated"``), else ``None``.
    """

    sigma: Optional[torch.Tensor]
    source: str
    method: Optional[str] = None

    @property
    def noisy(self) -> Optional[bool]:
        """``True`` if ``sigma > 0`` for some item, ``False`` if 0 for all, ``None`` if unknown."""
        return None if self.sigma is None else bool((self.sigma > 0).any())

    def record(self, scale: Optional[torch.Tensor] = None) -> Dict[str, Any]:
        """JSON-friendly record: values in ``y``'s units (times ``scale`` when the sampler saw scaled data)."""
        if self.sigma is None:
            return {"value": None, "sampler_units": None, "source": self.source, "method": self.method}
        orig = self.sigma if scale is None else self.sigma * scale.double().cpu()
        return {"value": [float(v) for v in orig], "sampler_units": [float(v) for v in self.sigma],
                "source": self.source, "method": self.method}


def check_sigma_y(sigma_y, batch: int, name: str = "sigma_y") -> Optional[torch.Tensor]:
    """``None``, a number ``>= 0`` or one per batch item -> ``(batch,)`` float64 (or ``None``); clear errors."""
    if sigma_y is None:
        return None
    if isinstance(sigma_y, torch.Tensor):
        vals = sigma_y.detach().double().cpu().reshape(-1)
    elif isinstance(sigma_y, (int, float)) and not isinstance(sigma_y, bool):
        vals = torch.tensor([float(sigma_y)], dtype=torch.float64)
    elif isinstance(sigma_y, Sequence) and not isinstance(sigma_y, str) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in sigma_y):
        vals = torch.tensor([float(v) for v in sigma_y], dtype=torch.float64)
    else:
        raise InvalidValueError(f"{name}={sigma_y!r} is not accepted; expected None (unknown: estimated from y), a "
                                f"number >= 0 (the noise std of y) or one such number per batch item")
    if not bool(torch.isfinite(vals).all()) or bool((vals < 0).any()):
        raise InvalidValueError(f"{name}={sigma_y!r} is not accepted; expected finite values >= 0")
    if vals.numel() == 1:
        return vals.expand(batch).clone()
    if vals.numel() != batch:
        raise ShapeError(f"{name} has {vals.numel()} values but y has a batch of {batch}; give one number or one "
                         f"per item")
    return vals


# ----------------------------------------------------------------------------------------------- estimators
def _sampled(op, y: torch.Tensor) -> torch.Tensor:
    """Boolean ``(B|1, 1|Nc, H, W)`` of the k-space entries the operator measures."""
    return (op.mask > 0) if hasattr(op, "mask") else (y != 0)


def kspace_sigma(op, y: torch.Tensor) -> Tuple[torch.Tensor, str]:
    """Noise std ``(B,)`` of multi-coil Cartesian k-space ``y`` ``(B, Nc, H, W)`` (module docstring, ``mri``)."""
    B, H, W = y.shape[0], y.shape[-2], y.shape[-1]
    ky = (torch.arange(H, device=y.device) - H // 2).abs()[:, None] / H
    kx = (torch.arange(W, device=y.device) - W // 2).abs()[None, :] / W
    outer = torch.maximum(ky, kx) >= OUTER_FRAME
    sel = (_sampled(op, y) & outer).expand(y.shape)
    est = []
    for b in range(B):
        v = y[b].abs()[sel[b]]
        est.append(v.median() / math.sqrt(math.log(2)) if v.numel() >= 16 else torch.tensor(float("inf")))
    outer_est = torch.stack([e.double().cpu() for e in est])
    method = "k-space outer frame"
    m = _sampled(op, y).expand(y.shape).flatten(1).sum(1).cpu()  # measured complex entries per item
    n = int(op.adjoint(y[:1]).flatten(1).shape[1])
    over = m >= LS_OVERDETERMINED * n
    if bool(over.any()) and hasattr(op, "normal"):
        from .linalg import cg

        x = cg(op.normal, op.adjoint(y), max_iter=LS_CG_ITERS).x
        rss = (y - op(x)).abs().square().flatten(1).sum(1, dtype=torch.float64).cpu()
        ls = (rss / (m - n).clamp_min(1).double()).sqrt()
        ls = torch.where(over, ls, torch.full_like(ls, float("inf")))
        if bool((ls < outer_est).any()):
            method = "min(k-space outer frame, least-squares residual)"
        outer_est = torch.minimum(outer_est, ls)
    if not bool(torch.isfinite(outer_est).all()):
        raise ValueError("too few sampled k-space entries to estimate the noise level; pass sigma_y")
    return outer_est, method


def image_sigma(y: torch.Tensor, observed: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Donoho's MAD estimate ``(B,)`` for real images ``(B, C, H, W)``: ``median |h| / 0.6745`` of the finest Haar
    diagonal detail ``h``, over the 2x2 blocks whose four pixels are ``observed`` (all when ``None``)."""
    h, w = 2 * (y.shape[-2] // 2), 2 * (y.shape[-1] // 2)
    v = y[..., :h, :w]
    d = (v[..., 0::2, 0::2] - v[..., 1::2, 0::2] - v[..., 0::2, 1::2] + v[..., 1::2, 1::2]) / 2
    if observed is None:
        return d.flatten(1).abs().median(dim=1).values.double() / 0.6745
    o = observed.expand(y.shape)[..., :h, :w].float()
    ok = (o[..., 0::2, 0::2] * o[..., 1::2, 0::2] * o[..., 0::2, 1::2] * o[..., 1::2, 1::2]) > 0
    out = []
    for b in range(y.shape[0]):
        vals = d[b][ok[b]].abs()
        if vals.numel() < 16:
            raise ValueError("too few fully observed 2x2 blocks to estimate the noise level; pass sigma_y")
        out.append(vals.median().double() / 0.6745)
    return torch.stack(out)


def sinogram_sigma(y: torch.Tensor) -> torch.Tensor:
    """Noise std ``(B,)`` of sinograms ``(B, 1, views, detectors)``: MAD of the third differences along the detector
    axis, ``median |s_{k-1} - 3 s_k + 3 s_{k+1} - s_{k+2}| / (sqrt(20) 0.6745)``."""
    d = (y[..., :-3] - 3 * y[..., 1:-2] + 3 * y[..., 2:-1] - y[..., 3:]) / math.sqrt(20)
    return d.flatten(1).abs().median(dim=1).values.double().cpu() / 0.6745


def estimate_sigma_y(op, y: torch.Tensor) -> Optional[Tuple[torch.Tensor, str]]:
    """``(sigma (B,) float64 on the CPU, method)`` from ``y`` for the operator families with an estimator
    (module docstring), else ``None``. ``y`` in the units the estimate is wanted in."""
    fam = getattr(op, "task_family", None)
    try:
        if fam == "mri" and hasattr(op, "mask") and y.is_complex() and y.dim() == 4:
            (sigma, method), ref = kspace_sigma(op, y), op.adjoint(y)
        elif fam == "ct" and not y.is_complex() and y.dim() == 4 and y.shape[-1] >= 8:
            sigma, method, ref = sinogram_sigma(y), "MAD of the third differences along the detector", y
        elif fam == "deblur" and not y.is_complex() and y.dim() == 4:
            sigma, method, ref = image_sigma(y).cpu(), "MAD of the finest Haar detail of y", y
        elif fam == "inpaint" and hasattr(op, "mask") and not y.is_complex() and y.dim() == 4:
            sigma, method = image_sigma(y, op.mask > 0).cpu(), "MAD of the finest Haar detail of the observed pixels"
            ref = y
        else:
            return None
    except ValueError:  # too few entries to estimate from: unknown
        return None
    from .data.mri import robust_scale

    frac = DETECTION_FLOOR.get(fam, DEFAULT_FLOOR)
    below = sigma < frac * robust_scale(ref).double().cpu()
    if bool(below.any()):
        sigma = torch.where(below, torch.zeros_like(sigma), sigma)
        method += f"; below {frac:g} x the data's 99th percentile counts as noiseless"
    return sigma, method


def measured_entries(op, y: torch.Tensor) -> torch.Tensor:
    """Entries of ``y`` the operator measures, per item ``(B,)`` (float64): for a linear operator the non-zeros of
    ``A`` applied to a random probe (unsampled k-space, missing pixels are structural zeros), else all of ``y``."""
    if getattr(op, "is_linear", False):
        with torch.no_grad():
            g = torch.Generator(device="cpu").manual_seed(0)
            like = op.adjoint(y)
            probe = torch.randn(like.shape, generator=g, dtype=like.dtype).to(like.device)
            return (op(probe) != 0).flatten(1).sum(1).double().cpu()
    return torch.full((y.shape[0],), float(y[0].numel()), dtype=torch.float64)


def noise_floor(op, y: torch.Tensor, sigma_y: Union[float, torch.Tensor]) -> torch.Tensor:
    """Expected noise norm ``sigma_y sqrt(m)`` per item ``(B,)`` on ``y.device`` (the discrepancy principle's
    target for ``||y - A x||``)."""
    s = torch.as_tensor(sigma_y, dtype=torch.float64)
    return (s * measured_entries(op, y).sqrt()).to(y.device)


# ----------------------------------------------------------------------------------------------- the rule
def warn_once(key: str, message: str):
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, UserWarning, stacklevel=3)


def resolve(op, y: torch.Tensor, sigma_y=None, *, sampler: Optional[str] = None,
            sampler_default=None, estimate: bool = True) -> NoiseLevel:
    """The noise level of ``y`` (already in the sampler's units) by the rule in the module docstring (steps 2-4;
    ``sigma_y``: ``(B,)`` float64 in those units, or ``None``). Warns once per operator family when unknown."""
    if sigma_y is not None:
        return NoiseLevel(sigma_y.double().cpu(), "argument")
    if estimate:
        est = estimate_sigma_y(op, y)
        if est is not None:
            return NoiseLevel(est[0].double().cpu(), "estimated", est[1])
    fam = getattr(op, "task_family", None) or type(op).__name__
    why = "too few measured entries to estimate it from" if fam in ESTIMATED else f"no estimator for {fam} data"
    if sampler is not None:
        warn_once(f"{fam}/{sampler}", f"the noise level of y is unknown ({why}): "
                                      f"{sampler} uses its default sigma_y={sampler_default!r}"
                                      f"{' (noiseless)' if sampler_default in (None, 0, 0.0) else ''}; "
                                      f"pass sigma_y=... (the noise std of y) if y is noisy")
    return NoiseLevel(None, "unknown")
