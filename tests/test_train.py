import json

import pytest
import torch
import yaml

import invsolve as inv
from invsolve.cli import main
from invsolve.errors import UnknownNameError
from invsolve.train import load_recipe

TINY_MODEL = {"block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4,
              "down_block_types": ["DownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "UpBlock2D"]}


@pytest.fixture
def recipe(tmp_path):
    r = {"name": "tiny-brain", "output_dir": str(tmp_path / "run"),
         "data": {"kind": "mri-brain", "image_size": 32, "oversample": 1},
         "model": TINY_MODEL,
         "train": {"steps": 2, "batch_size": 2, "log_every": 1, "checkpoint_every": 1, "warmup_steps": 1,
                   "threads": 2},
         "prior": {"is_complex": True, "data_range": [0.0, 1.0], "normalization": "q99", "summary": "tiny test"},
         "export": {"dir": str(tmp_path / "prior"), "n_samples": 2, "sample_steps": 2}}
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(r))
    return p


def test_train_prior_exports_a_loadable_prior_with_model_card_and_resumes(recipe, tmp_path):
    assert main(["train-prior", str(recipe), "--no-progress"]) == 0
    d = tmp_path / "prior"
    meta = json.loads((d / "invsolve_prior.json").read_text())
    assert meta["training"]["steps"] == 2 and meta["is_complex"] and meta["normalization"] == "q99"
    assert "heldout" in meta and "denoise_psnr_db" in meta["heldout"]
    card = (d / "README.md").read_text()
    assert "wall time" in card and "MNI152" in card and "samples.png" in card
    assert (d / "samples.png").exists() and (d / "diffusion_pytorch_model.safetensors").exists()
    p = inv.load_prior(d)
    assert p.is_complex and p.image_size == (32, 32)
    out = p.eps(torch.randn(1, 2, 32, 32), 10)
    assert out.shape == (1, 2, 32, 32) and torch.isfinite(out).all()
    # resume: more steps continue from the checkpoint instead of starting over
    assert main(["train-prior", str(recipe), "train.steps=3", "--no-progress"]) == 0
    log = [json.loads(s) for s in (tmp_path / "run" / "checkpoint_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    assert json.loads((d / "invsolve_prior.json").read_text())["training"]["steps"] == 3


def test_recipe_unknown_keys_are_rejected(recipe):
    with pytest.raises(UnknownNameError, match="train.stepz"):
        load_recipe(recipe, ["train.stepz=5"])
    with pytest.raises(UnknownNameError, match="valid keys"):
        load_recipe(recipe, ["optimizer.lr=1"])


def test_two_stage_latent_recipe_exports_autoencoder_figure_and_card(tmp_path):
    """The natural-latent recipe shape (autoencoder, then latent UNet) at toy size: both stages export, the card
    describes both parts and links the held-out reconstruction figure, and the prior loads as a latent prior."""
    from invsolve.train import autoencoder_figure

    r = {"name": "tiny-latent", "output_dir": str(tmp_path / "run"),
         "data": {"kind": "natural", "image_size": 32},
         "vae": {"model": {"block_out_channels": [8, 16], "down_block_types": ["DownEncoderBlock2D"] * 2,
                           "up_block_types": ["UpDecoderBlock2D"] * 2, "latent_channels": 4, "layers_per_block": 1,
                           "norm_num_groups": 4},
                 "train": {"steps": 2}},
         "model": TINY_MODEL,
         "train": {"steps": 2, "batch_size": 2, "log_every": 1, "checkpoint_every": 1, "warmup_steps": 1,
                   "threads": 2},
         "prior": {"data_range": [0.0, 1.0], "summary": "tiny latent test"},
         "export": {"dir": str(tmp_path / "prior"), "n_samples": 2, "sample_steps": 2}}
    p = tmp_path / "tiny-latent.yaml"
    p.write_text(yaml.safe_dump(r))
    assert main(["train-prior", str(p), "--no-progress"]) == 0
    d = tmp_path / "prior"
    for f in ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors", "samples.png",
              "reconstructions.png"):
        assert (d / f).exists(), f
    meta = json.loads((d / "invsolve_prior.json").read_text())
    ae = meta["training"]["autoencoder"]
    assert meta["kind"] == "latent" and meta["latent_shape"] == [4, 16, 16] and ae["steps"] == 2
    assert 0 < ae["parameters"] < meta["training"]["parameters"]
    card = (d / "README.md").read_text()
    assert "AutoencoderKL" in card and "reconstructions.png" in card
    assert f"{meta['heldout']['autoencoder_recon_psnr_db']} dB" in card
    prior = inv.load_prior(d)
    x = torch.rand(3, 3, 32, 32)
    psnr = autoencoder_figure(prior, x, tmp_path / "rec.png")
    with torch.no_grad():
        rec = prior.decode(prior.encode(x)).clamp(0, 1)
    ref = 10 * torch.log10(1 / ((rec - x) ** 2).mean(dim=(1, 2, 3)))
    torch.testing.assert_close(torch.tensor(psnr), ref, rtol=0, atol=1e-4)
    assert (tmp_path / "rec.png").stat().st_size > 0
