"""Covariance localisation of the EnKG step: the Gaspari–Cohn taper, the periodic grid taper against a brute-force
reference, the localised EKI formula, and that localisation lets a small ensemble fit a local problem its span
cannot."""
import math

import pytest
import torch

import invsolve as inv
from invsolve.operators import NavierStokes2D
from invsolve.operators.base import Operator
from invsolve.priors.gaussian import GaussianPrior
from invsolve.samplers.enkg import kalman_step
from invsolve.samplers.localization import gaspari_cohn, periodic_grid_taper

S = 16


def test_gaspari_cohn_shape():
    r = torch.linspace(0, 3, 301, dtype=torch.float64)
    f = gaspari_cohn(r)
    assert f[0] == 1 and bool((f[r >= 2] == 0).all()) and bool((f[r < 2] > 0).all())
    assert bool((f.diff() <= 1e-15).all())  # non-increasing
    for knot in (1.0, 2.0):  # continuous at the knots
        a, b = gaspari_cohn(torch.tensor([knot - 1e-9, knot + 1e-9], dtype=torch.float64))
        assert abs(float(a - b)) < 1e-7
    assert abs(float(gaspari_cohn(torch.tensor(1.0, dtype=torch.float64))) - 5 / 24) < 1e-12  # GC(1) = 5/24


@pytest.mark.parametrize("stride,radius", [(2, 5.0), (3, 3.5)])
def test_periodic_grid_taper_matches_brute_force(stride, radius):
    rho = periodic_grid_taper(S, stride, radius)
    obs = [(a, b) for a in range(0, S, stride) for b in range(0, S, stride)]
    assert rho.shape == (S * S, len(obs))
    want = torch.zeros_like(rho)
    for p in range(S * S):
        i, j = divmod(p, S)
        for q, (a, b) in enumerate(obs):
            di, dj = abs(i - a), abs(j - b)
            d = math.hypot(min(di, S - di), min(dj, S - dj))
            want[p, q] = float(gaspari_cohn(torch.tensor(2 * d / radius, dtype=torch.float64)))
    torch.testing.assert_close(rho, want)
    assert bool((rho[[a * S + b for a, b in obs], range(len(obs))] == 1).all())  # co-located pairs
    assert periodic_grid_taper(S, stride, radius, channels=2).shape == (2 * S * S, len(obs))


@pytest.mark.parametrize("normalize", ["frobenius", "trace", "none"])
def test_localised_step_is_the_tapered_eki_update(normalize):
    g = torch.Generator().manual_seed(3)
    B, J, d, m = 2, 6, 7, 4
    x = torch.randn(B, J, d, generator=g, dtype=torch.float64)
    gx = x[..., :m] ** 3 + 0.5 * x[..., m:].sum(-1, keepdim=True)
    y = torch.randn(B, m, generator=g, dtype=torch.float64)
    taper = torch.rand(d, m, generator=g, dtype=torch.float64)
    out = kalman_step(x, gx, y, 0.7, normalize, taper=taper)
    for b in range(B):
        dxm, dgm = x[b] - x[b].mean(0), gx[b] - gx[b].mean(0)
        C = (gx[b] - y[b]) @ dgm.T / J
        scale = {"frobenius": torch.linalg.matrix_norm(C), "trace": (dgm**2).sum() / J, "none": 1.0}[normalize]
        want = x[b] - 0.7 / scale * (gx[b] - y[b]) @ (taper * (dxm.T @ dgm / J)).T
        torch.testing.assert_close(out[b], want)
    torch.testing.assert_close(kalman_step(x, gx, y, 0.7, normalize, taper=torch.ones(d, m)),
                               kalman_step(x, gx, y, 0.7, normalize))


class EverySecond(Operator):
    """y = x[..., ::2, ::2] on a periodic S x S grid, with the localisation hook EnKG's ``localize=radius`` uses."""
    input_shape, output_shape = (1, S, S), (1, S // 2, S // 2)

    def forward(self, x):
        return x[..., ::2, ::2]

    def localization(self, radius):
        return periodic_grid_taper(S, 2, radius)


def test_localisation_lets_a_small_ensemble_fit_a_local_problem():
    """64 noise-free observations of an i.i.d. Gaussian field, J = 8: without localisation the update lives in a
    7-dimensional span and cannot fit (trace-normalised w = 1 or 2; w = 8 diverges); with it (radius 1.5 cells:
    the observed pixel and its 4 neighbours) the observed pixels are fitted and the mean approaches the analytic
    posterior mean (y on the observed pixels, 0 elsewhere). Localisation spreads the step over more directions, so
    it takes a larger w."""
    prior = GaussianPrior(torch.zeros(1, S, S), variance=0.25)
    x = prior.sample(1, torch.Generator().manual_seed(0))
    op = EverySecond()
    y = op(x)
    post_mean = torch.zeros_like(x)
    post_mean[..., ::2, ::2] = y
    kw = dict(prior=prior, sampler="enkg", ensemble_size=8, steps=20, updates=2, max_inner=4, normalize="trace",
              seed=0)
    plain = [inv.solve(y, op, guidance=w, **kw) for w in (1.0, 2.0)]
    local = inv.solve(y, op, guidance=4.0, localize=1.5, **kw)
    tensor = inv.solve(y, op, guidance=4.0, localize=periodic_grid_taper(S, 2, 1.5), **kw)
    torch.testing.assert_close(local.x, tensor.x)

    def misfit(r):
        return float((op(r.x) - y).norm() / y.norm())

    def error(r):
        return float((r.x - post_mean).norm() / post_mean.norm())

    assert min(misfit(r) for r in plain) > 0.5 and misfit(local) < 0.25, ([misfit(r) for r in plain], misfit(local))
    assert error(local) < 0.6 * min(error(r) for r in plain), ([error(r) for r in plain], error(local))


def test_localize_errors():
    prior = GaussianPrior(torch.zeros(1, S, S), variance=0.25)
    y = torch.zeros(1, 1, S // 2, S // 2)
    kw = dict(prior=prior, sampler="enkg", ensemble_size=4, steps=4, updates=1, max_inner=1)
    nohook = inv.operators.BlackBox(lambda v: v[..., ::2, ::2], input_shape=(1, S, S), output_shape=(1, S // 2, S // 2))
    with pytest.raises(ValueError, match=r"localize=2.0 \(a radius\) needs an operator with a localization"):
        inv.solve(y, nohook, localize=2.0, **kw)
    with pytest.raises(ValueError, match=r"localize.*shape \(n_x, n_y\) = \(256, 64\)"):
        inv.solve(y, EverySecond(), localize=torch.ones(10, 64), **kw)
    with pytest.raises(ValueError, match="kalman"):
        inv.solve(y, EverySecond(), localize=2.0, normalize="kalman", **kw)
    with pytest.raises(ValueError, match="localize must be"):
        inv.solve(y, EverySecond(), localize="wide", **kw)
    with pytest.raises(ValueError, match="radius must be > 0"):
        periodic_grid_taper(S, 2, 0.0)


def test_navier_stokes_taper():
    rho = NavierStokes2D(16).localization(6.0)
    assert rho.shape == (256, 64) and rho.dtype == torch.float64
    torch.testing.assert_close(rho, periodic_grid_taper(16, 2, 6.0))
