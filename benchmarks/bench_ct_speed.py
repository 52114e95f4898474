"""Speed of ParallelBeamCT (forward + adjoint) against skimage.transform.radon (forward only), per image.

Setting: batch 16, 128x128, 180 views over [0, pi), float32, torch threads as configured. Reports the median of
several runs; skimage is timed on a few images of the batch (one call per image). Writes
``benchmarks/results/ct_speed.json`` (or ``--out``). Target: ratio >= 10.

    python benchmarks/bench_ct_speed.py [--runs 7] [--out PATH]
    python benchmarks/bench_ct_speed.py --report     # only rewrite the BENCHMARKS.md section from the JSON
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import skimage
import torch
from skimage.data import shepp_logan_phantom
from skimage.transform import radon, resize

from invsolve.operators.ct import ParallelBeamCT, sparse_view_angles

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, update_benchmarks_md  # noqa: E402

BATCH, SIZE, VIEWS = 16, 128, 180


def _timed(fn, runs: int, sync=lambda: None) -> list:
    fn()  # warm-up
    sync()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t0)
    return out


def markdown(r: dict) -> str:
    """The BENCHMARKS.md section for one result of this script."""
    st, sec, m = r["setting"], r["seconds"], r["machine"]
    return "\n".join([
        "## ParallelBeamCT speed vs scikit-image's radon (issue #3)", "",
        f"Batch {st['batch']} at {st['image_size']}x{st['image_size']}, {st['n_views']} views over [0, pi), "
        f"{st['n_detectors']} detectors, float32 on the CPU ({m.get('cores', m.get('cpu_count'))} cores, "
        f"{m['torch_threads']} torch threads, load average {m.get('load_average', m.get('load_average_1min')):.1f});"
        f" medians of {st['runs']} runs. Ours is timed for the "
        f"forward projection *and* its adjoint on the whole batch; `skimage.transform.radon` (forward only, "
        f"`circle=False`) on {st['skimage_images_per_run']} images per run. Reproduce: "
        "`python benchmarks/bench_ct_speed.py`; result: `benchmarks/results/ct_speed.json`.", "",
        "| | ms per image |", "|---|---|",
        f"| ParallelBeamCT forward + adjoint | {1e3 * sec['ours_forward_adjoint_per_image']:.2f} |",
        f"| skimage radon, forward only | {1e3 * sec['skimage_radon_per_image']:.2f} |", "",
        f"Ratio **{r['ratio_skimage_over_ours']:.1f}x** (target {r['target_ratio']:.0f}x; "
        f"{r['versions']['torch']}, scikit-image {r['versions']['skimage']}).", ""])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--skimage-images", type=int, default=4, help="images per skimage timing run")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "ct_speed.json"))
    parser.add_argument("--report", action="store_true", help="only rewrite BENCHMARKS.md from the stored result")
    args = parser.parse_args()
    if args.report:
        update_benchmarks_md("ct-speed", markdown(json.loads(Path(args.out).read_text())))
        return

    rng = np.random.default_rng(0)
    base = resize(shepp_logan_phantom(), (SIZE, SIZE), anti_aliasing=True)
    images = np.stack([base * rng.uniform(0.5, 1.5) for _ in range(BATCH)]).astype(np.float32)
    angles = sparse_view_angles(VIEWS)
    theta = np.rad2deg(angles.numpy())

    t0 = time.perf_counter()
    op = ParallelBeamCT(SIZE, angles)
    build_s = time.perf_counter() - t0
    x = torch.from_numpy(images)[:, None]

    with torch.no_grad():
        fwd = _timed(lambda: op(x), args.runs)
        y = op(x)
        adj = _timed(lambda: op.adjoint(y), args.runs)
        both = _timed(lambda: op.adjoint(op(x)), args.runs)
    k = args.skimage_images
    sk = _timed(lambda: [radon(images[i], theta=theta, circle=False) for i in range(k)], args.runs)

    ours_per_image = statistics.median(both) / BATCH
    sk_per_image = statistics.median(sk) / k
    result = {
        "benchmark": "ParallelBeamCT forward+adjoint vs skimage.transform.radon (forward), per image",
        "setting": {"batch": BATCH, "image_size": SIZE, "n_views": VIEWS, "n_detectors": op.n_detectors,
                    "dtype": "float32", "device": "cpu", "runs": args.runs, "skimage_images_per_run": k},
        "machine": {**machine(), "platform": platform.platform()},
        "versions": {"torch": torch.__version__, "skimage": skimage.__version__, "numpy": np.__version__},
        "seconds": {
            "operator_build": build_s,
            "forward_batch_median": statistics.median(fwd),
            "adjoint_batch_median": statistics.median(adj),
            "forward_adjoint_batch_median": statistics.median(both),
            "forward_adjoint_batch_runs": both,
            "skimage_radon_run_median": statistics.median(sk),
            "skimage_radon_runs": sk,
            "ours_forward_adjoint_per_image": ours_per_image,
            "skimage_radon_per_image": sk_per_image,
        },
        "ratio_skimage_over_ours": sk_per_image / ours_per_image,
        "target_ratio": 10.0,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    update_benchmarks_md("ct-speed", markdown(result))
    print(f"ours {1e3 * ours_per_image:.2f} ms/image (forward+adjoint), skimage radon {1e3 * sk_per_image:.2f} "
          f"ms/image -> ratio {result['ratio_skimage_over_ours']:.1f}x (target 10x); wrote {out}")


if __name__ == "__main__":
    main()
