"""DDS — Decomposed Diffusion Sampler (Chung, Lee & Ye, ICLR 2024), ALGORITHMS.md §1.

Per step: one network call gives the Tweedie estimate ``x0_hat``; ``M`` conjugate-gradient iterations on a
linear data-consistency problem, warm-started at ``x0_hat``, give ``x0_c`` (no back-propagation through the
network); ``x0_c`` is re-noised to the next timestep by mixing fresh noise with the network's own ``eps``.
"""
from __future__ import annotations

import torch

from ..linalg import cg
from .base import SamplerOutput, bshape, progress_bar, randn, register_sampler
from .knobs import STEPS, Any_, Bool, Choice, Float, Int, Mapping
from .unconditional import ddim_grid

CG_ITERS = 400  # registered defaults of the data-consistency CG (cap and relative tolerance), chosen on
CG_TOL = 1e-4  # validation images (docs/samplers.md)


def data_consistency(op, y, z0, *, mode: str = "prox", gamma: float = 1.0, cg_iters: int = 5,
                     reproduce_reference_rhs: bool = False, reference_complex_inner_product: bool = False):
    """DDS data-consistency step in the operator domain, warm-started at the Tweedie estimate ``z0``.

    ``mode="prox"``: ``(I + γ AᴴA) u = z0 + γ Aᴴy`` (``u = argmin γ/2 ||y - Au||² + 1/2 ||u - z0||²``);
    ``mode="normal"``: ``AᴴA u = Aᴴy`` (noiseless normal equations; ``z0`` only as the warm start).
    ``reproduce_reference_rhs`` uses the released code's complex right-hand side ``z0 + γ(1 + i) Aᴴy``.
    Returns the :class:`~invsolve.linalg.CGResult`.
    """
    AHy = op.adjoint(y)
    if mode == "prox":
        if reproduce_reference_rhs and AHy.is_complex():
            AHy = AHy * (1 + 1j)
        b = z0 + gamma * AHy

        def K(v):
            return v + gamma * op.normal(v)
    elif mode == "normal":
        b, K = AHy, op.normal
    else:
        raise ValueError(f"dc must be 'prox' or 'normal', got {mode!r}")
    return cg(K, b, z0, max_iter=cg_iters, reference_complex_inner_product=reference_complex_inner_product)


def choose_data_consistency(prior, t: int, y: torch.Tensor, *, sigma_y, dc: str = "auto", gamma="auto"):
    """The weight ``lam_t`` of DDS's data-consistency system at timestep ``t`` (the noise-aware rule).

    DDS solves ``(AᴴA + lam_t I) u = Aᴴy + lam_t x0_hat`` by CG warm-started at ``x0_hat``:

    * ``lam_t = 0`` is the noiseless normal equations ``AᴴA u = Aᴴy`` (``x0_hat`` only as the warm start: where ``A``
      has a null space CG keeps ``x0_hat``'s component there);
    * ``lam_t = 1 / gamma`` is the released proximal form ``(I + gamma AᴴA) u = x0_hat + gamma Aᴴy`` (the same
      system divided by ``gamma``, so CG takes the same iterates);
    * the noise-aware weight is the MAP estimate of ``x0`` given ``x_t`` and ``y``. With the Gaussian model
      ``x0 | x_t ~ N(x0_hat, r_t² I)`` and ``y = A x0 + n``, the posterior mode minimises
      ``||y - A u||² / (2 s²) + ||u - x0_hat||² / (2 r_t²)`` per real component, i.e. ``lam_t = s² / r_t²``
      (``gamma_t = r_t² / s²``), where ``s² = sigma_y²`` for real ``y`` and ``sigma_y² / 2`` for complex ``y``
      (circular noise of total variance ``sigma_y²``), and ``r_t² = unit² (1 - abar_t)`` is ``Var[x0 | x_t]`` for a
      unit-variance Gaussian prior-space component (``s_t² / (1 + s_t²)`` with ``s_t² = (1 - abar_t) / abar_t``),
      ``unit`` converting prior units to the operator's. For a Gaussian prior this is the exact posterior mean
      ``E[x0 | x_t, y]`` (``tests/test_noise_level.py``). Early steps (``r_t`` large) trust the data, late steps
      the prior. Checked on the validation slices (4x MRI, ``sigma_y = 0.02``): 26.92 dB as derived, 22.26 / 27.19
      dB with ``lam_t`` divided / multiplied by 4.

    Args:
        sigma_y: noise std of ``y`` in the units the sampler sees (``>= 0``): a float, or ``(B,)`` per sample.
        dc: ``"auto"`` (the rule: ``lam_t = s² / r_t²``, which is 0 for noiseless data), ``"prox"`` (the same, or
            ``1 / gamma`` for a numeric ``gamma``) or ``"normal"`` (0).
        gamma: ``"auto"`` or a fixed proximal weight ``> 0`` (the released code: 1.0).
    Returns:
        ``lam_t >= 0``: a float, or ``(B,)`` float64 for per-sample ``sigma_y``.
    """
    from .ddnm import unit

    if dc == "normal":
        return 0.0
    if gamma != "auto":
        return 1.0 / float(gamma)
    if not isinstance(sigma_y, torch.Tensor) and sigma_y == 0:
        return 0.0
    s2 = sigma_y**2 / (2 if y.is_complex() else 1)
    r2 = unit(prior) ** 2 * (1 - float(prior.alpha_bar(t)))
    return s2 / r2


def solve_data_consistency(op, AHy, z0, lam: float, *, cg_iters: int, cg_tol, reference_complex_inner_product=False,
                           precision: str = "single"):
    """CG on ``(AᴴA + lam I) u = Aᴴy + lam z0`` warm-started at ``z0`` (per sample, at most ``cg_iters`` iterations,
    stopping once the residual is ``cg_tol`` times the initial one, ``||r_k|| <= cg_tol ||r_0||``, when ``cg_tol`` is
    set; then the iterate with the smallest residual is returned and a sample whose residual grows past 10 times
    its best stops: on 16-view CT the last steps start almost consistent, never reach the tolerance, and 400
    iterations broke CG down (the residual grew 40-fold and the image was lost)). ``precision="double"`` runs the
    iteration in float64 / complex128 and returns ``x`` in ``z0``'s dtype. Returns the
    :class:`~invsolve.linalg.CGResult`."""
    dtype = z0.dtype
    if precision == "double" and dtype in (torch.float32, torch.complex64):
        wide = torch.complex128 if z0.is_complex() else torch.float64
        res = solve_data_consistency(op, AHy.to(wide), z0.to(wide), lam, cg_iters=cg_iters, cg_tol=cg_tol,
                                     reference_complex_inner_product=reference_complex_inner_product)
        res.x = res.x.to(dtype)
        return res
    if isinstance(lam, torch.Tensor):  # per sample
        lam = bshape(lam.to(device=z0.device, dtype=z0.real.dtype), z0) if bool((lam > 0).any()) else 0.0
    if isinstance(lam, torch.Tensor) or lam:
        b = AHy + lam * z0

        def K(v):
            return op.normal(v) + lam * v
    else:
        b, K = AHy, op.normal
    return cg(K, b, z0, max_iter=cg_iters, tol=cg_tol, tol_reference="initial", keep_best=cg_tol is not None,
              reference_complex_inner_product=reference_complex_inner_product)


def _warm_start(prior, op, y, n, t0, init, init_knobs):
    """``sqrt(abar_t0) x_init + sqrt(1 - abar_t0) n`` in prior space, ``x_init`` from the classical sampler ``init``."""
    from .base import get_sampler, resolve_knobs

    spec = get_sampler(init)
    if spec.needs_prior:
        raise ValueError(f"init must name a classical sampler (no prior), got {init!r}")
    x_init = spec.fn(None, op, y, generators=None, **resolve_knobs(spec, dict(init_knobs or {}))).x
    ab = prior.alpha_bar(t0).to(n.dtype)
    return ab.sqrt() * prior.to_prior(x_init) + (1 - ab).sqrt() * n


@register_sampler("dds", knobs=dict(
    steps=STEPS, eta=Float(0, 1, doc="fraction (in std) of fresh noise when re-noising"),
    sigma_y=Float(0, optional=True, doc="noise std of y in the sampler's units (None: estimated from y, else 0)"),
    dc=Choice("auto", "prox", "normal", doc="data consistency: 'auto' picks it from sigma_y (normal equations "
              "when noiseless, else the proximal form with gamma_t = r_t²/sigma_y²)"),
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
    t_start=Float(0, 1, low_open=True, doc="warm start: fraction of the time grid that is run")),
                  summary="Decomposed Diffusion Sampler: Tweedie + a few CG steps per step, no network gradients",
                  neutral=("clip", "init", "init_knobs", "t_start"), version=2)
@torch.no_grad()
def dds(prior, op, y, *, generators, steps=50, eta=0.85, sigma_y=None, dc="auto", gamma="auto", cg_iters=CG_ITERS,
        cg_tol=CG_TOL, cg_precision="double", renoise="reference",
        reproduce_reference_rhs=False, reference_complex_inner_product=False, reference_last_step=True,
        clip=None, init=None, init_knobs=None, t_start=1.0, progress=False) -> SamplerOutput:
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
            ``x0_hat`` (:func:`choose_data_consistency`). Defaults ``dc="auto"``, ``gamma="auto"``, the
            noise-aware rule: noiseless ``y`` -> the normal equations ``AᴴA u = Aᴴy`` (``lam_t = 0``); noisy ``y``
            -> the proximal form ``(I + gamma_t AᴴA) u = x0_hat + gamma_t Aᴴy`` with ``gamma_t = r_t² / s²``, the
            posterior variance ``r_t² = unit² (1 - abar_t)`` of ``x0`` given ``x_t`` over the noise variance ``s²``
            per real component. A numeric ``gamma`` fixes it (the released DDS: ``dc="prox", gamma=1.0,
            cg_iters=5, cg_tol=None``); ``dc="normal"`` forces the normal equations.
        cg_iters: at most this many CG iterations per step and sample (M; default 400).
        cg_tol: stop a sample's CG once its residual is ``cg_tol`` times the initial one (default 1e-4);
            ``None`` runs exactly ``cg_iters`` iterations with no host synchronisation. Noiseless data want the
            normal equations solved well: on the validation slices (4x MRI, 50 steps) 100 / 200 / 400 fixed
            iterations gave 32.9 / 34.5 / 36.5 dB and the default 35.4 dB at 111 iterations on average.
        cg_precision: ``"double"`` (default) runs the CG in float64 / complex128 (the network stays in float32):
            in float32, 400 iterations on 16-view CT lost conjugacy and the data residual grew again (a validation
            phantom: 0.019 at 200, 0.036 at 400 iterations; float64: 0.015, 0.006); ``"single"`` keeps float32.
        reproduce_reference_rhs / reference_complex_inner_product: switches that reproduce two quirks of the
            released code for complex MRI (ALGORITHMS.md §1.3–1.4); off by default (correct math).
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
    Returns:
        operator-domain reconstruction; ``info``: ``cg_residual`` (final CG residual per step, ``(S, B)``),
        ``cg_iterations`` (``(S, B)``), ``lam`` (``lam_t`` per step), ``sigma_y`` and ``sigma_y_source``.

    Defaults chosen on validation images only (MNI152 guard slices z = 94, 113 at 4x / 8x, noiseless and
    sigma_y = 0.02; CT validation phantoms, 16 views): see docs/samplers.md.
    """
    if renoise not in ("reference", "ddim"):
        raise ValueError(f"renoise must be 'reference' or 'ddim', got {renoise!r}")
    if not 0 <= eta <= 1:
        raise ValueError(f"eta must lie in [0, 1], got {eta}")
    if clip is not None and not clip > 0:
        raise ValueError(f"clip must be None or a positive number, got {clip!r}")
    if not 0 < t_start <= 1:
        raise ValueError(f"t_start must lie in (0, 1], got {t_start}")
    if init is None and (t_start != 1 or init_knobs):
        raise ValueError("t_start < 1 and init_knobs need init= (the name of a classical sampler to start from)")
    nfe0 = prior.nfe
    shape = (prior.channels,) + tuple(prior.image_size)
    x = randn(shape, generators, y.device)
    grid = ddim_grid(prior, steps)
    if init is not None:  # the grid's tail from t0 <= t_start * T (never empty: it ends at t = 0)
        grid = [(t, t_next) for t, t_next in grid if t <= t_start * (prior.num_train_timesteps - 1)]
        x = _warm_start(prior, op, y, x, grid[0][0], init, init_knobs)
    sigma_y, sigma_src = _sigma_for_dds(op, y, sigma_y, dc, gamma)
    AHy = op.adjoint(y)
    residuals, iterations, lams = [], [], []
    for t, t_next in progress_bar(grid, progress, "DDS", total=len(grid)):
        x0_hat, e = prior.tweedie(x, t)
        if clip is not None:
            ab_t = prior.alpha_bar(t).to(x.dtype)
            x0_hat = x0_hat.clamp(-clip, clip)
            e = (x - ab_t.sqrt() * x0_hat) / (1 - ab_t).sqrt()
        lam = choose_data_consistency(prior, t, y, sigma_y=sigma_y, dc=dc, gamma=gamma)
        if reproduce_reference_rhs and not isinstance(lam, torch.Tensor):
            res = data_consistency(op, y, prior.from_prior(x0_hat), mode="prox" if lam else "normal",
                                   gamma=1 / lam if lam else 1.0, cg_iters=cg_iters, reproduce_reference_rhs=True,
                                   reference_complex_inner_product=reference_complex_inner_product)
        else:
            res = solve_data_consistency(op, AHy, prior.from_prior(x0_hat), lam, cg_iters=cg_iters, cg_tol=cg_tol,
                                         reference_complex_inner_product=reference_complex_inner_product,
                                         precision=cg_precision)
        residuals.append(res.residual_norm)
        iterations.append(res.iterations)
        lams.append(lam.tolist() if isinstance(lam, torch.Tensor) else lam)
        x0c = prior.to_prior(res.x)
        ab_n = prior.alpha_bar(t_next).to(x.dtype)
        if t_next < 0 or (t_next == 0 and reference_last_step):
            x = x0c
            continue
        n = randn(shape, generators, y.device)
        if renoise == "reference":
            x = ab_n.sqrt() * x0c + (1 - ab_n).sqrt() * (eta * n + (1 - eta**2) ** 0.5 * e)
        else:
            ab_t = prior.alpha_bar(t).to(x.dtype)
            sig = eta * ((1 - ab_n) / (1 - ab_t) * (1 - ab_t / ab_n)).sqrt()
            x = ab_n.sqrt() * x0c + (1 - ab_n - sig**2).clamp_min(0).sqrt() * e + sig * n
    return SamplerOutput(x=prior.from_prior(x), nfe=prior.nfe - nfe0,
                         info={"cg_residual": torch.stack(residuals).cpu(),
                               "cg_iterations": torch.stack(iterations).cpu(), "lam": lams, "sigma_y": sigma_y,
                               "sigma_y_source": sigma_src})


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
