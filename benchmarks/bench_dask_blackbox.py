"""Serial vs Dask (2 local worker processes on 127.0.0.1) evaluation of an expensive pure-numpy black box.

Forward model: explicit finite-difference Allen–Cahn equation ``u_t = D Δu + u - u^3`` (phase separation) on a periodic
``N x N`` grid, ``steps`` forward-Euler steps, observed at every 4th grid point (a stand-in for a legacy simulator:
pure numpy, single-threaded, ~0.4 s per item here). The ensemble is evaluated item by item through
:class:`invsolve.operators.BlackBox`, once without an executor and once through ``Client.get_executor()``.

Two worker environments are timed: Dask's default, which sets ``MALLOC_TRIM_THRESHOLD_=65536`` in every worker
process (``distributed.nanny.pre-spawn-environ``), and the same plus ``MALLOC_MMAP_THRESHOLD_=16777216``. Setting any
glibc malloc threshold switches off glibc's dynamic mmap threshold, so every numpy temporary of >= 128 KiB (here each
128x128 float64 array) is mmap'ed and unmapped on every allocation: measured in a plain process, the Allen-Cahn item
takes 0.76 s by default and 1.83 s with ``MALLOC_TRIM_THRESHOLD_=65536``, 0.84 s with both variables set. (Setting
``pre-spawn-environ`` to ``{}`` does not help: Dask merges config dictionaries, so the default key stays.)

Run: ``python benchmarks/bench_dask_blackbox.py [--items 16 --steps 1000 --grid 128 --repeats 3]``
Writes ``benchmarks/results/dask_blackbox.json``.
"""
import argparse
import json
import os
import platform
import time

import numpy as np
import torch

from invsolve.operators.blackbox import BlackBox


def allen_cahn(u0, steps=1000, D=0.2, dt=0.2):
    """``u0`` ``(1, N, N)`` numpy -> ``u(steps dt)[::4, ::4]`` flattened ``(N*N/16,)``."""
    u = np.array(u0[0], dtype=np.float64)
    for _ in range(steps):
        lap = np.roll(u, 1, 0) + np.roll(u, -1, 0) + np.roll(u, 1, 1) + np.roll(u, -1, 1) - 4 * u
        u = u + dt * (D * lap + u - u**3)
    return u[::4, ::4].ravel()


def _cpu_pressure():
    """Linux PSI line 'some avg10=... avg60=...' (share of time runnable tasks waited for a CPU), or None."""
    try:
        with open("/proc/pressure/cpu") as fh:
            return fh.readline().strip()
    except OSError:
        return None


def _contended(pressure):
    """True when other work kept this machine's CPUs busy (PSI some avg10 > 20 %): the speed-up is then capped by
    the CPU share the scheduler grants this session (Linux autogroup), not by Dask; re-run on an idle machine."""
    try:
        return float(pressure.split()[1].split("=")[1]) > 20 if pressure else None
    except (IndexError, ValueError):
        return None


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=16)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--grid", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "dask_blackbox.json"))
    a = p.parse_args()
    import dask
    import distributed

    n = a.grid
    x = torch.rand(a.items, 1, n, n, generator=torch.Generator().manual_seed(0), dtype=torch.float64) - 0.5

    def fn(item):
        return allen_cahn(item, steps=a.steps)

    shape_in, shape_out = (1, n, n), ((n // 4) ** 2,)
    serial = BlackBox(fn, shape_in, shape_out, batched=False)
    y_serial = serial(x[:2])
    load_before, pressure_before = os.getloadavg(), _cpu_pressure()
    # Serial and Dask runs are interleaved (serial, then each chunking, per repeat) so that a change in the load
    # from other processes on the machine hits both alike; the speed-up is the median of the per-repeat ratios.
    times = {"serial": []}
    for env_label, env in (("default_env", None), ("mmap_threshold_16MiB", {"MALLOC_MMAP_THRESHOLD_": 16777216})):
        with dask.config.set({} if env is None else {"distributed.nanny.pre-spawn-environ": env}):
            cluster = distributed.LocalCluster(
                n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
            )
            client = distributed.Client(cluster)
        try:
            ops = {
                f"{env_label}/chunk_size={chunk or 'per_worker'}": BlackBox(
                    fn, shape_in, shape_out, batched=False, executor=client.get_executor(), chunk_size=chunk
                )
                for chunk in (None, 1)
            }
            for op in ops.values():
                op(x[:2])  # warm-up: ship the function, import numpy/torch on the workers
            for _ in range(a.repeats):
                t = time.perf_counter()
                y_serial = serial(x)
                times["serial"].append(time.perf_counter() - t)
                for label, op in ops.items():
                    t = time.perf_counter()
                    y = op(x)
                    times.setdefault(label, []).append(time.perf_counter() - t)
                    assert torch.equal(y, y_serial), "Dask result differs from the serial result"
        finally:
            client.close()
            cluster.close()

    t_serial = times.pop("serial")
    ratios = {}
    for label, ts in times.items():
        block = t_serial[: a.repeats] if label.startswith("default_env") else t_serial[a.repeats :]
        ratios[label] = float(np.median([s_ / d_ for s_, d_ in zip(block, ts)]))
    result = {
        "forward_model": f"explicit Allen-Cahn u_t = 0.2 Lap u + u - u^3, {n}x{n}, {a.steps} Euler steps of 0.2, numpy",
        "items": a.items,
        "seconds_per_item_serial": float(np.median(t_serial)) / a.items,
        "serial_seconds": t_serial,
        "dask_seconds": times,
        "speedup_median": ratios,
        "speedup_best_times": {k: min(t_serial) / min(v) for k, v in times.items()},
        "dask_cluster": "LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host='127.0.0.1')",
        "note": "mmap_threshold_16MiB: dask config distributed.nanny.pre-spawn-environ also sets "
        "MALLOC_MMAP_THRESHOLD_=16777216 (Dask's default MALLOC_TRIM_THRESHOLD_=65536 disables glibc's dynamic mmap "
        "threshold, which slows numpy loops that allocate >= 128 KiB temporaries)",
        "cpu_count": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "cpu_pressure_before": pressure_before,
        "cpu_pressure_after": _cpu_pressure(),
        "machine_contended": _contended(pressure_before),
        "identical_results": True,
        "versions": {"python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
                     "dask": dask.__version__, "distributed": distributed.__version__},
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as fh:
        json.dump(result, fh, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
