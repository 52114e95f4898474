"""Operator protocol: ``y = A(x)`` as a pure :class:`torch.nn.Module`.

Conventions:

* tensors are ``(B, C, H, W)``; complex operators take complex dtypes;
* parameters are fixed at construction and registered as buffers, so ``op.to(device)`` works and a call never
  mutates the operator;
* noise is never added inside ``A``;
* linear operators add :meth:`LinearOperator.adjoint` (``A^H``) and :meth:`LinearOperator.normal` (``A^H A``),
  and compose like sigpy linops: ``A @ B``, ``A.H``, ``A.N``, ``2.0 * A``.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from ..errors import DTypeError, InvalidValueError, ShapeError

Shape = Tuple[int, ...]


def _fmt(shape) -> str:
    return "(" + ", ".join("B" if s is None else str(s) for s in shape) + ")"


def check_real(t: torch.Tensor, name: str):
    """Raise :class:`DTypeError` unless ``t`` is a real floating-point tensor."""
    if not t.is_floating_point():
        raise DTypeError(f"{name} must be a real floating-point tensor, got dtype {t.dtype}")


def check_tensor(t, name: str, shape: Optional[Shape], complex_: Optional[bool]) -> torch.Tensor:
    """Validate a batched tensor ``(B, *shape)``; raise a clear error naming ``name`` otherwise.

    ``shape`` is the per-item shape (``None`` entries are free); ``complex_`` is the required dtype kind
    (``None``: either).
    """
    if not isinstance(t, torch.Tensor):
        raise DTypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if complex_ is True and not t.is_complex():
        raise DTypeError(
            f"{name} must be complex (this operator acts on complex data), got dtype {t.dtype}; "
            f"convert with torch.complex(re, im) or x.to(torch.complex64)"
        )
    if complex_ is False and t.is_complex():
        raise DTypeError(f"{name} must be real, got complex dtype {t.dtype}")
    if shape is not None:
        want = (None,) + tuple(shape)
        ok = t.dim() == len(want) and all(w is None or w == s for w, s in zip(want, t.shape))
        if not ok:
            raise ShapeError(f"{name} has shape {tuple(t.shape)}, expected {_fmt(want)} for this operator")
    return t


class Operator(nn.Module):
    """A (possibly nonlinear) forward model ``y = A(x)``.

    Subclasses set ``input_shape`` / ``output_shape`` (per item, without the batch axis; ``None`` entries are
    free) and ``is_complex`` (whether ``x`` is complex). ``default_prior`` names the embedded prior that
    :func:`invsolve.solve` uses when none is given.
    """

    is_linear: bool = False
    is_complex: bool = False
    measurement_complex: Optional[bool] = None  # None: same as is_complex
    default_prior: Optional[str] = None
    # operator family (mri, ct, deblur, sr, inpaint, ns, phase-retrieval, blackbox, ...): selects tuned presets
    # (invsolve.presets) and the noise estimator (invsolve.noise_level); None: unknown
    task_family: Optional[str] = None
    input_shape: Optional[Shape] = None
    output_shape: Optional[Shape] = None

    # -- validation -------------------------------------------------------------------------
    @property
    def _y_complex(self) -> bool:
        return self.is_complex if self.measurement_complex is None else self.measurement_complex

    def check_input(self, x: torch.Tensor, name: str = "x") -> torch.Tensor:
        return check_tensor(x, name, self.input_shape, self.is_complex)

    def check_measurement(self, y: torch.Tensor, name: str = "y") -> torch.Tensor:
        check_tensor(y, name, self.output_shape, self._y_complex)
        finite = torch.isfinite(torch.view_as_real(y) if y.is_complex() else y)
        if not finite.all():
            raise InvalidValueError(f"{name} contains NaN or Inf values ({int((~finite).sum())} of {finite.numel()} "
                                    f"entries); expected finite measurements: clean {name} before solving")
        return y

    def batch_size(self) -> Optional[int]:
        """Batch size of per-item parameters (e.g. one mask per slice), or ``None`` if shared."""
        return None

    def repeat_interleave(self, n: int) -> "Operator":
        """Operator for a batch where every item is repeated ``n`` times (used for ``num_samples``)."""
        return self

    # -- composition ------------------------------------------------------------------------
    def __matmul__(self, other: "Operator") -> "Operator":
        if self.is_linear and other.is_linear:
            return ComposedLinear(self, other)
        return Composed(self, other)

    def extra_repr(self) -> str:
        return f"input_shape={self.input_shape}, output_shape={self.output_shape}"


class LinearOperator(Operator):
    """A linear operator with an exact adjoint."""

    is_linear = True

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """``A^H A x``; subclasses override with closed forms."""
        return self.adjoint(self.forward(x))

    @property
    def H(self) -> "LinearOperator":
        return Adjoint(self)

    @property
    def N(self) -> "LinearOperator":
        return Normal(self)

    def __rmul__(self, scale: float) -> "LinearOperator":
        return Scaled(self, scale)

    __mul__ = __rmul__

    def pinv(self, y: torch.Tensor, iterations: int = 30, reg: float = 0.0) -> torch.Tensor:
        """Least-squares (Tikhonov-regularised when ``reg > 0``) solution by CG on the normal equations."""
        from ..linalg import cg

        def K(v):
            return self.normal(v) + reg * v if reg else self.normal(v)

        return cg(K, self.adjoint(y), max_iter=iterations).x


class Composed(Operator):
    """``(A @ B)(x) = A(B(x))`` for possibly nonlinear operators."""

    def __init__(self, A: Operator, B: Operator):
        super().__init__()
        self.A, self.B = A, B
        self.is_complex = B.is_complex
        self.measurement_complex = A._y_complex
        self.input_shape, self.output_shape = B.input_shape, A.output_shape
        self.default_prior = B.default_prior

    def forward(self, x):
        return self.A(self.B(x))


class ComposedLinear(LinearOperator):
    """``A @ B`` for linear operators; ``(AB)^H = B^H A^H``."""

    def __init__(self, A: LinearOperator, B: LinearOperator):
        super().__init__()
        self.A, self.B = A, B
        self.is_complex = B.is_complex
        self.measurement_complex = A._y_complex
        self.input_shape, self.output_shape = B.input_shape, A.output_shape
        self.default_prior = B.default_prior

    def forward(self, x):
        return self.A(self.B(x))

    def adjoint(self, y):
        return self.B.adjoint(self.A.adjoint(y))


class Adjoint(LinearOperator):
    """``A^H`` as an operator; its adjoint is ``A``."""

    def __init__(self, A: LinearOperator):
        super().__init__()
        self.A = A
        self.is_complex = A._y_complex
        self.measurement_complex = A.is_complex
        self.input_shape, self.output_shape = A.output_shape, A.input_shape

    def forward(self, y):
        return self.A.adjoint(y)

    def adjoint(self, x):
        return self.A(x)


class Normal(LinearOperator):
    """``A^H A`` (self-adjoint)."""

    def __init__(self, A: LinearOperator):
        super().__init__()
        self.A = A
        self.is_complex = self.measurement_complex = A.is_complex
        self.input_shape = self.output_shape = A.input_shape

    def forward(self, x):
        return self.A.normal(x)

    def adjoint(self, x):
        return self.A.normal(x)


class Scaled(LinearOperator):
    """``s * A`` for a real scalar ``s``."""

    def __init__(self, A: LinearOperator, scale: float):
        super().__init__()
        self.A, self.scale = A, float(scale)
        self.is_complex, self.measurement_complex = A.is_complex, A._y_complex
        self.input_shape, self.output_shape = A.input_shape, A.output_shape
        self.default_prior = A.default_prior

    def forward(self, x):
        return self.scale * self.A(x)

    def adjoint(self, y):
        return self.scale * self.A.adjoint(y)

    def normal(self, x):
        return self.scale**2 * self.A.normal(x)


class Identity(LinearOperator):
    """``A = I`` on items of ``shape`` (denoising)."""

    def __init__(self, shape: Optional[Sequence[int]] = None, complex: bool = False):
        super().__init__()
        self.input_shape = self.output_shape = tuple(shape) if shape is not None else None
        self.is_complex = complex

    def forward(self, x):
        return x

    def adjoint(self, y):
        return y

    def normal(self, x):
        return x


def inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample inner product ``<a, b> = sum conj(a) b`` over all but the batch axis; shape ``(B,)``."""
    dims = tuple(range(1, a.dim()))
    if a.is_complex() or b.is_complex():
        return (a.conj() * b).sum(dim=dims)
    return (a * b).sum(dim=dims)


def adjoint_mismatch(op: LinearOperator, x: torch.Tensor, y: torch.Tensor) -> float:
    """Relative dot-test error ``|<Ax, y> - <x, A^H y>| / (|<Ax, y>| + eps)`` (use float64 inputs)."""
    lhs = inner(op(x), y).sum()
    rhs = inner(x, op.adjoint(y)).sum()
    return float((lhs - rhs).abs() / (lhs.abs() + 1e-30))
