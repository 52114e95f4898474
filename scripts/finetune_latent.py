"""Fine-tune the decoder of an exported latent prior (e.g. ``natural-latent``) and re-export it.

Only the decoder half of the ``AutoencoderKL`` (``post_quant_conv`` + ``decoder``) is trained; the encoder, and so
the latent space the latent UNet was trained on, is left untouched, so the UNet stays valid without retraining.
Loss: L1 + MSE between training crops and the decoding of a sampled latent (``mean + std · n`` of the frozen
encoder), as in stage 1 of ``invsolve train-prior``. The loop is :func:`invsolve.train._fit` (AdamW, warm-up +
cosine, EMA, resumable checkpoint in ``--work``), the export is :func:`invsolve.train.export` (same layout,
sample grid, held-out figures); afterwards the model card keeps the UNet's original training record, records
both autoencoder stages, and shows held-out reconstructions (``reconstructions.png``).

    nice -n 19 python scripts/finetune_latent.py --steps 3000 --max-minutes 120 --threads 1
    python scripts/finetune_latent.py --steps 3000 --export-only     # export the last checkpoint
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf


def heldout_recon_psnr(vae, held: torch.Tensor) -> float:
    """Mean PSNR (dB, images in [0, 1]) of ``decode(encoder mean)`` on prior-space images ``held`` in [-1, 1]."""
    with torch.no_grad():
        rec = vae.decode(vae.encode(held).latent_dist.mean).sample.clamp(-1, 1)
    return float((10 * torch.log10(4.0 / ((rec - held) ** 2).mean(dim=(1, 2, 3)))).mean())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prior", default="natural-latent", help="embedded name or directory of the latent prior")
    ap.add_argument("--recipe", default="configs/train/natural-latent.yaml", help="the prior's training recipe")
    ap.add_argument("--work", default="runs/natural-latent-ft", help="checkpoint / log directory")
    ap.add_argument("--out", default=None, help="export directory (default: WORK/prior)")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--max-minutes", type=float, default=None, help="stop (and export) after this much training")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--export-only", action="store_true", help="export from the last checkpoint without training")
    args = ap.parse_args(argv)

    from diffusers.training_utils import EMAModel

    from invsolve.data.base import build_train_source
    from invsolve.priors import load_prior
    from invsolve.train import _fit, _hardware, _model_card, export, load_recipe

    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    prior = load_prior(args.prior)  # float32 copy of the shipped fp16 weights
    base_meta = dict(prior.card)
    vae, unet = prior.vae, prior.unet
    cfg = load_recipe(args.recipe, [f"output_dir={work}", f"export.dir={args.out or work / 'prior'}"])
    src = build_train_source(**OmegaConf.to_container(cfg.data, resolve=True), device=device)
    held = src.heldout()
    psnr_before = heldout_recon_psnr(vae, held)
    print(f"held-out autoencoder reconstruction PSNR before: {psnr_before:.2f} dB")

    dec = torch.nn.ModuleDict({"post_quant_conv": vae.post_quant_conv, "decoder": vae.decoder})
    dec.requires_grad_(True)
    tc = OmegaConf.create({"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "min_lr_ratio": 0.1,
                           "warmup_steps": args.warmup, "weight_decay": 0.0, "ema_decay": args.ema,
                           "grad_clip": 1.0, "mixed_precision": "no", "checkpoint_every": 100, "log_every": 50,
                           "seed": 1, "max_minutes": None if args.export_only else args.max_minutes})
    if args.export_only:
        tc.steps = 0

    def loss_fn(g):
        x = src.sample(args.batch_size, g, device)
        with torch.no_grad():
            dist = vae.encode(x).latent_dist
            z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=g, device=device)
        rec = vae.decode(z).sample.float()
        return F.l1_loss(rec, x) + F.mse_loss(rec, x)

    ema, step, elapsed = _fit(dec, loss_fn, tc, work / "decoder_checkpoint.pt", "natural-latent/decoder", device,
                              progress=False)
    if args.export_only:  # _fit with steps = 0 only loads the checkpoint
        st = torch.load(work / "decoder_checkpoint.pt", map_location=device, weights_only=False)
        step, elapsed = st["step"], st["elapsed"]
    ema.copy_to(dec.parameters())
    vae.eval().requires_grad_(False)
    psnr_after = heldout_recon_psnr(vae, held)
    print(f"held-out autoencoder reconstruction PSNR after {step} decoder steps: {psnr_after:.2f} dB")

    # re-export with the unchanged UNet (a zero-decay EMA holds exactly its weights)
    unet_ema = EMAModel(unet.parameters(), decay=0.0)
    old_ae = base_meta["training"]["autoencoder"]
    vae_info = {"vae": vae, "scaling_factor": prior.scaling_factor, "latent_channels": prior.channels,
                "latent_size": prior.image_size[0], "steps": old_ae["steps"], "minutes": old_ae["wall_minutes"]}
    from diffusers import DDPMScheduler

    sched = DDPMScheduler.from_config(prior.scheduler_config)
    t0 = time.time()
    dest = export(cfg, unet, unet_ema, sched, src, base_meta["training"]["steps"],
                  base_meta["training"]["wall_minutes"] * 60, device, vae_info)
    print(f"export took {time.time() - t0:.0f} s")

    meta = json.loads((dest / "invsolve_prior.json").read_text())
    tr = meta["training"]
    tr["hardware"] = base_meta["training"]["hardware"]  # the UNet (and autoencoder stage 1) trained there
    tr["batch_size"] = base_meta["training"]["batch_size"]
    tr["autoencoder"]["decoder_finetune"] = {
        "steps": step, "batch_size": args.batch_size, "lr": args.lr, "wall_minutes": round(elapsed / 60, 2),
        "hardware": _hardware(device) + f", {args.threads} thread(s), shared machine (niced)",
        "what": "decoder + post_quant_conv only (encoder and latent UNet unchanged); L1 + MSE; EMA " + str(args.ema),
        "script": "scripts/finetune_latent.py",
        "heldout_recon_psnr_db_before": round(psnr_before, 2), "heldout_recon_psnr_db_after": round(psnr_after, 2)}
    (dest / "invsolve_prior.json").write_text(json.dumps(meta, indent=2))

    from invsolve.plotting import save_grid

    with torch.no_grad():
        rec = vae.decode(vae.encode(held).latent_dist.mean).sample.clamp(-1, 1)
    pairs = torch.stack([held, rec], 1).flatten(0, 1)
    save_grid(((pairs + 1) / 2).permute(0, 2, 3, 1).numpy(), dest / "reconstructions.png", ncols=8,
              suptitle="held-out crops (left) and autoencoder reconstructions (right)")
    ae = tr["autoencoder"]
    card = _model_card(cfg, meta).replace(
        "## Samples",
        "## Autoencoder\n"
        f"- stage 1 (`invsolve train-prior`): {old_ae['steps']} steps, {old_ae['wall_minutes']} min on "
        f"{tr['hardware']}; held-out reconstruction PSNR {round(psnr_before, 2)} dB\n"
        f"- decoder fine-tune (`{ae['decoder_finetune']['script']}`): {step} steps at batch {args.batch_size}, "
        f"{ae['decoder_finetune']['wall_minutes']} min on {ae['decoder_finetune']['hardware']}; the encoder, the "
        f"latent space and the UNet are unchanged; held-out reconstruction PSNR {round(psnr_after, 2)} dB "
        f"(12 held-out crops, images in [0, 1])\n\n![reconstructions](reconstructions.png)\n\n## Samples")
    card = card.replace("- steps:", "- latent UNet steps:").replace("- wall time:", "- latent UNet wall time:")
    (dest / "README.md").write_text(card)
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
