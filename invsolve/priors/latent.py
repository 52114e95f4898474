"""Latent diffusion priors: a diffusers ``AutoencoderKL`` + a latent ``UNet2DModel`` behind the same contract.

Prior space is the *scaled latent* ``z = scaling_factor * E(x)``; the denoiser contract (:class:`Prior`) acts on
``z``. :meth:`LatentPrior.encode` / :meth:`LatentPrior.decode` are differentiable maps between operator-domain
images (range ``data_range``) and scaled latents; :meth:`to_prior` / :meth:`from_prior` are aliases so that
samplers written for pixel priors run unchanged (with the decoder acting as a nonlinear link).

Directory layout (``invsolve train-prior`` with a ``vae:`` section writes it): ``unet/``, ``vae/``,
``scheduler_config.json`` and ``invsolve_prior.json`` with ``{"kind": "latent", "scaling_factor": ...}``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from ..errors import InputFileError, ShapeError
from .diffusers_prior import META_FILE, DiffusersPrior
from .registry import register_loader


class LatentPrior(DiffusersPrior):
    """Latent prior: ``unet`` on scaled latents of ``vae``.

    Args:
        unet: latent ``UNet2DModel``; ``vae``: ``AutoencoderKL``; ``scheduler_config``: DDPM config;
        scaling_factor: latent scale (``z = s * E(x)``); data_range: operator-domain range mapped to [-1, 1]
        before encoding; image_size_px: decoded image size ``(H, W)``.
    """

    is_latent = True

    def __init__(self, unet, vae, scheduler_config: dict, scaling_factor: float, *, data_range=(0.0, 1.0),
                 name: str = "latent", max_batch: Optional[int] = None, card: Optional[dict] = None):
        super().__init__(unet, scheduler_config, is_complex=False, data_range=data_range, name=name,
                         max_batch=max_batch, card=card)
        self.vae = vae.eval().requires_grad_(False)
        self.scaling_factor = float(scaling_factor)
        f = 2 ** (len(vae.config.block_out_channels) - 1)
        self.downsample = f
        self.image_channels = vae.config.in_channels
        self.image_size_px = (self.image_size[0] * f, self.image_size[1] * f)

    @property
    def operator_shape(self):
        return (self.image_channels,) + tuple(self.image_size_px)

    def encode(self, x: torch.Tensor, sample: bool = False, generator=None) -> torch.Tensor:
        """Operator-domain images ``(B, C, H, W)`` -> scaled latents (posterior mean unless ``sample``)."""
        want = tuple(self.operator_shape)
        if x.dim() != 4 or tuple(x.shape[1:]) != want:
            raise ShapeError(f"latent prior {self.name!r} encodes images of shape (B, {', '.join(map(str, want))}); "
                             f"got {tuple(x.shape)}")
        lo, hi = self.data_range
        dist = self.vae.encode(((x - lo) / (hi - lo) * 2 - 1).to(self.vae.dtype)).latent_dist
        z = dist.sample(generator) if sample else dist.mean
        return z.float() * self.scaling_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> operator-domain images (differentiable)."""
        x = self.vae.decode((z / self.scaling_factor).to(self.vae.dtype)).sample.float()
        lo, hi = self.data_range
        return (x + 1) / 2 * (hi - lo) + lo

    def to_prior(self, z):
        return self.encode(z)

    def from_prior(self, x):
        return self.decode(x)


@register_loader("latent")
def load_latent_prior(source: str, *, device=None, dtype=torch.float32, name=None, max_batch=None, **overrides):
    from diffusers import AutoencoderKL, UNet2DModel

    p = Path(source)
    if not (p / META_FILE).exists():
        raise InputFileError(f"{p} has no {META_FILE}; a latent prior directory needs unet/, vae/ and {META_FILE}")
    meta = json.loads((p / META_FILE).read_text())
    unet = UNet2DModel.from_pretrained(str(p / "unet"), torch_dtype=dtype, low_cpu_mem_usage=False)
    vae = AutoencoderKL.from_pretrained(str(p / "vae"), torch_dtype=dtype, low_cpu_mem_usage=False)
    sched = json.loads((p / "scheduler_config.json").read_text())
    prior = LatentPrior(unet, vae, sched, meta["scaling_factor"],
                        data_range=tuple(overrides.get("data_range") or meta.get("data_range", (0, 1))),
                        name=name or meta.get("name", p.name), max_batch=max_batch or meta.get("max_batch"),
                        card=meta)
    return prior.to(device) if device is not None else prior


def train_autoencoder(cfg, src, device, out: Path, progress: bool = True) -> dict:
    """Stage 1 of a latent recipe: train (or load) an ``AutoencoderKL`` on ``src`` (prior space [-1, 1]).

    Loss: L1 + MSE reconstruction + ``kl_weight`` · KL. Returns a dict with the frozen ``vae``, its
    ``scaling_factor`` (1 / std of latents), ``encode(x_prior_space, g)`` for stage 2, latent shape, figures.
    """
    from diffusers import AutoencoderKL
    from omegaconf import OmegaConf

    from ..train import DEFAULTS, _fit

    vc = cfg.vae
    tc = OmegaConf.merge(OmegaConf.create(DEFAULTS["train"]), cfg.train, vc.get("train", {}))
    kw = OmegaConf.to_container(vc.model, resolve=True)
    kw.setdefault("in_channels", src.channels)
    kw.setdefault("out_channels", src.channels)
    kw.setdefault("sample_size", src.image_size[0])
    vae = AutoencoderKL(**kw).to(device)
    kl_w = float(vc.get("kl_weight", 1e-6))

    def loss_fn(g):
        x = src.sample(tc.batch_size, g, device)
        dist = vae.encode(x).latent_dist
        z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=g, device=device)
        rec = vae.decode(z).sample.float()
        return F.l1_loss(rec, x) + F.mse_loss(rec, x) + kl_w * dist.kl().mean() / x[0].numel()

    ema, step, elapsed = _fit(vae, loss_fn, tc, out / "vae_checkpoint.pt", f"{cfg.name}/vae", device, progress)
    ema.copy_to(vae.parameters())
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        g = torch.Generator(device=device).manual_seed(123)
        lat = torch.cat([vae.encode(src.sample(64, g, device)).latent_dist.mean for _ in range(8)])
        scaling = float(1.0 / lat.float().std())

    def encode(x, g):
        with torch.no_grad():
            dist = vae.encode(x).latent_dist
            return (dist.mean + dist.std * torch.randn(dist.mean.shape, generator=g, device=x.device)) * scaling

    return {"vae": vae, "scaling_factor": scaling, "encode": encode, "latent_channels": lat.shape[1],
            "latent_size": lat.shape[-1], "steps": step, "minutes": round(elapsed / 60, 2)}
