"""Latent diffusion priors: a diffusers ``AutoencoderKL`` + a latent ``UNet2DModel`` behind the same contract.

Prior space is the *scaled latent* ``z = scaling_factor * E(x)``; the denoiser contract (:class:`Prior`) acts on
``z``. :meth:`LatentPrior.encode` / :meth:`LatentPrior.decode` are differentiable maps between operator-domain
images (range ``data_range``) and scaled latents; :meth:`to_prior` / :meth:`from_prior` are aliases so that
samplers written for pixel priors run unchanged (with the decoder acting as a nonlinear link).

Directory layouts understood by :func:`load_latent_prior`:

* invsolve's own (``invsolve train-prior`` with a ``vae:`` section writes it): ``unet/``, ``vae/``,
  ``scheduler_config.json`` and ``invsolve_prior.json`` with ``{"kind": "latent", "scaling_factor": ...}``;
* a Stable-Diffusion-style pipeline directory (or hub id): ``unet/`` (``UNet2DModel`` or
  ``UNet2DConditionModel``), ``vae/`` (``AutoencoderKL``; its config's ``scaling_factor`` is the latent scale),
  ``scheduler/``, and for conditional UNets ``text_encoder/`` + ``tokenizer/``. A conditional UNet is run
  unconditionally with the **empty-prompt embedding**, computed once at load time (see :func:`empty_prompt_embeds`).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Optional, Union

import torch

from ..errors import InputFileError, MissingDependencyError, ShapeError
from .diffusers_prior import META_FILE, DiffusersPrior, default_scheduler, read_json
from .registry import register_loader

EMBEDS_FILE = "empty_prompt_embeds.safetensors"  # optional precomputed embedding in a pipeline directory


class ConditionedUNet(torch.nn.Module):
    """A ``UNet2DConditionModel`` with a fixed prompt embedding ``(1, seq, dim)``, called as ``unet(x, t)``."""

    def __init__(self, unet, prompt_embeds: torch.Tensor):
        super().__init__()
        self.unet = unet
        self.register_buffer("prompt_embeds", prompt_embeds.detach().to(unet.dtype), persistent=False)

    @property
    def config(self):
        return self.unet.config

    @property
    def dtype(self):
        return self.unet.dtype

    def forward(self, x, t):
        emb = self.prompt_embeds.to(x.device).expand(x.shape[0], -1, -1)
        return self.unet(x, t, encoder_hidden_states=emb)


class LatentPrior(DiffusersPrior):
    """Latent prior: ``unet`` on scaled latents of ``vae``.

    Args:
        unet: latent ``UNet2DModel``, or ``UNet2DConditionModel`` together with ``prompt_embeds``;
        vae: ``AutoencoderKL``; scheduler_config: DDPM config;
        scaling_factor: latent scale (``z = s * E(x)``); data_range: operator-domain range mapped to [-1, 1]
        before encoding.
        prompt_embeds: ``(1, seq, dim)`` text embedding every call of a conditional UNet uses (the empty prompt
            for unconditional use; :func:`empty_prompt_embeds`).

    Attributes: ``image_size_px`` (decoded ``(H, W)``), ``downsample`` (``2^(levels-1)``), ``operator_shape``
    (decoded image shape, checked against operators by :func:`invsolve.solve`). ``encode``/``decode`` and the
    denoiser are differentiable in their inputs (the weights are frozen).
    """

    is_latent = True

    def __init__(self, unet, vae, scheduler_config: dict, scaling_factor: float, *, data_range=(0.0, 1.0),
                 name: str = "latent", max_batch: Optional[int] = None, card: Optional[dict] = None,
                 prompt_embeds: Optional[torch.Tensor] = None):
        if getattr(unet.config, "cross_attention_dim", None) is not None:
            if prompt_embeds is None:
                raise ValueError("a conditional UNet (UNet2DConditionModel) needs prompt_embeds (1, seq, dim); "
                                 "see invsolve.priors.latent.empty_prompt_embeds")
            unet = ConditionedUNet(unet, prompt_embeds)
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


def _read_embeds(src: Union[str, Path, torch.Tensor]) -> torch.Tensor:
    if isinstance(src, torch.Tensor):
        return src
    f = Path(src).expanduser()
    if not f.is_file():
        raise InputFileError(f"prompt_embeds file {str(f)!r} does not exist")
    if f.suffix == ".safetensors":
        from safetensors.torch import load_file

        tensors = load_file(str(f))
        if len(tensors) != 1:
            raise InputFileError(f"{f} must hold exactly one tensor (the prompt embedding), found {sorted(tensors)}")
        return next(iter(tensors.values()))
    return torch.load(f, map_location="cpu", weights_only=True)


@torch.no_grad()
def empty_prompt_embeds(path: Union[str, Path], unet, embeds: Union[str, Path, torch.Tensor, None] = None):
    """The text embedding ``(1, seq, dim)`` a conditional UNet is run with for unconditional sampling.

    Sources, in order: ``embeds`` (a tensor or a ``.safetensors``/``.pt`` file); ``path/empty_prompt_embeds
    .safetensors``; the pipeline's ``text_encoder/`` + ``tokenizer/`` applied once to the empty prompt (padded to
    the tokenizer's ``model_max_length``; needs the ``transformers`` package); if the pipeline has no text encoder,
    zeros ``(1, 77, cross_attention_dim)`` with a warning (the UNet then runs on an embedding it never saw).
    """
    p = Path(path)
    dim = unet.config.cross_attention_dim
    if embeds is None and (p / EMBEDS_FILE).is_file():
        embeds = p / EMBEDS_FILE
    if embeds is not None:
        e = _read_embeds(embeds)
    elif (p / "text_encoder").is_dir():
        try:
            import transformers
        except ImportError as err:
            raise MissingDependencyError(
                f"{p} is a text-conditioned pipeline: computing its empty-prompt embedding needs the 'transformers' "
                f"package (pip install transformers). Alternatively save the embedding (1, seq, {dim}) once as "
                f"{p / EMBEDS_FILE} or pass prompt_embeds=<tensor or file>.") from err
        tok = transformers.AutoTokenizer.from_pretrained(str(p / "tokenizer"))
        arch = (read_json(p / "text_encoder" / "config.json").get("architectures") or ["CLIPTextModel"])[0]
        enc = getattr(transformers, arch, transformers.CLIPTextModel).from_pretrained(str(p / "text_encoder"))
        ids = tok("", padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids
        e = enc.eval()(ids)[0]
    else:
        warnings.warn(f"{p} has a conditional UNet but no text encoder and no {EMBEDS_FILE}: using a zero prompt "
                      f"embedding (1, 77, {dim}); results are only meaningful if the model was trained with it",
                      UserWarning, stacklevel=3)
        e = torch.zeros(1, 77, int(dim))
    e = e.float()
    e = e[None] if e.dim() == 2 else e
    if e.dim() != 3 or e.shape[0] != 1 or e.shape[-1] != dim:
        raise ShapeError(f"prompt embedding has shape {tuple(e.shape)}; the UNet expects (1, seq, {dim})")
    return e


def _hub_snapshot(repo_id: str) -> Path:
    """Local snapshot of a hub pipeline (unet, vae, scheduler, text encoder, tokenizer); clear error if offline."""
    if repo_id.startswith((".", "~", "/")) or repo_id.count("/") != 1:
        raise InputFileError(f"latent prior directory {repo_id!r} does not exist (and it is not a hub id 'org/name')")
    from huggingface_hub import constants, snapshot_download

    offline = constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    try:
        return Path(snapshot_download(repo_id, local_files_only=offline, allow_patterns=[
            "model_index.json", "unet/*", "vae/*", "scheduler/*", "text_encoder/*", "tokenizer/*", EMBEDS_FILE]))
    except Exception as e:
        raise InputFileError(f"could not load latent prior {repo_id!r} ({type(e).__name__}): "
                             f"{'HF_HUB_OFFLINE=1 and it is not in the local cache' if offline else 'download failed'}"
                             f". Download the pipeline directory elsewhere and pass its local path.") from None


@register_loader("latent")
def load_latent_prior(source: str, *, device=None, dtype=torch.float32, name=None, max_batch=None, data_range=None,
                      prompt_embeds=None, **overrides):
    """Load a latent prior from an invsolve latent directory, a Stable-Diffusion-style pipeline directory or a hub
    id (module docstring). ``prompt_embeds`` (tensor or file) overrides the empty-prompt embedding of conditional
    UNets; ``data_range`` the operator-domain range (default from ``invsolve_prior.json``, else ``(0, 1)``);
    ``dtype`` sets the networks' dtype (inputs and outputs stay float32)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel, UNet2DModel

    p = Path(source).expanduser()
    if not p.is_dir():
        p = _hub_snapshot(str(source))
    meta = read_json(p / META_FILE) if (p / META_FILE).exists() else {}
    missing = [d for d in ("unet", "vae") if not (p / d / "config.json").exists()]
    if missing:
        raise InputFileError(f"{p} is not a latent prior directory: {', '.join(d + '/' for d in missing)} missing "
                             f"(expected unet/ and vae/ with config.json, as written by invsolve train-prior or a "
                             f"Stable-Diffusion pipeline's save_pretrained)")
    cond = read_json(p / "unet" / "config.json").get("_class_name") == "UNet2DConditionModel"
    kw = dict(torch_dtype=dtype, low_cpu_mem_usage=False)
    unet = (UNet2DConditionModel if cond else UNet2DModel).from_pretrained(str(p / "unet"), **kw)
    vae = AutoencoderKL.from_pretrained(str(p / "vae"), **kw)
    sched_file = next((f for f in (p / "scheduler_config.json", p / "scheduler" / "scheduler_config.json")
                       if f.exists()), None)
    sched = read_json(sched_file) if sched_file else default_scheduler()
    data_range = overrides.get("data_range") if data_range is None else data_range
    prior = LatentPrior(unet, vae, sched, meta.get("scaling_factor", vae.config.scaling_factor),
                        data_range=tuple(data_range or meta.get("data_range", (0, 1))),
                        name=name or meta.get("name", p.name), max_batch=max_batch or meta.get("max_batch"),
                        card=meta, prompt_embeds=empty_prompt_embeds(p, unet, prompt_embeds) if cond else None)
    return prior.to(device) if device is not None else prior

