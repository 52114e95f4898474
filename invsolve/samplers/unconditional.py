"""Unconditional DDIM sampling from a prior (sample grids for model cards, sanity checks)."""
from __future__ import annotations

from typing import Optional

import torch

from ..priors.base import Prior


def ddim_grid(prior: Prior, steps: int) -> list:
    """``[(t, t_next), ...]`` pairs of the DDS/DDIM grid: ``tau_k = k * (T // steps)``, ending at ``t_next = -1``."""
    if not 1 <= steps <= prior.num_train_timesteps:
        raise ValueError(f"steps must be in [1, {prior.num_train_timesteps}], got {steps}")
    delta = prior.num_train_timesteps // steps
    taus = [k * delta for k in range(steps)]
    return list(zip(taus[::-1], taus[::-1][1:] + [-1]))


@torch.no_grad()
def sample_ddim(prior: Prior, n: int, steps: int = 50, eta: float = 0.0, seed: int = 0,
                clip: Optional[float] = None, device=None, progress: bool = False) -> torch.Tensor:
    """Draw ``n`` samples ``(n, C, H, W)`` in prior space with DDIM (``eta`` = DDIM stochasticity).

    ``clip`` clamps the Tweedie estimate to ``[-clip, clip]`` at every step (off by default); ``progress``: a bar.
    """
    from .base import progress_bar

    device = device or prior.device
    g = torch.Generator(device="cpu").manual_seed(seed)
    shape = (n, prior.channels) + tuple(prior.image_size)
    x = torch.randn(shape, generator=g).to(device)
    for t, t_next in progress_bar(ddim_grid(prior, steps), progress, "sample grid"):
        x0, e = prior.tweedie(x, t)
        if clip is not None:
            x0 = x0.clamp(-clip, clip)
            ab = prior.alpha_bar(t).to(x.dtype)
            e = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
        ab_t, ab_n = prior.alpha_bar(t).item(), prior.alpha_bar(t_next).item()
        sig = eta * ((1 - ab_n) / (1 - ab_t) * (1 - ab_t / ab_n)) ** 0.5
        noise = torch.randn(shape, generator=g).to(device) if sig > 0 else 0.0
        x = ab_n**0.5 * x0 + max(1 - ab_n - sig**2, 0.0) ** 0.5 * e + sig * noise
    return x
