"""Fan-beam CT (issue #3, optional part): geometry against analytic line integrals, rebinning, FBP, errors.

The adjoint, linearity, dtype/device and batching properties run in tests/test_operator_properties.py.
"""
import math

import numpy as np
import pytest
import torch

from invsolve.eval.metrics import psnr
from invsolve.operators import FanBeamCT, ParallelBeamCT, sparse_view_angles
from invsolve.tasks import build_problem

N = 64


def _disc(cx, cy, r, ss=4):
    """Anti-aliased disc (module coordinates: x right, y up, centre pixel N//2), ``(1, 1, N, N)`` float64."""
    rows, cols = torch.meshgrid(torch.arange(N), torch.arange(N), indexing="ij")
    X, Y = (cols - N // 2).double(), (N // 2 - rows).double()
    acc = torch.zeros(N, N, dtype=torch.float64)
    for i in range(ss):
        for j in range(ss):
            dx, dy = (i + 0.5) / ss - 0.5, (j + 0.5) / ss - 0.5
            acc += (((X + dx - cx) ** 2 + (Y + dy - cy) ** 2) < r * r).double()
    return (acc / ss**2)[None, None]


def _shepp_logan():
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize

    return torch.from_numpy(resize(shepp_logan_phantom(), (N, N), anti_aliasing=True))[None, None]


def test_line_integrals_of_a_disc_match_the_source_detector_geometry():
    """Chord lengths computed from the source position and the ray directions (fan angle turned clockwise from the
    central ray), independently of the projector's (θ, s) parametrisation and interpolation."""
    op = FanBeamCT(N, 2 * sparse_view_angles(90)).double()
    cx, cy, r = 7.0, -5.0, 12.0
    y = op(_disc(cx, cy, r))[0, 0]
    S = op.source_positions()  # (V, 2)
    central = -S / op.source_distance  # unit vectors from the source to the rotation centre
    g = op.gammas[None, :]
    c, s = torch.cos(g), torch.sin(g)
    d = torch.stack([central[:, None, 0] * c + central[:, None, 1] * s,
                     -central[:, None, 0] * s + central[:, None, 1] * c], -1)  # clockwise rotation by γ
    rel = torch.tensor([cx, cy], dtype=torch.float64) - S[:, None, :]
    dist = (rel[..., 0] * d[..., 1] - rel[..., 1] * d[..., 0]).abs()
    chord = 2 * (r * r - dist**2).clamp_min(0).sqrt()
    corr = np.corrcoef(y.flatten().numpy(), chord.flatten().numpy())[0, 1]
    assert corr > 0.999
    assert float((y - chord).norm() / chord.norm()) < 0.03  # rasterised disc edge vs exact chords
    assert abs(float(y.sum() / chord.sum()) - 1) < 0.01


def test_rebinning_converges_to_the_parallel_beam_sinogram():
    """Fan data rebinned to parallel rays equals ParallelBeamCT at the same angles up to interpolation error,
    which shrinks with finer detectors (a wrong sign or offset in the geometry would not shrink)."""
    a = 2 * sparse_view_angles(180)
    x = _shepp_logan()
    direct = ParallelBeamCT(N, a).double()(x)
    errs = []
    for D in (91, 181, 361):
        op = FanBeamCT(N, a, n_detectors=D).double()
        errs.append(float((op.rebin(op(x)) - direct).norm() / direct.norm()))
    assert errs[0] < 0.05 and errs[2] < 0.01 and errs[2] < errs[1] < errs[0]


def test_fbp_of_a_full_scan_approaches_parallel_fbp():
    a = 2 * sparse_view_angles(360)
    x = _shepp_logan()
    par = ParallelBeamCT(N, a).double()
    ref = float(psnr(par.fbp(par(x)), x, 1.0)[0])
    fine = FanBeamCT(N, a, n_detectors=181).double()
    default = FanBeamCT(N, a).double()
    assert float(psnr(fine.fbp(fine(x)), x, 1.0)[0]) > ref - 1.0
    assert float(psnr(default.fbp(default(x)), x, 1.0)[0]) > ref - 6.0


def test_fan_beam_ct_task_and_least_squares_baseline():
    import invsolve as inv

    p = build_problem(dict(task="ct", beam="fan", n_views=32, index=[0]))
    assert isinstance(p.operator, FanBeamCT) and p.meta["beam"] == "fan"
    assert p.operator.n_views == 32 and float(p.operator.angles.max()) > math.pi  # full scan over [0, 2π)
    fbp = float(psnr(inv.solve(p.y, p.operator, sampler="fbp").x, p.x_true, 1.0)[0])
    cg = float(psnr(inv.solve(p.y, p.operator, sampler="cg").x, p.x_true, 1.0)[0])
    assert fbp > 20 and cg > fbp


@pytest.mark.parametrize("kw,match", [
    (dict(source_distance=40.0), "source_distance must exceed"),
    (dict(fan_angle=4.0), "fan_angle must lie"),
    (dict(n_detectors=1), "n_detectors must be >= 2"),
])
def test_bad_geometry_is_an_error(kw, match):
    with pytest.raises(ValueError, match=match):
        FanBeamCT(N, sparse_view_angles(8), **kw)


def test_fbp_refuses_a_short_scan_and_task_checks_beam():
    op = FanBeamCT(32, sparse_view_angles(16))  # views over [0, π) only
    with pytest.raises(ValueError, match="full scan"):
        op.fbp(torch.zeros(1, *op.output_shape))
    with pytest.raises(ValueError, match="problem.beam"):
        build_problem(dict(task="ct", beam="cone", index=[0]))
    with pytest.raises(ValueError, match="fan only"):
        build_problem(dict(task="ct", source_distance=100.0, index=[0]))
