"""Embedded prior registry and :func:`load_prior`.

Embedded priors live in ``invsolve/priors/weights/<name>/`` (diffusers ``save_pretrained`` layout plus
``invsolve_prior.json`` with layout/data range and ``README.md``, the model card). They are trained by
``invsolve train-prior configs/train/<name>.yaml``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Dict, Optional, Union

import torch

from ..errors import InputFileError, InvsolveError, UnknownNameError
from .base import Prior
from .checkpoint import as_dtype
from .diffusers_prior import META_FILE, load_diffusers_prior

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

# Loaders by the "kind" field of invsolve_prior.json (the package imports the modules that register the others:
# latent, ADM).
LOADERS: Dict[str, Callable[..., Prior]] = {"diffusers": load_diffusers_prior}
# Architecture presets that build a network with random weights by name (the ADM module registers its own)
ARCH_PRESETS: Dict[str, Callable[..., Prior]] = {}


def register_loader(kind: str):
    def deco(fn):
        LOADERS[kind] = fn
        return fn

    return deco


def _embedded() -> Dict[str, Path]:
    if not WEIGHTS_DIR.is_dir():
        return {}
    return {p.name: p for p in sorted(WEIGHTS_DIR.iterdir()) if (p / META_FILE).exists()}


def available_priors() -> Dict[str, str]:
    """Embedded prior names -> one-line summary from their model cards."""
    out = {}
    for name, path in _embedded().items():
        meta = json.loads((path / META_FILE).read_text())
        out[name] = meta.get("summary", "")
    return out


def prior_dir(name: str) -> Path:
    """Directory of an embedded prior (raises with the list of names if unknown)."""
    emb = _embedded()
    if name not in emb:
        raise UnknownNameError(f"unknown prior {name!r}; embedded priors: {sorted(emb) or 'none installed'}. "
                               f"You can also pass a local directory or a Hugging Face hub id.")
    return emb[name]


def load_prior(name_or_path: Union[str, Path, Prior], *, device: Optional[Union[str, torch.device]] = None,
               dtype: torch.dtype = torch.float32, **overrides) -> Prior:
    """Load a prior by embedded name, local directory, weights file or hub id (a :class:`Prior` is returned as is).

    Keyword overrides (``is_complex``, ``data_range``, ``max_batch``, ``name``) replace what the directory's
    ``invsolve_prior.json`` says; use them for third-party diffusers models (default: real, data range [0, 1]).
    A weights file (``.pt``/``.pth``/``.safetensors``) with ``arch=`` is an ADM checkpoint
    (:func:`invsolve.priors.adm.load_adm_prior`); without it, a diffusers ``UNet2DModel`` weights file with its
    ``config.json`` beside it or passed as ``config=``. ``dtype`` may be a torch dtype or a name ("fp16", "bf16").
    An ADM preset name (``"adm-fastmri320-complex"``, ...) with ``random_init=True`` builds that network with random
    weights (timing and plumbing only). ``channels_last=True`` / ``compile=True`` (``compile_mode=``) set inference
    options of the network (:func:`invsolve.priors.accel.accelerate`).
    """
    if isinstance(name_or_path, Prior):
        return name_or_path.to(device) if device is not None else name_or_path
    inference = {k: overrides.pop(k) for k in ("channels_last", "compile", "compile_mode", "compile_backend")
                 if k in overrides}
    if inference:
        from .accel import accelerate

        return accelerate(load_prior(name_or_path, device=device, dtype=dtype, **overrides), **inference)
    dtype = as_dtype(dtype)
    src = str(name_or_path)
    emb = _embedded()
    if src not in emb and src in ARCH_PRESETS:  # an architecture preset: random weights on request only
        return ARCH_PRESETS[src](src, device=device, dtype=dtype, **overrides)
    if src in emb:
        path = emb[src]
    else:
        path = Path(src).expanduser()
        if not path.exists() and "/" not in src:
            raise UnknownNameError(f"unknown prior {src!r}; embedded priors: {sorted(emb) or 'none installed'}. "
                                   f"You can also pass a local directory or a Hugging Face hub id ('org/name').")
    kind = "diffusers"
    if "arch" in overrides and not path.is_dir():  # checkpoint file + architecture preset (ADM)
        kind = "adm"
    elif path.is_dir() and (path / META_FILE).exists():
        kind = json.loads((path / META_FILE).read_text()).get("kind", "diffusers")
    elif path.is_dir() and (path / "vae" / "config.json").exists():  # Stable-Diffusion-style pipeline directory
        kind = "latent"
    if kind not in LOADERS:
        raise UnknownNameError(f"prior at {path} has kind {kind!r}; known kinds: {sorted(LOADERS)}")
    src_arg = str(path) if path.exists() else src
    try:
        return LOADERS[kind](src_arg, device=device, dtype=dtype, **overrides)
    except InvsolveError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError) as e:  # corrupt or truncated files, wrong layouts
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InputFileError(f"prior {src!r}: cannot load its weights from {src_arg!r} ({type(e).__name__}: "
                             f"{detail}); re-export or re-download the prior") from e
