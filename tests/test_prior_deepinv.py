"""deepinv interop (issue #8 part 5): a deepinv Physics used as an invsolve operator.

The adapter itself is tested with duck-typed physics objects (always); the real deepinv MRI tests are skipped
when deepinv is not installed.
"""
import pytest
import torch

import invsolve as inv
from invsolve.errors import InvsolveError
from invsolve.operators import MultiCoilMRI, adjoint_mismatch, masks
from invsolve.operators.coils import birdcage
from invsolve.operators.deepinv_adapter import DeepinvLinearOperator, DeepinvOperator, from_deepinv
from invsolve.priors.adm import ADMPrior, ADMUNet, adm_config
from invsolve.samplers.base import check_compatible, get_sampler


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class MatrixPhysics:
    """Duck-typed deepinv LinearPhysics: y = M vec(x) on (B, 1, 4, 4) images."""

    def __init__(self, M):
        self.M = M

    def A(self, x):
        return x.flatten(1) @ self.M.T.to(x.dtype)

    def A_adjoint(self, y):
        return (y @ self.M.to(y.dtype)).reshape(-1, 1, 4, 4)


class ComplexGainPhysics:
    """Duck-typed complex-linear physics in deepinv's [Re, Im] layout: y = mask * c * x on (B, 2, H, W)."""

    def __init__(self, c, mask):
        self.c, self.mask = c, mask

    def _mul(self, t, c):
        re, im = t[:, 0], t[:, 1]
        out = torch.stack([c.real * re - c.imag * im, c.real * im + c.imag * re], dim=1)
        return out * self.mask

    def A(self, x):
        return self._mul(x, self.c)

    def A_adjoint(self, y):
        return self._mul(y, self.c.conj())


class SquarePhysics:
    def A(self, x):
        return x**2


def test_adapter_on_duck_typed_physics():
    g = torch.Generator().manual_seed(0)
    lin = from_deepinv(MatrixPhysics(torch.randn(6, 16, generator=g, dtype=torch.float64)), (1, 4, 4))
    assert isinstance(lin, DeepinvLinearOperator) and lin.is_linear and not lin.is_complex
    assert lin.input_shape == (1, 4, 4) and lin.output_shape == (6,)
    x = torch.randn(3, 1, 4, 4, generator=g, dtype=torch.float64)
    y = torch.randn(3, 6, generator=g, dtype=torch.float64)
    assert adjoint_mismatch(lin, x, y) < 1e-12
    assert torch.allclose(lin.normal(x), lin.adjoint(lin(x)))

    c = torch.randn(4, 4, generator=g, dtype=torch.complex128)
    mask = (torch.rand(4, 4, generator=g) > 0.3).double()
    cx = from_deepinv(ComplexGainPhysics(c, mask), (2, 4, 4), complex=True)
    assert cx.is_complex and cx.input_shape == (1, 4, 4) and cx.output_shape == (1, 4, 4)
    z = torch.randn(3, 1, 4, 4, generator=g, dtype=torch.complex128)
    w = torch.randn(3, 1, 4, 4, generator=g, dtype=torch.complex128)
    assert torch.allclose(cx(z), mask * c * z)  # [Re, Im] layout <-> complex, both ways
    assert adjoint_mismatch(cx, z, w) < 1e-12  # complex dot test, imaginary part included

    nonlin = from_deepinv(SquarePhysics(), (1, 4, 4))
    assert type(nonlin) is DeepinvOperator and not nonlin.is_linear
    with pytest.raises(InvsolveError, match="needs a linear operator"):
        check_compatible(get_sampler("dds"), nonlin, None)
    with pytest.raises(InvsolveError, match="input_shape"):
        from_deepinv(SquarePhysics())
    with pytest.raises(InvsolveError, match="A method"):
        from_deepinv(object(), (1, 4, 4))


# ---------------------------------------------------------------------------------------------- real deepinv
def tiny_complex_prior(size=32):
    torch.manual_seed(0)
    net = ADMUNet(adm_config("adm-fastmri320-complex", model_channels=32, image_size=size, num_head_channels=32))
    return ADMPrior(net, is_complex=True)


def mri_setup(size=32, coils=4):
    maps = birdcage(coils, (size, size)).to(torch.complex64)
    mask = masks.uniform1d((size, size), acceleration=4, center_fraction=0.15, seed=0)
    return maps, mask


def test_deepinv_multicoil_mri_matches_invsolve_and_passes_the_dot_test():
    dinv = pytest.importorskip("deepinv")
    maps, mask = mri_setup()
    ours = MultiCoilMRI(maps, mask)
    theirs = from_deepinv(dinv.physics.MultiCoilMRI(mask=mask, coil_maps=maps, img_size=(32, 32)), (2, 32, 32),
                          complex=True)
    assert theirs.is_linear and theirs.input_shape == (1, 32, 32) and theirs.output_shape == ours.output_shape
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 1, 32, 32, generator=g, dtype=torch.complex64)
    y = torch.randn(2, 4, 32, 32, generator=g, dtype=torch.complex64)
    assert torch.allclose(theirs(x), ours(x), atol=1e-5)  # same centred orthonormal FFT convention
    assert torch.allclose(theirs.adjoint(y), ours.adjoint(y), atol=1e-5)
    assert adjoint_mismatch(theirs, x, y) < 1e-5
    single = from_deepinv(dinv.physics.MRI(mask=mask, img_size=(32, 32)), complex=True)  # img_size (2, H, W)
    assert single.output_shape == (1, 32, 32) and adjoint_mismatch(single, x, y[:, :1]) < 1e-5


def test_dds_on_deepinv_mri_physics():
    dinv = pytest.importorskip("deepinv")
    maps, mask = mri_setup()
    prior = tiny_complex_prior()
    x = torch.randn(1, 1, 32, 32, dtype=torch.complex64, generator=torch.Generator().manual_seed(2))

    single = from_deepinv(dinv.physics.MRI(mask=mask, img_size=(32, 32)), complex=True)
    res = inv.solve(single(x), single, prior=prior, steps=5, dc="normal")
    assert res.x.is_complex() and res.x.shape == (1, 1, 32, 32) and res.nfe == 5
    # A^H A is a projection for single-coil Cartesian MRI: CG solves the normal equations in one step
    assert torch.allclose(single(res.x), single(x), atol=1e-4 * float(res.x.abs().max()))

    multi = from_deepinv(dinv.physics.MultiCoilMRI(mask=mask, coil_maps=maps, img_size=(32, 32)), (2, 32, 32),
                         complex=True)
    ours = MultiCoilMRI(maps, mask)
    y = ours(x)
    a = inv.solve(y, multi, prior=prior, steps=5, seed=3)
    b = inv.solve(y, ours, prior=prior, steps=5, seed=3)
    assert torch.isfinite(a.x).all() and a.nfe == 5
    assert torch.allclose(a.x, b.x, atol=1e-3 * float(b.x.abs().max()))
