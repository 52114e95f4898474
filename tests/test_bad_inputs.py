"""Bad input, one row per case: the error is an ``InvsolveError`` subclass of the stated type, its one-line message
names the argument, the CLI exits non-zero with one line and no traceback, nothing on disk changes, and checks
that need no computation fail before any (the problem is not built / the solver does not run).

``python tests/test_bad_inputs.py`` prints every case with its message (the table in the issue note).
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import invsolve as inv
from invsolve.errors import (
    ConfigError,
    DeviceError,
    DTypeError,
    InputFileError,
    InvalidValueError,
    InvsolveError,
    OutputError,
    ShapeError,
    UnknownNameError,
)
from invsolve.operators.blackbox import BlackBoxError

ROOT = Path(__file__).resolve().parents[1]
CFG = ROOT / "configs" / "reconstruct"
MRI, INPAINT, DEBLUR, CT = (str(CFG / f) for f in ("mri_dds.yaml", "inpaint_dds.yaml", "deblur_dds.yaml",
                                                  "ct_sparse_view_dds.yaml"))
WEIGHTS = ROOT / "invsolve" / "priors" / "weights"
NO_CUDA = not torch.cuda.is_available()


# ----------------------------------------------------------------------------------------------- helpers
def snapshot(*dirs) -> dict:
    """``{path: (size, mtime_ns)}`` of every file (and directory) under ``dirs``, caches left out."""
    out = {}
    for d in dirs:
        for p in Path(d).rglob("*"):
            if "__pycache__" in p.parts or ".hypothesis" in p.parts:
                continue
            st = p.lstat()
            out[str(p)] = (st.st_size if p.is_file() else -1, st.st_mtime_ns)
    return out


def readonly_dir(tmp_path) -> Path:
    """A directory in which nothing can be created (chmod 555; as root, which ignores it, a read-only mount)."""
    if os.geteuid() != 0:
        d = tmp_path / "ro"
        d.mkdir()
        d.chmod(0o555)
        return d
    for cand in (Path("/sys"), Path("/proc/sys")):
        try:
            (cand / ".invsolve-probe").touch()
        except OSError:
            return cand
        (cand / ".invsolve-probe").unlink()
    pytest.skip("no read-only directory available")


@pytest.fixture
def files(tmp_path):
    """Input files of the table (written before the snapshot)."""
    return make_files(tmp_path)


def make_files(tmp_path) -> Path:
    f = tmp_path / "in"
    f.mkdir()
    (f / "empty.yaml").write_text("")
    (f / "comment.yaml").write_text("# nothing but a comment\n")
    (f / "list.yaml").write_text("- problem\n- solver\n")
    (f / "notask.yaml").write_text("solver:\n  sampler: dds\n  steps: 2\n")
    (f / "badyaml.yaml").write_text("problem: {task: mri\n")
    (f / "section.yaml").write_text("problem: mri\n")
    np.save(f / "zeros.npy", np.zeros((64, 64), np.float32))
    (f / "recipe_empty.yaml").write_text("")
    corrupt = f / "corrupt-prior"
    shutil.copytree(WEIGHTS / "ct-phantom", corrupt)
    (corrupt / "diffusion_pytorch_model.safetensors").write_bytes(b"not a safetensors file" * 8)
    return f


# ----------------------------------------------------------------------------------------------- CLI rows
# (id, command, args (format keys: {in}, {out}, {ro}, {pkg}), error type, fragment the message must contain,
#  stage: "preflight" = before the problem is built, "build" = after building, before any solve)
CLI = [
    ("empty-yaml", "reconstruct", ["{in}/empty.yaml"], ConfigError, "is empty", "preflight"),
    ("comment-only-yaml", "reconstruct", ["{in}/comment.yaml"], ConfigError, "is empty", "preflight"),
    ("top-level-list", "reconstruct", ["{in}/list.yaml"], ConfigError, "list at the top level", "preflight"),
    ("no-problem-task", "reconstruct", ["{in}/notask.yaml"], ConfigError, "problem.task", "preflight"),
    ("invalid-yaml", "reconstruct", ["{in}/badyaml.yaml"], ConfigError, "not valid YAML", "preflight"),
    ("section-not-mapping", "reconstruct", ["{in}/section.yaml"], ConfigError, "problem=", "preflight"),
    ("config-missing", "reconstruct", ["{in}/nope.yaml"], InputFileError, "nope.yaml", "preflight"),
    ("unknown-key", "reconstruct", [MRI, "solver.stepz=3"], UnknownNameError, "solver.stepz", "preflight"),
    ("unknown-section", "reconstruct", [MRI, "optimizer.lr=1"], UnknownNameError, "optimizer", "preflight"),
    ("override-no-equals", "reconstruct", [MRI, "solver.steps"], ConfigError, "key=value", "preflight"),
    ("unknown-task", "reconstruct", [MRI, "problem.task=nope"], UnknownNameError, "nope", "preflight"),
    ("unknown-problem-option", "reconstruct", [MRI, "problem.acceleraton=8"], UnknownNameError,
     "problem.acceleraton", "preflight"),
    ("noise-sigma-negative", "reconstruct", [MRI, "problem.noise_sigma=-1"], InvalidValueError,
     "problem.noise_sigma=-1", "preflight"),
    ("noise-sigma-nan", "reconstruct", [MRI, "problem.noise_sigma=nan"], InvalidValueError,
     "problem.noise_sigma='nan'", "preflight"),
    ("noise-sigma-yaml-nan", "reconstruct", [DEBLUR, "problem.noise_sigma=.nan"], InvalidValueError,
     "problem.noise_sigma=nan", "preflight"),
    ("fraction-missing-1", "reconstruct", [INPAINT, "problem.fraction_missing=1.0"], InvalidValueError,
     "problem.fraction_missing=1.0", "preflight"),
    ("all-zero-inpainting-mask", "reconstruct", [INPAINT, "problem.mask=file", "problem.mask_file={in}/zeros.npy"],
     InvalidValueError, "problem.mask_file", "build"),
    ("mri-all-zero-mask", "reconstruct", [MRI, "problem.mask_file={in}/zeros.npy"], InvalidValueError,
     "problem.mask_file", "build"),
    ("acceleration-below-1", "reconstruct", [MRI, "problem.acceleration=0.5"], InvalidValueError,
     "problem.acceleration=0.5", "preflight"),
    ("index-negative", "reconstruct", [MRI, "problem.index=[-1]"], InvalidValueError, "problem.index", "preflight"),
    ("index-empty-batch-0", "reconstruct", [MRI, "problem.index=[]"], InvalidValueError, "problem.index=[]",
     "preflight"),
    ("index-out-of-range", "reconstruct", [MRI, "problem.index=[99]"], InvalidValueError, "problem.index=[99]",
     "build"),
    ("mask-choice", "reconstruct", [MRI, "problem.mask=radial"], InvalidValueError, "problem.mask='radial'",
     "preflight"),
    ("kspace-crop-length", "reconstruct", [MRI, "problem.kspace_crop=[64]"], InvalidValueError, "problem.kspace_crop",
     "preflight"),
    ("seed-negative", "reconstruct", [MRI, "solver.seed=-1"], InvalidValueError, "solver.seed=-1", "preflight"),
    ("seed-not-int", "reconstruct", [MRI, "solver.seed=abc"], InvalidValueError, "solver.seed='abc'", "preflight"),
    ("num-samples-0", "reconstruct", [MRI, "solver.num_samples=0"], InvalidValueError, "solver.num_samples=0",
     "preflight"),
    ("steps-0", "reconstruct", [MRI, "solver.steps=0"], InvalidValueError, "solver.steps=0", "preflight"),
    ("gamma-negative", "reconstruct", [MRI, "solver.options.dds.gamma=-10"], InvalidValueError,
     "solver.options.dds.gamma=-10", "preflight"),
    ("cg-iters-0", "reconstruct", [MRI, "solver.options.dds.cg_iters=0"], InvalidValueError,
     "solver.options.dds.cg_iters=0", "preflight"),
    ("unknown-knob", "reconstruct", [MRI, "solver.options.dds.gama=1"], UnknownNameError, "solver.options.dds: ",
     "preflight"),
    ("dds-init-not-classical", "reconstruct", [MRI, "solver.options.dds.init=dps"], InvalidValueError,
     "solver.options.dds.init='dps'", "preflight"),
    ("baseline-knob", "reconstruct", [MRI, "solver.options.cg.iterations=0"], InvalidValueError,
     "solver.options.cg.iterations=0", "preflight"),
    ("options-not-a-sampler", "reconstruct", [MRI, "solver.options.nope.x=1"], UnknownNameError,
     "solver.options.nope", "preflight"),
    ("unknown-sampler", "reconstruct", [MRI, "solver.sampler=nope"], UnknownNameError, "nope", "preflight"),
    ("unknown-prior", "reconstruct", [MRI, "solver.prior=nope"], UnknownNameError, "solver.prior='nope'",
     "preflight"),
    ("data-scale", "reconstruct", [MRI, "solver.data_scale=-1"], InvalidValueError, "solver.data_scale=-1",
     "preflight"),
    ("device-gpu", "reconstruct", [MRI, "solver.device=gpu"], DeviceError, "solver.device='gpu'", "preflight"),
    pytest.param("device-cuda-absent", "reconstruct", [MRI, "solver.device=cuda"], DeviceError,
                 "solver.device='cuda'", "preflight",
                 marks=pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")),
    ("baselines-not-a-list", "reconstruct", [MRI, "baselines=fbp"], InvalidValueError, "baselines='fbp'",
     "preflight"),
    ("fbp-on-mri", "reconstruct", [MRI, "baselines=[fbp]"], InvalidValueError, "fbp", "build"),
    ("output-overwrite-not-bool", "reconstruct", [MRI, "output.overwrite=maybe"], InvalidValueError,
     "output.overwrite", "preflight"),
    ("output-read-only", "reconstruct", [MRI, "output.dir={ro}/invsolve-out"], OutputError, "output.dir=",
     "preflight"),
    ("output-is-a-file", "reconstruct", [MRI, "output.dir={in}/zeros.npy"], OutputError, "output.dir=",
     "preflight"),
    ("ct-arc-over-360", "reconstruct", [CT, "problem.arc_degrees=400"], InvalidValueError,
     "problem.arc_degrees=400", "preflight"),
    ("train-empty-recipe", "train-prior", ["{in}/recipe_empty.yaml"], ConfigError, "is empty", "preflight"),
    ("train-steps-0", "train-prior", [str(ROOT / "configs/train/mri-brain.yaml"), "train.steps=0",
                                      "output_dir={out}/run"], InvalidValueError, "train.steps=0", "preflight"),
    ("train-export-into-package", "train-prior", [str(ROOT / "configs/train/mri-brain.yaml"),
                                                  "export.dir={pkg}/priors/weights/mri-brain",
                                                  "output_dir={out}/run"],
     OutputError, "export.dir=", "preflight"),
    ("train-output-into-package", "train-prior", [str(ROOT / "configs/train/mri-brain.yaml"),
                                                  "output_dir={pkg}/priors/weights/x"], OutputError, "output_dir=",
     "preflight"),
    ("train-data-kind", "train-prior", [str(ROOT / "configs/train/mri-brain.yaml"), "data.kind=nope",
                                        "output_dir={out}/run"], UnknownNameError, "data.kind='nope'", "preflight"),
    ("train-device-gpu", "train-prior", [str(ROOT / "configs/train/mri-brain.yaml"), "train.device=gpu",
                                         "output_dir={out}/run"], DeviceError, "train.device='gpu'", "preflight"),
    ("train-init-from-missing", "train-prior", [str(ROOT / "configs/train/ns-vorticity-stage2.yaml"),
                                                "output_dir={out}/run", "train.init_from={out}/none"],
     InputFileError, "train.init_from=", "preflight"),
    ("export-embedded-without-run", "train-prior", [str(ROOT / "configs/train/mri-brain.yaml"),
                                                    "output_dir={out}/run", "--export-embedded"],
     InputFileError, "no exported prior", "preflight"),
]


def _id(c) -> str:
    return c.values[0] if hasattr(c, "marks") else c[0]


def _values(c) -> tuple:
    return c.values if hasattr(c, "marks") else c


class _ComputationStarted(AssertionError):
    pass


def _forbid(monkeypatch, stage: str):
    """Make the problem build (``preflight`` rows) and every solve / training fail loudly if reached."""
    import invsolve.api
    import invsolve.data.base
    import invsolve.tasks

    def boom(*a, **k):
        raise _ComputationStarted("computation started before the check")

    monkeypatch.setattr(invsolve.api, "solve", boom)
    monkeypatch.setattr(invsolve.data.base, "build_train_source", boom)
    monkeypatch.setattr("invsolve.train.build_train_source", boom, raising=False)
    if stage == "preflight":
        monkeypatch.setattr(invsolve.tasks, "build_problem", boom)


def _args(args, tmp_path, files):
    from invsolve.checks import package_dir

    fmt = {"in": files, "out": tmp_path / "out", "pkg": package_dir()}
    if any("{ro}" in a for a in args):
        fmt["ro"] = readonly_dir(tmp_path)
    cli_flags = [a for a in args if a.startswith("--")]
    return [a.format(**fmt) for a in args if not a.startswith("--")], cli_flags


def _run_api(command, args, flags):
    if command == "reconstruct":
        from invsolve.reconstruct import main

        cfg, overrides = args[0], args[1:]
        if not any(o.startswith("output.dir=") for o in overrides):
            overrides = overrides + [f"output.dir={Path.cwd() / 'outputs' / 'o'}"]
        return main(cfg, overrides, progress=False)
    from invsolve.train import main

    return main(args[0], args[1:], progress=False, export_embedded="--export-embedded" in flags)


@pytest.mark.parametrize("name,command,args,etype,fragment,stage", CLI,
                         ids=[_id(c) for c in CLI])
def test_cli_bad_input(name, command, args, etype, fragment, stage, tmp_path, files, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args, flags = _args(args, tmp_path, files)
    before = snapshot(tmp_path, WEIGHTS)
    _forbid(monkeypatch, stage)
    # the library call raises the documented type with a one-line message naming the argument
    with pytest.raises(etype) as e:
        _run_api(command, args, flags)
    assert isinstance(e.value, InvsolveError) and not isinstance(e.value, _ComputationStarted)
    msg = str(e.value)
    assert fragment in msg and "\n" not in msg, msg
    # the command line prints exactly that line and exits 1, without a traceback
    from invsolve.cli import main

    out_args = [] if command != "reconstruct" or any(a.startswith("output.dir=") for a in args) else \
        [f"output.dir={tmp_path / 'outputs' / 'o'}"]
    rc = main([command, "--no-progress", *flags, *args, *out_args])
    err = capsys.readouterr().err
    assert rc == 1
    lines = [ln for ln in err.splitlines() if ln.startswith("invsolve: error:")]
    assert lines == [f"invsolve: error: {msg}"], err
    assert "Traceback" not in err
    assert snapshot(tmp_path, WEIGHTS) == before  # nothing on disk changed


def test_cli_subprocess_prints_one_line_and_no_traceback(tmp_path):
    """The installed entry point (a fresh interpreter), for one preflight and one post-build case."""
    import subprocess

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg", "PYTHONPATH": str(ROOT)}
    for args, fragment in ((["solver.seed=-1"], "solver.seed=-1"), (["baselines=[fbp]"], "fbp")):
        r = subprocess.run([sys.executable, "-m", "invsolve.cli", "reconstruct", MRI, *args,
                            f"output.dir={tmp_path / 'o'}"], capture_output=True, text=True, cwd=tmp_path, env=env)
        assert r.returncode == 1 and "Traceback" not in r.stderr
        assert r.stderr.splitlines()[0].startswith("invsolve: error:") and fragment in r.stderr.splitlines()[0]
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------------------------- API rows
def _mri():
    from invsolve.data.mri import heldout_slices
    from invsolve.operators import MultiCoilMRI, coils, masks

    x, _ = heldout_slices(64, n=2)
    op = MultiCoilMRI(coils.birdcage(8, (64, 64)), masks.uniform1d((64, 64), 4, seed=0))
    return op, op(x)


def _nan_y():
    op, y = _mri()
    y = y.clone()
    y[0, 0, 0, 0] = float("nan")
    return op, y


def _wrong_shape_black_box():
    from invsolve.operators import BlackBox

    op = BlackBox(lambda a: a[:, :, ::2, ::2], input_shape=(3, 64, 64))
    return op, torch.rand(1, 3, 16, 16)


def _solve(prep, **kw):
    def f():
        op, y = prep()
        kw.setdefault("steps", 2)
        return inv.solve(y, op, **kw)
    return f


def _problem(**opts):
    from invsolve.tasks import build_problem

    return lambda: build_problem(opts)


def _load_corrupt(files):
    return inv.load_prior(files / "corrupt-prior")


# (id, callable (files -> raises), error type, fragment)
API = [
    ("batch-of-0", lambda f: _solve(lambda: (_mri()[0], _mri()[1][:0]))(), ShapeError, "batch of 0"),
    ("y-nan", lambda f: _solve(_nan_y)(), InvalidValueError, "y contains NaN"),
    ("y-not-an-array", lambda f: inv.solve("abc", _mri()[0], steps=2), DTypeError, "y must be"),
    ("y-wrong-shape", lambda f: _solve(lambda: (_mri()[0], _mri()[1][:, :4]))(), ShapeError, "y has shape"),
    ("seed-negative", lambda f: _solve(_mri, seed=-1)(), InvalidValueError, "seed=-1"),
    ("seed-str", lambda f: _solve(_mri, seed="abc")(), InvalidValueError, "seed='abc'"),
    ("seed-list-length", lambda f: _solve(_mri, seed=[0, 1, 2])(), ShapeError, "seed is a list of 3"),
    ("seed-list-entry", lambda f: _solve(_mri, seed=[0, -5])(), InvalidValueError, "seed[1]=-5"),
    ("device-gpu", lambda f: _solve(_mri, device="gpu")(), DeviceError, "device='gpu'"),
    pytest.param("device-cuda-absent", lambda f: _solve(_mri, device="cuda")(), DeviceError, "device='cuda'",
                 marks=pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")),
    ("num-samples-0", lambda f: _solve(_mri, num_samples=0)(), InvalidValueError, "num_samples=0"),
    ("steps-0", lambda f: _solve(_mri, steps=0)(), InvalidValueError, "steps=0"),
    ("gamma-negative", lambda f: _solve(_mri, gamma=-10)(), InvalidValueError, "gamma=-10"),
    ("cg-iters-0", lambda f: _solve(_mri, cg_iters=0)(), InvalidValueError, "cg_iters=0"),
    ("eta-nan", lambda f: _solve(_mri, eta=float("nan"))(), InvalidValueError, "eta=nan"),
    ("unknown-knob", lambda f: _solve(_mri, gama=1.0)(), UnknownNameError, "gama"),
    ("init-not-classical", lambda f: _solve(_mri, init="dps")(), InvalidValueError, "init='dps'"),
    ("init-knobs", lambda f: _solve(_mri, init="cg", init_knobs={"iterations": 0})(), InvalidValueError,
     "init_knobs"),
    ("data-scale", lambda f: _solve(_mri, data_scale=-1)(), InvalidValueError, "data_scale=-1"),
    ("unknown-sampler", lambda f: _solve(_mri, sampler="nope")(), UnknownNameError, "nope"),
    ("unknown-prior", lambda f: _solve(_mri, prior="nope")(), UnknownNameError, "nope"),
    ("black-box-output-shape", lambda f: _solve(_wrong_shape_black_box, sampler="enkg", prior="natural",
                                                 ensemble_size=4, max_inner=1)(), BlackBoxError, "(3, 32, 32)"),
    ("corrupt-safetensors", _load_corrupt, InputFileError, "corrupt-prior"),
    ("task-noise-negative", lambda f: _problem(task="deblur", index=[0], noise_sigma=-1)(), InvalidValueError,
     "problem.noise_sigma=-1"),
    ("task-noise-nan", lambda f: _problem(task="deblur", index=[0], noise_sigma=float("nan"))(), InvalidValueError,
     "problem.noise_sigma=nan"),
    ("task-fraction-missing-1", lambda f: _problem(task="inpaint", index=[0], fraction_missing=1.0)(),
     InvalidValueError, "problem.fraction_missing=1.0"),
    ("task-all-zero-mask", lambda f: _problem(task="inpaint", index=[0], mask="file",
                                              mask_file=str(f / "zeros.npy"))(), InvalidValueError, "all zeros"),
    ("task-missing", lambda f: _problem(index=[0])(), UnknownNameError, "problem.task"),
    ("task-unknown-option", lambda f: _problem(task="sr", factr=2)(), UnknownNameError, "problem.factr"),
    ("task-blackbox-function", lambda f: _problem(task="blackbox")(), InvalidValueError, "problem.function"),
    ("task-index-bool", lambda f: _problem(task="ct", index=True)(), InvalidValueError, "problem.index=True"),
    ("task-size-0", lambda f: _problem(task="sr", size=0)(), InvalidValueError, "problem.size=0"),
]


@pytest.mark.parametrize("name,call,etype,fragment", API,
                         ids=[_id(c) for c in API])
def test_api_bad_input(name, call, etype, fragment, tmp_path, files, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path, WEIGHTS)
    with pytest.raises(etype) as e:
        call(files)
    assert isinstance(e.value, InvsolveError)
    msg = str(e.value)
    assert fragment in msg and "\n" not in msg, msg
    assert snapshot(tmp_path, WEIGHTS) == before


def test_the_table_is_large_enough():
    assert len(CLI) + len(API) >= 40


if __name__ == "__main__":  # print every case with its message
    import tempfile

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        os.chdir(tmp)
        f = make_files(tmp)
        print("| case | error | message |\n|---|---|---|")
        for c in CLI + API:
            c = _values(c)
            try:
                if len(c) == 6:
                    a, flags = _args(c[2], tmp, f)
                    _run_api(c[1], a, flags)
                else:
                    c[1](f)
                print(f"| {'cli' if len(c) == 6 else 'api'}:{c[0]} | NONE | |")
            except Exception as e:  # noqa: BLE001
                print(f"| {'cli' if len(c) == 6 else 'api'}:{c[0]} | {type(e).__name__} | {e} |")
