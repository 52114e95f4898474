"""Issue #2 speed benchmark: where DDS spends its time, and the cost of batched CG.

* time per DDS step split into the network call (Tweedie) and data consistency (5 CG iterations incl. Aᴴy);
* CG time per iteration ÷ one ``normal()`` call (goal ≤ 1.3): the slope of CG wall time against the iteration
  count (fixed-iteration mode, warm start), divided by the time of one ``A.normal``.
Medians of repeated timings; 64×64, 8 coils, batch 1 and 8.

Run: python benchmarks/bench_dds_speed.py [--device cuda]   (writes benchmarks/results/dds_speed_<device>.json)
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, update_benchmarks_md, write_result  # noqa: E402

import invsolve as inv  # noqa: E402
from invsolve.linalg import cg  # noqa: E402
from invsolve.operators import MultiCoilMRI, coils, masks  # noqa: E402
from invsolve.samplers.dds import data_consistency  # noqa: E402


def timeit(fn, device, repeat=15, warmup=3):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


@torch.no_grad()
def measure(batch, device, prior):
    op = MultiCoilMRI(coils.birdcage(8, (64, 64)), masks.uniform1d((64, 64), 4, 0.08, seed=0)).to(device)
    g = torch.Generator().manual_seed(0)
    x = torch.complex(torch.randn(batch, 1, 64, 64, generator=g), torch.randn(batch, 1, 64, 64, generator=g))
    x = x.to(device)
    y = op(x)
    xp = prior.to_prior(x)
    t_net = timeit(lambda: prior.tweedie(xp, 500), device, repeat=7)
    t_dc = timeit(lambda: data_consistency(op, y, x, gamma=10.0, cg_iters=5), device)
    t_normal = timeit(lambda: op.normal(x), device, repeat=50)

    def K(v):
        return v + 10.0 * op.normal(v)

    b = x + 10.0 * op.adjoint(y)
    iters = [1, 2, 5, 10, 20]
    t_cg = [timeit(lambda m=m: cg(K, b, x, max_iter=m), device) for m in iters]
    slope = float(np.polyfit(iters, t_cg, 1)[0])
    return {"batch": batch, "network_s": t_net, "dc_s": t_dc, "step_s": t_net + t_dc,
            "network_fraction": t_net / (t_net + t_dc), "normal_s": t_normal,
            "cg_times_s": dict(zip(map(str, iters), t_cg)), "cg_per_iteration_s": slope,
            "cg_iteration_over_normal": slope / t_normal,
            "cg5_over_5_normals": t_cg[2] / (5 * t_normal)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    prior = inv.load_prior("mri-brain", device=dev)
    out = {"machine": machine(), "rows": [measure(b, dev, prior) for b in (1, 8)]}
    write_result(f"dds_speed_{dev.type}", out)
    m = out["machine"]
    lines = [f"## DDS cost per step on {dev.type.upper()} (issue #2)", "",
             f"{m.get('gpu') or m.get('cpu', m['device'])}, {m['torch_threads']} torch thread(s), {m['date'][:10]}. "
             "64×64, 8 coils, 4x mask; "
             "network = one Tweedie call of `mri-brain`, data consistency = Aᴴy plus 5 CG iterations on "
             "(I + γAᴴA). The last column is the slope of CG wall time against the iteration count divided by "
             "one `normal()` call (goal ≤ 1.3): the cost of CG beyond the operator itself. Medians of repeated "
             "timings.", "",
             f"Command: `python benchmarks/bench_dds_speed.py --device {dev.type} --threads {m['torch_threads']}`. "
             f"Load average during the run: {m['load_average']}.", "",
             "| batch | network / step | CG data consistency / step | network share | one `normal()` | "
             "CG time per iteration ÷ `normal()` |", "|---|---|---|---|---|---|"]
    for r in out["rows"]:
        lines.append(f"| {r['batch']} | {r['network_s'] * 1e3:.1f} ms | {r['dc_s'] * 1e3:.2f} ms | "
                     f"{r['network_fraction']:.1%} | {r['normal_s'] * 1e3:.3f} ms | "
                     f"{r['cg_iteration_over_normal']:.2f} |")
    update_benchmarks_md(f"dds-speed-{dev.type}", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
