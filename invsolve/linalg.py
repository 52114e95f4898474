"""Batched linear algebra: conjugate gradients, power iteration, Hutchinson probes.

Every routine treats axis 0 as a batch of *independent* problems: step sizes, residual norms and stopping
decisions are per sample, so a sample's result never depends on the rest of the batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

Tensor = torch.Tensor


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample ``Re <a, b> = Re sum conj(a) b``, shape ``(B,)``; accumulated in float64."""
    if a.is_complex():  # Re(conj(a) b) = Re a Re b + Im a Im b: one product over the real views
        a, b = torch.view_as_real(a.resolve_conj()), torch.view_as_real(b.resolve_conj())
    return (a * b).sum(dim=tuple(range(1, a.dim())), dtype=torch.float64)


def _bilinear(a: Tensor, b: Tensor) -> Tensor:
    """Unconjugated ``sum a b`` (complex-symmetric COCG form used by the DDS reference code)."""
    dims = tuple(range(1, a.dim()))
    p = a * b
    return p.to(torch.complex128 if p.is_complex() else torch.float64).sum(dim=dims)


def _ratio(num: Tensor, den: Tensor, nonnegative: bool) -> Tensor:
    """``num / den`` per sample, 0 where ``den == 0`` (a converged or zero system takes no step)."""
    if nonnegative:  # Hermitian CG: den = ||.||² or <p, Kp>, real; den <= 0 only for p = 0 (or rounding)
        return torch.where(den > 0, num / den, 0.0)
    safe = den != 0
    return torch.where(safe, num / torch.where(safe, den, torch.ones_like(den)), torch.zeros_like(num))


def _bcast(v: Tensor, like: Tensor) -> Tensor:
    return v.reshape((-1,) + (1,) * (like.dim() - 1))


@dataclass
class CGResult:
    """Output of :func:`cg`.

    Attributes:
        x: solution, same shape/dtype as ``b``.
        iterations: per-sample iteration counts ``(B,)`` (int64; in fixed mode all equal ``max_iter``).
        residual_norm: per-sample ``||b - K x||_2`` estimated by the recursion, ``(B,)`` float64.
        history: ``(iters+1, B)`` residual norms (first row = initial residual).
    """

    x: Tensor
    iterations: Tensor
    residual_norm: Tensor
    history: Tensor


def cg(
    K: Callable[[Tensor], Tensor],
    b: Tensor,
    x0: Optional[Tensor] = None,
    *,
    max_iter: int = 5,
    tol: Optional[float] = None,
    reference_complex_inner_product: bool = False,
    tol_reference: str = "rhs",
    keep_best: bool = False,
) -> CGResult:
    """Solve ``K x = b`` for a batch of Hermitian positive (semi-)definite systems.

    Args:
        K: callable applying the operator to a batch ``(B, ...)``; must act on each sample independently.
        b: right-hand sides ``(B, ...)``, real or complex.
        x0: warm start (same shape as ``b``); zeros if ``None``.
        max_iter: maximum number of iterations.
        tol: relative tolerance ``||r|| <= tol * ||b||`` per sample. ``None`` (default) runs exactly
            ``max_iter`` iterations with no host synchronisation (GPU-friendly; CUDA-graph safe). With a
            tolerance, converged samples are frozen (they get exactly the result they would get alone) and the
            loop exits early once all have converged (one host sync per iteration).
        tol_reference: what ``tol`` is relative to: ``"rhs"`` (``||b||``, default) or ``"initial"`` (the initial
            residual ``||b - K x0||``: reduce it by the factor ``tol``, the natural test for a warm start).
        keep_best: return each sample's iterate with the smallest (recursive) residual, and with ``tol`` stop a
            sample whose residual has grown past 10 times its best: a safeguard for long runs where rounding
            (an operator whose adjoint is exact only to float32) breaks CG down and the residual grows again.
        reference_complex_inner_product: use the unconjugated bilinear form ``sum r_i^2`` of the DDS
            reference code (complex-symmetric COCG) instead of Hermitian CG. Only for reproducing published
            numbers.

    Returns:
        :class:`CGResult`.
    """
    if max_iter < 0:
        raise ValueError(f"max_iter must be >= 0, got {max_iter}")
    if tol_reference not in ("rhs", "initial"):
        raise ValueError(f"tol_reference must be 'rhs' or 'initial', got {tol_reference!r}")
    dot = _bilinear if reference_complex_inner_product else _dot
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b - K(x) if x0 is not None else b.clone()
    p = r.clone()
    rr = dot(r, r)
    bnorm = _dot(b, b).sqrt()
    rnorm = _dot(r, r).sqrt()
    history = [rnorm]
    if tol_reference == "initial":
        bnorm = rnorm
    iters = torch.zeros(b.shape[0], dtype=torch.int64, device=b.device)
    active = torch.ones(b.shape[0], dtype=torch.bool, device=b.device)
    if tol is not None:
        active = rnorm > tol * bnorm
    hermitian = dot is _dot  # then rr = ||r||² and the residual norm needs no extra reduction
    best_x, best = (x.clone(), rnorm.clone()) if keep_best else (None, None)
    for _ in range(max_iter):
        if tol is not None and not bool(active.any()):
            break
        Kp = K(p)
        pKp = dot(p, Kp)
        alpha = _ratio(rr, pKp, hermitian)
        if tol is not None:
            alpha = torch.where(active, alpha, torch.zeros_like(alpha))
        a = _bcast(alpha, b).to(b.dtype)
        x = torch.addcmul(x, a, p)
        r = torch.addcmul(r, a, Kp, value=-1)
        rr_new = dot(r, r)
        beta = _ratio(rr_new, rr, hermitian)
        rnorm_new = rr_new.clamp_min(0).sqrt() if hermitian else _dot(r, r).sqrt()
        if tol is None:  # fixed iterations: every sample is active, no masking and no host synchronisation
            p = torch.addcmul(r, _bcast(beta, b).to(b.dtype), p)
            rr, rnorm = rr_new, rnorm_new
        else:
            p = torch.where(_bcast(active, b), r + _bcast(beta, b).to(b.dtype) * p, p)
            rr = torch.where(active, rr_new, rr)
            rnorm = torch.where(active, rnorm_new, rnorm)
        iters = iters + active.to(torch.int64)
        history.append(rnorm)
        if keep_best:
            better = rnorm < best
            best_x = torch.where(_bcast(better, b), x, best_x)
            best = torch.where(better, rnorm, best)
        if tol is not None:
            active = active & (rnorm > tol * bnorm)
            if keep_best:
                active = active & (rnorm <= 10 * best)
    if keep_best:
        return CGResult(x=best_x, iterations=iters, residual_norm=best, history=torch.stack(history))
    return CGResult(x=x, iterations=iters, residual_norm=rnorm, history=torch.stack(history))


class GraphedCG:
    """Fixed-iteration :func:`cg` captured once as a CUDA graph and replayed (CUDA tensors only).

    ``solver = GraphedCG(max_iter=5)``; ``solver(K, b, x0)`` returns what ``cg(K, b, x0, max_iter=5)`` returns. The
    first call (and any call with another shape/dtype/device) captures the whole solve, ``K`` included, into a
    ``torch.cuda.CUDAGraph`` after two warm-up runs on a side stream; later calls copy ``b`` and ``x0`` into the
    captured input buffers and replay the graph, so the host issues one launch instead of the ~10-20 small kernels
    per iteration. This is possible because fixed-iteration CG makes no host synchronisation.

    The caller guarantees that ``K`` is the same linear map at every call (same operator tensors and constants, as
    in a DDS run, where only the right-hand side and the warm start change): later ``K`` arguments are not looked
    at. Replay pays off when kernel launches, not the FFTs, dominate (small images or few coils; measure it:
    ``benchmarks/gpu_real_scale.py``).
    """

    def __init__(self, max_iter: int = 5, reference_complex_inner_product: bool = False, warmup: int = 2):
        if max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {max_iter}")
        self.max_iter, self.reference = int(max_iter), bool(reference_complex_inner_product)
        self.warmup = int(warmup)
        self.graph = None
        self.captures = 0
        self._key = None

    def _solve(self, K, b, x0):
        return cg(K, b, x0, max_iter=self.max_iter, reference_complex_inner_product=self.reference)

    def _capture(self, K, b, x0):
        self._b, self._x0 = b.clone(), None if x0 is None else x0.clone()
        side = torch.cuda.Stream(device=b.device)
        side.wait_stream(torch.cuda.current_stream(b.device))
        with torch.cuda.stream(side):  # warm-up: cuFFT plans, allocator pools
            for _ in range(self.warmup):
                self._solve(K, self._b, self._x0)
        torch.cuda.current_stream(b.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._out = self._solve(K, self._b, self._x0)
        self.captures += 1

    def __call__(self, K: Callable[[Tensor], Tensor], b: Tensor, x0: Optional[Tensor] = None) -> CGResult:
        if b.device.type != "cuda":
            raise ValueError(f"GraphedCG replays CUDA graphs; b is on {b.device} (use cg() there)")
        key = (tuple(b.shape), b.dtype, b.device, x0 is None)
        if self.graph is None or key != self._key:
            self._key = key
            self._capture(K, b, x0)
        self._b.copy_(b)
        if x0 is not None:
            self._x0.copy_(x0)
        self.graph.replay()
        o = self._out  # the graph's output buffers are overwritten by the next replay: hand out copies
        return CGResult(x=o.x.clone(), iterations=o.iterations.clone(), residual_norm=o.residual_norm.clone(),
                        history=o.history.clone())


def power_iteration(K: Callable[[Tensor], Tensor], x0: Tensor, iterations: int = 30) -> Tensor:
    """Largest eigenvalue of the Hermitian PSD operator ``K`` per sample, shape ``(B,)`` float64."""
    x = x0 / _bcast(_dot(x0, x0).sqrt().clamp_min(1e-30), x0).to(x0.dtype)
    lam = torch.zeros(x0.shape[0], dtype=torch.float64, device=x0.device)
    for _ in range(iterations):
        y = K(x)
        lam = _dot(x, y)
        x = y / _bcast(_dot(y, y).sqrt().clamp_min(1e-30), y).to(y.dtype)
    return lam


def rademacher_like(x: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """Random ±1 probe with the shape/dtype of ``x``."""
    r = torch.randint(0, 2, x.shape, generator=generator, device=x.device if generator is None else generator.device)
    return (2 * r - 1).to(x.dtype).to(x.device)


def hutchinson_trace(matvec: Callable[[Tensor], Tensor], like: Tensor, probes: int = 1,
                     generator: Optional[torch.Generator] = None, kind: str = "gaussian") -> Tensor:
    """Per-sample Hutchinson estimates ``v^T M v`` of ``tr(M)``, shape ``(probes, B)`` float64.

    ``kind`` is ``"gaussian"`` or ``"rademacher"``. The mean over probes is unbiased; its standard error is the
    sample std over probes divided by ``sqrt(probes)``.
    """
    out = []
    for _ in range(probes):
        if kind == "gaussian":
            v = torch.randn(like.shape, generator=generator, dtype=like.dtype,
                            device=like.device if generator is None else generator.device).to(like.device)
        elif kind == "rademacher":
            v = rademacher_like(like, generator)
        else:
            raise ValueError(f"kind must be 'gaussian' or 'rademacher', got {kind!r}")
        out.append(_dot(v, matvec(v)))
    return torch.stack(out)
