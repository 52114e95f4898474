"""Navier–Stokes solver, operator and training data (small grids, short times)."""
import math

import numpy as np
import pytest
import torch

from invsolve.data.base import build_train_source
from invsolve.data.ns import _spectral_truncate, gaussian_random_field, generate_vorticity, torus_augment
from invsolve.errors import InvsolveError, ShapeError
from invsolve.operators.navier_stokes import (
    NavierStokes2D,
    NonFiniteVorticityError,
    solve_vorticity,
    taylor_green_vorticity,
    torus_grid,
)

NU = 1 / 200


@pytest.mark.parametrize("size,k", [(32, 2), (64, 4)])
def test_taylor_green_decays_analytically(size, k):
    # w = A sin(kx) sin(ky): ψ = w/(2k²) so u·∇w = 0 and Δw = -2k² w  =>  w(t) = w0 exp(-2ν k² t).
    w0 = taylor_green_vorticity(size, k, amplitude=5.0, dtype=torch.float64)[None]
    w = solve_vorticity(w0, 1.0, forcing=None)
    exact = w0 * math.exp(-2 * NU * k * k)
    assert float((w - exact).norm() / exact.norm()) < 1e-6
    w32 = solve_vorticity(w0.float(), 1.0, forcing=None)
    assert w32.dtype == torch.float32
    assert float((w32.double() - exact).norm() / exact.norm()) < 1e-5


def test_kolmogorov_shear_relaxes_to_laminar_state():
    # w = a cos(4y) is a shear flow (u·∇w = 0); with f = -4cos(4y): w(t) = ws + (w0 - ws) e^{-16νt}, ws = -cos(4y)/(4ν).
    _, y = torus_grid(32, dtype=torch.float64)
    w0 = (3 * torch.cos(4 * y))[None]
    ws = -torch.cos(4 * y) / (4 * NU)
    w = solve_vorticity(w0, 1.0)
    exact = ws + (w0 - ws) * math.exp(-16 * NU)
    assert float((w - exact).norm() / exact.norm()) < 1e-5  # Crank–Nicolson error only


def _turbulent(n, size=32, seed=0):
    return gaussian_random_field(n, size, seed=seed).double() * 3


def test_second_order_time_convergence():
    w0 = _turbulent(2)
    T = 0.4
    ref = solve_vorticity(w0, T, dt=T / 800)
    errs = [float((solve_vorticity(w0, T, dt=T / n) - ref).norm() / ref.norm()) for n in (25, 50, 100)]
    rates = [math.log2(a / b) for a, b in zip(errs, errs[1:])]
    assert errs[-1] < 1e-3
    assert min(rates) > 1.8, (errs, rates)  # measured: 9.3e-3, 2.3e-3, 5.8e-4 -> rates 2.01, 2.01


def test_adaptive_step_is_accurate_and_batch_independent():
    w0 = _turbulent(3)
    ref = solve_vorticity(w0, 0.5, dt=0.5 / 400)
    w = solve_vorticity(w0, 0.5)
    assert float((w - ref).norm() / ref.norm()) < 3e-3  # h = 1/32: dt about 4e-3 for these rough fields
    single = torch.cat([solve_vorticity(w0[i : i + 1], 0.5) for i in range(3)])
    torch.testing.assert_close(w, single, rtol=1e-9, atol=1e-9)


def test_operator_shapes_units_and_batching():
    op = NavierStokes2D(32, T=0.2, stride=2)
    assert not op.is_linear and op.default_prior == "ns-vorticity"
    assert op.input_shape == (1, 32, 32) and op.output_shape == (1, 16, 16)
    x = gaussian_random_field(3, 32)[:, None] / 10
    y = op(x)
    assert y.shape == (3, 1, 16, 16) and y.dtype == torch.float32
    full = solve_vorticity(x * 10, 0.2)
    torch.testing.assert_close(y, full[..., ::2, ::2])
    per_item = torch.cat([op(x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(y, per_item, rtol=1e-5, atol=1e-5)
    assert NavierStokes2D(32, T=0.2, stride=3).output_shape == (1, 11, 11)
    assert op(x.double()).dtype == torch.float64
    with pytest.raises(ShapeError):
        op(torch.zeros(1, 1, 16, 16))


def test_operator_allows_autograd():
    op = NavierStokes2D(16, T=0.05)
    x = (gaussian_random_field(1, 16)[:, None] / 10).requires_grad_()
    op(x).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_non_finite_input_and_blow_up_raise():
    w0 = _turbulent(3).float()
    w0[1, 3, 3] = float("nan")
    with pytest.raises(NonFiniteVorticityError, match=r"items \[1\]") as err:
        solve_vorticity(w0, 0.1)
    assert isinstance(err.value, InvsolveError)
    with pytest.raises(NonFiniteVorticityError, match="NaN/Inf"):  # explicit dt far beyond stability
        solve_vorticity(_turbulent(1) * 30, 5.0, dt=0.5)


def test_operator_bounds_the_solver_steps():
    """An input far outside the data range (a diverging sampler iterate) makes the adaptive step tiny; the operator
    fails after ``max_steps`` steps instead of integrating for hours."""
    x = gaussian_random_field(2, 16)[:, None] / 10
    op = NavierStokes2D(16, T=0.2, max_steps=2000)
    assert op(x).shape == (2, 1, 8, 8)  # in range: well inside the bound
    with pytest.raises(NonFiniteVorticityError, match="max_steps=2000"):
        op(x * 1000)
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="max_steps"):
            NavierStokes2D(16, max_steps=bad)
    assert NavierStokes2D(16).max_steps == 100_000 and NavierStokes2D(16, max_steps=np.int64(7)).max_steps == 7


def test_grf_statistics_and_seed_streams():
    g = gaussian_random_field(64, 32, seed=1)
    assert g.shape == (64, 32, 32) and g.dtype == torch.float32
    assert abs(float(g.std()) - 1.44) < 0.1
    assert float(g.mean(dim=(-2, -1)).abs().max()) < 1e-5
    torch.testing.assert_close(gaussian_random_field(2, 32, seed=1, start=5), g[5:7])
    test = gaussian_random_field(2, 32, seed=1, split="test")
    assert float((test - g[:2]).abs().min()) < float((test - g[:2]).abs().max())
    assert not torch.allclose(test, g[:2], atol=0.1)


def test_spectral_truncation_keeps_band_limited_fields():
    x, y = torus_grid(64, dtype=torch.float64)
    w = torch.sin(3 * x + 2 * y) + 0.5 * torch.cos(7 * y) - torch.sin(15 * x)
    torch.testing.assert_close(_spectral_truncate(w[None], 32)[0], w[::2, ::2])


def test_generate_vorticity_deterministic_and_range():
    a = generate_vorticity(2, size=16, seed=0, t_evolve=0.3, solver_size=32)
    b = generate_vorticity(3, size=16, seed=0, t_evolve=0.3, solver_size=32, batch=1)
    assert a.shape == (2, 1, 16, 16) and a.dtype == torch.float32
    torch.testing.assert_close(a, b[:2], rtol=1e-5, atol=1e-5)
    assert float(a.abs().max()) < 30


def _shift_reflect(w, ex, ey, dx, dy, sign):
    s = w.shape[-1]
    i = torch.arange(s)
    return sign * w[..., (ex * i + dx) % s, :][..., (ey * i + dy) % s]


@pytest.mark.parametrize(
    "ex,ey,dx,dy,sign,symmetric",
    [
        (1, 1, 5, 8, 1, True),  # x-shift, y-shift by π/2
        (-1, -1, 0, 0, 1, True),  # rotation by π
        (-1, 1, 3, 4, -1, True),  # -w(-x + a, y + π/4)
        (1, -1, 0, 4, -1, True),  # -w(x, π/4 - y)
        (1, 1, 0, 4, 1, False),  # y-shift by π/4 reverses the forcing
        (-1, 1, 0, 0, -1, False),  # plain mirror
        (1, 1, 0, 0, -1, False),  # sign flip
    ],
)
def test_forced_flow_symmetries(ex, ey, dx, dy, sign, symmetric):
    w0 = _turbulent(1, 32, seed=2).float()
    w = solve_vorticity(w0, 0.3)
    moved = solve_vorticity(_shift_reflect(w0, ex, ey, dx, dy, sign), 0.3)
    err = float((moved - _shift_reflect(w, ex, ey, dx, dy, sign)).abs().max() / w.abs().max())
    assert (err < 1e-4) == symmetric, err


def test_torus_augment_draws_only_symmetries():
    w0 = _turbulent(8, 32, seed=4).float()[:, None]
    w = solve_vorticity(w0, 0.3)
    for seed in range(3):
        a = solve_vorticity(torus_augment(w0, torch.Generator().manual_seed(seed)), 0.3)
        b = torus_augment(w, torch.Generator().manual_seed(seed))
        assert float((a - b).abs().max() / b.abs().max()) < 1e-4


def test_registered_training_source(tmp_path):
    cache = tmp_path / "bank.npy"
    kw = dict(image_size=16, bank_size=4, t_evolve=0.2, scale=10.0, cache=str(cache))
    src = build_train_source("ns-vorticity", **kw)
    assert src.channels == 1 and src.image_size == (16, 16)
    assert cache.exists()
    x = src.sample(6, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert x.shape == (6, 1, 16, 16) and x.dtype == torch.float32
    bank = torch.from_numpy(np.load(cache))
    assert float(x.abs().max()) <= float(bank.abs().max()) / 10 + 1e-6
    src2 = build_train_source("ns-vorticity", **kw)  # loaded from the cache
    y = src2.sample(6, torch.Generator().manual_seed(0), torch.device("cpu"))
    torch.testing.assert_close(x, y)
