"""Step primitives shared by the samplers: time grids and noise schedules, Tweedie helpers, the re-noising / DDIM /
ancestral / VP-SDE updates, the prior-space domain maps and the residual-gradient helper.

Notation (VP / DDPM): ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` with ``abar_{-1} = 1``; the VE level of
timestep ``t`` is ``sigma_t = sqrt((1 - abar_t) / abar_t)``. ``abar`` arguments are Python floats or 0-dim tensors;
the arithmetic follows their type (a sampler that works in float32 tensors keeps doing so), so each sampler computes
exactly what it did before these updates had one home.
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch

from ..errors import InvalidValueError
from .base import randn

Tensor = torch.Tensor


def _sqrt(v):
    return v.sqrt() if isinstance(v, Tensor) else v**0.5


def _relu(v):
    return v.clamp_min(0) if isinstance(v, Tensor) else max(v, 0.0)


# ----------------------------------------------------------------------------------------- time grids, schedules
def ddim_grid(prior, steps: int) -> List[Tuple[int, int]]:
    """``[(t, t_next), ...]`` of the DDS/DDIM grid ``tau_k = k * (T // steps)``, ending at ``t_next = -1``."""
    if not 1 <= steps <= prior.num_train_timesteps:
        raise InvalidValueError(f"steps={steps} is out of range for this prior: expected 1 to "
                                f"{prior.num_train_timesteps} (its training timesteps)")
    delta = prior.num_train_timesteps // steps
    taus = [k * delta for k in range(steps)]
    return list(zip(taus[::-1], taus[::-1][1:] + [-1]))


def karras_sigmas(sigma_max: float, sigma_min: float, n: int, rho: float = 7.0) -> List[float]:
    """``n`` EDM noise levels from ``sigma_max`` down to ``sigma_min`` (``rho`` spacing), then a final 0."""
    if n == 1:
        return [float(sigma_max), 0.0]
    a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return [float((a + k / (n - 1) * (b - a)) ** rho) for k in range(n)] + [0.0]


def sigma_schedule(prior, steps: int, kind: str = "karras", sigma_min: Optional[float] = None,
                   sigma_max: Optional[float] = None, rho: float = 7.0) -> Tensor:
    """Decreasing VE noise levels ``(steps + 1,)`` ending in 0 (float64), within the prior's trained range.

    ``kind``: ``"karras"`` (EDM, ``rho``), ``"loglinear"`` or ``"vp"`` (the training timesteps, evenly spaced).
    """
    smin = prior.sigma_min if sigma_min is None else sigma_min
    smax = prior.sigma_max if sigma_max is None else sigma_max
    if kind == "karras":
        return torch.tensor(karras_sigmas(smax, smin, steps, rho), dtype=torch.float64)
    if kind == "loglinear":
        s = torch.logspace(math.log10(smax), math.log10(smin), steps, dtype=torch.float64)
    elif kind == "vp":
        ts = torch.linspace(prior.num_train_timesteps - 1, 0, steps).round().long()
        s = prior.sigma_of_t(ts).cpu()
    else:
        raise ValueError(f"kind must be 'karras', 'loglinear' or 'vp', got {kind!r}")
    return torch.cat([s, s.new_zeros(1)])


def ve_sigma(ab) -> float:
    """VE noise level ``sqrt((1 - abar) / abar)`` of a VP ``abar`` (a float)."""
    return ((1 - ab) / ab) ** 0.5


# ----------------------------------------------------------------------------------------- Tweedie helpers
def eps_from_x0(x: Tensor, x0: Tensor, ab) -> Tensor:
    """The noise ``(x_t - sqrt(abar) x0) / sqrt(1 - abar)`` that ``x0`` implies at ``x_t``."""
    return (x - _sqrt(ab) * x0) / _sqrt(1 - ab)


def clip_tweedie(x: Tensor, x0: Tensor, ab, clip: Optional[float]) -> Tuple[Tensor, Optional[Tensor]]:
    """``x0`` clamped to ``[-clip, clip]`` and the noise it implies at ``x`` (ADM's ``clip_denoised``);
    ``clip=None``: ``(x0, None)``."""
    if clip is None:
        return x0, None
    x0 = x0.clamp(-clip, clip)
    return x0, eps_from_x0(x, x0, ab)


# ----------------------------------------------------------------------------------------- updates
def renoise(x0: Tensor, e: Tensor, n: Tensor, ab_next, eta: float, sigma: Optional[float] = None,
            eps_weight: Optional[float] = None) -> Tensor:
    """Re-noise a clean estimate to ``t_next`` with fresh noise ``n`` mixed with the network's ``e`` (DDS / DDNM rule).

    ``sqrt(abar') x0 + sqrt(1 - abar') (eta n + w e)``, ``w = sqrt(1 - eta²)`` unless ``eps_weight`` is given;
    ``eta`` is the fraction (in std) of the noise budget given to fresh noise. With a VE noise level ``sigma``
    (DDNM+, which removes the measurement's own noise from the budget): ``sqrt(abar') (x0 + sigma (eta n + w e))``.
    """
    w = (1 - eta**2) ** 0.5 if eps_weight is None else eps_weight
    m = eta * n + w * e
    if sigma is None:
        return _sqrt(ab_next) * x0 + _sqrt(1 - ab_next) * m
    return _sqrt(ab_next) * (x0 + sigma * m)


def ddim_sigma(ab, ab_next, eta: float):
    """Fresh-noise std of the DDIM-eta step, ``eta sqrt((1 - abar') / (1 - abar) (1 - abar / abar'))``."""
    if eta == 0:
        return 0.0
    return eta * _sqrt((1 - ab_next) / (1 - ab) * (1 - ab / ab_next))


def ddim_step(x0: Tensor, e: Tensor, ab, ab_next, eta: float = 0.0, n: Optional[Tensor] = None) -> Tensor:
    """DDIM-eta step to ``t_next``: ``sqrt(abar') x0 + sqrt(1 - abar' - s²) e [+ s n]``, ``s = ddim_sigma(...)``
    (the noise term only when ``n`` is given; ``eta = 0``: the deterministic DDIM step)."""
    s = ddim_sigma(ab, ab_next, eta)
    x = _sqrt(ab_next) * x0 + _sqrt(_relu(1 - ab_next - s**2)) * e
    return x if n is None else x + s * n


def ancestral_coefficients(prior, t: int, t_next: int, variance: str = "betatilde"):
    """DDPM posterior ``q(x_{t_next} | x_t, x0) = N(c0 x0 + ct x_t, var)`` on a (possibly strided) grid.

    With ``a = abar_t``, ``a' = abar_{t_next}``, ``beta = 1 - a / a'``: ``c0 = sqrt(a') beta / (1 - a)``,
    ``ct = sqrt(1 - beta) (1 - a') / (1 - a)``; ``var = beta (1 - a') / (1 - a)`` (``"betatilde"``, the posterior
    variance) or ``beta`` (``"beta"``); zero at the last step (``t_next = -1``). Python floats.
    """
    a, a_n = float(prior.alpha_bar(t)), float(prior.alpha_bar(t_next))
    beta = 1 - a / a_n
    c0 = a_n**0.5 * beta / (1 - a)
    ct = (1 - beta) ** 0.5 * (1 - a_n) / (1 - a)
    if t_next < 0:
        var = 0.0
    elif variance == "betatilde":
        var = beta * (1 - a_n) / (1 - a)
    elif variance == "beta":
        var = beta
    else:
        raise ValueError(f"variance must be 'betatilde' or 'beta', got {variance!r}")
    return c0, ct, var


def ancestral_step(prior, x: Tensor, x0: Tensor, t: int, t_next: int, n: Tensor, variance: str = "betatilde"):
    """Ancestral DDPM step ``c0 x0 + ct x_t + sqrt(var) n`` (:func:`ancestral_coefficients`)."""
    c0, ct, var = ancestral_coefficients(prior, t, t_next, variance)
    return c0 * x0 + ct * x + var**0.5 * n


def vp_sde_step(prior, x: Tensor, x0: Tensor, t: int, t_next: int, n: Tensor) -> Tensor:
    """Euler-Maruyama step of the reverse VP-SDE in score form: ``x (1 + b/2) + b score + sqrt(b) n``, with
    ``b = 1 - abar_t / abar_{t_next}`` (the discretised ``beta dt``) and ``score = (sqrt(abar) x0 - x) / (1-abar)``
    (the score of ``x_t`` given the denoiser's ``x0``). The last step returns ``x0``."""
    if t_next < 0:
        return x0
    a, a_n = float(prior.alpha_bar(t)), float(prior.alpha_bar(t_next))
    b = 1 - a / a_n
    score = (a**0.5 * x0 - x) / (1 - a)
    return x * (1 + b / 2) + b * score + b**0.5 * n


# ----------------------------------------------------------------------------------------- domain maps
def unit(prior) -> float:
    """Operator-domain units per prior-space unit (``(hi - lo) / 2`` for real priors, ``hi`` for complex ones)."""
    lo, hi = prior.data_range
    return hi if prior.is_complex else (hi - lo) / 2


def lin_from_prior(prior, v: Tensor) -> Tensor:
    """Linear part of :meth:`Prior.from_prior` (maps prior-space increments/noise to the operator domain)."""
    return prior.from_prior(v) - prior.from_prior(torch.zeros_like(v))


def lin_to_prior(prior, z: Tensor) -> Tensor:
    """Linear part of :meth:`Prior.to_prior` (inverse of :func:`lin_from_prior`)."""
    return prior.to_prior(z) - prior.to_prior(torch.zeros_like(z))


# ----------------------------------------------------------------------------------------- residual gradients
def residual_norm(op, y: Tensor, z: Tensor) -> Tensor:
    """Per-sample ``||y - A(z)||_2`` over all non-batch entries (``|·|`` of complex residuals), shape ``(B,)``."""
    return torch.linalg.vector_norm((y - op(z)).flatten(1), dim=1)


def tweedie_grad(prior, x: Tensor, t: int, loss):
    """The Tweedie estimate at ``x`` (one network call) and the gradient through the network of a guidance loss.

    ``loss(x0, eps, x) -> (value, extras)``: ``value`` per sample ``(B,)`` (summed only to call autograd, so each
    sample's gradient is its own) or a scalar. Returns ``(x0, eps, extras, d value / dx)``, all detached.
    """
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        x0, e = prior.tweedie(xg, t)
        value, extras = loss(x0, e, xg)
        (g,) = torch.autograd.grad(value.sum(), xg)
    return x0.detach(), e.detach(), extras, g


def residual_gradient(prior, op, y: Tensor, x: Tensor, t: int, clip: Optional[float]):
    """``(x0_hat, eps, ||y - A(x0_hat)||, d||y - A(x0_hat)|| / dx)`` (:func:`tweedie_grad`), ``x0_hat`` clamped to
    ``[-clip, clip]`` in prior space (``clip=None``: no clipping) before the residual."""

    def loss(x0, e, _):
        x0 = x0 if clip is None else x0.clamp(-clip, clip)
        r = residual_norm(op, y, prior.from_prior(x0))
        return r, (x0.detach(), r.detach())

    _, e, (x0, r), g = tweedie_grad(prior, x, t, loss)
    return x0, e, r, g


def prior_noise(prior, generators, device) -> Tensor:
    """Standard normal noise in prior space ``(B, C, H, W)``, item ``b`` from ``generators[b]``."""
    return randn((prior.channels,) + tuple(prior.image_size), generators, device)


def real_inner(u: Tensor, z: Tensor) -> Tensor:
    """``sum Re(conj(u) z)`` (a real scalar whose gradient in ``z`` is ``u``)."""
    return (u.conj() * z).real.sum() if z.is_complex() else (u * z).sum()


# ----------------------------------------------------------------------------------------- latent guidance (PSLD, STSL)
def check_decoder_fits(prior, op, y: Tensor) -> Optional[Tensor]:
    """``Aᵀy`` (``None`` for a nonlinear operator) after checking that the prior's decoded images have the
    operator's input shape (known from ``Aᵀy`` when the operator is not sized). Raises :class:`ShapeError` naming
    both shapes (e.g. a latent prior decoding 16x16 images used with an operator on 32x32 images)."""
    from ..errors import ShapeError

    x = op.adjoint(y) if getattr(op, "is_linear", False) else None
    want = tuple(x.shape[1:]) if x is not None else tuple(op.input_shape or ())
    have = tuple(prior.operator_shape)
    if want and want != have:
        what = "decoder output" if getattr(prior, "is_latent", False) else "images"
        raise ShapeError(f"prior {prior.name!r} {what} have shape {have} but the operator acts on images of shape "
                         f"{want}; use a prior trained at that size or resize the problem")
    return x


def initial_latent(prior, op, y, generators, t: int, init: str, pinv_iters: int = 30) -> Tensor:
    """``sqrt(abar_t) E(x_init) + sqrt(1 - abar_t) n`` with ``x_init`` = ``Aᵀy`` (``init="adjoint"``), ``A⁺y``
    (``"pinv"``), or pure noise (``"noise"``: ``n``); ``x_init`` is clamped to the prior's data range (its magnitude,
    for complex images) before encoding. First checks that the prior's decoded images fit the operator
    (:func:`check_decoder_fits`)."""
    aty = check_decoder_fits(prior, op, y)
    n = prior_noise(prior, generators, y.device)
    if init == "noise":
        return n
    x = aty if init == "adjoint" else op.pinv(y, iterations=pinv_iters, reg=0.0)
    lo, hi = prior.data_range
    with torch.no_grad():
        if x.is_complex():  # complex images (MRI): bound the magnitude, keep the phase
            mag = x.abs()
            x = x * (mag.clamp(max=hi) / mag.clamp_min(1e-12))
        else:
            x = x.clamp(lo, hi)
        z = prior.to_prior(x)
    ab = prior.alpha_bar(t).to(z.dtype)
    return ab.sqrt() * z + (1 - ab).sqrt() * n


def glue_term(prior, op, y: Tensor, x0: Tensor, z0: Tensor, pinv_iters: int = 30) -> Tensor:
    """PSLD's gluing term, per sample ``||E(x0 + A⁺(y - A x0)) - z0||₂`` ``(B,)`` (differentiable in ``x0``, ``z0``)."""
    xg = x0 + op.pinv(y - op(x0), iterations=pinv_iters, reg=0.0)
    return torch.linalg.vector_norm((prior.to_prior(xg) - z0).flatten(1), dim=1)


def needs_adjoint(init: str, gluing: float) -> Optional[str]:
    """The option of PSLD / STSL that uses ``Aᵀ`` or ``A⁺`` (``None``: they run on a nonlinear operator too)."""
    if init in ("adjoint", "pinv"):
        return f"init={init!r}"
    if gluing:
        return f"a gluing term (weight {gluing:g}; set it to 0)"
    return None
