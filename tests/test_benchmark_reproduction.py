"""Stored benchmark figures are reproduced: re-solving a stored item of the core suite gives its reconstruction.

``results/core/items/<task>/<method>/i<image>_s<seed>.json`` records the problem options, the method's knobs, the
seed, the machine (torch threads) and the metrics of one result that BENCHMARKS.md reports; the reconstruction is
stored beside it locally (``.npy``, not committed). These tests rebuild the problem through the harness (its content hash must equal the
stored one, so the measurement is the same), check that the method's configuration hash is unchanged (so the stored
result is still current), re-run the item on the recorded number of torch threads and compare every stored metric (PSNR, SSIM, relative L2,
data residual) **exactly** (JSON keeps a float's every bit) and the NFE: one item per core sampler, the cheapest of
each; the diffusion samplers' items (10 s to 10 min of CPU each) are marked slow.

What is compared was produced by the code before the sampler refactor (issue #25), so these tests show that the
restructured samplers compute what the published figures came from.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ITEMS = ROOT / "results" / "core" / "items"

# one stored item per core sampler (the cheapest on CPU); items over ~30 s of CPU are slow
FAST = ["inpaint/adjoint/i001_s0", "mri-4x/cg/i000_s0", "ct-sparse/fbp/i002_s0", "inpaint/tv/i001_s0",
        "deblur/wiener/i003_s0", "inpaint/pinv/i003_s0"]
SLOW = ["inpaint/dds/i000_s0", "deblur/ddnm/i001_s0", "ct-sparse/diffpir/i002_s0", "inpaint/pigdm/i000_s0",
        "deblur/dps/i000_s0", "deblur/mcg/i000_s0", "mri-4x/stsl/i001_s0", "inpaint/stsl-latent/i001_s0",
        "inpaint/psld/i000_s0", "sr-4x/psld-latent/i000_s0", "ns/enkg/i000_s0", "ns/dps-gsg/i000_s0"]


def rerun(key: str, tmp: Path):
    """``(stored record, new record)`` of the stored item ``key`` re-run through the harness."""
    from invsolve.eval import harness

    stored = json.loads((ITEMS / f"{key}.json").read_text())
    suite = harness.load_suite(ROOT / "configs" / "bench" / "core.yaml")
    suite["tasks"] = [t for t in suite["tasks"] if t["id"] == stored["task"]]
    suite["methods"] = [m for m in suite["methods"] if m["id"] == stored["method"]]
    suite.update(output_dir=str(tmp), lpips=False)
    plan = harness.prepare(suite, device="cpu", log=lambda *a: None)
    pair = plan.pairs[f"{stored['task']}/{stored['method']}"]
    assert plan.tasks[stored["task"]]["hash"] == stored["task_hash"], "the problem (measurements) changed"
    assert pair["hash"] == stored["method_hash"], "the method's configuration hash changed"
    threads = int(re.search(r"(\d+) torch thread", stored["hardware"]).group(1))
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        rec = harness.run_item(plan, harness.Item(stored["task"], stored["method"], stored["image"], stored["seed"]),
                               (0, 1))
    finally:
        torch.set_num_threads(old)
    assert rec["status"] == "ok", rec.get("error")
    return stored, rec


def _check(key, tmp_path):
    stored, rec = rerun(key, tmp_path)
    want = {k: v for k, v in stored["metrics"].items() if isinstance(v, float)}
    got = {k: rec["metrics"][k] for k in want}
    assert "psnr" in want and got == want, f"{key}: metrics {got} != stored {want}"
    assert rec["nfe"] == stored["nfe"]


@pytest.mark.parametrize("key", FAST)
def test_stored_classical_results_are_reproduced(key, tmp_path):
    _check(key, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("key", SLOW)
def test_stored_diffusion_results_are_reproduced(key, tmp_path):
    _check(key, tmp_path)
