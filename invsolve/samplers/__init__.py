"""Samplers by name: ``dds`` and the baselines; classical ``adjoint``, ``cg``, ``fbp``, ``tv``."""
from .base import SamplerOutput, SamplerSpec, available_samplers, get_sampler, register_sampler

__all__ = ["SamplerOutput", "SamplerSpec", "available_samplers", "get_sampler", "register_sampler"]
