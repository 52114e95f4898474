"""2-D incompressible Navier–Stokes on the torus and the EnKG initial-state inversion operator.

Vorticity form on ``[0, 2π]^2`` (the EnKG paper's setting, Zheng et al., arXiv 2409.20175)::

    w_t + u·∇w = ν Δw + f,     u = (ψ_y, -ψ_x),     -Δψ = w,     ν = 1/Re.

Axis convention: the grid is ``x_i = 2π i/s`` along the second-to-last tensor axis and ``y_j = 2π j/s`` along the
last axis (``meshgrid(..., indexing="ij")``); the default Kolmogorov forcing is ``f(x, y) = -4 cos(4y)``.

Numerics (pseudo-spectral, batched, any device):

* ``rfft2`` on the last two axes; the stream function has a zero mean mode. The mean of ``w`` does not move the
  flow and is conserved (physical vorticity on the torus has zero mean; pass zero-mean fields).
* 2/3-rule de-aliasing of the quadratic term: ``u·∇w`` is formed from the modes ``|k_x|, |k_y| <= s/3`` of ``w``
  and only those modes of the product are kept, so the truncated term is alias-free. (InverseBench masks the
  disc ``|k|^2 <= 2 (s/3)^2``, which lets some corner modes alias; we use the square mask.)
* Crank–Nicolson for ``νΔw`` and Heun (2-stage, trapezoidal) for ``f - u·∇w``: second order in time.
* Adaptive step, as in the reference: ``dt = min(0.5 h / max|u|, 0.5 h^2 / mu)`` with ``h = 1/s`` (the reference's
  ``h = 1/128`` at ``s = 128``: the grid spacing of a unit square, i.e. a CFL number of about ``0.5/(2π)`` in the
  physical spacing ``2π/s``) and ``mu = ν sqrt(max|f|)`` (``= 0.01`` for the defaults; ``mu = ν`` without forcing).
  Unlike the reference, which takes one step size for the whole batch, the step is chosen **per sample**, so an
  item's trajectory never depends on the rest of the batch. The last step is truncated to land on ``T`` exactly.
  ``dt=`` gives a fixed step instead (InverseBench baselines use ``dt = 0.002``).
* Float32 by default (the dtype of the input); float64 works. NaN/Inf input or a solution that blows up raises
  :class:`NonFiniteVorticityError` naming the items.

Gradients: none are needed (EnKG is derivative-free). Nothing blocks autograd either: every step is a differentiable
torch op, the step sizes are detached (the gradient is that of the discrete map with its step sizes held fixed), and
the memory grows with the number of steps (hundreds per time unit).
"""
from __future__ import annotations

import math
import numbers
from typing import Callable, Optional, Union

import torch

from ..errors import InvsolveError, ShapeError
from .base import Operator

__all__ = [
    "NavierStokes2D",
    "NonFiniteVorticityError",
    "kolmogorov_forcing",
    "solve_vorticity",
    "taylor_green_vorticity",
    "torus_grid",
]

Forcing = Union[str, None, torch.Tensor, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]

CFL = 0.5  # the factor 0.5 in both step-size limits


class NonFiniteVorticityError(InvsolveError, FloatingPointError):
    """The Navier–Stokes input or solution contains NaN/Inf."""


def torus_grid(size: int, device=None, dtype=torch.float32):
    """``(x, y)``, each ``(size, size)``: grid ``2π i/size`` on ``[0, 2π)``, ``indexing="ij"`` (y = last axis)."""
    g = torch.arange(size, device=device, dtype=torch.float64) * (2 * math.pi / size)
    x, y = torch.meshgrid(g, g, indexing="ij")
    return x.to(dtype), y.to(dtype)


def kolmogorov_forcing(size: int, amplitude: float = 4.0, wavenumber: int = 4, device=None, dtype=torch.float32):
    """Kolmogorov forcing ``f(x, y) = -amplitude cos(wavenumber y)`` on the ``size x size`` torus grid."""
    _, y = torus_grid(size, device, torch.float64)
    return (-amplitude * torch.cos(wavenumber * y)).to(dtype)


def taylor_green_vorticity(size: int, k: int = 1, amplitude: float = 1.0, device=None, dtype=torch.float32):
    """Taylor–Green vorticity ``w0 = amplitude sin(kx) sin(ky)`` (``(size, size)``).

    Its stream function is ``ψ = w0 / (2k^2)``, so ``u·∇w = 0`` and without forcing ``w(t) = w0 exp(-2ν k^2 t)``.
    """
    x, y = torus_grid(size, device, torch.float64)
    return (amplitude * torch.sin(k * x) * torch.sin(k * y)).to(dtype)


def _forcing_field(forcing: Forcing, size: int, device, dtype) -> Optional[torch.Tensor]:
    """Resolve a forcing spec to a ``(size, size)`` tensor, or ``None``."""
    if forcing is None:
        return None
    if isinstance(forcing, str):
        if forcing != "kolmogorov":
            raise ValueError(f"forcing must be 'kolmogorov', None, an (s, s) tensor or f(x, y); got {forcing!r}")
        return kolmogorov_forcing(size, device=device, dtype=dtype)
    if callable(forcing) and not isinstance(forcing, torch.Tensor):
        x, y = torus_grid(size, device, torch.float64)
        f = torch.as_tensor(forcing(x, y))
    else:
        f = torch.as_tensor(forcing)
    if tuple(f.shape) != (size, size):
        raise ShapeError(f"forcing has shape {tuple(f.shape)}, expected ({size}, {size}) to match the vorticity grid")
    return f.to(device=device, dtype=dtype)


class _Spectral:
    """Wavenumbers and masks for the ``rfft2`` layout ``(s, s//2 + 1)``."""

    def __init__(self, s: int, device, real_dtype):
        kx = torch.fft.fftfreq(s, 1.0 / s, device=device, dtype=real_dtype)[:, None]
        ky = torch.fft.rfftfreq(s, 1.0 / s, device=device, dtype=real_dtype)[None, :]
        self.k2 = kx**2 + ky**2
        self.inv_k2 = torch.where(self.k2 > 0, 1.0 / self.k2.clamp_min(1.0), torch.zeros_like(self.k2))
        cut = s / 3.0
        self.mask = ((kx.abs() <= cut) & (ky.abs() <= cut)).to(real_dtype)
        self.ikx, self.iky = 1j * kx, 1j * ky
        self.s = s

    def nonlinear(self, w_hat: torch.Tensor):
        """De-aliased ``(u·∇w)^`` and the per-sample maximum speed ``max|u|``."""
        w_hat = w_hat * self.mask
        psi_hat = w_hat * self.inv_k2
        fields = torch.stack(
            [self.iky * psi_hat, -self.ikx * psi_hat, self.ikx * w_hat, self.iky * w_hat], dim=1
        )  # u, v, w_x, w_y
        u, v, wx, wy = torch.fft.irfft2(fields, s=(self.s, self.s)).unbind(dim=1)
        n_hat = torch.fft.rfft2(u * wx + v * wy) * self.mask
        n_hat[:, 0, 0] = 0  # the mean of u·∇w = ∇·(uw) is zero
        speed = torch.sqrt(u * u + v * v).amax(dim=(-2, -1))
        return n_hat, speed


def solve_vorticity(
    w0: torch.Tensor,
    T: float,
    *,
    Re: float = 200.0,
    forcing: Forcing = "kolmogorov",
    dt: Optional[float] = None,
    max_steps: int = 1_000_000,
) -> torch.Tensor:
    """Integrate the vorticity equation from ``w0`` to time ``T``.

    Args:
        w0: vorticity ``(..., s, s)`` on ``[0, 2π)^2`` (``s`` even), real float32/float64, raw units (the
            benchmark data lie in about [-10, 10]); any leading axes are batch axes.
        T: final time (``T = 0`` returns a copy).
        Re: Reynolds number, ``ν = 1/Re``.
        forcing: ``"kolmogorov"`` (``-4 cos(4y)``), ``None``, a ``(s, s)`` tensor, or ``f(x, y)`` on the
            :func:`torus_grid` (float64 tensors) returning ``(s, s)``. Time-independent.
        dt: fixed step (the last one truncated to hit ``T``); ``None``: adaptive per sample (module docstring).
        max_steps: safety limit on steps per call.

    Returns:
        ``w(T)`` with the shape and dtype of ``w0``.
    """
    if not isinstance(w0, torch.Tensor) or w0.is_complex() or not w0.is_floating_point():
        raise TypeError(f"w0 must be a real floating torch.Tensor, got {getattr(w0, 'dtype', type(w0).__name__)}")
    if w0.dim() < 2 or w0.shape[-1] != w0.shape[-2] or w0.shape[-1] % 2:
        raise ShapeError(f"w0 has shape {tuple(w0.shape)}, expected (..., s, s) with an even grid size s")
    if T < 0 or (dt is not None and not dt > 0):
        raise ValueError(f"need T >= 0 and dt > 0 (or None); got T={T}, dt={dt}")
    shape, s = w0.shape, w0.shape[-1]
    w = w0.reshape(-1, s, s)
    bad = (~torch.isfinite(w)).flatten(1).any(dim=1)
    if bool(bad.any()):
        raise NonFiniteVorticityError(f"w0 contains NaN/Inf in batch items {bad.nonzero().flatten().tolist()}")

    device, dtype = w.device, w.dtype
    if w.shape[0] == 0:
        return w0.clone()
    nu = 1.0 / Re
    sp = _Spectral(s, device, dtype)
    f = _forcing_field(forcing, s, device, dtype)
    f_hat = torch.fft.rfft2(f) if f is not None else 0.0
    fmax = float(f.abs().max()) if f is not None else 0.0
    h = 1.0 / s
    mu = nu * math.sqrt(fmax) if fmax > 0 else nu
    dt_diffusive = CFL * h * h / mu

    time_dtype = torch.float32 if device.type == "mps" else torch.float64
    # Items that reach T leave the working batch (adaptive steps differ per item, and a fast-moving item would
    # otherwise keep every finished one in the FFTs); their final states are put back in order at the end.
    idx = torch.arange(w.shape[0], device=device)
    t = torch.zeros(w.shape[0], dtype=time_dtype, device=device)
    w_hat = torch.fft.rfft2(w)
    done_hat, done_idx = [], []
    for step in range(max_steps + 1):
        n1, speed = sp.nonlinear(w_hat)
        finished = (T - t) <= 1e-9 * max(T, 1.0)
        any_finished, all_finished, finite = torch.stack(
            [finished.any(), finished.all(), torch.isfinite(speed).all()]).tolist()
        if not finite:
            items = idx[~torch.isfinite(speed)].tolist()
            raise NonFiniteVorticityError(
                f"the Navier–Stokes solution became NaN/Inf for batch items {items} before t = {T} (step {step}); "
                "the input vorticity is probably far outside the data range (about [-10, 10]) or dt is too large"
            )
        if any_finished:
            done_hat.append(w_hat[finished])
            done_idx.append(idx[finished])
            if all_finished:
                break
            keep = ~finished
            w_hat, n1, speed, t, idx = w_hat[keep], n1[keep], speed[keep], t[keep], idx[keep]
        if step == max_steps:
            raise NonFiniteVorticityError(
                f"Navier–Stokes needed more than max_steps={max_steps} steps to reach t = {T} "
                f"(max speed {float(speed.max()):.3g}); the input vorticity is far outside the data range (about "
                "[-10, 10] raw), or raise max_steps"
            )
        if dt is None:
            advective = CFL * h / speed.detach().to(time_dtype).clamp_min(1e-12)
            step_dt = torch.minimum(advective, torch.full_like(t, dt_diffusive))
        else:
            step_dt = torch.full_like(t, dt)
        step_dt = torch.minimum(step_dt, T - t)
        t = t + step_dt
        tau = step_dt.to(dtype)[:, None, None]
        half_diffusion = 0.5 * nu * tau * sp.k2
        explicit = (1 - half_diffusion) * w_hat
        implicit = 1 / (1 + half_diffusion)
        g1 = f_hat - n1
        w_pred = (explicit + tau * g1) * implicit
        n2, _ = sp.nonlinear(w_pred)
        w_hat = (explicit + tau * (g1 + (f_hat - n2)) * 0.5) * implicit
    order = torch.argsort(torch.cat(done_idx))
    w_hat = torch.cat(done_hat)[order]
    return torch.fft.irfft2(w_hat, s=(s, s)).reshape(shape)


class NavierStokes2D(Operator):
    """Navier–Stokes initial-state inversion: ``y = S(x·scale)(T)[::stride, ::stride]`` (EnKG / InverseBench).

    Input ``x``: ``(B, 1, s, s)`` initial vorticity in **prior units** (raw vorticity divided by ``scale``; the
    ``ns-vorticity`` prior's data are about [-1, 1]), real float32 (float64 works and is kept).
    Output: the vorticity at time ``T`` in **raw units** (about [-10, 10]) at every ``stride``-th grid point,
    ``(B, 1, ceil(s/stride), ceil(s/stride))``, same dtype and device as ``x``. Measurement noise (``sigma in
    {0, 1, 2}`` raw units in the benchmark) is added by the caller.

    Nonlinear (``is_linear = False``), no gradient needed; batched, each item integrated with its own adaptive
    step (see :func:`solve_vorticity` for the numerics and ``forcing``/``dt``/``Re`` semantics).

    ``max_steps`` bounds the time steps of one call (held-out fields in the data range need 300-1000 at ``T = 1``): an
    input far outside the data range makes the flow fast and the adaptive step tiny, and without a bound one such
    item (e.g. a diverging sampler iterate) can keep the solver busy for hours before failing. Past the bound
    :class:`NonFiniteVorticityError` is raised.
    """

    is_linear = False
    is_complex = False
    default_prior = "ns-vorticity"
    task_family = "ns"

    def __init__(
        self,
        image_size: int = 64,
        *,
        T: float = 1.0,
        stride: int = 2,
        scale: float = 10.0,
        Re: float = 200.0,
        forcing: Forcing = "kolmogorov",
        dt: Optional[float] = None,
        max_steps: int = 100_000,
    ):
        super().__init__()
        if isinstance(max_steps, bool) or not isinstance(max_steps, numbers.Integral) or max_steps < 1:
            raise ValueError(f"max_steps must be a positive integer, got {max_steps!r}")
        self.max_steps = int(max_steps)
        if image_size % 2 or image_size < 4:
            raise ShapeError(f"image_size must be an even integer >= 4, got {image_size}")
        if stride < 1:
            raise ValueError(f"stride must be a positive integer, got {stride}")
        self.image_size, self.T, self.stride, self.scale, self.Re, self.dt = image_size, T, stride, scale, Re, dt
        f = _forcing_field(forcing, image_size, None, torch.float64)
        self.register_buffer("forcing", f, persistent=False)
        m = len(range(0, image_size, stride))
        self.input_shape = (1, image_size, image_size)
        self.output_shape = (1, m, m)

    def simulate(self, x: torch.Tensor) -> torch.Tensor:
        """Full vorticity field at time ``T`` (raw units), ``(B, 1, s, s)``; ``x`` in prior units."""
        self.check_input(x)
        f = None if self.forcing is None else self.forcing.to(x.dtype)
        return solve_vorticity(x * self.scale, self.T, Re=self.Re, forcing=f, dt=self.dt, max_steps=self.max_steps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.simulate(x)[..., :: self.stride, :: self.stride]

    def localization(self, radius: float) -> torch.Tensor:
        """Covariance-localisation taper for ensemble-Kalman updates (EnKG ``localize=radius``): Gaspari–Cohn in
        the wrap-around distance (grid cells) between an initial-state pixel and an observed point, 0 beyond
        ``radius``. ``(s*s, m*m)`` float64. The flow moves features during ``[0, T]``, so ``radius`` should exceed
        the distance they travel (about ``T max|u| s / 2π`` cells)."""
        from ..samplers.localization import periodic_grid_taper

        return periodic_grid_taper(self.image_size, self.stride, radius)

    def extra_repr(self) -> str:
        return (
            f"image_size={self.image_size}, T={self.T}, stride={self.stride}, scale={self.scale}, Re={self.Re}, "
            f"dt={'adaptive' if self.dt is None else self.dt}, max_steps={self.max_steps}"
        )
