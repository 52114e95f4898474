"""Plumbing of the real-scale GPU benchmark (issue #24), dry-run on the CPU with tiny networks."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _env():
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    return env


def test_cpu_smoke_writes_consistent_rows(tmp_path):
    out = tmp_path / "smoke.json"
    r = subprocess.run([sys.executable, "benchmarks/gpu_real_scale.py", "--cpu-smoke", "--threads", "1", "--models",
                        "adm-ffhq256", "--variants", "bf16", "--batches", "2", "--out", str(out)], cwd=ROOT,
                       env=_env(), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    d = json.loads(out.read_text())
    assert d["mode"] == "cpu-smoke" and d["errors"] == []
    rows = {(x["variant"], x["sampler"]): x for x in d["rows"]}
    assert {("fp32", "dds"), ("fp32", "dps-100"), ("fp32", "dps-1000"), ("bf16", "dds")} <= set(rows)
    for x in d["rows"]:
        assert x["model"] == "adm-ffhq256" and x["batch"] == 2 and x["nfe"] == x["steps"]
        assert x["seconds_per_image"] == pytest.approx(x["seconds_per_step"] * x["steps"] / 2)
        assert x["images_per_second"] == pytest.approx(1 / x["seconds_per_image"])
    # DPS ran a step or two and was extrapolated to 100 and 1000 steps from the same per-step time
    d100, d1000 = rows[("fp32", "dps-100")], rows[("fp32", "dps-1000")]
    assert d100["extrapolated_from_steps"] == d1000["extrapolated_from_steps"] < 100
    assert d1000["seconds_per_image"] == pytest.approx(10 * d100["seconds_per_image"])
    dds = rows[("fp32", "dds")]
    assert dds["finite"] and 0 < dds["cg_share"] < 1
    # no host reads in CG or in the DDS loop (CPU stand-in count), whatever the number of iterations/steps
    assert all(v["counts"] == {} for v in d["host_syncs"].values()), d["host_syncs"]
    # the report states the extrapolation
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_real_scale

    text = gpu_real_scale.report_section([out])
    assert "**Extrapolated**" in text and "| adm-ffhq256 | 2 | bf16 | dds |" in text


def test_bad_model_name_is_refused(monkeypatch, capsys):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_real_scale

    monkeypatch.setattr(sys, "argv", ["gpu_real_scale.py", "--cpu-smoke", "--models", "adm-ffhq"])
    with pytest.raises(SystemExit) as e:
        gpu_real_scale.main()
    assert e.value.code == 2 and "--models: unknown ['adm-ffhq']" in capsys.readouterr().err


@pytest.mark.slow
def test_gpu_script_dry_run_on_cpu(tmp_path):
    env = _env()
    env.update(OUT=str(tmp_path), PYTHON=sys.executable)
    r = subprocess.run(["bash", "benchmarks/gpu_real_scale.sh", "--cpu-smoke"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert {"env.txt", "gpu_tests.log", "gpu_tests.xml", "bench.log", "real_scale_smoke.json"} <= {
        p.name for p in tmp_path.iterdir()}
    xml = (tmp_path / "gpu_tests.xml").read_text()
    assert 'failures="0"' in xml and 'errors="0"' in xml and 'skipped="' in xml  # collected, skipped without CUDA
    assert json.loads((tmp_path / "real_scale_smoke.json").read_text())["errors"] == []
