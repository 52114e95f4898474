"""Blur: exact adjoints for every padding, agreement with scipy.ndimage.convolve, kernels, Wiener."""
import warnings

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
from skimage.data import camera
from skimage.transform import resize

from invsolve.errors import ShapeError
from invsolve.operators.base import adjoint_mismatch
from invsolve.operators.blur import PADDINGS, Blur, gaussian_kernel, motion_kernel, uniform_kernel

SCIPY_MODE = {"circular": "wrap", "reflect": "mirror", "replicate": "nearest", "zeros": "constant"}


def _kernel(shape, seed=0):
    k = np.random.default_rng(seed).random(shape)
    return k / k.sum()


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("kshape, xshape", [((5, 5), (1, 1, 16, 16)), ((4, 6), (3, 2, 13, 10)),
                                            ((9, 3), (2, 3, 11, 17)), ((1, 1), (2, 1, 5, 4))])
def test_adjoint_is_exact(padding, kshape, xshape):
    op = Blur(_kernel(kshape), padding=padding).double()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(xshape, generator=g, dtype=torch.float64)
    y = torch.randn(op(x).shape, generator=g, dtype=torch.float64)
    assert adjoint_mismatch(op, x, y) < 1e-5


@pytest.mark.parametrize("padding", ["reflect", "replicate", "circular"])
def test_adjoint_exact_when_kernel_exceeds_image(padding):
    op = Blur(_kernel((9, 11)), padding=padding).double()  # pads wider than the image: repeated reflections
    x = torch.randn(2, 1, 4, 5, dtype=torch.float64)
    assert adjoint_mismatch(op, x, torch.randn(2, 1, 4, 5, dtype=torch.float64)) < 1e-5


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("kshape", [(5, 5), (4, 6), (3, 8)])
def test_matches_scipy_convolve(padding, kshape):
    op = Blur(_kernel(kshape, 1), padding=padding).double()
    x = torch.randn(1, 2, 15, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y = op(x)
    k = op.kernel.double().numpy()
    for c in range(2):
        ref = ndi.convolve(x[0, c].numpy(), k, mode=SCIPY_MODE.get(padding, "constant"))
        if padding == "valid":
            kh, kw = k.shape
            t, l = kh - 1 - kh // 2, kw - 1 - kw // 2
            ref = ref[t:t + 15 - kh + 1, l:l + 12 - kw + 1]
        np.testing.assert_allclose(y[0, c].numpy(), ref, atol=1e-12)


def test_linearity_batching_dtype_and_channels():
    op = Blur(gaussian_kernel(7, 1.5), padding="reflect")
    g = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(2, 3, 3, 20, 24, generator=g)
    assert torch.allclose(op(2 * x1 - x2), 2 * op(x1) - op(x2), atol=1e-5)
    assert torch.allclose(op(x1), torch.cat([op(x1[i:i + 1]) for i in range(3)]), atol=1e-6)
    assert torch.allclose(op(x1)[:, 1], op(x1[:, 1:2])[:, 0], atol=1e-6)  # one kernel, channels independent
    assert op(x1).dtype == torch.float32 and op.adjoint(x1).dtype == torch.float32
    assert op(x1.double()).dtype == torch.float64 and op.adjoint(x1.double()).dtype == torch.float64
    assert Blur(uniform_kernel(3), padding="valid")(x1).shape == (3, 3, 18, 22)


def test_kernel_normalisation_warns():
    with pytest.warns(UserWarning, match="normalised"):
        op = Blur(np.ones((3, 3)))
    assert torch.isclose(op.kernel.sum(), torch.tensor(1.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Blur(np.full((2, 2), 0.25 + 1e-4))  # within tolerance: silently accepted
    with pytest.raises(ValueError, match="sums to 0"):
        Blur(np.array([[1.0, -1.0]]))


def test_kernel_generators():
    delta = np.zeros((61, 61))
    delta[30, 30] = 1
    g = gaussian_kernel(61, 3.0)
    ref = ndi.gaussian_filter(delta, 3.0)
    assert g.shape == (61, 61) and g.dtype == torch.float32
    assert np.abs(g.numpy() - ref).max() < 1e-4 * ref.max()
    assert torch.isclose(g.sum(), torch.tensor(1.0)) and torch.allclose(g, g.T) and torch.allclose(g, g.flip(0))
    assert torch.allclose(uniform_kernel(4), torch.full((4, 4), 1 / 16))
    m1, m2, m3 = motion_kernel(31, 0.5, seed=3), motion_kernel(31, 0.5, seed=3), motion_kernel(31, 0.5, seed=4)
    assert m1.shape == (31, 31) and torch.equal(m1, m2) and not torch.equal(m1, m3)
    assert (m1 >= 0).all() and torch.isclose(m1.sum(), torch.tensor(1.0))
    assert 10 < int((m1 > 1e-3).sum()) < 31 * 31 // 2  # a thin path, not a blob or a point
    with pytest.raises(ValueError, match="intensity"):
        motion_kernel(31, 1.5)
    with pytest.raises(ValueError, match="sigma"):
        gaussian_kernel(5, 0)


def test_kernel_is_a_buffer():
    k = motion_kernel(15, 0.5, seed=1)
    op = Blur(k, padding="reflect")
    assert torch.equal(op.kernel, k) and "kernel" in op.state_dict()
    assert op.to(torch.float64).kernel.dtype == torch.float64


def _camera(n=64):
    return torch.tensor(resize(camera() / 255.0, (n, n), anti_aliasing=True), dtype=torch.float64)[None, None]


def test_wiener_deblurs_and_pinv():
    op = Blur(gaussian_kernel(9, 1.5)).double()
    x = _camera()
    y = op(x) + 1e-3 * torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    rec = op.wiener(y, reg=1e-3)
    assert torch.linalg.norm(rec - x) < 0.7 * torch.linalg.norm(y - x)
    assert torch.allclose(op.pinv(y, reg=1e-3), rec)
    y0 = op(x)
    assert torch.allclose(op(op.pinv(y0)), y0, atol=1e-3)
    assert torch.allclose(op.normal(x), op.adjoint(op(x)), atol=1e-12)
    with pytest.raises(ValueError, match="circular"):
        Blur(gaussian_kernel(9, 1.5), padding="reflect").wiener(y.float(), 1e-3)


def test_pinv_by_cg_for_reflect_padding_reduces_residual():
    op = Blur(gaussian_kernel(3, 0.7), padding="reflect").double()
    x = _camera(32)
    y = op(x)
    rec = op.pinv(y, iterations=20)
    assert torch.linalg.norm(op(rec) - y) < 1e-3 * torch.linalg.norm(y)


def test_validation_errors():
    with pytest.raises(ValueError, match="padding"):
        Blur(uniform_kernel(3), padding="symmetric")
    with pytest.raises(ShapeError, match="kernel"):
        Blur(torch.ones(2, 3, 3) / 9)
    with pytest.raises(ValueError, match="NaN"):
        Blur(np.array([[np.nan, 1.0]]))
    op = Blur(uniform_kernel(3), image_size=(16, 12))
    assert op.input_shape == (None, 16, 12)
    with pytest.raises(ShapeError, match=r"x .*expected \(B, B, 16, 12\)|x has shape"):
        op(torch.zeros(1, 1, 16, 16))
    with pytest.raises(ShapeError, match="valid"):
        Blur(uniform_kernel(5), padding="valid")(torch.zeros(1, 1, 4, 8))
    with pytest.raises(ShapeError, match="x"):
        op(torch.zeros(16, 12))
    with pytest.raises(TypeError, match="x"):
        op(torch.zeros(1, 1, 16, 12, dtype=torch.complex64))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    op = Blur(motion_kernel(21, 0.5, seed=0), padding="reflect")
    x = torch.rand(2, 3, 40, 40)
    y, back = op(x), op.adjoint(x)
    op.to("cuda")
    assert torch.allclose(op(x.cuda()).cpu(), y, atol=1e-5)
    assert torch.allclose(op.adjoint(x.cuda()).cpu(), back, atol=1e-5)
