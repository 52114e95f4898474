"""Convolution blur with exact adjoints for every boundary condition, kernel generators and Wiener deconvolution.

Convention (that of ``scipy.ndimage.convolve``): with the kernel centre ``c = (k_h//2, k_w//2)``,

    ``y[i, j] = Σ_{a,b} K[a, b] · x_pad[i + c_h - a, j + c_w - b]``  (a true convolution, not a correlation),

where ``x_pad`` extends ``x`` beyond its border according to ``padding``:

* ``"circular"``: periodic (``scipy.ndimage.convolve(mode="wrap")``); ``A`` is diagonal in the DFT basis;
* ``"reflect"``: mirrored about the edge pixel (``d c b | a b c d | c b a``; numpy/torch ``reflect``,
  scipy ``mirror``);
* ``"replicate"``: the edge pixel repeated (scipy ``nearest``);
* ``"zeros"``: zeros (scipy ``constant`` with ``cval=0``);
* ``"valid"``: no extension; the output shrinks to ``(H - k_h + 1, W - k_w + 1)`` (only outputs whose window lies
  inside the image).

Every mode is computed as ``crop ∘ circular convolution (FFT) ∘ P`` with ``P`` the padding map (a gather along
each axis); the adjoint applies the transposes in reverse (zero-embedding, FFT correlation, scatter-add ``P^T``),
so it is exact for every mode and kernel size.
"""
from __future__ import annotations

import math
import warnings
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from ..errors import DTypeError, ShapeError
from .base import LinearOperator, check_tensor

PADDINGS = ("circular", "reflect", "replicate", "zeros", "valid")


# -- kernels -------------------------------------------------------------------------------------------------------
def gaussian_kernel(size: int = 61, sigma: float = 3.0) -> torch.Tensor:
    """Sampled isotropic Gaussian ``exp(-r² / 2σ²)`` on a ``size x size`` grid centred at ``(size-1)/2``, sum 1.

    Odd sizes keep the blur centred. The DPS setting is ``size=61, sigma=3.0`` (DPS builds it with scipy's
    ``gaussian_filter`` of a delta, which also truncates at 4σ; the two differ by < 1e-4 of the peak). float32.
    """
    if int(size) != size or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}")
    r = torch.arange(int(size), dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma**2))
    return (g / g.sum()).to(torch.float32)


def uniform_kernel(size: int) -> torch.Tensor:
    """Box blur: a ``size x size`` kernel of ones / size² (float32)."""
    if int(size) != size or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    return torch.full((int(size), int(size)), 1.0 / size**2, dtype=torch.float32)


def _motion_path(rng: np.random.Generator, canvas: int, intensity: float) -> np.ndarray:
    """Vertices (complex) of a random camera-shake path, centred on the canvas (the recipe of the motion-blur
    kernels used by DPS: LeviBorodenko/motionblur, reimplemented from its description)."""
    diag = math.sqrt(2) * canvas
    length = 0.75 * diag * (rng.uniform() + rng.uniform(0, intensity**2))
    steps = []
    while sum(steps) < length:
        steps.append(rng.beta(1, 30) * (1 - intensity + 0.1) * diag)
    steps[-1] -= sum(steps) - length  # the last step ends exactly at the drawn length
    max_angle = rng.uniform(0, intensity * math.pi)
    jitter = rng.beta(2, 20)
    angles = [rng.uniform(-max_angle, max_angle)]
    sign = 1.0 if angles[0] >= 0 else -1.0
    for _ in steps[1:]:
        a = rng.triangular(0, intensity * max_angle, max_angle) if max_angle > 0 else 0.0
        if rng.uniform() < jitter:
            sign = -sign
        angles.append(sign * a)
    path = np.concatenate([[0j], np.cumsum(np.asarray(steps) * np.exp(1j * np.asarray(angles)))])
    path = (path - path.mean()) * np.exp(1j * rng.uniform(0, math.pi))
    return path + (canvas - 1) / 2 * (1 + 1j)


def _rasterise(path: np.ndarray, canvas: int) -> np.ndarray:
    """Draw a polyline as a one-pixel anti-aliased line of uniform density: points every 1/4 pixel, splatted
    bilinearly."""
    img = np.zeros((canvas, canvas))
    for p, q in zip(path[:-1], path[1:], strict=True):
        t = np.linspace(0, 1, max(2, int(math.ceil(4 * abs(q - p))) + 1))
        pts = p + t * (q - p)
        x, y = pts.real, pts.imag
        x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
        fx, fy = x - x0, y - y0
        for dx, dy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
            r, c = y0 + dy, x0 + dx
            ok = (r >= 0) & (r < canvas) & (c >= 0) & (c < canvas)
            np.add.at(img, (r[ok], c[ok]), w[ok] * abs(q - p) / len(t))
    return img


def motion_kernel(size: int = 61, intensity: float = 0.5, seed: int = 0) -> torch.Tensor:
    """Seeded random camera-shake kernel ``(size, size)``, float32, sum 1 (DPS's motion-blur recipe).

    A random path (length, step lengths, angle spread and sign jitter drawn as described there from a
    ``numpy.random.default_rng(seed)``) is drawn on a canvas twice the size with diagonal ``D``, thickened to
    ``int(D/150)`` pixels, blurred by a Gaussian of std ``int(0.01 D)`` (at least 1/2 pixel), reduced 2x2 by
    area averaging (instead of the reference's Lanczos resampling) and normalised. ``intensity`` in ``[0, 1]``
    controls the length and curvature. The same seed always gives the same kernel.
    """
    if int(size) != size or size < 3:
        raise ValueError(f"size must be an integer >= 3, got {size!r}")
    if not 0 <= intensity <= 1:
        raise ValueError(f"intensity must lie in [0, 1], got {intensity!r}")
    size = int(size)
    canvas = 2 * size
    diag = math.sqrt(2) * canvas
    img = _rasterise(_motion_path(np.random.default_rng(seed), canvas, intensity), canvas)
    width = int(diag / 150)
    if width > 1:
        img = np.asarray(F.max_pool2d(torch.from_numpy(img)[None, None], width, stride=1, padding=width // 2)
                         [0, 0, :canvas, :canvas])
    img = gaussian_filter(img, sigma=max(0.5, int(0.01 * diag)), mode="constant")
    k = img.reshape(size, 2, size, 2).mean(axis=(1, 3))
    return torch.from_numpy(k / k.sum()).to(torch.float32)


def _as_kernel(kernel) -> torch.Tensor:
    k = kernel.detach() if isinstance(kernel, torch.Tensor) else torch.as_tensor(np.asarray(kernel))
    if k.is_complex():
        raise DTypeError(f"kernel must be real, got dtype {k.dtype}")
    while k.dim() > 2 and k.shape[0] == 1:
        k = k[0]
    if k.dim() != 2 or k.numel() == 0:
        raise ShapeError(f"kernel must have shape (k_h, k_w) (or (1, 1, k_h, k_w)), got {tuple(k.shape)}")
    k = k.to("cpu", torch.float64)
    if not torch.isfinite(k).all():
        raise ValueError("kernel contains NaN or Inf values")
    total = float(k.sum())
    if abs(total - 1) > 1e-3:
        if abs(total) < 1e-12:
            raise ValueError("kernel sums to 0; a blur kernel must sum to 1")
        warnings.warn(f"blur kernel sums to {total:.6g}, not 1; it was normalised to sum to 1", UserWarning)
        k = k / total
    return k.to(torch.float32)


# -- padding maps --------------------------------------------------------------------------------------------------
def _axis_index(n: int, before: int, after: int, mode: str) -> torch.Tensor:
    """Source index of every padded position along one axis (reflect/replicate; any pad width)."""
    j = torch.arange(-before, n + after)
    if mode == "replicate" or n == 1:
        return j.clamp(0, n - 1)
    period = 2 * (n - 1)
    m = j.remainder(period)
    return torch.where(m < n, m, period - m)


class Blur(LinearOperator):
    """Blur every channel of ``(B, C, H, W)`` real images with one kernel (module docstring for the conventions).

    Args:
        kernel: ``(k_h, k_w)`` real array/tensor. It must sum to 1; if it does not (tolerance 1e-3) it is
            normalised and a ``UserWarning`` says so. Stored as the float32 buffer ``op.kernel``.
        padding: ``"circular"`` (default), ``"reflect"``, ``"replicate"``, ``"zeros"`` or ``"valid"``.
        image_size: optional ``(H, W)`` (or ``H`` for square images); fixes ``input_shape``/``output_shape``.

    Output ``(B, C, H, W)``, or ``(B, C, H-k_h+1, W-k_w+1)`` for ``"valid"``; same dtype as the input.
    Circular padding adds the closed forms :meth:`normal`, :meth:`wiener` and :meth:`pinv`.
    """

    default_prior = "natural"
    task_family = "deblur"

    def __init__(self, kernel, padding: str = "circular",
                 image_size: Optional[Union[int, Sequence[int]]] = None):
        super().__init__()
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
        self.padding = padding
        self.register_buffer("kernel", _as_kernel(kernel))
        kh, kw = self.kernel.shape
        # pads before/after so that a valid convolution of the padded image is centred at (k_h//2, k_w//2)
        self._pads = ((kh - 1 - kh // 2, kh // 2), (kw - 1 - kw // 2, kw // 2))
        self.input_shape = self.output_shape = (None, None, None)
        if image_size is not None:
            H, W = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
            self._check_size(H, W, "image_size")
            self.input_shape = (None, H, W)
            self.output_shape = (None,) + self._out_size(H, W)

    # -- geometry --------------------------------------------------------------------------------------------------
    def _out_size(self, H: int, W: int) -> Tuple[int, int]:
        kh, kw = self.kernel.shape
        return (H - kh + 1, W - kw + 1) if self.padding == "valid" else (H, W)

    def _check_size(self, H: int, W: int, name: str):
        kh, kw = self.kernel.shape
        if self.padding == "valid" and (H < kh or W < kw):
            raise ShapeError(f"{name} has spatial size ({H}, {W}); padding='valid' needs at least the kernel size "
                             f"({kh}, {kw})")

    def _in_size(self, h: int, w: int) -> Tuple[int, int]:
        kh, kw = self.kernel.shape
        return (h + kh - 1, w + kw - 1) if self.padding == "valid" else (h, w)

    def _work_size(self, H: int, W: int) -> Tuple[int, int]:
        """Size of the periodic domain the FFT works on (the padded image)."""
        if self.padding in ("circular", "valid"):
            return H, W
        (t, b), (l, r) = self._pads
        return H + t + b, W + l + r

    def _crop(self) -> Tuple[int, int]:
        """Offset of the output inside the FFT domain."""
        return (0, 0) if self.padding == "circular" else (self._pads[0][0], self._pads[1][0])

    def spectrum(self, Hp: int, Wp: int, like: torch.Tensor) -> torch.Tensor:
        """rFFT of the kernel wrapped onto the ``Hp x Wp`` torus with its centre at the origin."""
        kh, kw = self.kernel.shape
        rows = (torch.arange(kh, device=like.device) - kh // 2).remainder(Hp)
        cols = (torch.arange(kw, device=like.device) - kw // 2).remainder(Wp)
        big = torch.zeros(Hp, Wp, dtype=like.dtype, device=like.device)
        big.index_put_((rows[:, None].expand(kh, kw), cols[None, :].expand(kh, kw)), self.kernel.to(like.dtype),
                       accumulate=True)
        return torch.fft.rfft2(big)

    # -- padding map P and its transpose ---------------------------------------------------------------------------
    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding in ("circular", "valid"):
            return x
        (t, b), (l, r) = self._pads
        if self.padding == "zeros":
            return F.pad(x, (l, r, t, b))
        H, W = x.shape[-2:]
        ih = _axis_index(H, t, b, self.padding).to(x.device)
        iw = _axis_index(W, l, r, self.padding).to(x.device)
        return x.index_select(-2, ih).index_select(-1, iw)

    def _pad_adjoint(self, z: torch.Tensor, H: int, W: int) -> torch.Tensor:
        if self.padding in ("circular", "valid"):
            return z
        (t, b), (l, r) = self._pads
        if self.padding == "zeros":
            return z[..., t:t + H, l:l + W]
        ih = _axis_index(H, t, b, self.padding).to(z.device)
        iw = _axis_index(W, l, r, self.padding).to(z.device)
        u = z.new_zeros(z.shape[:-1] + (W,)).index_add(z.dim() - 1, iw, z)
        return u.new_zeros(u.shape[:-2] + (H, W)).index_add(u.dim() - 2, ih, u)

    # -- operator --------------------------------------------------------------------------------------------------
    def _check_real(self, t: torch.Tensor, name: str):
        if not t.is_floating_point():
            raise DTypeError(f"{name} must be a real floating-point tensor, got dtype {t.dtype}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        self._check_real(x, "x")
        H, W = x.shape[-2:]
        self._check_size(H, W, "x")
        z = self._pad(x)
        Hp, Wp = z.shape[-2:]
        w = torch.fft.irfft2(torch.fft.rfft2(z) * self.spectrum(Hp, Wp, x), s=(Hp, Wp))
        (i0, j0), (h, w_) = self._crop(), self._out_size(H, W)
        return w[..., i0:i0 + h, j0:j0 + w_]

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        check_tensor(y, "y", self.output_shape, False)
        self._check_real(y, "y")
        H, W = self._in_size(*y.shape[-2:])
        Hp, Wp = self._work_size(H, W)
        i0, j0 = self._crop()
        h, w_ = y.shape[-2:]
        z = F.pad(y, (j0, Wp - w_ - j0, i0, Hp - h - i0))
        z = torch.fft.irfft2(torch.fft.rfft2(z) * self.spectrum(Hp, Wp, y).conj(), s=(Hp, Wp))
        return self._pad_adjoint(z, H, W)

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding != "circular":
            return super().normal(x)
        self.check_input(x)
        self._check_real(x, "x")
        H, W = x.shape[-2:]
        return torch.fft.irfft2(torch.fft.rfft2(x) * self.spectrum(H, W, x).abs().square(), s=(H, W))

    def _require_circular(self, what: str):
        if self.padding != "circular":
            raise ValueError(f"{what} has a closed form only for padding='circular' (this operator uses "
                             f"padding={self.padding!r}); use pinv(y, reg=...) (CG) instead")

    def wiener(self, y: torch.Tensor, reg: float) -> torch.Tensor:
        """Wiener/Tikhonov deconvolution ``argmin ||A x - y||² + reg ||x||²`` in closed form (circular only):
        ``x̂ = F^{-1}[conj(K̂) Ŷ / (|K̂|² + reg)]``. ``reg > 0`` is roughly the noise-to-signal power ratio."""
        self._require_circular("wiener")
        if not reg > 0:
            raise ValueError(f"reg must be > 0, got {reg!r}")
        check_tensor(y, "y", self.output_shape, False)
        self._check_real(y, "y")
        H, W = y.shape[-2:]
        K = self.spectrum(H, W, y)
        return torch.fft.irfft2(torch.fft.rfft2(y) * K.conj() / (K.abs().square() + reg), s=(H, W))

    def pinv(self, y: torch.Tensor, iterations: int = 30, reg: float = 0.0, rcond: float = 1e-3) -> torch.Tensor:
        """Circular padding: closed form, :meth:`wiener` if ``reg > 0``, else the truncated pseudo-inverse that
        inverts the Fourier coefficients with ``|K̂| > rcond · max |K̂|`` and zeroes the rest. Other paddings:
        CG on the (regularised) normal equations with ``iterations`` steps."""
        if self.padding != "circular":
            return super().pinv(y, iterations=iterations, reg=reg)
        if reg > 0:
            return self.wiener(y, reg)
        check_tensor(y, "y", self.output_shape, False)
        self._check_real(y, "y")
        H, W = y.shape[-2:]
        K = self.spectrum(H, W, y)
        keep = K.abs() > rcond * K.abs().max()
        inv = torch.where(keep, 1 / torch.where(keep, K, torch.ones_like(K)), torch.zeros_like(K))
        return torch.fft.irfft2(torch.fft.rfft2(y) * inv, s=(H, W))

    def extra_repr(self) -> str:
        return f"kernel_size={tuple(self.kernel.shape)}, padding={self.padding!r}"
