"""Samplers by name: ``dds`` and the baselines; classical ``adjoint``, ``cg``, ``fbp``, ``pinv``, ``tv``, ``wiener``.

Every built-in sampler module is imported here, by name, so that a missing or misspelt module fails at import.
Shared update rules live in :mod:`.steps`, DDS's data-consistency steps in :mod:`.consistency`.
"""
from . import classical, ddnm, dds, dds3d, diffpir, dps, dps_gsg, enkg, mcg, pigdm, psld, stsl  # noqa: F401
from .base import SamplerOutput, SamplerSpec, available_samplers, get_sampler, register_sampler

__all__ = ["SamplerOutput", "SamplerSpec", "available_samplers", "get_sampler", "register_sampler"]
