"""DAPS and RED-diff (issue #26): registration and knobs, determinism and batch independence on a tiny random prior,
agreement with closed forms on analytic Gaussian priors, and quality on held-out images with the embedded priors.
"""
import numpy as np
import pytest
import torch
from _tiny import tiny_unet

import invsolve as inv
from invsolve.errors import InvalidValueError, InvsolveError
from invsolve.eval.metrics import psnr
from invsolve.operators import Inpainting, MultiCoilMRI, coils, masks
from invsolve.operators.phase_retrieval import PhaseRetrieval
from invsolve.priors import DiffusersPrior
from invsolve.priors.gaussian import GaussianPrior, linear_gaussian_posterior
from invsolve.samplers import get_sampler
from invsolve.samplers.daps import BUDGETS, exact_x0, langevin_x0, ode_x0
from invsolve.samplers.reddiff import weight

SCHED = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear",
         "prediction_type": "epsilon"}
FAST = {"daps": dict(steps=4, ode_steps=2, langevin_steps=3, lr=1e-5), "reddiff": dict(steps=4, pinv_iters=10),
        "daps-exact": dict(steps=4, ode_steps=2, x0_step="exact", beta_y=1e-3, cg_iters=50)}


@pytest.fixture(scope="module")
def tiny():
    """A random 16x16 complex prior and a 4-coil 4x MRI problem with two items."""
    prior = DiffusersPrior(tiny_unet(cin=2), SCHED, is_complex=True, name="tiny")
    op = MultiCoilMRI(coils.birdcage(4, (16, 16)), masks.uniform1d((16, 16), 4, 0.125, seed=0))
    x = torch.randn(2, 1, 16, 16, dtype=torch.complex64, generator=torch.Generator().manual_seed(1)) * 0.5
    return prior, op, op(x)


# ------------------------------------------------------------------------------------------- registration
@pytest.mark.parametrize("name", ["daps", "reddiff"])
def test_registered_with_declared_knobs(name):
    spec = get_sampler(name)
    desc = spec.describe()
    assert set(desc) == set(spec.defaults) and all(d["doc"] for d in desc.values())
    assert spec.requires == "differentiable" and name in inv.available_samplers()


@pytest.mark.parametrize("name,kw,match", [
    ("daps", dict(budget="2k"), "budget='2k'"), ("daps", dict(lr=-1e-4), "lr=-0.0001"),
    ("daps", dict(lr_min_ratio=1.5), "lr_min_ratio=1.5"), ("daps", dict(beta_y=0.0), "beta_y=0.0"),
    ("daps", dict(ode_steps=0), "ode_steps=0"), ("daps", dict(ode_solver="rk4"), "ode_solver='rk4'"),
    ("reddiff", dict(lam=-0.25), "lam=-0.25"), ("reddiff", dict(beta2=1.0), "beta2=1.0"),
    ("reddiff", dict(init="noise"), "init='noise'"), ("reddiff", dict(pinv_iters=0), "pinv_iters=0")])
def test_out_of_range_knobs_are_rejected_before_any_work(tiny, name, kw, match):
    prior, op, y = tiny
    nfe = prior.nfe
    with pytest.raises(InvalidValueError, match=match):
        inv.solve(y, op, prior=prior, sampler=name, seed=0, **kw)
    assert prior.nfe == nfe


@pytest.mark.parametrize("variant", ["daps", "reddiff", "daps-exact"])
def test_deterministic_and_batch_independent(tiny, variant):
    prior, op, y = tiny
    name = variant.split("-")[0]
    a = inv.solve(y, op, prior=prior, sampler=name, seed=[3, 4], **FAST[variant])
    again = inv.solve(y, op, prior=prior, sampler=name, seed=[3, 4], **FAST[variant])
    alone = inv.solve(y[1:], op, prior=prior, sampler=name, seed=[4], **FAST[variant])
    other = inv.solve(y[1:], op, prior=prior, sampler=name, seed=[5], **FAST[variant])
    assert torch.isfinite(a.x.abs()).all()
    assert torch.equal(a.x, again.x)
    assert torch.allclose(a.x[1:], alone.x, rtol=1e-4, atol=1e-4 * float(alone.x.abs().max()))
    assert not torch.allclose(other.x, alone.x, atol=1e-4)


def test_network_calls_follow_the_schedule(tiny):
    prior, op, y = tiny
    kw = dict(FAST["daps"], langevin_steps=1)
    assert inv.solve(y, op, prior=prior, sampler="daps", seed=0, **kw).nfe == 4 * 2
    assert inv.solve(y, op, prior=prior, sampler="daps", seed=0, ode_solver="heun", **kw).nfe == 4 * (2 * 2 - 1)
    assert inv.solve(y, op, prior=prior, sampler="reddiff", seed=0, **FAST["reddiff"]).nfe == 4
    assert BUDGETS["1k"][0] * BUDGETS["1k"][1] == 1000 and BUDGETS["4k"][0] * BUDGETS["4k"][1] == 4000


def test_nonlinear_operators(tiny):
    """DAPS and RED-diff (from zeros) run on phase retrieval; RED-diff's A⁺y start needs a linear operator."""
    prior, _, _ = tiny
    op = PhaseRetrieval(16, 1, 2.0, complex_input=True)
    x = torch.randn(1, 1, 16, 16, dtype=torch.complex64, generator=torch.Generator().manual_seed(2)) * 0.5
    y = op(x)
    assert torch.isfinite(inv.solve(y, op, prior=prior, sampler="daps", seed=0, **FAST["daps"]).x.abs()).all()
    out = inv.solve(y, op, prior=prior, sampler="reddiff", seed=0, steps=4, init="zeros")
    assert torch.isfinite(out.x.abs()).all()
    with pytest.raises(InvsolveError, match="init='pinv'.*needs a linear operator"):
        inv.solve(y, op, prior=prior, sampler="reddiff", seed=0, steps=4)
    nfe = prior.nfe
    with pytest.raises(InvsolveError, match="x0_step='exact'.*needs a linear operator"):
        inv.solve(y, op, prior=prior, sampler="daps", seed=0, x0_step="exact", **FAST["daps"])
    assert prior.nfe == nfe  # refused before any network call


def test_divergent_langevin_step_is_reported(tiny):
    prior, op, y = tiny
    with pytest.raises(InvsolveError, match="lower lr"):
        inv.solve(y, op, prior=prior, sampler="daps", seed=0, steps=3, ode_steps=1, langevin_steps=50, lr=10.0)


# ------------------------------------------------------------------------------------ analytic references
@pytest.fixture(scope="module")
def gauss():
    """A 1x4x4 Gaussian prior with per-pixel variances in [0.1, 0.5] and mean in [-0.3, 0.3] (identity domain map)."""
    g = torch.Generator().manual_seed(0)
    mean = 0.6 * torch.rand(1, 4, 4, generator=g, dtype=torch.float64) - 0.3
    var = 0.1 + 0.4 * torch.rand(1, 4, 4, generator=g, dtype=torch.float64)
    return GaussianPrior(mean, variance=var), mean.float(), var.float()


def test_ode_x0_matches_the_closed_form_flow_of_a_gaussian(gauss):
    """PF-ODE from sigma to 0 for N(m, v): x0 = m + (x - m) sqrt(v / (v + sigma²)); Heun converges to it."""
    prior, m, v = gauss
    x = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(1)) * 3
    sigma = 2.0
    exact = m + (x - m) * (v / (v + sigma**2)).sqrt()
    assert torch.allclose(ode_x0(prior, x, sigma, 1, 0.002), m + (x - m) * v / (v + sigma**2), atol=1e-5)
    err = [float((ode_x0(prior, x, sigma, n, 0.002, solver="heun") - exact).abs().max()) for n in (4, 32)]
    assert err[1] < 0.01 and err[1] < err[0] / 20, err  # |x| up to ~9: relative error < 1e-3


def test_langevin_samples_the_gaussian_target(gauss):
    """Many independent chains of the Langevin kernel reach N(x*, s²) with x* = (x0_hat/r² + (2y-1)/(4β²)) /
    (1/r² + 1/(4β²)) for A(x) = (x + 1) / 2 (a [0, 1]-range prior) and a full mask."""
    prior = DiffusersPrior(tiny_unet(size=8, blocks=(8, 8)), SCHED, name="unused-net")
    op = Inpainting(torch.ones(8, 8))
    n, r, beta = 256, 0.3, 0.2
    x0_hat = torch.full((n, 1, 8, 8), 0.5)
    y = torch.full((n, 1, 8, 8), 0.2)
    gens = [torch.Generator().manual_seed(i) for i in range(n)]
    out = langevin_x0(prior, op, y, x0_hat, r, 2e-3, beta, 600, gens)
    prec = 1 / r**2 + 1 / (4 * beta**2)
    want_mean = (0.5 / r**2 + (2 * 0.2 - 1) / (4 * beta**2)) / prec
    assert abs(float(out.mean()) - want_mean) < 0.01
    assert abs(float(out.var()) / (1 / prec) - 1) < 0.1  # unadjusted Langevin: O(step) bias
    assert prior.nfe == 0  # the Langevin steps never call the network


def test_exact_x0_step_draws_the_gaussian_target():
    """Perturb-and-MAP draws of N(x0_hat, r² I) x exp(-||y - A x0||² / (2 β²)) for A(x) = (x + 1) / 2 on half the
    pixels (a [0, 1]-range prior): observed pixels have the closed-form mean and variance (precision 1/r² + 1/(4β²)),
    unobserved ones keep N(x0_hat, r²); no network calls."""
    prior = DiffusersPrior(tiny_unet(size=8, blocks=(8, 8)), SCHED, name="unused-net")
    mask = torch.zeros(8, 8)
    mask[:, ::2] = 1
    op = Inpainting(mask)
    n, r, beta = 512, 0.3, 0.2
    x0_hat = torch.full((n, 1, 8, 8), 0.5)
    y = op(torch.full((n, 1, 8, 8), 0.2))
    out = exact_x0(prior, op, y, x0_hat, r, beta, [torch.Generator().manual_seed(i) for i in range(n)],
                   cg_iters=50, cg_tol=1e-8)
    seen, unseen = out[..., ::2], out[..., 1::2]
    prec = 1 / r**2 + 1 / (4 * beta**2)
    want_mean = (0.5 / r**2 + (2 * 0.2 - 1) / (4 * beta**2)) / prec
    assert abs(float(seen.mean()) - want_mean) < 3 * (1 / prec / seen.numel()) ** 0.5 * 3
    assert abs(float(seen.var()) * prec - 1) < 0.05
    assert abs(float(unseen.mean()) - 0.5) < 0.01 and abs(float(unseen.var()) / r**2 - 1) < 0.05
    assert prior.nfe == 0


@pytest.mark.parametrize("x0_step", ["langevin", "exact"])
def test_daps_samples_match_the_exact_posterior_of_a_linear_gaussian_problem(gauss, x0_step):
    """Half the pixels observed with noise 0.05: 128 DAPS samples (a Langevin step that mixes within a level, or the
    exact Gaussian draw) have the closed-form posterior mean (within 4.5 Monte-Carlo standard errors per pixel) and
    standard deviations within 35 % — observed pixels' posterior std is 0.05, unobserved ones keep the prior's
    0.3-0.7. The exact draw shows what DAPS's Gaussian approximation ``r_t = sigma_t`` costs (larger than
    ``Var[x0 | x_t] = v sigma² / (v + sigma²)``): unobserved pixels come out up to 40 % too wide (measured 1.38), so
    its bound there is 1.5; the Langevin chain, which does not mix fully, hides part of it."""
    prior, m, v = gauss
    mask = torch.zeros(4, 4)
    mask[::2] = 1
    op = Inpainting(mask)
    x = m + v.sqrt() * torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(5))
    y = op(x) + 0.05 * torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(6)) * mask
    A = torch.diag(mask.flatten().double())[mask.flatten() > 0]
    mean, cov, _ = linear_gaussian_posterior(prior, A, y.flatten()[mask.flatten() > 0][None].double(), 0.05)
    sd = cov[0].diagonal().sqrt()
    n = 128
    res = inv.solve(y.expand(n, -1, -1, -1), op, prior=prior, sampler="daps", seed=list(range(n)), steps=40,
                    ode_steps=4, langevin_steps=100, lr=2e-3, lr_min_ratio=0.1, beta_y=0.05, sigma_max=10.0,
                    x0_step=x0_step)
    s = res.x.flatten(1).double()
    z = (s.mean(0) - mean[0]) / (sd / n**0.5)
    assert float(z.abs().max()) < 4.5, z
    ratio = s.std(0) / sd
    seen = mask.flatten() > 0
    assert float(ratio.min()) > 0.65 and float(ratio[seen].max()) < 1.35, ratio
    assert float(ratio[~seen].max()) < (1.35 if x0_step == "langevin" else 1.5), ratio


def test_reddiff_regulariser_weights_and_pure_data_fit():
    assert weight(0.2, "linear") == pytest.approx(2.0) and weight(0.2, "sqrt") == pytest.approx(2**0.5)
    assert weight(0.2, "const") == 1.0
    # lam = 0: Adam on the data term alone fits the observed pixels and never moves the unobserved ones from A⁺y
    prior = GaussianPrior(torch.zeros(1, 4, 4), variance=0.3)
    mask = (torch.rand(4, 4, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    op = Inpainting(mask)
    y = op(torch.rand(1, 1, 4, 4, generator=torch.Generator().manual_seed(1)) - 0.5)
    out = inv.solve(y, op, prior=prior, sampler="reddiff", steps=200, lam=0.0, lr=0.05, seed=0).x
    assert torch.equal(out * (1 - mask), torch.zeros_like(out))
    assert float((op(out) - y).abs().max()) < 0.02


# -------------------------------------------------------------------------- quality on held-out images
# The presets as shipped (invsolve/presets/<prior>.yaml; chosen on validation images, never on these): DAPS at 100
# network calls (100 levels x 1 PF-ODE step, the exact Gaussian x0 draw), RED-diff at 100 Adam steps (CT: 300).
@pytest.fixture(scope="module")
def heldout_problems(brain_test_images):
    from invsolve.data.ct import heldout_ct_slices, sample_phantoms
    from invsolve.data.natural import heldout_photos
    from invsolve.operators.inpainting import random_mask
    from invsolve.tasks import build_problem

    xm = brain_test_images[0][:1]
    mri = MultiCoilMRI(coils.birdcage(8, (64, 64)), masks.uniform1d((64, 64), 4, 0.08, seed=0))
    xc = heldout_ct_slices(64)[0][:1]
    xf = sample_phantoms(1, 64, torch.Generator().manual_seed(777))  # a phantom seed used nowhere else
    ct = build_problem({"task": "ct", "index": [0], "geometry": "sparse_view", "n_views": 16}).operator
    xp = heldout_photos(64, n_crops_per_photo=1)[0][:1]
    inp = Inpainting(random_mask((64, 64), 0.5, seed=0))
    return {"mri": (xm, mri, "mri-brain", None), "ct": (xc, ct, "ct-phantom", 1.0),
            "ct-phantom": (xf, ct, "ct-phantom", 1.0), "inpaint": (xp, inp, "natural", 1.0)}


# The real CT slice (CT_small.dcm, a spine crop whose body fills the frame) is outside the phantom prior's training
# distribution (closed bodies with a skin rim in air): the prior's own denoiser at sigma = 0.1 takes it from noise to
# 28.6 dB, below A⁺y's 31.06 dB. RED-diff's CT preset (300 steps, lam 2.5: chosen for its worst gain over A⁺y on
# phantoms *and* on out-of-distribution validation images) gains there; DAPS with the exact x0 step ends at 30.61 dB
# against the pinv sampler's 30.86 dB (with the Langevin step: 23.55 dB), a strict expected failure: a prior that fits
# real CT, or a DAPS setting that gains there, turns it into a pass that must be looked at. On the other two real
# slices and on held-out phantoms it gains (BENCHMARKS.md, core suite, ct-sparse).
_REAL_CT = "real CT slice outside the ct-phantom prior's distribution: DAPS 0.25 dB below A⁺y (see the comment above)"
CASES = [("daps", "mri", 1.0), ("daps", "ct-phantom", 1.0), ("daps", "inpaint", 1.0),
         pytest.param("daps", "ct", 1.0, marks=[pytest.mark.slow, pytest.mark.xfail(strict=True, reason=_REAL_CT)]),
         # RED-diff on the held-out slice: 22.97 dB from its start's 21.99 dB (on all 16 held-out slab slices
         # 24.81 against 23.44 dB; on the validation guard slices +4.8 dB), hence a 0.5 dB margin
         ("reddiff", "mri", 0.5), ("reddiff", "ct-phantom", 1.0), ("reddiff", "inpaint", 1.0),
         pytest.param("reddiff", "ct", 1.0, marks=pytest.mark.slow)]


@pytest.mark.parametrize("sampler,task,margin", CASES)
def test_improves_on_its_initial_estimate_on_heldout_images(heldout_problems, sampler, task, margin):
    """Held-out MNI slice (4x MRI), 16-view CT of a real pydicom slice and of a held-out phantom, held-out photo
    (50 % inpainting), noiseless, the preset as shipped: better than the initial estimate by ``margin`` dB — RED-diff's
    start A⁺y (100 CG iterations where there is no closed form), and for DAPS (which starts from noise) the best of
    the classical reconstructions A⁺y (the ``pinv`` sampler) and the adjoint."""
    x, op, prior, rng = heldout_problems[task]
    y = op(x)
    if sampler == "daps":
        base = max(np.mean(psnr(inv.solve(y, op, sampler=s).x, x, rng)) for s in ("pinv", "adjoint"))
    else:
        base = np.mean(psnr(op.pinv(y, iterations=100), x, rng))
    res = inv.solve(y, op, prior=prior, sampler=sampler, seed=0)
    assert res.config["preset"]["id"] == f"{sampler}-{task.split('-')[0]}"
    assert res.nfe == (300 if (sampler, prior) == ("reddiff", "ct-phantom") else 100)
    got = np.mean(psnr(res.x, x, rng))
    assert got > base + margin, (got, base)
