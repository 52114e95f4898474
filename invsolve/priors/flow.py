"""Flow-matching priors: rectified-flow / conditional-OT models with velocity prediction.

Convention (diffusers ``FlowMatchEulerDiscreteScheduler``, Stable Diffusion 3, Lipman et al. 2023, Liu et al. 2023):
a flow time ``t in [0, 1]`` (the scheduler's ``sigma``; the network's timestep is ``t * num_train_timesteps``),

    x_t = (1 - t) x0 + t eps,        v_theta(x_t, t) ~ E[eps - x0 | x_t],

so the flow's Tweedie estimate is ``x0_hat = x_t - t v`` and the noise estimate ``eps_hat = x_t + (1 - t) v``.

The :class:`~invsolve.priors.base.Prior` contract follows from two changes of variables (ALGORITHMS.md notation):

* **VE view**: ``x_VE = x_t / (1 - t)`` is ``x0 + sigma eps`` with ``sigma = t / (1 - t)``
  (``t = sigma / (1 + sigma)``), so ``denoise(x, sigma) = x_t - t v(x_t, t)`` with ``x_t = x / (1 + sigma)``.
  Any ``sigma >= 0`` is exact: the flow reaches pure noise at ``t = 1`` (``sigma = inf``).
* **VP view**: ``x_VP = x_t / sqrt((1 - t)^2 + t^2)`` is ``sqrt(abar) x0 + sqrt(1 - abar) eps`` with
  ``abar = (1 - t)^2 / ((1 - t)^2 + t^2)``. The integer timesteps ``k = 0..N-1`` are the scheduler's training times
  ``t_k = shift(k + 1) / N`` (``shift(s) = shift s / (1 + (shift - 1) s)``, ``t = 1`` at ``k = N - 1``); because the VP
  table needs ``abar > 0`` the last level is moved to ``t = 1 - (1 - t_{N-2}) / 10`` (``abar ~ 1e-8`` for ``N = 1000``:
  pure noise for every practical purpose). ``tweedie`` computes ``x0_hat = x_t - t v`` directly in flow coordinates
  (no division by ``sqrt(abar)``), so DDS, DPS and DDNM run on a flow prior unchanged.

Deterministic DDIM in the VP view is the flow's Euler step (both move on the straight line through ``x0_hat`` and
``eps_hat``), so ``sample_ddim`` draws the same samples as ``FlowMatchEulerDiscreteScheduler`` on the same grid.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..errors import InvsolveError
from .ve import DenoiserPrior, network_output

Tensor = torch.Tensor


def shifted_times(num_train_timesteps: int, shift: float = 1.0) -> Tensor:
    """The scheduler's training times ``t_k = shift s / (1 + (shift - 1) s)``, ``s = (k + 1) / N``; float64 ``(N,)``."""
    s = torch.arange(1, num_train_timesteps + 1, dtype=torch.float64) / num_train_timesteps
    return shift * s / (1 + (shift - 1) * s)


class FlowPrior(DenoiserPrior):
    """A velocity-prediction flow-matching network behind the denoiser contract (module docstring).

    Args:
        net: module called as ``net(x_t, t * num_train_timesteps)`` (diffusers ``UNet2DModel``: ``.sample``);
            returns ``v ~ eps - x0`` ``(B, >= C, H, W)`` (extra channels dropped).
        image_size, channels: prior-space shape.
        num_train_timesteps: ``N``, the scaling of the network's timestep input (diffusers: 1000).
        shift: the scheduler's time shift (1: none).
        Remaining arguments: see :class:`~invsolve.priors.ve.DenoiserPrior` (prior space is ``[-1, 1]``).
    """

    def __init__(self, net: torch.nn.Module, *, image_size: Sequence[int], channels: int,
                 num_train_timesteps: int = 1000, shift: float = 1.0, **kwargs):
        if not (isinstance(num_train_timesteps, int) and num_train_timesteps >= 2):
            raise ValueError(f"num_train_timesteps must be an integer >= 2, got {num_train_timesteps!r}")
        if not shift > 0:
            raise ValueError(f"shift must be > 0, got {shift!r}")
        t = shifted_times(num_train_timesteps, shift)
        t[-1] = 1 - (1 - t[-2]) / 10  # VP table needs abar > 0 at the top (module docstring)
        kwargs.setdefault("model_range", (-1.0, 1.0))
        super().__init__(t / (1 - t), image_size, channels, **kwargs)
        self.net = net.eval().requires_grad_(False)
        self.flow_timesteps = int(num_train_timesteps)
        self.shift = float(shift)

    # -- the network in flow coordinates ---------------------------------------------------------
    def _velocity_net(self, x_t: Tensor, t: Tensor) -> Tensor:
        """Raw ``v_theta(x_t, t)`` for flow times ``t`` ``(B,)`` in ``[0, 1]`` (no NFE count)."""
        return network_output(self.net, x_t, t.to(torch.float64) * self.flow_timesteps)[:, :self.channels]

    def velocity(self, x_t: Tensor, t) -> Tensor:
        """``v_theta(x_t, t)`` in flow coordinates (``t`` a float or ``(B,)`` in ``[0, 1]``); one network call."""
        t = torch.as_tensor(t, device=x_t.device, dtype=torch.float64)
        if t.dim() == 0:
            t = t.expand(x_t.shape[0])
        self.nfe += 1
        return self._chunked(self._velocity_net, x_t, t)

    def _chunked(self, fn, x: Tensor, t: Tensor) -> Tensor:
        if self.max_batch is None or x.shape[0] <= self.max_batch:
            return fn(x, t)
        return torch.cat([fn(xc, tc) for xc, tc in zip(x.split(self.max_batch), t.split(self.max_batch))])

    @staticmethod
    def _b(v: Tensor, like: Tensor) -> Tensor:
        return v.to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))

    # -- VE view -----------------------------------------------------------------------------------
    def _denoise_net(self, x: Tensor, sigma: Tensor) -> Tensor:
        t = sigma / (1 + sigma)
        x_t = x / self._b(1 + sigma, x)
        return x_t - self._b(t, x) * self._velocity_net(x_t, t)

    # -- VP view -----------------------------------------------------------------------------------
    def _flow_time(self, t_vp: Tensor) -> Tensor:
        s = self.sigma_at(t_vp)
        return s / (1 + s)

    def _x0_eps(self, x_vp: Tensor, t_vp: Tensor):
        tf = self._flow_time(t_vp)
        x_t = x_vp * self._b(((1 - tf) ** 2 + tf**2).sqrt(), x_vp)
        v = self._velocity_net(x_t, tf)
        return x_t - self._b(tf, x_t) * v, x_t + self._b(1 - tf, x_t) * v

    def _eps_net(self, x_vp: Tensor, t: Tensor) -> Tensor:
        return self._x0_eps(x_vp, t)[1]

    def tweedie(self, x: Tensor, t):
        """``(x0_hat, eps_hat)`` of a VP state at timesteps ``t``, computed in flow coordinates; one network call."""
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        self.nfe += 1
        both = [self._x0_eps(xc, tc) for xc, tc in
                zip(x.split(self.max_batch or x.shape[0]), t.split(self.max_batch or x.shape[0]))]
        return torch.cat([b[0] for b in both]), torch.cat([b[1] for b in both])


def flow_prior_from_diffusers(unet, scheduler_config: dict, **kwargs) -> FlowPrior:
    """A :class:`FlowPrior` from a diffusers ``UNet2DModel`` and a ``FlowMatchEulerDiscreteScheduler`` config.

    Dynamic shifting (resolution-dependent ``mu``) and non-linear sigma spacings are sampling-time options of
    large latent models; a prior needs one fixed time map, so they are rejected.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler

    cfg = FlowMatchEulerDiscreteScheduler.from_config(scheduler_config).config
    for opt in ("use_dynamic_shifting", "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas",
                "invert_sigmas"):
        if cfg.get(opt):
            raise InvsolveError(f"FlowMatchEulerDiscreteScheduler option {opt}=True is not supported by a flow "
                                f"prior (it needs the fixed training time map t -> shift t / (1 + (shift - 1) t))")
    if cfg.get("shift_terminal"):
        raise InvsolveError("FlowMatchEulerDiscreteScheduler option shift_terminal is not supported by a flow prior")
    size = unet.config.sample_size
    size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
    return FlowPrior(unet, image_size=size, channels=unet.config.in_channels,
                     num_train_timesteps=int(cfg.num_train_timesteps), shift=float(cfg.shift), **kwargs)


__all__ = ["FlowPrior", "flow_prior_from_diffusers", "shifted_times"]
