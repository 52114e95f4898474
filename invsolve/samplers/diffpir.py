"""DiffPIR — Denoising Diffusion Models for Plug-and-Play Image Restoration (Zhu et al., CVPRW 2023).

Per step (half-quadratic splitting): the Tweedie estimate ``x0_hat`` is the prior step; the data step is the
proximal problem ``z = argmin_z ||y - A z||² + rho_t ||z - x0_hat||²`` with ``rho_t = lam sigma_y² / sigma_t²``
(``sigma_t`` the VE noise level of step ``t`` in operator units), solved as ``z = x0_hat + (AᴴA + rho_t I)⁻¹ Aᴴ
(y - A x0_hat)`` (closed forms where the operator has them, else CG); then
``x_{t'} = sqrt(abar') z + sqrt(1 - abar') (sqrt(1 - zeta) eps_hat + sqrt(zeta) n)`` with
``eps_hat = (x_t - sqrt(abar_t) z) / sqrt(1 - abar_t)``. No network gradients.
"""
from __future__ import annotations

import torch

from .base import SamplerOutput, progress_bar, register_sampler
from .knobs import STEPS, Float, Int
from .steps import ddim_grid, eps_from_x0, prior_noise, renoise, unit


@register_sampler("diffpir", knobs=dict(steps=STEPS,
                                        lam=Float(0, doc="prior weight in rho_t = lam max(sigma_y, sigma_floor)² / "
                                                  "sigma_t²"),
                                        sigma_y=Float(0, doc="noise std of y"),
                                        sigma_floor=Float(0, doc="least noise level in rho_t (noiseless data still "
                                                          "need a prior weight)"),
                                        zeta=Float(0, 1, doc="fraction (in variance) of fresh noise"),
                                        cg_iters=Int(1, doc="CG iterations of the proximal step")),
                  summary="DiffPIR: plug-and-play HQS, proximal data step argmin ||y-Az||² + rho_t ||z - x0_hat||²",
                  nfe=lambda k, prior: k["steps"])
@torch.no_grad()
def diffpir(prior, op, y, *, generators, steps=100, lam=8.0, sigma_y=0.0, sigma_floor=0.05, zeta=1.0, cg_iters=10,
            progress=False) -> SamplerOutput:
    """DiffPIR on a pixel-space VP prior, any linear operator.

    Args:
        steps: sampling steps on the grid ``tau_k = k * (T // steps)`` (100; the paper uses ~100 NFE).
        lam: prior weight ``lambda`` in ``rho_t = lam sigma_y² / sigma_t²`` (InverseBench default 8; the paper tunes
            it per task in roughly 1–10).
        sigma_y: noise std of ``y`` in the units the sampler sees (after ``solve``'s data scaling for
            ``mri-brain``; :func:`invsolve.solve` passes it).
        sigma_floor: the noise level in ``rho_t`` is ``max(sigma_y, sigma_floor)``: noiseless data still need a prior
            weight (0.05, InverseBench's noise level; before ``sigma_floor`` existed ``sigma_y = 0.05`` played both
            roles, and ``sigma_y <= 0.05`` still gives the same ``rho_t``).
        zeta: fraction (in variance) of fresh noise in the re-noising (1.0 = fully fresh; the paper uses ~0.3 for
            deblurring / SR and 1.0 for inpainting).
        cg_iters: CG iterations for the proximal step when the operator has no closed form (multi-coil MRI, CT,
            bicubic SR with ``rho_t > 0``); the CG solves for the correction, i.e. warm-started at ``x0_hat``.

    Per task: noisy deblurring / SR / inpainting: ``sigma_y`` = the noise std, ``zeta`` 0.3 (deblur, SR) or 1.0
    (inpainting), ``lam`` 1-10 tuned on validation images. Noiseless MRI / CT: the defaults (the 0.05 floor).
    """
    sigma_n = max(sigma_y, sigma_floor)
    x = prior_noise(prior, generators, y.device)
    for t, t_next in progress_bar(ddim_grid(prior, steps), progress, "DiffPIR", total=steps):
        x0, _ = prior.tweedie(x, t)
        z0 = prior.from_prior(x0)
        ab = float(prior.alpha_bar(t))
        rho = lam * sigma_n**2 / (unit(prior) ** 2 * (1 - ab) / ab)
        x0c = prior.to_prior(z0 + op.pinv(y - op(z0), iterations=cg_iters, reg=rho))
        if t_next < 0:
            x = x0c
            continue
        n = prior_noise(prior, generators, y.device)
        x = renoise(x0c, eps_from_x0(x, x0c, ab), n, float(prior.alpha_bar(t_next)), zeta**0.5,
                    eps_weight=(1 - zeta) ** 0.5)
    return SamplerOutput(x=prior.from_prior(x))
