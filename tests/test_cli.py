import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from invsolve.cli import main

ROOT = Path(__file__).resolve().parents[1]
CFG = str(ROOT / "configs" / "reconstruct" / "mri_dds.yaml")


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "invsolve.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "MPLBACKEND": "Agg"})


def test_reconstruct_writes_outputs_and_never_overwrites_unless_asked(tmp_path, capsys):
    out = tmp_path / "run1"
    args = ["reconstruct", CFG, "solver.steps=3", "problem.index=[0]", f"output.dir={out}", "--no-progress"]
    assert main(args) == 0
    assert "PSNR" in capsys.readouterr().out
    x = np.load(out / "reconstruction.npy")
    assert x.shape == (1, 1, 64, 64) and np.iscomplexobj(x)
    rec = json.loads((out / "run.json").read_text())
    assert rec["cost"]["nfe"] == 3 and set(rec["metrics"]) == {"dds", "adjoint", "cg"}
    assert rec["solve_config"]["seeds"] == [0] and (out / "figure.png").stat().st_size > 1000
    assert (out / "cg.npy").exists() and (out / "mask.npy").exists()
    before = (out / "run.json").read_text()
    assert main(args) == 0  # the directory exists: the run goes to a fresh one and says so
    assert f"wrote {out}-2 instead" in capsys.readouterr().out
    assert (out / "run.json").read_text() == before  # nothing lost
    assert json.loads((tmp_path / "run1-2" / "run.json").read_text())["output_dir"] == str(out) + "-2"
    assert main(args + ["--overwrite"]) == 0
    assert not (tmp_path / "run1-3").exists() and (out / "run.json").read_text() != before


def test_unknown_config_key_exits_nonzero_without_traceback(tmp_path):
    r = run_cli("reconstruct", CFG, "solver.stepz=3", f"output.dir={tmp_path / 'o'}")
    assert r.returncode != 0
    assert "unknown config key 'solver.stepz'" in r.stderr and "valid keys" in r.stderr
    assert "Traceback" not in r.stderr


def test_sampler_knob_overrides_beyond_the_file_are_validated_by_the_sampler(tmp_path, capsys):
    """The file sets no sampler options; dds.dc may still be overridden, a misspelt knob is an error."""
    args = ["reconstruct", "--no-progress", CFG, "solver.steps=2", "problem.index=[0]"]
    assert main(args + ["solver.options.dds.dc=normal", f"output.dir={tmp_path / 'a'}"]) == 0
    rec = json.loads((tmp_path / "a" / "run.json").read_text())
    assert rec["solve_config"]["knobs"]["dc"] == "normal"
    assert main(args + ["solver.options.dds.dcc=normal", f"output.dir={tmp_path / 'b'}"]) == 1
    assert "dcc" in capsys.readouterr().err


def test_unknown_task_option_and_missing_inputs(tmp_path, capsys):
    assert main(["reconstruct", CFG, "problem.acceleraton=8", f"output.dir={tmp_path / 'a'}"]) == 1
    assert "problem.acceleration" in capsys.readouterr().err
    assert main(["reconstruct", str(tmp_path / "missing.yaml")]) == 1
    assert "not found" in capsys.readouterr().err
    assert main(["reconstruct", CFG, "problem.source=image", f"problem.path={tmp_path / 'x.npy'}",
                 f"output.dir={tmp_path / 'b'}"]) == 1
    assert "not found" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_debug_shows_traceback(tmp_path):
    r = run_cli("reconstruct", CFG, "solver.sampler=nope", f"output.dir={tmp_path / 'o'}", "--debug")
    assert r.returncode != 0 and "Traceback" in r.stderr and "unknown sampler 'nope'" in r.stderr


def test_reconstruct_from_user_image_file(tmp_path):
    from invsolve.data.mri import heldout_slices

    x, _ = heldout_slices(64, n=2)
    np.save(tmp_path / "img.npy", x[:, 0].numpy())
    out = tmp_path / "o"
    assert main(["reconstruct", CFG, "problem.source=image", f"problem.path={tmp_path / 'img.npy'}",
                 "solver.sampler=cg", "baselines=[adjoint]", f"output.dir={out}", "--no-progress"]) == 0
    rec = json.loads((out / "run.json").read_text())
    assert rec["metrics"]["cg"]["psnr_mean"] > rec["metrics"]["adjoint"]["psnr_mean"]


def test_reconstruct_from_measured_kspace_with_given_maps(tmp_path):
    import torch

    from invsolve.data.mri import heldout_slices
    from invsolve.operators import MultiCoilMRI, coils, masks

    x, _ = heldout_slices(64, n=1)
    maps = coils.birdcage(6, (64, 64))
    op = MultiCoilMRI(maps, masks.uniform1d((64, 64), 4, seed=2))
    np.save(tmp_path / "k.npy", op(x)[0].numpy())
    np.save(tmp_path / "maps.npy", maps.numpy())
    out = tmp_path / "o"
    assert main(["reconstruct", CFG, "problem.source=kspace", f"problem.path={tmp_path / 'k.npy'}",
                 f"problem.maps_file={tmp_path / 'maps.npy'}", "solver.sampler=cg", "baselines=[]",
                 f"output.dir={out}", "--no-progress"]) == 0
    rec = np.load(out / "reconstruction.npy")
    ref = inv_cg(op, op(x))
    assert np.allclose(rec, ref, atol=1e-4)
    assert json.loads((out / "run.json").read_text())["metrics"] == {}  # no ground truth for measured data
    _ = torch


def inv_cg(op, y):
    import invsolve as inv

    return inv.solve(y, op, sampler="cg").x.numpy()


def test_list_and_help(capsys):
    assert main(["list", "samplers"]) == 0
    out = capsys.readouterr().out
    assert "dds" in out and "cg" in out
    with pytest.raises(SystemExit):
        main(["--help"])


def test_reconstruct_from_fastmri_style_h5_with_espirit(tmp_path):
    pytest.importorskip("sigpy")
    h5py = pytest.importorskip("h5py")
    from invsolve.data.mri import heldout_slices
    from invsolve.operators import coils, fft2c, masks

    x, _ = heldout_slices(64, n=2)
    maps = coils.birdcage(6, (64, 64))
    m = masks.uniform1d((64, 64), 3, center_fraction=0.3, seed=0)
    k = (m * fft2c(maps[None] * x)).numpy()  # (slices, coils, H, W), unsampled lines zero as in fastMRI
    with h5py.File(tmp_path / "scan.h5", "w") as f:
        f.create_dataset("kspace", data=k)
    out = tmp_path / "o"
    assert main(["reconstruct", CFG, "problem.source=kspace", f"problem.path={tmp_path / 'scan.h5'}",
                 "problem.slice=1", "problem.espirit_calib=16", "solver.sampler=cg", "baselines=[adjoint]",
                 f"output.dir={out}", "--no-progress"]) == 0
    rec = np.load(out / "reconstruction.npy")[0, 0]
    truth = x[1, 0].numpy()
    obj = np.abs(truth) > 0.2
    rel = np.linalg.norm((np.abs(rec) - np.abs(truth))[obj]) / np.linalg.norm(np.abs(truth)[obj])
    assert rel < 0.25, rel
    meta = json.loads((out / "run.json").read_text())["problem_meta"]
    assert meta["coil_maps"].startswith("ESPIRiT")
