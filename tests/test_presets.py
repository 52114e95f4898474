"""Tuned presets: one home (invsolve/presets/*.yaml), validated on load, applied with registered defaults < preset <
the user's options by solve(), `invsolve reconstruct` and `invsolve evaluate`, and recorded."""
import json
from pathlib import Path

import pytest
import torch
import yaml

import invsolve as inv
from invsolve import presets
from invsolve.errors import InputFileError, InvalidValueError, UnknownNameError
from invsolve.operators import Blur
from invsolve.operators.blur import gaussian_kernel

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def deblur():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 32, 32, generator=g)
    op = Blur(gaussian_kernel(9, 1.5), image_size=32)
    return op, op(x) + 0.01 * torch.randn(x.shape, generator=g), x


def test_every_shipped_preset_is_valid_and_says_where_it_was_chosen():
    files = sorted(presets.PRESET_DIR.glob("*.yaml"))
    assert {f.stem for f in files} >= {"classical", "natural-latent", "ns-vorticity"}
    for f in files:
        ps = presets.load_file(f)  # knobs checked against each sampler's declared options
        assert ps and len({p.id for p in ps}) == len(ps)
        for p in ps:
            assert len(p.validation) > 20 and p.source, (f.name, p.id)
    shipped = (ROOT / "pyproject.toml").read_text()
    assert '"presets/*.yaml"' in shipped  # installed with the package


def _write(tmp_path, entries, prior="natural"):
    d = tmp_path / "presets"
    d.mkdir(exist_ok=True)
    (d / f"{prior}.yaml").write_text(yaml.safe_dump({"prior": prior, "presets": entries}))
    return d


ENTRY = dict(task="deblur", sampler="dds", knobs={"eta": 0.5}, validation="validation crops of the training photos",
             source="test")


def test_lookup_prefers_the_exact_noise_match(tmp_path, monkeypatch):
    d = _write(tmp_path, [dict(ENTRY, id="any", noise="any"), dict(ENTRY, id="quiet", noise="noiseless"),
                          dict(ENTRY, id="loud", noise="noisy", knobs={"eta": 0.3})])
    monkeypatch.setattr(presets, "PRESET_DIR", d)
    presets._presets.cache_clear()
    try:
        assert presets.find("natural", "deblur", "dds", False).id == "quiet"
        assert presets.find("natural", "deblur", "dds", True).id == "loud"
        assert presets.find("natural", "deblur", "dds", None).id == "any"  # unknown noise: only 'any' matches
        assert presets.find("natural", "sr", "dds", True) is None
        assert presets.find("mri-brain", "deblur", "dds", True) is None  # no file: registered defaults
        assert presets.select(False, "natural", "deblur", "dds", True) is None
        assert presets.select("any", "natural", "deblur", "dds", True).id == "any"
        with pytest.raises(UnknownNameError, match="unknown preset 'nope' for prior 'natural'"):
            presets.select("nope", "natural", "deblur", "dds", True)
        with pytest.raises(InvalidValueError, match="is for sampler 'dds', not 'ddnm'"):
            presets.select("any", "natural", "deblur", "ddnm", True)
    finally:
        presets._presets.cache_clear()


@pytest.mark.parametrize("entry,err,match", [
    (dict(ENTRY, id="a", noise="loud"), InvalidValueError, "noise='loud' is not accepted"),
    (dict(ENTRY, id="a", noise="any", knobs={"etta": 0.5}), UnknownNameError,
     r"id 'a'.*unknown option\(s\) \['etta'\]"),
    (dict(ENTRY, id="a", noise="any", knobs={"eta": 2.0}), InvalidValueError, "eta=2.0 is out of range"),
    (dict(ENTRY, id="a", noise="any", sampler="cg", knobs={}), InputFileError, "uses no prior"),
    ({"id": "a", "task": "deblur"}, InputFileError, "missing keys"),
])
def test_a_bad_preset_file_is_a_clear_error(tmp_path, entry, err, match):
    d = _write(tmp_path, [entry])
    with pytest.raises(err, match=match):
        presets.load_file(d / "natural.yaml")


def test_solve_applies_the_preset_below_the_users_options(deblur):
    op, y, _ = deblur
    auto = inv.solve(y, op, sampler="cg", sigma_y=0.01)
    assert auto.config["preset"]["id"] == "cg-tikhonov-deblur" and auto.config["knobs"]["reg"] == 0.01
    same = inv.solve(y, op, sampler="cg", preset=False, reg=0.01)
    assert same.config["preset"] is None and torch.equal(auto.x, same.x)
    mine = inv.solve(y, op, sampler="cg", sigma_y=0.01, reg=0.1)  # the user's option wins
    assert mine.config["knobs"]["reg"] == 0.1 and mine.config["preset"]["id"] == "cg-tikhonov-deblur"
    off = inv.solve(y, op, sampler="cg", sigma_y=0.01, preset=False)
    assert off.config["knobs"]["reg"] == 0.0 and not torch.equal(off.x, auto.x)
    quiet = inv.solve(y, op, sampler="cg", sigma_y=0.0)  # the preset is for noisy data
    assert quiet.config["preset"] is None
    with pytest.raises(InvalidValueError, match="preset=3"):
        inv.solve(y, op, sampler="cg", preset=3)


def test_reconstruct_configs_do_not_restate_tuned_options():
    """configs/reconstruct/*.yaml set what the job is; tuned sampler options live in the presets only."""
    tuned = {}
    for f in presets.PRESET_DIR.glob("*.yaml"):
        for p in presets.load_file(f):
            tuned.setdefault(p.sampler, set()).update(p.knobs)
    budget = {"ensemble_size", "updates", "max_inner", "batch", "queries"}  # compute budgets, not tuned
    for cfg in sorted((ROOT / "configs" / "reconstruct").glob("*.yaml")):
        options = (yaml.safe_load(cfg.read_text())["solver"].get("options") or {})
        for sampler, knobs in options.items():
            assert sampler not in ("dds", "dds-3d"), f"{cfg.name} sets {sampler} options: {knobs}"
            restated = (set(knobs) & tuned.get(sampler, set())) - budget
            assert not restated, f"{cfg.name} restates tuned {sampler} options {sorted(restated)}"


def test_reconstruct_records_the_preset_and_the_noise_source(tmp_path):
    from invsolve.cli import main

    cfg = ROOT / "configs" / "reconstruct" / "deblur_dds.yaml"
    out = tmp_path / "o"
    args = ["reconstruct", "--no-progress", str(cfg), "solver.sampler=cg", "problem.index=[0]", "problem.size=32",
            "baselines=[wiener]"]
    assert main(args + [f"output.dir={out}"]) == 0
    rec = json.loads((out / "run.json").read_text())
    assert rec["solve_config"]["preset"]["id"] == "cg-tikhonov-deblur"
    assert rec["solve_config"]["sigma_y"]["source"] == "problem (problem.noise_sigma)"
    assert rec["solve_config"]["sigma_y"]["value"] == [0.01]
    assert main(args + [f"output.dir={tmp_path / 'p'}", "solver.preset=false",
                        "solver.options.cg.sigma_y=0.02"]) == 0
    rec = json.loads((tmp_path / "p" / "run.json").read_text())
    assert rec["solve_config"]["preset"] is None
    assert rec["solve_config"]["sigma_y"]["source"] == "sampler option (solver.options)"


def test_harness_applies_presets_and_hashes_the_chosen_options(tmp_path):
    from invsolve.eval import harness

    suite_file = tmp_path / "s.yaml"
    suite_file.write_text(yaml.safe_dump({
        "name": "p", "output_dir": str(tmp_path / "out"), "lpips": False, "figures": 0,
        "tasks": [{"id": "blur", "task": "deblur", "index": [0], "size": 32, "noise_sigma": 0.01},
                  {"id": "clean", "task": "deblur", "index": [0], "size": 32, "noise_sigma": 0.0}],
        "methods": [{"id": "cg", "sampler": "cg"}, {"id": "cg-own", "sampler": "cg", "options": {"reg": 0.5}},
                    {"id": "cg-off", "sampler": "cg", "preset": False}]}))
    plan = harness.prepare(harness.load_suite(suite_file), log=lambda *a: None)
    assert plan.pairs["blur/cg"]["preset"] == "cg-tikhonov-deblur"
    assert plan.pairs["blur/cg"]["knobs"]["reg"] == 0.01 and plan.pairs["blur/cg-own"]["knobs"]["reg"] == 0.5
    assert plan.pairs["blur/cg-off"]["preset"] is None and plan.pairs["clean/cg"]["preset"] is None
    assert plan.pairs["blur/cg"]["hash"] != plan.pairs["blur/cg-off"]["hash"]
    item = next(it for it in plan.items if it.task == "blur" and it.method == "cg")
    rec = harness.run_item(plan, item, (0, 1))
    assert rec["status"] == "ok" and rec["solve_config"]["preset"]["id"] == "cg-tikhonov-deblur"
    assert rec["solve_config"]["knobs"]["reg"] == 0.01
