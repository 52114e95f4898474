"""Analytic priors: a Gaussian (mixture) data distribution with its exact VP denoiser, score and Hessian.

Data ``x0 ~ Σ_k w_k N(m_k, Σ_k)`` in prior space (``d = C·H·W`` entries). Under the VP forward process
``x_t = sqrt(a) x0 + sqrt(1-a) e`` (``a = abar_t``) each component stays Gaussian:

* marginal ``p_t = Σ_k w_k N(sqrt(a) m_k, M_k)``, ``M_k = a Σ_k + (1-a) I``;
* component score ``g_k(x) = -M_k⁻¹ (x - sqrt(a) m_k)``; responsibilities ``r_k(x) ∝ w_k N(x; sqrt(a) m_k, M_k)``;
* score ``s = Σ_k r_k g_k``, ``eps = -sqrt(1-a) s`` (so Tweedie's ``E[x0|x_t]`` is exact);
* Hessian ``H = ∇s = Σ_k r_k (-M_k⁻¹ + g_k g_kᵀ) - s sᵀ``;
* posterior of ``x0`` given ``x_t``: component means ``μ_k = m_k + sqrt(a) Σ_k M_k⁻¹ (x - sqrt(a) m_k)`` and
  covariances ``C_k = (1-a) Σ_k M_k⁻¹``; ``Cov = Σ_k r_k (C_k + μ_k μ_kᵀ) - μ μᵀ``.

Second-order Tweedie in this (VP) parametrisation (the STSL paper writes it for the OU process with
``abar = e^{-2s}``): ``Cov[x0 | x_t] = ((1-a)/a) (I + (1-a) H(x_t))`` — exact for every density, and checked
against the closed-form ``Cov`` above in ``tests/test_stsl.py``.

Covariances are given as diagonals (``variances``, same shape as the means; cheap for any size) or as full
``(d, d)`` matrices (``covs``; stored by eigendecomposition, for small ``d``). Exact quantities are computed in
float64. These priors are for validating samplers where the answer is known; :func:`linear_gaussian_posterior`
gives the exact posterior of ``x0`` given ``y = A x0 + σ n``.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch

from ..errors import ShapeError
from .base import Prior

Tensor = torch.Tensor


def linear_alphas_cumprod(steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """``abar_t`` of the linear DDPM schedule (float64, ``(steps,)``)."""
    return torch.cumprod(1 - torch.linspace(beta_start, beta_end, steps, dtype=torch.float64), 0)


class GaussianMixturePrior(Prior):
    """Exact VP prior of a Gaussian mixture in prior space (module docstring for the formulas).

    Args:
        means: ``(K, C, H, W)`` component means (prior space).
        variances: ``(K, C, H, W)`` diagonal covariances (or a positive float for ``σ² I``), or
        covs: ``(K, d, d)`` symmetric positive-definite covariances (``d = C·H·W``); give exactly one.
        weights: ``(K,)`` mixture weights (normalised; default uniform).
        alphas_cumprod: VP schedule (default: linear betas 1e-4..0.02 over 1000 steps).
        data_range: operator-domain range mapped to [-1, 1] (default ``(-1, 1)``: identity map).
    """

    def __init__(self, means: Tensor, variances=None, covs: Optional[Tensor] = None,
                 weights: Optional[Sequence[float]] = None, *, alphas_cumprod: Optional[Tensor] = None,
                 data_range: Tuple[float, float] = (-1.0, 1.0), name: str = "gaussian-mixture"):
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.dim() != 4:
            raise ShapeError(f"means must have shape (K, C, H, W), got {tuple(means.shape)}")
        K, C, H, W = means.shape
        d = C * H * W
        if (variances is None) == (covs is None):
            raise ValueError("give exactly one of variances (diagonal) or covs (full (K, d, d) matrices)")
        super().__init__(linear_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod, (H, W), C,
                         data_range=data_range, name=name)
        if covs is not None:
            covs = torch.as_tensor(covs, dtype=torch.float64)
            if tuple(covs.shape) != (K, d, d):
                raise ShapeError(f"covs must have shape (K, d, d) = ({K}, {d}, {d}), got {tuple(covs.shape)}")
            lam, U = torch.linalg.eigh(0.5 * (covs + covs.transpose(1, 2)))
            self.register_buffer("U", U, persistent=False)
        else:
            lam = torch.as_tensor(variances, dtype=torch.float64).expand(K, C, H, W).reshape(K, d).clone()
            self.U = None
        if not bool((lam > 0).all()):
            raise ValueError("covariances must be positive definite (all eigenvalues / variances > 0)")
        w = torch.full((K,), 1.0 / K, dtype=torch.float64) if weights is None else \
            torch.as_tensor(weights, dtype=torch.float64)
        if w.shape != (K,) or not bool((w > 0).all()):
            raise ShapeError(f"weights must be {K} positive numbers, got {tuple(w.shape)}")
        self.register_buffer("means", means.reshape(K, d), persistent=False)
        self.register_buffer("lam", lam, persistent=False)
        self.register_buffer("log_w", (w / w.sum()).log(), persistent=False)
        self.dim = d

    # ------------------------------------------------------------------ helpers (float64, flattened (B, d))
    def _ab(self, t) -> Tensor:
        """``abar`` at (fractional) timesteps ``(B,)`` by log-sigma interpolation (exact at integers)."""
        t = torch.as_tensor(t, dtype=torch.float64, device=self.device).reshape(-1)
        ls = self.log_sigmas
        lo = t.floor().long().clamp(0, len(ls) - 1)
        hi = (lo + 1).clamp(max=len(ls) - 1)
        w = (t - lo).clamp(0, 1)
        ab = 1 / (1 + torch.exp(2 * ((1 - w) * ls[lo] + w * ls[hi])))
        return torch.where(t < 0, torch.ones_like(ab), ab)

    def _rot(self, v: Tensor, inverse: bool = False) -> Tensor:
        """``v (B, K, d)`` into (``Uᵀ v``) or out of (``U v``) each component's eigenbasis."""
        if self.U is None:
            return v
        return torch.einsum("kij,bki->bkj" if not inverse else "kij,bkj->bki", self.U, v)

    def _parts(self, x: Tensor, t):
        """Per component: responsibilities ``(B, K)``, scores ``g_k (B, K, d)``, ``1/(a λ + 1 - a) (B, K, d)``."""
        xf = x.reshape(x.shape[0], -1).to(torch.float64)
        ab = self._ab(t).expand(xf.shape[0])[:, None, None]
        inv = 1 / (ab * self.lam[None] + 1 - ab)  # eigenvalues of M_k^-1
        rt = self._rot(xf[:, None, :] - ab.sqrt() * self.means[None])  # (B, K, d) in the eigenbasis
        logp = self.log_w[None] - 0.5 * (inv * rt**2).sum(-1) + 0.5 * inv.log().sum(-1)
        r = torch.softmax(logp, dim=1)
        g = -self._rot(inv * rt, inverse=True)
        return r, g, inv, ab[:, 0, 0]

    # ------------------------------------------------------------------ exact quantities
    def score(self, x: Tensor, t) -> Tensor:
        """``∇ log p_t(x)`` (same shape and dtype as ``x``)."""
        r, g, _, _ = self._parts(x, t)
        return (r[..., None] * g).sum(1).reshape(x.shape).to(x.dtype)

    def hessian(self, x: Tensor, t) -> Tensor:
        """``∇² log p_t(x)`` as ``(B, d, d)`` float64 (the Jacobian of :meth:`score`)."""
        r, g, inv, _ = self._parts(x, t)
        s = (r[..., None] * g).sum(1)
        if self.U is None:
            minv = torch.diag_embed(inv)  # (B, K, d, d)
        else:
            minv = torch.einsum("kij,bkj,klj->bkil", self.U, inv, self.U)
        outer = g[..., :, None] * g[..., None, :]
        return (r[..., None, None] * (outer - minv)).sum(1) - s[:, :, None] * s[:, None, :]

    def hessian_trace(self, x: Tensor, t) -> Tensor:
        """``tr ∇² log p_t(x)`` per item ``(B,)`` float64, without forming the Hessian."""
        r, g, inv, _ = self._parts(x, t)
        s = (r[..., None] * g).sum(1)
        return (r * ((g**2).sum(-1) - inv.sum(-1))).sum(1) - (s**2).sum(-1)

    def x0_posterior(self, x: Tensor, t) -> Tuple[Tensor, Tensor]:
        """Exact ``E[x0 | x_t]`` ``(B, d)`` and ``Cov[x0 | x_t]`` ``(B, d, d)`` (float64), from the components."""
        r, g, inv, ab = self._parts(x, t)
        a = ab[:, None, None]
        lam_c = self.lam[None].expand_as(inv)
        # mu_k = m_k + sqrt(a) Sigma_k M_k^-1 (x - sqrt(a) m_k) = m_k - sqrt(a) Sigma_k g_k
        mu = self.means[None] - a.sqrt() * self._rot(lam_c * self._rot(g), inverse=True)
        ck = (1 - a) * lam_c * inv  # eigenvalues of C_k
        if self.U is None:
            Ck = torch.diag_embed(ck)
        else:
            Ck = torch.einsum("kij,bkj,klj->bkil", self.U, ck, self.U)
        mean = (r[..., None] * mu).sum(1)
        second = (r[..., None, None] * (Ck + mu[..., :, None] * mu[..., None, :])).sum(1)
        return mean, second - mean[:, :, None] * mean[:, None, :]

    def component_covs(self) -> Tensor:
        """Data covariances ``Σ_k`` as ``(K, d, d)`` float64."""
        if self.U is None:
            return torch.diag_embed(self.lam)
        return torch.einsum("kij,kj,klj->kil", self.U, self.lam, self.U)

    # ------------------------------------------------------------------ Prior contract
    def _eps_net(self, x: Tensor, t: Tensor) -> Tensor:
        ab = self._ab(t).expand(x.shape[0]).reshape(-1, *([1] * (x.dim() - 1)))
        return (-(1 - ab).sqrt() * self.score(x, t).to(torch.float64)).to(x.dtype)

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """``n`` exact draws of ``x0`` ``(n, C, H, W)`` float32 (prior space)."""
        k = torch.multinomial(self.log_w.exp().cpu(), n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64).to(self.device)
        v = z * self.lam[k].sqrt()
        if self.U is not None:
            v = torch.einsum("bij,bj->bi", self.U[k], v)
        x = self.means[k] + v
        return x.reshape(n, self.channels, *self.image_size).float()


class GaussianPrior(GaussianMixturePrior):
    """A single Gaussian ``N(mean, cov)``: ``mean`` ``(C, H, W)``; ``cov`` ``(d, d)`` or ``variance`` (diagonal,
    ``(C, H, W)`` or a float). Score, denoiser and Hessian are linear/constant in closed form."""

    def __init__(self, mean: Tensor, cov: Optional[Tensor] = None, variance=None, **kwargs):
        mean = torch.as_tensor(mean, dtype=torch.float64)
        if mean.dim() != 3:
            raise ShapeError(f"mean must have shape (C, H, W), got {tuple(mean.shape)}")
        kwargs.setdefault("name", "gaussian")
        if variance is not None:
            variance = torch.as_tensor(variance, dtype=torch.float64)
            variance = variance[None] if variance.dim() == 3 else variance
        super().__init__(mean[None], variances=variance, covs=None if cov is None else torch.as_tensor(cov)[None],
                         **kwargs)


def linear_gaussian_posterior(prior: GaussianMixturePrior, A: Tensor, y: Tensor, sigma_y: float):
    """Exact posterior of ``x0`` given ``y = A x0 + sigma_y n`` for a Gaussian-mixture prior (float64).

    Args:
        A: ``(m, d)`` matrix acting on flattened prior-space images; ``y``: ``(B, m)``.
    Returns:
        ``(mean (B, d), cov (B, d, d), weights (B, K))``: a Gaussian mixture with the same components' posterior
        covariances ``P_k = (Σ_k⁻¹ + AᵀA/σ²)⁻¹`` and means ``P_k (Σ_k⁻¹ m_k + Aᵀy/σ²)``.
    """
    A = torch.as_tensor(A, dtype=torch.float64)
    y = torch.as_tensor(y, dtype=torch.float64).reshape(-1, A.shape[0])
    S = prior.component_covs()
    m = prior.means
    s2 = float(sigma_y) ** 2
    P = torch.linalg.inv(torch.linalg.inv(S) + A.T @ A / s2)  # (K, d, d)
    rhs = torch.linalg.solve(S, m[..., None])[..., 0][None] + (y @ A / s2)[:, None, :]  # (B, K, d)
    mu = torch.einsum("kij,bkj->bki", P, rhs)
    Sy = A @ S @ A.T + s2 * torch.eye(A.shape[0], dtype=torch.float64)  # (K, m, m)
    res = y[:, None, :] - (m @ A.T)[None]  # (B, K, m)
    quad = torch.einsum("bki,bki->bk", res, torch.linalg.solve(Sy[None].expand(y.shape[0], -1, -1, -1),
                                                                 res[..., None])[..., 0])
    logdet = torch.linalg.slogdet(Sy)[1]
    logw = prior.log_w[None] - 0.5 * quad - 0.5 * logdet[None] - 0.5 * A.shape[0] * math.log(2 * math.pi)
    wts = torch.softmax(logw, dim=1)
    mean = (wts[..., None] * mu).sum(1)
    second = (wts[..., None, None] * (P[None] + mu[..., :, None] * mu[..., None, :])).sum(1)
    return mean, second - mean[:, :, None] * mean[:, None, :], wts
