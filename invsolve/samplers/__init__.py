"""Diffusion samplers by name: ``dds``, ``dds-3d``, ``stsl``, ``enkg`` and the baselines. The registry (:mod:`.base`)
also holds the classical reconstructions of :mod:`invsolve.solvers` (``adjoint``, ``cg``, ``fbp``, ``pinv``, ``tv``,
``wiener``), so every method is chosen by name the same way.

Every built-in module is imported here, by name, so that a missing or misspelt module fails at import. Shared update
rules live in :mod:`.steps`, DDS's data-consistency steps in :mod:`.consistency`.
"""
from .base import SamplerOutput, SamplerSpec, available_samplers, get_sampler, register_sampler  # noqa: I001 (first)
from . import daps, ddnm, dds, dds3d, diffpir, dps, dps_gsg, enkg, mcg, pigdm, psld, reddiff, stsl  # noqa: F401
from .. import solvers  # noqa: F401  (registers the classical methods)

__all__ = ["SamplerOutput", "SamplerSpec", "available_samplers", "get_sampler", "register_sampler"]
