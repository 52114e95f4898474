"""Inference options for a prior's network: reduced precision, channels-last memory layout, ``torch.compile``.

``load_prior(..., dtype="bf16", channels_last=True, compile=True)`` (or :func:`accelerate` on a loaded prior)
changes only *how* the network runs; inputs and outputs of the prior stay float32 in NCHW. What each option buys
is measured on the device it runs on (``benchmarks/gpu_real_scale.py``): on GPUs bf16/fp16 use tensor cores
(ADM keeps its GroupNorm in float32), channels-last lets cuDNN skip layout transposes, and ``torch.compile`` fuses
the elementwise work between convolutions (the first call compiles: seconds to minutes).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..errors import InvalidValueError, InvsolveError
from .base import Prior
from .checkpoint import as_dtype

NETWORK_ATTRS = ("net", "unet")  # ADMPrior.net, DiffusersPrior.unet
COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class AcceleratedNetwork(nn.Module):
    """Wraps a network: inputs converted to channels-last, calls routed through ``torch.compile``.

    Attribute lookups the wrapper does not define (``config``, ``dtype``, ...) go to the wrapped network, so the
    prior that owns it keeps working unchanged. ``state_dict`` keys gain the prefix ``inner.``.
    """

    def __init__(self, inner: nn.Module, channels_last: bool = False, compile: bool = False,
                 compile_mode: Optional[str] = None, compile_backend: Optional[str] = None):
        super().__init__()
        self.inner = inner
        self.channels_last = bool(channels_last)
        self.compile_mode = compile_mode if compile else None
        self.compiled = bool(compile)
        if channels_last:
            inner.to(memory_format=torch.channels_last)
        # kept out of the module tree (a compiled wrapper would duplicate the parameters in state_dict)
        kw = {"backend": compile_backend} if compile_backend else {}
        fn = torch.compile(inner, mode=compile_mode, dynamic=False, **kw) if compile else inner
        object.__setattr__(self, "_call", fn)

    def forward(self, x, *args, **kwargs):
        if not self.channels_last or x.dim() != 4:
            return self._call(x, *args, **kwargs)
        out = self._call(x.contiguous(memory_format=torch.channels_last), *args, **kwargs)
        # hand back NCHW, as the wrapped network would (diffusers returns an output object with .sample)
        if isinstance(out, torch.Tensor):
            return out.contiguous()
        if isinstance(getattr(out, "sample", None), torch.Tensor):
            out.sample = out.sample.contiguous()
        return out

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            modules = self.__dict__.get("_modules")
            if name.startswith("__") or not modules or "inner" not in modules:  # copying/unpickling: not yet built
                raise
            return getattr(modules["inner"], name)


def network_attr(prior: Prior) -> str:
    for a in NETWORK_ATTRS:
        if isinstance(getattr(prior, a, None), nn.Module):
            return a
    raise InvsolveError(f"prior {prior.name!r} ({type(prior).__name__}) has no network attribute "
                        f"({' or '.join(NETWORK_ATTRS)}) that dtype/channels_last/compile could act on")


def accelerate(prior: Prior, *, dtype=None, channels_last: bool = False, compile: bool = False,
               compile_mode: Optional[str] = None, compile_backend: Optional[str] = None) -> Prior:
    """Apply inference options to ``prior``'s network in place and return the prior.

    Args:
        dtype: network weights' dtype (``torch.bfloat16``, ``"fp16"``, ...; ``None`` keeps it).
        channels_last: NHWC memory layout for weights and inputs.
        compile: wrap the network in ``torch.compile`` (``compile_mode``: ``None``/``"default"``,
            ``"reduce-overhead"`` (CUDA graphs), ``"max-autotune"``, ...). Compilation happens at the first call.
            ``compile_backend``: ``torch.compile``'s backend (default inductor; ``"eager"`` only traces, for tests).
    """
    if compile_mode not in COMPILE_MODES:
        raise InvalidValueError(f"compile_mode must be one of {COMPILE_MODES}, got {compile_mode!r}")
    if (compile_mode is not None or compile_backend is not None) and not compile:
        raise InvalidValueError(f"compile_mode / compile_backend need compile=True, got compile={compile!r}")
    attr = network_attr(prior)
    net = getattr(prior, attr)
    if dtype is not None:
        net.to(as_dtype(dtype))
    if channels_last or compile:
        if isinstance(net, AcceleratedNetwork):
            net = net.inner
        setattr(prior, attr, AcceleratedNetwork(net, channels_last, compile, compile_mode, compile_backend))
    info = {"dtype": str(getattr(prior, attr).dtype).removeprefix("torch."), "channels_last": bool(channels_last),
            "compile": (compile_mode or compile_backend or "default") if compile else False}
    prior.card = {**prior.card, "inference": info}
    return prior
