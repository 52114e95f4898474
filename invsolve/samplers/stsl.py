"""STSL — Second-order Tweedie sampler from a Surrogate Loss (Rout et al., CVPR 2024), ALGORITHMS.md §2.

No reference code exists; this is our reconstruction of Algorithm 1 (§2.3). Per DDIM step ``t`` the latent ``z`` is
first moved by ``N`` gradient steps on the surrogate loss

    L(z) = lam · ||y - A D(z0(z))||²  +  (eta / d) · (1/h) εᵀ ( s(z + h ε) - s(z) ),     ε ~ N(0, I)

(``z0(z)`` the first-order Tweedie latent, ``s = -eps_theta / sqrt(1 - abar_t)`` the score, ``d`` the latent
dimension, ``D`` the decoder, ``h = c · sqrt(1 - abar_t)`` the probe step), then takes one deterministic DDIM step.
The second term is a one-probe Hutchinson estimate of ``tr ∇²log p_t(z)`` with a finite-difference Hessian-vector
product (unbiased for the trace when the score is linear over the probe's reach). Since ``Cov[z0 | z] = ((1-a)/a)(I
+ (1-a) ∇²log p_t)`` (second-order Tweedie, ``a = abar_t``), it penalises the posterior covariance that first-order
guidance ignores (the Jensen gap of the likelihood). Gradients go through the decoder, the Tweedie map and both
network calls.

Decisions we had to make (flagged [DESIGN] in ALGORITHMS.md):

* the probe step is relative to the noise level, ``h = c · sqrt(1 - abar_t)``, and the term is divided by ``h``
  so that its expectation is ``tr H`` for every step. The paper's formula as quoted has ``h = 1``; that equals
  ours (``c = 1``) at high noise, but at low noise a unit step leaves the region where the score is linear and,
  on a Gaussian-mixture test prior, made the trace term's gradient dominate with noise (errors 20x larger);
* one probe per inner iteration; ``N = 2`` inner iterations (2 network calls each) + 1 DDIM call = 5 NFE per step,
  250 NFE at 50 steps, the paper's count;
* start: the encoded back-projection ``E(Aᵀy)`` forward-diffused to the top of the DDIM grid (``init``);
  deterministic DDIM (``eta_DDIM = 0``); the final latent is the Tweedie estimate at ``t = 0``;
* the data term is the squared norm with weight ``lam``; gradient steps of size ``rho`` divided by the residual
  norm (``normalize``, the DPS rule); only ``lam · rho`` matters for the data term, ``eta / lam`` sets the trace
  term's relative weight. The default ``rho = 0.5`` is PSLD's reference scale (a unit step on ``||r||``, since
  ``0.5 ∇||r||² / ||r|| = ∇||r||``); the task configs (``configs/reconstruct/*_stsl.yaml``) carry the values
  chosen for ``natural-latent`` on validation crops of the training photos (``benchmarks/bench_stsl_vs_psld.py
  --validate``: 0.15 deblurring and SR, 0.25 inpainting), never on held-out photos;
* PSLD's gluing term is optional (``gluing``, default 0: the paper's loss as quoted has none).

On a Gaussian prior the trace of the Hessian is constant, so the trace term has zero gradient there and STSL
reduces exactly to its first-order (``eta = 0``) variant (``tests/test_stsl.py``). It can only matter for non-Gaussian
priors, and where we could measure it, it did not help: on a 3-component Gaussian mixture (d = 16, 50 % inpainting,
sigma_y = 0.1) the posterior-mean error grows with ``eta`` (0.1196 at 0, 0.1197 at 0.02, 0.158 at 8), and with a
narrow component (variance 0.01) the term's gradient at low noise throws the iterates off even at ``eta = 0.02``
(``benchmarks/bench_stsl_gaussian.py``). On ``natural-latent`` the paper's weight changes the held-out mean PSNR by
<= 0.02 dB (<= 0.31 dB per image).
"""
from __future__ import annotations

import torch

from .base import SamplerOutput, progress_bar, randn, register_sampler
from .psld import ddim_update, glue_term, initial_latent, needs_adjoint
from .unconditional import ddim_grid


def hutchinson_trace(prior, z: torch.Tensor, t, probe: torch.Tensor, c: float = 1.0, e=None) -> torch.Tensor:
    """Per-sample ``(1/h) εᵀ (s(z + h ε) - s(z))`` ``(B,)`` with ``h = c · sqrt(1 - abar_t)`` and
    ``s = -eps_theta / sqrt(1 - abar_t)``.

    Its mean over probes ``ε ~ N(0, I)`` is ``tr ∇s(z)`` when the score is linear on the probe's scale (exactly for
    a Gaussian prior). ``e``: ``eps_theta(z, t)`` if already computed (saves one network call). Differentiable.
    """
    if e is None:
        e = prior.eps(z, t)
    sd = (1 - prior.alpha_bar(t)).sqrt().to(z.dtype)
    h = c * sd
    e2 = prior.eps(z + h * probe, t)
    return -(probe * (e2 - e)).flatten(1).sum(1) / (h * sd)


@register_sampler("stsl", defaults=dict(steps=50, inner=2, lam=1.0, rho=0.5, eta=0.02, c=1.0, gluing=0.0,
                                        normalize=True, init="adjoint", pinv_iters=30),
                  requires="differentiable", latent_ok=True,
                  adjoint_knobs=lambda k: needs_adjoint(k["init"], k["gluing"]),
                  summary="STSL: DDIM + N gradient steps per step on a data term at the Tweedie mean plus a "
                          "Hutchinson trace of the score Jacobian (second-order Tweedie; latent or pixel priors)")
def stsl(prior, op, y, *, generators, steps=50, inner=2, lam=1.0, rho=0.5, eta=0.02, c=1.0, gluing=0.0,
         normalize=True, init="adjoint", pinv_iters=30, progress=False) -> SamplerOutput:
    """STSL on a latent prior (or a pixel prior, with the prior's domain map as the decoder), linear operators.

    Args:
        steps: S outer DDIM steps on the grid ``tau_k = k * (T // S)`` (default 50).
        inner: N surrogate-loss gradient steps per outer step (default 2); each costs 2 network calls (1 if
            ``eta = 0``) and one backward pass through network(s) and decoder.
        lam: weight of the data term ``||y - A D(z0)||²`` (squared norm over all measurement entries).
        rho: gradient step size on ``z``: ``z <- z - rho ∇L`` (``normalize=False``) or
            ``z <- z - rho ∇L / ||y - A D(z0)||`` (``normalize=True``, default, per sample).
        normalize: divide the step by the current residual norm (the DPS step-size rule ``zeta_t = zeta' / ||r||``).
            Without it no fixed ``rho`` suits all noise levels: on ``natural-latent`` the data-term gradient norm
            falls from ~440 at ``t = 900`` to ~2.4 at ``t = 10`` (deblurring).
        eta: weight of the trace term, divided by the latent dimension ``d`` (paper: 0.02; 0 gives the first-order
            variant with one network call per inner step).
        c: finite-difference probe scale: the score is evaluated at ``z + c sqrt(1 - abar_t) ε``.
        gluing: optional weight of PSLD's gluing term ``||E(D(z0) + A⁺(y - A D(z0))) - z0||`` (default 0, off).
        init: initial image encoded and forward-diffused to the first step: ``"adjoint"`` (``Aᵀy``, the paper),
            ``"pinv"`` (``A⁺y``, better scaled for bicubic SR) or ``"noise"``.
        pinv_iters: CG iterations for ``A⁺`` (``init="pinv"``, gluing) where the operator has no closed form.
    Returns:
        operator-domain ``D(z_0)``; ``info["residual"]``: ``||y - A D(z0)||`` at the last inner iteration of each
        step ``(S, B)``; ``info["trace"]``: the Hutchinson estimates there (``eta > 0``).
    """
    if inner < 1 or int(inner) != inner:
        raise ValueError(f"inner must be a positive integer, got {inner!r}")
    if eta < 0 or lam < 0 or rho <= 0 or c <= 0 or gluing < 0:
        raise ValueError(f"need eta, lam, gluing >= 0 and rho, c > 0; got eta={eta}, lam={lam}, rho={rho}, c={c}, "
                         f"gluing={gluing}")
    nfe0 = prior.nfe
    grid = ddim_grid(prior, steps)
    z = initial_latent(prior, op, y, generators, grid[0][0], init, pinv_iters)
    shape = tuple(z.shape[1:])
    d = z[0].numel()
    residuals, traces = [], []
    for t, t_next in progress_bar(grid, progress, "STSL", total=steps):
        for _ in range(int(inner)):
            with torch.enable_grad():
                zt = z.detach().requires_grad_(True)
                z0, e = prior.tweedie(zt, t)
                x0 = prior.from_prior(z0)
                r2 = (y - op(x0)).flatten(1).abs().square().sum(1)  # |.|²: complex k-space too
                loss = lam * r2
                if eta > 0:
                    tr = hutchinson_trace(prior, zt, t, randn(shape, generators, y.device), c, e)
                    loss = loss + (eta / d) * tr
                if gluing > 0:
                    loss = loss + gluing * glue_term(prior, op, y, x0, z0, pinv_iters)
                (g,) = torch.autograd.grad(loss.sum(), zt)
            step = rho / r2.detach().sqrt().clamp_min(1e-12) if normalize else torch.full_like(r2, rho)
            z = z - step.reshape(-1, *([1] * (z.dim() - 1))) * g
        residuals.append(r2.detach().sqrt())
        if eta > 0:
            traces.append(tr.detach())
        with torch.no_grad():
            z0, e = prior.tweedie(z, t)
            z = ddim_update(prior, z0, e, t_next)
    with torch.no_grad():
        x = prior.from_prior(z)
    info = {"residual": torch.stack(residuals).cpu()}
    if traces:
        info["trace"] = torch.stack(traces).cpu()
    return SamplerOutput(x=x, nfe=prior.nfe - nfe0, info=info)
