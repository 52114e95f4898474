"""fastMRI-format multi-coil files (issue #24): header, readout crop, synthetic writer, one-slice reads, and the
reconstruction pipeline from the command line (full size 640x368 / 15 coils / 320x320 in the slow tests)."""
import json
import tracemalloc

import numpy as np
import pytest
import torch

from invsolve.cli import main
from invsolve.data import fastmri
from invsolve.errors import InputFileError, InvalidValueError, InvsolveError, ShapeError
from invsolve.operators import fft2c, masks

h5py = pytest.importorskip("h5py")
CFG = "configs/reconstruct/mri_dds.yaml"


def test_header_round_trip_and_missing_field():
    h = fastmri.Header((640, 368, 1), (320, 320, 1), (440.0, 253.0, 3.0), (220.0, 220.0, 3.0), (0, 367, 184))
    xml = fastmri.header_xml(h, n_coils=15, n_slices=3)
    assert fastmri.parse_header(xml.encode()) == h
    assert h.readout_oversampling == 2.0 and h.acquired_columns() == slice(0, 368)
    # fastMRI's zero-padding rule: 340 acquired lines centred at 170 in a 368 matrix -> columns 14..353
    assert fastmri.Header(h.encoded, h.recon, h.encoded_fov_mm, h.recon_fov_mm,
                          (0, 339, 170)).acquired_columns() == slice(14, 354)
    broken = xml.replace("<reconSpace><matrixSize><x>320</x>", "<reconSpace><matrixSize>")
    with pytest.raises(InputFileError, match="encoding/reconSpace/matrixSize/x"):
        fastmri.parse_header(broken, "scan.h5:ismrmrd_header")


def test_readout_crop_is_exact_on_undersampled_kspace():
    # object in the central 32 of 64 readout rows; cropping the readout of *undersampled* k-space must equal the
    # k-space of the cropped image under the same column mask (every readout line is complete)
    g = torch.Generator().manual_seed(0)
    img = torch.zeros(3, 64, 24, dtype=torch.complex64)
    img[:, 16:48] = torch.randn(3, 32, 24, dtype=torch.complex64, generator=g)
    m = masks.uniform1d((64, 24), 3, 0.2, seed=1)
    got = fastmri.crop_readout(fft2c(img) * m, 32)
    ref = fft2c(img[:, 16:48]) * m[16:48]
    assert torch.allclose(got, ref, atol=1e-5)
    # cropping k-space rows instead (a lower-resolution image of the whole field of view) is a different thing
    assert not torch.allclose((fft2c(img) * m)[:, 16:48], ref, atol=1e-2)


@pytest.fixture(scope="module")
def small_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("fm") / "small.h5"
    info = fastmri.write_synthetic(path, n_slices=3, n_coils=8, encoded=(128, 72), recon=(64, 64), seed=3)
    return path, info["images"]


def test_synthetic_file_has_the_fastmri_layout(small_file):
    path, images = small_file
    with h5py.File(path, "r") as f:
        k = f["kspace"]
        assert k.shape == (3, 8, 128, 72) and k.dtype == np.complex64 and k.chunks == (1, 8, 128, 72)
        h = fastmri.parse_header(f["ismrmrd_header"][()])
        assert h.encoded == (128, 72, 1) and h.recon == (64, 64, 1)
        rss = f["reconstruction_rss"][()]
        assert rss.shape == (3, 64, 64) and rss.dtype == np.float32
        assert f.attrs["max"] == pytest.approx(float(rss.max())) and f.attrs["max"] == pytest.approx(3e-4, rel=1e-5)
        assert f.attrs["norm"] == pytest.approx(float(np.linalg.norm(rss)), rel=1e-5)
        assert f.attrs["acquisition"] == "AXT1" and len(f.attrs["patient_id"]) == 64
        # the object sits in the central recon rows/columns of the oversampled image: nothing outside
        img = torch.from_numpy(k[1])
    from invsolve.operators import ifft2c

    coil_img = ifft2c(img).abs()
    assert float(coil_img[:, :32].max()) < 1e-6 * float(coil_img.max())
    # unit-sum-of-squares coils: the RSS is the magnitude of the embedded image
    assert np.allclose(rss, images[:, 0].abs().numpy(), atol=1e-4 * rss.max())
    with pytest.raises(InvsolveError, match="exists"):
        fastmri.write_synthetic(path, n_slices=1, encoded=(128, 72), recon=(64, 64))


def test_read_slice_reads_one_slice(tmp_path):
    path = tmp_path / "eight.h5"
    fastmri.write_synthetic(path, n_slices=8, n_coils=4, encoded=(128, 72), recon=(64, 64), source="pydicom")
    one = 4 * 128 * 72 * 8  # bytes of one complex64 slice
    tracemalloc.start()
    s = fastmri.read_slice(path, 5)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert s.kspace.shape == (4, 128, 72) and s.index == 5
    assert peak < 2.5 * one, (peak, one)  # the volume is 8 slices
    with h5py.File(path, "r") as f:
        assert np.array_equal(s.kspace, f["kspace"][5])
    with pytest.raises(InvalidValueError, match="problem.slice=8 is out of range"):
        fastmri.read_slice(path, 8)


def test_loader_crops_to_recon_and_recovers_the_image(small_file):
    from invsolve.tasks import build_problem

    path, images = small_file
    pb = build_problem(dict(task="mri", source="kspace", path=str(path), slice=[0, 2], acceleration=4,
                            center_fraction=0.25, espirit_calib=12))
    assert pb.y.shape == (2, 8, 64, 64) and pb.x_true.shape == (2, 1, 64, 64)
    assert pb.meta["readout_oversampling"] == 2.0 and pb.meta["retrospective"] and pb.meta["slices"] == [0, 2]
    # retrospective mask: unsampled columns are zero, the ACS block is kept
    assert 0.2 < pb.meta["sampled_fraction"] < 0.5
    # coil-combined truth (ESPIRiT maps) has the magnitude of the written images inside the object
    for b, i in enumerate([0, 2]):
        ref = images[i, 0].abs()
        obj = ref > 0.1 * ref.max()
        rel = (pb.x_true[b, 0].abs() - ref)[obj].norm() / ref[obj].norm()
        assert rel < 0.02, rel
    with pytest.raises(InvalidValueError, match="espirit_calib=24 needs a fully sampled centre"):
        build_problem(dict(task="mri", source="kspace", path=str(path), slice=0, center_fraction=0.08,
                           espirit_calib=24))


def test_cli_reconstructs_a_fastmri_file_small(small_file, tmp_path):
    # the same pipeline as the full-size test, at 128x72 -> 64x64 with the embedded 64x64 prior
    path, _ = small_file
    out = tmp_path / "o"
    assert main(["reconstruct", CFG, "problem.source=kspace", f"problem.path={path}", "problem.slice=[1]",
                 "problem.center_fraction=0.25", "problem.espirit_calib=12", "solver.steps=25",
                 "baselines=[adjoint]", f"output.dir={out}",
                 # measured k-space with estimated (ESPIRiT) maps is not exactly consistent with the model, and the
                 # k-space noise estimate (~2e-6 here) does not see that: the noise-aware default then fits the data
                 # nearly exactly (26.3 dB, CG-SENSE 28.0); the proximal form with a fixed weight does not
                 "solver.options.dds.gamma=10", "solver.options.dds.cg_iters=5", "solver.options.dds.cg_tol=null",
                 "--no-progress"]) == 0
    rec = json.loads((out / "run.json").read_text())
    m = rec["metrics"]
    assert np.load(out / "reconstruction.npy").shape == (1, 1, 64, 64)
    assert m["dds"]["psnr_mean"] > m["adjoint"]["psnr_mean"] + 3, m
    assert rec["problem_meta"]["coil_maps"].startswith("ESPIRiT") and rec["cost"]["nfe"] == 25


def test_cli_runs_a_random_adm_preset_through_prior_options(small_file, tmp_path):
    path, _ = small_file
    out = tmp_path / "o"
    small = ("solver.prior_options.arch_overrides={image_size: 64, model_channels: 32, num_head_channels: 32, "
             "channel_mult: [1, 2]}")
    assert main(["reconstruct", CFG, "problem.source=kspace", f"problem.path={path}", "problem.slice=0",
                 "problem.center_fraction=0.25", "problem.espirit_calib=12", "solver.prior=adm-fastmri320-complex",
                 "solver.prior_options.random_init=true", small, "solver.steps=3", "baselines=[]",
                 f"output.dir={out}", "--no-progress"]) == 0
    rec = json.loads((out / "run.json").read_text())
    assert rec["solve_config"]["prior"] == "adm-fastmri320-complex-random" and rec["cost"]["nfe"] == 3
    assert np.isfinite(np.load(out / "reconstruction.npy")).all()
    # a preset name without random_init is refused with the way out, before any work
    assert main(["reconstruct", CFG, "problem.source=kspace", f"problem.path={path}",
                 "solver.prior=adm-fastmri320-complex", "solver.prior_options.dtype=bf16",
                 f"output.dir={tmp_path / 'p'}", "--no-progress"]) == 1
    assert main(["reconstruct", CFG, "solver.prior_adapter=stretch", f"output.dir={tmp_path / 'q'}"]) == 1


# ---------------------------------------------------------------------------------------------- full size
@pytest.fixture(scope="module")
def full_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("fm") / "file_brain_AXT1_synthetic.h5"
    fastmri.write_synthetic(path, n_slices=1, n_coils=15, seed=5)  # (1, 15, 640, 368), recon 320x320
    return path


@pytest.mark.slow
def test_cli_full_size_fastmri_with_the_embedded_prior_through_resize(full_file, tmp_path):
    out = tmp_path / "o"
    assert main(["reconstruct", CFG, "problem.source=kspace", f"problem.path={full_file}", "problem.slice=0",
                 "solver.prior=mri-brain", "solver.prior_adapter=resize", "solver.steps=10", "baselines=[adjoint]",
                 f"output.dir={out}", "--no-progress"]) == 0
    rec = json.loads((out / "run.json").read_text())
    meta = rec["problem_meta"]
    assert meta["encoded_matrix"] == [640, 368] and meta["recon_matrix"] == [320, 320]
    assert meta["kspace_shape"] == [15, 320, 320] and meta["coil_maps"].startswith("ESPIRiT")
    assert np.load(out / "reconstruction.npy").shape == (1, 1, 320, 320)
    assert rec["solve_config"]["prior"] == "mri-brain@resize320x320"
    m = rec["metrics"]
    assert m["dds"]["psnr_mean"] > m["adjoint"]["psnr_mean"] + 1, m


@pytest.mark.slow
def test_cli_full_size_fastmri_with_the_random_320_adm(full_file, tmp_path):
    out = tmp_path / "o"
    assert main(["reconstruct", CFG, "problem.source=kspace", f"problem.path={full_file}",
                 "solver.prior=adm-fastmri320-complex", "solver.prior_options.random_init=true", "solver.steps=2",
                 "baselines=[]", f"output.dir={out}", "--no-progress"]) == 0
    rec = json.loads((out / "run.json").read_text())
    assert rec["cost"]["nfe"] == 2 and rec["solve_config"]["prior"] == "adm-fastmri320-complex-random"
    x = np.load(out / "reconstruction.npy")
    assert x.shape == (1, 1, 320, 320) and np.iscomplexobj(x) and np.isfinite(x).all()


def test_undersampled_file_keeps_its_lines_and_phase_encoding_matrix(small_file, tmp_path):
    # a test-set-like file: the file's mask selects columns, k-space elsewhere is zero; readout still 2x oversampled
    from invsolve.tasks import build_problem

    path, _ = small_file
    with h5py.File(path, "r") as f:
        k, header = f["kspace"][()], f["ismrmrd_header"][()]
    m = masks.uniform1d((128, 72), 4, 0.2, seed=7)[0].numpy()  # (72,) column mask
    under = tmp_path / "under.h5"
    with h5py.File(under, "w") as f:
        f["kspace"] = k * m
        f["mask"] = m
        f["ismrmrd_header"] = header
    pb = build_problem(dict(task="mri", source="kspace", path=str(under), slice=1, espirit_calib=8))
    assert pb.x_true is None and pb.y.shape == (1, 8, 64, 72)  # readout cropped to 64, phase encoding kept
    assert torch.equal(pb.operator.mask[0, 0, 0].cpu(), torch.from_numpy(m).float())
    assert "retrospective" not in pb.meta
    # the measured lines are the readout-cropped k-space of the same slice
    ref = fastmri.crop_readout(torch.from_numpy(k[1]) * torch.from_numpy(m), 64)
    assert torch.allclose(pb.y[0], ref, atol=1e-6 * float(ref.abs().max()))
    # a header that does not describe the stored k-space is refused, naming both shapes
    bad = tmp_path / "bad.h5"
    with h5py.File(bad, "w") as f:
        f["kspace"] = k[:, :, :, :64]
        f["ismrmrd_header"] = header
    with pytest.raises(ShapeError, match=r"shape \(128, 64\) but its ismrmrd_header encodes a 128x72 matrix"):
        build_problem(dict(task="mri", source="kspace", path=str(bad), slice=0))
