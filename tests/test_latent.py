"""Latent priors: invsolve and Stable-Diffusion-style directories, empty-prompt embeddings, gradients, size checks.

Tiny randomly initialised ``AutoencoderKL`` (x2) + ``UNet2DModel`` / ``UNet2DConditionModel`` saved to tmp dirs.
"""
import json
import warnings

import pytest
import torch
from _tiny import tiny_unet

import invsolve as inv
from invsolve.errors import InvsolveError, MissingDependencyError, ShapeError
from invsolve.operators import Blur, Inpainting, gaussian_kernel, random_mask
from invsolve.priors.latent import EMBEDS_FILE, LatentPrior, load_latent_prior

SCHED = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
         "prediction_type": "epsilon"}


def _vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(8, 16), latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         layers_per_block=1, norm_num_groups=8, sample_size=16).eval()


def _cond_unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(1)
    return UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32),
                                layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=12,
                                attention_head_dim=4, norm_num_groups=8).eval()


def _unet():
    return tiny_unet(cin=4, size=8, blocks=(16, 32), groups=8, seed=2)


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    """A Stable-Diffusion-style pipeline directory without a text encoder."""
    from diffusers import DDPMScheduler

    d = tmp_path_factory.mktemp("sd")
    _cond_unet().save_pretrained(d / "unet")
    _vae().save_pretrained(d / "vae")
    DDPMScheduler(**SCHED).save_config(d / "scheduler")
    return d


@pytest.fixture(scope="module")
def latent_prior(tmp_path_factory):
    """invsolve's own latent layout (UNet2DModel), as written by train-prior."""
    from diffusers import DDPMScheduler

    d = tmp_path_factory.mktemp("lat")
    _unet().save_pretrained(d / "unet")
    _vae().save_pretrained(d / "vae")
    DDPMScheduler(**SCHED).save_config(d)
    (d / "invsolve_prior.json").write_text(json.dumps({"kind": "latent", "scaling_factor": 0.5, "name": "tiny",
                                                       "data_range": [0.0, 1.0]}))
    return inv.load_prior(str(d))


def test_conditional_pipeline_loads_like_in_memory(sd_dir):
    with pytest.warns(UserWarning, match="zero prompt embedding"):
        p = inv.load_prior(str(sd_dir))
    assert isinstance(p, LatentPrior) and p.operator_shape == (3, 16, 16) and p.image_size == (8, 8)
    assert p.scaling_factor == pytest.approx(0.18215)  # the VAE config's default latent scale
    q = LatentPrior(_cond_unet(), _vae(), SCHED, 0.18215, prompt_embeds=torch.zeros(1, 77, 12))
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(p.eps(z, 500), q.eps(z, 500))
    torch.testing.assert_close(p.decode(z), q.decode(z))


def test_precomputed_empty_prompt_embedding(sd_dir, tmp_path):
    from safetensors.torch import save_file

    emb = torch.randn(1, 5, 12, generator=torch.Generator().manual_seed(3))
    save_file({"embeds": emb}, str(tmp_path / "e.safetensors"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no zero-embedding warning when an embedding is given
        p = load_latent_prior(str(sd_dir), prompt_embeds=tmp_path / "e.safetensors")
    q = LatentPrior(_cond_unet(), _vae(), SCHED, 0.18215, prompt_embeds=emb)
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(p.eps(z, 300), q.eps(z, 300))
    zeros = LatentPrior(_cond_unet(), _vae(), SCHED, 0.18215, prompt_embeds=torch.zeros(1, 5, 12))
    assert not torch.allclose(p.eps(z, 300), zeros.eps(z, 300))
    with pytest.raises(ShapeError, match="expects"):
        load_latent_prior(str(sd_dir), prompt_embeds=torch.zeros(1, 5, 7))


def test_embedding_file_in_pipeline_dir_and_text_encoder_without_transformers(sd_dir, tmp_path):
    import shutil

    from safetensors.torch import save_file

    d = tmp_path / "pipe"
    shutil.copytree(sd_dir, d)
    (d / "text_encoder").mkdir()
    (d / "text_encoder" / "config.json").write_text(json.dumps({"architectures": ["CLIPTextModel"]}))
    try:
        import transformers  # noqa: F401
    except ImportError:
        with pytest.raises(MissingDependencyError, match=EMBEDS_FILE):
            inv.load_prior(str(d))
    save_file({"e": torch.ones(1, 4, 12)}, str(d / EMBEDS_FILE))
    p = inv.load_prior(str(d))  # the precomputed file wins over the text encoder
    torch.testing.assert_close(p.unet.prompt_embeds, torch.ones(1, 4, 12))


def test_invsolve_layout_and_gradients(latent_prior):
    p = latent_prior
    assert p.name == "tiny" and p.scaling_factor == 0.5 and p.operator_shape == (3, 16, 16)
    assert not any(q.requires_grad for q in p.parameters())
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    z = p.encode(x)
    z.retain_grad()
    x0, _ = p.tweedie(z, 400)
    p.decode(x0).square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0 and z.grad.abs().sum() > 0
    with pytest.raises(ShapeError, match=r"\(B, 3, 16, 16\)"):
        p.encode(torch.rand(1, 3, 32, 32))


@pytest.mark.parametrize("sampler", ["stsl", "psld"])
def test_latent_samplers_run_and_count_nfe(latent_prior, sampler):
    op = Inpainting(random_mask((16, 16), 0.5, seed=0))
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    res = inv.solve(op(x), op, prior=latent_prior, sampler=sampler, steps=3, seed=0, device="cpu")
    assert res.x.shape == x.shape and torch.isfinite(res.x).all()
    assert res.nfe == (3 * 5 if sampler == "stsl" else 3)


def test_pixel_sampler_rejects_latent_prior(latent_prior):
    op = Inpainting(random_mask((16, 16), 0.5, seed=0))
    with pytest.raises(InvsolveError, match="latent prior"):
        inv.solve(torch.zeros(1, 3, 16, 16), op, prior=latent_prior, sampler="dds", steps=2)


def test_decoder_size_mismatch_is_a_clear_error(latent_prior):
    y = torch.zeros(1, 3, 32, 32)
    sized = Blur(gaussian_kernel(5, 1.0), image_size=32)  # solve() compares operator and decoded shapes
    with pytest.raises(ShapeError, match=r"\(3, 16, 16\).*\(None, 32, 32\)"):
        inv.solve(y, sized, prior=latent_prior, sampler="stsl", steps=2)
    unsized = Blur(gaussian_kernel(5, 1.0))  # shape known only from y: the sampler checks A^T y
    for sampler in ("stsl", "psld"):
        with pytest.raises(ShapeError, match=r"3, 16, 16\).*\((1, )?3, 32, 32\)"):
            inv.solve(y, unsized, prior=latent_prior, sampler=sampler, steps=2)


def test_embedded_natural_latent_prior_shape():
    p = inv.load_prior("natural-latent")
    assert p.is_latent and p.operator_shape == (3, 64, 64) and p.image_size == (16, 16) and p.downsample == 4
