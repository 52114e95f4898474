"""STSL and PSLD validated where the answer is known: Gaussian (mixture) priors with analytic scores.

* the finite-difference Hutchinson term averages to the exact trace of the score Jacobian (within 3 standard errors);
* second-order Tweedie ``((1-a)/a)(I + (1-a) H)`` equals the analytic posterior covariance of ``x0 | x_t``;
* on a Gaussian prior the trace term has zero gradient: STSL equals its first-order (eta = 0) variant, and both
  approach the analytic posterior mean of a linear-Gaussian problem;
* NFE accounting, per-sample independence, and solve() on pixel priors.
"""
import pytest
import torch

import invsolve as inv
from invsolve.operators import Inpainting, random_mask
from invsolve.priors.gaussian import GaussianMixturePrior, GaussianPrior, linear_gaussian_posterior
from invsolve.samplers.psld import psld
from invsolve.samplers.stsl import hutchinson_trace, stsl

D_SHAPE = (1, 4, 4)
D = 16


def _spd(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    B = torch.randn(D, D, generator=g, dtype=torch.float64)
    return 0.5 * B @ B.T / D + 0.05 * torch.eye(D, dtype=torch.float64)


@pytest.fixture(scope="module")
def gauss():
    g = torch.Generator().manual_seed(0)
    return GaussianPrior(0.3 * torch.randn(D_SHAPE, generator=g), cov=_spd(1))


@pytest.fixture(scope="module")
def mixture():
    g = torch.Generator().manual_seed(2)
    return GaussianMixturePrior(0.8 * torch.randn((3,) + D_SHAPE, generator=g), variances=0.05, weights=[1, 2, 3])


def _gens(n, base=0):
    return [torch.Generator().manual_seed(base + i) for i in range(n)]


@pytest.mark.parametrize("t", [100, 500, 900])
def test_hutchinson_mean_matches_exact_trace_gaussian(gauss, t):
    n = 4000
    z = torch.randn((1,) + D_SHAPE, dtype=torch.float64).expand(n, *D_SHAPE)
    probe = torch.randn((n,) + D_SHAPE, generator=torch.Generator().manual_seed(t), dtype=torch.float64)
    est = hutchinson_trace(gauss, z, t, probe, c=1.0)
    exact = float(gauss.hessian_trace(z[:1], t)[0])
    se = float(est.std()) / n**0.5
    assert abs(float(est.mean()) - exact) < 3 * se
    assert se < 0.1 * abs(exact)  # the check has power: the SE is small against the trace itself


@pytest.mark.parametrize("t", [50, 400])
def test_hutchinson_mean_matches_exact_trace_mixture(mixture, t):
    """Nonlinear score: the finite difference is a Hessian-vector product for a small probe step ``c``."""
    n = 4000
    g = torch.Generator().manual_seed(10 + t)
    z = (mixture.sample(1, g).double() * mixture.alpha_bar(t).sqrt()
         + (1 - mixture.alpha_bar(t)).sqrt() * torch.randn((1,) + D_SHAPE, generator=g, dtype=torch.float64))
    z = z.expand(n, *D_SHAPE)
    probe = torch.randn((n,) + D_SHAPE, generator=g, dtype=torch.float64)
    est = hutchinson_trace(mixture, z, t, probe, c=1e-4)
    exact = float(mixture.hessian_trace(z[:1], t)[0])
    assert abs(float(est.mean()) - exact) < 3 * float(est.std()) / n**0.5


@pytest.mark.parametrize("which", ["gauss", "mixture"])
@pytest.mark.parametrize("t", [20, 300, 800])
def test_second_order_tweedie_equals_posterior_covariance(which, t, gauss, mixture, request):
    prior = {"gauss": gauss, "mixture": mixture}[which]
    x = torch.randn((3,) + D_SHAPE, generator=torch.Generator().manual_seed(t), dtype=torch.float64)
    a = float(prior.alpha_bar(t))
    # Hessian of log p_t: closed form == autograd Jacobian of the exact score
    H = prior.hessian(x, t)
    J = torch.autograd.functional.jacobian(lambda v: prior.score(v.reshape((1,) + D_SHAPE), t).reshape(-1),
                                           x[0].reshape(-1))
    torch.testing.assert_close(H[0], J, rtol=1e-9, atol=1e-9)
    cov2 = (1 - a) / a * (torch.eye(D, dtype=torch.float64) + (1 - a) * H)
    if which == "gauss":  # Cov[x0 | x_t] = S - a S (a S + (1-a) I)^-1 S, independent of x_t
        S = _spd(1)
        post = S - a * S @ torch.linalg.solve(a * S + (1 - a) * torch.eye(D, dtype=torch.float64), S)
        post = post.expand(3, D, D)
    else:
        post = prior.x0_posterior(x, t)[1]
    torch.testing.assert_close(cov2, post, rtol=1e-6, atol=1e-9 / a)
    # and first-order Tweedie through the eps interface is the exact posterior mean
    x0, _ = prior.tweedie(x, t)
    torch.testing.assert_close(x0.reshape(3, -1), prior.x0_posterior(x, t)[0], rtol=1e-7, atol=1e-9)


def _problem(prior, n_items=4, sigma=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    op = Inpainting(random_mask(D_SHAPE[1:], 0.5, seed=seed))
    A = torch.stack([op(e.reshape((1,) + D_SHAPE)).reshape(-1) for e in torch.eye(D)], 1).double()
    x = prior.sample(n_items, g)
    y = op(x) + sigma * torch.randn(x.shape, generator=g) * op.mask
    post_mean = linear_gaussian_posterior(prior, A, y.reshape(n_items, -1), sigma)[0]
    return op, y, post_mean


def _mean_error(prior, op, y, post_mean, n_seeds, **knobs):
    """Squared error of the average over ``n_seeds`` runs (per item) against the analytic posterior mean."""
    n = y.shape[0]
    yy = y.repeat_interleave(n_seeds, 0)
    out = stsl(prior, op, yy, generators=_gens(n * n_seeds), **knobs)
    mean = out.x.reshape(n, n_seeds, -1).double().mean(1)
    return float(((mean - post_mean) ** 2).sum(1).mean()), out


def test_trace_term_has_zero_gradient_on_gaussian_prior(gauss):
    """tr H is constant for a Gaussian, so STSL == its eta = 0 variant up to rounding (float64 here: at low noise
    the probe term's cotangents are ~1/(1 - abar) and cancel only to float precision)."""
    op, y, _ = _problem(gauss)
    y = y.double()
    a = stsl(gauss, op, y, generators=_gens(4), steps=6, eta=0.0).x
    for eta in (0.02, 50.0 * D):
        b = stsl(gauss, op, y, generators=_gens(4), steps=6, eta=eta).x
        torch.testing.assert_close(b, a, rtol=0, atol=1e-8)


def test_stsl_approaches_linear_gaussian_posterior_mean(gauss):
    op, y, post_mean = _problem(gauss)
    prior_err = float(((gauss.means - post_mean) ** 2).sum(1).mean())
    err, out = _mean_error(gauss, op, y, post_mean, 4, steps=10)
    err0, _ = _mean_error(gauss, op, y, post_mean, 4, steps=10, eta=0.0)
    assert err < 0.2 * prior_err
    assert abs(err - err0) < 1e-6 * max(err, 1e-12) + 1e-9
    assert out.nfe == 10 * (2 * 2 + 1)


def test_nfe_accounting(gauss):
    op, y, _ = _problem(gauss, n_items=2)
    assert stsl(gauss, op, y, generators=_gens(2), steps=3, inner=3).nfe == 3 * (2 * 3 + 1)
    assert stsl(gauss, op, y, generators=_gens(2), steps=3, inner=3, eta=0.0).nfe == 3 * (3 + 1)
    assert psld(gauss, op, y, generators=_gens(2), steps=9).nfe == 9


@pytest.mark.parametrize("sampler", ["stsl", "psld"])
def test_per_sample_independence(gauss, sampler):
    """A sample's result does not depend on the rest of its batch."""
    op, y, _ = _problem(gauss, n_items=3)
    fn = {"stsl": stsl, "psld": psld}[sampler]
    full = fn(gauss, op, y, generators=_gens(3), steps=5).x
    one = fn(gauss, op, y[1:2], generators=_gens(1, base=1), steps=5).x
    torch.testing.assert_close(one[0], full[1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("sampler", ["stsl", "psld"])
def test_solve_runs_with_pixel_gaussian_prior(gauss, sampler):
    op, y, post_mean = _problem(gauss, n_items=2)
    res = inv.solve(y, op, prior=gauss, sampler=sampler, steps=10, seed=3, device="cpu")
    assert res.x.shape == y.shape and torch.isfinite(res.x).all()
    assert res.nfe == (10 * 5 if sampler == "stsl" else 10)
    assert res.config["knobs"]["steps"] == 10


def test_bad_knobs_are_errors(gauss):
    op, y, _ = _problem(gauss, n_items=1)
    with pytest.raises(ValueError, match="inner"):
        stsl(gauss, op, y, generators=_gens(1), steps=2, inner=0)
    with pytest.raises(ValueError, match="init"):
        stsl(gauss, op, y, generators=_gens(1), steps=2, init="zeros")
    with pytest.raises(ValueError, match="step='newton' is not accepted; expected one of 'polyak'"):
        stsl(gauss, op, y, generators=_gens(1), steps=2, step="newton")
    with pytest.raises(ValueError, match="lam must be > 0 with step='polyak'"):
        stsl(gauss, op, y, generators=_gens(1), steps=2, lam=0.0)
    assert torch.isfinite(stsl(gauss, op, y, generators=_gens(1), steps=2, lam=0.0, step="fixed", rho=0.01).x).all()


def test_step_rules_and_their_scale_invariances(gauss):
    """The capped Polyak step (the default) does not depend on the data term's weight; the residual rule depends on
    lam * rho only; a fixed step depends on both; and the rules give different iterates."""
    op, y, _ = _problem(gauss, n_items=2)
    y = y.double()

    def run(**kw):
        return stsl(gauss, op, y, generators=_gens(2), steps=4, eta=0.0, **kw).x

    torch.testing.assert_close(run(lam=1.0), run(lam=7.0), rtol=0, atol=1e-9)
    torch.testing.assert_close(run(step="residual", lam=2.0, rho=0.1), run(step="residual", lam=1.0, rho=0.2),
                               rtol=0, atol=1e-9)
    assert (run(step="fixed", lam=2.0, rho=0.1) - run(step="fixed", lam=1.0, rho=0.1)).abs().max() > 1e-3
    outs = [run(step=r) for r in ("polyak", "residual", "fixed")]
    assert min((a - b).abs().max() for i, a in enumerate(outs) for b in outs[i + 1:]) > 1e-3


def test_polyak_cap_bounds_the_step(gauss):
    """``cap`` bounds the Polyak step at ``cap`` times PSLD's step: a vanishing cap leaves the unguided iterates
    (the same as a vanishing fixed step), an infinite one differs from the default; ``cap <= 0`` is an error."""
    op, y, _ = _problem(gauss, n_items=2)
    y = y.double()

    def run(**kw):
        return stsl(gauss, op, y, generators=_gens(2), steps=4, eta=0.0, **kw).x

    torch.testing.assert_close(run(cap=1e-12), run(step="fixed", rho=1e-30), rtol=0, atol=1e-9)
    assert (run(cap=float("inf")) - run()).abs().max() > 1e-3
    assert (run(cap=1e-12) - run()).abs().max() > 1e-3
    with pytest.raises(ValueError, match=r"cap=0.0 is out of range; expected a number > 0"):
        run(cap=0.0)


def test_default_cap_leaves_the_evaluation_identity_unchanged():
    """Stored evaluation results of STSL stay valid: at cap 1 the knobs hash as before the option existed."""
    from invsolve.eval.identity import identity_knobs
    from invsolve.samplers.base import get_sampler, resolve_knobs

    spec = get_sampler("stsl")
    assert "cap" not in identity_knobs("stsl", spec.defaults, resolve_knobs(spec, {}))
    assert identity_knobs("stsl", spec.defaults, resolve_knobs(spec, {"cap": 4.0}))["cap"] == 4.0


@pytest.mark.parametrize("sampler,adjoint_knob,free", [("stsl", "init='adjoint'", dict(init="noise")),
                                                       ("psld", "gluing term", dict(gamma=0.0))])
def test_nonlinear_operator_needs_knobs_without_adjoint(sampler, adjoint_knob, free):
    """On a nonlinear differentiable operator the options that use Aᵀ (the Aᵀy start, the gluing term) are a clear
    error naming the option; without them the sampler runs (gradients through the operator only)."""
    op = inv.operators.NavierStokes2D(16)
    prior = GaussianPrior(torch.zeros(1, 16, 16), variance=0.25)
    y = op(prior.sample(1, torch.Generator().manual_seed(0)))
    with pytest.raises(inv.InvsolveError, match=f"{sampler}.*{adjoint_knob}.*NavierStokes2D is nonlinear"):
        inv.solve(y, op, prior=prior, sampler=sampler, steps=2)
    res = inv.solve(y, op, prior=prior, sampler=sampler, steps=2, **free)
    assert res.x.shape == (1, 1, 16, 16) and bool(torch.isfinite(res.x).all())
