"""JSON-safe copies of records (run.json, evaluation items): tensors, numpy scalars and non-finite floats."""
from __future__ import annotations

import numpy as np
import torch


def json_safe(obj):
    """A copy of ``obj`` that ``json.dump`` accepts: string keys, small tensors as lists (larger ones as their
    shape), numpy scalars as Python numbers, NaN/Inf as strings and anything else unknown as ``str(obj)``."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist() if obj.numel() <= 64 else f"tensor{tuple(obj.shape)}"
    if isinstance(obj, (np.floating, np.integer)):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return str(obj)
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)
