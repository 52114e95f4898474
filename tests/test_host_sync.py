"""Host synchronisations: fixed-iteration CG makes none, tolerance-mode CG at most one per iteration, and a DDS
step makes none (issue #24). Counted with a TorchDispatchMode (invsolve/_syncs.py) on the CPU and the meta device,
so the property is checked on machines without a GPU; the CUDA versions are marked ``gpu``."""
import pytest
import torch

from invsolve._syncs import HostSyncCounter
from invsolve.linalg import cg
from invsolve.operators import MultiCoilMRI, coils, masks
from invsolve.priors.adm import ADMPrior, ADMUNet, adm_config
from invsolve.samplers.dds import dds


def _system(B=3, n=12, complex_=True, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    dt = torch.complex64 if complex_ else torch.float32
    M = torch.randn(B, n, n, generator=g, dtype=dt)
    A = (M @ M.mH + 0.5 * torch.eye(n)).to(device)
    b = torch.randn(B, n, generator=g, dtype=dt).to(device)

    def K(v):
        return (A @ v[..., None])[..., 0]

    return K, b


def test_counter_sees_every_kind_of_host_read():
    # the instrument itself: .item(), float(), bool(), `if t`, indexing with a 0-d tensor and boolean masks
    x, t = torch.arange(10.0), torch.tensor(3)
    with HostSyncCounter("cpu") as c:
        x.sum().item()
        float(x[0])
        bool((x > 2).any())
        x[t]
        x[x > 4]
    assert c.counts["read"] == 5, c.summary()
    with HostSyncCounter("cpu") as c:  # device-side arithmetic only
        y = torch.where(x > 2, x / (x + 1), 0.0)
        (y * x).sum(dtype=torch.float64)
    assert c.total == 0


@pytest.mark.parametrize("complex_", [True, False])
@pytest.mark.parametrize("warm", [False, True])
def test_fixed_iteration_cg_makes_no_host_synchronisation(complex_, warm):
    K, b = _system(complex_=complex_)
    x0 = 0.1 * b if warm else None
    for iters in (1, 5, 12):
        with HostSyncCounter("cpu") as c:
            res = cg(K, b, x0, max_iter=iters)
        assert c.total == 0, f"{iters} iterations:\n{c.summary()}"
        assert res.iterations.tolist() == [iters] * 3
    with HostSyncCounter("cpu") as c:
        cg(K, b, max_iter=5, reference_complex_inner_product=complex_)
    assert c.total == 0, c.summary()


def test_tolerance_cg_makes_at_most_one_synchronisation_per_iteration():
    K, b = _system()
    for iters in (3, 8, 30):
        with HostSyncCounter("cpu") as c:
            res = cg(K, b, max_iter=iters, tol=1e-5)
        done = int(res.iterations.max())
        assert 1 <= c.total <= iters, c.summary()
        assert c.total <= done + 1  # one check before each iteration run, plus the one that stops the loop
    # a generous tolerance stops early: fewer checks than the iteration budget
    with HostSyncCounter("cpu") as c:
        res = cg(K, b, max_iter=30, tol=0.5)
    assert c.total == int(res.iterations.max()) + 1 < 30


def _tiny_complex_adm(device):
    torch.manual_seed(0)
    net = ADMUNet(adm_config("adm-fastmri320-complex", image_size=32, model_channels=32, num_head_channels=32,
                             channel_mult=(1, 2)))
    return ADMPrior(net, is_complex=True).to(device)


def _mri_problem(device):
    op = MultiCoilMRI(coils.birdcage(4, (32, 32)), masks.uniform1d((32, 32), 4, 0.1, seed=0)).to(device)
    y = torch.zeros(2, 4, 32, 32, dtype=torch.complex64, device=device)
    return op, y


# DDS in fixed-iteration mode with a known noise level (the tolerance mode checks convergence on the host once per
# CG iteration, and estimating sigma_y reads the data)
FIXED = dict(cg_iters=3, cg_tol=None, sigma_y=0.0)


def test_dds_loop_reads_nothing_from_the_device_on_meta():
    # On the meta device tensors have no data: any read of a device value inside the loop fails, and copies back
    # to the host are recorded. The only one must be the diagnostics copy after the loop (independent of steps).
    prior = _tiny_complex_adm("meta")
    op, y = _mri_problem("meta")
    counts = {}
    for steps in (2, 5):
        with HostSyncCounter("meta") as c:
            out = dds(prior, op, y, generators=[torch.Generator().manual_seed(i) for i in range(2)], steps=steps,
                      **FIXED)
        assert out.x.device.type == "meta" and out.x.shape == (2, 1, 32, 32)
        counts[steps] = dict(c.counts)
    assert counts[2] == counts[5] and set(counts[2]) == {"d2h"}, counts  # the diagnostics (residuals, iterations)


def test_dds_step_reads_no_tensor_value_on_cpu():
    prior = _tiny_complex_adm("cpu")
    op, y = _mri_problem("cpu")
    with HostSyncCounter("cpu") as c:
        dds(prior, op, y, generators=[torch.Generator().manual_seed(i) for i in range(2)], steps=3, **FIXED)
    assert c.total == 0, c.summary()


@pytest.mark.gpu
def test_cuda_fixed_iteration_cg_runs_under_sync_debug_error_mode():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    K, b = _system(device="cuda")
    cg(K, b, max_iter=2)  # warm-up (lazy CUDA/cuBLAS initialisation may synchronise once)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        res = cg(K, b, 0.1 * b, max_iter=10)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    ref = cg(lambda v: K(v.cuda()).cpu(), b.cpu(), 0.1 * b.cpu(), max_iter=10)
    assert torch.allclose(res.x.cpu(), ref.x, atol=1e-4, rtol=1e-4)
    with HostSyncCounter("cuda") as c:
        cg(K, b, max_iter=20, tol=1e-4)
    assert 1 <= c.total <= 20, c.summary()


@pytest.mark.gpu
def test_cuda_dds_syncs_do_not_grow_with_steps():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    prior = _tiny_complex_adm("cuda")
    op, y = _mri_problem("cuda")
    counts = []
    for steps in (2, 6):
        with HostSyncCounter("cuda") as c:
            dds(prior, op, y, generators=[torch.Generator().manual_seed(i) for i in range(2)], steps=steps)
        counts.append(c.total)
    assert counts[0] == counts[1], counts


def test_cg_graph_needs_cuda_and_is_a_declared_neutral_option():
    from invsolve.errors import InvalidValueError
    from invsolve.samplers import get_sampler

    spec = get_sampler("dds")
    from invsolve.eval.identity import NEUTRAL

    assert spec.defaults["cg_graph"] is False and "cg_graph" in NEUTRAL["dds"]
    prior = _tiny_complex_adm("cpu")
    op, y = _mri_problem("cpu")
    with pytest.raises(InvalidValueError, match="cg_graph=True replays a captured CUDA graph.* the data is on cpu"):
        dds(prior, op, y, generators=[torch.Generator()] * 2, steps=2, cg_graph=True)
    assert prior.nfe == 0  # refused before any network call
