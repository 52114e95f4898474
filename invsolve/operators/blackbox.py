"""Black-box forward models: any numpy or torch callable, evaluated in chunks through any executor.

``BlackBox(fn, input_shape, output_shape)`` turns ``fn`` into an :class:`~invsolve.operators.base.Operator` for
derivative-free samplers (EnKG, DPS-GSG, ...). ``forward`` runs under ``torch.no_grad``: no gradient flows through
``fn`` (the output never requires grad), so samplers that need one must use a differentiable operator.

* ``BlackBox(fn)`` is enough; ``input_shape`` / ``output_shape`` (per item) add checks and document the model.
* ``batched=True``: ``fn(batch) -> batch`` on ``(n, *input_shape) -> (n, *output_shape)``;
  ``batched=False``: ``fn(item) -> item`` on ``input_shape -> output_shape``.
* ``backend="numpy"`` (default) hands ``fn`` numpy arrays; ``"torch"`` hands it torch tensors (on the input's device
  when ``executor`` is None, on the CPU otherwise). ``fn`` may return numpy arrays, torch tensors or nested lists.
  The result is a torch tensor on the input's device with the input's real dtype (complex counterpart when
  ``output_complex``).
* ``executor``: any :class:`concurrent.futures.Executor` (``ThreadPoolExecutor``, ``ProcessPoolExecutor`` — there
  ``fn`` must be picklable, i.e. a module-level function —, or a Dask ``distributed.Client.get_executor()``, which
  pickles with cloudpickle so lambdas and closures work). The caller owns the executor and shuts it down.
* ``chunk_size``: items per call / task. Default: the whole batch without an executor; with one, the batch split
  evenly over the executor's workers.
* Every output is validated: a wrong shape or type, NaN/Inf, a complex output where a real one is expected, or an
  exception raised inside ``fn`` raises :class:`BlackBoxError`, naming the failing item indices (and chunk). Nothing
  is dropped or averaged away.
"""
from __future__ import annotations

import math
import os
import traceback
from concurrent.futures import Executor
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..errors import InvsolveError
from .base import Operator

__all__ = ["BlackBox", "BlackBoxError"]


class BlackBoxError(InvsolveError, RuntimeError):
    """A black-box forward model failed or returned invalid output.

    Attributes:
        items: sorted indices (in the batch passed to the operator) of the items that failed.
        chunks: indices of the chunks that contained them.
    """

    def __init__(self, message: str, items: Sequence[int] = (), chunks: Sequence[int] = ()):
        super().__init__(message)
        self.items, self.chunks = list(items), list(chunks)


# -- work done on the executor (module level so that it pickles) ---------------------------------------------
def _call_chunk(fn: Callable, chunk: Any, batched: bool) -> Tuple[str, Any]:
    """Evaluate ``fn`` on a chunk. Returns ``("ok", output)`` for a batched call, ``("items", [per-item results])``
    for per-item calls (each ``("ok", out)`` or ``("raised", reason)``), or ``("raised", reason)`` when a batched
    call raised. Exceptions are turned into text so that nothing unpicklable travels back."""
    if batched:
        try:
            return "ok", fn(chunk)
        except Exception as exc:  # noqa: BLE001 - reported to the user with the item indices
            return "raised", "fn raised " + _describe(exc)
    results = []
    for item in chunk:
        try:
            results.append(("ok", fn(item)))
        except Exception as exc:  # noqa: BLE001
            results.append(("raised", "fn raised " + _describe(exc)))
    return "items", results


def _describe(exc: BaseException) -> str:
    tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
    return f"{type(exc).__name__}: {exc}\n    " + "".join(tb[-3:]).strip().replace("\n", "\n    ")


def _executor_workers(executor: Executor) -> int:
    n = getattr(executor, "_max_workers", None)
    if n:
        return int(n)
    client = getattr(executor, "_client", None)  # distributed.client.ClientExecutor
    if client is not None:
        try:
            return max(1, sum(client.nthreads().values()))
        except Exception:  # noqa: BLE001 - fall back to the local core count
            pass
    return os.cpu_count() or 1


def _fmt_shape(shape) -> str:
    return "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"


def _finite(t: torch.Tensor) -> torch.Tensor:
    return torch.isfinite(torch.view_as_real(t) if t.is_complex() else t)


def _shape_ok(shape: Sequence[int], want: Sequence[Optional[int]]) -> bool:
    return len(shape) == len(want) and all(w is None or w == s for w, s in zip(want, shape))


class BlackBox(Operator):
    """Wrap a callable as a (nonlinear, gradient-free) forward model; see the module docstring.

    Args:
        fn: ``fn(batch) -> batch`` (``batched=True``) or ``fn(item) -> item``.
        input_shape, output_shape: per-item shapes without the batch axis, e.g. ``(1, 64, 64)`` and ``(4096,)``;
            ``None`` entries are free. ``None`` (the default): not checked, except that every item's output must
            have the shape of the first one (``BlackBox(fn)`` is enough).
        batched: whether ``fn`` takes a batch or a single item.
        executor: a ``concurrent.futures.Executor`` (or a Dask client's ``get_executor()``), or ``None`` to call
            ``fn`` in this thread.
        chunk_size: items per call/task (default in the module docstring).
        input_complex, output_complex: dtype kinds of ``x`` and of ``fn``'s output.
        backend: ``"numpy"`` or ``"torch"``: what ``fn`` receives.
        default_prior: prior that :func:`invsolve.solve` uses when none is given.

    ``forward(x)``: ``x`` ``(B, *input_shape)`` tensor -> ``(B, *output_shape)`` on ``x.device``; no gradient.
    """

    is_linear = False
    # set by solve() on its copy of a black box without output_shape: outputs must have y's item shape
    shape_from_y = False
    task_family = "blackbox"

    def __init__(
        self,
        fn: Callable,
        input_shape: Optional[Sequence[Optional[int]]] = None,
        output_shape: Optional[Sequence[Optional[int]]] = None,
        batched: bool = True,
        executor: Optional[Executor] = None,
        chunk_size: Optional[int] = None,
        input_complex: bool = False,
        output_complex: bool = False,
        *,
        backend: str = "numpy",
        default_prior: Optional[str] = None,
    ):
        super().__init__()
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        if backend not in ("numpy", "torch"):
            raise ValueError(f"backend must be 'numpy' or 'torch', got {backend!r}")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size}")
        if executor is not None and not callable(getattr(executor, "submit", None)):
            raise TypeError(f"executor must be a concurrent.futures.Executor (with .submit), got {type(executor)}")
        self.fn, self.batched, self.executor, self.chunk_size, self.backend = fn, batched, executor, chunk_size, backend
        self.input_shape = None if input_shape is None else tuple(input_shape)
        self.output_shape = None if output_shape is None else tuple(output_shape)
        self.is_complex, self.measurement_complex = bool(input_complex), bool(output_complex)
        self.default_prior = default_prior

    # -- helpers ------------------------------------------------------------------------------------------
    def _chunks(self, B: int) -> List[Tuple[int, int]]:
        if self.chunk_size is not None:
            size = self.chunk_size
        elif self.executor is None:
            size = B
        else:
            size = math.ceil(B / _executor_workers(self.executor))
        size = max(1, size)
        return [(lo, min(B, lo + size)) for lo in range(0, B, size)]

    def _to_fn(self, x: torch.Tensor):
        if self.backend == "torch":
            return x if self.executor is None else x.cpu()
        return x.cpu().numpy()

    def _as_tensor(self, out: Any, n: Optional[int], item_shape) -> Tuple[Optional[torch.Tensor], Optional[str]]:
        """``(tensor, None)`` for a well-formed output of ``n`` items (``None``: one item), else ``(None, reason)``.

        ``item_shape`` ``None`` accepts any per-item shape."""
        try:
            t = out if isinstance(out, torch.Tensor) else torch.as_tensor(np.asarray(out))
        except Exception as exc:  # noqa: BLE001
            return None, f"output is a {type(out).__name__}, not an array ({exc})"
        if t.is_complex() and not self._y_complex:
            return None, f"output is complex ({t.dtype}) but output_complex=False"
        if not (t.is_complex() or t.is_floating_point() or t.dtype in (torch.int32, torch.int64, torch.bool)):
            return None, f"output has dtype {t.dtype}, expected a numeric array"
        lead = () if n is None else (n,)
        want = lead + (tuple(t.shape[len(lead) :]) if item_shape is None else tuple(item_shape))
        if not _shape_ok(tuple(t.shape), want):
            if self.shape_from_y:
                name = getattr(self.fn, "__name__", type(self.fn).__name__)
                raise BlackBoxError(f"black-box forward model {name!r} returns items of shape "
                                    f"{tuple(t.shape[len(lead):])} but the measurement y has items of shape "
                                    f"{_fmt_shape(item_shape)}; fn's output must match y (BlackBox(output_shape=...) "
                                    f"states it)")
            return None, f"output has shape {tuple(t.shape)}, expected {_fmt_shape(want)}"
        return t, None

    # -- forward ------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        with torch.no_grad():
            return self._evaluate(x.detach())

    def _evaluate(self, x: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        real = x.real.dtype if x.is_complex() else x.dtype
        out_dtype = (torch.complex128 if real == torch.float64 else torch.complex64) if self._y_complex else real
        if B == 0:
            shape = tuple(s or 0 for s in self.output_shape or ())
            return torch.empty((0,) + shape, dtype=out_dtype, device=x.device)
        spans = self._chunks(B)
        args = [self._to_fn(x[lo:hi]) for lo, hi in spans]
        if self.executor is None:
            raw = [_call_chunk(self.fn, a, self.batched) for a in args]
        else:
            futures = [self.executor.submit(_call_chunk, self.fn, a, self.batched) for a in args]
            raw = []
            for fut in futures:
                try:
                    raw.append(fut.result())
                except Exception as exc:  # noqa: BLE001 - e.g. fn not picklable, worker died
                    raw.append(("failed", "the executor task failed (is fn picklable? did a worker die?): "
                                + _describe(exc)))

        outputs: List[Optional[torch.Tensor]] = []
        problems: List[Tuple[List[int], int, str]] = []  # (items, chunk, reason)
        item_shape = self.output_shape  # without one, the first valid output fixes it
        for c, ((lo, hi), (kind, payload)) in enumerate(zip(spans, raw)):
            if kind != "items":
                t, reason = (None, payload) if kind != "ok" else self._as_tensor(payload, hi - lo, item_shape)
                if reason is None and not _finite(t).all():
                    bad = (~_finite(t).reshape(hi - lo, -1).all(dim=1)).nonzero().flatten()
                    problems.append(([lo + int(i) for i in bad], c, "output contains NaN/Inf"))
                elif reason is not None:
                    problems.append((list(range(lo, hi)), c, reason))
                item_shape = item_shape if t is None or item_shape is not None else tuple(t.shape[1:])
                outputs.append(t)
                continue
            items = []
            for i, (ikind, val) in enumerate(payload):
                t, reason = (None, val) if ikind != "ok" else self._as_tensor(val, None, item_shape)
                if reason is None and not _finite(t).all():
                    reason = "output contains NaN/Inf"
                if reason is not None:
                    problems.append(([lo + i], c, reason))
                item_shape = item_shape if t is None or item_shape is not None else tuple(t.shape)
                items.append(t)
            outputs.append(None if any(t is None for t in items) else torch.stack(items))
        if problems:
            raise self._error(problems, B, spans)
        return torch.cat([o.to(device=x.device, dtype=out_dtype) for o in outputs])

    def _error(self, problems, B: int, spans) -> BlackBoxError:
        items = sorted({i for its, _, _ in problems for i in its})
        chunks = sorted({c for _, c, _ in problems})
        lines = []
        for k, (its, c, reason) in enumerate(problems[:8]):
            lo, hi = spans[c]
            reason = reason if k == 0 else reason.split("\n")[0]  # one traceback is enough
            where = f"item {its[0]}" if len(its) == 1 else f"items {_ranges(its)}"
            lines.append(f"  {where} (chunk {c} = items {lo}..{hi - 1}): {reason}")
        if len(problems) > 8:
            lines.append(f"  ... and {len(problems) - 8} more problems")
        name = getattr(self.fn, "__name__", type(self.fn).__name__)
        msg = (
            f"black-box forward model {name!r} failed for {len(items)} of {B} items "
            f"(items {_ranges(items)}; chunks {chunks}):\n" + "\n".join(lines)
        )
        return BlackBoxError(msg, items, chunks)

    def extra_repr(self) -> str:
        return (
            f"fn={getattr(self.fn, '__name__', type(self.fn).__name__)}, input_shape={self.input_shape}, "
            f"output_shape={self.output_shape}, batched={self.batched}, backend={self.backend}, "
            f"executor={type(self.executor).__name__ if self.executor is not None else None}, "
            f"chunk_size={self.chunk_size}"
        )


def _ranges(items: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2, 5"``."""
    out, start, prev = [], None, None
    for i in list(items) + [None]:
        if start is None:
            start = prev = i
        elif i is not None and i == prev + 1:
            prev = i
        else:
            out.append(str(start) if start == prev else f"{start}-{prev}")
            start = prev = i
    return ", ".join(out)
