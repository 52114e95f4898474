"""DDS — Decomposed Diffusion Sampler (Chung, Lee & Ye, ICLR 2024).

Per step: one network call gives the Tweedie estimate ``x0_hat``; a data-consistency step (by default ``M``
conjugate-gradient iterations on a linear problem, warm-started at ``x0_hat``; :mod:`.consistency`) gives ``x0_c``
(no back-propagation through the network); ``x0_c`` is re-noised to the next timestep by mixing fresh noise with the
network's own ``eps``. ``dds-3d`` (:mod:`.dds3d`) is this loop with a volume step.

The default step is noise-aware (:class:`~.consistency.NoiseAwareCG`): the normal equations solved to a relative
tolerance for noiseless data, the MAP proximal form with ``gamma_t = Var[x0 | x_t] / sigma_y²`` for noisy data.
"""
from __future__ import annotations

import torch

from .._deprecated import moved
from ..errors import InvalidValueError
from .base import SamplerOutput, get_sampler, progress_bar, register_sampler, resolve_knobs
from .consistency import NoiseAwareCG
from .knobs import STEPS, Any_, Bool, Choice, Float, Int, Mapping
from .steps import clip_tweedie, ddim_grid, ddim_step, prior_noise, renoise


def dds_loop(prior, y, generators, grid, x, dc, *, eta=0.85, renoise_rule="reference", reference_last_step=True,
             clip=None, progress=False, desc="DDS"):
    """The DDS iteration over ``grid`` from ``x`` (prior space) with the data-consistency step ``dc(z0, t)``.

    Returns ``(operator-domain result, per-step residuals)`` (a residual per step where ``dc`` reports one).
    """
    residuals = []
    for t, t_next in progress_bar(grid, progress, desc, total=len(grid)):
        x0_hat, e = prior.tweedie(x, t)
        if clip is not None:
            x0_hat, e = clip_tweedie(x, x0_hat, prior.alpha_bar(t).to(x.dtype), clip)
        u = dc(prior.from_prior(x0_hat), t)
        if isinstance(u, tuple):
            u, r = u
            residuals.append(r)
        x0c = prior.to_prior(u)
        ab_n = prior.alpha_bar(t_next).to(x.dtype)
        if t_next < 0 or (t_next == 0 and reference_last_step):
            x = x0c
            continue
        n = prior_noise(prior, generators, y.device)
        if renoise_rule == "reference":
            x = renoise(x0c, e, n, ab_n, eta)
        else:
            x = ddim_step(x0c, e, prior.alpha_bar(t).to(x.dtype), ab_n, eta, n)
    return prior.from_prior(x), residuals


def dds_grid(prior, steps: int, init=None, t_start: float = 1.0):
    """The time grid DDS runs: all ``steps`` pairs, or with a warm start the tail from ``t0 <= t_start * T``."""
    grid = ddim_grid(prior, steps)
    if init is None:
        return grid
    return [(t, t_next) for t, t_next in grid if t <= t_start * (prior.num_train_timesteps - 1)]


def _warm_start(prior, op, y, n, t0, init, init_knobs):
    """``sqrt(abar_t0) x_init + sqrt(1 - abar_t0) n`` in prior space, ``x_init`` from the classical sampler ``init``."""
    spec = get_sampler(init)
    if spec.needs_prior:
        raise InvalidValueError(f"sampler 'dds': init={init!r} is not accepted; expected the name of a classical "
                                f"sampler (no prior), e.g. 'wiener', 'cg', 'pinv'")
    x_init = spec.fn(None, op, y, generators=None, **resolve_knobs(spec, dict(init_knobs or {}))).x
    ab = prior.alpha_bar(t0).to(n.dtype)
    return ab.sqrt() * prior.to_prior(x_init) + (1 - ab).sqrt() * n


CG_ITERS = 400  # registered defaults of the data-consistency CG (cap and relative tolerance), chosen on
CG_TOL = 1e-4  # validation images (docs/samplers.md)


@register_sampler("dds", knobs=dict(
    steps=STEPS, eta=Float(0, 1, doc="fraction (in std) of fresh noise when re-noising"),
    sigma_y=Float(0, optional=True, doc="noise std of y in the sampler's units (None: estimated from y, else 0)"),
    dc=Choice("auto", "prox", "normal", callable_ok=True,
              doc="data consistency: 'auto' picks it from sigma_y (normal equations when noiseless, else the "
                  "proximal form with gamma_t = r_t²/sigma_y²), or a step (z0, t) -> u"),
    gamma=Float(0, low_open=True, also=("auto",), doc="proximal weight: (I + gamma AᴴA) u = x0_hat + gamma Aᴴy; "
                "'auto': gamma_t = Var[x0|x_t] / sigma_y² per step"),
    cg_iters=Int(1, doc="most CG iterations per step (M)"),
    cg_tol=Float(0, low_open=True, optional=True, doc="relative CG tolerance ||r_k|| <= tol ||r_0|| per sample "
                 "(None: exactly cg_iters iterations)"),
    cg_precision=Choice("double", "single", doc="CG arithmetic: float64 (single precision loses conjugacy within a "
                        "few hundred iterations on ill-conditioned systems) or the data's float32"),
    renoise=Choice("reference", "ddim", doc="re-noising rule: the released code's or textbook DDIM-eta"),
    reproduce_reference_rhs=Bool("reproduce the released code's complex right-hand side quirk"),
    reference_complex_inner_product=Bool("reproduce the released code's unconjugated CG inner product"),
    reference_last_step=Bool("jump straight to x0_c at t_next = 0, as released"),
    clip=Float(0, low_open=True, optional=True, doc="clamp x0_hat to [-clip, clip] in prior space (None: off)"),
    init=Any_("name of a classical sampler to warm-start from (None: pure noise)"),
    init_knobs=Mapping("options of the init sampler"),
    t_start=Float(0, 1, low_open=True, doc="warm start: fraction of the time grid that is run"),
    cg_graph=Bool("replay the fixed-iteration CG (cg_tol=None) as a captured CUDA graph (CUDA only; same result)")),
                  summary="Decomposed Diffusion Sampler: Tweedie + a few CG steps per step, no network gradients",
                  nfe=lambda k, prior: len(dds_grid(prior, k["steps"], k["init"], k["t_start"])))
@torch.no_grad()
def dds(prior, op, y, *, generators, steps=50, eta=0.85, sigma_y=None, dc="auto", gamma="auto", cg_iters=CG_ITERS,
        cg_tol=CG_TOL, cg_precision="double", renoise="reference",
        reproduce_reference_rhs=False, reference_complex_inner_product=False, reference_last_step=True,
        clip=None, init=None, init_knobs=None, t_start=1.0, cg_graph=False, progress=False) -> SamplerOutput:
    """DDS on a pixel-space VP prior.

    Args:
        steps: S sampling steps on the grid ``tau_k = k * (T // S)`` (S network calls).
        eta: stochasticity. ``renoise="reference"``: fraction (in std) of the ``sqrt(1 - abar_next)`` noise budget
            given to fresh noise, the rest reuses the network's ``eps`` (released code, default 0.85).
            ``renoise="ddim"``: textbook DDIM-η rule.
        sigma_y: noise std of ``y`` in the units the sampler sees (after ``solve``'s data scaling for
            ``mri-brain``; :func:`invsolve.solve` fills it in from its ``sigma_y`` argument, a config's
            ``problem.noise_sigma`` or an estimate). ``None``: estimated from ``y`` where an estimator exists
            (:mod:`invsolve.noise_level`), else taken as 0 (noiseless) with a warning.
        dc, gamma: the data-consistency step, ``(AᴴA + lam_t I) u = Aᴴy + lam_t x0_hat`` by CG warm-started at
            ``x0_hat`` (:func:`~.consistency.noise_aware_weight`). Defaults ``dc="auto"``, ``gamma="auto"``, the
            noise-aware rule: noiseless ``y`` -> the normal equations ``AᴴA u = Aᴴy`` (``lam_t = 0``); noisy ``y``
            -> the proximal form ``(I + gamma_t AᴴA) u = x0_hat + gamma_t Aᴴy`` with ``gamma_t = r_t² / s²``, the
            posterior variance ``r_t² = unit² (1 - abar_t)`` of ``x0`` given ``x_t`` over the noise variance ``s²``
            per real component. A numeric ``gamma`` fixes it (the released DDS: ``dc="prox", gamma=1.0,
            cg_iters=5, cg_tol=None``); ``dc="normal"`` forces the normal equations. ``dc`` may also be a step
            ``dc(z0, t) -> u`` (or ``(u, residual)``) on the operator-domain Tweedie estimate (:mod:`.consistency`);
            the CG options and the two reference switches then do not apply.
        cg_iters: at most this many CG iterations per step and sample (M; default 400).
        cg_tol: stop a sample's CG once its residual is ``cg_tol`` times the initial one (default 1e-4);
            ``None`` runs exactly ``cg_iters`` iterations with no host synchronisation.
        cg_precision: ``"double"`` (default) runs the CG in float64 / complex128 (the network stays in float32);
            in float32, 400 iterations on 16-view CT lost conjugacy and the data residual grew again;
            ``"single"`` keeps float32.
        reproduce_reference_rhs / reference_complex_inner_product: switches that reproduce two quirks of the
            released code for complex MRI (the right-hand side ``z0 + γ(1 + i)Aᴴy`` and CG's unconjugated inner
            product); off by default (correct math).
        reference_last_step: as released, jump straight to ``x0_c`` at ``t_next = 0`` (no renoising to t = 0).
        clip: ``None`` (released algorithm: no clipping) or ``c > 0``: clamp ``x0_hat`` to ``[-c, c]`` in prior
            space (the data range is ``[-1, 1]``) before data consistency, and take the ``eps`` reused for
            renoising from the clipped estimate, ``(x - sqrt(abar) x0_hat) / sqrt(1 - abar)``, as ADM's
            ``clip_denoised`` DDIM does. Real images only.
        init / init_knobs / t_start: warm start ("come closer, diffuse faster", Chung, Sim & Ye, CVPR 2022).
            ``init`` names a classical sampler (``"wiener"``, ``"cg"``, ``"pinv"``, ``"fbp"``, ...; run with
            ``init_knobs``) whose reconstruction ``x_init`` is noised to the first grid time ``t0 <= t_start * T``,
            ``x_t0 = sqrt(abar_t0) x_init + sqrt(1 - abar_t0) n``; only the grid steps from ``t0`` down are run
            (about ``t_start * steps`` network calls). ``init=None`` (default) starts from pure noise at ``T``.
        cg_graph: capture the data-consistency CG once as a CUDA graph and replay it at every step whose system is
            the captured one (:class:`~invsolve.linalg.GraphedCG`; CUDA only, fixed iterations ``cg_tol=None``, same
            result, saves kernel-launch time). The system is the same at every step when ``lam_t`` is constant:
            noiseless data, ``dc="normal"`` or a numeric ``gamma``; other steps run the plain CG.
    Returns:
        operator-domain reconstruction; ``info``: ``cg_residual`` (final CG residual per step, ``(S, B)``) and for
        the built-in step ``cg_iterations`` (``(S, B)``), ``lam`` (``lam_t`` per step), ``sigma_y`` and
        ``sigma_y_source``.

    Defaults chosen on validation images only (MNI152 guard slices z = 94, 113 at 4x / 8x, noiseless and
    sigma_y = 0.02; CT validation phantoms, 16 views): see docs/samplers.md and ``benchmarks/tune_dds_defaults.py``.
    """
    if init is None and (t_start != 1 or init_knobs):
        raise InvalidValueError("sampler 'dds': t_start < 1 and init_knobs need init= (the name of a classical "
                                "sampler to start from)")
    if cg_graph and (y.device.type != "cuda" or cg_tol is not None or callable(dc)):
        why = (f"the data is on {y.device}" if y.device.type != "cuda" else
               "it needs a fixed iteration count (cg_tol=None)" if cg_tol is not None else
               "dc is a user-supplied step")
        raise InvalidValueError(f"sampler 'dds': cg_graph=True replays a captured CUDA graph of the built-in CG, but "
                                f"{why}; leave cg_graph=False")
    info = {}
    if not callable(dc):
        sigma_y, source = _sigma_for_dds(op, y, sigma_y, dc, gamma)
        dc = NoiseAwareCG(op, y, prior, sigma_y=sigma_y, dc=dc, gamma=gamma, cg_iters=cg_iters, cg_tol=cg_tol,
                          precision=cg_precision, reproduce_reference_rhs=reproduce_reference_rhs,
                          reference_complex_inner_product=reference_complex_inner_product, graph=cg_graph)
        info.update(sigma_y=sigma_y, sigma_y_source=source)
    x = prior_noise(prior, generators, y.device)
    grid = dds_grid(prior, steps, init, t_start)  # with a warm start the grid's tail (never empty: it ends at 0)
    if init is not None:
        x = _warm_start(prior, op, y, x, grid[0][0], init, init_knobs)
    out, residuals = dds_loop(prior, y, generators, grid, x, dc, eta=eta, renoise_rule=renoise,
                              reference_last_step=reference_last_step, clip=clip, progress=progress)
    if residuals:
        info["cg_residual"] = torch.stack(residuals).cpu()
    if isinstance(dc, NoiseAwareCG):
        info.update(cg_iterations=torch.stack(dc.iterations).cpu(), lam=dc.lams)
    return SamplerOutput(x=out, info=info)


def _sigma_for_dds(op, y, sigma_y, dc, gamma):
    """``(sigma_y, where it came from)``; ``None`` is estimated from ``y`` only when the rule needs it."""
    if sigma_y is not None:
        return float(sigma_y), "option"
    if dc == "normal" or gamma != "auto":
        return 0.0, "unused"
    from ..noise_level import resolve

    level = resolve(op, y, None, sampler="dds", sampler_default=None)
    if level.sigma is None:
        return 0.0, "unknown (taken as noiseless)"
    return level.sigma, f"estimated ({level.method})"  # (B,): one level per sample


__getattr__ = moved(__name__, {"data_consistency": "invsolve.samplers.consistency:cg_solve"})  # renamed: see metrics
