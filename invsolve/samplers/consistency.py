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
             reproduce_reference_rhs: bool = False, reference_complex_inner_product: bool = False, AHy=None):
    """DDS's data-consistency solve in the operator domain, warm-started at the Tweedie estimate ``z0``.

    ``mode="prox"``: ``(I + γ AᴴA) u = z0 + γ Aᴴy`` (``u = argmin γ/2 ||y - Au||² + 1/2 ||u - z0||²``);
    ``mode="normal"``: ``AᴴA u = Aᴴy`` (noiseless normal equations; ``z0`` only as the warm start).
    ``reproduce_reference_rhs`` uses the released code's complex right-hand side ``z0 + γ(1 + i) Aᴴy``;
    ``AHy``: ``Aᴴy`` if already computed. Returns the :class:`~invsolve.linalg.CGResult`.
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
