"""Data-consistency steps of DDS: the Tweedie estimate ``z0`` (operator domain) -> a measurement-consistent ``u``.

A step is a callable ``step(z0, t) -> u`` or ``-> (u, residual)`` (``residual``: the final CG residual norm, kept in
``info["cg_residual"]``), called once per diffusion step with the timestep ``t``; it may keep state across steps.
``dds`` builds :func:`cg_step` (2D: proximal or normal equations, a few CG iterations warm-started at ``z0``),
``dds-3d`` builds :class:`TVzADMM` (a volume: one ADMM iteration with total variation along the slices), and a user
can pass any such callable as ``dc=``.

Volume step (``dds-3d``; the batch ``(Z, ...)`` is one volume in slice order)::

    b  = Aᵀy / L + ρ D_zᵀ(d - w)  [+ z0 / γ]
    u  = CG(AᵀA / L + ρ D_zᵀD_z  [+ I / γ],  b,  start = z0,  M iterations)
    d  = soft(D_z u + w, λ / ρ);    w = w + D_z u - d          (d, w zero once, kept across diffusion steps)

``D_z`` is the circular forward difference along the slices, ``(D_z x)_k = x_{k+1} - x_k``, and
``(D_zᵀ v)_k = v_{k-1} - v_k`` its exact adjoint; ``L`` normalises the data term (``||A||²`` or 1).
"""
from __future__ import annotations

from typing import Optional

import torch

from ..linalg import cg


def cg_solve(op, y, z0, *, mode: str = "prox", gamma: float = 1.0, cg_iters: int = 5,
             reproduce_reference_rhs: bool = False, reference_complex_inner_product: bool = False, AHy=None,
             graph=None):
    """DDS's data-consistency solve in the operator domain, warm-started at the Tweedie estimate ``z0``.

    ``mode="prox"``: ``(I + γ AᴴA) u = z0 + γ Aᴴy`` (``u = argmin γ/2 ||y - Au||² + 1/2 ||u - z0||²``);
    ``mode="normal"``: ``AᴴA u = Aᴴy`` (noiseless normal equations; ``z0`` only as the warm start).
    ``reproduce_reference_rhs`` uses the released code's complex right-hand side ``z0 + γ(1 + i) Aᴴy``;
    ``AHy``: ``Aᴴy`` if already computed; ``graph``: a :class:`~invsolve.linalg.GraphedCG` replaying this system
    (same result). Returns the :class:`~invsolve.linalg.CGResult`.
    """
    AHy = op.adjoint(y) if AHy is None else AHy
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


def cg_step(op, y, **options):
    """The 2D DDS step ``z0 -> (u, residual)`` of :func:`cg_solve` with ``options`` (``Aᴴy`` computed once)."""
    AHy = op.adjoint(y)

    def step(z0, t):
        res = cg_solve(op, y, z0, AHy=AHy, **options)
        return res.x, res.residual_norm

    return step


def dz(x: torch.Tensor) -> torch.Tensor:
    """Circular forward difference along axis 0 (slices): ``(D_z x)_k = x_{k+1} - x_k``."""
    return torch.roll(x, -1, dims=0) - x


def dz_adjoint(v: torch.Tensor) -> torch.Tensor:
    """Exact adjoint of :func:`dz`: ``(D_zᵀ v)_k = v_{k-1} - v_k``."""
    return torch.roll(v, 1, dims=0) - v


def soft_threshold(v: torch.Tensor, k: float) -> torch.Tensor:
    """``sign(v) max(|v| - k, 0)``."""
    return torch.sign(v) * (v.abs() - k).clamp_min(0)


def tv_z_consistency(op, AHy, z0, d=None, w=None, *, opnorm_sq=1.0, rho=0.025, lam=1e-4, gamma=None, cg_iters=5):
    """One ADMM iteration of the volume data-consistency step (module docstring), warm-started at ``z0``.

    Args:
        op: the per-slice linear operator; ``AHy = Aᵀy`` ``(Z, ...)``; ``z0``: Tweedie estimate ``(Z, ...)``.
        d, w: ADMM split and scaled dual ``(Z, ...)`` (``None``: zeros); ``rho = 0`` ignores them.
    Returns:
        ``(u, d, w, residual)``: the new estimate, the updated ADMM state and the final CG residual norm.
    """
    inv_g = 0.0 if gamma is None else 1.0 / gamma

    def K_slices(v):  # per slice: AᵀA/L (+ I/γ)
        return op.normal(v) / opnorm_sq + inv_g * v

    b = AHy / opnorm_sq + inv_g * z0
    if rho == 0:
        res = cg(K_slices, b, z0, max_iter=cg_iters)
        return res.x, d, w, res.residual_norm.square().sum().sqrt()

    def K_volume(v):  # v: (1, Z, ...), the whole volume as one system
        return (K_slices(v[0]) + rho * dz_adjoint(dz(v[0])))[None]

    d = torch.zeros_like(z0) if d is None else d
    w = torch.zeros_like(z0) if w is None else w
    res = cg(K_volume, (b + rho * dz_adjoint(d - w))[None], z0[None], max_iter=cg_iters)
    u = res.x[0]
    du = dz(u)
    d = soft_threshold(du + w, lam / rho)
    return u, d, du + w - d, res.residual_norm[0]


class TVzADMM:
    """The volume step ``z0 -> (u, residual)``: :func:`tv_z_consistency` with its ADMM state kept across steps."""

    def __init__(self, op, y, *, opnorm_sq: float = 1.0, rho: float = 0.025, lam: float = 1e-4,
                 gamma: Optional[float] = None, cg_iters: int = 5):
        self.op, self.AHy = op, op.adjoint(y)
        self.options = dict(opnorm_sq=opnorm_sq, rho=rho, lam=lam, gamma=gamma, cg_iters=cg_iters)
        self.d = self.w = None

    def __call__(self, z0, t):
        u, self.d, self.w, r = tv_z_consistency(self.op, self.AHy, z0, self.d, self.w, **self.options)
        return u, r


def noise_aware_weight(prior, t: int, y, *, sigma_y, dc: str = "auto", gamma="auto"):
    """The weight ``lam_t`` of DDS's data-consistency system ``(AᴴA + lam_t I) u = Aᴴy + lam_t x0_hat`` at ``t``.

    * ``lam_t = 0`` is the noiseless normal equations ``AᴴA u = Aᴴy`` (``x0_hat`` only as the warm start: where ``A``
      has a null space CG keeps ``x0_hat``'s component there);
    * ``lam_t = 1 / gamma`` is the released proximal form ``(I + gamma AᴴA) u = x0_hat + gamma Aᴴy`` (the same
      system divided by ``gamma``, so CG takes the same iterates);
    * the noise-aware weight is the MAP estimate of ``x0`` given ``x_t`` and ``y``. With the Gaussian model
      ``x0 | x_t ~ N(x0_hat, r_t² I)`` and ``y = A x0 + n``, the posterior mode minimises
      ``||y - A u||² / (2 s²) + ||u - x0_hat||² / (2 r_t²)`` per real component, i.e. ``lam_t = s² / r_t²``
      (``gamma_t = r_t² / s²``), where ``s² = sigma_y²`` for real ``y`` and ``sigma_y² / 2`` for complex ``y``
      (circular noise of total variance ``sigma_y²``), and ``r_t² = unit² (1 - abar_t)`` is ``Var[x0 | x_t]`` for a
      unit-variance Gaussian prior-space component, ``unit`` converting prior units to the operator's. For a
      Gaussian prior this is the exact posterior mean ``E[x0 | x_t, y]`` (``tests/test_noise_level.py``). Early steps
      (``r_t`` large) trust the data, late steps the prior.

    Args:
        sigma_y: noise std of ``y`` in the units the sampler sees (``>= 0``): a float, or ``(B,)`` per sample.
        dc: ``"auto"`` (the rule; 0 for noiseless data), ``"prox"`` (the same, or ``1 / gamma`` for a numeric
            ``gamma``) or ``"normal"`` (0).
        gamma: ``"auto"`` or a fixed proximal weight ``> 0`` (the released code: 1.0).
    Returns:
        ``lam_t >= 0``: a float, or ``(B,)`` float64 for per-sample ``sigma_y``.
    """
    from .steps import unit

    if dc == "normal":
        return 0.0
    if gamma != "auto":
        return 1.0 / float(gamma)
    if not isinstance(sigma_y, torch.Tensor) and sigma_y == 0:
        return 0.0
    s2 = sigma_y**2 / (2 if y.is_complex() else 1)
    r2 = unit(prior) ** 2 * (1 - float(prior.alpha_bar(t)))
    return s2 / r2


def weighted_cg_solve(op, AHy, z0, lam, *, cg_iters: int, cg_tol: Optional[float],
                      reference_complex_inner_product: bool = False, precision: str = "single", graph=None):
    """CG on ``(AᴴA + lam I) u = Aᴴy + lam z0`` warm-started at ``z0`` (per sample; ``lam`` a float or ``(B,)``).

    At most ``cg_iters`` iterations; with ``cg_tol`` a sample stops once ``||r_k|| <= cg_tol ||r_0||``, the iterate
    with the smallest residual is returned and a sample whose residual grows past 10 times its best stops (on
    16-view CT the last steps start almost consistent, never reach the tolerance, and 400 float32 iterations broke
    CG down). ``precision="double"`` iterates in float64 / complex128 and returns ``x`` in ``z0``'s dtype.
    ``graph``: a :class:`~invsolve.linalg.GraphedCG` replaying this same system (fixed iterations, scalar ``lam``).
    Returns the :class:`~invsolve.linalg.CGResult`."""
    from .base import bshape

    dtype = z0.dtype
    if precision == "double" and dtype in (torch.float32, torch.complex64):
        wide = torch.complex128 if z0.is_complex() else torch.float64
        res = weighted_cg_solve(op, AHy.to(wide), z0.to(wide), lam, cg_iters=cg_iters, cg_tol=cg_tol,
                                reference_complex_inner_product=reference_complex_inner_product, graph=graph)
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
    if graph is not None and cg_tol is None:
        return graph(K, b, z0)
    return cg(K, b, z0, max_iter=cg_iters, tol=cg_tol, tol_reference="initial", keep_best=cg_tol is not None,
              reference_complex_inner_product=reference_complex_inner_product)


class NoiseAwareCG:
    """DDS's default 2D step ``(z0, t) -> (u, residual)``: :func:`weighted_cg_solve` with ``lam_t`` from
    :func:`noise_aware_weight`; keeps per step the CG iterations and ``lam_t`` (``iterations``, ``lams``).
    ``reproduce_reference_rhs`` (the released code's complex right-hand side) routes a scalar weight through
    :func:`cg_solve`."""

    def __init__(self, op, y, prior, *, sigma_y, dc="auto", gamma="auto", cg_iters: int = 400,
                 cg_tol: Optional[float] = 1e-4, precision: str = "double", reproduce_reference_rhs: bool = False,
                 reference_complex_inner_product: bool = False, graph: bool = False):
        self.op, self.y, self.prior = op, y, prior
        self.AHy_data = op.adjoint(y)  # in the data's dtype (the reference right-hand side)
        self.AHy = self.AHy_data
        if precision == "double" and self.AHy.dtype in (torch.float32, torch.complex64):  # widened once, not per step
            self.AHy = self.AHy.to(torch.complex128 if self.AHy.is_complex() else torch.float64)
        self.sigma_y, self.dc, self.gamma = sigma_y, dc, gamma
        self.cg = dict(cg_iters=cg_iters, cg_tol=cg_tol, precision=precision)
        self.reference_rhs, self.reference_ip = reproduce_reference_rhs, reference_complex_inner_product
        self.iterations, self.lams = [], []
        # graph: a CUDA graph of the fixed-iteration solve, replayed while lam_t is the captured one
        self.graph, self.graph_lam = (None, None)
        if graph:
            from ..linalg import GraphedCG

            self.graph = GraphedCG(cg_iters, reference_complex_inner_product)

    def __call__(self, z0, t):
        lam = noise_aware_weight(self.prior, t, self.y, sigma_y=self.sigma_y, dc=self.dc, gamma=self.gamma)
        if self.reference_rhs and not isinstance(lam, torch.Tensor):
            res = cg_solve(self.op, self.y, z0, AHy=self.AHy_data, mode="prox" if lam else "normal",
                           gamma=1 / lam if lam else 1.0, cg_iters=self.cg["cg_iters"], reproduce_reference_rhs=True,
                           reference_complex_inner_product=self.reference_ip)
        else:
            graph = None
            if self.graph is not None and not isinstance(lam, torch.Tensor):
                if self.graph_lam is None:
                    self.graph_lam = lam
                graph = self.graph if lam == self.graph_lam else None
            res = weighted_cg_solve(self.op, self.AHy, z0, lam, cg_iters=self.cg["cg_iters"],
                                    cg_tol=self.cg["cg_tol"], reference_complex_inner_product=self.reference_ip,
                                    precision=self.cg["precision"], graph=graph)
        self.iterations.append(res.iterations)
        self.lams.append(lam.tolist() if isinstance(lam, torch.Tensor) else lam)
        return res.x, res.residual_norm
