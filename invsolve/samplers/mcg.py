"""MCG — Manifold Constrained Gradient (Chung, Sim, Ryu & Ye, NeurIPS 2022).

Per step: the DPS step (ancestral DDPM from the clipped Tweedie estimate, minus ``scale`` times the gradient of
``||y - A x0_hat||`` through the network; the unsquared norm is the squared one with the DPS step normalisation),
then a projection onto the noisy measurement set ``{x : A x = y_{t'}}`` in prior space:

    x_{t'} = x'' - A⁺(A x'' - y_{t'}),    y_{t'} = sqrt(abar_{t'}) y + sqrt(1 - abar_{t'}) A n,

i.e. ``(I - A⁺A) x'' + A⁺ y_{t'}`` (``y_{t'}`` has the distribution of ``A x_{t'}``; ``A`` and ``y`` are taken to
prior space through the affine domain map). Linear operators only.
"""
from __future__ import annotations

import torch

from .base import SamplerOutput, progress_bar, randn, register_sampler
from .knobs import STEPS, Choice, Float, Int
from .steps import ancestral_step, ddim_grid, lin_from_prior, lin_to_prior, residual_gradient


@register_sampler("mcg", knobs=dict(steps=STEPS, scale=Float(0, doc="DPS step size"),
                                    clip=Float(0, low_open=True, optional=True, doc="clamp x0_hat to [-clip, clip]"),
                                    variance=Choice("betatilde", "beta", doc="ancestral noise variance"),
                                    pinv_iters=Int(1, doc="CG iterations for A⁺ without a closed form")),
                  summary="Manifold Constrained Gradient: DPS step + projection onto the noised measurement set",
                  nfe=lambda k, prior: k["steps"])
def mcg(prior, op, y, *, generators, steps=1000, scale=0.5, clip=1.0, variance="betatilde", pinv_iters=30,
        progress=False) -> SamplerOutput:
    """MCG on a pixel-space VP prior, any linear operator (noiseless or low-noise ``y``: the projection trusts it).

    Args:
        steps, scale, clip, variance: as for ``dps`` (ancestral steps on the grid ``tau_k = k * (T // steps)``;
            gradient step size; Tweedie clipping in prior space; ancestral variance).
        pinv_iters: CG iterations for ``A⁺`` when the operator has no closed form (multi-coil MRI, CT); few
            iterations give a truncated projection (with ``A⁺A ≈ I``, a converged projection would discard the
            prior for multi-coil MRI).

    Noiseless MRI / CT: ``steps=100`` with the default ``scale``; for 1000 steps tune ``scale`` as for DPS. Noisy
    measurements: prefer DPS or DDNM+, the projection does not model the noise.
    """
    shape = (prior.channels,) + tuple(prior.image_size)
    x = randn(shape, generators, y.device)
    y_p = y - op(prior.from_prior(torch.zeros((y.shape[0],) + shape, device=y.device)))  # A_p x0 = y_p
    for t, t_next in progress_bar(ddim_grid(prior, steps), progress, "MCG", total=steps):
        x0, _, _, g = residual_gradient(prior, op, y, x, t, clip)
        with torch.no_grad():
            if t_next >= 0:
                x = ancestral_step(prior, x, x0, t, t_next, randn(shape, generators, y.device), variance) - scale * g
                ab_n = float(prior.alpha_bar(t_next))
                y_t = ab_n**0.5 * y_p + (1 - ab_n) ** 0.5 * op(lin_from_prior(prior, randn(shape, generators,
                                                                                           y.device)))
            else:
                x, y_t = x0 - scale * g, y_p
            x = x - lin_to_prior(prior, op.pinv(op(lin_from_prior(prior, x)) - y_t, iterations=pinv_iters, reg=0.0))
    return SamplerOutput(x=prior.from_prior(x))
