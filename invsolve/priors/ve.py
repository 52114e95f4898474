"""Priors whose network is natively a VE denoiser: score-SDE VE models and EDM-preconditioned networks.

:class:`DenoiserPrior` is the base: a subclass implements ``_denoise_net(x, sigma) = D(x; sigma) ~ E[x0 | x]`` for
``x = x0 + sigma n`` and gets the rest of the :class:`~invsolve.priors.base.Prior` contract:

* ``denoise(x, sigma)`` calls the network directly (no detour through timesteps);
* the **VP view** (``alpha_bar``, ``eps``, ``tweedie``) comes from the VP <-> VE change of variables
  (VP: ``x_t = sqrt(abar) x0 + sqrt(1 - abar) eps``; VE: ``x = x0 + sigma n``): a table of ``N`` increasing noise
  levels ``sigma_t`` defines ``abar_t = 1 / (1 + sigma_t^2)``, and for a VP state ``x_t``

      x = x_t / sqrt(abar_t) = x_t sqrt(1 + sigma_t^2),   eps(x_t, t) = (x - D(x; sigma_t)) / sigma_t,

  so ``tweedie(x_t, t)`` returns exactly ``D(x; sigma_t)``. Fractional ``t`` interpolates ``log sigma`` linearly.

  Samplers written in DDIM form (DDS) therefore run unchanged on these priors. For DDS this *is* its VE variant
  (the paper's "DDS VE"): dividing its VP renoising rule by ``sqrt(abar_next)`` gives
  ``x_next = x0c + sigma_next (eta n + sqrt(1 - eta^2) e_hat)`` with ``e_hat = (x - x0_hat) / sigma``, on the
  noise levels ``sigma_{tau_k}`` of the table. The one difference is the start: DDS draws ``x_T ~ N(0, I)`` in VP
  space, i.e. ``N(0, (1 + sigma_max^2) I)`` instead of ``N(0, sigma_max^2 I)``.

Prior space is the network's value range ``model_range`` ((0, 1) for the score-SDE VE models, whose diffusers
pipeline clamps samples to [0, 1]; (-1, 1) for EDM); operator-domain ``data_range`` maps onto it.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch

from ..errors import InvsolveError
from .base import Prior

Tensor = torch.Tensor


def geometric_sigmas(sigma_min: float, sigma_max: float, n: int) -> Tensor:
    """``n`` noise levels from ``sigma_min`` to ``sigma_max``, evenly spaced in ``log sigma`` (float64)."""
    return torch.exp(torch.linspace(math.log(sigma_min), math.log(sigma_max), n, dtype=torch.float64))


def network_output(net, x: Tensor, c_noise: Tensor) -> Tensor:
    """``net(x, c_noise)`` in the network's dtype; diffusers outputs (``.sample``) are unwrapped."""
    p = next(net.parameters(), None)
    dtype = p.dtype if p is not None else x.dtype
    out = net(x.to(dtype), c_noise.to(torch.float32))
    return getattr(out, "sample", out).to(x.dtype)


class DenoiserPrior(Prior):
    """Base for priors whose network is a VE denoiser ``D(x; sigma)``; the VP view is derived (module docstring).

    Args:
        sigmas: increasing noise levels ``(N,)`` that define the discrete VP view (``abar = 1 / (1 + sigma^2)``).
        model_range: prior-space value range of real images (``data_range`` maps onto it).
        Remaining arguments: see :class:`~invsolve.priors.base.Prior`.
    """

    def __init__(self, sigmas: Tensor, image_size: Sequence[int], channels: int, *,
                 model_range: Tuple[float, float] = (-1.0, 1.0), is_complex: bool = False,
                 data_range=(0.0, 1.0), name: str = "denoiser", max_batch: Optional[int] = None,
                 card: Optional[dict] = None):
        s = torch.as_tensor(sigmas, dtype=torch.float64)
        if s.dim() != 1 or len(s) < 2 or not bool((s > 0).all()) or not bool((s[1:] > s[:-1]).all()):
            raise ValueError("sigmas must be a 1-D increasing sequence of at least 2 positive noise levels")
        super().__init__(1 / (1 + s**2), image_size, channels, is_complex=is_complex, data_range=data_range,
                         name=name, max_batch=max_batch, card=card)
        self.model_range = (float(model_range[0]), float(model_range[1]))

    # -- network ----------------------------------------------------------------------------
    def _denoise_net(self, x: Tensor, sigma: Tensor) -> Tensor:  # pragma: no cover - abstract
        """``D(x; sigma)`` for VE-scaled ``x`` ``(B, C, H, W)`` and noise levels ``sigma`` ``(B,)`` (float64)."""
        raise NotImplementedError

    def denoise(self, x: Tensor, sigma) -> Tensor:
        """``D(x; sigma)``, one network call (chunked by ``max_batch``); ``D(x; 0) = x``."""
        sigma = torch.as_tensor(sigma, device=x.device, dtype=torch.float64)
        if sigma.dim() == 0:
            sigma = sigma.expand(x.shape[0])
        self.nfe += 1
        if self.max_batch is None or x.shape[0] <= self.max_batch:
            return self._denoise_or_identity(x, sigma)
        return torch.cat([self._denoise_or_identity(xc, sc) for xc, sc in
                          zip(x.split(self.max_batch), sigma.split(self.max_batch))])

    def _denoise_or_identity(self, x: Tensor, sigma: Tensor) -> Tensor:
        clean = (sigma <= 0).reshape(-1, *([1] * (x.dim() - 1)))
        d = self._denoise_net(x, torch.where(sigma > 0, sigma, self.log_sigmas[0].exp()))
        return torch.where(clean, x, d)

    # -- VP view ----------------------------------------------------------------------------
    def sigma_at(self, t: Tensor) -> Tensor:
        """``sigma_t`` (float64) at fractional timesteps (``log sigma`` interpolated; exact at integers)."""
        ls = self.log_sigmas.to(t.device)
        t = t.to(torch.float64).clamp(0, len(ls) - 1)
        lo = t.floor().long().clamp(max=len(ls) - 2)
        w = t - lo
        return torch.exp((1 - w) * ls[lo] + w * ls[lo + 1])

    def _eps_net(self, x_vp: Tensor, t: Tensor) -> Tensor:
        s = self.sigma_at(t)
        sb = s.to(x_vp.dtype).reshape(-1, *([1] * (x_vp.dim() - 1)))
        x = x_vp * (1 + sb**2).sqrt()
        return (x - self._denoise_net(x, s)) / sb

    # -- domain mapping ---------------------------------------------------------------------
    def to_prior(self, z: Tensor) -> Tensor:
        x = super().to_prior(z)
        if self.is_complex:
            return x
        lo, hi = self.model_range
        return (x + 1) / 2 * (hi - lo) + lo

    def from_prior(self, x: Tensor) -> Tensor:
        if not self.is_complex:
            lo, hi = self.model_range
            x = (x - lo) / (hi - lo) * 2 - 1
        return super().from_prior(x)


class VEPrior(DenoiserPrior):
    """A score-SDE VE model (NCSN++ style): ``net(x, sigma)`` with VE-scaled ``x`` and the noise level itself.

    Args:
        net: module called as ``net(x, sigma)``; diffusers outputs are unwrapped (``.sample``).
        sigma_min, sigma_max, num_sigmas: the geometric noise-level table of the training SDE.
        output: what the network returns — ``"score"`` (``grad_x log p_sigma(x)``, so
            ``D = x + sigma^2 * out``; the diffusers ``ScoreSdeVeScheduler`` convention: a ``UNet2DModel`` with
            ``time_embedding_type="fourier"`` takes ``sigma`` as its timestep (it embeds ``log sigma``) and divides
            its last layer by ``sigma``), ``"eps"`` (``D = x - sigma * out``) or ``"x0"`` (``D = out``).
        model_range: value range the model was trained on ((0, 1) for the score-SDE VE image models).
    """

    OUTPUTS = ("score", "eps", "x0")

    def __init__(self, net: torch.nn.Module, *, sigma_min: float, sigma_max: float, image_size: Sequence[int],
                 channels: int, num_sigmas: int = 1000, output: str = "score",
                 model_range: Tuple[float, float] = (0.0, 1.0), **kwargs):
        if output not in self.OUTPUTS:
            raise ValueError(f"output must be one of {self.OUTPUTS}, got {output!r}")
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        super().__init__(geometric_sigmas(sigma_min, sigma_max, num_sigmas), image_size, channels,
                         model_range=model_range, **kwargs)
        self.net = net.eval().requires_grad_(False)
        self.output = output

    def _denoise_net(self, x, sigma):
        out = network_output(self.net, x, sigma)[:, :self.channels]
        s = sigma.to(x.dtype).reshape(-1, 1, 1, 1)
        if self.output == "score":
            return x + s**2 * out
        if self.output == "eps":
            return x - s * out
        return out


def ve_prior_from_diffusers(unet, scheduler_config: dict, **kwargs) -> VEPrior:
    """A :class:`VEPrior` from a diffusers ``UNet2DModel`` and a ``ScoreSdeVeScheduler`` config.

    The table has ``num_train_timesteps`` levels from ``sigma_min`` to ``sigma_max`` (the scheduler's
    ``discrete_sigmas``). The model range defaults to (0, 1), where ``ScoreSdeVePipeline`` puts its samples.
    """
    from diffusers import ScoreSdeVeScheduler

    cfg = ScoreSdeVeScheduler.from_config(scheduler_config).config
    if unet.config.time_embedding_type != "fourier":
        raise InvsolveError(f"a ScoreSdeVeScheduler model must be conditioned on sigma (time_embedding_type "
                            f"'fourier'); this UNet2DModel uses {unet.config.time_embedding_type!r}")
    size = unet.config.sample_size
    size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
    kwargs.setdefault("model_range", (0.0, 1.0))
    return VEPrior(unet, sigma_min=cfg.sigma_min, sigma_max=cfg.sigma_max, num_sigmas=cfg.num_train_timesteps,
                   image_size=size, channels=unet.config.in_channels, output="score", **kwargs)


# ---------------------------------------------------------------------------------------------- EDM
def vp_sigma(t: Tensor, beta_d: float = 19.9, beta_min: float = 0.1) -> Tensor:
    """Noise level of the VP SDE at continuous time ``t``: ``sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)``."""
    return torch.sqrt(torch.expm1(0.5 * beta_d * t**2 + beta_min * t))


def vp_time(sigma: Tensor, beta_d: float = 19.9, beta_min: float = 0.1) -> Tensor:
    """Inverse of :func:`vp_sigma`: ``(sqrt(beta_min^2 + 2 beta_d log(1 + sigma^2)) - beta_min) / beta_d``."""
    return (torch.sqrt(beta_min**2 + 2 * beta_d * torch.log1p(sigma**2)) - beta_min) / beta_d


class EDMPrior(DenoiserPrior):
    """A raw network ``F`` behind EDM preconditioning: ``D(x; s) = c_skip x + c_out F(c_in x, c_noise)``.

    ``precond`` (Karras et al. 2022, Table 1):

    * ``"edm"``: ``c_skip = sd^2 / (s^2 + sd^2)``, ``c_out = s sd / sqrt(s^2 + sd^2)``, ``c_in = 1 / sqrt(s^2 + sd^2)``,
      ``c_noise = ln(s) / 4`` (``sd = sigma_data``, 0.5);
    * ``"vp"``: ``c_skip = 1``, ``c_out = -s``, ``c_in = 1 / sqrt(s^2 + 1)``, ``c_noise = (M - 1) t(s)`` with ``t(s)``
      the VP-SDE time of noise level ``s`` (:func:`vp_time`; ``beta_d`` 19.9, ``beta_min`` 0.1, ``M`` 1000) —
      e.g. a DDPM epsilon network converted to EDM form;
    * ``"ve"``: ``c_skip = 1``, ``c_out = s``, ``c_in = 1``, ``c_noise = ln(s / 2)``.

    Args:
        net: ``net(x, c_noise) -> (B, >=C, H, W)`` (diffusers outputs unwrapped; extra channels dropped).
        sigma_min, sigma_max: table range (defaults: edm 0.002..80, ve 0.02..100, vp ``t`` from ``epsilon_t`` to 1).
        num_sigmas: table length (geometric for edm/ve; evenly spaced VP times for vp, so that integer VP
            timesteps ``t`` give ``c_noise ~ t``, as for the DDPM network behind a VP-preconditioned model).
        Remaining arguments: see :class:`DenoiserPrior`.
    """

    PRECONDS = ("edm", "vp", "ve")

    def __init__(self, net: torch.nn.Module, *, image_size: Sequence[int], channels: int, precond: str = "edm",
                 sigma_data: float = 0.5, sigma_min: Optional[float] = None, sigma_max: Optional[float] = None,
                 num_sigmas: int = 1000, beta_d: float = 19.9, beta_min: float = 0.1, M: int = 1000,
                 epsilon_t: float = 1e-5, **kwargs):
        if precond not in self.PRECONDS:
            raise ValueError(f"precond must be one of {self.PRECONDS}, got {precond!r}")
        if precond == "vp":
            def time(sig, default):
                return default if sig is None else float(vp_time(torch.tensor(sig, dtype=torch.float64), beta_d,
                                                                 beta_min))

            t = torch.linspace(time(sigma_min, epsilon_t), time(sigma_max, 1.0), num_sigmas, dtype=torch.float64)
            table = vp_sigma(t, beta_d, beta_min)
        else:
            lo, hi = (0.002, 80.0) if precond == "edm" else (0.02, 100.0)
            table = geometric_sigmas(lo if sigma_min is None else sigma_min, hi if sigma_max is None else sigma_max,
                                     num_sigmas)
        super().__init__(table, image_size, channels, **kwargs)
        self.precond, self.sigma_data, self.beta_d, self.beta_min, self.M = precond, sigma_data, beta_d, beta_min, M
        self.net = net.eval().requires_grad_(False)

    def coefficients(self, sigma: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(c_skip, c_out, c_in, c_noise)`` for noise levels ``sigma`` (same shape, float64)."""
        s = sigma.to(torch.float64)
        one = torch.ones_like(s)
        if self.precond == "edm":
            sd = self.sigma_data
            r = (s**2 + sd**2).sqrt()
            return sd**2 / r**2, s * sd / r, 1 / r, s.log() / 4
        if self.precond == "vp":
            return one, -s, 1 / (s**2 + 1).sqrt(), (self.M - 1) * vp_time(s, self.beta_d, self.beta_min)
        return one, s, one, (s / 2).log()

    def _denoise_net(self, x, sigma):
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)

        def b(c):
            return c.to(x.dtype).reshape(-1, 1, 1, 1)

        F_x = network_output(self.net, b(c_in) * x, c_noise)[:, :self.channels]
        return b(c_skip) * x + b(c_out) * F_x
