"""DDS — Decomposed Diffusion Sampler (Chung, Lee & Ye, ICLR 2024), ALGORITHMS.md §1.

Per step: one network call gives the Tweedie estimate ``x0_hat``; ``M`` conjugate-gradient iterations on a
linear data-consistency problem, warm-started at ``x0_hat``, give ``x0_c`` (no back-propagation through the
network); ``x0_c`` is re-noised to the next timestep by mixing fresh noise with the network's own ``eps``.
"""
from __future__ import annotations

import torch

from ..errors import InvalidValueError
from ..linalg import GraphedCG, cg
from .base import SamplerOutput, progress_bar, randn, register_sampler
from .knobs import STEPS, Any_, Bool, Choice, Float, Int, Mapping
from .unconditional import ddim_grid


def data_consistency(op, y, z0, *, mode: str = "prox", gamma: float = 1.0, cg_iters: int = 5,
                     reproduce_reference_rhs: bool = False, reference_complex_inner_product: bool = False,
                     graph=None):
    """DDS data-consistency step in the operator domain, warm-started at the Tweedie estimate ``z0``.

    ``mode="prox"``: ``(I + γ AᴴA) u = z0 + γ Aᴴy`` (``u = argmin γ/2 ||y - Au||² + 1/2 ||u - z0||²``);
    ``mode="normal"``: ``AᴴA u = Aᴴy`` (noiseless normal equations; ``z0`` only as the warm start).
    ``reproduce_reference_rhs`` uses the released code's complex right-hand side ``z0 + γ(1 + i) Aᴴy``.
    ``graph``: a :class:`~invsolve.linalg.GraphedCG` that replays the solve as a CUDA graph (same result).
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
    if graph is not None:
        return graph(K, b, z0)
    return cg(K, b, z0, max_iter=cg_iters, reference_complex_inner_product=reference_complex_inner_product)


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
    cg_iters=Int(1, doc="CG iterations per step (M)"),
    gamma=Float(0, low_open=True, doc="proximal weight of dc='prox': (I + gamma AᴴA) u = x0_hat + gamma Aᴴy"),
    dc=Choice("prox", "normal", doc="data consistency: proximal form or the noiseless normal equations"),
    renoise=Choice("reference", "ddim", doc="re-noising rule: the released code's or textbook DDIM-eta"),
    reproduce_reference_rhs=Bool("reproduce the released code's complex right-hand side quirk"),
    reference_complex_inner_product=Bool("reproduce the released code's unconjugated CG inner product"),
    reference_last_step=Bool("jump straight to x0_c at t_next = 0, as released"),
    clip=Float(0, low_open=True, optional=True, doc="clamp x0_hat to [-clip, clip] in prior space (None: off)"),
    init=Any_("name of a classical sampler to warm-start from (None: pure noise)"),
    init_knobs=Mapping("options of the init sampler"),
    t_start=Float(0, 1, low_open=True, doc="warm start: fraction of the time grid that is run"),
    cg_graph=Bool("replay the fixed-iteration CG as a captured CUDA graph (CUDA only; same result)")),
                  summary="Decomposed Diffusion Sampler: Tweedie + a few CG steps per step, no network gradients",
                  neutral=("clip", "init", "init_knobs", "t_start", "cg_graph"))
@torch.no_grad()
def dds(prior, op, y, *, generators, steps=50, eta=0.85, cg_iters=5, gamma=1.0, dc="prox", renoise="reference",
        reproduce_reference_rhs=False, reference_complex_inner_product=False, reference_last_step=True,
        clip=None, init=None, init_knobs=None, t_start=1.0, cg_graph=False, progress=False) -> SamplerOutput:
    """DDS on a pixel-space VP prior.

    Args:
        steps: S sampling steps on the grid ``tau_k = k * (T // S)`` (S network calls).
        eta: stochasticity. ``renoise="reference"``: fraction (in std) of the ``sqrt(1 - abar_next)`` noise budget
            given to fresh noise, the rest reuses the network's ``eps`` (released code, default 0.85).
            ``renoise="ddim"``: textbook DDIM-η rule.
        cg_iters: M conjugate-gradient iterations per step (5).
        gamma: proximal weight of ``dc="prox"``.
        dc: ``"prox"`` (``(I + γAᴴA) u = z0 + γAᴴy``) or ``"normal"`` (``AᴴA u = Aᴴy``).
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
        cg_graph: capture the data-consistency CG once as a CUDA graph and replay it every step
            (:class:`~invsolve.linalg.GraphedCG`; CUDA only, same result, saves kernel-launch time).
    Returns:
        operator-domain reconstruction; ``info["cg_residual"]`` holds the final CG residual per step ``(S, B)``.
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
    if cg_graph and y.device.type != "cuda":
        raise InvalidValueError(f"sampler 'dds': cg_graph=True replays CUDA graphs, but the data is on {y.device}; "
                                f"run on a CUDA device or leave cg_graph=False")
    graph = GraphedCG(cg_iters, reference_complex_inner_product) if cg_graph else None
    nfe0 = prior.nfe
    shape = (prior.channels,) + tuple(prior.image_size)
    x = randn(shape, generators, y.device)
    grid = ddim_grid(prior, steps)
    if init is not None:  # the grid's tail from t0 <= t_start * T (never empty: it ends at t = 0)
        grid = [(t, t_next) for t, t_next in grid if t <= t_start * (prior.num_train_timesteps - 1)]
        x = _warm_start(prior, op, y, x, grid[0][0], init, init_knobs)
    residuals = []
    for t, t_next in progress_bar(grid, progress, "DDS", total=len(grid)):
        x0_hat, e = prior.tweedie(x, t)
        if clip is not None:
            ab_t = prior.alpha_bar(t).to(x.dtype)
            x0_hat = x0_hat.clamp(-clip, clip)
            e = (x - ab_t.sqrt() * x0_hat) / (1 - ab_t).sqrt()
        res = data_consistency(op, y, prior.from_prior(x0_hat), mode=dc, gamma=gamma, cg_iters=cg_iters,
                               reproduce_reference_rhs=reproduce_reference_rhs,
                               reference_complex_inner_product=reference_complex_inner_product, graph=graph)
        residuals.append(res.residual_norm)
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
                         info={"cg_residual": torch.stack(residuals).cpu()})
