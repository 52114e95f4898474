import pytest
import torch

from invsolve.linalg import cg, hutchinson_trace, power_iteration


def _hpd_batch(B, n, complex_, seed=0, cond=50.0):
    g = torch.Generator().manual_seed(seed)
    dt = torch.complex128 if complex_ else torch.float64
    Q, _ = torch.linalg.qr(torch.randn(B, n, n, dtype=dt, generator=g))
    ev = torch.logspace(0, torch.log10(torch.tensor(cond)).item(), n, dtype=torch.float64).expand(B, n)
    ev = ev * (1 + torch.arange(B, dtype=torch.float64)[:, None])  # different spectra per sample
    M = Q @ torch.diag_embed(ev.to(dt)) @ Q.mH
    b = torch.randn(B, n, dtype=dt, generator=g)
    return M, b


@pytest.mark.parametrize("complex_", [False, True])
def test_cg_matches_direct_solve(complex_):
    M, b = _hpd_batch(4, 12, complex_)
    res = cg(lambda v: (M @ v[..., None])[..., 0], b, max_iter=60, tol=1e-12)
    ref = torch.linalg.solve(M, b)
    assert torch.allclose(res.x, ref, atol=1e-8, rtol=1e-8)
    assert (res.residual_norm < 1e-9 * b.abs().norm(dim=1)).all()


@pytest.mark.parametrize("tol", [None, 1e-10])
def test_each_batch_member_converges_as_if_alone(tol):
    M, b = _hpd_batch(3, 10, True, seed=1)
    x0 = torch.randn_like(b)
    together = cg(lambda v: (M @ v[..., None])[..., 0], b, x0, max_iter=7, tol=tol)
    for i in range(3):
        alone = cg(lambda v, i=i: (M[i:i + 1] @ v[..., None])[..., 0], b[i:i + 1], x0[i:i + 1], max_iter=7, tol=tol)
        assert torch.allclose(together.x[i], alone.x[0], atol=1e-12, rtol=0)
        assert together.iterations[i] == alone.iterations[0]


def test_tolerance_mode_stops_early_and_freezes_converged_samples():
    M, b = _hpd_batch(2, 8, False, seed=2)
    M[0] = torch.eye(8, dtype=M.dtype)  # converges in one iteration
    res = cg(lambda v: (M @ v[..., None])[..., 0], b, max_iter=50, tol=1e-10)
    assert res.iterations[0] == 1
    assert res.iterations[1] > 1
    assert res.history.shape[0] == int(res.iterations.max()) + 1


def test_fixed_mode_runs_exactly_max_iter_and_energy_error_decreases():
    M, b = _hpd_batch(2, 30, True, seed=3, cond=1e3)
    K = lambda v: (M @ v[..., None])[..., 0]  # noqa: E731
    xs = torch.linalg.solve(M, b)

    def energy_err(x):  # CG minimises ||x - x*||_K over growing Krylov spaces: monotone in k
        e = x - xs
        return (e.conj() * K(e)).real.sum(-1)

    errs = [energy_err(cg(K, b, max_iter=k).x) for k in range(6)]
    res = cg(K, b, max_iter=5)
    assert res.history.shape == (6, 2)
    assert (res.iterations == 5).all()
    for a, b_ in zip(errs, errs[1:]):
        assert (b_ < a).all()


def test_warm_start_at_solution_is_a_fixed_point():
    M, b = _hpd_batch(2, 6, True, seed=4)
    x = torch.linalg.solve(M, b)
    res = cg(lambda v: (M @ v[..., None])[..., 0], b, x, max_iter=3)
    assert torch.allclose(res.x, x, atol=1e-10)


def test_reference_complex_inner_product_differs_from_hermitian_cg():
    M, b = _hpd_batch(1, 10, True, seed=5)
    K = lambda v: (M @ v[..., None])[..., 0]  # noqa: E731
    herm = cg(K, b, max_iter=3).x
    cocg = cg(K, b, max_iter=3, reference_complex_inner_product=True).x
    assert not torch.allclose(herm, cocg)


def test_cg_rejects_negative_iterations():
    with pytest.raises(ValueError, match="max_iter"):
        cg(lambda v: v, torch.ones(1, 3), max_iter=-1)


def test_power_iteration_and_hutchinson_trace():
    M, _ = _hpd_batch(2, 16, False, seed=6)
    K = lambda v: (M @ v[..., None])[..., 0]  # noqa: E731
    lam = power_iteration(K, torch.randn(2, 16, dtype=torch.float64), iterations=200)
    assert torch.allclose(lam, torch.linalg.eigvalsh(M)[:, -1], rtol=1e-3)
    est = hutchinson_trace(K, torch.zeros(2, 16, dtype=torch.float64), probes=4000,
                           generator=torch.Generator().manual_seed(0))
    tr = torch.diagonal(M, dim1=-2, dim2=-1).sum(-1)
    se = est.std(0) / est.shape[0] ** 0.5
    assert ((est.mean(0) - tr).abs() < 3 * se).all()
