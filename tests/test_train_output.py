"""Training output location: a run writes only to its own directory, never into the package; installing a run as an
embedded prior is a separate step that refuses to overwrite without --overwrite and keeps the previous weights."""
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import yaml

import invsolve as inv
from invsolve.checks import package_dir
from invsolve.cli import main
from invsolve.errors import OutputError
from invsolve.train import load_recipe
from invsolve.train_output import check_run_dir, install_embedded, source_checkout

TINY_MODEL = {"block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4,
              "down_block_types": ["DownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "UpBlock2D"]}


def tree_digest(root: Path) -> dict:
    """``{relative path: sha256}`` of every file under ``root`` (byte caches left out)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}


def tiny_recipe(path: Path, name: str = "tiny-brain", **extra) -> Path:
    r = {"name": name, "data": {"kind": "mri-brain", "image_size": 32, "oversample": 1}, "model": TINY_MODEL,
         "train": {"steps": 2, "batch_size": 2, "log_every": 1, "checkpoint_every": 1, "warmup_steps": 1,
                   "threads": 2},
         "prior": {"is_complex": True, "data_range": [0.0, 1.0], "normalization": "q99", "summary": "tiny test"},
         "export": {"n_samples": 2, "sample_steps": 2}}
    r.update(extra)
    path.write_text(yaml.safe_dump(r))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished tiny run in its default directory (outputs/train/tiny-brain under a temporary working directory),
    with the package tree's digest before and after."""
    import os

    work = tmp_path_factory.mktemp("work")
    recipe = tiny_recipe(work / "tiny.yaml")
    pkg_before = tree_digest(package_dir())
    cwd = os.getcwd()
    os.chdir(work)
    try:
        assert main(["train-prior", "--no-progress", str(recipe)]) == 0
    finally:
        os.chdir(cwd)
    return work, recipe, pkg_before, tree_digest(package_dir())


def test_a_run_writes_only_its_output_directory(trained):
    work, recipe, pkg_before, pkg_after = trained
    assert pkg_after == pkg_before  # nothing under invsolve/ changed
    run = work / "outputs" / "train" / "tiny-brain"
    assert sorted(p.name for p in work.iterdir()) == ["outputs", "tiny.yaml"]
    assert {"recipe.yaml", "checkpoint.pt", "prior"} <= {p.name for p in run.iterdir()}
    meta = json.loads((run / "prior" / "invsolve_prior.json").read_text())
    assert meta["name"] == "tiny-brain" and meta["training"]["steps"] == 2
    assert inv.load_prior(run / "prior").is_complex
    assert "tiny-brain" not in inv.available_priors()


def test_stage_messages_from_the_start(tmp_path, capsys):
    recipe = tiny_recipe(tmp_path / "r.yaml", output_dir=str(tmp_path / "run"))
    assert main(["train-prior", "--no-progress", str(recipe), "train.steps=1"]) == 0
    err = capsys.readouterr().err
    stages = [ln for ln in err.splitlines() if ln.startswith("[train-prior]")]
    order = ["loading torch", "starting run", "building the training data", "training data ready",
             "training the UNet", "exporting to", "sample grid", "held-out evaluation"]
    pos = [next(i for i, ln in enumerate(stages) if key in ln) for key in order]
    assert pos == sorted(pos), stages
    assert "2 DDIM steps" in next(ln for ln in stages if "sample grid" in ln)


def test_inside_the_package_is_refused_before_any_work(tmp_path):
    recipe = tiny_recipe(tmp_path / "r.yaml")
    weights = package_dir() / "priors" / "weights"
    for overrides in ([f"output_dir={weights / 'x'}"],
                      [f"output_dir={tmp_path / 'run'}", f"export.dir={weights / 'mri-brain'}"]):
        with pytest.raises(OutputError, match="inside the installed invsolve package"):
            check_run_dir(load_recipe(recipe, overrides))
    assert not (tmp_path / "run").exists() and not (weights / "x").exists()


def test_resume_only_the_same_recipe(tmp_path, capsys):
    run = tmp_path / "run"
    recipe = tiny_recipe(tmp_path / "r.yaml", output_dir=str(run))
    assert main(["train-prior", "--no-progress", str(recipe)]) == 0
    # the same recipe with a larger step budget resumes (recognised by recipe.yaml, the budget left out)
    assert check_run_dir(load_recipe(recipe, ["train.steps=3"]))[1] == "resume"
    assert main(["train-prior", "--no-progress", str(recipe), "train.steps=3"]) == 0
    log = [json.loads(s) for s in (run / "checkpoint_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    # another recipe in the same directory is refused, naming what differs; nothing is touched
    before = tree_digest(run)
    capsys.readouterr()
    assert main(["train-prior", "--no-progress", str(recipe), "model.layers_per_block=2"]) == 1
    err = capsys.readouterr().err
    assert "different recipe" in err and "model.layers_per_block" in err and "Traceback" not in err
    assert tree_digest(run) == before
    # a non-empty directory that is not a run is refused too
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("my notes")
    with pytest.raises(OutputError, match="holds no training run"):
        check_run_dir(load_recipe(recipe, [f"output_dir={other}"]))
    assert (other / "notes.txt").read_text() == "my notes"
    # --overwrite starts over
    assert check_run_dir(load_recipe(recipe, ["model.layers_per_block=2"]), overwrite=True)[1] == "restart"


@pytest.fixture
def fake_checkout(tmp_path):
    """A temporary source checkout whose package holds a copy of a real embedded prior under the run's name."""
    root = tmp_path / "checkout"
    pkg = root / "invsolve"
    (pkg / "priors" / "weights").mkdir(parents=True)
    (root / "pyproject.toml").write_text('[project]\nname = "invsolve"\n')
    shutil.copytree(package_dir() / "priors" / "weights" / "ct-phantom", pkg / "priors" / "weights" / "tiny-brain")
    return pkg


def test_export_embedded_refuses_without_overwrite_and_keeps_the_previous_weights(trained, fake_checkout, tmp_path,
                                                                                   capsys, monkeypatch):
    work, recipe, _, _ = trained
    cfg = load_recipe(recipe, [f"output_dir={work / 'outputs' / 'train' / 'tiny-brain'}"])
    dest = fake_checkout / "priors" / "weights" / "tiny-brain"
    old = tree_digest(dest)
    backups = tmp_path / "replaced"
    with pytest.raises(OutputError, match="pass --overwrite"):
        install_embedded(cfg, package=fake_checkout, backup_root=backups)
    assert tree_digest(dest) == old and not backups.exists()
    # the CLI, pointed at the temporary checkout, refuses the same way with one line
    monkeypatch.setattr("invsolve.checks.package_dir", lambda: fake_checkout)
    monkeypatch.chdir(tmp_path)
    assert main(["train-prior", str(recipe), f"output_dir={work / 'outputs' / 'train' / 'tiny-brain'}",
                 "--export-embedded"]) == 1
    assert "embedded prior 'tiny-brain' exists" in capsys.readouterr().err and tree_digest(dest) == old
    # --overwrite installs the run's export and moves the previous weights out of the package, unchanged
    assert main(["train-prior", str(recipe), f"output_dir={work / 'outputs' / 'train' / 'tiny-brain'}",
                 "--export-embedded", "--overwrite"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert tree_digest(dest) == tree_digest(work / "outputs" / "train" / "tiny-brain" / "prior")
    (backup,) = (tmp_path / "outputs" / "replaced-priors").iterdir()
    assert backup.name.startswith("tiny-brain-") and tree_digest(backup) == old and str(backup) in line
    assert not any(p.name.startswith(".") for p in (fake_checkout / "priors").iterdir())


def test_export_embedded_refuses_an_installed_package(trained, tmp_path):
    work, recipe, _, _ = trained
    site = tmp_path / "lib" / "site-packages" / "invsolve"
    (site / "priors" / "weights").mkdir(parents=True)
    assert source_checkout(site) is None and source_checkout(package_dir()) is not None
    cfg = load_recipe(recipe, [f"output_dir={work / 'outputs' / 'train' / 'tiny-brain'}"])
    with pytest.raises(OutputError, match="not a source checkout"):
        install_embedded(cfg, package=site, backup_root=tmp_path / "b")
    assert not any((site / "priors" / "weights").iterdir())
