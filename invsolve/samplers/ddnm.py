"""DDNM / DDNM+ — Denoising Diffusion Null-space Model (Wang, Yu & Zhang, ICLR 2023).

Per step: the Tweedie estimate ``x0_hat`` keeps its null-space part and takes its range-space part from the
measurement, ``x0_c = A⁺y + (I - A⁺A) x0_hat = x0_hat + A⁺(y - A x0_hat)``, then is re-noised with the DDNM/DDS rule
(fresh noise mixed with the network's ``eps``). DDNM+ (``sigma_y > 0``) scales the correction by
``lam_t = min(1, sigma_next / sigma_y)``, removes the noise it carries from the re-noising budget and (our addition,
see ``pinv_reg``) regularises ``A⁺`` by ``sigma_y² / Var[x0 | x_t]`` so that it does not amplify the noise.
No network gradients.
"""
from __future__ import annotations

import torch

from .._deprecated import moved
from .base import SamplerOutput, progress_bar, register_sampler
from .knobs import STEPS, Float, Int
from .steps import ddim_grid, prior_noise, renoise, unit, ve_sigma


@register_sampler("ddnm", knobs=dict(steps=STEPS,
                                     eta=Float(0, 1, doc="fraction (in std) of fresh noise when re-noising"),
                                     sigma_y=Float(0, doc="noise std of y (>0: DDNM+)"),
                                     pinv_iters=Int(1, doc="CG iterations for A⁺ without a closed form"),
                                     pinv_reg=Float(0, optional=True, doc="Tikhonov weight of A⁺ (None: derived)")),
                  summary="DDNM / DDNM+: range-space replacement x0 + A⁺(y - A x0) per step, no network gradients",
                  nfe=lambda k, prior: k["steps"])
@torch.no_grad()
def ddnm(prior, op, y, *, generators, steps=100, eta=0.85, sigma_y=0.0, pinv_iters=100, pinv_reg=None,
         progress=False) -> SamplerOutput:
    """DDNM (``sigma_y = 0``) / DDNM+ (``sigma_y > 0``) on a pixel-space VP prior, any linear operator.

    Args:
        steps: sampling steps on the grid ``tau_k = k * (T // steps)`` (100, as in InverseBench).
        eta: fraction (in std) of the re-noising budget given to fresh noise (0.85).
        sigma_y: measurement noise std in the units of ``y`` as the sampler sees it (after ``solve``'s data
            scaling for ``mri-brain``). ``> 0`` switches on DDNM+: ``lam_t = min(1, sigma_next / sigma_y)`` with
            ``sigma_next`` the next VE noise level in operator units, and the re-noising std is reduced to
            ``sqrt(sigma_next² - (lam_t sigma_y)²)``.
        pinv_reg: Tikhonov weight of the range-space correction, ``A⁺ -> (AᴴA + pinv_reg I)⁻¹ Aᴴ``. ``None``
            (default): 0 when ``sigma_y = 0``; otherwise ``sigma_y² / Var[x0 | x_t]`` per step (operator units,
            ``Var = s_t² / (1 + s_t²)`` per prior unit, as ΠGDM uses). This departs from InverseBench's scalar-λ
            DDNM+, whose plain ``A⁺`` amplifies the noise of an ill-conditioned operator (measured comparison:
            docs/tuning.md).
        pinv_iters: CG iterations for ``A⁺`` when the operator has no closed form (multi-coil MRI, CT); CG from
            zero stays in the range of ``Aᴴ``, so truncation acts as a regularised pseudo-inverse. Closed-form
            operators ignore it. The default 100 was chosen on a 4x multi-coil MRI validation slice.

    With noisy data always set ``sigma_y``: the noiseless form (``sigma_y = 0``) fits the noise through ``A⁺`` and
    diverges on ill-conditioned operators (deblurring). Time-travel (``L > 1``) is not implemented (the InverseBench
    default ``L = 1``).
    """
    x = prior_noise(prior, generators, y.device)
    sy = sigma_y / unit(prior)  # prior units
    for t, t_next in progress_bar(ddim_grid(prior, steps), progress, "DDNM", total=steps):
        x0, e = prior.tweedie(x, t)
        z0 = prior.from_prior(x0)
        ab_n = float(prior.alpha_bar(t_next))
        s_next = ve_sigma(ab_n)
        lam = 1.0 if sy == 0 else min(1.0, s_next / sy)
        if pinv_reg is not None:
            reg = pinv_reg
        elif sy > 0:  # sigma_y² / Var[x0 | x_t] in operator units, Var = s²/(1 + s²) per prior unit (as in ΠGDM)
            s_t = ve_sigma(float(prior.alpha_bar(t)))
            reg = sy**2 * (1 + s_t**2) / s_t**2
        else:
            reg = 0.0
        x0c = prior.to_prior(z0 + lam * op.pinv(y - op(z0), iterations=pinv_iters, reg=reg))
        if t_next < 0:
            x = x0c
            continue
        sigma = max(s_next**2 - (lam * sy) ** 2, 0.0) ** 0.5  # the budget less the noise the correction carries
        x = renoise(x0c, e, prior_noise(prior, generators, y.device), ab_n, eta, sigma=sigma)
    return SamplerOutput(x=prior.from_prior(x))


__getattr__ = moved(__name__, dict.fromkeys(("lin_from_prior", "lin_to_prior"), "invsolve.samplers.steps"))
