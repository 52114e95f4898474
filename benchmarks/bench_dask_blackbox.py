"""Serial vs Dask (2 local worker processes on 127.0.0.1) evaluation of an expensive pure-numpy black box.

Forward model: explicit finite-difference Allen–Cahn equation ``u_t = D Δu + u - u^3`` (phase separation) on a periodic
``N x N`` grid, ``steps`` forward-Euler steps, observed at every 4th grid point (a stand-in for a legacy simulator:
pure numpy, single-threaded, ~0.4 s per item here). The ensemble is evaluated item by item through
:class:`invsolve.operators.BlackBox`, once without an executor and once through ``Client.get_executor()``.

Three worker environments are timed: Dask's default, which sets ``MALLOC_TRIM_THRESHOLD_=65536`` in every worker
process (``distributed.nanny.pre-spawn-environ``), the same plus ``MALLOC_MMAP_THRESHOLD_=16777216``, and both
thresholds raised (``MALLOC_TRIM_THRESHOLD_=1 GiB`` too, so freed heap memory is not returned to the OS after every
temporary: worker memory then stays at its peak, which a numpy simulator reuses anyway). Setting any
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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from invsolve.operators.blackbox import BlackBox

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, update_benchmarks_md  # noqa: E402

ENVS = (("default_env", None),
        ("mmap_threshold_16MiB", {"MALLOC_MMAP_THRESHOLD_": 16777216}),
        ("mmap_16MiB_trim_1GiB", {"MALLOC_MMAP_THRESHOLD_": 16777216, "MALLOC_TRIM_THRESHOLD_": 2**30}))


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
    p.add_argument("--envs", default=",".join(e for e, _ in ENVS),
                   help="comma-separated worker environments to time (default: all, in this order)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "dask_blackbox.json"))
    p.add_argument("--no-report", action="store_true", help="do not update BENCHMARKS.md")
    a = p.parse_args()
    known = dict(ENVS)
    envs = [(e, known[e]) for e in a.envs.split(",") if e in known]
    if not envs or len(envs) != len(a.envs.split(",")):
        p.error(f"--envs: expected a comma-separated subset of {', '.join(known)}, got {a.envs!r}")
    if len(envs) > 1:
        # One fresh Python process per worker environment: a LocalCluster started after another one had been
        # closed in the same process measured slower (1.71x instead of 1.84x for the same environment), so
        # environments timed in sequence in one process would not be compared fairly.
        parts = []
        with tempfile.TemporaryDirectory() as tmp:
            for e, _ in envs:
                out = os.path.join(tmp, f"{e}.json")
                subprocess.run([sys.executable, os.path.abspath(__file__), "--envs", e, "--items", str(a.items),
                                "--steps", str(a.steps), "--grid", str(a.grid), "--repeats", str(a.repeats),
                                "--out", out, "--no-report"], check=True, stdout=subprocess.DEVNULL)
                with open(out) as fh:
                    parts.append(json.load(fh))
        result = merge_results(parts)
        _write(result, a.out, report=not a.no_report)
        return
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
    for env_label, env in envs:
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
        k = [e for e, _ in envs].index(label.split("/")[0])  # serial runs interleaved with this environment's
        block = t_serial[k * a.repeats: (k + 1) * a.repeats]
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
        "threshold, which slows numpy loops that allocate >= 128 KiB temporaries); mmap_16MiB_trim_1GiB also raises "
        "MALLOC_TRIM_THRESHOLD_ to 1 GiB",
        "worker_environments": {k: v for k, v in envs},
        "cpu_count": os.cpu_count(),
        "machine": machine(),
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
    _write(result, a.out, report=not a.no_report)


def _write(result: dict, path: str, report: bool) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as fh:
        json.dump(result, fh, indent=2)
    print(json.dumps(result, indent=2))
    if report:
        update_benchmarks_md("dask-blackbox", markdown(result))


def merge_results(parts: list) -> dict:
    """One result from per-environment runs (each timed in its own process, serial runs interleaved with its own
    Dask runs)."""
    out = dict(parts[0])
    serial = [t for r in parts for t in r["serial_seconds"]]
    out.update(
        serial_seconds=serial,
        seconds_per_item_serial=float(np.median(serial)) / out["items"],
        dask_seconds={k: v for r in parts for k, v in r["dask_seconds"].items()},
        speedup_median={k: v for r in parts for k, v in r["speedup_median"].items()},
        speedup_best_times={k: v for r in parts for k, v in r["speedup_best_times"].items()},
        worker_environments={k: v for r in parts for k, v in r["worker_environments"].items()},
        load_average_after=parts[-1]["load_average_after"],
        cpu_pressure_after=parts[-1]["cpu_pressure_after"],
        machine_contended=any(r["machine_contended"] for r in parts),
        isolation="each worker environment timed in its own Python process",
        date=parts[-1]["date"],
    )
    return out


def markdown(r) -> str:
    """The BENCHMARKS.md section for one result."""
    best = max(r["speedup_median"].values())
    lines = ["## Black-box forward model through Dask (issue #5)", "",
             f"Forward model: {r['forward_model']} — pure numpy, single-threaded, "
             f"{r['seconds_per_item_serial']:.2f} s per item serially; {r['items']} items evaluated through "
             "`invsolve.operators.BlackBox` serially and through a `distributed.LocalCluster` with 2 worker processes "
             "(`client.get_executor()`); results identical to the serial ones. Speed-up = median over repeats of "
             "serial ÷ Dask wall time, serial and Dask runs interleaved"
             + (", each worker environment timed in its own Python process." if r.get("isolation") else "."), "",
             f"Command: `python benchmarks/bench_dask_blackbox.py` ({r['cpu_count']} CPU cores; load average before / "
             f"after: {r['load_average_before'][0]:.2f} / {r['load_average_after'][0]:.2f}; {r['date']}).", "",
             "| worker environment / chunking | speed-up (median) | speed-up (best times) |", "|---|---|---|"]
    for k, v in r["speedup_median"].items():
        lines.append(f"| {k} | {v:.2f}x | {r['speedup_best_times'][k]:.2f}x |")
    lines += ["", "`default_env` is Dask's default worker environment, which sets `MALLOC_TRIM_THRESHOLD_=65536`. "
              "Setting any glibc malloc threshold switches off glibc's dynamic mmap threshold, so every numpy "
              "temporary of 128 KiB or more is mmap'ed and unmapped on each allocation. `mmap_threshold_16MiB` adds "
              "`MALLOC_MMAP_THRESHOLD_=16777216` through `distributed.nanny.pre-spawn-environ`; "
              "`mmap_16MiB_trim_1GiB` also raises `MALLOC_TRIM_THRESHOLD_` to 1 GiB (freed heap memory is kept "
              f"by the worker). Goal ≥ 1.8x: **{'met' if best >= 1.8 else 'not met'}** (best setting "
              f"{best:.2f}x) on this {r['cpu_count']}-core machine, where the client and scheduler share the cores "
              "with the two workers."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
