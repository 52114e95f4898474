"""Reading weight files and loading them into a module with errors that list what does not fit."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Union

import torch

from ..errors import InputFileError

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def as_dtype(dtype: Union[str, torch.dtype]) -> torch.dtype:
    """A torch floating dtype from a dtype or a name (``"float16"``/``"fp16"``, ``"bfloat16"``/``"bf16"``, ...)."""
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return dtype
    if isinstance(dtype, str) and dtype.lower().removeprefix("torch.") in _DTYPES:
        return _DTYPES[dtype.lower().removeprefix("torch.")]
    raise ValueError(f"dtype must be a floating torch dtype or one of {sorted(_DTYPES)}, got {dtype!r}")


def read_state_dict(path: Union[str, Path]) -> Dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or a torch pickle (``.pt``/``.pth``/``.bin``/``.ckpt``), on the CPU.

    A pickle holding ``{"state_dict": ...}``, ``{"model": ...}`` or ``{"ema": ...}`` is unwrapped, and a
    ``module.`` prefix (``DataParallel``) is removed. Pickles are read with ``weights_only=True``.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputFileError(f"weights file {str(p)!r} does not exist")
    if p.suffix not in WEIGHT_SUFFIXES:
        raise InputFileError(f"weights file {str(p)!r} has suffix {p.suffix!r}; expected one of {WEIGHT_SUFFIXES}")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(p))
    else:
        try:
            sd = torch.load(str(p), map_location="cpu", weights_only=True)
        except Exception as e:
            raise InputFileError(f"could not read {str(p)!r} as a torch state dict ({type(e).__name__}: {e})") from e
        for key in ("state_dict", "model", "ema"):
            if isinstance(sd, dict) and isinstance(sd.get(key), dict):
                sd = sd[key]
                break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise InputFileError(f"{str(p)!r} does not hold a state dict (a mapping of names to tensors)")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _listing(keys, limit: int = 12) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_state_dict_checked(module: torch.nn.Module, state_dict: Dict[str, torch.Tensor], source: str,
                            hint: str = "") -> None:
    """``module.load_state_dict(state_dict)`` that fails with the missing, unexpected and mis-shaped keys listed."""
    own = module.state_dict()
    missing = set(own) - set(state_dict)
    unexpected = set(state_dict) - set(own)
    shapes = [f"{k} {tuple(state_dict[k].shape)} (model: {tuple(own[k].shape)})"
              for k in sorted(set(own) & set(state_dict)) if own[k].shape != state_dict[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_listing(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_listing(unexpected)}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es): {_listing(shapes)}")
        raise InputFileError(f"weights in {source} do not fit the {type(module).__name__}: " + "; ".join(parts)
                             + (f". {hint}" if hint else ""))
    module.load_state_dict(state_dict, strict=True)
