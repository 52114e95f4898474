"""Measurement noise keyed by image identity.

Each image's noise is drawn from its own generator, seeded by the task's ``noise_seed`` and the image's *key* (its
index in the source: the held-out set, the file, the volume), so an image's simulated measurement is the same
whichever other images are selected with it (``problem.index: [5]`` and ``[0, 5]`` give image 5 the same ``y``).
"""
from __future__ import annotations

import hashlib
from typing import Optional, Sequence

import torch

from ..operators.noise import GaussianNoise


def item_seed(seed: int, key: int) -> int:
    """Generator seed (63 bits) of the image with source index ``key`` under the task seed ``seed``."""
    digest = hashlib.sha256(f"invsolve-item:{int(seed)}:{int(key)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def source_keys(index, n: int, from_example: bool) -> list:
    """Keys of ``n`` selected images: their ``index`` in a built-in set, else their position in the user's file."""
    if from_example:
        return [int(index)] if isinstance(index, int) else [int(i) for i in index]
    return list(range(n))


def add_noise(y: torch.Tensor, sigma: float, seed: int, keys: Sequence[int],
              mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``y + sigma n`` with item ``b``'s noise drawn from ``torch.Generator().manual_seed(item_seed(seed, keys[b]))``
    (complex data: circular noise, see :class:`~invsolve.operators.noise.GaussianNoise`); ``mask`` ``(1|B, ...)``
    restricts the noise to sampled entries. ``sigma = 0`` returns a copy."""
    if len(keys) != y.shape[0]:
        raise ValueError(f"add_noise: {len(keys)} keys for a batch of {y.shape[0]}")
    if sigma == 0:
        return y.clone()
    out = []
    for b, k in enumerate(keys):
        m = None if mask is None else (mask[b:b + 1] if mask.dim() == y.dim() and mask.shape[0] > 1 else mask)
        out.append(GaussianNoise(sigma, mask=m)(y[b:b + 1], torch.Generator().manual_seed(item_seed(seed, k))))
    return torch.cat(out)
