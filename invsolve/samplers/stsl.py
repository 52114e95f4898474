"""STSL — Second-order Tweedie sampler from a Surrogate Loss (Rout et al., CVPR 2024).

No reference code exists; this is our reconstruction of the paper's Algorithm 1. Per DDIM step ``t`` the latent ``z``
is first moved by ``N`` gradient steps on the surrogate loss

    L(z) = lam · ||y - A D(z0(z))||²  +  (eta / d) · (1/h) εᵀ ( s(z + h ε) - s(z) ),     ε ~ N(0, I)

(``z0(z)`` the first-order Tweedie latent, ``s = -eps_theta / sqrt(1 - abar_t)`` the score, ``d`` the latent
dimension, ``D`` the decoder, ``h = c · sqrt(1 - abar_t)`` the probe step), then takes one deterministic DDIM step.
The second term is a one-probe Hutchinson estimate of ``tr ∇²log p_t(z)`` with a finite-difference Hessian-vector
product (unbiased for the trace when the score is linear over the probe's reach). Since ``Cov[z0 | z] = ((1-a)/a)(I
+ (1-a) ∇²log p_t)`` (second-order Tweedie, ``a = abar_t``), it penalises the posterior covariance that first-order
guidance ignores (the Jensen gap of the likelihood). Gradients go through the decoder, the Tweedie map and both
network calls.

Decisions we had to make (the measurements behind them: docs/tuning.md):

* the probe step is relative to the noise level, ``h = c · sqrt(1 - abar_t)``, and the term is divided by ``h``
  so that its expectation is ``tr H`` for every step (the paper's formula as quoted has ``h = 1``, which equals ours
  at high noise but leaves the score's linear region at low noise);
* one probe per inner iteration; ``N = 2`` inner iterations (2 network calls each) + 1 DDIM call = 5 NFE per step,
  250 NFE at 50 steps, the paper's count;
* start: the encoded back-projection ``E(Aᵀy)`` forward-diffused to the top of the DDIM grid (``init``);
  deterministic DDIM (``eta_DDIM = 0``); the final latent is the Tweedie estimate at ``t = 0``;
* the data term is the squared norm with weight ``lam``; ``eta / lam`` sets the trace term's relative weight;
* the step size (the paper's appendix B.1 values were not available): by default a capped Polyak step
  (``step="polyak"``): ``z <- z - s ∇L`` with ``s = min(rho · lam ||r||² / ||∇L||², cap / (2 lam ||r||))``. The first
  term is a fraction ``rho`` of the gradient step that would bring the data term to zero if it were linear in ``z``:
  it needs no scale (invariant to ``lam``, the image range and how steep the decoder is) and shrinks with the
  residual, so late steps do not oscillate around the data as constant-length steps do. The cap is ``cap`` times
  PSLD's unit step on ``||r||``: without it the step overshoots where ``||∇L||`` is small against ``||r||``. How much
  cap a problem wants depends on the prior (``benchmarks/bench_stsl_gaussian.py``,
  ``configs/bench/stsl-vs-psld.yaml``): on the analytic Gaussian test priors the posterior-mean error grows with it
  (Gaussian 0.18 at cap 1, 0.71 at 4, 1.6 at 16, 23 unbounded), so the default is 1; on ``natural-latent`` the cap of
  1 bound most steps in the last third of sampling and left the data residual far above the noise on photos unlike the
  training set, and the best cap of 4 or 16 gained 0.7 / 1.7 / 0.8 dB (deblur / SR / inpaint) on the validation crops.
  The alternatives are the DPS rule ``rho ∇L / ||r||`` (``step="residual"``; ``rho = 0.5`` is PSLD's unit step) and a
  fixed step ``rho ∇L`` (``step="fixed"``). ``rho`` and ``cap`` were chosen on validation crops of the training photos
  (the validation tasks of ``configs/bench/stsl-vs-psld.yaml``), never on held-out photos; the ``natural-latent``
  presets (``invsolve/presets/natural-latent.yaml``) set them per task (deblur rho 0.3 / cap 16, SR 1 / 16,
  inpaint 0.3 / 4). There
  the Polyak step gave 26.4 / 25.3 / 27.9 dB (deblur / SR / inpaint; 25.6 / 23.6 / 27.0 with cap 1) against 23.0 /
  19.0 / 22.1 dB for the best residual-rule ``rho``; on the held-out photos 20.0 / 20.2 / 22.9 dB (cap 1: 18.4 / 16.9
  / 21.0; residual rule 15.9 / 14.3 / 17.8; ``BENCHMARKS.md``). Over 4 seeds on one device that matches PSLD with 1000
  steps at a quarter of its network calls: 20.30 / 20.01 / 23.01 dB against 20.44 / 19.68 / 22.80, no difference
  significant;
* PSLD's gluing term is optional (``gluing``, default 0: the paper's loss as quoted has none).

On a Gaussian prior the trace of the Hessian is constant, so the trace term has zero gradient and STSL reduces
exactly to its first-order (``eta = 0``) variant (``tests/test_stsl.py``); it can only matter for non-Gaussian priors.
"""
from __future__ import annotations

import functools

import torch

from ..errors import InvalidValueError
from ..noise_level import noise_floor
from .base import SamplerOutput, progress_bar, randn, register_sampler
from .knobs import STEPS, Choice, Float, Int
from .steps import ddim_grid, ddim_step, glue_term, initial_latent, needs_adjoint, tweedie_grad


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


STEP_RULES = ("polyak", "residual", "fixed")


def _stsl_nfe(k, prior) -> int:
    return k["steps"] * (k["inner"] * (2 if k["eta"] > 0 else 1) + 1)


@register_sampler("stsl", knobs=dict(
    steps=STEPS, inner=Int(1, doc="surrogate-loss gradient steps per outer step"),
    lam=Float(0, doc="weight of the data term"), rho=Float(0, low_open=True, doc="step size (per the step rule)"),
    eta=Float(0, doc="weight of the Hutchinson trace term (0: first order)"),
    c=Float(0, low_open=True, doc="finite-difference probe scale"), gluing=Float(0, doc="gluing weight (0: off)"),
    step=Choice(*STEP_RULES, doc="step rule"),
    cap=Float(0, low_open=True, inf_ok=True, doc="Polyak step cap, in PSLD steps"),
    init=Choice("adjoint", "pinv", "noise", doc="initial image"),
    pinv_iters=Int(1, doc="CG iterations for A⁺ without a closed form"),
    sigma_y=Float(0, doc="noise std of y: the Polyak step aims at the noise level m sigma_y² (0: at zero)")),
                  requires="differentiable", latent_ok=True, nfe=_stsl_nfe,
                  adjoint_knobs=lambda k: needs_adjoint(k["init"], k["gluing"]),
                  summary="STSL: DDIM + N gradient steps per step on a data term at the Tweedie mean plus a "
                          "Hutchinson trace of the score Jacobian (second-order Tweedie; latent or pixel priors)")
def stsl(prior, op, y, *, generators, steps=50, inner=2, lam=1.0, rho=1.0, eta=0.02, c=1.0, gluing=0.0,
         step="polyak", cap=1.0, init="adjoint", pinv_iters=30, sigma_y=0.0, progress=False) -> SamplerOutput:
    """STSL on a latent prior (or a pixel prior, with the prior's domain map as the decoder), linear operators.

    Args:
        steps: S outer DDIM steps on the grid ``tau_k = k * (T // S)`` (default 50).
        inner: N surrogate-loss gradient steps per outer step (default 2); each costs 2 network calls (1 if
            ``eta = 0``) and one backward pass through network(s) and decoder.
        lam: weight of the data term ``||y - A D(z0)||²`` (squared norm over all measurement entries).
        rho: step size on ``z``, per sample, as the rule ``step`` says (default 1).
        step: ``"polyak"`` (default): ``z <- z - min(rho · lam ||r||² / ||∇L||², cap / (2 lam ||r||)) ∇L``, a
            fraction ``rho`` of the step that zeroes the linearised data term (``r = y - A D(z0)``), never longer
            than ``cap`` times PSLD's step; ``"residual"``: ``z <- z - rho ∇L / ||r||`` (the DPS rule
            ``zeta_t = zeta' / ||r||``; ``rho = 0.5`` is PSLD's scale); ``"fixed"``: ``z <- z - rho ∇L`` (suits no
            single noise level: the data-term gradient norm falls by orders of magnitude over the grid).
        cap: the Polyak step's cap in units of PSLD's step ``1 / (2 lam ||r||)`` (``float("inf")``: uncapped).
        eta: weight of the trace term, divided by the latent dimension ``d`` (paper: 0.02; 0 gives the first-order
            variant with one network call per inner step).
        c: finite-difference probe scale: the score is evaluated at ``z + c sqrt(1 - abar_t) ε``.
        gluing: optional weight of PSLD's gluing term ``||E(D(z0) + A⁺(y - A D(z0))) - z0||`` (default 0, off).
        init: initial image encoded and forward-diffused to the first step: ``"adjoint"`` (``Aᵀy``, the paper),
            ``"pinv"`` (``A⁺y``, better scaled for bicubic SR) or ``"noise"``.
        pinv_iters: CG iterations for ``A⁺`` (``init="pinv"``, gluing) where the operator has no closed form.
        sigma_y: noise std of ``y`` in the units the sampler sees (:func:`invsolve.solve` passes it). Polyak's step
            ``(f - f*) / ||∇f||²`` needs the optimal value ``f*``; with noise the data term at the truth is
            ``lam m sigma_y²`` (``m`` measured entries), not 0, so the Polyak step aims there:
            ``rho · lam (||r||² - m sigma_y²)₊ / ||∇L||²`` (no step once the residual is within the noise).
            0 (default): aim at zero. The ``residual`` and ``fixed`` rules ignore it.
    Returns:
        operator-domain ``D(z_0)``; ``info["residual"]``: ``||y - A D(z0)||`` at the last inner iteration of each
        step ``(S, B)``; ``info["trace"]``: the Hutchinson estimates there (``eta > 0``).
    """
    if step == "polyak" and lam == 0:
        raise InvalidValueError("sampler 'stsl': lam must be > 0 with step='polyak' (its step is a fraction of the "
                                "data term; with lam = 0 it would never move): use step='fixed' for the trace term "
                                "alone")
    grid = ddim_grid(prior, steps)
    z = initial_latent(prior, op, y, generators, grid[0][0], init, pinv_iters)
    shape = tuple(z.shape[1:])
    d = z[0].numel()
    residuals, traces = [], []
    floor2 = noise_floor(op, y, sigma_y) ** 2 if sigma_y > 0 and step == "polyak" else 0.0

    def loss(z0, e, zt, t):  # the surrogate loss; extras: the squared residual and the trace estimate
        x0 = prior.from_prior(z0)
        r2 = (y - op(x0)).flatten(1).abs().square().sum(1)  # |.|²: complex k-space too
        value, tr = lam * r2, None
        if eta > 0:
            tr = hutchinson_trace(prior, zt, t, randn(shape, generators, y.device), c, e)
            value = value + (eta / d) * tr
        if gluing > 0:
            value = value + gluing * glue_term(prior, op, y, x0, z0, pinv_iters)
        return value, (r2.detach(), None if tr is None else tr.detach())

    for t, t_next in progress_bar(grid, progress, "STSL", total=steps):
        for _ in range(int(inner)):
            _, _, (r2, tr), g = tweedie_grad(prior, z, t, functools.partial(loss, t=t))
            if step == "polyak":  # capped at cap x PSLD's step: unbounded it overshoots where ||∇L|| << ||r||
                excess = (r2.detach() - floor2).clamp_min(0)  # f - f*: the data term above the noise level
                size = torch.minimum(rho * lam * excess / g.flatten(1).abs().square().sum(1).clamp_min(1e-30),
                                     0.5 * cap / (lam * r2.detach().sqrt()).clamp_min(1e-12))
            elif step == "residual":
                size = rho / r2.sqrt().clamp_min(1e-12)
            else:
                size = torch.full_like(r2, rho)
            z = z - size.reshape(-1, *([1] * (z.dim() - 1))) * g
        residuals.append(r2.sqrt())
        if eta > 0:
            traces.append(tr)
        with torch.no_grad():
            z0, e = prior.tweedie(z, t)
            z = ddim_step(z0, e, *(prior.alpha_bar(s).to(z0.dtype) for s in (t, t_next)))
    with torch.no_grad():
        x = prior.from_prior(z)
    info = {"residual": torch.stack(residuals).cpu()}
    if traces:
        info["trace"] = torch.stack(traces).cpu()
    return SamplerOutput(x=x, info=info)
