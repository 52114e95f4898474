"""The noise level sigma_y: estimators against the noise actually added, its units through solve(), and the rule
that picks DDS's data consistency from it (checked against the exact Gaussian posterior)."""
import math

import pytest
import torch

import invsolve as inv
from invsolve import noise_level
from invsolve.errors import InvalidValueError, ShapeError
from invsolve.operators import Blur, Inpainting, MultiCoilMRI, coils, masks
from invsolve.operators.blur import gaussian_kernel
from invsolve.operators.ct import ParallelBeamCT, sparse_view_angles
from invsolve.operators.inpainting import random_mask
from invsolve.operators.noise import GaussianNoise
from invsolve.priors.gaussian import GaussianPrior
from invsolve.samplers.consistency import cg_solve as data_consistency
from invsolve.samplers.consistency import noise_aware_weight as choose_data_consistency
from invsolve.samplers.consistency import weighted_cg_solve as solve_data_consistency
from invsolve.samplers.wiener import noise_sigma_mad


def _mri(x, acc, sigma, seed=3):
    op = MultiCoilMRI(coils.birdcage(8, (64, 64)), masks.uniform1d((64, 64), acc, 0.08, seed=0))
    y = op(x)
    if sigma:
        y = GaussianNoise(sigma, mask=op.mask)(y, torch.Generator().manual_seed(seed))
    return op, y


@pytest.mark.parametrize("acc", [4, 8])
def test_kspace_estimate_tracks_the_added_noise(brain_test_images, acc):
    x, _ = brain_test_images
    for sigma in (0.02, 0.05):
        op, y = _mri(x, acc, sigma)
        est, _ = noise_level.estimate_sigma_y(op, y)
        assert torch.allclose(est, torch.full_like(est, sigma), rtol=0.2), (acc, sigma, est)
    op, y = _mri(x, acc, 0.0)
    est, method = noise_level.estimate_sigma_y(op, y)
    # noiseless: at 4x the least-squares residual is below the detection floor (noiseless); at 8x what remains is
    # signal that looks like noise
    if acc == 4:
        assert bool((est == 0).all()) and "least-squares" in method and "noiseless" in method, (est, method)
        op, y = _mri(x, acc, 0.005)
        est, _ = noise_level.estimate_sigma_y(op, y)
        assert torch.allclose(est, torch.full_like(est, 0.005), rtol=0.25), est
    else:
        assert bool((est < 0.015).all()), (acc, est, method)


def test_image_estimate_is_donohos_mad_and_ignores_missing_pixels():
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    smooth = (0.3 + 0.4 * torch.sin(3 * xx) * torch.cos(2 * yy))[None, None].expand(2, 3, 64, 64)
    y = smooth + 0.05 * torch.randn(smooth.shape, generator=g)
    assert torch.allclose(noise_level.image_sigma(y).float(), noise_sigma_mad(y))
    op = Blur(gaussian_kernel(9, 1.5), image_size=64)
    est, _ = noise_level.estimate_sigma_y(op, y)
    assert torch.allclose(est, torch.full_like(est, 0.05), rtol=0.1)
    mask = random_mask((64, 64), 0.3, seed=1)
    ip = Inpainting(mask)
    y_in = ip(y)  # missing pixels are exact zeros: counting their blocks would bias the estimate
    est, _ = noise_level.estimate_sigma_y(ip, y_in)
    assert torch.allclose(est, torch.full_like(est, 0.05), rtol=0.15)
    assert float(noise_level.image_sigma(y_in).max()) > 0.06  # what the unmasked estimator would say


def test_measured_entries_and_noise_floor(brain_test_images):
    x, _ = brain_test_images
    op, y = _mri(x, 4, 0.0)
    m = int(op.mask.sum()) * 8
    assert noise_level.measured_entries(op, y).tolist() == [m, m]
    assert torch.allclose(noise_level.noise_floor(op, y, 0.1).cpu(), torch.full((2,), 0.1 * math.sqrt(m),
                                                                                dtype=torch.float64))


def test_bad_sigma_y_is_a_clear_error(brain_test_images):
    x, _ = brain_test_images
    op, y = _mri(x, 4, 0.0)
    for bad in (-0.1, float("nan"), "high", [0.1, -1.0]):
        with pytest.raises(InvalidValueError, match="sigma_y"):
            inv.solve(y, op, sampler="cg", sigma_y=bad)
    with pytest.raises(ShapeError, match="sigma_y has 3 values but y has a batch of 2"):
        inv.solve(y, op, sampler="cg", sigma_y=[0.1, 0.1, 0.1])


def test_sigma_y_is_converted_to_the_samplers_units(brain_test_images, mri_prior):
    """solve() rescales y by the data scale; sigma_y must follow: solve(c y, sigma_y=c s, data_scale=c d) is c times
    solve(y, sigma_y=s, data_scale=d), and the record keeps y's units."""
    x, _ = brain_test_images
    op, y = _mri(x[:1], 4, 0.05)
    kw = dict(prior=mri_prior, sampler="ddnm", steps=3, seed=0)
    a = inv.solve(y, op, sigma_y=0.05, data_scale=0.5, **kw)
    b = inv.solve(4 * y, op, sigma_y=0.2, data_scale=2.0, **kw)
    assert torch.allclose(4 * a.x, b.x, atol=1e-4 * float(b.x.abs().max()))
    rec = b.config["sigma_y"]
    assert rec["source"] == "argument" and rec["value"] == [0.2] and rec["sampler_units"] == [0.1]
    assert b.config["knobs"]["sigma_y"] == 0.1


def test_items_with_different_noise_run_as_if_alone(brain_test_images, mri_prior):
    x, _ = brain_test_images
    op, y = _mri(x, 4, 0.03)
    kw = dict(prior=mri_prior, sampler="ddnm", steps=3, data_scale=None)
    both = inv.solve(y, op, seed=[1, 2], sigma_y=[0.03, 0.06], **kw)
    first = inv.solve(y[:1], op, seed=[1], sigma_y=0.03, **kw)
    second = inv.solve(y[1:], op, seed=[2], sigma_y=0.06, **kw)
    assert torch.allclose(both.x[:1], first.x, atol=1e-5) and torch.allclose(both.x[1:], second.x, atol=1e-5)
    assert both.config["knobs"]["sigma_y"] == [0.03, 0.06]


def test_sinogram_estimate_on_validation_phantoms():
    from invsolve.data.ct import sample_phantoms

    op = ParallelBeamCT(64, sparse_view_angles(16))
    y = op(sample_phantoms(4, 64, torch.Generator().manual_seed(1234)))
    est, method = noise_level.estimate_sigma_y(op, y)
    assert bool((est == 0).all()) and "noiseless" in method, est  # below the detection floor
    noisy = y + 0.2 * torch.randn(y.shape, generator=torch.Generator().manual_seed(0))
    est, _ = noise_level.estimate_sigma_y(op, noisy)
    assert torch.allclose(est, torch.full_like(est, 0.2), rtol=0.25), est


def test_unknown_noise_warns_once_and_names_the_default():
    from invsolve.operators import SuperResolution

    noise_level._WARNED.discard("sr/ddnm")
    op = SuperResolution(4, "bicubic", image_size=64)
    y = op(torch.rand(1, 3, 64, 64))
    with pytest.warns(UserWarning, match=r"no estimator for sr data\): ddnm uses its default sigma_y=0.0"):
        res = inv.solve(y, op, prior="natural", sampler="ddnm", steps=2)
    assert res.config["sigma_y"]["source"] == "unknown" and res.config["knobs"]["sigma_y"] == 0.0


# ----------------------------------------------------------------------------------------- the DDS rule
def test_noise_aware_weight_follows_the_rule(mri_prior):
    y_c = torch.zeros(1, 8, 4, 4, dtype=torch.complex64)
    t = 500
    r2 = 1 - float(mri_prior.alpha_bar(t))  # unit 1: the mri-brain prior's data range is |x| <= 1
    assert choose_data_consistency(mri_prior, t, y_c, sigma_y=0.02) == pytest.approx(0.02**2 / 2 / r2)
    assert choose_data_consistency(mri_prior, t, y_c, sigma_y=0.0) == 0.0
    assert choose_data_consistency(mri_prior, t, y_c, sigma_y=0.02, dc="normal") == 0.0
    assert choose_data_consistency(mri_prior, t, y_c, sigma_y=0.02, gamma=10.0) == pytest.approx(0.1)
    per = choose_data_consistency(mri_prior, t, y_c, sigma_y=torch.tensor([0.0, 0.02], dtype=torch.float64))
    assert per.tolist() == pytest.approx([0.0, 0.02**2 / 2 / r2])


def test_noise_aware_step_is_the_exact_gaussian_posterior_mean():
    """For a Gaussian prior, x0 | x_t ~ N(E[x0|x_t], (1 - abar_t) I) exactly, so the DDS step with the derived weight
    must equal E[x0 | x_t, y], here computed independently in the Kalman form
    m + C Aᵀ (A C Aᵀ + s² I)⁻¹ (y - A m)."""
    torch.manual_seed(0)
    prior = GaussianPrior(torch.zeros(1, 4, 4), variance=1.0)  # unit variance per component, data range [-1, 1]
    mask = torch.zeros(4, 4)
    mask[::2] = 1
    mask[1, 1] = 1
    op = Inpainting(mask)
    A = torch.diag(mask.flatten().double())[mask.flatten() > 0]
    x0 = torch.randn(1, 1, 4, 4, dtype=torch.float64)
    s = 0.3
    y = op(x0.float()) + s * torch.randn(1, 1, 4, 4) * mask
    for t in (100, 500, 900):
        ab = float(prior.alpha_bar(t))
        xt = (ab**0.5 * x0 + (1 - ab) ** 0.5 * torch.randn_like(x0)).float()
        m, _ = prior.tweedie(xt, t)
        lam = choose_data_consistency(prior, t, y, sigma_y=s)
        u = solve_data_consistency(op, op.adjoint(y), m, lam, cg_iters=50, cg_tol=None).x
        C = (1 - ab) * torch.eye(16, dtype=torch.float64)
        md = m.double().flatten()
        yv = y.double().flatten()[mask.flatten() > 0]
        want = md + C @ A.T @ torch.linalg.solve(A @ C @ A.T + s**2 * torch.eye(A.shape[0], dtype=torch.float64),
                                                 yv - A @ md)
        assert torch.allclose(u.double().flatten(), want, atol=1e-4), t


def test_proximal_weight_reproduces_the_released_form(brain_test_images):
    """(AᴴA + I/γ) u = Aᴴy + z0/γ is the released (I + γAᴴA) u = z0 + γAᴴy divided by γ: CG takes the same steps."""
    x, _ = brain_test_images
    op, y = _mri(x, 4, 0.0)
    z0 = op.adjoint(y) * 0.7
    old = data_consistency(op, y, z0, mode="prox", gamma=10.0, cg_iters=5).x
    new = solve_data_consistency(op, op.adjoint(y), z0, 0.1, cg_iters=5, cg_tol=None).x
    assert torch.allclose(old, new, atol=1e-5)
    normal = data_consistency(op, y, z0, mode="normal", cg_iters=5).x
    assert torch.allclose(normal, solve_data_consistency(op, op.adjoint(y), z0, 0.0, cg_iters=5, cg_tol=None).x,
                          atol=1e-6)
