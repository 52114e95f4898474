"""One parametrised test per property, run over every linear operator (deepinv-style physics tests)."""
import copy

import pytest
import torch

from invsolve.operators import (
    Blur,
    FanBeamCT,
    Identity,
    Inpainting,
    MultiCoilMRI,
    ParallelBeamCT,
    SingleCoilMRI,
    SuperResolution,
    adjoint_mismatch,
    coils,
    gaussian_kernel,
    masks,
    random_mask,
    sparse_view_angles,
)

D = torch.float64


def _mri(B=1):
    m = masks.uniform1d((16, 12), acceleration=3, center_fraction=0.1, seed=1)
    return MultiCoilMRI(coils.birdcage(4, (16, 12), dtype=torch.complex128), m), (B, 1, 16, 12), True


OPERATORS = {
    "multicoil_mri": lambda: _mri(),
    "multicoil_mri_per_slice": lambda: (MultiCoilMRI(
        torch.stack([coils.birdcage(3, (8, 8), dtype=torch.complex128)] * 2),
        torch.stack([masks.uniform1d((8, 8), 2, 0.25, seed=s) for s in (0, 1)])), (2, 1, 8, 8), True),
    "singlecoil_mri": lambda: (SingleCoilMRI(masks.gaussian2d((10, 14), 3, seed=2)), (2, 1, 10, 14), True),
    "ct_sparse": lambda: (ParallelBeamCT(16, sparse_view_angles(7)).to(D), (2, 1, 16, 16), False),
    "ct_fan": lambda: (FanBeamCT(16, 2 * sparse_view_angles(9), source_distance=30.0).to(D), (2, 1, 16, 16), False),
    "blur_circular": lambda: (Blur(gaussian_kernel(5, 1.0), padding="circular").to(D), (2, 3, 12, 10), False),
    "blur_reflect": lambda: (Blur(gaussian_kernel(5, 1.0), padding="reflect").to(D), (2, 1, 12, 10), False),
    "blur_valid": lambda: (Blur(gaussian_kernel(3, 1.0), padding="valid").to(D), (1, 1, 9, 9), False),
    "inpainting": lambda: (Inpainting(random_mask((8, 8), 0.5, seed=0)).to(D), (2, 3, 8, 8), False),
    "sr_avgpool": lambda: (SuperResolution(2, mode="avgpool").to(D), (2, 3, 8, 8), False),
    "sr_bicubic": lambda: (SuperResolution(2, mode="bicubic").to(D), (1, 1, 8, 8), False),
    "composed": lambda: (Inpainting(random_mask((8, 8), 0.3, seed=1)).to(D)
                         @ Blur(gaussian_kernel(3, 1.0), padding="circular").to(D), (2, 1, 8, 8), False),
    "scaled_adjoint_of_adjoint": lambda: ((2.5 * SuperResolution(2).to(D)).H.H, (1, 2, 8, 8), False),
    "identity": lambda: (Identity((1, 4, 4)), (3, 1, 4, 4), False),
}


def _rand(shape, complex_, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, dtype=D, generator=g)
    if complex_:
        x = torch.complex(x, torch.randn(shape, dtype=D, generator=g))
    return x


def _rand_like_output(op, x, seed):
    y = op(x)
    out = _rand(y.shape, y.is_complex(), seed)
    return out


@pytest.fixture(params=sorted(OPERATORS))
def case(request):
    return request.param, *OPERATORS[request.param]()


def test_adjoint_dot_test(case):
    name, op, shape, cplx = case
    x = _rand(shape, cplx, 0)
    y = _rand_like_output(op, x, 1)
    assert adjoint_mismatch(op, x, y) < 1e-10, name


def test_normal_equals_adjoint_of_forward(case):
    name, op, shape, cplx = case
    x = _rand(shape, cplx, 2)
    assert torch.allclose(op.normal(x), op.adjoint(op(x)), atol=1e-10), name


def test_linearity(case):
    name, op, shape, cplx = case
    a, b = _rand(shape, cplx, 3), _rand(shape, cplx, 4)
    assert torch.allclose(op(2.0 * a - 3.0 * b), 2.0 * op(a) - 3.0 * op(b), atol=1e-10), name


def test_batch_items_are_independent(case):
    name, op, shape, cplx = case
    if getattr(op, "batch_size", lambda: None)() is not None:
        pytest.skip("per-slice operator: batch items have their own parameters")
    x = _rand(shape, cplx, 5)
    full = op(x)
    for i in range(shape[0]):
        assert torch.allclose(full[i:i + 1], op(x[i:i + 1]), atol=1e-12), name


def _single(t):
    return t.to(torch.complex64) if t.is_complex() else t.to(torch.float32) if t.is_floating_point() else t


def test_float32_dtype_preserved(case):
    name, op, shape, cplx = case
    op32 = copy.deepcopy(op)._apply(_single)
    x = _rand(shape, cplx, 6).to(torch.complex64 if cplx else torch.float32)
    y = op32(x)
    assert y.dtype in (torch.float32, torch.complex64), (name, y.dtype)


def test_to_device_moves_buffers(case):
    name, op, shape, cplx = case
    moved = copy.deepcopy(op).to("cpu")
    assert all(b.device.type == "cpu" for b in moved.buffers())
    x = _rand(shape, cplx, 7)
    assert torch.allclose(moved(x), op(x))


def test_call_does_not_mutate_operator(case):
    name, op, shape, cplx = case
    before = {k: v.clone() for k, v in op.state_dict().items()}
    x = _rand(shape, cplx, 8)
    op(x)
    op.adjoint(op(x))
    for k, v in op.state_dict().items():
        assert torch.equal(v, before[k]), (name, k)
