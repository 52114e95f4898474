"""EnKG and DPS-GSG on small problems with an analytic Gaussian prior / a tiny random UNet and numpy black boxes;
the black-box imaging operators and tasks."""
from pathlib import Path

import numpy as np
import pytest
import torch
from _tiny import tiny_unet

import invsolve as inv
from invsolve.errors import InvsolveError
from invsolve.operators.base import Operator
from invsolve.operators.blackbox import BlackBox, BlackBoxError
from invsolve.operators.phase_retrieval import PhaseRetrieval, SaturatingBlur, as_black_box
from invsolve.priors.gaussian import GaussianPrior
from invsolve.samplers.dps_gsg import gsg_gradient
from invsolve.samplers.enkg import NonFiniteEnsembleError, budget, cap_norm, kalman_step

D, M_OBS = 16, 6
A = np.random.default_rng(0).standard_normal((M_OBS, D)).astype(np.float32) / np.sqrt(D)
FAST = dict(steps=12, updates=1, max_inner=2)
ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_FN = f"{ROOT}/examples/own_numpy_forward_model.py:forward"


def linear_fn(x):
    """Pure numpy (no torch): (n, 1, 4, 4) -> (n, M_OBS)."""
    assert isinstance(x, np.ndarray)
    return x.reshape(x.shape[0], -1) @ A.T


@pytest.fixture(scope="module")
def gauss():
    return GaussianPrior(torch.zeros(1, 4, 4), variance=0.25)


@pytest.fixture(scope="module")
def problem(gauss):
    x = gauss.sample(2, torch.Generator().manual_seed(1))
    return x, torch.from_numpy(linear_fn(x.numpy()))


def _op():
    return BlackBox(linear_fn, input_shape=(1, 4, 4), output_shape=(M_OBS,))


def _rel_misfit(x, y):
    r = linear_fn(x.numpy()) - y.numpy()
    return np.linalg.norm(r, axis=1) / np.linalg.norm(y.numpy(), axis=1)


# ---------------------------------------------------------------------------------------------- Kalman step
@pytest.mark.parametrize("normalize", ["frobenius", "trace", "none"])
def test_kalman_step_is_the_eki_update(normalize):
    g = torch.Generator().manual_seed(0)
    B, J, d, m = 2, 9, 5, 3
    x = torch.randn(B, J, d, generator=g, dtype=torch.float64)
    G = torch.randn(m, d, generator=g, dtype=torch.float64)
    gx = x @ G.T + 0.1 * torch.randn(B, J, m, generator=g, dtype=torch.float64) ** 2  # mildly nonlinear
    y = torch.randn(B, m, generator=g, dtype=torch.float64)
    out = kalman_step(x, gx, y, 0.7, normalize)
    for b in range(B):  # C^{xg} (g_j - y), the textbook EKI form
        dxm, dgm = x[b] - x[b].mean(0), gx[b] - gx[b].mean(0)
        cxg = dxm.T @ dgm / J
        C = (gx[b] - y[b]) @ dgm.T / J
        scale = {"frobenius": torch.linalg.matrix_norm(C), "trace": (dgm**2).sum() / J, "none": 1.0}[normalize]
        want = x[b] - 0.7 / scale * (gx[b] - y[b]) @ cxg.T
        torch.testing.assert_close(out[b], want)


def test_kalman_gain_step_is_the_regularised_eki_update():
    g = torch.Generator().manual_seed(1)
    B, J, d, m = 2, 9, 5, 3
    x = torch.randn(B, J, d, generator=g, dtype=torch.float64)
    G = torch.randn(m, d, generator=g, dtype=torch.float64)
    gx = x @ G.T + 0.1 * torch.randn(B, J, m, generator=g, dtype=torch.float64) ** 2
    y = torch.randn(B, m, generator=g, dtype=torch.float64)
    out = kalman_step(x, gx, y, 0.7, "kalman", kalman_reg=0.3)
    for b in range(B):  # x_j - w C^{xg} (C^{gg} + gamma I)^{-1} (g_j - y) in data space, gamma = rho tr(C^gg) / J
        dxm, dgm = x[b] - x[b].mean(0), gx[b] - gx[b].mean(0)
        cxg, cgg = dxm.T @ dgm / J, dgm.T @ dgm / J
        gamma = 0.3 * torch.trace(cgg) / J
        gain = cxg @ torch.linalg.inv(cgg + gamma * torch.eye(m, dtype=torch.float64))
        torch.testing.assert_close(out[b], x[b] - 0.7 * (gx[b] - y[b]) @ gain.T)
    # linear G, m < J - 1, vanishing ridge: one full step fits every particle to the data
    lin = kalman_step(x, x @ G.T, y, 1.0, "kalman", kalman_reg=1e-9)
    torch.testing.assert_close(lin @ G.T, y[:, None].expand(B, J, m), atol=1e-6, rtol=0)


@pytest.mark.parametrize("normalize", ["frobenius", "trace", "kalman"])
def test_kalman_step_does_not_move_a_fitting_ensemble(normalize):
    x = torch.randn(1, 4, 3)
    g = torch.ones(1, 4, 2)
    torch.testing.assert_close(kalman_step(x, g, torch.ones(1, 2), 2.0, normalize), x)


@pytest.mark.parametrize("normalize", ["trace", "kalman"])
def test_max_norm_shortens_only_the_long_updates_and_keeps_their_direction(normalize):
    g = torch.Generator().manual_seed(2)
    B, J, d, m = 2, 9, 5, 3
    x = torch.randn(B, J, d, generator=g, dtype=torch.float64)
    gx = x @ torch.randn(m, d, generator=g, dtype=torch.float64).T
    y = 3 * torch.randn(B, m, generator=g, dtype=torch.float64)
    u = kalman_step(x, gx, y, 1.5, normalize) - x
    nrm = u.norm(dim=-1)
    bound = float(nrm.median())
    v = kalman_step(x, gx, y, 1.5, normalize, max_norm=bound) - x
    long = nrm > bound
    assert 0 < int(long.sum()) < B * J
    torch.testing.assert_close(v[~long], u[~long])
    torch.testing.assert_close(v[long].norm(dim=-1), torch.full_like(nrm[long], bound))
    torch.testing.assert_close(v[long] / bound, u[long] / nrm[long][:, None])
    # a per-item bound broadcasts over particles and entries
    w = cap_norm(u, torch.tensor([bound, 1e9], dtype=torch.float64)[:, None])
    torch.testing.assert_close(w[0], v[0])
    torch.testing.assert_close(w[1], u[1])
    torch.testing.assert_close(cap_norm(u, None), u)


# ---------------------------------------------------------------------------------------------- EnKG end to end
@pytest.fixture(scope="module")
def runs(gauss, problem):
    """The unguided ensemble (updates=0) and a guided one: J = 37 particles (not a multiple of the network batch)."""
    _, y = problem
    kw = dict(prior=gauss, sampler="enkg", ensemble_size=37, batch=16, steps=20)
    return (inv.solve(y, _op(), updates=0, **kw),
            inv.solve(y, _op(), updates=1, normalize="trace", **kw),
            inv.solve(y, _op(), updates=1, normalize="frobenius", **kw))


def test_numpy_fn_end_to_end_moves_the_ensemble_to_the_data(runs, problem):
    _, y = problem
    free, res, frob = runs
    J = 37
    assert res.x.shape == (2, 1, 4, 4) and torch.isfinite(res.x).all()
    info = res.info
    assert info["particles"].shape == (2, J, 1, 4, 4) and info["spread"].shape == (2, 1, 4, 4)
    torch.testing.assert_close(info["particles"].mean(1), res.x)
    # the unguided ensemble ignores y; the guided means fit it (trace weighting: to a few percent)
    assert _rel_misfit(free.x, y).min() > 0.5
    assert _rel_misfit(res.x, y).max() < 0.2
    assert _rel_misfit(frob.x, y).max() < 0.6
    for r in (res, frob):
        mis = r.info["misfit"]
        assert mis.shape == (r.info["forward_calls"], 2) and bool((mis[-1] < 0.5 * mis[0]).all())
    # cost counters agree with the budget formula; one batched forward call per update
    b = budget(J, steps=20, updates=1)
    assert res.nfe == info["nfe_per_particle"] == b["nfe_per_particle"] and free.nfe == 20
    assert info["forward_evaluations"] == 2 * b["forward_evaluations"]
    assert info["network_evaluations"] == 2 * J * b["nfe_per_particle"]
    assert free.info["forward_evaluations"] == 0


def test_results_do_not_depend_on_batching_or_the_rest_of_the_batch(gauss, problem):
    _, y = problem
    kw = dict(prior=gauss, sampler="enkg", ensemble_size=11, **FAST)
    both = inv.solve(y, _op(), seed=[5, 9], batch=64, **kw)
    alone = inv.solve(y[1:], _op(), seed=[9], batch=3, **kw)
    torch.testing.assert_close(both.info["particles"][1:], alone.info["particles"], atol=1e-5, rtol=1e-5)


def test_nan_or_malformed_fn_outputs_raise(gauss, problem):
    _, y = problem

    def nan_fn(x):
        out = linear_fn(x)
        out[3] = np.nan
        return out

    with pytest.raises(BlackBoxError, match="NaN") as e:
        inv.solve(y, BlackBox(nan_fn), prior=gauss, sampler="enkg", ensemble_size=8, **FAST)
    assert 3 in e.value.items and "particle" in "".join(getattr(e.value, "__notes__", []))
    with pytest.raises(BlackBoxError, match="shape"):
        inv.solve(y, BlackBox(lambda x: linear_fn(x)[:, :2], output_shape=(M_OBS,)), prior=gauss,
                  sampler="enkg", ensemble_size=8, **FAST)

    class NaNOperator(Operator):  # a torch operator that does not validate its output itself
        input_shape, output_shape = (1, 4, 4), (M_OBS,)

        def forward(self, x):
            out = x.reshape(x.shape[0], -1)[:, :M_OBS].clone()
            out[-1] = float("nan")
            return out

    with pytest.raises(NonFiniteEnsembleError, match=r"item 1, particle 7"):
        inv.solve(y, NaNOperator(), prior=gauss, sampler="enkg", ensemble_size=8, **FAST)


def test_bad_knobs(gauss, problem):
    _, y = problem
    with pytest.raises(ValueError, match="ensemble_size"):
        inv.solve(y, _op(), prior=gauss, sampler="enkg", ensemble_size=1)
    with pytest.raises(ValueError, match="normalize"):
        inv.solve(y, _op(), prior=gauss, sampler="enkg", normalize="l1", ensemble_size=4, **FAST)
    with pytest.raises(ValueError, match="kalman_reg"):
        inv.solve(y, _op(), prior=gauss, sampler="enkg", normalize="kalman", kalman_reg=0.0, ensemble_size=4, **FAST)


def test_max_step_keeps_an_overshooting_ensemble_bounded(gauss, problem):
    """An unnormalised step with a large weight overshoots and diverges (a NaN error); the trust region bounds every
    particle's update by ``max_step sigma_i sqrt(d)`` and the run then fits the data. A bound no update reaches
    changes nothing."""
    _, y = problem
    kw = dict(prior=gauss, sampler="enkg", ensemble_size=37, batch=16, steps=20, updates=1, normalize="none")
    with pytest.raises(NonFiniteEnsembleError, match="after the Kalman step"):
        inv.solve(y, _op(), guidance=20, **kw)
    capped = inv.solve(y, _op(), guidance=20, max_step=0.2, **kw)
    assert float(capped.info["particles"].abs().max()) < 5 and _rel_misfit(capped.x, y).max() < 0.4
    assert float(capped.info["step_ratio"].max()) > 1 and bool((capped.info["capped"] > 0).all())
    assert capped.info["step_ratio"].shape == (capped.info["forward_calls"], 2)
    plain, loose = (inv.solve(y, _op(), guidance=2, max_step=c, **kw) for c in (None, 1e3))
    assert float(plain.info["step_ratio"].max()) < 1e3 and int(loose.info["capped"].sum()) == 0
    torch.testing.assert_close(loose.info["particles"], plain.info["particles"], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="max_step"):
        inv.solve(y, _op(), guidance=2, max_step=0, **kw)


def test_tiny_unet_prior_any_ensemble_size():
    from invsolve.priors import DiffusersPrior

    prior = DiffusersPrior(tiny_unet(), {"num_train_timesteps": 1000}, data_range=(-1, 1), name="tiny")
    fn = lambda x: np.tanh(x[:, 0, ::4, ::4]).reshape(x.shape[0], -1)  # noqa: E731
    y = torch.from_numpy(fn(np.random.default_rng(0).standard_normal((1, 1, 16, 16)).astype(np.float32)))
    res = inv.solve(y, BlackBox(fn, input_shape=(1, 16, 16)), prior=prior, sampler="enkg", ensemble_size=7,
                    batch=3, steps=6, updates=1, max_inner=2)
    assert res.x.shape == (1, 1, 16, 16) and torch.isfinite(res.info["particles"]).all()
    assert res.info["forward_evaluations"] == 7 * res.info["forward_calls"]


# ---------------------------------------------------------------------------------------------- DPS-GSG
def test_gsg_gradient_estimates_the_true_gradient(gauss):
    z = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    y = torch.zeros(2, M_OBS)
    At = torch.from_numpy(A).double()
    true = 2 * (z.reshape(2, -1).double() @ At.T) @ At  # grad of ||A z||^2
    for est in ("central", "forward"):
        gens = [torch.Generator().manual_seed(s) for s in (0, 1)]
        g, L, n = gsg_gradient(_op(), y, z, gens, gauss, 4000, 1e-3, est)
        cos = torch.nn.functional.cosine_similarity(g.reshape(2, -1).double(), true, dim=1)
        assert bool((cos > 0.9).all()), (est, cos)
        torch.testing.assert_close(L, (true.new_tensor(linear_fn(z.numpy())) ** 2).sum(1), rtol=1e-4, atol=1e-6)
        assert n == 2 * (4001 if est == "central" else 4001)


def test_dps_gsg_runs_on_a_numpy_black_box(gauss, problem):
    _, y = problem
    res = inv.solve(y, _op(), prior=gauss, sampler="dps-gsg", steps=50, queries=8, scale=0.5, clip=None,
                    jacobian="identity")
    assert res.x.shape == (2, 1, 4, 4) and torch.isfinite(res.x).all()
    assert res.info["forward_evaluations"] == 50 * 2 * 9 and res.info["forward_calls"] == 50
    with pytest.raises(InvsolveError, match="NaN"):
        inv.solve(y, BlackBox(lambda x: linear_fn(x) * np.nan), prior=gauss, sampler="dps-gsg", steps=3)


# ---------------------------------------------------------------------------------------------- operators, tasks
def test_phase_retrieval_operator():
    x = torch.rand(2, 3, 16, 16)
    op = PhaseRetrieval(16, 3)
    y = op(x)
    assert y.shape == (2, 3, 24, 24) and not y.is_complex()
    torch.testing.assert_close((y**2).sum((-2, -1)), (x**2).sum((-2, -1)), rtol=1e-4, atol=1e-4)  # Parseval
    torch.testing.assert_close(op(-x), y)
    torch.testing.assert_close(op(x.flip(-1, -2)), y, rtol=1e-4, atol=1e-4)  # point reflection (odd padding-free)
    torch.testing.assert_close(as_black_box(op)(x), y)


def test_saturating_blur():
    x = torch.rand(2, 3, 16, 16)
    op = SaturatingBlur(gain=2.0, image_size=16)
    y = op(x)
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
    lin = SaturatingBlur(gain=1e-4, image_size=16)
    torch.testing.assert_close(lin(x), lin.blur(x), rtol=1e-4, atol=1e-4)
    assert bool((op(x + 0.1) > y).all())  # monotone
    torch.testing.assert_close(as_black_box(op)(x), y)


def test_tasks_build(tmp_path):
    from invsolve.operators.navier_stokes import taylor_green_vorticity
    from invsolve.tasks import build_problem

    np.save(tmp_path / "w.npy", 5 * taylor_green_vorticity(16, k=2).numpy())
    p = build_problem({"task": "ns", "source": "file", "path": str(tmp_path / "w.npy"), "noise_sigma": 1.0})
    assert p.y.shape == (1, 1, 8, 8) and p.x_true.shape == (1, 1, 16, 16) and float(p.x_true.abs().max()) == 0.5
    p = build_problem({"task": "phase-retrieval", "index": [0]})
    assert isinstance(p.operator, BlackBox) and p.y.shape == (1, 3, 96, 96)
    p = build_problem({"task": "nonlinear-blur", "index": [0], "black_box": False})
    assert isinstance(p.operator, SaturatingBlur)
    p = build_problem({"task": "blackbox", "index": [0], "function": EXAMPLE_FN, "output_shape": [3, 32, 32]})
    assert p.y.shape == (1, 3, 32, 32)
    with pytest.raises(InvsolveError, match="function"):
        build_problem({"task": "blackbox", "function": "no_colon"})


def test_numpy_example_config_runs(tmp_path):
    from invsolve import reconstruct

    rec = reconstruct.main(str(ROOT / "configs/reconstruct/blackbox_numpy_example.yaml"),
                           [f"output.dir={tmp_path / 'out'}",
                            f"problem.function={EXAMPLE_FN}", "solver.steps=3", "solver.options.enkg.ensemble_size=3",
                            "solver.options.enkg.max_inner=1", "output.figure=false"], progress=False)
    assert (tmp_path / "out" / "reconstruction.npy").exists() and rec["metrics"]["enkg"]["psnr_mean"] > 0


def test_ns_config_reports_relative_l2_and_draws_a_signed_figure(tmp_path):
    """Vorticity has no fixed data range: `reconstruct` reports relative L2 and shows the field on a diverging map."""
    from invsolve import reconstruct
    from invsolve.operators.navier_stokes import taylor_green_vorticity

    np.save(tmp_path / "w.npy", 5 * taylor_green_vorticity(64, k=2).numpy())
    rec = reconstruct.main(str(ROOT / "configs/reconstruct/ns_enkg.yaml"),
                           ["problem.source=file", f"problem.path={tmp_path / 'w.npy'}", "solver.steps=3",
                            "solver.options.enkg.ensemble_size=2", "solver.options.enkg.max_inner=1",
                            f"output.dir={tmp_path / 'out'}"], progress=False)
    m = rec["metrics"]["enkg"]
    x = np.load(tmp_path / "out" / "reconstruction.npy")
    truth = 0.5 * taylor_green_vorticity(64, k=2).numpy()
    expected = np.linalg.norm(x[0, 0] - truth) / np.linalg.norm(truth)
    assert m["relative_l2_mean"] == pytest.approx(expected, rel=1e-4)
    assert (tmp_path / "out" / "figure.png").exists()
