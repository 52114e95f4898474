"""Count the operations that make the host wait for a device (host synchronisations), on any device.

A GPU runs ahead of Python only while nothing on the host needs a device value. What forces a wait:

* **reads** of a device value into Python: ``.item()``, ``float(t)``, ``int(t)``, ``bool(t)`` (``if t:``), indexing
  with a 0-d tensor — all dispatch to ``aten._local_scalar_dense`` (or ``aten.item`` / ``aten.is_nonzero``) —
  and ops whose output *size* depends on the data (``aten.nonzero``, boolean-mask indexing ``x[m]`` and
  ``x[m] = v``, ``torch.equal``);
* **device-to-host copies** (``.cpu()``, ``.numpy()``, ``.tolist()``);
* **blocking host-to-device copies** (``torch.as_tensor(v, device=cuda)``, ``t.to("cuda")`` without
  ``non_blocking=True`` from pinned memory): PyTorch waits for the copy to finish.

:class:`HostSyncCounter` is a ``TorchDispatchMode`` that records each of these whose device tensor lives on the
watched device, so the property "no host synchronisation per iteration" can be tested on any machine: on a CPU
every op runs, and a read of a CPU tensor is recorded exactly as the same read of a CUDA tensor would be (the
device only decides whether it stalls). On the ``meta`` device a read fails outright, and copies back to the host
return zeros (recorded), which lets a whole sampler loop run without data.
"""
from __future__ import annotations

import traceback
from collections import Counter
from typing import List, Optional, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode

READS = ("aten._local_scalar_dense", "aten.item", "aten.is_nonzero", "aten.nonzero", "aten.equal",
         "aten.masked_select", "aten.unique", "aten._unique2")


def _device_of(x) -> Optional[torch.device]:
    return x.device if isinstance(x, torch.Tensor) else None


class HostSyncCounter(TorchDispatchMode):
    """``with HostSyncCounter("cuda") as c: ...`` then ``c.total``, ``c.counts`` (by kind), ``c.events``.

    Args:
        device: the device whose tensors are watched (``"cpu"``: count reads of CPU tensors, the stand-in for a
            GPU when testing on a machine without one; copies are not counted there, since host and device are one).
        where: keep a short stack summary per event (the innermost invsolve frame) in :attr:`events`.

    Kinds: ``"read"`` (a value or a data-dependent size read on the host), ``"d2h"`` (a copy to the CPU),
    ``"h2d_blocking"`` (a copy from the CPU without ``non_blocking=True``; 0-d scalars passed as kernel arguments
    are not copies and are not counted).
    """

    def __init__(self, device="cpu", where: bool = True):
        super().__init__()
        self.device = torch.device(device)
        self.where = where
        self.counts: Counter = Counter()
        self.events: List[Tuple[str, str, str]] = []

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def _watched(self, dev: Optional[torch.device]) -> bool:
        return dev is not None and dev.type == self.device.type

    def _record(self, kind: str, op: str):
        self.counts[kind] += 1
        if self.where:
            frames = [f for f in traceback.extract_stack()[:-3]
                      if "invsolve" in f.filename and "_syncs" not in f.filename]
            loc = f"{frames[-1].filename.split('invsolve/')[-1]}:{frames[-1].lineno}" if frames else "?"
            self.events.append((kind, op, loc))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func.overloadpacket)
        src = _device_of(args[0]) if args else None
        if name in READS and self._watched(src):
            self._record("read", name)
        elif name in ("aten.index", "aten.index_put", "aten.index_put_") and self._watched(src) and any(
                isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in (args[1] or ())):
            self._record("read", name + "[mask]")  # boolean-mask indexing: the result size depends on the data
        elif name == "aten._to_copy" and self.device.type != "cpu":
            dst = kwargs.get("device") or src
            dst = torch.device(dst) if dst is not None else None
            if self._watched(src) and dst is not None and dst.type == "cpu":
                self._record("d2h", name)
                if src.type == "meta":  # no data to copy: hand back zeros of the right shape
                    return torch.zeros(args[0].shape, dtype=kwargs.get("dtype") or args[0].dtype)
            elif (src is not None and src.type == "cpu" and self._watched(dst) and args[0].dim() > 0
                  and not kwargs.get("non_blocking", False)):
                self._record("h2d_blocking", name)
        elif name == "aten.copy_" and self.device.type != "cpu" and len(args) >= 2:
            dst, src2 = _device_of(args[0]), _device_of(args[1])
            blocking = not (args[2] if len(args) > 2 else kwargs.get("non_blocking", False))
            if self._watched(src2) and dst is not None and dst.type == "cpu":
                self._record("d2h", name)
            elif src2 is not None and src2.type == "cpu" and self._watched(dst) and blocking and args[1].dim() > 0:
                self._record("h2d_blocking", name)
        return func(*args, **kwargs)

    def summary(self) -> str:
        """One line per distinct (kind, op, location) with its count."""
        c = Counter(self.events)
        return "\n".join(f"{n:5d}  {k:<13} {op:<28} {loc}" for (k, op, loc), n in c.most_common())
