"""Deprecated: split into :mod:`invsolve.operators.inpainting` (``Inpainting``, ``random_mask``, ``box_mask``) and
:mod:`invsolve.operators.resolution` (``SuperResolution``, ``bicubic_matrix``); this path is kept for one release."""
from .._deprecated import moved

__getattr__ = moved(__name__, {
    **dict.fromkeys(("Inpainting", "random_mask", "box_mask"), "invsolve.operators.inpainting"),
    **dict.fromkeys(("SuperResolution", "bicubic_matrix"), "invsolve.operators.resolution")})
