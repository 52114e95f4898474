"""Unconditional DDIM sampling from a prior (sample grids for model cards, sanity checks)."""
from __future__ import annotations

from typing import Optional

import torch

from .steps import clip_tweedie, ddim_grid, ddim_sigma, ddim_step  # noqa: F401  (ddim_grid: public here too)


@torch.no_grad()
def sample_ddim(prior, n: int, steps: int = 50, eta: float = 0.0, seed: int = 0, clip: Optional[float] = None,
                device=None, progress: bool = False) -> torch.Tensor:
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
            x0, e = clip_tweedie(x, x0, prior.alpha_bar(t).to(x.dtype), clip)
        ab_t, ab_n = prior.alpha_bar(t).item(), prior.alpha_bar(t_next).item()
        noise = torch.randn(shape, generator=g).to(device) if ddim_sigma(ab_t, ab_n, eta) > 0 else None
        x = ddim_step(x0, e, ab_t, ab_n, eta, noise)
    return x
