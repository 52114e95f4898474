import numpy as np
import pytest
import torch

import invsolve as inv
from invsolve.errors import DTypeError, ShapeError, UnknownNameError
from invsolve.operators import Inpainting, MultiCoilMRI, SuperResolution, coils, masks, random_mask


@pytest.fixture(scope="module")
def problem(brain_test_images):
    x, _ = brain_test_images
    op = MultiCoilMRI(coils.birdcage(4, (64, 64)), masks.uniform1d((64, 64), 4, seed=0))
    return op, op(x), x


def test_shape_mismatch_between_y_and_operator(problem):
    op, y, _ = problem
    with pytest.raises(ShapeError, match=r"y has shape .* expected \(B, 4, 64, 64\)"):
        inv.solve(y[:, :3], op, sampler="cg")


def test_nan_or_inf_in_y(problem):
    op, y, _ = problem
    bad = y.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        inv.solve(bad, op, sampler="adjoint")


def test_real_y_for_complex_operator(problem):
    op, y, _ = problem
    with pytest.raises(DTypeError, match="complex"):
        inv.solve(y.real, op, sampler="cg")


def test_unknown_names(problem):
    op, y, _ = problem
    with pytest.raises(UnknownNameError, match="available: .*dds"):
        inv.solve(y, op, sampler="ddss")
    with pytest.raises(UnknownNameError, match="embedded priors"):
        inv.solve(y, op, prior="brain", sampler="dds")
    with pytest.raises(UnknownNameError, match="valid options: .*cg_iters"):
        inv.solve(y, op, sampler="dds", cg_iter=3)


def test_prior_operator_mismatch_is_explained():
    op = SuperResolution(2)
    with pytest.raises(DTypeError, match="complex"):
        inv.solve(torch.zeros(1, 3, 32, 32), op, prior="mri-brain", steps=2)
    small = Inpainting(random_mask((32, 32), 0.5, seed=0))
    with pytest.raises(ShapeError, match=r"models images of shape \(3, 64, 64\) but the operator expects"):
        inv.solve(torch.zeros(1, 3, 32, 32), small, prior="natural", steps=2)


def test_numpy_unbatched_input_and_classical_samplers(problem):
    op, y, x = problem
    r = inv.solve(y[0].numpy(), op, sampler="cg", iterations=50)
    assert r.x.shape == (1, 1, 64, 64) and r.x.dtype == torch.complex64
    zf = inv.solve(y, op, sampler="adjoint")
    assert torch.allclose(zf.x, op.adjoint(y))
    assert r.nfe == 0 and r.seconds >= 0


def test_data_scale_auto_makes_dds_scale_equivariant(mri_prior, problem):
    op, y, x = problem
    a = inv.solve(y[:1], op, prior=mri_prior, steps=4, seed=0)
    b = inv.solve(7.0 * y[:1], op, prior=mri_prior, steps=4, seed=0)
    # up to rounding: DDS's CG solves an ill-conditioned system to a tight tolerance, which carries float32
    # rounding of the data scale into ~4e-4 of the peak (the same iterations are taken)
    assert float((b.x - 7.0 * a.x).abs().max()) <= 1e-3 * float((7.0 * a.x).abs().max())
    assert abs(b.config["data_scale"][0] / a.config["data_scale"][0] - 7.0) < 1e-3


def test_result_records_cost_and_config(mri_prior, problem):
    op, y, _ = problem
    r = inv.solve(y[:1], op, prior=mri_prior, steps=3, seed=11, eta=0.5)
    assert r.nfe == 3 and r.config["knobs"]["eta"] == 0.5 and r.config["seeds"] == [11]
    assert r.config["prior"] == "mri-brain" and r.config["sampler"] == "dds"
    assert r.peak_memory is None or r.peak_memory >= 0
    assert r.info["cg_residual"].shape == (3, 1)


def test_inputs_are_not_modified(problem):
    op, y, _ = problem
    y0, m0 = y.clone(), op.mask.clone()
    inv.solve(y, op, sampler="cg")
    assert torch.equal(y, y0) and torch.equal(op.mask, m0)


def test_bad_num_samples_and_steps(problem):
    op, y, _ = problem
    with pytest.raises(ValueError, match="num_samples"):
        inv.solve(y, op, num_samples=0)
    with pytest.raises(ValueError, match="steps"):
        inv.solve(y, op, steps=-3)
    with pytest.raises(ShapeError, match="seed"):
        inv.solve(y, op, seed=[1, 2, 3], sampler="dds", steps=1)
    assert np.isfinite(1.0)
