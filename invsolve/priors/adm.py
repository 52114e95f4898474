"""OpenAI ADM ("guided-diffusion") UNet checkpoints as invsolve priors, without conversion.

:class:`ADMUNet` is a clean-room implementation of the ADM architecture (Dhariwal & Nichol 2021, "Diffusion
Models Beat GANs on Image Synthesis", appendix A) written from its description; only its parameter *names*
follow the released checkpoints, so their state dicts load as they are:

* ``time_embed.{0,2}`` — sinusoidal timestep features (``cos`` half first, ``max_period = 10000``) -> MLP (4x width);
* ``input_blocks.0.0`` — input 3x3 conv; then per resolution level ``num_res_blocks`` residual blocks (each
  followed by an attention block at the listed resolutions) and, except at the last level, a downsampling block
  (a residual block with average pooling when ``resblock_updown``, else a stride-2 conv ``op``);
* ``middle_block.{0,1,2}`` — residual, attention, residual;
* ``output_blocks`` — per level in reverse, ``num_res_blocks + 1`` residual blocks on the concatenated skip
  features (+ attention), the last one of each level but the first followed by upsampling (a residual block with
  nearest upsampling, or nearest + 3x3 ``conv``);
* ``out.{0,2}`` — GroupNorm, SiLU, 3x3 conv to ``out_channels`` (``2 * in_channels`` for learned-sigma models).

A residual block is ``in_layers`` (GroupNorm(32), SiLU, conv3x3), ``emb_layers`` (SiLU, linear to
``2 * out`` channels for scale-shift norm, else ``out``), ``out_layers`` (GroupNorm, SiLU, dropout, conv3x3) and a
``skip_connection`` (identity, or a 1x1 conv when the width changes); with scale-shift norm the timestep
embedding acts as ``norm(h) * (1 + scale) + shift``. An attention block is ``norm``, a 1x1 ``qkv`` conv1d, multi-head
dot-product attention (heads = channels / ``num_head_channels``) and a 1x1 ``proj_out`` conv1d, added to its input.
In the released checkpoints (``use_new_attention_order=False``) the ``qkv`` channels are grouped per head
(``[q_h, k_h, v_h]`` for each head ``h``).

:class:`ADMPrior` wraps it as a VP epsilon-prediction prior (linear betas 1e-4..0.02, 1000 steps; learned-sigma
channels dropped). ``load_prior("ckpt.pt", arch="adm-aapm256")`` builds the preset network and loads the file; a
file whose keys or shapes do not fit fails with the offending keys listed.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputFileError, InvsolveError, UnknownNameError
from .base import Prior
from .checkpoint import as_dtype, load_state_dict_checked, read_state_dict
from .registry import ARCH_PRESETS, register_loader

Tensor = torch.Tensor


@dataclass(frozen=True)
class ADMConfig:
    """Hyper-parameters of an ADM UNet, named as the guided-diffusion command-line flags.

    ``attention_resolutions`` are image resolutions in pixels (the ``--attention_resolutions`` flag): attention
    is used where the feature map has been downsampled by ``image_size // r``. (For ``image_size = 320`` and
    ``r = 16`` that factor is 20, which no level reaches, so such a model has attention in its middle block only.)
    """

    image_size: int
    in_channels: int
    out_channels: int
    model_channels: int
    num_res_blocks: int
    attention_resolutions: Tuple[int, ...]
    channel_mult: Tuple[float, ...] = (1, 1, 2, 2, 4, 4)
    num_heads: int = 4
    num_head_channels: int = -1
    num_heads_upsample: int = -1
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    conv_resample: bool = True
    use_new_attention_order: bool = False

    @property
    def learn_sigma(self) -> bool:
        return self.out_channels == 2 * self.in_channels


# name -> (architecture, prior defaults). Sources: the released model flags of the DDS and DPS checkpoints.
PRESETS: Dict[str, Tuple[ADMConfig, dict]] = {
    "adm-ffhq256": (
        ADMConfig(256, 3, 6, 128, 1, (16,), num_head_channels=64),
        dict(data_range=(0.0, 1.0), summary="DPS FFHQ 256x256 (ffhq_10m.pt): RGB in [0, 1]")),
    "adm-imagenet256-uncond": (
        ADMConfig(256, 3, 6, 256, 2, (32, 16, 8), num_head_channels=64),
        dict(data_range=(0.0, 1.0), summary="OpenAI unconditional ImageNet 256x256 (256x256_diffusion_uncond.pt)")),
    "adm-aapm256": (
        ADMConfig(256, 1, 2, 256, 1, (16,), num_head_channels=64),
        dict(data_range=(-1.0, 1.0),
             summary="DDS AAPM CT 256x256 (AAPM256_1M.pt): slices fed to the network as stored (nominally [0, 1])")),
    "adm-fastmri320-complex": (
        ADMConfig(320, 2, 4, 256, 1, (16,), num_head_channels=64),
        dict(is_complex=True, data_range=(0.0, 1.0), normalization="q99",
             summary="DDS fastMRI knee 320x320 complex (fastmri_knee_320_complex_1m.pt): [Re, Im]")),
}


def adm_config(arch: Union[str, ADMConfig, dict], **changes) -> ADMConfig:
    """An :class:`ADMConfig` from a preset name, a config or a dict of fields, with ``changes`` applied."""
    if isinstance(arch, str):
        if arch not in PRESETS:
            raise UnknownNameError(f"unknown ADM arch {arch!r}; presets: {', '.join(sorted(PRESETS))} "
                                   f"(or pass an ADMConfig / dict of its fields)")
        cfg = PRESETS[arch][0]
    elif isinstance(arch, ADMConfig):
        cfg = arch
    elif isinstance(arch, dict):
        names = {f.name for f in fields(ADMConfig)}
        bad = sorted(set(arch) - names)
        if bad:
            raise UnknownNameError(f"unknown ADMConfig field(s) {bad}; valid: {sorted(names)}")
        cfg = ADMConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in arch.items()})
    else:
        raise TypeError(f"arch must be a preset name, an ADMConfig or a dict, got {type(arch).__name__}")
    changes = {k: tuple(v) if isinstance(v, list) else v for k, v in changes.items()}
    return replace(cfg, **changes) if changes else cfg


# ---------------------------------------------------------------------------------------------- network
def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal features ``[cos(t w_k), sin(t w_k)]``, ``w_k = max_period^(-k / (dim/2))``; shape ``(B, dim)``."""
    half = dim // 2
    w = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    a = t.float()[:, None] * w[None]
    emb = torch.cat([torch.cos(a), torch.sin(a)], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm with 32 groups, computed in float32 whatever the module dtype."""

    def __init__(self, channels: int):
        super().__init__(32, channels)

    def forward(self, x):
        return F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps).to(x.dtype)


def _resample(x: Tensor, how: Optional[str]) -> Tensor:
    if how == "up":
        return F.interpolate(x, scale_factor=2, mode="nearest")
    if how == "down":
        return F.avg_pool2d(x, 2)
    return x


class Downsample(nn.Module):
    """Halve the resolution: stride-2 3x3 conv ``op`` (or 2x2 average pooling without ``use_conv``)."""

    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv else None

    def forward(self, x):
        return self.op(x) if self.op is not None else F.avg_pool2d(x, 2)


class Upsample(nn.Module):
    """Double the resolution: nearest neighbour, then a 3x3 ``conv`` when ``use_conv``."""

    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if use_conv else None

    def forward(self, x):
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.conv is not None else x


class ResBlock(nn.Module):
    """Residual block conditioned on the timestep embedding, optionally resampling (``how``: "up"/"down")."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int, scale_shift: bool,
                 how: Optional[str] = None):
        super().__init__()
        self.how, self.scale_shift = how, scale_shift
        self.in_layers = nn.Sequential(GroupNorm32(channels), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels * (2 if scale_shift else 1)))
        self.out_layers = nn.Sequential(GroupNorm32(out_channels), nn.SiLU(), nn.Identity(),  # index 2: dropout
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x, emb):
        h = self.in_layers[:-1](x)
        h = self.in_layers[-1](_resample(h, self.how))
        x = _resample(x, self.how)
        e = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all pixels, added to the input."""

    def __init__(self, channels: int, heads: int, legacy_order: bool):
        super().__init__()
        if heads < 1 or channels % heads:
            raise InvsolveError(f"attention over {channels} channels cannot be split into {heads} heads")
        self.heads, self.legacy_order = heads, legacy_order
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x):
        B, C, H, W = x.shape
        x = x.reshape(B, C, H * W)
        qkv = self.qkv(self.norm(x))
        d = C // self.heads
        if self.legacy_order:  # per head [q, k, v]
            q, k, v = qkv.reshape(B * self.heads, 3 * d, H * W).split(d, dim=1)
        else:  # [q of all heads, k ..., v ...]
            q, k, v = (u.reshape(B * self.heads, d, H * W) for u in qkv.chunk(3, dim=1))
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        h = self.proj_out(a.transpose(1, 2).reshape(B, C, H * W))
        return (x + h).reshape(B, C, H, W)


class EmbedSequential(nn.Sequential):
    """A sequence whose residual blocks also receive the timestep embedding."""

    def forward(self, x, emb):
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class ADMUNet(nn.Module):
    """The ADM UNet: ``net(x, t) -> (B, out_channels, H, W)`` for images ``x`` and (fractional) timesteps ``t``."""

    def __init__(self, config: ADMConfig):
        super().__init__()
        c = self.config = config
        mc, emb_ch = c.model_channels, 4 * c.model_channels
        attn_ds = {c.image_size // r for r in c.attention_resolutions}

        def heads(ch, n):
            return n if c.num_head_channels == -1 else ch // c.num_head_channels

        def res(ch_in, ch_out, how=None):
            return ResBlock(ch_in, emb_ch, ch_out, c.use_scale_shift_norm, how)

        self.time_embed = nn.Sequential(nn.Linear(mc, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))
        ch = int(c.channel_mult[0] * mc)
        self.input_blocks = nn.ModuleList([EmbedSequential(nn.Conv2d(c.in_channels, ch, 3, padding=1))])
        skip_ch, ds = [ch], 1
        for level, mult in enumerate(c.channel_mult):
            for _ in range(c.num_res_blocks):
                layers = [res(ch, int(mult * mc))]
                ch = int(mult * mc)
                if ds in attn_ds:
                    layers.append(AttentionBlock(ch, heads(ch, c.num_heads), not c.use_new_attention_order))
                self.input_blocks.append(EmbedSequential(*layers))
                skip_ch.append(ch)
            if level != len(c.channel_mult) - 1:
                down = res(ch, ch, "down") if c.resblock_updown else Downsample(ch, c.conv_resample)
                self.input_blocks.append(EmbedSequential(down))
                skip_ch.append(ch)
                ds *= 2
        self.middle_block = EmbedSequential(
            res(ch, ch), AttentionBlock(ch, heads(ch, c.num_heads), not c.use_new_attention_order), res(ch, ch))
        n_up = c.num_heads if c.num_heads_upsample == -1 else c.num_heads_upsample
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(c.channel_mult))):
            for i in range(c.num_res_blocks + 1):
                layers = [res(ch + skip_ch.pop(), int(mult * mc))]
                ch = int(mult * mc)
                if ds in attn_ds:
                    layers.append(AttentionBlock(ch, heads(ch, n_up), not c.use_new_attention_order))
                if level and i == c.num_res_blocks:
                    layers.append(res(ch, ch, "up") if c.resblock_updown else Upsample(ch, c.conv_resample))
                    ds //= 2
                self.output_blocks.append(EmbedSequential(*layers))
        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), nn.Conv2d(ch, c.out_channels, 3, padding=1))

    @property
    def dtype(self) -> torch.dtype:
        return self.out[2].weight.dtype

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        t = torch.as_tensor(t, device=x.device)
        t = t.expand(x.shape[0]) if t.dim() == 0 else t
        emb = self.time_embed(timestep_embedding(t, self.config.model_channels).to(self.dtype))
        h, hs = x.to(self.dtype), []
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)


# ---------------------------------------------------------------------------------------------- prior
def linear_alphas_cumprod(steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """``abar_t = prod_{s<=t} (1 - beta_s)`` for ADM's linear schedule (betas scaled by ``1000 / steps``)."""
    scale = 1000 / steps
    betas = torch.linspace(beta_start * scale, beta_end * scale, steps, dtype=torch.float64)
    return torch.cumprod(1 - betas, dim=0)


class ADMPrior(Prior):
    """An :class:`ADMUNet` as a VP epsilon-prediction prior (learned-sigma channels dropped).

    Args:
        net: the network. ``alphas_cumprod``: the training schedule (default: linear betas, 1000 steps).
        Remaining arguments: see :class:`~invsolve.priors.base.Prior`; ``channels`` and ``image_size`` come from
        ``net.config``. For the complex fastMRI preset the 2 input channels are ``[Re, Im]``.
    """

    def __init__(self, net: ADMUNet, *, alphas_cumprod: Optional[Tensor] = None, is_complex: bool = False,
                 data_range=(0.0, 1.0), name: str = "adm", max_batch: Optional[int] = None,
                 card: Optional[dict] = None):
        cfg = net.config
        ab = linear_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod
        super().__init__(ab, (cfg.image_size, cfg.image_size), cfg.in_channels, is_complex=is_complex,
                         data_range=data_range, name=name, max_batch=max_batch, card=card)
        self.net = net.eval().requires_grad_(False)

    def _eps_net(self, x, t):
        return self.net(x, t.to(x.device))[:, :self.channels].to(x.dtype)

    def eps_and_variance(self, x: Tensor, t) -> Tuple[Tensor, Tensor]:
        """``(eps, v)`` from one network call (counted as one NFE); ``v`` are the learned-sigma channels.

        ADM interpolates the log-variance of the reverse step as ``f log(beta_t) + (1 - f) log(beta~_t)`` with
        ``f = (v + 1) / 2`` (what DPS's ancestral sampler uses). Raises if the network has no such channels.
        """
        if not self.net.config.learn_sigma:
            raise InvsolveError(f"prior {self.name!r} has no learned-variance channels")
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32)
        self.nfe += 1
        out = self.net(x, t.expand(x.shape[0]) if t.dim() == 0 else t).to(x.dtype)
        return out[:, :self.channels], out[:, self.channels:]


@register_loader("adm")
def load_adm_prior(source: str, *, arch: Union[str, ADMConfig, dict, None] = None,
                   arch_overrides: Optional[dict] = None, device=None, dtype=torch.float32,
                   name: Optional[str] = None, is_complex: Optional[bool] = None, data_range=None,
                   max_batch: Optional[int] = None, card: Optional[dict] = None, random_init: bool = False,
                   seed: int = 0) -> ADMPrior:
    """Load an ADM checkpoint (``.pt``/``.pth``/``.safetensors`` state dict) as an :class:`ADMPrior`.

    ``source`` is the weights file, or a directory whose ``invsolve_prior.json`` says
    ``{"kind": "adm", "arch": ..., "weights": "file.pt"}`` (plus optional ``arch_overrides``, ``data_range``...).
    ``arch`` is a preset name (:data:`PRESETS`), an :class:`ADMConfig` or a dict of its fields;
    ``arch_overrides`` changes fields of it. Prior options default to the preset's (else real, range [0, 1]).

    ``source`` may also be a preset name with ``random_init=True``: the preset network with random weights drawn
    from ``seed`` (PyTorch's default initialisation). Its samples are noise; it exists for timing (cost does not
    depend on the weights) and for testing the plumbing at full size.
    """
    if random_init:
        return _random_adm(source, arch, arch_overrides, device, dtype, name, is_complex, data_range, max_batch,
                           card, seed)
    if isinstance(source, str) and source in PRESETS and not Path(source).exists():
        raise InvsolveError(f"{source!r} is an ADM architecture preset, not a checkpoint: pass the weights file with "
                            f"arch={source!r}, or random_init=True for random weights (timing and tests only)")
    p = Path(source).expanduser()
    meta: dict = {}
    if p.is_dir():
        from .diffusers_prior import META_FILE

        if not (p / META_FILE).exists():
            raise InputFileError(f"{p} has no {META_FILE}; an ADM prior directory needs one with "
                                 f'{{"kind": "adm", "arch": ..., "weights": ...}}')
        meta = json.loads((p / META_FILE).read_text())
        p = p / meta.get("weights", "model.pt")
        arch = arch if arch is not None else meta.get("arch")
        arch_overrides = arch_overrides if arch_overrides is not None else meta.get("arch_overrides")
    if arch is None:
        raise InvsolveError(f"loading the ADM checkpoint {str(p)!r} needs arch=...: one of "
                            f"{', '.join(sorted(PRESETS))}, an ADMConfig or a dict of its fields")
    cfg = adm_config(arch, **(arch_overrides or {}))
    defaults = dict(PRESETS[arch][1]) if isinstance(arch, str) else {}
    defaults.update({k: v for k, v in meta.items() if k in ("is_complex", "data_range", "name", "max_batch")})
    sd = read_state_dict(p)
    with torch.device("meta"):  # no random init of weights about to be overwritten
        net = ADMUNet(cfg)
    net = net.to_empty(device="cpu")  # fresh, aligned storage (safetensors' mmap is not; outputs would differ in ulp)
    hint = ("the file is class-conditional (label_emb); only unconditional ADM models are supported"
            if "label_emb.weight" in sd else f"check arch= (got {arch if isinstance(arch, str) else cfg})")
    load_state_dict_checked(net, sd, repr(str(p)), hint=hint)
    net = net.to(as_dtype(dtype))
    info = {"kind": "adm", "arch": arch if isinstance(arch, str) else "custom", "config": asdict(cfg),
            "weights": str(p), **{k: v for k, v in defaults.items() if k not in ("is_complex", "data_range")}}
    prior = ADMPrior(
        net,
        is_complex=defaults.get("is_complex", False) if is_complex is None else is_complex,
        data_range=tuple(defaults.get("data_range", (0.0, 1.0)) if data_range is None else data_range),
        name=name or defaults.get("name") or p.stem,
        max_batch=max_batch if max_batch is not None else defaults.get("max_batch"),
        card=card if card is not None else info,
    )
    return prior.to(device) if device is not None else prior


ARCH_PRESETS.update(dict.fromkeys(PRESETS, load_adm_prior))  # load_prior("adm-...", random_init=True)


def _random_adm(source, arch, arch_overrides, device, dtype, name, is_complex, data_range, max_batch, card,
                seed) -> ADMPrior:
    arch = arch if arch is not None else str(source)
    cfg = adm_config(arch, **(arch_overrides or {}))  # unknown names raise with the list of presets
    defaults = dict(PRESETS[arch][1]) if isinstance(arch, str) else {}
    dev = torch.device(device) if device is not None else torch.device("cpu")
    cuda = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda), torch.device(dev):
        torch.manual_seed(seed)  # drawn on the target device (fast for 361 M parameters; weights differ by device)
        net = ADMUNet(cfg)
    net = net.to(as_dtype(dtype))
    label = arch if isinstance(arch, str) else "custom"
    info = {"kind": "adm", "arch": label, "config": asdict(cfg), "weights": f"random (seed {seed}, drawn on {dev})",
            "summary": f"{label} with RANDOM weights: for timing and plumbing tests, not for reconstruction",
            **({"normalization": defaults["normalization"]} if "normalization" in defaults else {})}
    prior = ADMPrior(net, is_complex=defaults.get("is_complex", False) if is_complex is None else is_complex,
                     data_range=tuple(defaults.get("data_range", (0.0, 1.0)) if data_range is None else data_range),
                     name=name or f"{label}-random", max_batch=max_batch, card=card if card is not None else info)
    return prior.to(device) if device is not None else prior
