"""Out of the box is the tuned result (issue #22): with no options but the step count, DDS beats the classical
reconstruction on real slices of other subjects and scanners that no prior here was trained on, noiseless and with
the noise actually added and its level passed as ``sigma_y``.

The fast test is a cheap version (one slice, 20 steps); the slow ones are the issue's check (50 steps, every slice);
``configs/bench/defaults.yaml`` runs the same problems through ``invsolve evaluate``."""
import numpy as np
import pytest
import torch

import invsolve as inv
from invsolve.eval.metrics import psnr
from invsolve.operators import MultiCoilMRI, coils, masks
from invsolve.operators.noise import GaussianNoise


def _mri(x, acc, sigma):
    op = MultiCoilMRI(coils.birdcage(8, (64, 64)), masks.uniform1d((64, 64), acc, 0.08, seed=0))
    y = op(x)
    if sigma:
        y = GaussianNoise(sigma, mask=op.mask)(y, torch.Generator().manual_seed(0))
    return op, y


def _gain(x, op, y, prior, steps, sigma_y=None):
    """PSNR of DDS with its defaults minus that of CG-SENSE, per image."""
    kw = {} if sigma_y is None else {"sigma_y": sigma_y}
    dds = inv.solve(y, op, prior=prior, sampler="dds", steps=steps, seed=0, **kw).x
    cg = inv.solve(y, op, sampler="cg").x
    return np.array(psnr(dds, x)) - np.array(psnr(cg, x)), dds


def test_dds_defaults_beat_cg_sense_on_an_unseen_real_slice(mri_prior):
    from invsolve.data.mri import dipy_slice

    x, _ = dipy_slice(64)
    op, y = _mri(x, 4, 0.0)
    gain, _ = _gain(x, op, y, mri_prior, steps=20)  # no sigma_y: estimated from the k-space
    assert gain[0] >= 2.0, gain


@pytest.mark.slow
@pytest.mark.parametrize("acc,sigma,margin", [(4, 0.0, 2.0), (4, 0.02, 2.0), (8, 0.0, 1.0), (8, 0.02, 1.0)])
def test_dds_defaults_beat_cg_sense_on_the_four_real_slices(mri_prior, acc, sigma, margin):
    from invsolve.data.mri import dipy_slice, unseen_real_slices

    x, names = unseen_real_slices(64) if acc == 4 else dipy_slice(64)
    op, y = _mri(x, acc, sigma)
    gain, _ = _gain(x, op, y, mri_prior, steps=50, sigma_y=sigma if sigma else None)
    assert (gain >= margin).all(), dict(zip(names, gain.round(2)))


@pytest.mark.slow
@pytest.mark.parametrize("sigma", [0.0, 0.2])
def test_dds_defaults_beat_fbp_and_cg_on_the_real_ct_slices(sigma):
    from invsolve.data.ct import heldout_ct_slices
    from invsolve.operators.ct import ParallelBeamCT, sparse_view_angles

    x, names = heldout_ct_slices(64)
    op = ParallelBeamCT(64, sparse_view_angles(16))
    y = op(x)
    if sigma:
        y = y + sigma * torch.randn(y.shape, generator=torch.Generator().manual_seed(0))
    dds = inv.solve(y, op, prior="ct-phantom", sampler="dds", steps=50, seed=0, sigma_y=sigma).x
    best = np.maximum(psnr(inv.solve(y, op, sampler="fbp").x, x, 1.0), psnr(inv.solve(y, op, sampler="cg").x, x, 1.0))
    gain = np.array(psnr(dds, x, 1.0)) - best
    assert (gain >= 2.0).all(), dict(zip(names, gain.round(2)))
