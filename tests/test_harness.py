"""Evaluation harness: resume after SIGKILL, shards == one process, metrics vs independent computations,
LPIPS reporting, failures recorded, suite validation, BENCHMARKS.md sections, user-data loaders."""
import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from invsolve.errors import InvsolveError, UnknownNameError
from invsolve.eval import datasets, harness, metrics, report

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "bench" / "smoke.yaml")
ENV = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1",
       "HOME": os.environ.get("HOME", "/root")}
QUALITY = ("psnr", "ssim", "relative_l2", "dc_residual", "nfe", "status")


def _cli(out, *extra):
    return [sys.executable, "-m", "invsolve.cli", "evaluate", SMOKE, f"output_dir={out}", "--no-progress", *extra]


def _items(out):
    return sorted(p.relative_to(out).as_posix() for p in (Path(out) / "items").rglob("*") if p.is_file())


def _rows(out):
    with open(Path(out) / "results.csv") as f:
        return list(csv.DictReader(f))


def _quality(out):
    return {(r["task"], r["method"], r["image"], r["seed"]): tuple(r[k] for k in QUALITY) for r in _rows(out)}


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The smoke suite run once in this process (the reference for the other tests)."""
    out = tmp_path_factory.mktemp("single")
    assert harness.main(SMOKE, [f"output_dir={out}"], progress=False) == 0
    return out


def _with_cache(src, dst):
    """A fresh output dir sharing the measurement cache (same options hash -> the same y)."""
    shutil.copytree(Path(src) / "cache", Path(dst) / "cache")
    return dst


def test_single_run_outputs(single):
    plan = report.load_plan(single)
    assert len(plan["items"]) == 9 and len(set(plan["items"])) == 9
    rows = _rows(single)
    assert [r["status"] for r in rows] == ["ok"] * 9
    rec = json.loads((single / "items" / "mri-4x" / "dds" / "i000_s0.json").read_text())
    assert rec["nfe"] == 2 and rec["seed"] == 0 and rec["solve_config"]["seeds"] == [0]
    assert rec["config"]["task"]["acceleration"] == 4 and rec["device"] == "cpu" and rec["seconds"] > 0
    x = np.load(single / "items" / "mri-4x" / "dds" / "i000_s0.npy")
    assert x.shape == (1, 1, 64, 64) and np.iscomplexobj(x)
    ok, reason = metrics.lpips_status()
    assert isinstance(rec["metrics"]["lpips"], float) if ok else rec["metrics"]["lpips"] == f"unavailable: {reason}"
    md = (single / "report.md").read_text()
    assert "| dds | dds | steps=2, gamma=10 | 2/2 |" in md and "invsolve evaluate" in md and "figures/mri-4x.png" in md
    assert (single / "figures" / "mri-4x.png").stat().st_size > 10_000
    with open(single / "table.csv") as f:  # the best mean PSNR of a task is bold in report.md, the others not
        rows4 = [r for r in csv.DictReader(f) if r["task"] == "mri-4x"]
    best = max(rows4, key=lambda r: float(r["psnr_mean"]))["method"]
    for r in rows4:
        line = next(ln for ln in md.splitlines() if ln.startswith(f"| {r['method']} |"))
        assert line.split(" | ")[4].startswith("**") == (r["method"] == best)


def test_sigkill_then_resume_runs_every_item_exactly_once(single, tmp_path):
    out = _with_cache(single, tmp_path / "killed")
    proc = subprocess.Popen(_cli(out), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list((out / "items").rglob("*.json")):
        assert proc.poll() is None, "the run ended before any result appeared"
        assert time.time() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {p: p.read_text() for p in (out / "items").rglob("*.json")}
    assert 1 <= len(before) < 9, "SIGKILL did not land mid-run"

    assert harness.main(SMOKE, [f"output_dir={out}"], progress=False) == 0
    files = _items(out)
    jsons = [f for f in files if f.endswith(".json")]
    assert len(jsons) == 9 and len(set(jsons)) == 9
    assert sorted(f[:-5] for f in jsons) == sorted(f[:-4] for f in files if f.endswith(".npy"))
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert {p: p.read_text() for p in before} == before  # finished items were kept, not recomputed
    keys = [(r["task"], r["method"], r["image"], r["seed"]) for r in _rows(out)]
    assert len(keys) == 9 and len(set(keys)) == 9
    assert _quality(out) == _quality(single)


def test_two_shard_processes_merge_to_the_single_process_table(single, tmp_path):
    out = _with_cache(single, tmp_path / "sharded")
    procs = [subprocess.Popen(_cli(out, "--shards", "2", "--shard-index", str(i)), cwd=ROOT, env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    shards = [json.loads(p.read_text())["shard"] for p in (out / "items").rglob("*.json")]
    assert sorted(map(tuple, shards)) == [(0, 2)] * 5 + [(1, 2)] * 4
    assert harness.main(SMOKE, [f"output_dir={out}", "action=report"], progress=False) == 0
    assert _quality(out) == _quality(single)

    def table(d):
        with open(d / "table.csv") as f:
            return [{k: v for k, v in r.items() if not k.startswith(("seconds", "peak"))} for r in csv.DictReader(f)]

    assert table(out) == table(single)


def test_results_are_keyed_by_measurement_content(single, tmp_path, monkeypatch):
    """Results of an older version (keyed by the options hash) are relabelled, not recomputed, when the measurements
    are unchanged; a task default that changes the measurements invalidates them."""
    out = tmp_path / "legacy"
    shutil.copytree(single, out)
    plan = report.load_plan(out)
    key = plan["tasks"]["mri-4x"]["cache_key"]
    rec_path = out / "items" / "mri-4x" / "dds" / "i000_s0.json"
    rec = json.loads(rec_path.read_text())
    assert rec["task_hash"] == plan["tasks"]["mri-4x"]["hash"] != key  # content hash, not the options hash
    for p in (out / "items").rglob("*.json"):
        r = json.loads(p.read_text())
        r["task_hash"] = plan["tasks"][r["task"]]["cache_key"]  # what the previous version stored
        p.write_text(json.dumps(r))
    logs = []
    counts = harness.run(harness.load_suite(SMOKE, [f"output_dir={out}"]), SMOKE, progress=False, log=logs.append)
    assert counts["ok"] == 0 and counts["done_before"] == 9 and any("relabelled" in ln for ln in logs)
    assert json.loads(rec_path.read_text())["task_hash"] == plan["tasks"]["mri-4x"]["hash"]
    # a new default that changes the measurements (here: another mask seed) -> those results are stale
    from invsolve.tasks import get_task

    monkeypatch.setitem(get_task("mri").defaults, "mask_seed", 123)
    suite = harness.load_suite(SMOKE, [f"output_dir={out}", "action=report"])
    plan2 = harness.prepare(suite, log=lambda *a: None)
    stale = [it for it in plan2.items if it.task == "mri-4x" and not harness.is_done(plan2, it, False)]
    assert stale and all(not harness.is_done(plan2, it, False) for it in plan2.items if it.task == "mri-4x")


def test_report_from_a_clone_without_reconstructions_keeps_the_figures(single, tmp_path):
    """The .npy reconstructions are not versioned: rebuilding the report in a clone must not fail on them, and must
    not overwrite the figures drawn from them with emptier ones."""
    out = tmp_path / "clone"
    shutil.copytree(single, out)
    for p in (out / "items").rglob("*.npy"):
        p.unlink()
    figs = sorted((out / "figures").glob("*.png"))
    assert figs
    before = {p.name: p.read_bytes() for p in figs}
    with pytest.warns(UserWarning, match="reconstruction file"):
        assert harness.main(SMOKE, [f"output_dir={out}", "action=report"], progress=False) == 0
    assert {p.name: p.read_bytes() for p in sorted((out / "figures").glob("*.png"))} == before
    text = (out / "report.md").read_text()
    assert "figures/" in text and "Figure kept from an earlier run" in text


def _snapshot(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in Path(root).rglob("*")
            if p.is_file() and "partial" not in p.relative_to(root).parts}


def test_report_on_a_partial_copy_destroys_nothing(single, tmp_path, capsys):
    """A fresh clone or a copy with some result files missing: the report goes to partial/ and names what is
    missing; report.md, the tables, figures, plan.json and the BENCHMARKS.md section stay byte-identical unless
    forced."""
    out = tmp_path / "copy"
    shutil.copytree(single, out)
    bench = tmp_path / "BENCHMARKS.md"
    assert harness.main(SMOKE, [f"output_dir={out}", "action=report", f"benchmarks={bench}"], progress=False) == 0
    assert "9 ok + 0 failed + 0 pending" in bench.read_text()
    gone = ["mri-4x/dds/i001_s0", "mri-8x-dipy/cg-sense/i000_s0"]
    for key in gone:
        (out / "items" / f"{key}.json").unlink()
    before, bench_before = _snapshot(out), bench.read_bytes()
    capsys.readouterr()
    assert harness.main(SMOKE, [f"output_dir={out}", "action=report", f"benchmarks={bench}"], progress=False) == 0
    log = capsys.readouterr().out
    assert _snapshot(out) == before and bench.read_bytes() == bench_before
    assert "PARTIAL result set: 2 of 9" in log and "--force" in log
    partial = (out / "partial" / "report.md").read_text()
    assert "PARTIAL RESULTS" in partial and "2 of 9 planned items have no current result" in partial
    assert all(f"`{k}`" in partial for k in gone) and "7 ok + 0 failed + 2 pending" in partial
    assert [r["status"] for r in csv.DictReader(open(out / "partial" / "results.csv"))].count("pending") == 2

    assert harness.main(SMOKE, [f"output_dir={out}", "action=report", f"benchmarks={bench}"], progress=False,
                        force=True) == 0  # forced: the main report and the section say what is missing
    assert "PARTIAL RESULTS" in (out / "report.md").read_text() and "PARTIAL RESULTS" in bench.read_text()
    assert "7 ok + 0 failed + 2 pending" in bench.read_text()


def test_isolated_methods_run_in_their_own_processes(single, tmp_path):
    out = _with_cache(single, tmp_path / "isolated")
    assert harness.main(SMOKE, [f"output_dir={out}", "isolate=true"], progress=False) == 0
    recs = [json.loads(p.read_text()) for p in (out / "items").rglob("*.json")]
    pids = {m: {r["process"] for r in recs if r["method"] == m} for m in {r["method"] for r in recs}}
    assert all(len(v) == 1 for v in pids.values()), pids  # one process per method ...
    assert len({next(iter(v)) for v in pids.values()}) == 3 and os.getpid() not in set().union(*pids.values())
    assert _quality(out) == _quality(single)  # ... computing exactly what one process computes
    assert not list(out.glob(".worker-*"))


def test_content_hash_does_not_depend_on_the_thread_count(tmp_path):
    """Multi-threaded blurring rounds differently; measurements are built single-threaded so a machine with another
    core count finds the same content hash (and does not re-run finished results)."""
    opts = {"task": "deblur", "index": [0], "kernel_size": 15, "kernel_sigma": 2.0, "noise_sigma": 0.01}
    n = torch.get_num_threads()
    hashes = []
    try:
        for threads in (1, 4):
            torch.set_num_threads(threads)
            hashes.append(datasets.cached_problem(opts, tmp_path / f"deblur{threads}.pt").hash)
            assert torch.get_num_threads() == threads  # restored after building
    finally:
        torch.set_num_threads(n)
    assert hashes[0] == hashes[1]


def test_shard_assignment_is_a_partition():
    items = [harness.Item("t", "m", i, s) for i in range(7) for s in (0, 1)]
    parts = [harness.shard_items(items, 3, k) for k in range(3)]
    assert sorted(sum(parts, [])) == sorted(items) and all(abs(len(p) - 14 / 3) < 1 for p in parts)
    with pytest.raises(InvsolveError):
        harness.shard_items(items, 2, 2)


def test_torchrun_environment_selects_the_shard(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    assert harness.shard_from_env(None, None) == (4, 3, True)
    assert harness.shard_from_env(2, 0) == (2, 0, False)  # explicit flags win


# ------------------------------------------------------------------------------------------------ metrics
def test_psnr_of_a_known_mse_and_complex_magnitude():
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(3, 1, 32, 32, generator=g, dtype=torch.float64)
    d = torch.tensor([0.1, 0.01, 0.3], dtype=torch.float64).reshape(3, 1, 1, 1)
    x = ref + d * torch.where(torch.rand(ref.shape, generator=g) < 0.5, -1.0, 1.0).double()  # MSE = d^2 exactly
    want = [10 * math.log10(1.0 / float(v) ** 2) for v in d.flatten()]
    assert np.allclose(metrics.psnr(x, ref, data_range=1.0), want, atol=1e-9)
    peak = [float(r.max()) for r in ref]
    assert np.allclose(metrics.psnr(x, ref), [10 * math.log10(p**2 / float(v) ** 2) for p, v in zip(peak, d.flatten())])
    ph = torch.exp(1j * torch.rand(ref.shape, generator=g, dtype=torch.float64))
    assert np.allclose(metrics.psnr(x.abs() * ph, ref * ph, 1.0), metrics.psnr(x.abs(), ref, 1.0))


def test_ssim_identity_and_independent_implementation():
    from torchmetrics.functional.image import structural_similarity_index_measure as tm_ssim

    g = torch.Generator().manual_seed(1)
    ref = torch.rand(2, 1, 48, 48, generator=g)
    assert np.allclose(metrics.ssim(ref, ref, 1.0), [1.0, 1.0])
    x = (ref + 0.1 * torch.randn(ref.shape, generator=g)).clamp(0, 1)
    ours = metrics.ssim(x, ref, 1.0)
    theirs = [float(tm_ssim(x[i:i + 1].double(), ref[i:i + 1].double(), data_range=1.0, gaussian_kernel=True,
                            sigma=1.5, kernel_size=11)) for i in range(2)]
    assert all(0 < v < 0.99 for v in ours) and np.allclose(ours, theirs, atol=2e-3)


def test_relative_l2_and_data_consistency_match_numpy():
    from invsolve.operators import Inpainting

    g = torch.Generator().manual_seed(2)
    ref, x = torch.randn(2, 1, 8, 8, generator=g), torch.randn(2, 1, 8, 8, generator=g)
    a, b = x.numpy().reshape(2, -1), ref.numpy().reshape(2, -1)
    assert np.allclose(metrics.relative_l2(x, ref), np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1))
    mask = (torch.rand(8, 8, generator=g) < 0.5).float()
    op = Inpainting(mask)
    y = op(ref)
    m = mask.numpy().reshape(-1)
    want = np.linalg.norm((a - b) * m, axis=1) / np.linalg.norm(b * m, axis=1)
    assert np.allclose(metrics.data_consistency(op, x, y), want)
    assert np.allclose(metrics.data_consistency(op, ref, y), 0.0)


def test_lpips_reported_unavailable_without_backbone_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(metrics, "_LPIPS_MODEL", {})
    ok, reason = metrics.lpips_status()
    assert not ok and "alexnet-owt-7be5be79.pth" in reason and str(tmp_path) in reason
    with pytest.raises(metrics.MetricUnavailable, match="torch hub cache"):
        metrics.lpips(torch.rand(1, 1, 64, 64), torch.rand(1, 1, 64, 64))
    assert not list(tmp_path.rglob("*.pth"))  # nothing was downloaded or created


@pytest.mark.slow
def test_lpips_runs_when_weights_are_in_the_hub_cache(tmp_path, monkeypatch):
    """A (random) AlexNet file in the hub cache is enough for the code path; identical images give 0."""
    import torchvision

    ckpt = tmp_path / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    torch.save(torchvision.models.alexnet().state_dict(), ckpt / metrics.ALEXNET_FILE)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(metrics, "_LPIPS_MODEL", {})
    x = torch.rand(2, 1, 64, 64)
    assert metrics.lpips_status() == (True, "")
    assert np.allclose(metrics.lpips(x, x), 0.0, atol=1e-6)
    assert all(v > 0 for v in metrics.lpips(torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64), data_range=1.0))


# ------------------------------------------------------------------------------------------------ suites
def _suite(tmp_path, body: str) -> str:
    p = tmp_path / "suite.yaml"
    p.write_text(body)
    return str(p)


TINY = """
name: tiny
output_dir: {out}
tasks:
  - {{id: mri-4x, task: mri, example: dipy, index: [0], acceleration: 4}}
  - {{id: future, task: no-such-task, views: 30}}
methods:
  - {{id: zf, sampler: adjoint}}
  - {{id: bad-cg, sampler: test-fails, options: {{fail: true}}, tasks: [mri-4x]}}
  - {{id: fbp, sampler: fbp}}
  - {{id: later, sampler: no-such-sampler}}
device: cpu
figures: 0
"""


@pytest.fixture
def failing_sampler():
    """A classical sampler registered for one test that fails at run time when ``fail=True``."""
    from invsolve.samplers import base
    from invsolve.samplers.knobs import Bool

    @base.register_sampler("test-fails", knobs=dict(fail=Bool("raise at run time")), needs_prior=False)
    def _fails(prior, op, y, *, generators=None, fail=True, progress=False):
        if fail:
            raise RuntimeError("reg must be >= 0 (a failure at run time)")
        return base.SamplerOutput(x=op.adjoint(y))

    yield
    base._REGISTRY.pop("test-fails", None)


def test_failed_item_recorded_not_fatal_and_unavailable_listed(tmp_path, failing_sampler):
    out = tmp_path / "tiny"
    path = _suite(tmp_path, TINY.format(out=out))
    assert harness.main(path, [], progress=False) == 1  # one item failed: non-zero exit, suite completed
    zf = json.loads((out / "items" / "mri-4x" / "zf" / "i000_s0.json").read_text())
    bad = json.loads((out / "items" / "mri-4x" / "bad-cg" / "i000_s0.json").read_text())
    assert zf["status"] == "ok" and bad["status"] == "failed" and "reg must be >= 0" in bad["error"]
    plan = report.load_plan(out)
    assert plan["tasks"]["future"]["status"] == "unavailable" and "no-such-task" in plan["tasks"]["future"]["reason"]
    assert plan["methods"]["later"]["status"] == "unavailable"
    assert plan["pairs"]["mri-4x/fbp"]["status"] == "n/a" and "fbp" in plan["pairs"]["mri-4x/fbp"]["reason"]
    md = (out / "report.md").read_text()
    assert "bad-cg" in md and "reg must be >= 0" in md and "1/1" in md and "0/1 (1 failed)" in md
    assert "task `future`" in md and "method `later`" in md and "do not apply" in md
    before = (out / "items" / "mri-4x" / "bad-cg" / "i000_s0.json").read_text()
    assert harness.main(path, [], progress=False) == 1  # failures are not retried by default ...
    assert (out / "items" / "mri-4x" / "bad-cg" / "i000_s0.json").read_text() == before
    assert harness.main(path, ["methods.bad-cg.options.fail=false"], progress=False) == 0  # ... a fixed config reruns
    assert json.loads((out / "items" / "mri-4x" / "bad-cg" / "i000_s0.json").read_text())["status"] == "ok"


def test_posterior_samples_give_uncertainty_maps(single, tmp_path):
    out = tmp_path / "unc"
    path = _suite(tmp_path, f"""
name: unc
output_dir: {out}
tasks: [{{id: mri, task: mri, example: dipy, index: [0], acceleration: 8}}]
methods: [{{id: dds, sampler: dds, steps: 2}}]
num_samples: 2
device: cpu
threads: 1
figures: 1
""")
    assert harness.main(path, [], progress=False) == 0
    std = np.load(out / "items" / "mri" / "dds" / "i000_s0_std.npy")
    rec = json.loads((out / "items" / "mri" / "dds" / "i000_s0.json").read_text())
    assert std.shape == (1, 1, 64, 64) and std.min() >= 0 and std.max() > 0
    assert rec["solve_config"]["seeds"] == [0, 1] and rec["nfe"] == 2
    assert (out / "figures" / "mri_std.png").is_file() and "mri_std.png" in (out / "report.md").read_text()


def test_heldout_sets_are_named_and_described():
    x, names = datasets.heldout("mri-dipy", 32)
    assert x.shape == (1, 1, 32, 32) and x.is_complex() and names == ["dipy-t1-coronal"]
    assert set(datasets.available_heldout()) == {"mri-mni", "mri-dipy", "ct-pydicom", "photos", "ns-test"}
    with pytest.raises(UnknownNameError, match="available"):
        datasets.heldout("nope")


def test_unknown_keys_are_errors_naming_them(tmp_path):
    base = "name: s\ntasks: [{id: a, task: mri}]\nmethods: [{id: m, sampler: adjoint}]\n"
    with pytest.raises(UnknownNameError, match="seedz"):
        harness.load_suite(_suite(tmp_path, base + "seedz: [0]\n"))
    with pytest.raises(UnknownNameError, match="stepz"):
        harness.load_suite(_suite(tmp_path, base.replace("sampler: adjoint", "sampler: adjoint, stepz: 3")))
    with pytest.raises(UnknownNameError, match="no entry with id 'nope'"):
        harness.load_suite(_suite(tmp_path, base), ["methods.nope.steps=3"])
    suite = harness.load_suite(_suite(tmp_path, base), ["tasks.a.acceleraton=8", "seeds=[1, 2]"])
    assert suite["seeds"] == [1, 2] and suite["output_dir"] == "results/s"
    with pytest.raises(UnknownNameError, match="acceleraton"):
        harness.prepare(suite, log=lambda *_: None)
    suite = harness.load_suite(_suite(tmp_path, base), ["methods.m.options.bogus=1"])
    with pytest.raises(UnknownNameError, match="bogus"):
        harness.prepare(dict(suite, output_dir=str(tmp_path / "o")), log=lambda *_: None)


def test_operator_items_with_per_item_parameters_are_sliced():
    from invsolve.operators import Inpainting
    from invsolve.tasks import Problem

    g = torch.Generator().manual_seed(3)
    masks = (torch.rand(3, 8, 8, generator=g) < 0.5).float()
    x = torch.rand(3, 1, 8, 8, generator=g)
    op = Inpainting(masks)
    prob = Problem(op, op(x), x, ["a", "b", "c"])
    for b in range(3):
        op_b, y_b, x_b = harness._select(prob, b)
        assert op_b.batch_size() is None and torch.equal(op_b(x_b), y_b)
    assert op.batch_size() == 3  # the problem's operator is untouched


def test_benchmarks_section_replaced_in_place(tmp_path):
    p = tmp_path / "BENCHMARKS.md"
    p.write_text("# Benchmarks\n\nhand-written intro\n\n"
                 "<!-- suite:other:begin -->\nkeep me\n<!-- suite:other:end -->\n")
    report.update_benchmarks(p, "core", "table v1\n")
    report.update_benchmarks(p, "core", "table v2\n")
    text = p.read_text()
    assert "hand-written intro" in text and "keep me" in text and "table v2" in text and "table v1" not in text
    assert text.count("<!-- suite:core:begin -->") == 1 and text.count("<!-- suite:other:end -->") == 1


# ------------------------------------------------------------------------------------------------ data
def test_user_data_loaders(tmp_path):
    import h5py
    from skimage.io import imsave

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(2):
        imsave(folder / f"im{i}.png", (np.random.default_rng(i).random((16, 12, 3)) * 255).astype(np.uint8))
    d = datasets.load_user_data(folder)
    assert d.kind == "images" and d.data.shape == (2, 3, 16, 12) and d.names == ["im0", "im1"]
    np.save(tmp_path / "a.npy", np.ones((4, 5)))
    assert datasets.load_user_data(tmp_path / "a.npy").data.shape == (4, 5)
    np.savez(tmp_path / "b.npz", x=np.zeros(3), y=np.ones(2))
    with pytest.raises(InvsolveError, match="choose one"):
        datasets.load_user_data(tmp_path / "b.npz")
    assert datasets.load_user_data(tmp_path / "b.npz", key="y").data.tolist() == [1.0, 1.0]
    k = (np.random.default_rng(0).standard_normal((3, 4, 8, 8)) * (1 + 1j)).astype(np.complex64)
    with h5py.File(tmp_path / "file1000.h5", "w") as f:
        f["kspace"] = k
        f["reconstruction_rss"] = np.abs(k).sum(1)
    d = datasets.load_user_data(tmp_path / "file1000.h5", slices=[1])
    assert d.kind == "kspace" and d.data.shape == (1, 4, 8, 8) and np.allclose(d.data.numpy(), k[1:2])
    assert d.extra["reconstruction_rss"].shape == (1, 8, 8)
    import pydicom

    dcm = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"
    d = datasets.load_user_data(dcm)
    assert d.kind == "hu" and d.data.shape == (1, 1, 128, 128) and float(d.data.min()) < -500
    with pytest.raises(InvsolveError, match="does not exist"):
        datasets.load_user_data(tmp_path / "missing")


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "r.json"

    def boom(t):
        t.write_text("partial")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        datasets.write_atomic(target, boom)
    assert not target.exists() and not list(tmp_path.iterdir())
    stale = tmp_path / f".r.json.{datasets._host()}.999999999.tmp"  # a dead writer's leftover
    stale.write_text("x")
    assert datasets.remove_stale_tmp(tmp_path) == [stale] and not stale.exists()
