"""DPS-GSG — DPS with a zero-order (Gaussian-smoothing) gradient of the data misfit.

The black-box baseline of the EnKG paper (Zheng et al., arXiv 2409.20175): DPS (ancestral DDPM steps on the VP
grid, as in :mod:`invsolve.samplers.dps`) where the gradient of ``L(z) = ||y - G(z)||^2`` at the Tweedie estimate
``z = x0_hat`` comes from ``Q`` forward evaluations along random directions ``u ~ N(0, I)`` (prior space):

* ``estimator="central"``: ``grad L ≈ sum_{p=1..P} u_p (L(z + mu u_p) - L(z - mu u_p)) / (2 mu P)``, ``P = Q/2``;
* ``estimator="forward"``: ``grad L ≈ sum_{q=1..Q} u_q (L(z + mu u_q) - L(z)) / (mu Q)``.

DPS's step uses the gradient of the *unsquared* norm, ``grad ||y - G(z)|| = grad L / (2 sqrt(L(z)))``, pulled back
to ``x_t`` through the network by one vector-Jacobian product (``jacobian="network"``, the reference) or with
``d x0_hat / d x_t ≈ I / sqrt(abar_t)`` (``jacobian="identity"``: no backward pass through the network).
Forward evaluations per step: ``Q + 1`` (``L(z)`` for the normalisation is always evaluated), all of them, for
every measurement, in one batched operator call.
"""
from __future__ import annotations

import torch

from ..errors import InvalidValueError, InvsolveError
from .base import NonFiniteEnsembleError, SamplerOutput, progress_bar, randn, register_sampler
from .knobs import STEPS, Choice, Float, Int
from .steps import ancestral_step, ddim_grid


def _misfit(op, y: torch.Tensor, z: torch.Tensor, reps: int, prior) -> torch.Tensor:
    """``L = ||y - G(from_prior(z))||^2`` per row of ``z`` ``(B * reps, ...)`` (rows of item b consecutive)."""
    g = op.repeat_interleave(reps)(prior.from_prior(z))
    r = g - y.repeat_interleave(reps, 0)
    r = (torch.view_as_real(r) if r.is_complex() else r).reshape(r.shape[0], -1).double()
    L = (r**2).sum(dim=1)
    if not bool(torch.isfinite(L).all()):
        bad = (~torch.isfinite(L)).nonzero().flatten().tolist()
        raise NonFiniteEnsembleError(f"DPS-GSG: the forward model returned NaN/Inf for perturbed inputs "
                                     f"(item, query) {[(i // reps, i % reps) for i in bad[:8]]}")
    return L


def gsg_gradient(op, y: torch.Tensor, z: torch.Tensor, generators, prior, queries: int, mu: float,
                 estimator: str = "central"):
    """Gaussian-smoothing estimate of ``grad_z ||y - G(z)||^2`` and ``L(z)`` for ``z`` ``(B, C, H, W)``, from one
    batched operator call on ``z`` and its ``Q`` perturbations.

    Returns ``(grad (B, C, H, W), L (B,) float64, forward evaluations)``.
    """
    B = z.shape[0]
    n = queries // 2 if estimator == "central" else queries
    u = torch.stack([torch.randn((n,) + tuple(z.shape[1:]), generator=g, device=g.device) for g in generators])
    u = u.to(z.device)  # (B, n, C, H, W), item b's directions from generators[b]
    zr = z.unsqueeze(1)
    pts = [zr, zr + mu * u] + ([zr - mu * u] if estimator == "central" else [])
    pts = torch.cat(pts, dim=1)  # (B, 1 + n or 1 + 2n, ...)
    m = pts.shape[1]
    L = _misfit(op, y, pts.flatten(0, 1), m, prior).reshape(B, m)
    if estimator == "central":
        coef = (L[:, 1 : n + 1] - L[:, n + 1 :]) / (2 * mu * n)
    else:
        coef = (L[:, 1:] - L[:, :1]) / (mu * n)
    grad = torch.einsum("bn,bn...->b...", coef.to(u.dtype), u)
    return grad, L[:, 0], B * m


@register_sampler("dps-gsg", knobs=dict(
    steps=STEPS, scale=Float(0, doc="DPS step size"), queries=Int(1, doc="forward evaluations per step"),
    mu=Float(0, low_open=True, doc="smoothing radius in prior space"),
    estimator=Choice("central", "forward", doc="Gaussian-smoothing estimator"),
    jacobian=Choice("network", "identity", doc="chain rule through the network or not"),
    clip=Float(0, low_open=True, optional=True, doc="clamp x0_hat to [-clip, clip]"),
    variance=Choice("betatilde", "beta", doc="ancestral noise variance")),
                  requires="forward", nfe=lambda k, prior: k["steps"],
                  summary="Zero-order DPS: Gaussian-smoothing gradient of ||y - G(x0_hat)|| from forward "
                          "evaluations only (black-box baseline)")
def dps_gsg(prior, op, y, *, generators, steps=1000, scale=0.5, queries=64, mu=0.01, estimator="central",
            jacobian="network", clip=1.0, variance="betatilde", progress=False) -> SamplerOutput:
    """DPS with a zero-order gradient, for black-box forward models.

    Args:
        steps: VP grid steps (1000 in the reference).
        scale: DPS step ``s`` in ``x <- x' - s grad_x ||y - G(x0_hat)||`` (reference configs 0.01 / 0.1 / 1.0).
        queries: Q forward evaluations per step for the estimate (reference 1024; InverseBench 2048).
        mu: smoothing radius in prior space (0.01).
        estimator: ``"central"`` (``Q/2`` antithetic pairs) or ``"forward"``.
        jacobian: ``"network"`` (VJP through the network, one backward pass per step) or ``"identity"``.
        clip: clamp ``x0_hat`` to ``[-clip, clip]`` (prior space) before the forward model; ``None``: no clipping.
        variance: ancestral noise variance (``"betatilde"`` or ``"beta"``), as in ``dps``.
    Returns:
        operator-domain samples; ``info``: ``residual`` ``||y - G(x0_hat)||`` per step ``(steps, B)``,
        ``forward_evaluations`` (items through ``G``, all measurements), ``forward_calls`` (sequential calls).
    """
    if queries < (2 if estimator == "central" else 1):
        raise InvalidValueError(f"sampler 'dps-gsg': queries={queries} is out of range; the central estimator needs "
                                "queries >= 2 (antithetic pairs)")
    shape = (prior.channels,) + tuple(prior.image_size)
    x = randn(shape, generators, y.device)
    residuals, evals, calls = [], 0, 0
    for t, t_next in progress_bar(ddim_grid(prior, steps), progress, "DPS-GSG", total=steps):
        with torch.set_grad_enabled(jacobian == "network"):
            xg = x.detach().requires_grad_(jacobian == "network")
            x0, _ = prior.tweedie(xg, t)
            x0c = x0 if clip is None else x0.clamp(-clip, clip)
        z = x0c.detach()
        try:
            grad_z, L0, n_eval = gsg_gradient(op, y, z, generators, prior, queries, mu, estimator)
        except InvsolveError as e:
            e.add_note(f"(DPS-GSG step t={t})")
            raise
        evals, calls = evals + n_eval, calls + 1
        norm = L0.sqrt()
        residuals.append(norm.float().cpu())
        g0 = grad_z * (0.5 / norm.clamp_min(1e-12)).to(grad_z.dtype).reshape(-1, 1, 1, 1)
        if jacobian == "network":
            (g,) = torch.autograd.grad(x0c, xg, grad_outputs=g0)
        else:
            g = g0 / float(prior.alpha_bar(t)) ** 0.5
        with torch.no_grad():
            n = randn(shape, generators, y.device) if t_next >= 0 else torch.zeros_like(x)
            x = (ancestral_step(prior, x, z, t, t_next, n, variance) - scale * g).detach()
    return SamplerOutput(x=prior.from_prior(x),
                         info={"residual": torch.stack(residuals), "forward_evaluations": evals,
                               "forward_calls": calls})
