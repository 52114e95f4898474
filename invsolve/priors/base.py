"""The denoiser contract every prior satisfies.

A :class:`Prior` wraps a diffusion model trained in the discrete VP (DDPM) form and exposes two views:

* **VP view** (for DDPM/DDIM-style samplers such as DDS and DPS): ``alpha_bar(t)`` for integer timesteps
  ``t in [-1, T-1]`` (``alpha_bar(-1) = 1``), ``eps(x_t, t)`` and ``tweedie(x_t, t) -> (x0_hat, eps)``.
* **VE view** (k-diffusion / EDM style, for EnKG): ``denoise(x, sigma) = E[x0 | x]`` with ``x = x0 + sigma n``,
  ``sigma = sqrt((1 - abar) / abar)``, and :meth:`sigmas` schedules.

Both views work in **prior space**: the network's channel layout and value range (nominally [-1, 1]).
:meth:`to_prior` / :meth:`from_prior` map operator-domain images to prior space and back:

* complex priors: a complex image ``(B, 1, H, W)`` ↔ 2 real channels ``[Re, Im] / scale``;
* real priors: ``data_range = (lo, hi)`` ↔ ``[-1, 1]`` per channel.

Every network call increments :attr:`nfe` (one per batched call, the usual NFE convention).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from ..errors import DTypeError, ShapeError

Tensor = torch.Tensor


class Prior(nn.Module):
    """Base class: subclasses implement :meth:`_eps_net` (the raw epsilon prediction in prior space).

    Attributes:
        name: human-readable identifier.
        image_size: ``(H, W)`` of prior space (latent size for latent priors).
        channels: number of prior-space channels.
        is_complex: operator-domain images are complex (mapped to ``[Re, Im]``).
        data_range: operator-domain ``(lo, hi)`` mapped to ``[-1, 1]`` (complex: ``(0, scale)``).
        max_batch: network calls are chunked to at most this many items (memory bound for volumes/ensembles).
    """

    is_latent: bool = False

    def __init__(self, alphas_cumprod: Tensor, image_size: Sequence[int], channels: int, is_complex: bool = False,
                 data_range: Tuple[float, float] = (0.0, 1.0), name: str = "prior", max_batch: Optional[int] = None,
                 card: Optional[dict] = None):
        super().__init__()
        ab = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        self.register_buffer("alphas_cumprod", ab, persistent=False)
        # host copy (a plain attribute: it stays on the CPU when the prior moves) so that alpha_bar(int) never reads
        # device memory: no host synchronisation per sampling step on a GPU
        self._alphas_cumprod_host = ab.clone()
        log_sigmas = 0.5 * torch.log((1 - ab) / ab)
        self.register_buffer("log_sigmas", log_sigmas, persistent=False)
        self.image_size = tuple(int(s) for s in image_size)
        self.channels = int(channels)
        self.is_complex = bool(is_complex)
        self.data_range = (float(data_range[0]), float(data_range[1]))
        if self.is_complex and self.channels != 2:
            raise ValueError(f"a complex prior needs 2 channels [Re, Im], got {channels}")
        self.name = name
        self.max_batch = max_batch
        self.card = dict(card or {})
        self.nfe = 0

    # ------------------------------------------------------------------ bookkeeping
    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    @property
    def device(self) -> torch.device:
        return self.alphas_cumprod.device

    @property
    def sigma_min(self) -> float:
        return float(self.log_sigmas[0].exp())

    @property
    def sigma_max(self) -> float:
        return float(self.log_sigmas[-1].exp())

    @property
    def operator_shape(self) -> Tuple[int, ...]:
        """Per-item shape of operator-domain images this prior models."""
        c = 1 if self.is_complex else self.channels
        return (c,) + tuple(self.image_size)

    # ------------------------------------------------------------------ domain mapping
    def to_prior(self, z: Tensor) -> Tensor:
        """Operator domain -> prior space ``(B, C, H, W)`` float32."""
        lo, hi = self.data_range
        if self.is_complex:
            if not z.is_complex():
                raise DTypeError(f"prior {self.name!r} models complex images; got real dtype {z.dtype}")
            return torch.cat([z.real, z.imag], dim=1) / hi
        if z.is_complex():
            raise DTypeError(f"prior {self.name!r} models real images; got complex dtype {z.dtype}")
        return (z - lo) / (hi - lo) * 2 - 1

    def from_prior(self, x: Tensor) -> Tensor:
        """Prior space -> operator domain (complex ``(B, 1, H, W)`` for complex priors)."""
        lo, hi = self.data_range
        if self.is_complex:
            return torch.complex(x[:, :1].float(), x[:, 1:2].float()) * hi
        return (x + 1) / 2 * (hi - lo) + lo

    def check_prior_tensor(self, x: Tensor, name: str = "x"):
        want = (self.channels,) + tuple(self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != want:
            raise ShapeError(f"{name} has shape {tuple(x.shape)}, but prior {self.name!r} works on (B, "
                             f"{', '.join(map(str, want))}) in prior space")

    # ------------------------------------------------------------------ VP view
    def alpha_bar(self, t) -> Tensor:
        """``abar_t`` (float64) for integer timesteps; ``t = -1`` gives 1. Accepts int or a tensor.

        A Python int gives a 0-d *CPU* tensor (read from a host copy of the schedule, so no device read; it
        broadcasts against tensors on any device as a scalar); a tensor ``t`` gives a tensor on the prior's device.
        """
        if not isinstance(t, torch.Tensor):
            k = int(t)
            return self._alphas_cumprod_host[k] if k >= 0 else torch.ones((), dtype=torch.float64)
        t = t.to(self.alphas_cumprod.device)
        ab = self.alphas_cumprod[t.clamp_min(0).long()]
        return torch.where(t < 0, torch.ones_like(ab), ab)

    def _eps_net(self, x: Tensor, t: Tensor) -> Tensor:  # pragma: no cover - abstract
        """Epsilon prediction for VP input ``x`` at (possibly fractional) timesteps ``t`` of shape ``(B,)``."""
        raise NotImplementedError

    def eps(self, x: Tensor, t) -> Tensor:
        """Predicted noise ``eps_theta(x_t, t)``; ``t`` is an int, a float or a ``(B,)`` tensor."""
        if isinstance(t, torch.Tensor):
            t = t.to(device=x.device, dtype=torch.float32)
        else:  # a fill kernel on the device: no host-to-device copy (which would synchronise)
            t = torch.full((x.shape[0],), float(t), device=x.device, dtype=torch.float32)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        self.nfe += 1
        if self.max_batch is None or x.shape[0] <= self.max_batch:
            return self._eps_net(x, t)
        return torch.cat([self._eps_net(xc, tc) for xc, tc in
                          zip(x.split(self.max_batch), t.split(self.max_batch))])

    def tweedie(self, x: Tensor, t) -> Tuple[Tensor, Tensor]:
        """First-order Tweedie ``x0_hat = (x - sqrt(1-abar) eps) / sqrt(abar)`` (no clipping) and ``eps``."""
        e = self.eps(x, t)
        ab = self.alpha_bar(t).to(x.dtype)
        ab = ab.reshape(-1, *([1] * (x.dim() - 1))) if ab.dim() else ab
        return (x - (1 - ab).sqrt() * e) / ab.sqrt(), e

    # ------------------------------------------------------------------ VE view
    def t_of_sigma(self, sigma: Tensor) -> Tensor:
        """Fractional timestep whose ``sigma_t`` equals ``sigma`` (log-linear interpolation, clamped)."""
        ls = self.log_sigmas.to(sigma.device)
        log_s = sigma.to(torch.float64).clamp_min(1e-12).log()
        idx = torch.searchsorted(ls, log_s.clamp(ls[0], ls[-1]).contiguous())
        lo = (idx - 1).clamp(0, len(ls) - 2)
        w = (log_s.clamp(ls[0], ls[-1]) - ls[lo]) / (ls[lo + 1] - ls[lo])
        return (lo + w.clamp(0, 1)).to(torch.float32)

    def sigma_of_t(self, t) -> Tensor:
        ab = self.alpha_bar(t)
        return ((1 - ab) / ab).sqrt()

    def denoise(self, x: Tensor, sigma) -> Tensor:
        """``D(x, sigma) = E[x0 | x]`` for VE-scaled ``x = x0 + sigma n`` (sigma scalar or ``(B,)``)."""
        sigma = torch.as_tensor(sigma, device=x.device, dtype=torch.float64)
        if sigma.dim() == 0:
            sigma = sigma.expand(x.shape[0])
        t = self.t_of_sigma(sigma)
        s = sigma.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        x_vp = x / (1 + s**2).sqrt()
        return x - s * self.eps(x_vp, t)

    def sigmas(self, steps: int, kind: str = "karras", sigma_min: Optional[float] = None,
               sigma_max: Optional[float] = None, rho: float = 7.0) -> Tensor:
        """Decreasing noise levels ``(steps + 1,)`` ending in 0 (float64): ``"karras"`` (EDM, ``rho``),
        ``"loglinear"`` or ``"vp"`` (see :func:`invsolve.samplers.steps.sigma_schedule`, where schedules live)."""
        from ..samplers.steps import sigma_schedule

        return sigma_schedule(self, steps, kind, sigma_min, sigma_max, rho)

    # ------------------------------------------------------------------ misc
    def summary(self) -> str:
        kind = "complex [Re, Im]" if self.is_complex else f"{self.channels}-channel"
        return f"{self.name}: {kind} {self.image_size[0]}x{self.image_size[1]}, data range {self.data_range}"

    def extra_repr(self) -> str:
        return self.summary()
