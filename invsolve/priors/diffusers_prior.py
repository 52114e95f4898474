"""Adapter: a diffusers ``UNet2DModel`` + its DDPM scheduler config as a :class:`~invsolve.priors.base.Prior`.

Directory layouts understood by :func:`load_diffusers_prior`:

* flat: ``config.json`` + ``diffusion_pytorch_model.safetensors`` (+ ``scheduler_config.json``), as written by
  ``UNet2DModel.save_pretrained`` (invsolve's own priors add ``invsolve_prior.json`` with the data range/layout);
* pipeline: ``unet/`` and ``scheduler/`` subfolders (``DDPMPipeline.save_pretrained``);
* a Hugging Face hub id with the pipeline layout (needs network or the local HF cache).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import torch

from ..errors import InputFileError, InvsolveError
from .base import Prior

META_FILE = "invsolve_prior.json"


class DiffusersPrior(Prior):
    """A pixel-space prior around a diffusers ``UNet2DModel``.

    Args:
        unet: the network; called as ``unet(x, t).sample``.
        scheduler_config: dict with ``num_train_timesteps``, ``beta_start``, ``beta_end``, ``beta_schedule``
            and ``prediction_type`` (``epsilon``, ``sample`` or ``v_prediction``), as in ``DDPMScheduler``.
        Remaining arguments: see :class:`Prior`.

    Learned-variance networks (``out_channels == 2 * in_channels``) have their variance channels dropped.
    """

    def __init__(self, unet: torch.nn.Module, scheduler_config: dict, *, is_complex: bool = False,
                 data_range=(0.0, 1.0), name: str = "diffusers", max_batch: Optional[int] = None,
                 card: Optional[dict] = None):
        from diffusers import DDPMScheduler

        sched = DDPMScheduler.from_config(scheduler_config)
        cfg = unet.config
        size = cfg.sample_size if isinstance(cfg.sample_size, (tuple, list)) else (cfg.sample_size,) * 2
        super().__init__(sched.alphas_cumprod, size, cfg.in_channels, is_complex=is_complex,
                         data_range=data_range, name=name, max_batch=max_batch, card=card)
        self.unet = unet.eval().requires_grad_(False)
        self.prediction_type = sched.config.prediction_type
        if self.prediction_type not in ("epsilon", "sample", "v_prediction"):
            raise InvsolveError(f"unsupported prediction_type {self.prediction_type!r}")
        self.scheduler_config = dict(sched.config)

    def _eps_net(self, x, t):
        C = self.channels
        out = self.unet(x.to(self.unet.dtype), t.to(x.device)).sample[:, :C].to(x.dtype)
        if self.prediction_type == "epsilon":
            return out
        ab = self._ab_cont(t).to(x.dtype).reshape(-1, 1, 1, 1)
        if self.prediction_type == "sample":  # eps = (x - sqrt(ab) x0) / sqrt(1 - ab)
            return (x - ab.sqrt() * out) / (1 - ab).sqrt()
        return ab.sqrt() * out + (1 - ab).sqrt() * x  # v-prediction: eps = sqrt(ab) v + sqrt(1-ab) x

    def _ab_cont(self, t):
        """``abar`` at fractional timesteps via log-sigma interpolation (exact at integers)."""
        ls = self.log_sigmas.to(t.device)
        lo = t.floor().long().clamp(0, len(ls) - 1)
        hi = (lo + 1).clamp(max=len(ls) - 1)
        w = (t.double() - lo.double()).clamp(0, 1)
        s2 = torch.exp(2 * ((1 - w) * ls[lo] + w * ls[hi]))
        return 1 / (1 + s2)


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputFileError(f"{path} is not valid JSON: {e}") from e


def default_scheduler() -> dict:
    return {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear",
            "prediction_type": "epsilon"}


def load_diffusers_prior(source: str, *, device=None, dtype: torch.dtype = torch.float32, name: Optional[str] = None,
                         is_complex: Optional[bool] = None, data_range=None, max_batch: Optional[int] = None,
                         card: Optional[dict] = None, config=None, scheduler_config=None) -> Prior:
    """Load a ``UNet2DModel`` prior from a local directory (flat or pipeline layout), a weights file or a hub id.

    A weights file (``diffusion_pytorch_model.safetensors``, ``.bin``, ...) needs the UNet's ``config.json``: beside
    the file or given as ``config=`` (path or dict); ``scheduler_config=`` (path or dict) or a
    ``scheduler_config.json`` beside it sets the schedule (default: linear DDPM). A ``ScoreSdeVeScheduler``
    config gives a :class:`~invsolve.priors.ve.VEPrior`, a ``FlowMatchEulerDiscreteScheduler`` config a
    :class:`~invsolve.priors.flow.FlowPrior` (velocity prediction); every other scheduler a :class:`DiffusersPrior`.
    ``dtype`` (e.g. ``torch.float16``, ``"bf16"``) sets the network's dtype; inputs and outputs stay float32.
    """
    from diffusers import UNet2DModel

    from .checkpoint import as_dtype

    dtype = as_dtype(dtype)
    p = Path(source).expanduser()
    meta: dict = {}
    if p.is_dir():
        unet_dir, sched_file = p, p / "scheduler_config.json"
        if (p / "unet").is_dir():
            unet_dir = p / "unet"
            sched_file = p / "scheduler" / "scheduler_config.json"
        if not (unet_dir / "config.json").exists():
            raise InputFileError(f"{p} does not look like a diffusers UNet2DModel directory: no config.json "
                                 f"(looked in {unet_dir}); expected the output of UNet2DModel.save_pretrained or a "
                                 f"DDPMPipeline directory with unet/ and scheduler/")
        if (p / META_FILE).exists():
            meta = read_json(p / META_FILE)
        unet = UNet2DModel.from_pretrained(str(unet_dir), torch_dtype=dtype, low_cpu_mem_usage=False)
        sched = read_json(sched_file) if sched_file.exists() else default_scheduler()
    elif p.is_file():
        unet, sched = _load_weights_file(p, config, scheduler_config, dtype)
    else:
        if source.startswith((".", "~", "/")) or source.count("/") != 1 or p.exists():
            raise InputFileError(f"prior directory {source!r} does not exist (and it is not a hub id 'org/name')")
        unet, sched = _load_from_hub(source, dtype)
    prior = _make_prior(
        unet, sched,
        is_complex=meta.get("is_complex", False) if is_complex is None else is_complex,
        data_range=tuple(meta.get("data_range", (0.0, 1.0))) if data_range is None else data_range,
        name=name or meta.get("name") or p.name or source,
        max_batch=max_batch if max_batch is not None else meta.get("max_batch"),
        card=card if card is not None else meta,
    )
    return prior.to(device) if device is not None else prior


def _make_prior(unet, sched: dict, **kwargs) -> Prior:
    """The prior class the scheduler config calls for (VE for ``ScoreSdeVeScheduler``, flow matching for
    ``FlowMatchEulerDiscreteScheduler``)."""
    if sched.get("_class_name") == "FlowMatchEulerDiscreteScheduler":
        from .flow import flow_prior_from_diffusers

        return flow_prior_from_diffusers(unet, sched, **kwargs)
    if sched.get("_class_name") == "ScoreSdeVeScheduler":
        from .ve import ve_prior_from_diffusers

        return ve_prior_from_diffusers(unet, sched, **kwargs)
    return DiffusersPrior(unet, sched, **kwargs)


def _config_dict(cfg, what: str) -> dict:
    if isinstance(cfg, dict):
        return dict(cfg)
    path = Path(cfg).expanduser()
    if not path.is_file():
        raise InputFileError(f"{what} {str(path)!r} does not exist")
    return read_json(path)


def _load_weights_file(path: Path, config, scheduler_config, dtype):
    """A ``UNet2DModel`` from a single weights file and its config (given, or ``config.json`` beside the file)."""
    from diffusers import UNet2DModel

    from .checkpoint import load_state_dict_checked, read_state_dict

    if config is None:
        if not (path.parent / "config.json").exists():
            raise InputFileError(
                f"{str(path)!r} is a weights file without its UNet2DModel config: put config.json beside it or "
                f"pass config='path/to/config.json' (or a dict); for an OpenAI ADM checkpoint pass arch=... "
                f"(e.g. arch='adm-ffhq256')")
        config = path.parent / "config.json"
    cfg = _config_dict(config, "config")
    if cfg.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise InputFileError(f"config {config!r} describes a {cfg['_class_name']}, not a UNet2DModel")
    unet = UNet2DModel.from_config(cfg)
    load_state_dict_checked(unet, read_state_dict(path), repr(str(path)), hint="check that config matches the file")
    if scheduler_config is None and (path.parent / "scheduler_config.json").exists():
        scheduler_config = path.parent / "scheduler_config.json"
    sched = default_scheduler() if scheduler_config is None else _config_dict(scheduler_config, "scheduler_config")
    return unet.to(dtype).eval(), sched


def _load_from_hub(repo_id: str, dtype):
    from diffusers import UNet2DModel
    from huggingface_hub import constants

    offline = constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    try:
        from huggingface_hub import hf_hub_download

        kw = dict(torch_dtype=dtype, low_cpu_mem_usage=False, local_files_only=offline)
        try:  # pipeline layout (unet/ + scheduler/), else a bare UNet2DModel repository
            unet, prefix = UNet2DModel.from_pretrained(repo_id, subfolder="unet", **kw), "scheduler/"
        except EnvironmentError:
            unet, prefix = UNet2DModel.from_pretrained(repo_id, **kw), ""
        try:
            sched = read_json(Path(hf_hub_download(repo_id, prefix + "scheduler_config.json",
                                                    local_files_only=offline)))
        except Exception:
            sched = default_scheduler()
        return unet, sched
    except Exception as e:  # network errors, missing repo, offline cache miss
        how = ("HF_HUB_OFFLINE=1 is set and the model is not in the local Hugging Face cache"
               if offline else "it could not be downloaded or found in the local cache")
        raise InputFileError(
            f"could not load prior {repo_id!r}: {how} ({type(e).__name__}). Provide the weights locally: "
            f"download the pipeline directory elsewhere (huggingface-cli download {repo_id} --local-dir DIR), "
            f"copy it here and pass load_prior('DIR'); or pick an embedded prior (invsolve list priors)."
        ) from None
