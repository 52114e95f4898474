"""Deprecated: the classical reconstructions moved to :mod:`invsolve.solvers` (this path is kept for one release)."""
from .._deprecated import moved

__getattr__ = moved(__name__, "invsolve.solvers.linear")
