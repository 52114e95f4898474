"""DPS — Diffusion Posterior Sampling (Chung, Kim, McCann, Klasky & Ye, ICLR 2023).

Per step: one network call with gradients; the Tweedie estimate ``x0_hat`` (clipped to the data range by default)
gives the ancestral DDPM step ``x'``, and the gradient of the per-sample residual norm ``||y - A(x0_hat)||``
(unsquared, as in the reference code) with respect to ``x_t`` — back-propagated through ``A``, the domain map and
the network — is subtracted: ``x_{t-1} = x' - scale * grad``. Works for nonlinear differentiable operators.
"""
from __future__ import annotations

import torch

from .._deprecated import moved
from ..noise_level import noise_floor
from .base import SamplerOutput, bshape, progress_bar, register_sampler
from .knobs import STEPS, Choice, Float
from .steps import ancestral_step, ddim_grid, prior_noise, residual_gradient, vp_sde_step


@register_sampler("dps", knobs=dict(steps=STEPS, scale=Float(0, doc="step size on grad ||y - A(x0_hat)||"),
                                    clip=Float(0, low_open=True, optional=True, doc="clamp x0_hat to [-clip, clip]"),
                                    variance=Choice("betatilde", "beta", doc="ancestral noise variance"),
                                    form=Choice("ddpm", "edm", doc="ancestral DDPM step or Euler-Maruyama VP-SDE"),
                                    sigma_y=Float(0, doc="noise std of y: no guidance once ||y - A(x0_hat)|| is "
                                                  "within the noise norm sigma_y sqrt(m) (0: always guide)")),
                  requires="differentiable", nfe=lambda k, prior: k["steps"],
                  summary="Diffusion Posterior Sampling: ancestral DDPM + gradient of ||y - A(x0_hat)|| through "
                          "the network")
def dps(prior, op, y, *, generators, steps=1000, scale=0.5, clip=1.0, variance="betatilde", form="ddpm",
        sigma_y=0.0, progress=False) -> SamplerOutput:
    """DPS on a pixel-space VP prior, for any differentiable operator (linear or not).

    Args:
        steps: sampling steps on the grid ``tau_k = k * (T // steps)`` (1000 = every training timestep, the
            reference setting); fewer steps respace the ancestral chain on the strided grid. One network call and
            one backward pass per step.
        scale: step size ``s`` of ``x <- x' - s * grad_x ||y - A(x0_hat)||`` (the paper's ``zeta'`` is ``s / 2``).
            Reference per-task values (256x256 RGB, noise 0.05, 1000 steps): SR x4 0.3, Gaussian / motion /
            nonlinear deblur 0.3, random inpainting 0.5, phase retrieval 1.0. The gradient of the unsquared norm has
            unit scale in the residual, so ``s`` does not depend on the data scale, but it does depend on the image
            size and the operator. On the embedded 64x64 priors: multi-coil MRI 4x (``mri-brain``) ``s ≈ 0.5`` at
            200–1000 steps.
        clip: clamp ``x0_hat`` to ``[-clip, clip]`` in prior space (the data range is [-1, 1]) before the residual
            and the ancestral mean, as in the reference; ``None`` disables it.
        variance: ancestral noise variance, ``"betatilde"`` (posterior variance, default) or ``"beta"``. The
            reference interpolates the two with a learned variance; the embedded priors are plain epsilon
            networks (learned-variance channels, if any, are dropped by the prior adapter), so a fixed choice is
            used.
        form: ``"ddpm"`` (ancestral posterior-mean step) or ``"edm"`` (Euler–Maruyama step of the reverse VP-SDE
            with the denoiser's score, as InverseBench's EDM-form DPS; best with many steps, e.g. 1000).
        sigma_y: noise std of ``y`` in the units the sampler sees (:func:`invsolve.solve` passes it). The data
            term becomes ``max(||y - A(x0_hat)|| - tau, 0)`` with ``tau = sigma_y sqrt(m)`` the expected norm of the
            noise over the ``m`` measured entries (Morozov's discrepancy principle): a sample whose residual is
            already within the noise gets no guidance that step instead of being pushed to fit the noise. 0
            (default): the released rule.
    Returns:
        operator-domain reconstruction ``A``-consistent up to the guidance; ``info["residual"]``: per-step
        residual norms ``(steps, B)``.
    """
    x = prior_noise(prior, generators, y.device)
    residuals = []
    tau = noise_floor(op, y, sigma_y) if sigma_y > 0 else None
    for t, t_next in progress_bar(ddim_grid(prior, steps), progress, "DPS", total=steps):
        x0, _, r, g = residual_gradient(prior, op, y, x, t, clip)
        residuals.append(r)
        if tau is not None:  # d max(||r|| - tau, 0) / dx: no step for samples already within the noise
            g = g * bshape((r > tau).to(g.dtype), g)
        n = prior_noise(prior, generators, y.device) if t_next >= 0 else torch.zeros_like(x)
        with torch.no_grad():
            if form == "ddpm":
                x_new = ancestral_step(prior, x, x0, t, t_next, n, variance)
            else:
                x_new = vp_sde_step(prior, x, x0, t, t_next, n)
            x = x_new - scale * g
    return SamplerOutput(x=prior.from_prior(x.detach()), info={"residual": torch.stack(residuals).cpu()})


__getattr__ = moved(__name__, {"norm_grad": "invsolve.samplers.steps:residual_gradient",  # helpers now in .steps
                               "ancestral_coefficients": "invsolve.samplers.steps",
                               "residual_norm": "invsolve.samplers.steps"})
