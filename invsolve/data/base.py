"""Training-data protocol used by ``invsolve train-prior``.

A dataset builder (registered by name in :mod:`invsolve.data`) takes the ``data:`` section of a training recipe
(a dict) and returns a :class:`TrainSource`. ``TrainSource.sample`` draws an augmented batch directly on the
training device, already in **prior space** (the network's channel layout and value range, nominally [-1, 1]).
Augmentation happens in torch on the device so that a GPU is never starved by a CPU data loader.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional

import torch


@dataclass
class TrainSource:
    """A source of training batches.

    Attributes:
        sample: ``sample(batch_size, generator, device) -> Tensor (B, C, H, W)`` float32 in prior space.
            ``generator`` is a ``torch.Generator`` on ``device``.
        channels: C.
        image_size: (H, W).
        description: one paragraph for the model card (what data, how many images, augmentation, what is held out).
        info: extra facts for the model card (counts, held-out ids, ...), JSON-serialisable.
        heldout: optional ``heldout() -> Tensor (N, C, H, W)`` of held-out images in prior space (never trained
            on), used for the model card's held-out figures. Name the set in ``info["heldout_name"]``.
    """

    sample: Callable[[int, torch.Generator, torch.device], torch.Tensor]
    channels: int
    image_size: tuple
    description: str
    info: Dict[str, Any] = field(default_factory=dict)
    heldout: Optional[Callable[[], torch.Tensor]] = None


_BUILDERS: Dict[str, Callable[..., TrainSource]] = {}


def register_dataset(name: str):
    """Decorator registering ``builder(**data_cfg) -> TrainSource`` under ``name``."""

    def deco(fn):
        _BUILDERS[name] = fn
        return fn

    return deco


def build_train_source(kind: str, **cfg) -> TrainSource:
    from ..errors import UnknownNameError

    _load_builtin()
    if kind not in _BUILDERS:
        raise UnknownNameError(f"unknown training dataset kind {kind!r}; available: {sorted(_BUILDERS)}")
    return _BUILDERS[kind](**cfg)


def available_datasets():
    _load_builtin()
    return sorted(_BUILDERS)


def _load_builtin():
    # Import modules that register builders; each is optional so that one missing extra does not hide the rest.
    import importlib

    for mod in ("mri", "ct", "natural", "ns", "ns_bank"):
        try:
            importlib.import_module(f"{__package__}.{mod}")
        except ModuleNotFoundError as e:  # a module not written yet, or its optional extra missing
            if e.name != f"{__package__}.{mod}" and not _is_optional(e.name):
                raise


def _is_optional(module: str) -> bool:
    return (module or "").split(".")[0] in {"nilearn", "pydicom", "dipy", "sklearn", "h5py"}
