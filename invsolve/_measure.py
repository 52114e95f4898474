"""Wall time and peak memory of a block of work.

CUDA: peak bytes allocated by PyTorch on the device during the block (``torch.cuda.max_memory_allocated``).
CPU: peak growth of the process's resident set size over its value at entry, sampled every 5 ms by a
background thread (Linux ``/proc/self/statm``; ``None`` where unavailable).
"""
from __future__ import annotations

import os
import threading
import time
from typing import Optional

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss() -> Optional[int]:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        return None


class Measure:
    """Context manager: ``with Measure(device) as m: ...`` then ``m.seconds``, ``m.peak_memory`` (bytes)."""

    def __init__(self, device, interval: float = 0.005):
        self.device = torch.device(device)
        self.interval = interval
        self.seconds = 0.0
        self.peak_memory: Optional[int] = None
        self.kind = "cuda_max_allocated" if self.device.type == "cuda" else "cpu_rss_growth"

    def _poll(self):
        while not self._stop.wait(self.interval):
            r = _rss()
            if r is not None:
                self._peak = max(self._peak, r)

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            self._base = _rss()
            self._peak = self._base or 0
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            if self._base is not None:
                self._thread.start()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.seconds = time.perf_counter() - self._t0
            self.peak_memory = int(torch.cuda.max_memory_allocated(self.device) - self._base)
        else:
            self.seconds = time.perf_counter() - self._t0
            if self._base is not None:
                self._stop.set()
                self._thread.join()
                self._peak = max(self._peak, _rss() or 0)
                self.peak_memory = int(max(self._peak - self._base, 0))
        return False
