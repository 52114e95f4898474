"""Benchmarks as suites of the harness: the suite files load, tune grids choose on validation tasks only and put the
choice into the test items' hash, tuned presets are written and exported safely, paired comparisons agree with an
independent computation, and the task options the suites rely on build what they say."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

from invsolve.errors import InvsolveError, UnknownNameError
from invsolve.eval import datasets, harness, report, tune

ROOT = Path(__file__).resolve().parents[1]
SUITES = sorted((ROOT / "configs" / "bench").glob("*.yaml"))

TUNED = """
name: tuned
output_dir: {out}
tasks:
  - {{id: mri-4x, task: mri, example: mni, index: [3], acceleration: 4}}
  - {{id: mri-val, task: mri, example: mni-guard, index: [1, 6], acceleration: 4, split: validation}}
methods:
  - {{id: cg, sampler: cg, options: {{iterations: 5}}}}
  - {{id: dds, sampler: dds, steps: 2, tune: {{gamma: [1.0, 30.0]}}}}
  - {{id: dds-eta0, sampler: dds, steps: 2, knobs_from: dds, options: {{eta: 0.0}}}}
compare: [[dds, cg]]
device: cpu
threads: 1
lpips: false
figures: 0
"""


def _suite(tmp_path, text, name="suite.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize("path", SUITES, ids=[p.stem for p in SUITES])
def test_every_bench_suite_loads(path):
    suite = harness.load_suite(path)
    assert suite["output_dir"] == f"results/{suite['name']}" and suite["name"] == path.stem
    val = {t["family"] for t in suite["tasks"] if t["split"] == "validation"}
    for m in suite["methods"]:  # every grid has validation data of its families; test tasks exist for each family
        if m["tune"] is not None or m["task_tune"]:
            assert val, f"{path.name}: method {m['id']} has a tune grid but the suite has no validation task"
    ids = {t["id"] for t in suite["tasks"]}
    assert len(ids) == len(suite["tasks"])


@pytest.fixture(scope="module")
def tuned_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tuned")
    out = tmp / "out"
    path = _suite(tmp, TUNED.format(out=out))
    assert harness.main(path, [], progress=False) == 0
    return tmp, out, path


def test_tune_grid_chooses_on_validation_items_only(tuned_run):
    tmp, out, path = tuned_run
    plan = report.load_plan(out)
    val = {g: [json.loads(p.read_text()) for p in sorted((out / "items" / "mri-val" / f"dds~gamma={g}").glob("*.json"))]
           for g in ("1", "30")}
    assert [len(v) for v in val.values()] == [2, 2]  # both points on both validation images
    means = {g: np.mean([r["metrics"]["psnr"] for r in v]) for g, v in val.items()}
    best = float(max(means, key=means.get))
    job = plan["tuning"]["dds@mri"]
    assert job["status"] == "chosen" and job["knobs"] == {"gamma": best}
    test = json.loads((out / "items" / "mri-4x" / "dds" / "i000_s0.json").read_text())
    assert test["config"]["method"]["knobs"]["gamma"] == best
    assert test["method_hash"] == datasets.options_hash(test["config"]["method"])
    eta0 = json.loads((out / "items" / "mri-4x" / "dds-eta0" / "i000_s0.json").read_text())
    assert eta0["config"]["method"]["knobs"]["gamma"] == best and eta0["config"]["method"]["knobs"]["eta"] == 0.0
    assert not (out / "items" / "mri-val" / "dds").exists() and not (out / "items" / "mri-val" / "cg").exists()
    md = (out / "report.md").read_text()
    test_part, val_part = md.split("# Validation (tuning; never reported as test results)")
    assert "## mri-val" not in test_part and "(tuned)" in test_part and "mni-z93" not in test_part
    assert f"**gamma={best:g}** (chosen)" in val_part and "mni-z93, mni-z114" in val_part
    rows = list(__import__("csv").DictReader(open(out / "table.csv")))
    assert {r["task"] for r in rows} == {"mri-4x"}  # no validation results among the test rows
    doc = tune.read_documents(out / "tuned.yaml")
    assert [d["prior"] for d in doc] == ["mri-brain"]
    (preset,) = doc[0]["presets"]
    assert preset == {**preset, "id": "mri-dds-noiseless", "task": "mri", "sampler": "dds", "noise": "noiseless",
                      "knobs": {"steps": 2, "gamma": best}}
    assert "mri-val" in preset["validation"] and "tuned.yaml" in preset["source"]


def test_a_different_choice_reruns_the_test_items_only(tuned_run):
    tmp, out, path = tuned_run
    before = {p: p.read_text() for p in (out / "items").rglob("*.json")}
    other = 30.0 if report.load_plan(out)["tuning"]["dds@mri"]["knobs"]["gamma"] == 1.0 else 1.0
    assert harness.main(path, [f"methods.dds.tune={{gamma: [{other}]}}"], progress=False) == 0
    after = {p: p.read_text() for p in (out / "items").rglob("*.json")}
    changed = sorted(str(p.relative_to(out / "items")) for p in before if before[p] != after[p])
    assert changed == ["mri-4x/dds-eta0/i000_s0.json", "mri-4x/dds/i000_s0.json"]  # validation items kept
    assert json.loads(after[out / "items" / "mri-4x" / "dds" / "i000_s0.json"])["config"]["method"]["knobs"][
        "gamma"] == other


def test_paired_comparison_agrees_with_scipy(tuned_run):
    tmp, out, path = tuned_run
    plan = report.load_plan(out)
    recs = report.collect(out, plan)
    (row,) = report.comparisons(plan, recs)
    a = json.loads((out / "items" / "mri-4x" / "dds" / "i000_s0.json").read_text())["metrics"]["psnr"]
    b = json.loads((out / "items" / "mri-4x" / "cg" / "i000_s0.json").read_text())["metrics"]["psnr"]
    assert row["n"] == 1 and row["psnr"]["diff"] == pytest.approx(a - b) and row["psnr"]["se"] is None
    # synthetic records: 5 images x 2 seeds, one missing pair
    rng = np.random.default_rng(0)
    xa, xb = rng.normal(30, 2, 10), rng.normal(29, 2, 10)
    fake = {"suite": {"compare": [["a", "b"]], "tasks": [{"id": "t", "task": "mri"}]}}
    records = {}
    for k in range(10):
        for m, x in (("a", xa), ("b", xb)):
            if (m, k) != ("b", 9):
                records[f"t/{m}/i{k // 2:03d}_s{k % 2}"] = {"image": k // 2, "seed": k % 2, "status": "ok",
                                                            "metrics": {"psnr": x[k], "ssim": x[k] / 40},
                                                            "seconds": 1.0 + m.startswith("b"), "peak_memory": 2}
    (row,) = report.comparisons(fake, records)
    d = xa[:9] - xb[:9]
    assert row["n"] == 9 and row["psnr"]["diff"] == pytest.approx(d.mean())
    assert row["psnr"]["se"] == pytest.approx(np.std(d, ddof=1) / 3)
    assert row["psnr"]["p"] == pytest.approx(stats.ttest_1samp(d, 0).pvalue)
    assert row["psnr"]["wins"] == int((d > 0).sum()) and row["time_ratio"] == pytest.approx(2.0)


def test_choice_rule_ties_failures_and_missing_results():
    rows = tune.score_points([{"g": 1}, {"g": 2}, {"g": 3}], [
        [{"status": "ok", "metrics": {"psnr": 30.004}, "nfe": 100}],
        [{"status": "ok", "metrics": {"psnr": 30.0}, "nfe": 50}],  # within 0.01 dB and cheaper: wins the tie
        [{"status": "failed"}]])
    assert tune.choose(rows) == 1
    rows[1]["mean"] = 29.0
    assert tune.choose(rows) == 0
    assert tune.choose(tune.score_points([{"g": 1}], [[None]])) is None  # a result is missing: no choice yet
    assert tune.choose(tune.score_points([{"g": 1}], [[{"status": "failed"}]])) is None
    low = tune.score_points([{"g": 1}, {"g": 2}], [[{"status": "ok", "metrics": {"relative_l2": 0.7}, "nfe": 1}],
                                                   [{"status": "ok", "metrics": {"relative_l2": 0.6}, "nfe": 9}]],
                            "relative_l2")
    assert tune.choose(low, "relative_l2") == 1
    assert tune.grid_points({"a": [1, 2], "b": ["x"]}, "w") == [{"a": 1, "b": "x"}, {"a": 2, "b": "x"}]
    with pytest.raises(InvsolveError, match="tune grid knob 'a' has no values"):
        tune.grid_points({"a": []}, "w")


def test_tuning_with_every_point_failing_makes_the_test_pair_not_applicable(tmp_path):
    from invsolve.samplers import base
    from invsolve.samplers.knobs import Bool

    @base.register_sampler("test-fails-2", knobs=dict(fail=Bool("raise")), needs_prior=False)
    def _fails(prior, op, y, *, generators=None, fail=True, progress=False):
        if fail:
            raise RuntimeError("always fails")
        return base.SamplerOutput(x=op.adjoint(y))

    try:
        text = TUNED.format(out=tmp_path / "out").replace(
            "  - {id: dds, sampler: dds, steps: 2, tune: {gamma: [1.0, 30.0]}}\n", "").replace(
            "  - {id: dds-eta0, sampler: dds, steps: 2, knobs_from: dds, options: {eta: 0.0}}\n",
            "  - {id: bad, sampler: test-fails-2, tune: {fail: [true]}}\n").replace("[[dds, cg]]", "[]")
        assert harness.main(_suite(tmp_path, text), [], progress=False) == 1  # the validation items failed
        plan = report.load_plan(tmp_path / "out")
        assert plan["pairs"]["mri-4x/bad"]["status"] == "n/a"
        assert "every grid point failed" in plan["pairs"]["mri-4x/bad"]["reason"]
        assert "mri-4x/bad/i000_s0" not in plan["items"]
    finally:
        base._REGISTRY.pop("test-fails-2", None)


@pytest.mark.parametrize("text, match", [
    ("tune: {gamma: []}", "tune grid knob 'gamma' has no values"),
    ("tune: 3", "tune must be a mapping"),
    ("task_tune: {ct: {gamma: [1]}}", "task_tune names 'ct'"),
    ("knobs_from: nobody", "knobs_from='nobody' must name another method"),
    ("knobs_from: cg", "names a method without a tune grid"),
    ("tune_metric: fid", "tune_metric must be one of"),
    ("seeds: [-1]", "seeds must be a list of non-negative ints"),
])
def test_bad_tuning_keys_are_config_errors(tmp_path, text, match):
    suite = TUNED.format(out=tmp_path / "out").replace("tune: {gamma: [1.0, 30.0]}}", text + "}")
    with pytest.raises((InvsolveError, UnknownNameError), match=match):
        harness.load_suite(_suite(tmp_path, suite))


def test_bad_split_and_compare_are_config_errors(tmp_path):
    base = TUNED.format(out=tmp_path / "out")
    with pytest.raises(InvsolveError, match="split must be 'test' or 'validation'"):
        harness.load_suite(_suite(tmp_path, base.replace("split: validation", "split: train")))
    with pytest.raises(UnknownNameError, match=r"compare names unknown method id\(s\) \['nope'\]"):
        harness.load_suite(_suite(tmp_path, base.replace("[[dds, cg]]", "[[dds, nope]]")))


def test_export_presets_merges_refuses_overwrites_and_never_writes_an_installed_package(tuned_run, tmp_path,
                                                                                         monkeypatch):
    tmp, out, path = tuned_run
    target = tmp_path / "presets"
    (written,) = tune.export_presets(out / "tuned.yaml", presets_dir=target)
    assert written == target / "mri-brain.yaml"
    doc = yaml.safe_load(written.read_text())
    assert doc["prior"] == "mri-brain" and [p["id"] for p in doc["presets"]] == ["mri-dds-noiseless"]
    before = written.read_bytes()
    with pytest.raises(InvsolveError, match="would replace existing preset.*'mri-dds-noiseless'.*--overwrite"):
        tune.export_presets(out / "tuned.yaml", presets_dir=target)
    assert written.read_bytes() == before
    other = dict(doc["presets"][0], id="mri-dds-other", knobs={"gamma": 3.0})  # same lookup key, another id
    keep = dict(other, id="keep", noise="noisy")
    written.write_text(yaml.safe_dump({"prior": "mri-brain", "presets": [other, keep]}))
    with pytest.raises(InvsolveError, match="'mri-dds-other' \\(replaced by 'mri-dds-noiseless'\\)"):
        tune.export_presets(out / "tuned.yaml", presets_dir=target)
    tune.export_presets(out / "tuned.yaml", overwrite=True, presets_dir=target)
    assert [p["id"] for p in yaml.safe_load(written.read_text())["presets"]] == ["keep", "mri-dds-noiseless"]
    import invsolve

    monkeypatch.setattr(invsolve, "__file__", "/usr/lib/python3/site-packages/invsolve/__init__.py")
    with pytest.raises(InvsolveError, match="not a source checkout"):
        tune.export_presets(out / "tuned.yaml")


def test_task_options_of_the_suites_build_what_they_say():
    import torch

    from invsolve.data import mri
    from invsolve.data.ct import sample_phantoms
    from invsolve.tasks import build_problem

    guard = build_problem({"task": "mri", "example": "mni-guard", "index": list(range(8))})
    z = [int(n.split("z")[1]) for n in guard.names]
    assert z == [92, 93, 94, 95, 112, 113, 114, 115]
    assert not set(z) & set(mri.training_z()) and not set(z) & set(mri.HELDOUT_Z)
    ct = build_problem({"task": "ct", "index": [], "phantoms": 2, "phantom_seed": 1234, "n_views": 16})
    ref = sample_phantoms(2, 64, torch.Generator().manual_seed(1234))
    assert ct.names == ["phantom-seed1234-0", "phantom-seed1234-1"] and torch.equal(ct.x_true, ref)
    mixed = build_problem({"task": "ct", "index": [0], "phantoms": 1, "n_views": 16})
    assert mixed.names[0] == "CT_small.dcm" and mixed.names[1] == "phantom-seed4242-0"
    with pytest.raises(ValueError, match="no image"):
        build_problem({"task": "ct", "index": [], "phantoms": 0})
    crops = build_problem({"task": "sr", "source": "train-crops", "crops": 3, "crop_seed": 5, "index": [2, 0]})
    again = build_problem({"task": "sr", "source": "train-crops", "crops": 3, "crop_seed": 5, "index": [0]})
    assert crops.names == ["train-crop-seed5-2", "train-crop-seed5-0"] and torch.equal(crops.x_true[1], again.x_true[0])
    assert 0 <= float(crops.x_true.min()) and float(crops.x_true.max()) <= 1
    assert not math.isnan(float(crops.y.sum()))


def test_prior_revision_names_the_weights(tmp_path):
    rev = harness.prior_revision("ns-vorticity")
    assert len(rev) == 12 and int(rev, 16) >= 0
    (tmp_path / "a.safetensors").write_bytes(b"weights")
    other = harness.prior_revision(str(tmp_path))
    assert other != rev and len(other) == 12
    assert harness.prior_revision("grf") == "grf"  # not a file-backed prior


def test_whole_volume_items_are_scored_as_a_whole(tmp_path):
    out = tmp_path / "out"
    text = f"""
name: vol
output_dir: {out}
tasks:
  - {{id: vol, task: ct-volume, source: phantom3d, seed: 3, n_slices: 3, n_views: 8, whole: true}}
methods:
  - {{id: fbp, sampler: fbp}}
  - {{id: dds-3d, sampler: dds-3d, steps: 2, options: {{rho: 0.025, lam: 0.0001}}}}
device: cpu
threads: 1
lpips: false
figures: 1
"""
    assert harness.main(_suite(tmp_path, text), [], progress=False) == 0
    plan = report.load_plan(out)
    assert plan["items"] == ["vol/fbp/i000_s0", "vol/dds-3d/i000_s0"]
    assert plan["tasks"]["vol"]["names"] == ["slice000..slice002 (3 slices)"]
    rec = json.loads((out / "items" / "vol" / "fbp" / "i000_s0.json").read_text())
    x = np.load(out / "items" / "vol" / "fbp" / "i000_s0.npy")
    from invsolve.tasks.ct import phantom_volume

    ref = phantom_volume(3, 64, seed=3).numpy().astype(np.float64)
    assert x.shape == ref.shape == (3, 1, 64, 64)
    mse = ((x - ref) ** 2).reshape(3, -1).mean(1)
    assert rec["metrics"]["psnr"] == pytest.approx(np.mean(10 * np.log10(1.0 / mse)), abs=1e-4)
    dx, dr = np.diff(x, axis=0), np.diff(ref, axis=0)
    assert rec["metrics"]["z_flicker_excess"] == pytest.approx(np.abs(dx).mean() - np.abs(dr).mean(), rel=1e-6)
    assert rec["metrics"]["z_difference_rmse"] == pytest.approx(np.sqrt(((dx - dr) ** 2).mean()), rel=1e-6)
    md = (out / "report.md").read_text()
    assert "excess z-flicker" in md and "z-diff RMSE" in md and "metrics are means over its slices" in md


def test_export_refuses_presets_it_could_not_tell_apart(tmp_path):
    entry = {"task": "ct", "sampler": "dds", "noise": "noiseless", "knobs": {"dc": "normal"}, "validation": "v",
             "source": "s"}
    tuned = tmp_path / "tuned.yaml"
    tuned.write_text(tune.dump_documents([{"prior": "ct-phantom", "presets": [
        dict(entry, id="ct-sparse-dds-noiseless"), dict(entry, id="ct-limited-dds-noiseless")]}]))
    with pytest.raises(InvsolveError, match="same lookup key .*export_ids"):
        tune.export_presets(tuned, presets_dir=tmp_path / "p")
    assert not (tmp_path / "p").exists()
    (path,) = tune.export_presets(tuned, presets_dir=tmp_path / "p", ids=["ct-sparse-dds-noiseless"])
    assert [e["id"] for e in yaml.safe_load(path.read_text())["presets"]] == ["ct-sparse-dds-noiseless"]
    with pytest.raises(InvsolveError, match=r"export_ids names preset\(s\) \['nope'\]"):
        tune.export_presets(tuned, presets_dir=tmp_path / "p", ids=["nope"])
