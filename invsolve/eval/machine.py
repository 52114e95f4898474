"""What a measurement ran on: one description for the harness (``plan.json``, report headers, item records) and
the benchmark scripts (``benchmarks/_common.py``).

Wall times and CPU peak memory depend on the machine and on what else runs on it, so every figure is stored with
the CPU model or GPU, the cores this process may use, torch's thread count and version, and the load average.
"""
from __future__ import annotations

import os
import platform
from datetime import datetime, timezone
from typing import Any, Dict, Optional

import torch


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> Optional[list]:
    """1-, 5- and 15-minute load averages (``None`` where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("invsolve")
    except Exception:  # noqa: BLE001 - not installed (a source tree on PYTHONPATH)
        return "unknown"


def describe(device=None) -> Dict[str, Any]:
    """The machine as a JSON-able dict.

    Keys: ``device`` (``"cpu"`` / ``"cuda:0"``), ``gpu`` (name or ``None``), ``cpu``, ``cores`` (logical CPUs on
    the machine), ``cores_usable`` (those this process may run on), ``torch_threads``, ``torch``, ``cuda``,
    ``python``, ``invsolve``, ``host``, ``load_average`` ([1, 5, 15] min), ``date`` (UTC, ISO 8601).
    """
    dev = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = None
    if dev.type == "cuda" and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(dev)
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {"device": str(dev), "gpu": gpu, "cpu": cpu_model(), "cores": os.cpu_count(), "cores_usable": usable,
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "python": platform.python_version(), "invsolve": _version(), "host": platform.node(),
            "load_average": load_average(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def hardware(device) -> str:
    """One line naming what a computation on ``device`` ran on (stored in every result item)."""
    d = describe(device)
    if d["gpu"]:
        return f"cuda: {d['gpu']}"
    return f"cpu: {d['cpu']}, {d['cores']} cores visible, {d['torch_threads']} torch thread(s)"


def summary(d: Dict[str, Any]) -> str:
    """One sentence from :func:`describe`'s dict, for report headers."""
    what = f"GPU {d['gpu']} (CUDA {d.get('cuda')}), " if d.get("gpu") else ""
    load = d.get("load_average")
    load_txt = f"load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1/5/15 min)" if load else "load n/a"
    return (f"{what}CPU {d['cpu']} ({d['cores']} logical cores, {d.get('cores_usable', d['cores'])} usable), "
            f"{d['torch_threads']} torch thread(s), torch {d['torch']}, Python {d['python']}, "
            f"invsolve {d.get('invsolve', '?')}; {load_txt} at {d['date']}")
