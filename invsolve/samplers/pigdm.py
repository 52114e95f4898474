"""ΠGDM — Pseudoinverse-Guided Diffusion Models (Song, Vahdat, Mardani & Kautz, ICLR 2023).

With ``p(x0 | x_t) ≈ N(x0_hat, r_t² I)``, ``r_t² = 1 - abar_t`` (prior units), the likelihood score is the
vector-Jacobian product ``g = (d x0_hat / d x_t)ᴴ Aᴴ (r_t² AAᴴ + sigma_y² I)⁻¹ (y - A x0_hat)`` (one backward pass
through the network). Using ``Aᴴ(r² AAᴴ + s² I)⁻¹ = (AᴴA + s²/r² I)⁻¹ Aᴴ / r²`` the inner vector is the
(regularised) pseudo-inverse of the residual, ``u = (AᴴA + sigma_y²/r_t² I)⁻¹ Aᴴ (y - A x0_hat)`` (``A⁺`` of the
residual when noiseless), and the guidance is ``g = Jᵀ u`` with the ``1/r_t²`` absorbed into the step weight.
Update: a DDIM-η step from ``(x0_hat, eps)`` plus ``scale * sqrt(abar_{t'}) sqrt(abar_t) g``. At the last step
(``J ≈ I``) this is the projection ``x0_hat + A⁺(y - A x0_hat)``; at high noise the weight suppresses the
(unreliable) guidance.
"""
from __future__ import annotations

import torch

from .base import SamplerOutput, progress_bar, register_sampler
from .knobs import STEPS, Float, Int
from .steps import ddim_grid, ddim_sigma, ddim_step, prior_noise, real_inner, tweedie_grad, unit


@register_sampler("pigdm", knobs=dict(steps=STEPS, eta=Float(0, 1, doc="DDIM stochasticity"),
                                      sigma_y=Float(0, doc="noise std of y (0: noiseless)"),
                                      scale=Float(0, doc="guidance weight"),
                                      pinv_iters=Int(1, doc="CG iterations for A⁺ without a closed form")),
                  summary="ΠGDM: pseudo-inverse guidance J^T A⁺(y - A x0_hat) through the network, DDIM-eta steps",
                  nfe=lambda k, prior: k["steps"])
def pigdm(prior, op, y, *, generators, steps=100, eta=0.2, sigma_y=0.0, scale=1.0, pinv_iters=30,
          progress=False) -> SamplerOutput:
    """ΠGDM on a pixel-space VP prior, any linear operator.

    Args:
        steps: sampling steps on the grid ``tau_k = k * (T // steps)`` (100, as in InverseBench).
        eta: DDIM stochasticity (textbook DDIM-η rule; InverseBench default 0.2).
        sigma_y: measurement noise std in the units of ``y`` as the sampler sees it (0: noiseless, plain ``A⁺``).
        scale: guidance weight multiplying ``sqrt(abar_{t'}) sqrt(abar_t) g`` (1.0).
        pinv_iters: CG iterations for ``A⁺`` / the regularised solve when the operator has no closed form
            (multi-coil MRI, CT). As for DDNM, few iterations act as a truncated pseudo-inverse for multi-coil MRI.

    Noisy deblurring / SR / inpainting: set ``sigma_y`` to the noise std (``sigma_y = 0`` fits the noise through
    ``A⁺`` and diverges on deblurring).
    """
    x = prior_noise(prior, generators, y.device)
    for t, t_next in progress_bar(ddim_grid(prior, steps), progress, "PiGDM", total=steps):
        ab, ab_n = float(prior.alpha_bar(t)), float(prior.alpha_bar(t_next))
        reg = sigma_y**2 / (unit(prior) ** 2 * (1 - ab))  # sigma_y² / r_t² in operator units

        def guidance(x0, e, _, reg=reg):  # <A⁺(y - A x0_hat), x0_hat> with the pseudo-inverse held fixed
            z0 = prior.from_prior(x0)
            with torch.no_grad():
                u = op.pinv(y - op(z0), iterations=pinv_iters, reg=reg)
            return real_inner(u, z0), None

        x0, e, _, g = tweedie_grad(prior, x, t, guidance)
        with torch.no_grad():
            x = ddim_step(x0, e, ab, ab_n, eta) + scale * (ab_n * ab) ** 0.5 * g
            c1 = ddim_sigma(ab, ab_n, eta)
            if t_next >= 0 and c1 > 0:
                x = x + c1 * prior_noise(prior, generators, y.device)
    return SamplerOutput(x=prior.from_prior(x))
