"""CUDA tests (issue #24): the operator property suite, CG (eager and CUDA-graph), one short run of every sampler, the
inference options of a prior, and CPU-vs-GPU agreement of DDS on one image. Marked ``gpu``: deselected by default,
skipped where CUDA is missing (``pytest -m gpu``); ``benchmarks/gpu_real_scale.sh`` runs them on a GPU machine."""
import copy

import pytest
import torch

import invsolve as inv
from invsolve.linalg import GraphedCG, cg
from invsolve.operators import MultiCoilMRI, ParallelBeamCT, adjoint_mismatch, coils, masks, sparse_view_angles

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture
def exact_fp32():
    """No TF32 in convolutions/matmuls while comparing with the CPU (PyTorch enables it for cuDNN by default)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


# ---------------------------------------------------------------------------------------------- operators
def _operator_cases():
    from test_operator_properties import OPERATORS

    return OPERATORS


@pytest.mark.parametrize("name", sorted(_operator_cases()))
def test_operator_properties_on_cuda(name):
    from test_operator_properties import _rand

    op, shape, cplx = _operator_cases()[name]()
    g_op = copy.deepcopy(op).to("cuda")
    assert all(b.device.type == "cuda" for b in g_op.buffers())
    x, x2 = _rand(shape, cplx, 0), _rand(shape, cplx, 2)
    y = _rand(tuple(op(x).shape), op(x).is_complex(), 1)
    xc, yc, x2c = x.cuda(), y.cuda(), x2.cuda()
    assert adjoint_mismatch(g_op, xc, yc) < 1e-10, name
    assert torch.allclose(g_op.normal(x2c), g_op.adjoint(g_op(x2c)), atol=1e-10), name
    assert torch.allclose(g_op(xc).cpu(), op(x), atol=1e-9, rtol=1e-9), name  # CUDA agrees with the CPU
    assert torch.allclose(g_op.adjoint(yc).cpu(), op.adjoint(y), atol=1e-9, rtol=1e-9), name


# ---------------------------------------------------------------------------------------------- CG
def _system(B=4, n=32, device="cuda"):
    g = torch.Generator().manual_seed(0)
    M = torch.randn(B, n, n, generator=g, dtype=torch.complex128)
    A = (M @ M.mH + torch.eye(n)).to(device)
    b = torch.randn(B, n, generator=g, dtype=torch.complex128).to(device)
    return (lambda v: (A @ v[..., None])[..., 0]), b


def test_cg_on_cuda_matches_the_cpu_and_converges():
    K, b = _system()
    Kc, bc = _system(device="cpu")
    for tol in (None, 1e-10):
        r = cg(K, b, max_iter=60, tol=tol)
        rc = cg(Kc, bc, max_iter=60, tol=tol)
        assert torch.allclose(r.x.cpu(), rc.x, atol=1e-8)
        assert torch.equal(r.iterations.cpu(), rc.iterations)
    assert (cg(K, b, max_iter=60).residual_norm / b.norm(dim=1) < 1e-8).all()


def test_graphed_cg_replays_the_eager_solve():
    K, b = _system(B=3, n=64)
    x0 = 0.1 * b
    solver = GraphedCG(max_iter=12)
    for scale in (1.0, -2.0, 0.5):  # new right-hand sides and warm starts each call, one capture
        got = solver(K, scale * b, scale * x0)
        ref = cg(K, scale * b, scale * x0, max_iter=12)
        assert torch.allclose(got.x, ref.x, atol=1e-12, rtol=1e-12)
        assert torch.allclose(got.history, ref.history, rtol=1e-12)
    assert solver.captures == 1
    solver(K, b[:2], x0[:2])  # another shape: captured again
    assert solver.captures == 2
    with pytest.raises(ValueError, match="CUDA graphs"):
        solver(K, b.cpu(), x0.cpu())


# ---------------------------------------------------------------------------------------------- samplers
# Self-contained problems (no data packages needed on the GPU machine): procedural phantoms with smooth phase, and a
# small complex ADM with random weights (the embedded priors need diffusers; see the optional test at the end).
ARCH = dict(image_size=64, model_channels=32, num_head_channels=32, channel_mult=(1, 2))


def _phantoms(n, seed=0):
    from invsolve.data.ct import sample_phantoms

    return sample_phantoms(n, 64, generator=torch.Generator().manual_seed(seed))


def _mri(batch=1):
    from invsolve.data.mri import smooth_phase, to_complex

    g = torch.Generator().manual_seed(1)
    x = to_complex(_phantoms(batch), smooth_phase(batch, 64, g, "cpu"))
    op = MultiCoilMRI(coils.birdcage(8, (64, 64)), masks.uniform1d((64, 64), 4, 0.08, seed=0))
    return op, op(x), x


def _adm():
    return inv.load_prior("adm-fastmri320-complex", random_init=True, arch_overrides=ARCH)


SHORT = {  # sampler -> (knobs of a short run, problem)
    "adjoint": ({}, "mri"), "cg": ({"iterations": 5}, "mri"), "pinv": ({}, "mri"), "tv": ({"iterations": 5}, "mri"),
    "wiener": ({"iterations": 5, "reg": 0.01}, "mri"), "fbp": ({}, "ct"),
    "dds": ({"steps": 3}, "mri"), "dds-3d": ({"steps": 3}, "ct-volume"), "ddnm": ({"steps": 3}, "mri"),
    "diffpir": ({"steps": 3}, "mri"), "pigdm": ({"steps": 3}, "mri"), "mcg": ({"steps": 3}, "mri"),
    "dps": ({"steps": 3}, "mri"), "dps-gsg": ({"steps": 2, "queries": 4}, "mri"),
    "stsl": ({"steps": 2}, "mri"), "psld": ({"steps": 3}, "mri"),
    "enkg": ({"steps": 2, "ensemble_size": 8, "batch": 8}, "mri"),
}


def test_every_sampler_has_a_short_cuda_run():
    assert set(SHORT) == set(inv.available_samplers()), "add new samplers to SHORT"


@pytest.mark.parametrize("name", sorted(SHORT))
def test_sampler_short_run_on_cuda(name):
    knobs, problem = SHORT[name]
    if problem.startswith("ct"):  # dds-3d: a CT volume (4 slices) with a real-valued ADM
        op = ParallelBeamCT(64, sparse_view_angles(30))
        x = _phantoms(4 if problem == "ct-volume" else 1)
        y = op(x)
        prior = inv.load_prior("adm-aapm256", random_init=True, arch_overrides=ARCH) if problem == "ct-volume" else None
    else:
        op, y, x = _mri()
        prior = _adm()
    knobs = dict(knobs)
    steps = knobs.pop("steps", None)
    res = inv.solve(y, op, prior=prior, sampler=name, steps=steps, seed=0, device="cuda", **knobs)
    assert res.x.device.type == "cuda" and res.x.shape == x.shape
    assert torch.isfinite(torch.view_as_real(res.x) if res.x.is_complex() else res.x).all()
    assert res.config["device"] == "cuda" and res.peak_memory is not None and res.peak_memory > 0


def test_dds_cpu_and_gpu_agree_on_one_image(exact_fp32):
    op, y, x = _mri()
    kw = dict(prior=_adm(), sampler="dds", steps=20, seed=3, gamma=10.0)
    cpu = inv.solve(y, op, device="cpu", **kw)
    gpu = inv.solve(y, op, device="cuda", **kw)
    rel = float((gpu.x.cpu() - cpu.x).norm() / cpu.x.norm())
    assert rel < 1e-4, rel  # float32 vs float64 on the CPU differ by ~6e-7 on this problem
    assert gpu.config["data_scale"] == pytest.approx(cpu.config["data_scale"], rel=1e-5)
    # the CUDA-graph data consistency changes nothing
    graphed = inv.solve(y, op, device="cuda", cg_graph=True, **kw)
    assert torch.allclose(graphed.x, gpu.x, atol=1e-5 * float(gpu.x.abs().max()))


def test_dds_cpu_and_gpu_agree_with_the_embedded_prior(exact_fp32):
    pytest.importorskip("diffusers")
    from invsolve.eval.metrics import psnr

    op, y, x = _mri()
    kw = dict(prior="mri-brain", sampler="dds", steps=20, seed=3, gamma=10.0)
    cpu = inv.solve(y, op, device="cpu", **kw)
    gpu = inv.solve(y, op, device="cuda", **kw)
    assert float((gpu.x.cpu() - cpu.x).norm() / cpu.x.norm()) < 1e-3
    assert abs(psnr(gpu.x.cpu(), x)[0] - psnr(cpu.x, x)[0]) < 0.05


def test_inference_options_on_cuda():
    arch = dict(ARCH, model_channels=64, channel_mult=(1, 2, 2))
    ref = inv.load_prior("adm-fastmri320-complex", random_init=True, arch_overrides=arch, device="cuda")
    x = torch.randn(2, 2, 64, 64, device="cuda")
    with torch.no_grad():
        e = ref.eps(x, 500)
        for opts, tol in [(dict(dtype="bf16"), 5e-2), (dict(dtype="fp16"), 1e-2), (dict(channels_last=True), 1e-4),
                          (dict(compile=True), 1e-4), (dict(dtype="bf16", channels_last=True, compile=True), 5e-2)]:
            p = inv.load_prior("adm-fastmri320-complex", random_init=True, arch_overrides=arch, device="cuda",
                               **opts)
            got = p.eps(x, 500)
            assert got.dtype == torch.float32 and got.stride()[-1] == 1  # NCHW layout handed back
            assert float((got - e).norm() / e.norm()) < tol, opts
            assert p.card["inference"]["channels_last"] == bool(opts.get("channels_last"))
