"""PSLD — Posterior Sampling with Latent Diffusion (Rout et al., NeurIPS 2023), ALGORITHMS.md §2.5.

First-order latent guidance: per DDIM step, one network call with gradients gives the Tweedie latent ``z0``; the
DDIM step ``z_prev`` is corrected by the gradient (through the network and the decoder) of

    omega · ||y - A D(z0)||  +  gamma · ||E(D(z0) + A⁺(y - A D(z0))) - z0||      (unsquared norms, per sample)

the measurement term and the "gluing" term (the encoded measurement-consistent image should be a fixed point of
the autoencoder). For pixel priors ``D``/``E`` are the prior's affine domain maps. The helpers here (decoder/size
check, gluing, initial latent) are shared with ``stsl``.
"""
from __future__ import annotations

import torch

from ..errors import InvsolveError, ShapeError
from .base import SamplerOutput, progress_bar, randn, register_sampler
from .ddnm import pinv
from .knobs import STEPS, Choice, Float, Int
from .unconditional import ddim_grid


def check_decoder_fits(prior, op, y: torch.Tensor) -> torch.Tensor:
    """``Aᵀy`` (``None`` for a nonlinear operator) after checking that the prior's decoded images have the
    operator's input shape.

    Raises :class:`ShapeError` naming both shapes (e.g. a latent prior decoding 64x64 images used with an operator
    on 128x128 images).
    """
    x = op.adjoint(y) if getattr(op, "is_linear", False) else None
    want = tuple(x.shape[1:]) if x is not None else tuple(op.input_shape or ())
    have = tuple(prior.operator_shape)
    if want and want != have:
        what = "decoder output" if getattr(prior, "is_latent", False) else "images"
        raise ShapeError(f"prior {prior.name!r} {what} have shape {have} but the operator acts on images of shape "
                         f"{want}; use a prior trained at that size or resize the problem")
    return x


def initial_latent(prior, op, y, generators, t: int, init: str, pinv_iters: int = 30) -> torch.Tensor:
    """``sqrt(abar_t) E(x_init) + sqrt(1 - abar_t) n`` with ``x_init`` = ``Aᵀy`` (``init="adjoint"``), ``A⁺y``
    (``"pinv"``), or pure noise (``"noise"``); ``x_init`` is clamped to the prior's data range (its magnitude, for
    complex images) before encoding."""
    if init not in ("adjoint", "pinv", "noise"):
        raise ValueError(f"init must be 'adjoint', 'pinv' or 'noise', got {init!r}")
    x_adj = check_decoder_fits(prior, op, y)
    shape = (prior.channels,) + tuple(prior.image_size)
    n = randn(shape, generators, y.device)
    if init == "noise":
        return n
    if x_adj is None:
        raise InvsolveError(f"init={init!r} needs a linear operator with an adjoint; {type(op).__name__} is "
                            "nonlinear: use init='noise'")
    x = x_adj if init == "adjoint" else pinv(op, y, pinv_iters)
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


def residual(op, y, x) -> torch.Tensor:
    """Per-sample ``||y - A x||₂`` ``(B,)``."""
    return torch.linalg.vector_norm((y - op(x)).flatten(1), dim=1)


def glue_term(prior, op, y, x0, z0, pinv_iters: int = 30) -> torch.Tensor:
    """Per-sample ``||E(x0 + A⁺(y - A x0)) - z0||₂`` ``(B,)`` (differentiable in ``x0`` and ``z0``)."""
    xg = x0 + pinv(op, y - op(x0), pinv_iters)
    return torch.linalg.vector_norm((prior.to_prior(xg) - z0).flatten(1), dim=1)


def ddim_update(prior, z0, e, t_next: int) -> torch.Tensor:
    """Deterministic DDIM step to ``t_next`` from the Tweedie latent ``z0`` and the network's ``e``
    (``t_next = -1`` returns ``z0``)."""
    ab_n = prior.alpha_bar(t_next).to(z0.dtype)
    return ab_n.sqrt() * z0 + (1 - ab_n).sqrt() * e


def needs_adjoint(init: str, gluing: float) -> "str | None":
    """The option of PSLD / STSL that uses ``Aᵀ`` or ``A⁺`` (``None``: they run on a nonlinear operator too)."""
    if init in ("adjoint", "pinv"):
        return f"init={init!r}"
    if gluing:
        return f"a gluing term (weight {gluing:g}; set it to 0)"
    return None


@register_sampler("psld", knobs=dict(steps=STEPS, omega=Float(0, doc="step size on ||y - A D(z0)||"),
                                     gamma=Float(0, doc="weight of the gluing term (0: off)"),
                                     init=Choice("noise", "adjoint", "pinv", doc="initial latent"),
                                     pinv_iters=Int(1, doc="CG iterations for A⁺ without a closed form")),
                  requires="differentiable", latent_ok=True,
                  adjoint_knobs=lambda k: needs_adjoint(k["init"], k["gamma"]),
                  summary="PSLD: DDIM + gradient of ||y - A D(z0)|| and of the gluing term through network and "
                          "decoder (latent or pixel priors)")
def psld(prior, op, y, *, generators, steps=200, omega=1.0, gamma=0.1, init="noise", pinv_iters=30,
         progress=False) -> SamplerOutput:
    """PSLD on a latent prior (or a pixel prior: decoder = the prior's domain map), linear operators.

    Args:
        steps: DDIM steps on the grid ``tau_k = k * (T // steps)`` (reference: 1000); one network call and one
            backward pass (through the network and the decoder, and the encoder for the gluing term) per step.
        omega: step size on the gradient of the unsquared residual ``||y - A D(z0)||`` (reference 1.0).
        gamma: weight of the gluing term (reference 0.1; 0 disables it and saves the encoder backward pass).
        init: ``"noise"`` (reference: ``z_T ~ N(0, I)``), ``"adjoint"`` / ``"pinv"`` (forward-diffused encoding of
            ``Aᵀy`` / ``A⁺y``, as STSL).
        pinv_iters: CG iterations for ``A⁺`` in the gluing term where the operator has no closed form.
    Notes:
        The reference re-adds measurement noise to ``A D(z0)`` inside the norm; that is not done here (it only
        adds noise to the gradient). DDIM is deterministic (``eta_DDIM = 0``, the reference default).
    Returns:
        operator-domain ``D(z_0)``; ``info["residual"]``: ``||y - A D(z0)||`` per step ``(steps, B)``.
    """
    if omega < 0 or gamma < 0:
        raise ValueError(f"omega and gamma must be >= 0, got {omega}, {gamma}")
    nfe0 = prior.nfe
    grid = ddim_grid(prior, steps)
    z = initial_latent(prior, op, y, generators, grid[0][0], init, pinv_iters)
    residuals = []
    for t, t_next in progress_bar(grid, progress, "PSLD", total=steps):
        with torch.enable_grad():
            zt = z.detach().requires_grad_(True)
            z0, e = prior.tweedie(zt, t)
            x0 = prior.from_prior(z0)
            r = residual(op, y, x0)
            loss = omega * r
            if gamma > 0:
                loss = loss + gamma * glue_term(prior, op, y, x0, z0, pinv_iters)
            (g,) = torch.autograd.grad(loss.sum(), zt)
        residuals.append(r.detach())
        z = ddim_update(prior, z0.detach(), e.detach(), t_next) - g
    with torch.no_grad():
        x = prior.from_prior(z)
    return SamplerOutput(x=x, nfe=prior.nfe - nfe0, info={"residual": torch.stack(residuals).cpu()})

