"""A deepinv ``Physics`` / ``LinearPhysics`` as an invsolve operator (optional dependency: ``deepinv``).

deepinv physics act on real tensors; complex data (MRI) use a channel axis of size 2 holding ``[Re, Im]``:
images ``(B, 2, H, W)``, single-coil k-space ``(B, 2, H, W)``, multi-coil k-space ``(B, 2, Nc, H, W)``. With
``complex=True`` the adapter exposes invsolve's complex convention instead — images ``(B, 1, H, W)``,
k-space ``(B, 1, H, W)`` or ``(B, Nc, H, W)`` — so that complex priors (``mri-brain``) and samplers apply unchanged.
For a complex-linear physics the real adjoint of the ``[Re, Im]`` map *is* the complex adjoint, so the dot test
holds in complex arithmetic.

Only the noiseless forward model ``physics.A`` is used (invsolve never adds noise inside ``A``); simulate noisy data
with ``physics(x)`` in deepinv's layout, or add noise yourself.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..errors import InvsolveError, ShapeError
from .base import LinearOperator, Operator, check_tensor

Tensor = torch.Tensor


def _is_linear(physics) -> bool:
    try:
        from deepinv.physics import LinearPhysics, Physics
    except ImportError:
        LinearPhysics = Physics = ()
    if Physics and isinstance(physics, Physics):
        return isinstance(physics, LinearPhysics)
    return callable(getattr(physics, "A_adjoint", None))


def _infer_input_shape(physics) -> tuple:
    size = getattr(physics, "img_size", None)
    if size is not None and len(tuple(size)) == 3:
        return tuple(int(s) for s in size)
    raise InvsolveError(f"cannot infer the input shape of {type(physics).__name__}; pass input_shape=(C, H, W), the "
                        f"shape of one deepinv input without the batch axis (e.g. (2, H, W) for MRI)")


class DeepinvOperator(Operator):
    """A (possibly nonlinear) deepinv physics behind the invsolve :class:`~invsolve.operators.base.Operator` protocol.

    Build it with :func:`from_deepinv`. ``physics`` is a submodule, so ``op.to(device)`` moves its buffers.
    """

    def __init__(self, physics, input_shape: Sequence[int], complex: bool = False):
        super().__init__()
        self.physics = physics
        self.dinv_input_shape = tuple(int(s) for s in input_shape)
        if complex and self.dinv_input_shape[0] != 2:
            raise ShapeError(f"complex=True needs deepinv's [Re, Im] layout with 2 channels; input_shape is "
                             f"{self.dinv_input_shape}")
        self.is_complex = bool(complex)
        p = next(iter(getattr(physics, "buffers", lambda: [])()), None)
        probe = torch.zeros((1,) + self.dinv_input_shape, device=p.device if p is not None else None)
        with torch.no_grad():
            out = physics.A(probe)
        self.dinv_output_shape = tuple(out.shape[1:])
        self.input_shape = tuple(self._from_dinv(probe).shape[1:])
        self.output_shape = tuple(self._from_dinv(out).shape[1:])

    def _from_dinv(self, t: Tensor) -> Tensor:
        if not self.is_complex:
            return t
        z = torch.complex(t[:, 0], t[:, 1])
        return z if z.dim() >= 4 else z[:, None]

    def _to_dinv(self, z: Tensor, shape: tuple) -> Tensor:
        if not self.is_complex:
            return z
        r = torch.stack([z.real, z.imag], dim=1)
        return r[:, :, 0] if r.dim() == len(shape) + 2 else r

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return self._from_dinv(self.physics.A(self._to_dinv(x, self.dinv_input_shape)))

    def extra_repr(self) -> str:
        return f"{type(self.physics).__name__}, complex={self.is_complex}, " + super().extra_repr()


class DeepinvLinearOperator(DeepinvOperator, LinearOperator):
    """A deepinv ``LinearPhysics``: adds ``adjoint`` from ``physics.A_adjoint``."""

    def adjoint(self, y: Tensor) -> Tensor:
        check_tensor(y, "y", self.output_shape, self.is_complex)
        return self._from_dinv(self.physics.A_adjoint(self._to_dinv(y, self.dinv_output_shape)))


def from_deepinv(physics, input_shape: Optional[Sequence[int]] = None, *, complex: bool = False,
                 linear: Optional[bool] = None) -> DeepinvOperator:
    """Wrap a deepinv physics (or any object with ``A(x)`` and, if linear, ``A_adjoint(y)``) as an invsolve operator.

    Args:
        physics: e.g. ``deepinv.physics.MRI(mask=...)``, ``MultiCoilMRI(mask=..., coil_maps=...)``, ``Blur(...)``.
        input_shape: shape of one deepinv input without the batch axis, e.g. ``(2, H, W)`` for MRI or
            ``(3, H, W)`` for an RGB blur; default: ``physics.img_size`` when it has three entries. The output shape
            is found by applying ``A`` to zeros once.
        complex: the physics uses deepinv's ``[Re, Im]`` channel layout; the operator takes complex
            ``(B, 1, H, W)`` images and returns complex measurements (see the module docstring).
        linear: force the kind; default: ``isinstance(physics, LinearPhysics)`` (for objects that are not deepinv
            physics: whether they have ``A_adjoint``).

    Returns:
        :class:`DeepinvLinearOperator` (with ``adjoint``/``normal``) or :class:`DeepinvOperator`. Per-item physics
        parameters (a batch of masks) are not repeated for ``solve(..., num_samples > 1)``: use shared ones.
    """
    if not callable(getattr(physics, "A", None)):
        raise InvsolveError(f"expected a deepinv Physics (with an A method), got {type(physics).__name__}")
    shape = tuple(input_shape) if input_shape is not None else _infer_input_shape(physics)
    lin = _is_linear(physics) if linear is None else linear
    if lin and not callable(getattr(physics, "A_adjoint", None)):
        raise InvsolveError(f"{type(physics).__name__} has no A_adjoint, so it cannot be used as a linear operator")
    return (DeepinvLinearOperator if lin else DeepinvOperator)(physics, shape, complex=complex)
