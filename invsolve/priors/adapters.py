"""Run a prior on images of another size or channel count (wrappers that are priors themselves).

* :class:`PadPrior` — problem smaller than the prior: pad the noisy image to the native size (reflection by
  default, which keeps the noise statistics), run the network, crop the result.
* :class:`ResizePrior` — any size: resize the noisy image to the native size, denoise at the noise level the
  resizing leaves, resize the estimate back. Approximate: detail finer than the native grid is lost in the estimate
  (data consistency has to restore it), and after non-integer or upsampling resizes the noise is correlated,
  which the network never saw. Best for shrinking by an integer factor with ``mode="area"`` (then the noise stays
  white with std ``sigma / factor``).
* :class:`GrayToRGB` — a 1-channel prior on C-channel images: every channel is denoised as an independent gray image.
* :class:`RGBToGray` — an RGB prior on gray images: prior space stays RGB (so the network sees the noise it was
  trained on); the operator sees the luminance ``w . rgb``, and a gray image enters prior space as ``(g, g, g)``.

Pad and channel adapters call the wrapped prior's VP view (``eps``) and VE view (``denoise``) directly; the resize
adapter works in the VE view and derives its VP view from it (:class:`~invsolve.priors.ve.DenoiserPrior`). The
wrapper counts its own network calls in ``nfe`` (the wrapped prior counts its own). Latent priors are not supported.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn.functional as F

from ..errors import InvsolveError, ShapeError
from .base import Prior
from .ve import DenoiserPrior

Tensor = torch.Tensor


def _size(image_size) -> Tuple[int, int]:
    s = (image_size, image_size) if isinstance(image_size, int) else tuple(int(v) for v in image_size)
    if len(s) != 2 or min(s) < 1:
        raise ShapeError(f"image_size must be an int or (H, W), got {image_size!r}")
    return s


class PriorAdapter(DenoiserPrior):
    """Base of the wrappers: the wrapped prior's noise schedule and domain mapping, another prior-space shape."""

    def __init__(self, inner: Prior, image_size: Sequence[int], channels: int, name: str):
        if not isinstance(inner, Prior):
            raise TypeError(f"expected an invsolve Prior to wrap, got {type(inner).__name__}")
        if getattr(inner, "is_latent", False):
            raise InvsolveError(f"{type(self).__name__} works on pixel-space priors; {inner.name!r} is a latent prior")
        super().__init__(inner.log_sigmas.exp().cpu(), image_size, channels, is_complex=inner.is_complex,
                         data_range=inner.data_range, name=name, card=inner.card)
        self.inner = inner

    def to_prior(self, z: Tensor) -> Tensor:
        return self.inner.to_prior(z)

    def from_prior(self, x: Tensor) -> Tensor:
        return self.inner.from_prior(x)


class PadPrior(PriorAdapter):
    """``inner`` (native ``S x S``) on smaller images ``image_size``: pad to ``S``, call, crop (centred).

    ``mode``: ``"reflect"`` (default), ``"replicate"`` or ``"circular"`` padding of the *noisy* image — never a
    constant, which would be a noise-free region the network has not seen.
    """

    MODES = ("reflect", "replicate", "circular")

    def __init__(self, inner: Prior, image_size, mode: str = "reflect"):
        h, w = _size(image_size)
        H, W = inner.image_size
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        if h > H or w > W:
            raise ShapeError(f"PadPrior pads images up to the prior's size {H}x{W}; {h}x{w} is larger "
                             f"(use ResizePrior)")
        top, left = (H - h) // 2, (W - w) // 2
        pads = (left, W - w - left, top, H - h - top)
        if mode != "replicate" and (max(pads[:2]) >= w or max(pads[2:]) >= h):
            raise ShapeError(f"{mode} padding of {h}x{w} to {H}x{W} needs pads smaller than the image; "
                             f"use mode='replicate' or ResizePrior")
        super().__init__(inner, (h, w), inner.channels, f"{inner.name}@pad{h}x{w}")
        self.mode, self.pads, self.crop = mode, pads, (slice(top, top + h), slice(left, left + w))

    def _pad(self, x):
        return F.pad(x, self.pads, mode=self.mode)

    def _eps_net(self, x, t):
        return self.inner.eps(self._pad(x), t)[..., self.crop[0], self.crop[1]]

    def _denoise_net(self, x, sigma):
        return self.inner.denoise(self._pad(x), sigma)[..., self.crop[0], self.crop[1]]


def _resize(x: Tensor, size, mode: str) -> Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "area":
        return F.interpolate(x, size=size, mode="area")
    return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=True)


def noise_gain(size_in: Sequence[int], size_out: Sequence[int], mode: str) -> float:
    """RMS gain of white noise under the (separable, linear) resize: ``sqrt(mean_out sum_in weight^2)``."""
    g = 1.0
    for axis in (0, 1):
        n_in, n_out = size_in[axis], size_out[axis]
        eye = torch.eye(n_in, dtype=torch.float64)[:, None, None, :]  # n_in basis images of size (1, n_in)
        R = _resize(eye, (1, n_out), mode)[:, 0, 0, :]  # (n_in, n_out): column j = weights of output j
        g *= float((R**2).sum() / n_out)
    return g**0.5


class ResizePrior(PriorAdapter):
    """``inner`` (native ``S``) on images of another size by resizing — approximate (see the module docstring).

    ``D(x; sigma) = up( inner.denoise( down(x), g * sigma ) )`` where ``g`` is the noise gain of ``down``
    (:func:`noise_gain`). ``mode``: ``"area"`` (default when shrinking), ``"bilinear"`` (default when enlarging) or
    ``"bicubic"``; the way back uses bilinear (antialiased) interpolation.
    """

    MODES = ("area", "bilinear", "bicubic")

    def __init__(self, inner: Prior, image_size, mode=None):
        h, w = _size(image_size)
        H, W = inner.image_size
        mode = mode or ("area" if h >= H and w >= W else "bilinear")
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        super().__init__(inner, (h, w), inner.channels, f"{inner.name}@resize{h}x{w}")
        self.mode = mode
        self.gain = noise_gain((h, w), (H, W), mode)

    def _denoise_net(self, x, sigma):
        d = self.inner.denoise(_resize(x, self.inner.image_size, self.mode), sigma * self.gain)
        return _resize(d, self.image_size, "bilinear")


class GrayToRGB(PriorAdapter):
    """A 1-channel prior on ``channels``-channel images: each channel is denoised as its own gray image."""

    def __init__(self, inner: Prior, channels: int = 3):
        if inner.channels != 1 or inner.is_complex:
            raise InvsolveError(f"GrayToRGB wraps a real 1-channel prior; {inner.name!r} has {inner.channels} "
                                f"{'complex ' if inner.is_complex else ''}channel(s)")
        super().__init__(inner, inner.image_size, channels, f"{inner.name}@x{channels}ch")

    def _split(self, x):
        return x.reshape(x.shape[0] * self.channels, 1, *x.shape[2:])

    def _eps_net(self, x, t):
        return self.inner.eps(self._split(x), t.repeat_interleave(self.channels)).reshape(x.shape)

    def _denoise_net(self, x, sigma):
        return self.inner.denoise(self._split(x), sigma.repeat_interleave(self.channels)).reshape(x.shape)


LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601


class RGBToGray(PriorAdapter):
    """An RGB prior on gray images: the operator sees ``sum_c w_c rgb_c`` (``weights`` sum to 1, default BT.601
    luma); a gray image ``g`` enters prior space as ``(g, g, g)``. The network and its noise stay RGB."""

    def __init__(self, inner: Prior, weights: Sequence[float] = LUMA):
        w = torch.as_tensor(weights, dtype=torch.float32)
        if inner.is_complex or w.shape != (inner.channels,) or abs(float(w.sum()) - 1) > 1e-6:
            raise InvsolveError(f"RGBToGray needs a real prior and one weight per channel summing to 1; got prior "
                                f"{inner.name!r} with {inner.channels} channel(s) and weights {list(weights)}")
        super().__init__(inner, inner.image_size, inner.channels, f"{inner.name}@gray")
        self.register_buffer("weights", w.reshape(1, -1, 1, 1), persistent=False)

    @property
    def operator_shape(self):
        return (1,) + tuple(self.image_size)

    def to_prior(self, z):
        return self.inner.to_prior(z.expand(-1, self.channels, -1, -1))

    def from_prior(self, x):
        return (self.inner.from_prior(x) * self.weights.to(x.dtype)).sum(dim=1, keepdim=True)

    def _eps_net(self, x, t):
        return self.inner.eps(x, t)

    def _denoise_net(self, x, sigma):
        return self.inner.denoise(x, sigma)


ADAPTERS = {"resize": ResizePrior, "pad": PadPrior}


def fit_to(prior: Prior, image_size, how: str) -> Prior:
    """``prior`` on images of ``image_size`` through the adapter ``how`` (``"resize"`` or ``"pad"``); returned
    unchanged when the sizes already agree."""
    if how not in ADAPTERS:
        from ..errors import InvalidValueError

        raise InvalidValueError(f"prior adapter must be one of {sorted(ADAPTERS)}, got {how!r}")
    size = _size(image_size)
    return prior if tuple(prior.image_size) == size else ADAPTERS[how](prior, size)
