"""Inpainting and super-resolution operators, mask generators."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from invsolve.errors import ShapeError
from invsolve.operators.base import adjoint_mismatch
from invsolve.operators.inpainting import Inpainting, box_mask, random_mask
from invsolve.operators.resolution import SuperResolution, bicubic_matrix


def _randn(*shape, seed=0):
    return torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


# -- masks -----------------------------------------------------------------------------------------------------------
def test_random_mask_exact_fraction_and_seeded():
    m = random_mask((3, 20, 30), 0.4, seed=5)
    assert m.shape == (3, 20, 30) and m.dtype == torch.float32
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    assert (m == 0).sum(dim=(1, 2)).tolist() == [240, 240, 240]
    assert not torch.equal(m[0], m[1])  # one draw per slice
    assert torch.equal(m, random_mask((3, 20, 30), 0.4, seed=5))
    assert not torch.equal(m, random_mask((3, 20, 30), 0.4, seed=6))
    with pytest.raises(ValueError, match="fraction_missing"):
        random_mask((4, 4), 1.5)


def test_box_mask_placement():
    m = box_mask((10, 12), 4)
    assert (m == 0).sum() == 16 and (m[3:7, 4:8] == 0).all()
    m = box_mask((10, 12), (2, 3), center=(1, 10))
    assert (m[0:2, 9:12] == 0).all() and (m == 0).sum() == 6
    r = box_mask((5, 16, 16), 6, seed=1)
    assert ((r == 0).sum(dim=(1, 2)) == 36).all() and not torch.equal(r[0], r[1])
    assert torch.equal(r, box_mask((5, 16, 16), 6, seed=1))
    with pytest.raises(ValueError, match="box_size"):
        box_mask((8, 8), 9)
    with pytest.raises(ValueError, match="fit"):
        box_mask((8, 8), 4, center=(0, 0))


# -- inpainting ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mask_shape, x_shape", [((8, 9), (3, 2, 8, 9)), ((3, 8, 9), (3, 1, 8, 9)),
                                                 ((2, 3, 8, 9), (2, 3, 8, 9)), ((1, 3, 8, 9), (4, 3, 8, 9))])
def test_inpainting_properties(mask_shape, x_shape):
    op = Inpainting(random_mask(mask_shape, 0.5, seed=0))
    x, y = _randn(*x_shape), _randn(*x_shape, seed=1)
    assert adjoint_mismatch(op, x, y) < 1e-12
    out = op(x)
    assert out.dtype == torch.float64 and out.shape == x.shape
    assert torch.equal(out, op.mask.double() * x) and torch.equal(op.adjoint(y), op(y))
    assert torch.equal(op.pinv(out), out) and torch.equal(op.normal(x), out)
    assert torch.allclose(op(2 * x - y), 2 * op(x) - op(y))
    if op.batch_size() is None:
        assert torch.equal(op(x.float()), torch.cat([op(x[i:i + 1].float()) for i in range(x.shape[0])]))


def test_inpainting_per_item_masks_and_repeat():
    mask = random_mask((2, 6, 6), 0.3, seed=2)
    op = Inpainting(mask)
    assert op.batch_size() == 2 and op.default_prior == "natural"
    rep = op.repeat_interleave(3)
    x = _randn(2, 1, 6, 6)
    assert torch.equal(rep(x.repeat_interleave(3, 0)), op(x).repeat_interleave(3, 0))
    assert Inpainting(mask[0]).repeat_interleave(3).batch_size() is None
    with pytest.raises(ShapeError, match="batch"):
        op(_randn(3, 1, 6, 6))


def test_inpainting_errors_and_to():
    with pytest.raises(ValueError, match="0 .*1"):
        Inpainting(torch.full((4, 4), 0.5))
    with pytest.raises(ShapeError, match="mask"):
        Inpainting(torch.ones(4))
    op = Inpainting(torch.ones(6, 7))
    with pytest.raises(ShapeError, match=r"x has shape \(1, 1, 6, 6\) but the mask is \(6, 7\)"):
        op(torch.zeros(1, 1, 6, 6))
    with pytest.raises(ShapeError, match="x"):
        Inpainting(torch.ones(2, 3, 6, 7))(torch.zeros(2, 1, 6, 7))  # 3-channel mask, 1-channel image
    assert op.to(torch.float64).mask.dtype == torch.float64 and "mask" in op.state_dict()


# -- super-resolution ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", SuperResolution.MODES)
@pytest.mark.parametrize("factor, shape", [(2, (1, 1, 8, 8)), (3, (2, 3, 12, 9)), (4, (3, 2, 16, 24)),
                                           (1, (1, 1, 5, 5))])
def test_sr_adjoint_pinv_and_shapes(mode, factor, shape):
    op = SuperResolution(factor, mode)
    x = _randn(*shape)
    y = op(x)
    assert y.shape == shape[:2] + (shape[2] // factor, shape[3] // factor) and y.dtype == torch.float64
    assert adjoint_mismatch(op, x, _randn(*y.shape, seed=1)) < 1e-5
    z = op.pinv(y)
    assert torch.allclose(op(z), y, atol=1e-10)  # a solution of A z = y ...
    assert torch.allclose(op.pinv(op(z)), z, atol=1e-10)  # ... of minimum norm (z in the row space)
    assert torch.allclose(op(2 * x - z), 2 * y - op(z), atol=1e-12)
    assert torch.allclose(op(x.float()), torch.cat([op(x[i:i + 1].float()) for i in range(shape[0])]), atol=1e-6)
    assert op(x.float()).dtype == torch.float32 and op.adjoint(y.float()).dtype == torch.float32


def test_avgpool_pinv_is_nearest_upsampling():
    op = SuperResolution(4, "avgpool")
    y = _randn(2, 3, 5, 6)
    assert torch.allclose(op.pinv(y), F.interpolate(y, scale_factor=4, mode="nearest"))


def test_bicubic_matches_torch_antialias_in_the_interior():
    x = _randn(2, 3, 48, 36)
    for f in (2, 3, 4):
        y = SuperResolution(f, "bicubic")(x)
        ref = F.interpolate(x, scale_factor=1 / f, mode="bicubic", antialias=True)
        b = 2
        assert torch.allclose(y[..., b:-b, b:-b], ref[..., b:-b, b:-b], atol=1e-12)
    A = bicubic_matrix(20, 4)
    assert A.shape == (5, 20) and torch.allclose(A.sum(1), torch.ones(5, dtype=torch.float64))
    ones = torch.ones(1, 1, 20, 20)
    assert torch.allclose(SuperResolution(4)(ones), torch.ones(1, 1, 5, 5))


def test_sr_errors_and_shapes():
    with pytest.raises(ShapeError, match=r"x has spatial size \(10, 12\).*divisible by 4"):
        SuperResolution(4)(torch.zeros(1, 1, 10, 12))
    with pytest.raises(ValueError, match="mode"):
        SuperResolution(2, "lanczos")
    with pytest.raises(ValueError, match="factor"):
        SuperResolution(1.5)
    op = SuperResolution(2, image_size=(8, 6))
    assert op.input_shape == (None, 8, 6) and op.output_shape == (None, 4, 3)
    with pytest.raises(ShapeError, match="x"):
        op(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ShapeError, match="y"):
        op.adjoint(torch.zeros(1, 1, 4, 4))
    with pytest.raises(ShapeError, match="image_size"):
        SuperResolution(4, image_size=10)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    x = torch.rand(2, 3, 32, 32)
    for op in (SuperResolution(4, "bicubic"), SuperResolution(2, "avgpool"), Inpainting(random_mask((32, 32), 0.5))):
        y, p = op(x), op.pinv(op(x))
        op.to("cuda")
        assert torch.allclose(op(x.cuda()).cpu(), y, atol=1e-5)
        assert torch.allclose(op.pinv(op(x.cuda())).cpu(), p, atol=1e-4)
    assert np.isfinite(p.numpy()).all()
