"""DAPS — Decoupled Annealing Posterior Sampling (Zhang, Chu, Berner, Meng, Anandkumar & Song, CVPR 2025;
arXiv 2407.01521).

The sampler anneals a noise level ``sigma_0 > sigma_1 > ... > sigma_{N-1} > sigma_N = 0`` (EDM grid, ``rho = 7``,
from ``sigma_max`` to ``sigma_min``) and *decouples* consecutive states: at level ``i``, with ``x_i = x0 + sigma_i n``
in the prior's VE scaling,

1. **ODE estimate**: ``x0_hat = Phi(x_i; sigma_i)``, ``ode_steps`` Euler (or Heun) steps of the probability-flow ODE
   ``dx/dsigma = (x - D(x; sigma)) / sigma`` on an EDM grid from ``sigma_i`` to ``ode_sigma_min``, then the denoiser
   to ``sigma = 0`` (``ode_steps = 1``: ``D(x_i; sigma_i)``);
2. **Langevin on x0**: ``langevin_steps`` unadjusted Langevin steps, started at ``x0_hat``, on the approximate
   posterior ``p(x0 | x_i, y) ∝ N(x0; x0_hat, r_i² I) exp(-||y - A(x0)||² / (2 beta_y²))`` with ``r_i = sigma_i`` (as
   released)::

       x0 <- x0 + eta_i [ (x0_hat - x0) / r_i² - grad_x0 ||y - A(x0)||² / (2 beta_y²) ] + sqrt(2 eta_i) z,

   the step size decaying linearly over the annealing levels, ``eta_i = lr (1 - (1 - lr_min_ratio) i / (N - 1))``;
   the data gradient goes through ``A`` (autograd: linear and nonlinear differentiable operators), never through the
   network;
3. **re-noising**: ``x_{i+1} = x0 + sigma_{i+1} z'`` (fresh noise); at the last level ``x0`` is returned.

Network calls: ``N * ode_steps`` (Euler; Heun ``N * (2 ode_steps - 1)``), no network gradients. Works on any prior
through its VE view ``denoise(x, sigma)`` (DDPM, VE/EDM and flow-matching priors). Everything is per item: an
item's draws come from its own generator and its gradient from its own residual.
"""
from __future__ import annotations

import math
from typing import List

import torch

from ..errors import InvsolveError
from .base import SamplerOutput, progress_bar, randn, register_sampler
from .knobs import Choice, Float, Int

# (annealing levels N, ODE steps per level, Langevin steps per level): DAPS-1K (linear tasks) and DAPS-4K (nonlinear
# tasks) as in the paper's experiments (1000 / 4000 network calls; the released scripts run DAPS-1K as 200 x 5), and a
# 100-call setting for CPUs.
BUDGETS = {"1k": (250, 4, 100), "4k": (400, 10, 100), "cheap": (50, 2, 20)}


def edm_sigmas(sigma_max: float, sigma_min: float, n: int, rho: float = 7.0) -> List[float]:
    """``n`` decreasing EDM noise levels from ``sigma_max`` to ``sigma_min`` (``rho`` spacing) followed by 0."""
    if n == 1:
        return [float(sigma_max), 0.0]
    a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return [float((a + k / (n - 1) * (b - a)) ** rho) for k in range(n)] + [0.0]


@torch.no_grad()
def ode_x0(prior, x: torch.Tensor, sigma: float, steps: int, sigma_min: float, rho: float = 7.0,
           solver: str = "euler") -> torch.Tensor:
    """``Phi(x; sigma)``: the clean end of the probability-flow ODE from ``x`` at noise level ``sigma``.

    ``steps`` steps on an EDM grid from ``sigma`` to ``min(sigma_min, sigma)``, the last one to ``sigma = 0`` (where
    the Euler step is the denoiser itself). ``solver="heun"`` adds EDM's second-order correction to every step but the
    last. ``x``: prior space, VE scaling ``(B, C, H, W)``; network calls: ``steps`` (Euler), ``2 steps - 1`` (Heun).
    """
    grid = edm_sigmas(sigma, min(sigma_min, sigma), steps, rho)
    for s, s_next in zip(grid[:-1], grid[1:]):
        d = (x - prior.denoise(x, s)) / s
        x_next = x + (s_next - s) * d
        if solver == "heun" and s_next > 0:
            x_next = x + (s_next - s) * 0.5 * (d + (x_next - prior.denoise(x_next, s_next)) / s_next)
        x = x_next
    return x


def squared_residual(op, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Per-item ``||y - A(z)||²`` over all non-batch entries (``|·|²`` of complex residuals), shape ``(B,)``."""
    r = (y - op(z)).flatten(1)
    return (r.real**2 + r.imag**2 if r.is_complex() else r**2).sum(dim=1)


def langevin_x0(prior, op, y: torch.Tensor, x0_hat: torch.Tensor, r: float, eta: float, beta_y: float, steps: int,
                generators) -> torch.Tensor:
    """``steps`` unadjusted Langevin steps on ``N(x0; x0_hat, r² I) exp(-||y - A(x0)||² / (2 beta_y²))`` from
    ``x0_hat`` (prior space); one forward and one backward pass through ``A`` per step, none through the network."""
    x0 = x0_hat.detach().clone()
    shape = tuple(x0.shape[1:])
    for _ in range(steps):
        with torch.enable_grad():
            v = x0.requires_grad_(True)
            (g,) = torch.autograd.grad(squared_residual(op, y, prior.from_prior(v)).sum() / (2 * beta_y**2), v)
        with torch.no_grad():
            z = randn(shape, generators, x0.device, x0.dtype)
            x0 = x0.detach() + eta * ((x0_hat - x0.detach()) / r**2 - g) + math.sqrt(2 * eta) * z
    return x0.detach()


def exact_x0(prior, op, y: torch.Tensor, x0_hat: torch.Tensor, r: float, beta_y: float, generators, *,
             cg_iters: int, cg_tol: float) -> torch.Tensor:
    """One exact draw from the Gaussian ``p(x0 | x0_hat, y) ∝ N(x0; x0_hat, r² I) exp(-||y - A x0||² / (2 beta_y²))``
    of a *linear* operator (the target of :func:`langevin_x0`), by perturb-and-MAP: in the operator domain
    (``u = from_prior(x0)``, prior std ``r`` is ``a r`` there, ``a = unit(prior)``), perturb both means,
    ``u~ = from_prior(x0_hat + r z)`` and ``y~ = y + beta_y z'`` (every real component), and solve

        (AᴴA + lam I) u = Aᴴy~ + lam u~,   lam = beta_y² / (a r)²,

    by CG warm-started at ``u~`` (float64, per item, to ``cg_tol`` relative residual or ``cg_iters`` iterations);
    the solution is an exact sample of the Gaussian (Papandreou & Yuille 2010) up to the CG tolerance. Prior space in
    and out, ``(B, C, H, W)``; no network calls."""
    from .consistency import weighted_cg_solve
    from .steps import unit

    shape = tuple(x0_hat.shape[1:])
    u_t = prior.from_prior(x0_hat + r * randn(shape, generators, x0_hat.device, x0_hat.dtype))
    n = randn(tuple(y.shape[1:]) + ((2,) if y.is_complex() else ()), generators, y.device, y.real.dtype)
    y_t = y + beta_y * (torch.view_as_complex(n.contiguous()) if y.is_complex() else n)
    lam = beta_y**2 / (unit(prior) * r) ** 2
    res = weighted_cg_solve(op, op.adjoint(y_t), u_t, lam, cg_iters=cg_iters, cg_tol=cg_tol, precision="double")
    return prior.to_prior(res.x).to(x0_hat.dtype)


def _nonfinite(x: torch.Tensor) -> List[int]:
    return (~torch.isfinite(x.flatten(1)).all(dim=1)).nonzero().flatten().tolist()


def resolve_budget(budget: str, steps, ode_steps, langevin_steps):
    """``(N, ode_steps, langevin_steps)``: the budget's values where the knob is ``None``."""
    n, k, m = BUDGETS[budget]
    return (n if steps is None else steps, k if ode_steps is None else ode_steps,
            m if langevin_steps is None else langevin_steps)


def daps_nfe(knobs) -> int:
    """Network calls of one DAPS run with resolved ``knobs``: ``N * ode_steps`` (Euler), ``N * (2 ode_steps - 1)``
    (Heun: no correction on the last step, to ``sigma = 0``)."""
    n, k, _ = resolve_budget(knobs["budget"], knobs["steps"], knobs["ode_steps"], knobs["langevin_steps"])
    return n * (2 * k - 1 if knobs["ode_solver"] == "heun" else k)


@register_sampler("daps", knobs=dict(
    budget=Choice("1k", "4k", "cheap", doc="DAPS-1K (250 x 4 ODE steps), DAPS-4K (400 x 10) or cheap (50 x 2)"),
    steps=Int(1, 10000, optional=True, doc="annealing levels N (None: from the budget)"),
    ode_steps=Int(1, 1000, optional=True, doc="PF-ODE steps per level for x0_hat (None: from the budget)"),
    langevin_steps=Int(0, 100000, optional=True, doc="Langevin steps on x0 per level (None: from the budget)"),
    lr=Float(0, low_open=True, doc="Langevin step size eta at the first level (prior-space units)"),
    lr_min_ratio=Float(0, 1, doc="eta at the last level, as a fraction of lr (linear decay)"),
    beta_y=Float(0, low_open=True, doc="likelihood std of the Langevin target, in the units of y"),
    sigma_max=Float(0, low_open=True, doc="first annealing noise level (VE, prior space)"),
    sigma_min=Float(0, low_open=True, doc="last nonzero annealing noise level"),
    ode_sigma_min=Float(0, low_open=True, doc="where the inner PF-ODE hands over to the denoiser"),
    rho=Float(0, low_open=True, doc="EDM grid exponent of both schedules"),
    ode_solver=Choice("euler", "heun", doc="inner PF-ODE integrator"),
    x0_step=Choice("langevin", "exact", doc="x0 | x0_hat, y: Langevin (any operator) or an exact Gaussian draw by "
                                            "perturb-and-MAP CG (linear operators)"),
    cg_iters=Int(1, 100000, doc="x0_step='exact': CG iterations at most per level"),
    cg_tol=Float(0, low_open=True, doc="x0_step='exact': CG relative residual tolerance")),
                  requires="differentiable", nfe=lambda k, prior: daps_nfe(k),
                  adjoint_knobs=lambda k: "x0_step='exact' ('langevin' does not)" if k["x0_step"] == "exact" else None,
                  summary="Decoupled Annealing Posterior Sampling: PF-ODE x0 estimate, Langevin on x0 under the "
                          "likelihood, re-noise; no network gradients")
def daps(prior, op, y, *, generators, budget="1k", steps=None, ode_steps=None, langevin_steps=None, lr=1e-4,
         lr_min_ratio=0.01, beta_y=0.01, sigma_max=100.0, sigma_min=0.1, ode_sigma_min=0.01, rho=7.0,
         ode_solver="euler", x0_step="langevin", cg_iters=200, cg_tol=1e-4, progress=False) -> SamplerOutput:
    """DAPS on any pixel-space prior (VE view) and any differentiable operator, linear or not.

    Args:
        budget: ``"1k"`` (default; DAPS-1K, the paper's setting for linear tasks: 250 annealing levels x 4 ODE steps
            = 1000 network calls, 100 Langevin steps per level), ``"4k"`` (DAPS-4K, the paper's setting for
            nonlinear tasks: 400 x 10 = 4000 calls, 100 Langevin steps) or ``"cheap"`` (50 x 2 = 100 calls,
            20 Langevin steps: sized for CPUs). ``steps`` / ``ode_steps`` / ``langevin_steps`` override single values.
        lr: Langevin step size ``eta`` at the first level, in prior-space units (the data range maps to [-1, 1]);
            it decays linearly to ``lr * lr_min_ratio`` at the last level (released: 0.01). Stability needs roughly
            ``lr ||J||² / (4 beta_y²) < 1`` for an operator Jacobian ``J`` in operator units and ``lr < sigma_min²``.
            The released code uses 1e-4 with ``beta_y = 0.01`` for most 256x256 tasks (5e-5 for phase retrieval);
            tune it per task on validation data (the per-pixel data gradient does not depend on the image size, but it
            does on the operator's norm).
        beta_y: the likelihood std of the Langevin target (a tuned hyper-parameter, not necessarily the true noise
            level: the released code uses 0.01 on data with noise 0.05).
        sigma_max, sigma_min: the annealing range (released: 100 and 0.1), clamped to the prior's noise levels.
            DAPS re-noises ``x0_hat`` itself, so a bias of the denoiser at the top levels (``sigma`` times a small
            bias of the noise prediction) survives every level; the small embedded priors need ``sigma_max = 10``
            (mean of ``D(100 n, 100)`` is -0.74 for ``natural``; from 100, phase retrieval converged to the negated
            image).
        ode_sigma_min: end of the inner PF-ODE grid before the final denoiser call (released: 0.01).
        rho: EDM exponent of the annealing and ODE grids (7).
        ode_solver: ``"euler"`` (released) or ``"heun"`` (``2 ode_steps - 1`` calls per level).
        x0_step: how x0 is drawn from ``p(x0 | x0_hat, y)`` at each level: ``"langevin"`` (released; any
            differentiable operator, ``langevin_steps`` steps of size ``eta``) or ``"exact"`` (linear operators with an
            adjoint: that Gaussian sampled exactly by perturb-and-MAP, :func:`exact_x0`; ``lr``, ``lr_min_ratio`` and
            ``langevin_steps`` unused). The exact draw is what the Langevin chain converges to; it keeps the data's
            fit where a few hundred Langevin steps on an ill-conditioned operator (sparse-view CT) cannot.
        cg_iters, cg_tol: the exact step's CG (at most ``cg_iters`` iterations to relative residual ``cg_tol``).
    Returns:
        operator-domain reconstruction (the last level's Langevin sample, no noise added); ``info``: ``residual``
        ``(N, B)`` (``||y - A(x0)||`` after each level's Langevin steps), ``sigmas`` (first and last annealing level),
        ``levels``, ``ode_steps``, ``langevin_steps``.
    Raises:
        InvsolveError: a Langevin step made an item non-finite (names the items, the level and ``lr``).
    """
    n_levels, n_ode, n_lgv = resolve_budget(budget, steps, ode_steps, langevin_steps)
    s_max = min(float(sigma_max), prior.sigma_max)
    s_min = max(min(float(sigma_min), s_max), prior.sigma_min)
    s_ode = max(float(ode_sigma_min), prior.sigma_min)
    sig = edm_sigmas(s_max, s_min, n_levels, rho)
    nfe0 = prior.nfe
    shape = (prior.channels,) + tuple(prior.image_size)
    x = sig[0] * randn(shape, generators, y.device)
    residuals = []
    for i in progress_bar(range(n_levels), progress, "DAPS", total=n_levels):
        x0_hat = ode_x0(prior, x, sig[i], n_ode, s_ode, rho, ode_solver)
        eta = lr * (1 - (1 - lr_min_ratio) * i / max(n_levels - 1, 1))
        if x0_step == "exact":
            x0 = exact_x0(prior, op, y, x0_hat, sig[i], beta_y, generators, cg_iters=cg_iters, cg_tol=cg_tol)
        else:
            x0 = langevin_x0(prior, op, y, x0_hat, sig[i], eta, beta_y, n_lgv, generators)
        bad = _nonfinite(x0)
        if bad:
            if x0_step == "exact":
                raise InvsolveError(f"DAPS: the exact x0 draw became NaN/Inf for item(s) {bad} at annealing level {i} "
                                    f"(sigma {sig[i]:.3g}); check that y and the operator are finite, or raise "
                                    f"beta_y (now {beta_y:g})")
            raise InvsolveError(f"DAPS: the Langevin sample became NaN/Inf for item(s) {bad} at annealing level {i} "
                                f"(sigma {sig[i]:.3g}, step size {eta:.3g}); lower lr (now {lr:g}) or raise beta_y")
        with torch.no_grad():
            residuals.append(squared_residual(op, y, prior.from_prior(x0)).sqrt())
            x = x0 if sig[i + 1] == 0 else x0 + sig[i + 1] * randn(shape, generators, y.device)
    return SamplerOutput(x=prior.from_prior(x), nfe=prior.nfe - nfe0,
                         info={"residual": torch.stack(residuals).cpu(), "sigmas": [sig[0], sig[-2]],
                               "levels": n_levels, "ode_steps": n_ode,
                               "langevin_steps": n_lgv if x0_step == "langevin" else 0, "x0_step": x0_step})
