"""Issue #3: CT / deblur / inpaint / SR tasks, their configs, the ``dds-3d`` and ``wiener`` samplers (CPU, fast).

The full quality gates (50 DDS steps on the held-out test images) are ``@pytest.mark.slow``; the reported numbers
come from the CT/imaging benchmark (``configs/bench/ct.yaml``, ``configs/bench/imaging.yaml``).
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import invsolve as inv
from invsolve.cli import main
from invsolve.errors import ShapeError
from invsolve.eval.metrics import psnr, ssim
from invsolve.operators.blur import Blur, gaussian_kernel
from invsolve.operators.ct import ParallelBeamCT, sparse_view_angles
from invsolve.samplers.dds3d import dz, dz_adjoint, tv_z_consistency, z_difference_rmse, z_flicker
from invsolve.solvers.tv import grad2d, grad2d_adjoint
from invsolve.solvers.wiener import noise_sigma_mad, wiener
from invsolve.tasks import build_problem
from invsolve.tasks.ct import phantom_volume

ROOT = Path(__file__).resolve().parents[1]
CFG = ROOT / "configs" / "reconstruct"
TINY = {  # config -> overrides that keep one end-to-end run to a few seconds
    "ct_sparse_view_dds.yaml": ["problem.index=[0]"],
    "ct_fan_beam_dds.yaml": ["problem.index=[2]"],
    "ct_limited_angle_dds.yaml": ["problem.index=[1]", "problem.step_degrees=4"],
    "ct_volume_dds.yaml": ["problem.n_slices=3", "output.figure=false"],
    "deblur_dds.yaml": ["problem.index=[0]"],
    "inpaint_dds.yaml": ["problem.index=[3]"],
    "sr_dds.yaml": ["problem.index=[6]"],
}


@pytest.fixture(scope="module")
def ct_prior():
    return inv.load_prior("ct-phantom")


@pytest.mark.parametrize("name", sorted(TINY))
def test_every_config_runs_end_to_end(name, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["reconstruct", str(CFG / name), "solver.steps=2", f"output.dir={out}", *TINY[name], "--no-progress"]
    assert main(args) == 0, capsys.readouterr().err
    rec = json.loads((out / "run.json").read_text())
    cfg = rec["config"]
    assert rec["cost"]["nfe"] == 2 and set(rec["metrics"]) == {cfg["solver"]["sampler"], *cfg["baselines"]}
    x = np.load(out / "reconstruction.npy")
    assert x.shape[0] == len(rec["names"]) and np.isfinite(x).all()
    for b in cfg["baselines"]:
        assert np.isfinite(np.load(out / f"{b}.npy")).all()
        assert np.isfinite(rec["metrics"][b]["psnr_mean"])
    for b in cfg["baselines"]:  # what each baseline ran with (its options, a preset if one applied) is recorded
        assert rec["baseline_configs"][b]["sampler"] == b and "knobs" in rec["baseline_configs"][b]


def test_ct_problem_geometry_and_meta():
    p = build_problem({"task": "ct", "index": [0, 2], "n_views": 8})
    assert p.y.shape == (2, 1, 8, 91) and p.x_true.shape == (2, 1, 64, 64) and p.data_range == 1.0
    assert 0 <= float(p.x_true.min()) and float(p.x_true.max()) <= 1
    assert p.meta["angles_degrees"][:2] == [0.0, 22.5] and p.default_baselines == ["fbp", "cg"]
    assert 0.9 < p.meta["opnorm_sq"] / (62 * 8) < 1.1  # ||AᵀA|| ~ N * views for this projector
    la = build_problem({"task": "ct", "index": [0], "geometry": "limited_angle", "arc_degrees": 90,
                        "step_degrees": 2, "start_degrees": 30})
    assert la.y.shape[-2] == 45 and la.meta["angles_degrees"][0] == 30 and la.meta["angles_degrees"][-1] == 118


def test_ct_sources_image_dicom_and_measured_sinogram(tmp_path):
    from invsolve.data.ct import HELDOUT_CT_FILES, pydicom_test_dir

    ex = build_problem({"task": "ct", "index": [0]})
    np.save(tmp_path / "img.npy", ex.x_true[0, 0].numpy())
    im = build_problem({"task": "ct", "source": "image", "path": str(tmp_path / "img.npy")})
    assert torch.allclose(im.y, ex.y)
    np.save(tmp_path / "hu.npy", ex.x_true[0, 0].numpy() * 2000 - 1000)
    hu = build_problem({"task": "ct", "source": "image", "path": str(tmp_path / "hu.npy"), "image_units": "hu"})
    assert torch.allclose(hu.x_true, ex.x_true, atol=1e-5)
    dcm = build_problem({"task": "ct", "source": "dicom", "path": str(pydicom_test_dir() / HELDOUT_CT_FILES[0])})
    assert torch.allclose(dcm.x_true, ex.x_true, atol=1e-5)  # same windowing and body crop as the example
    # a measured sinogram with given angles: no ground truth, the operator matches the data
    ang = sparse_view_angles(10)
    np.save(tmp_path / "ang.npy", ang.numpy())
    np.save(tmp_path / "sino.npy", ParallelBeamCT(64, ang)(ex.x_true)[:, 0].numpy())
    s = build_problem({"task": "ct", "source": "sinogram", "path": str(tmp_path / "sino.npy"),
                       "angles_file": str(tmp_path / "ang.npy")})
    assert s.x_true is None and s.operator.n_views == 10 and s.y.shape == (1, 1, 10, 91)
    assert torch.allclose(s.operator(ex.x_true), s.y, atol=1e-4)


def test_bad_inputs_raise_clear_errors(tmp_path):
    np.save(tmp_path / "small.npy", np.zeros((48, 48), np.float32))
    with pytest.raises(ShapeError, match="problem.resize"):
        build_problem({"task": "ct", "source": "image", "path": str(tmp_path / "small.npy")})
    resized = build_problem({"task": "ct", "source": "image", "path": str(tmp_path / "small.npy"), "resize": True})
    assert resized.x_true.shape == (1, 1, 64, 64)
    np.save(tmp_path / "deg.npy", np.arange(0, 180, 10.0))  # degrees, not radians
    with pytest.raises(ValueError, match="degrees"):
        build_problem({"task": "ct", "angles_file": str(tmp_path / "deg.npy")})
    with pytest.raises(ValueError, match="arc"):
        build_problem({"task": "ct", "geometry": "limited_angle", "arc_degrees": 120, "start_degrees": 300})
    np.save(tmp_path / "sino.npy", np.zeros((12, 91), np.float32))
    with pytest.raises(ShapeError, match="12 views"):
        build_problem({"task": "ct", "source": "sinogram", "path": str(tmp_path / "sino.npy"), "n_views": 16})
    np.save(tmp_path / "mask.npy", np.ones((32, 32), np.float32))
    with pytest.raises(ShapeError, match="mask_file"):
        build_problem({"task": "inpaint", "index": [0], "mask": "file", "mask_file": str(tmp_path / "mask.npy")})
    with pytest.raises(ShapeError, match="divisible"):
        build_problem({"task": "sr", "index": [0], "factor": 3})
    np.save(tmp_path / "k.npy", np.ones((3, 3)))
    with pytest.warns(UserWarning, match="normalised"):
        p = build_problem({"task": "deblur", "index": [0], "kernel": "file", "kernel_file": str(tmp_path / "k.npy")})
    assert abs(float(p.operator.kernel.sum()) - 1) < 1e-6
    # through solve(): a CT operator at another size than the prior, and the CLI prints one line
    op = ParallelBeamCT(32, sparse_view_angles(8))
    with pytest.raises(ShapeError, match="64, 64"):
        inv.solve(op(torch.rand(1, 1, 32, 32)), op, prior="ct-phantom", steps=1)
    assert main(["reconstruct", str(CFG / "sr_dds.yaml"), "problem.factor=3", f"output.dir={tmp_path / 'o'}"]) == 1
    assert not (tmp_path / "o").exists()


def test_imaging_tasks_from_user_image_file(tmp_path):
    from skimage.io import imsave

    img = (np.random.default_rng(0).uniform(size=(80, 100, 3)) * 255).astype(np.uint8)
    imsave(tmp_path / "photo.png", img)
    with pytest.raises(ShapeError, match="80x100"):
        build_problem({"task": "sr", "source": "image", "path": str(tmp_path / "photo.png")})
    p = build_problem({"task": "deblur", "source": "image", "path": str(tmp_path / "photo.png"), "resize": True,
                       "kernel": "motion", "noise_sigma": 0.0})
    assert p.x_true.shape == (1, 3, 64, 64) and torch.allclose(p.y, p.operator(p.x_true))
    box = build_problem({"task": "inpaint", "index": [0, 1], "mask": "box", "box_size": 20, "mask_seed": 3})
    assert box.meta["missing_fraction"] == pytest.approx(400 / 4096)


def test_tv_z_operators_are_exact_adjoints_and_admm_step_is_consistent():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 1, 8, 8, generator=g), torch.randn(5, 1, 8, 8, generator=g)
    assert torch.allclose((dz(a) * b).sum(), (a * dz_adjoint(b)).sum(), atol=1e-4)
    assert dz(torch.ones(4, 1, 2, 2)).abs().max() == 0
    # one ADMM step, CG run to convergence: u minimises ||Au - y||²/(2L) + ρ/2 ||D_z u - d + w||² + ||u - z0||²/(2γ)
    op = ParallelBeamCT(16, sparse_view_angles(6)).double()
    x = torch.rand(4, 1, 16, 16, generator=g, dtype=torch.float64)
    y = op(x)
    z0, d, w = (torch.randn(4, 1, 16, 16, generator=g, dtype=torch.float64) * 0.1 for _ in range(3))
    L, rho, lam, gam = 150.0, 0.5, 0.01, 2.0
    u, d1, w1, _ = tv_z_consistency(op, op.adjoint(y), z0, d, w, opnorm_sq=L, rho=rho, lam=lam, gamma=gam,
                                    cg_iters=300)
    grad = op.adjoint(op(u) - y) / L + rho * dz_adjoint(dz(u) - d + w) + (u - z0) / gam
    assert grad.abs().max() < 1e-8
    thr = lam / rho
    assert torch.allclose(d1, torch.sign(dz(u) + w) * (dz(u) + w).abs().sub(thr).clamp_min(0))
    assert torch.allclose(w1, w + dz(u) - d1)


def test_dds3d_without_tv_equals_2d_dds(ct_prior):
    op = ParallelBeamCT(64, sparse_view_angles(8))
    y = op(phantom_volume(3, 64, seed=1))
    kw = dict(prior=ct_prior, steps=3, seed=[5, 6, 7])
    fixed = dict(cg_iters=5, cg_tol=None, cg_precision="single")  # dds-3d's fixed-iteration float32 CG
    a = inv.solve(y, op, sampler="dds-3d", rho=0.0, normalize=False, **kw)
    b = inv.solve(y, op, sampler="dds", dc="normal", **fixed, **kw)
    assert torch.allclose(a.x, b.x, atol=1e-5) and a.nfe == b.nfe == 3
    c = inv.solve(y, op, sampler="dds-3d", rho=0.0, gamma=0.01, normalize=False, **kw)
    d = inv.solve(y, op, sampler="dds", dc="prox", gamma=0.01, **fixed, **kw)
    assert torch.allclose(c.x, d.x, atol=1e-4)


def test_dds3d_tv_z_reduces_slice_flicker(ct_prior):
    vol = phantom_volume(6, 64, seed=1)
    op = ParallelBeamCT(64, sparse_view_angles(6))
    y = op(vol)
    kw = dict(prior=ct_prior, sampler="dds-3d", steps=4, seed=0, chunk=4)
    off = inv.solve(y, op, rho=0.0, **kw)
    on = inv.solve(y, op, **kw)
    assert on.nfe == 4 and on.info["opnorm_sq"] > 100
    excess_off, excess_on = z_flicker(off.x) - z_flicker(vol), z_flicker(on.x) - z_flicker(vol)
    assert excess_on < 0.8 * excess_off, (excess_on, excess_off)  # measured: 0.011 vs 0.020
    # TV_z must not cost accuracy. It does not make the z-differences more accurate either (it also shrinks the
    # true ones; measured RMSE 0.0581 vs 0.0572 here), so that is bounded, not claimed. ρ = 10, λ = 0.04 taken
    # literally on the normalised data term fails both (-14 dB, z-difference RMSE x1.7).
    psnr_on, psnr_off = np.mean(psnr(on.x, vol, 1.0)), np.mean(psnr(off.x, vol, 1.0))
    assert psnr_on > psnr_off - 0.5, (psnr_on, psnr_off)  # measured: 26.94 vs 27.16 dB
    assert z_difference_rmse(on.x, vol) < 1.1 * z_difference_rmse(off.x, vol)


def test_wiener_closed_form_solves_its_normal_equations_and_auto_reg():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=g, dtype=torch.float64)
    op = Blur(gaussian_kernel(7, 1.5)).double()
    y = op(x) + 0.01 * torch.randn(x.shape, generator=g, dtype=torch.float64)
    r = wiener(None, op, y, reg=0.05)  # direct call: solve() computes in float32
    xh = r.x

    def grad_p(v):  # periodic forward differences: the closed form's regulariser
        return torch.stack([v.roll(-1, -2) - v, v.roll(-1, -1) - v])

    def grad_pt(q):
        return (q[0].roll(1, -2) - q[0]) + (q[1].roll(1, -1) - q[1])

    res = op.adjoint(op(xh) - y) + 0.05 * grad_pt(grad_p(xh))
    assert res.abs().max() < 1e-8 and r.info["closed_form"]
    assert noise_sigma_mad(0.02 * torch.randn(4, 3, 64, 64, generator=g)).sub(0.02).abs().max() < 0.002
    auto = inv.solve(y.float(), op.float(), sampler="wiener")
    assert auto.info["reg"][0] == pytest.approx(100 * float(noise_sigma_mad(y.float())[0]) ** 2, rel=1e-4)
    # no closed form (reflect padding): CG on the same objective with Neumann differences
    opr = Blur(gaussian_kernel(7, 1.5), padding="reflect").double()
    cg = wiener(None, opr, y, reg=0.05, tol=1e-12, iterations=500)
    res = opr.adjoint(opr(cg.x) - y) + 0.05 * grad2d_adjoint(grad2d(cg.x))
    assert not cg.info["closed_form"] and res.abs().max() < 1e-8


def test_pinv_sampler_matches_operator():
    p = build_problem({"task": "sr", "index": [0], "mode": "avgpool"})
    r = inv.solve(p.y, p.operator, sampler="pinv")
    assert torch.allclose(r.x, p.operator.pinv(p.y)) and torch.allclose(p.operator(r.x), p.y, atol=1e-5)


# ---------------------------------------------------------------------------------------------- quality gates
@pytest.mark.slow
@pytest.mark.parametrize("n_views", [16, 32])
def test_dds_beats_fbp_by_5db_on_heldout_ct_slices(ct_prior, n_views):
    p = build_problem({"task": "ct", "n_views": n_views})
    fbp = inv.solve(p.y, p.operator, sampler="fbp")
    dds = inv.solve(p.y, p.operator, prior=ct_prior, sampler="dds", steps=50, seed=0, dc="normal", cg_iters=50)
    gain = np.mean(psnr(dds.x, p.x_true, 1.0)) - np.mean(psnr(fbp.x, p.x_true, 1.0))
    assert gain > 5.0, gain


@pytest.mark.slow
def test_dds_beats_fbp_and_cg_on_limited_angle_heldout_ct(ct_prior):
    p = build_problem({"task": "ct", "geometry": "limited_angle", "arc_degrees": 120.0, "step_degrees": 1.0})
    dds = inv.solve(p.y, p.operator, prior=ct_prior, sampler="dds", steps=50, seed=0, dc="normal", cg_iters=200)
    for base, kw in (("fbp", {}), ("cg", {"reg": 0.0, "iterations": 1000})):
        b = inv.solve(p.y, p.operator, sampler=base, **kw)
        assert np.mean(psnr(dds.x, p.x_true, 1.0)) > np.mean(psnr(b.x, p.x_true, 1.0)), base


# task -> (classical baselines with their knobs, DDS knobs): exactly the benchmark's rows for the 12 held-out crops
# (configs/bench/imaging.yaml, knobs chosen on validation crops of the training photos). One DDS sample
# does not beat the baselines there; the posterior mean of K samples does (deblur, SR: K = 8; inpainting: K = 16,
# warm-started from the harmonic fill). Each case runs 400 or 240 network calls per image: minutes to half an hour.
IMAGING = {"deblur": ([("wiener", {})], dict(gamma=10.0, num_samples=8)),
           "sr": ([("pinv", {}), ("wiener", {"reg": 1e-3})], dict(gamma=1000.0, num_samples=8)),
           "inpaint": ([("wiener", {"reg": 1e-3})],
                       dict(gamma=1000.0, eta=0.5, num_samples=16, init="wiener", init_knobs={"reg": 1e-3},
                            t_start=0.3))}


@pytest.mark.slow
@pytest.mark.parametrize("task", sorted(IMAGING))
def test_dds_beats_classical_baseline_on_heldout_photos(task):
    p = build_problem({"task": task, "index": list(range(12))})
    bases, dds_kw = IMAGING[task]
    d = inv.solve(p.y, p.operator, prior="natural", sampler="dds", steps=50, seed=0, **dds_kw)
    for base, kw in bases:
        b = inv.solve(p.y, p.operator, sampler=base, **kw)
        assert np.mean(psnr(d.x, p.x_true, 1.0)) > np.mean(psnr(b.x, p.x_true, 1.0)), (task, base)
        assert np.mean(ssim(d.x, p.x_true, 1.0)) > np.mean(ssim(b.x, p.x_true, 1.0)), (task, base)
