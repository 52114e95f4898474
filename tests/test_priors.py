import json
import time

import pytest
import torch
from _tiny import tiny_unet as _tiny_unet
from diffusers import DDPMPipeline, DDPMScheduler

import invsolve as inv
from invsolve.errors import InputFileError, UnknownNameError
from invsolve.priors import DiffusersPrior, load_prior
from invsolve.priors.registry import WEIGHTS_DIR


def tiny_unet(cin=2, cout=None, size=16, seed=0):
    return _tiny_unet(cin, cout, size, seed=seed)


SCHED = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear",
         "prediction_type": "epsilon"}


def test_flat_and_pipeline_directories_load_identically(tmp_path):
    unet = tiny_unet()
    ref = DiffusersPrior(unet, SCHED)
    unet.save_pretrained(tmp_path / "flat")
    DDPMScheduler(**SCHED).save_config(tmp_path / "flat")
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(**SCHED)).save_pretrained(tmp_path / "pipe")
    x = torch.randn(2, 2, 16, 16)
    for d in ("flat", "pipe"):
        p = load_prior(tmp_path / d)
        assert torch.equal(p.eps(x, 500), ref.eps(x, 500)), d
        assert torch.allclose(p.alphas_cumprod, ref.alphas_cumprod)


@pytest.mark.parametrize("ptype", ["sample", "v_prediction"])
def test_prediction_types_give_consistent_x0(ptype):
    """A network that predicts x0 (or v) exactly for a known x0 must give the same Tweedie estimate."""
    x0 = torch.randn(1, 2, 16, 16)
    noise = torch.randn(1, 2, 16, 16)
    sched = dict(SCHED, prediction_type=ptype)
    p0 = DiffusersPrior(tiny_unet(), sched)
    t = 300
    ab = p0.alpha_bar(t).float()
    xt = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    target = x0 if ptype == "sample" else ab.sqrt() * noise - (1 - ab).sqrt() * x0

    class Oracle(torch.nn.Module):
        config = p0.unet.config
        dtype = torch.float32

        def forward(self, x, t):
            return type("O", (), {"sample": target})()

    p = DiffusersPrior(tiny_unet(), sched)
    p.unet = Oracle()
    x0_hat, e = p.tweedie(xt, t)
    assert torch.allclose(x0_hat, x0, atol=1e-4)
    assert torch.allclose(e, noise, atol=1e-4)


def test_learned_variance_channels_are_dropped():
    p = DiffusersPrior(tiny_unet(cin=2, cout=4), SCHED)
    assert p.channels == 2 and p.eps(torch.randn(1, 2, 16, 16), 10).shape == (1, 2, 16, 16)


def test_ve_view_matches_vp_view_at_integer_timesteps():
    p = DiffusersPrior(tiny_unet(), SCHED)
    x0 = torch.randn(2, 2, 16, 16)
    t = 250
    ab = p.alpha_bar(t).float()
    sigma = ((1 - ab) / ab).sqrt()
    xt = ab.sqrt() * x0 + (1 - ab).sqrt() * torch.randn_like(x0)
    vp, _ = p.tweedie(xt, t)
    ve = p.denoise(xt / ab.sqrt(), sigma)
    assert torch.allclose(vp, ve, atol=1e-4)
    assert abs(float(p.t_of_sigma(sigma.double().reshape(1))) - t) < 1e-3
    s = p.sigmas(10)
    assert s.shape == (11,) and s[-1] == 0 and (s[:-1].diff() < 0).all()


def test_complex_mapping_round_trip():
    p = DiffusersPrior(tiny_unet(), SCHED, is_complex=True, data_range=(0, 2.0))
    z = torch.randn(3, 1, 16, 16, dtype=torch.complex64)
    assert torch.allclose(p.from_prior(p.to_prior(z)), z, atol=1e-6)
    assert torch.allclose(p.to_prior(z)[:, 0], z.real[:, 0] / 2)
    r = DiffusersPrior(tiny_unet(cin=1), SCHED, data_range=(0, 1))
    img = torch.rand(2, 1, 16, 16)
    assert torch.allclose(r.to_prior(img), 2 * img - 1)


def test_nfe_counts_batched_calls_and_chunking_keeps_results():
    p = DiffusersPrior(tiny_unet(), SCHED, max_batch=2)
    x = torch.randn(5, 2, 16, 16)
    full = DiffusersPrior(p.unet, SCHED).eps(x, 100)
    assert torch.allclose(p.eps(x, 100), full, atol=1e-6)
    assert p.nfe == 1


def test_unknown_prior_lists_embedded_names():
    with pytest.raises(UnknownNameError, match="mri-brain"):
        load_prior("mri-brian")


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(InputFileError, match="does not exist"):
        load_prior(str(tmp_path / "nope" / "deeper"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputFileError, match="config.json"):
        load_prior(tmp_path / "empty")


def test_offline_hub_id_fails_fast_with_instructions(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = time.time()
    with pytest.raises(InputFileError, match="Provide the weights locally"):
        load_prior("some-org/not-a-cached-model")
    assert time.time() - t < 20


def test_embedded_priors_have_cards_and_fit_the_size_budget():
    names = inv.available_priors()
    for name in ("mri-brain", "ct-phantom", "natural"):
        assert name in names
    for name in names:
        d = WEIGHTS_DIR / name
        meta = json.loads((d / "invsolve_prior.json").read_text())
        assert (d / "README.md").exists() and (d / "samples.png").exists()
        assert meta["training"]["steps"] > 0 and meta["training"]["hardware"]
        mb = sum(f.stat().st_size for f in d.rglob("*.safetensors")) / 2**20
        assert mb <= 10.0, (name, mb)


def test_embedded_mri_prior_properties(mri_prior):
    assert mri_prior.is_complex and mri_prior.image_size == (64, 64) and mri_prior.channels == 2
    assert mri_prior.operator_shape == (1, 64, 64)
    assert mri_prior.card.get("normalization") == "q99"


def test_mri_prior_denoises_heldout_slices(mri_prior, brain_test_images):
    """A trained prior must denoise held-out brain slices far better than the noisy input."""
    x, _ = brain_test_images
    x0 = mri_prior.to_prior(x)
    g = torch.Generator().manual_seed(0)
    t = 200
    ab = mri_prior.alpha_bar(t).float()
    xt = ab.sqrt() * x0 + (1 - ab).sqrt() * torch.randn(x0.shape, generator=g)
    with torch.no_grad():
        x0_hat, _ = mri_prior.tweedie(xt, t)
    noisy_err = ((xt / ab.sqrt() - x0) ** 2).mean()
    err = ((x0_hat - x0) ** 2).mean()
    assert err < noisy_err / 10


def test_ns_prior_denoises_heldout_fields():
    """The embedded Navier-Stokes prior denoises held-out vorticity fields (test seed stream, never trained on)."""
    from invsolve.tasks.ns import heldout_truth

    prior = inv.load_prior("ns-vorticity")
    assert prior.channels == 1 and prior.image_size == (64, 64) and not prior.is_complex
    w, _ = heldout_truth([0, 1])
    x0 = prior.to_prior(w / 10.0)  # operator domain = raw vorticity / 10
    for t, factor in ((200, 10.0), (500, 5.0)):
        ab = prior.alpha_bar(t).float()
        xt = ab.sqrt() * x0 + (1 - ab).sqrt() * torch.randn(x0.shape, generator=torch.Generator().manual_seed(t))
        with torch.no_grad():
            x0_hat, _ = prior.tweedie(xt, t)
        noisy_err = ((xt / ab.sqrt() - x0) ** 2).mean()
        assert ((x0_hat - x0) ** 2).mean() < noisy_err / factor, t
