"""EnKG — Ensemble Kalman diffusion guidance (Zheng et al., arXiv 2409.20175).

Derivative-free: only forward evaluations of the measurement model ``G`` (any :class:`Operator`, e.g. a
:class:`~invsolve.operators.blackbox.BlackBox` around a numpy function) and of the denoiser are used.

An ensemble of ``J`` particles per measurement follows the EDM probability-flow ODE
``dx/dsigma = (x - D(x; sigma)) / sigma`` on a Karras grid ``sigma_0 > ... > sigma_{N-1} > sigma_N = 0`` (one Euler
step per outer step). At the outer steps ``i`` of the guided window ``thr_start N < i < N - int(thr_end N)``,
``updates`` (K) times:

1. every particle is mapped to a clean estimate ``x0_j = PHI(x_j; sigma_i, n_i)`` by ``n_i =
   min(1 + (N - i) // inner_div, max_inner)`` Euler steps of the same ODE down to ``sigma_min`` (``n_i = 1``:
   ``D(x_j; sigma_i)``);
2. ``g_j = G(x0_j)`` for all particles of all measurements in **one** batched operator call;
3. ensemble-Kalman step on the *noisy* particles, with ``r_j = g_j - y``, ``gbar`` / ``xbar`` ensemble means::

       C_jk = <r_j, g_k - gbar> / J,   x_j <- x_j - (w_i / ||C||) sum_k C_jk (x_k - xbar),

   i.e. ``x_j <- x_j - (w_i/||C||) C^{xg} (g_j - y)`` with the particle/prediction cross-covariance ``C^{xg}`` —
   ensemble-covariance-preconditioned gradient descent on ``1/2 ||G(PHI(x)) - y||^2`` under statistical
   linearisation. ``normalize="frobenius"`` (``||C||_F``, the released code), ``"trace"`` (``tr C^{gg} =
   (1/J) sum_k ||g_k - gbar||^2``, the paper's ``1/tr(C_yy)`` weighting: ``w_i <= 2`` keeps the step stable for a
   linear ``G``) or ``"none"`` (raw step ``w_i``). ``"kalman"`` (an extension, not in the paper) uses the
   regularised EKI gain instead of a scalar: ``x_j <- x_j - w_i C^{xg} (C^{gg} + gamma I)^{-1} (g_j - y)`` with
   ``gamma = kalman_reg tr(C^{gg}) / J``, solved as a ``J x J`` system; for a linear ``G`` and ``w_i = 1`` it is a
   damped Gauss-Newton step in the span of the ensemble.

Everything is per measurement: an ensemble only ever sees its own measurement and its own generator, so a result
does not depend on the rest of the batch. The network is called in chunks of ``batch`` particles (any ``J``); one
network evaluation (NFE) is one call on every particle of every measurement.
Non-finite forward outputs or particles raise :class:`NonFiniteEnsembleError` naming the particles; nothing is
averaged over a NaN.
"""
from __future__ import annotations

import math
from typing import List

import torch

from ..errors import InvalidValueError, InvsolveError
from .base import NonFiniteEnsembleError, SamplerOutput, progress_bar, register_sampler, signature_defaults
from .knobs import STEPS, Any_, Bool, Choice, Float, Int
from .localization import check_taper
from .steps import karras_sigmas


def pf_ode_step(x: torch.Tensor, d: torch.Tensor, s: float, s_next: float) -> torch.Tensor:
    """Euler step of the PF-ODE ``dx/dsigma = (x - D(x; sigma)) / sigma`` from ``s`` to ``s_next`` (0: ``D``)."""
    return d if s_next == 0 else x + (s_next - s) / s * (x - d)


def pf_ode_to_clean(prior, x: torch.Tensor, sigma: float, n: int, sigma_min: float, rho: float = 7.0) -> torch.Tensor:
    """``PHI(x; sigma, n)``: ``n`` Euler steps of the PF-ODE on a Karras grid from ``sigma`` to ``sigma_min``, then
    to 0 (``n = 1``: the denoiser ``D(x; sigma)``). Returns the clean estimate; ``n`` network calls."""
    grid = karras_sigmas(sigma, min(sigma_min, sigma), n, rho)
    for s, s_next in zip(grid[:-1], grid[1:]):
        x = pf_ode_step(x, prior.denoise(x, s), s, s_next)
    return x


def _flat_real(t: torch.Tensor) -> torch.Tensor:
    """``(n, ...)`` -> ``(n, m)`` real (complex entries as [Re, Im] pairs)."""
    return (torch.view_as_real(t) if t.is_complex() else t).reshape(t.shape[0], -1)


def cap_norm(u: torch.Tensor, max_norm) -> torch.Tensor:
    """Scale every row of ``u`` ``(..., n)`` down to Euclidean norm ``<= max_norm`` (a float or a tensor broadcasting
    against ``u``'s leading dimensions); rows already inside are unchanged; ``None`` returns ``u``."""
    if max_norm is None:
        return u
    nrm = torch.linalg.vector_norm(u, dim=-1, keepdim=True)
    bound = torch.as_tensor(max_norm, dtype=u.dtype, device=u.device)
    if bound.dim():
        bound = bound.reshape(bound.shape + (1,) * (u.dim() - bound.dim()))
    return u * torch.where(nrm > bound, bound / nrm.clamp_min(torch.finfo(u.dtype).tiny), torch.ones_like(nrm))


def kalman_step(x: torch.Tensor, g: torch.Tensor, y: torch.Tensor, weight: float,
                normalize: str = "frobenius", kalman_reg: float = 1.0, taper=None, max_norm=None) -> torch.Tensor:
    """One ensemble-Kalman update of the particles of every measurement: ``x - cap(kalman_increment(...))``.

    Args: as :func:`kalman_increment`, and
        max_norm: optional trust region: each particle's update is scaled down to Euclidean norm ``<= max_norm``
            (prior-space units, the whole particle; a float, or a tensor broadcasting against ``(B, J)``); its
            direction is kept. ``None``: no bound.
    Returns:
        updated particles ``(B, J, ...)``; float64 accumulation, the dtype of ``x``.
    """
    dx = cap_norm(kalman_increment(x, g, y, weight, normalize, kalman_reg, taper), max_norm)
    return (x.reshape(dx.shape).double() - dx).to(x.dtype).reshape(x.shape)


def kalman_increment(x: torch.Tensor, g: torch.Tensor, y: torch.Tensor, weight: float,
                     normalize: str = "frobenius", kalman_reg: float = 1.0, taper=None, sigma_y: float = 0.0,
                     noise_norm=None) -> torch.Tensor:
    """The ensemble-Kalman update ``dx_j`` (``x_j <- x_j - dx_j``) of every particle of every measurement.

    Args:
        x: noisy particles ``(B, J, ...)`` (prior space), real.
        g: their predicted measurements ``G(PHI(x))`` ``(B, J, ...)`` (real or complex).
        y: measurements ``(B, ...)``.
        weight: ``w_i``.
        normalize: ``"frobenius"``, ``"trace"``, ``"none"`` or ``"kalman"`` (module docstring).
        kalman_reg: ``rho`` of ``normalize="kalman"``: ``gamma = rho tr(C^{gg}) / J``.
        taper: optional localisation ``(n_x, n_y)`` (flattened particle x measurement entries, float): the step
            uses ``taper ∘ C^{xg}`` instead of ``C^{xg}`` (:mod:`.localization`); not with ``"kalman"``. The scalar
            normalisation is unchanged. All ones reproduces the plain step.
        sigma_y: measurement noise std: ``"kalman"`` uses the gain ``C^{xg} (C^{gg} + gamma I + sigma_y² I)^{-1}``
            (the ensemble Kalman filter with noise covariance ``sigma_y² I``, per real component).
        noise_norm: ``(B,)`` expected noise norm ``sigma_y sqrt(m)`` or ``None``: with the scalar normalisations a
            particle whose residual ``||g_j - y||`` is within it is not moved (Morozov's discrepancy principle, the
            usual stopping rule of ensemble Kalman inversion).
    Returns:
        ``dx`` ``(B, J, n)`` float64, ``n`` entries of a particle.
    """
    B, J = x.shape[:2]
    xf = x.reshape(B, J, -1).double()
    gf = _flat_real(g.reshape((B * J,) + tuple(g.shape[2:]))).reshape(B, J, -1).double()
    yf = _flat_real(y).reshape(B, 1, -1).double()
    dg = gf - gf.mean(dim=1, keepdim=True)
    if normalize == "kalman":
        if taper is not None:
            raise InvalidValueError("localize is not supported with normalize='kalman' (use 'trace' or 'frobenius')")
        # C^{xg} (C^{gg} + gamma I)^{-1} r_j = dX (dG^T dG + J gamma I)^{-1} dG^T r_j: a J x J solve per item
        gram = torch.bmm(dg, dg.transpose(1, 2))  # <dg_k, dg_l>
        ridge = kalman_reg * gram.diagonal(dim1=1, dim2=2).sum(-1) / J  # J gamma, gamma = rho tr(C^gg) / J
        ridge = ridge + J * sigma_y**2 / (2 if g.is_complex() else 1)  # + J R, R = noise variance per component
        eye = torch.eye(J, dtype=gram.dtype, device=gram.device)
        ridge = torch.where(ridge > 0, ridge, torch.ones_like(ridge))  # collapsed ensemble: rhs is 0, no move
        coef = torch.linalg.solve(gram + ridge[:, None, None] * eye, torch.bmm(dg, (gf - yf).transpose(1, 2)))
        return weight * torch.bmm(coef.transpose(1, 2), xf - xf.mean(dim=1, keepdim=True))
    C = torch.bmm(gf - yf, dg.transpose(1, 2)) / J  # (B, J, J): C_jk = <r_j, g_k - gbar> / J
    dxf = xf - xf.mean(dim=1, keepdim=True)
    if taper is None:
        dx = torch.bmm(C, dxf)
    else:  # (taper ∘ C^{xg}) r_j with C^{xg} = dX^T dG / J, an (n_x, n_y) matrix per item
        rho = check_taper(taper, xf.shape[-1], gf.shape[-1]).to(xf.device)
        cxg = torch.bmm(dxf.transpose(1, 2), dg) / J * rho
        dx = torch.bmm(gf - yf, cxg.transpose(1, 2))
    if normalize == "frobenius":
        scale = torch.linalg.matrix_norm(C)
    elif normalize == "trace":
        scale = (dg**2).sum(dim=(1, 2)) / J
    elif normalize == "none":
        scale = torch.ones(B, dtype=xf.dtype, device=xf.device)
    else:
        raise ValueError(f"normalize must be 'frobenius', 'trace', 'none' or 'kalman', got {normalize!r}")
    # an ensemble that already fits exactly (C = 0) or has collapsed (tr C^gg = 0) does not move
    step = torch.where(scale > 0, weight / scale.clamp_min(torch.finfo(xf.dtype).tiny), torch.zeros_like(scale))
    if noise_norm is not None:  # particles already within the noise do not move
        outside = torch.linalg.vector_norm(gf - yf, dim=-1) > noise_norm.to(gf)[:, None]
        dx = dx * outside[..., None].to(dx.dtype)
    return step[:, None, None] * dx


def _check_finite(t: torch.Tensor, J: int, what: str, where: str):
    v = torch.view_as_real(t) if t.is_complex() else t
    bad = ~torch.isfinite(v.reshape(v.shape[0], -1)).all(dim=1)
    if bool(bad.any()):
        idx = bad.nonzero().flatten().tolist()
        pairs = ", ".join(f"(item {i // J}, particle {i % J})" for i in idx[:8])
        more = f" and {len(idx) - 8} more" if len(idx) > 8 else ""
        raise NonFiniteEnsembleError(
            f"EnKG: {what} is NaN/Inf for {len(idx)} of {v.shape[0]} particles {where}: {pairs}{more}. "
            "The ensemble is not averaged over non-finite values; check the forward model on inputs like "
            "the prior's samples (and its behaviour outside the data range), or lower guidance.")


def guided_steps(steps: int, thr_start: float, thr_end: float) -> List[int]:
    """Outer-step indices ``i`` with ``thr_start N < i < N - int(thr_end N)`` (the released window)."""
    return [i for i in range(steps) if thr_start * steps < i < steps - int(thr_end * steps)]


def inner_steps(i: int, steps: int, inner_div: int, max_inner: int) -> int:
    """``n_i = min(1 + (N - i) // inner_div, max_inner)`` PF-ODE steps inside ``PHI`` at outer step ``i``."""
    return max(1, min(1 + (steps - i) // inner_div, max_inner))


@register_sampler("enkg", knobs=dict(
    steps=STEPS, ensemble_size=Int(2, doc="particles J per measurement"),
    updates=Int(0, doc="Kalman updates K per guided step"), guidance=Float(0, doc="guidance weight w"),
    thr_start=Float(0, 1, doc="start of the guided window (fraction of steps)"),
    thr_end=Float(0, 1, doc="end margin of the guided window (fraction of steps)"),
    lr_min_ratio=Float(0, 1, doc="linear decay floor of w"), inner_div=Int(1, doc="inner-step divisor"),
    max_inner=Int(1, doc="most PF-ODE steps inside one prediction"),
    normalize=Choice("frobenius", "trace", "none", "kalman", doc="step normalisation"),
    kalman_reg=Float(0, low_open=True, doc="ridge of normalize='kalman'"),
    localize=Any_("covariance localisation: None, a radius in grid cells or a taper tensor"),
    max_step=Float(0, low_open=True, optional=True, doc="trust region in units of sigma_i sqrt(d) (None: off)"),
    sigma_max=Float(0, low_open=True, doc="largest EDM noise level"),
    sigma_min=Float(0, low_open=True, doc="smallest EDM noise level"), rho=Float(0, low_open=True, doc="EDM grid rho"),
    batch=Int(1, doc="particles per network call"), return_particles=Bool("return every particle in info"),
    sigma_y=Float(0, doc="noise std of y (Kalman gain noise covariance / discrepancy principle; 0: noiseless)")),
                  requires="forward", nfe=lambda k, prior: budget(**k)["nfe_per_particle"],
                  summary="Ensemble Kalman diffusion guidance: derivative-free, forward evaluations of A only "
                          "(black boxes, PDE solvers)")
@torch.no_grad()
def enkg(prior, op, y, *, generators, steps=80, ensemble_size=512, updates=2, guidance=2.0, thr_start=0.05,
         thr_end=0.05, lr_min_ratio=0.0, inner_div=4, max_inner=20, normalize="frobenius", kalman_reg=1.0,
         localize=None, max_step=None, sigma_max=80.0, sigma_min=0.002, rho=7.0, batch=64, return_particles=True,
         sigma_y=0.0, progress=False) -> SamplerOutput:
    """EnKG on any pixel-space prior (through its VE view ``denoise(x, sigma)``) and any forward model.

    Args:
        steps: N outer PF-ODE Euler steps (80; one network call per particle each).
        ensemble_size: J particles per measurement (paper: 2048 for Navier–Stokes, 1024 for images). Any J ≥ 2.
        updates: K Kalman updates per guided step (2).
        guidance: ``w`` (2.0). ``lr_min_ratio = r > 0`` decays it linearly: ``w_i = w (1 - r)(N - i)/N + r``
            (as released: ``+ r``, not ``+ w r``).
        thr_start, thr_end: guided window ``thr_start N < i < N - int(thr_end N)`` (0.05 / 0.05: 71 of 80 steps).
        inner_div, max_inner: inner steps ``n_i = min(1 + (N - i) // inner_div, max_inner)`` (4 / 20 as in
            enkg-pytorch; InverseBench uses 8). Lower ``max_inner`` to trade prediction accuracy for network calls.
        normalize, kalman_reg: step normalisation (module docstring; ``"kalman"``: use w <= 1).
        localize: covariance localisation (an extension, not in the paper; helps small ensembles on spatially
            local problems): ``None`` (the paper's update), a cut-off radius in grid cells for operators with a
            ``localization(radius)`` method (e.g. ``NavierStokes2D``), or an ``(n_x, n_y)`` taper tensor
            (:mod:`.localization`). Not with ``normalize="kalman"``.
        max_step: trust region (an extension, not in the paper): ``None`` (default, no bound) or ``c > 0``; each
            particle's Kalman update at outer step ``i`` is scaled down to norm ``<= c sigma_i sqrt(d)`` (``d``
            entries of a particle in prior space, ``sigma_i sqrt(d)`` the norm of the noise it carries), keeping its
            direction. Stops a single particle from being thrown far outside the prior's range (where a stiff
            forward model such as a PDE solver slows down or diverges) by an update the denoiser cannot undo.
        sigma_max, sigma_min, rho: EDM grid (80, 0.002, 7), clamped to the noise levels the prior was trained on.
        batch: particles per network call (memory bound; no divisibility constraint).
        return_particles: put all particles in ``info["particles"]`` (``(B, J, ...)``, operator domain, CPU).
        sigma_y: noise std of ``y`` in the units the sampler sees (:func:`invsolve.solve` passes it; 0: noiseless,
            the paper's update). ``normalize="kalman"``: the gain includes the noise covariance ``sigma_y² I``;
            the scalar normalisations: a particle whose predicted measurement is already within the noise norm
            ``sigma_y sqrt(m)`` of ``y`` is not moved (:func:`kalman_increment`).
    Returns:
        ``x``: the ensemble mean ``(B, ...)`` in the operator domain. ``info``: ``spread`` (per-pixel ensemble
        standard deviation), ``particles``, ``misfit`` (per update: mean over particles of ``||G(x0_j) - y||``,
        ``(K * guided_steps, B)``), ``step_ratio`` (per update, the largest ``||dx_j|| / (sigma_i sqrt(d))`` over
        particles before any ``max_step`` bound, ``(K * guided_steps, B)``), ``capped`` (particles whose update
        ``max_step`` shortened, summed over the run, ``(B,)``), cost counters ``nfe_per_particle``,
        ``network_evaluations`` (items through the network), ``forward_calls`` (sequential batched calls of ``G``),
        ``forward_evaluations`` (items through ``G``), ``guided_steps`` and the settings. ``nfe`` is the sequential
        network calls per particle.
    """
    J, K = ensemble_size, updates
    B = y.shape[0]
    shape = (prior.channels,) + tuple(prior.image_size)
    taper = _taper(localize, op, normalize)
    s_max = min(float(sigma_max), prior.sigma_max)
    s_min = max(float(sigma_min), prior.sigma_min)
    sig = karras_sigmas(s_max, s_min, steps, rho)
    window = set(guided_steps(steps, thr_start, thr_end))
    op_j = op.repeat_interleave(J)  # operator for the (B * J) particle batch, item b's particles consecutive
    net = prior.chunked(batch)
    x = torch.cat([torch.randn((J,) + shape, generator=g, device=g.device) for g in generators]).to(y.device)
    x = x * sig[0]  # (B * J, C, H, W): particle j of item b at row b * J + j

    misfit, calls, ratios, capped = [], 0, [], torch.zeros(B, dtype=torch.long)
    for i in progress_bar(range(steps), progress, "EnKG", total=steps):
        if i in window:
            n_i = inner_steps(i, steps, inner_div, max_inner)
            w_i = guidance if lr_min_ratio == 0 else guidance * (1 - lr_min_ratio) * (steps - i) / steps + lr_min_ratio
            for _ in range(K):
                x0 = pf_ode_to_clean(net, x, sig[i], n_i, s_min, rho)
                _check_finite(x0, J, "the clean estimate PHI(x)", f"at outer step {i}")
                try:
                    g = op_j(prior.from_prior(x0))
                except InvsolveError as e:
                    e.add_note(f"(EnKG outer step {i}: batch row r is item r // {J}, particle r % {J})")
                    raise
                calls += 1
                _check_finite(g, J, "the forward-model output G(x0)", f"at outer step {i}")
                yj = y.repeat_interleave(J, 0)
                misfit.append(torch.linalg.vector_norm(_flat_real(g - yj), dim=1).reshape(B, J).mean(dim=1).cpu())
                dx = kalman_increment(x.reshape((B, J) + shape), g.reshape((B, J) + tuple(g.shape[1:])), y, w_i,
                                      normalize, kalman_reg, taper, sigma_y,
                                      None if sigma_y == 0 else torch.full((B,), sigma_y * math.sqrt(y[0].numel()),
                                                                          dtype=torch.float64))
                noise_norm = sig[i] * math.sqrt(math.prod(shape))
                ratio = torch.linalg.vector_norm(dx, dim=-1) / noise_norm  # (B, J), before the bound
                ratios.append(ratio.max(dim=1).values.float().cpu())
                if max_step is not None:
                    capped += (ratio > float(max_step)).sum(dim=1).cpu()
                    dx = cap_norm(dx, float(max_step) * noise_norm)
                x = (x.reshape(dx.shape).double() - dx).to(x.dtype).reshape(x.shape)
                _check_finite(x, J, "the updated particle", f"after the Kalman step at outer step {i}")
        x = pf_ode_step(x, net.denoise(x, sig[i]), sig[i], sig[i + 1])
    _check_finite(x, J, "the final particle", "at the end")
    particles = prior.from_prior(x).reshape((B, J) + tuple(prior.from_prior(x[:1]).shape[1:]))
    mean = particles.mean(dim=1)
    mag = particles.abs() if particles.is_complex() else particles
    nfe = prior.nfe
    info = {
        "spread": mag.std(dim=1).cpu(), "misfit": torch.stack(misfit) if misfit else torch.zeros(0, B),
        "step_ratio": torch.stack(ratios) if ratios else torch.zeros(0, B), "capped": capped,
        "ensemble_size": J, "nfe_per_particle": nfe, "network_evaluations": nfe * B * J,
        "forward_calls": calls, "forward_evaluations": calls * B * J, "guided_steps": len(window),
        "sigmas": [sig[0], sig[-2]],
    }
    if return_particles:
        info["particles"] = particles.cpu()
    return SamplerOutput(x=mean, info=info)


def _taper(localize, op, normalize):
    if localize is None:
        return None
    if normalize == "kalman":
        raise InvalidValueError("localize is not supported with normalize='kalman' (use 'trace' or 'frobenius')")
    if isinstance(localize, torch.Tensor):
        return localize
    if isinstance(localize, bool) or not isinstance(localize, (int, float)):
        raise InvalidValueError(f"localize must be None, a radius in grid cells or an (n_x, n_y) taper tensor, got "
                                f"{localize!r}")
    if not hasattr(op, "localization"):
        raise InvalidValueError(f"localize={localize!r} (a radius) needs an operator with a localization(radius) "
                                f"method, which {type(op).__name__} does not have; pass an (n_x, n_y) taper tensor "
                                "instead (invsolve.samplers.localization.periodic_grid_taper builds one for periodic "
                                "grids)")
    return op.localization(float(localize))


def budget(ensemble_size: int = 512, **knobs) -> dict:
    """Cost of one EnKG run with these knobs (defaults filled in) for one measurement, e.g. to match a baseline's
    budget: ``guided_steps``, sequential ``forward_calls``, ``nfe_per_particle`` and, over the ensemble,
    ``network_evaluations`` and ``forward_evaluations``."""
    k = {**signature_defaults(enkg), **knobs}
    gs = guided_steps(k["steps"], k["thr_start"], k["thr_end"])
    nfe = k["steps"] + k["updates"] * sum(inner_steps(i, k["steps"], k["inner_div"], k["max_inner"]) for i in gs)
    calls = k["updates"] * len(gs)
    return {"guided_steps": len(gs), "forward_calls": calls, "nfe_per_particle": nfe,
            "network_evaluations": nfe * ensemble_size, "forward_evaluations": calls * ensemble_size}


__all__ = ["enkg", "kalman_step", "kalman_increment", "cap_norm", "pf_ode_to_clean", "pf_ode_step", "karras_sigmas",
           "guided_steps", "inner_steps", "budget", "NonFiniteEnsembleError"]
