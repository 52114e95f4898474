"""Parallel-beam CT: exact adjoint, geometry conventions, agreement with skimage, FBP, validation."""
import math

import numpy as np
import pytest
import torch
from skimage.data import shepp_logan_phantom
from skimage.transform import iradon, radon, resize

from invsolve.errors import DTypeError, ShapeError
from invsolve.operators.base import adjoint_mismatch
from invsolve.operators.ct import (
    FILTERS,
    ParallelBeamCT,
    fbp,
    limited_angle_angles,
    sparse_view_angles,
)

N = 64


@pytest.fixture(scope="module")
def phantom():
    return resize(shepp_logan_phantom(), (N, N), anti_aliasing=True)


@pytest.fixture(scope="module")
def full_op():
    return ParallelBeamCT(N, sparse_view_angles(180))


def _corr(a, b):
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


@pytest.mark.parametrize(
    "size, angles, n_det, batch",
    [
        (16, sparse_view_angles(7), None, 1),
        (17, limited_angle_angles(40, 3, start=100), 30, 3),
        (24, torch.rand(11, generator=torch.Generator().manual_seed(0)) * 2 * math.pi, None, 2),
        (32, torch.tensor([0.0, math.pi / 4, math.pi / 2, 3 * math.pi / 4]), 50, 4),
    ],
)
def test_adjoint_is_exact(size, angles, n_det, batch):
    op = ParallelBeamCT(size, angles, n_detectors=n_det).double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn((batch,) + op.input_shape, generator=g, dtype=torch.float64)
    y = torch.randn((batch,) + op.output_shape, generator=g, dtype=torch.float64)
    assert adjoint_mismatch(op, x, y) < 1e-5


def test_linearity_batching_and_dtypes():
    op = ParallelBeamCT(20, sparse_view_angles(9))
    g = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(2, 3, 1, 20, 20, generator=g)
    y = op(2.0 * x1 - 3.0 * x2)
    assert torch.allclose(y, 2.0 * op(x1) - 3.0 * op(x2), atol=1e-4)
    alone = torch.cat([op(x1[i:i + 1]) for i in range(3)])
    assert torch.allclose(op(x1), alone, atol=1e-6)
    assert op(x1).dtype == torch.float32 and op.adjoint(y).dtype == torch.float32
    assert op(x1.double()).dtype == torch.float64 and op.adjoint(y.double()).dtype == torch.float64
    assert op.adjoint(y).shape == x1.shape and y.shape == (3, 1, 9, 29)


def test_geometry_convention_axis_views():
    """θ = 0 sums down the columns (detector grows with column); θ = π/2 sums along rows (detector grows upward)."""
    n = 9
    op = ParallelBeamCT(n, torch.tensor([0.0, math.pi / 2], dtype=torch.float64)).double()
    x = torch.rand(1, 1, n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = op(x)[0, 0]
    c = op.n_detectors // 2
    cols = torch.arange(n)
    assert torch.allclose(y[0, c + cols - n // 2], x[0, 0].sum(0))
    assert torch.allclose(y[1, c + n // 2 - cols], x[0, 0].sum(1))
    assert y[:, : c - n // 2].abs().max() == 0 and y[:, c + n // 2 + 1:].abs().max() == 0


def test_matches_skimage_radon(phantom, full_op):
    y = full_op(torch.tensor(phantom, dtype=torch.float32)[None, None])[0, 0].numpy()
    ref = radon(phantom, theta=np.rad2deg(full_op.angles.numpy()), circle=False).T
    assert y.shape == ref.shape
    assert _corr(y, ref) > 0.999
    assert np.linalg.norm(y - ref) / np.linalg.norm(ref) < 0.02  # same units (line integrals in pixels)


def test_matches_skimage_for_angles_beyond_pi_and_circle_crop(phantom):
    angles = torch.rand(13, generator=torch.Generator().manual_seed(3)) * 2 * math.pi
    op = ParallelBeamCT(N, angles, n_detectors=100)
    r = np.hypot(*np.meshgrid(np.arange(N) - N // 2, np.arange(N) - N // 2))
    img = phantom * (r < N // 2 - 1)  # zero outside the inscribed circle, as skimage's circle=True requires
    y = op(torch.tensor(img, dtype=torch.float32)[None, None])[0, 0].numpy()
    c0 = op.n_detectors // 2 - N // 2
    ref = radon(img, theta=np.rad2deg(angles.numpy()), circle=True).T
    assert _corr(y[:, c0:c0 + N], ref) > 0.999
    assert np.abs(y[:, :c0]).max() < 1e-6 and np.abs(y[:, c0 + N:]).max() < 1e-6


def test_fbp_full_view_recovers_phantom(phantom, full_op):
    x = torch.tensor(phantom, dtype=torch.float32)[None, None]
    y = full_op(x)
    ref = iradon(y[0, 0].numpy().T, theta=np.rad2deg(full_op.angles.numpy()), circle=False, output_size=N)
    errors = {}
    for name in FILTERS:
        rec = full_op.fbp(y, filter=name)
        assert rec.shape == x.shape and rec.dtype == x.dtype
        errors[name] = float(torch.linalg.norm(rec - x) / torch.linalg.norm(x))
        assert abs(float(rec.mean() / x.mean()) - 1) < 0.02  # correctly scaled
    assert errors["ramp"] < 0.2 and max(errors.values()) < 0.35
    rec = fbp(y, full_op.angles, N)
    assert np.linalg.norm(rec[0, 0].numpy() - ref) / np.linalg.norm(ref) < 0.02  # same as skimage's iradon


def test_fbp_weights_for_limited_angle_and_full_circle(phantom):
    n = 32
    x = torch.tensor(resize(phantom, (n, n), anti_aliasing=True), dtype=torch.float32)[None, None]
    half = ParallelBeamCT(n, sparse_view_angles(60))
    full = ParallelBeamCT(n, torch.arange(120, dtype=torch.float64) * (2 * math.pi / 120))
    r_half, r_full = half.fbp(half(x)), full.fbp(full(x))
    assert float(torch.linalg.norm(r_half - r_full) / torch.linalg.norm(r_half)) < 0.05  # no double counting
    la = ParallelBeamCT(n, limited_angle_angles(120, 2))  # a 120° arc: the image mean keeps 120/180 of its DC
    assert abs(float(la.fbp(la(x)).mean() / x.mean()) - 2 / 3) < 0.05


def test_angle_helpers():
    assert torch.allclose(torch.rad2deg(sparse_view_angles(8)), torch.arange(8, dtype=torch.float64) * 22.5)
    la = torch.rad2deg(limited_angle_angles())
    assert la.numel() == 120 and la[0] == 0 and torch.isclose(la[-1], torch.tensor(119.0, dtype=torch.float64))
    assert torch.allclose(torch.rad2deg(limited_angle_angles(30, 10, start=45)),
                          torch.tensor([45.0, 55.0, 65.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="n_views"):
        sparse_view_angles(0)
    with pytest.raises(ValueError, match="360"):
        limited_angle_angles(120, 1, start=300)


@pytest.mark.parametrize("bad", [torch.tensor([-0.1, 0.5]), torch.tensor([0.0, 2 * math.pi]),
                                 torch.tensor([[0.0, 1.0]]), torch.tensor([]), torch.tensor([0.0, float("nan")])])
def test_invalid_angles(bad):
    with pytest.raises(ValueError, match="angles"):
        ParallelBeamCT(8, bad)


def test_validation_errors():
    with pytest.raises(ValueError, match="n_detectors"):
        ParallelBeamCT(16, sparse_view_angles(4), n_detectors=20)
    op = ParallelBeamCT(16, sparse_view_angles(4))
    with pytest.raises(ShapeError, match=r"x .*expected \(B, 1, 16, 16\)"):
        op(torch.zeros(1, 1, 15, 16))
    with pytest.raises(ShapeError, match=r"y .*expected \(B, 1, 4, 23\)"):
        op.adjoint(torch.zeros(1, 1, 4, 24))
    with pytest.raises(DTypeError, match="x"):
        op(torch.zeros(1, 1, 16, 16, dtype=torch.int64))
    with pytest.raises(DTypeError, match="x"):
        op(torch.zeros(1, 1, 16, 16, dtype=torch.complex64))
    with pytest.raises(ValueError, match="filter"):
        op.fbp(torch.zeros(1, 1, 4, 23), filter="parzen")


def test_metadata_and_module_conversion():
    op = ParallelBeamCT(12, sparse_view_angles(5))
    assert op.default_prior == "ct-phantom" and op.is_linear and not op.is_complex
    assert op.input_shape == (1, 12, 12) and op.output_shape == (1, 5, 17)
    assert list(op.state_dict()) == ["angles"]  # the system matrices are derived, not saved
    x = torch.randn(2, 1, 12, 12, dtype=torch.float64)
    ref = op(x)
    op64 = op.to(torch.float64).to("cpu")
    assert op64._A_val.dtype == torch.float64
    assert torch.allclose(op64(x), ref)


def test_autograd_matches_adjoint():
    op = ParallelBeamCT(6, torch.tensor([0.3, 1.9, 4.0])).double()
    x = torch.randn(2, 1, 6, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(op, (x,), fast_mode=True)
    y = torch.randn(2, 1, 3, op.n_detectors, dtype=torch.float64)
    (g,) = torch.autograd.grad((op(x) * y).sum(), x)
    assert torch.allclose(g, op.adjoint(y))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(phantom):
    op = ParallelBeamCT(N, sparse_view_angles(30))
    x = torch.tensor(phantom, dtype=torch.float32)[None, None].repeat(3, 1, 1, 1)
    y = op(x)
    back, rec = op.adjoint(y), op.fbp(y)
    op.to("cuda")  # in place, like every nn.Module
    yg = op(x.cuda())
    assert yg.device.type == "cuda"
    assert torch.allclose(yg.cpu(), y, atol=1e-4)
    assert torch.allclose(op.adjoint(yg).cpu(), back, atol=1e-3)
    assert torch.allclose(op.fbp(yg).cpu(), rec, atol=1e-4)
    opd = ParallelBeamCT(N, sparse_view_angles(30)).to("cuda", torch.float64)
    xd = torch.randn(2, 1, N, N, dtype=torch.float64, device="cuda")
    yd = torch.randn(2, 1, 30, opd.n_detectors, dtype=torch.float64, device="cuda")
    assert adjoint_mismatch(opd, xd, yd) < 1e-5
