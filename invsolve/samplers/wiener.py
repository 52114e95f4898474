"""Deprecated: moved to :mod:`invsolve.solvers.wiener` (this path is kept for one release)."""
from .._deprecated import moved

__getattr__ = moved(__name__, {"pinv": "invsolve.solvers.linear:pseudo_inverse", **dict.fromkeys(
    ("wiener", "noise_sigma_mad", "AUTO_FACTOR"), "invsolve.solvers.wiener")})
