"""RED-diff — regularisation by denoising diffusion (Mardani, Song, Kautz & Vahdat, ICLR 2024; arXiv 2305.04391),
ALGORITHMS.md §5.

Variational: the posterior is approximated by a point mass at ``mu`` (prior space), found by Adam on

    L(mu) = ||y - A(mu)||² / (2 m)  +  lam * w_t * <sg(eps_theta(x_t, t) - eps), mu> / n,
    x_t = sqrt(abar_t) mu + sqrt(1 - abar_t) eps,   eps ~ N(0, I) fresh at every step,

one step per timestep ``t`` of a decreasing grid (``m`` entries of ``y``, ``n`` of ``mu``: per-entry means, as
released). The second term's gradient is ``lam * w_t * (eps_theta(x_t, t) - eps) / n``, the score-matching
regulariser with the network's Jacobian dropped (``sg``: stop-gradient; one forward call, no backward pass through the
network). ``w_t = sqrt((1 - abar_t) / abar_t)`` (the inverse square-root SNR, the released ``"linear"`` weighting).
Per item: every item has its own loss, noise generator and Adam statistics, so a result does not depend on its batch.
"""
from __future__ import annotations

import torch

from .base import SamplerOutput, progress_bar, randn, register_sampler
from .knobs import STEPS, Choice, Float, Int
from .unconditional import ddim_grid


def weight(ab: float, kind: str) -> float:
    """Regulariser weight ``w_t`` from ``abar_t``: ``"linear"`` ``sqrt((1 - abar) / abar)`` (released default),
    ``"sqrt"`` its square root, ``"const"`` 1."""
    snr_inv = ((1 - ab) / ab) ** 0.5
    return {"linear": snr_inv, "sqrt": snr_inv**0.5, "const": 1.0}[kind]


def _init(prior, op, y, init: str, pinv_iters: int) -> torch.Tensor:
    shape = (y.shape[0], prior.channels) + tuple(prior.image_size)
    if init == "pinv":  # A⁺y (closed form where the operator has one, else CG on the normal equations)
        return prior.to_prior(op.pinv(y, iterations=pinv_iters)).detach().float()
    if init == "adjoint":
        return prior.to_prior(op.adjoint(y)).detach().float()
    return torch.zeros(shape, device=y.device)


@register_sampler("reddiff", knobs=dict(
    steps=STEPS, lr=Float(0, low_open=True, doc="Adam learning rate on mu (prior space)"),
    lam=Float(0, doc="weight of the denoising regulariser"),
    beta1=Float(0, 1, high_open=True, doc="Adam beta1"), beta2=Float(0, 1, high_open=True, doc="Adam beta2"),
    weighting=Choice("linear", "sqrt", "const", doc="w_t: sqrt((1-abar)/abar), its square root, or 1"),
    init=Choice("pinv", "adjoint", "zeros", doc="mu's start: A⁺y, Aᴴy or zeros (prior space)"),
    pinv_iters=Int(1, doc="CG iterations for A⁺y where the operator has no closed form")),
                  requires="differentiable", nfe=lambda k, prior: len(ddim_grid(prior, k["steps"])),
                  adjoint_knobs=lambda k: None if k["init"] == "zeros" else f"init={k['init']!r} ('zeros' does not)",
                  summary="RED-diff: Adam on mu with the data term plus the denoiser residual (eps_theta - eps) over "
                          "a decreasing timestep schedule; no network gradients")
def reddiff(prior, op, y, *, generators, steps=1000, lr=0.1, lam=0.25, beta1=0.9, beta2=0.99, weighting="linear",
            init="pinv", pinv_iters=100, progress=False) -> SamplerOutput:
    """RED-diff on a pixel-space VP prior, any differentiable operator.

    Args:
        steps: Adam steps, one per timestep of the decreasing grid ``tau_k = k * (T // steps)`` (one network call
            each; the paper's comparisons use 1000).
        lr, beta1, beta2: Adam on ``mu`` (released: 0.1, (0.9, 0.99), no weight decay).
        lam: regulariser weight ``lambda`` (released: 0.25); ``w_t`` per ``weighting``. Its balance with the data
            term depends on the operator's norm and on ``m / n``, so it is set per task: the embedded priors'
            presets use 0.005 (4x MRI), 2.5 with 300 steps (16-view CT) and 0.01 (50 % inpainting), chosen on
            validation images.
        init: ``"pinv"`` (released: ``mu_0 = A⁺y`` mapped to prior space), ``"adjoint"`` or ``"zeros"`` (the only
            start for a nonlinear operator).
        pinv_iters: CG iterations of ``A⁺y`` for operators without a closed-form pseudo-inverse (MRI, CT).
    Returns:
        operator-domain ``mu`` after the last step; ``info["residual"]``: ``||y - A(mu)||`` before each step,
        ``(steps, B)``.
    """
    nfe0 = prior.nfe
    mu = _init(prior, op, y, init, pinv_iters).requires_grad_(True)
    opt = torch.optim.Adam([mu], lr=lr, betas=(beta1, beta2))
    m = y[0].numel()
    n = mu[0].numel()
    shape = tuple(mu.shape[1:])
    residuals = []
    for t, _ in progress_bar(ddim_grid(prior, steps), progress, "RED-diff", total=steps):
        ab = float(prior.alpha_bar(t))
        eps = randn(shape, generators, y.device)
        with torch.no_grad():
            x_t = ab**0.5 * mu + (1 - ab) ** 0.5 * eps
            e = prior.eps(x_t, t)
        with torch.enable_grad():
            r = (y - op(prior.from_prior(mu))).flatten(1)
            data = (r.real**2 + r.imag**2 if r.is_complex() else r**2).sum(dim=1) / (2 * m)
            reg = ((e - eps) * mu).flatten(1).sum(dim=1) / n
            loss = (data + lam * weight(ab, weighting) * reg).sum()  # per-item losses: items stay independent
            opt.zero_grad(set_to_none=True)
            loss.backward()
        opt.step()
        residuals.append((2 * m * data.detach()).sqrt())
    x = mu.detach()
    return SamplerOutput(x=prior.from_prior(x), nfe=prior.nfe - nfe0,
                         info={"residual": torch.stack(residuals).cpu(), "init": init})


__all__ = ["reddiff", "weight"]
