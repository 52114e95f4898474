"""Measurement noise models (applied by the caller, never inside an operator).

``noise(y, generator)`` returns a noisy copy; complex data get circular Gaussian noise with total variance
``sigma^2`` per entry (``sigma^2 / 2`` on each of the real and imaginary parts).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn


def _randn_like(y: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    dev = generator.device if generator is not None else y.device
    if y.is_complex():
        re = torch.randn(y.shape, generator=generator, device=dev, dtype=y.real.dtype)
        im = torch.randn(y.shape, generator=generator, device=dev, dtype=y.real.dtype)
        return (torch.complex(re, im) / 2**0.5).to(y.device)
    return torch.randn(y.shape, generator=generator, device=dev, dtype=y.dtype).to(y.device)


class GaussianNoise(nn.Module):
    """Additive white Gaussian noise ``y + sigma n``.

    ``mask`` (optional, broadcastable to ``y``) restricts noise to sampled entries (e.g. acquired k-space lines),
    so unsampled entries stay exactly zero.
    """

    def __init__(self, sigma: float, mask: Optional[torch.Tensor] = None):
        super().__init__()
        if sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {sigma}")
        self.sigma = float(sigma)
        self.register_buffer("mask", None if mask is None else torch.as_tensor(mask))

    def forward(self, y: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        if self.sigma == 0:
            return y.clone()
        n = self.sigma * _randn_like(y, generator)
        if self.mask is not None:
            n = n * self.mask.to(n.real.dtype)
        return y + n


class PoissonNoise(nn.Module):
    """Poisson (shot) noise: ``y_noisy = Poisson(rate * y) / rate`` for non-negative ``y``."""

    def __init__(self, rate: float = 1.0):
        super().__init__()
        if rate <= 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        self.rate = float(rate)

    def forward(self, y: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        if y.is_complex() or bool((y < 0).any()):
            raise ValueError("PoissonNoise needs a real, non-negative measurement y")
        return torch.poisson(y * self.rate, generator=generator) / self.rate
