"""PSLD — Posterior Sampling with Latent Diffusion (Rout et al., NeurIPS 2023).

First-order latent guidance: per DDIM step, one network call with gradients gives the Tweedie latent ``z0``; the
DDIM step ``z_prev`` is corrected by the gradient (through the network and the decoder) of

    omega · ||y - A D(z0)||  +  gamma · ||E(D(z0) + A⁺(y - A D(z0))) - z0||      (unsquared norms, per sample)

the measurement term and the "gluing" term (the encoded measurement-consistent image should be a fixed point of
the autoencoder). For pixel priors ``D``/``E`` are the prior's affine domain maps.
"""
from __future__ import annotations

import torch

from .._deprecated import moved
from .base import SamplerOutput, progress_bar, register_sampler
from .knobs import STEPS, Choice, Float, Int
from .steps import ddim_grid, ddim_step, glue_term, initial_latent, needs_adjoint, residual_norm, tweedie_grad


@register_sampler("psld", knobs=dict(steps=STEPS, omega=Float(0, doc="step size on ||y - A D(z0)||"),
                                     gamma=Float(0, doc="weight of the gluing term (0: off)"),
                                     init=Choice("noise", "adjoint", "pinv", doc="initial latent"),
                                     pinv_iters=Int(1, doc="CG iterations for A⁺ without a closed form")),
                  requires="differentiable", latent_ok=True, nfe=lambda k, prior: k["steps"],
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
    grid = ddim_grid(prior, steps)
    z = initial_latent(prior, op, y, generators, grid[0][0], init, pinv_iters)
    residuals = []

    def loss(z0, e, _):
        x0 = prior.from_prior(z0)
        r = residual_norm(op, y, x0)
        value = omega * r
        if gamma > 0:
            value = value + gamma * glue_term(prior, op, y, x0, z0, pinv_iters)
        return value, r.detach()

    for t, t_next in progress_bar(grid, progress, "PSLD", total=steps):
        z0, e, r, g = tweedie_grad(prior, z, t, loss)
        residuals.append(r)
        z = ddim_step(z0, e, *(prior.alpha_bar(s).to(z0.dtype) for s in (t, t_next))) - g
    with torch.no_grad():
        x = prior.from_prior(z)
    return SamplerOutput(x=x, info={"residual": torch.stack(residuals).cpu()})


__getattr__ = moved(__name__, {"residual": "invsolve.samplers.steps:residual_norm"})  # helpers now in .steps
