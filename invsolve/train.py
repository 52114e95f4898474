"""``invsolve train-prior RECIPE``: train a diffusers ``UNet2DModel`` diffusion prior.

DDPM noise-prediction training (``DDPMScheduler``), AdamW with warm-up and cosine decay, EMA weights
(``diffusers.training_utils.EMAModel``), bf16 autocast on CUDA, resumable checkpoints, a tqdm progress bar, and
at the end an export in the ``save_pretrained`` (safetensors) layout with ``invsolve_prior.json``, a sample grid
and a model card that records data, resolution, steps, wall time, hardware and held-out figures.

A run writes only into its own directory (default ``outputs/train/<name>``, see :mod:`invsolve.train_output`);
installing the result as an embedded prior is the separate step ``invsolve train-prior RECIPE --export-embedded``.
Every stage says what it does when it starts (data, model, training bar, sample grid bar, held-out evaluation).
"""
from __future__ import annotations

import json
import math
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from .data.base import build_train_source

DEFAULTS = {
    "name": "prior",
    "output_dir": None,  # None: outputs/train/<name>
    "data": {"kind": "???", "image_size": 64},
    "model": {},
    "objective": "diffusion",  # "diffusion" (DDPM, scheduler: below) or "flow" (flow matching, flow: below)
    "scheduler": {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02,
                  "prediction_type": "epsilon", "clip_sample": False},
    "flow": {"shift": 1.0, "t_sampling": "logit-normal", "logit_mean": 0.0, "logit_std": 1.0},
    "train": {"steps": 20000, "batch_size": 64, "lr": 2e-4, "min_lr_ratio": 0.1, "warmup_steps": 500,
              "weight_decay": 0.0, "ema_decay": 0.9995, "grad_clip": 1.0, "mixed_precision": "auto",
              "checkpoint_every": 1000, "log_every": 100, "seed": 0, "max_minutes": None, "device": None,
              "init_from": None, "threads": None},
    "prior": {"is_complex": False, "data_range": [0.0, 1.0], "summary": "", "display_cmap": "gray"},
    "vae": None,
    "export": {"dir": None, "dtype": "float16", "n_samples": 16, "sample_steps": 100, "heldout_eval": True},
}


def load_recipe(path, overrides: Sequence[str] = ()):
    """Recipe YAML merged over :data:`DEFAULTS` and ``key=value`` overrides (unknown keys are errors)."""
    from .config import check_keys, load_mapping, parse_overrides  # shared unknown-key check

    base = OmegaConf.create(DEFAULTS)
    OmegaConf.set_struct(base, False)
    user = load_mapping(path, "recipe", "sections name, data, model, train, prior, export")
    check_keys(user, base, allow_free=("data", "model", "prior", "vae"))
    cfg = OmegaConf.merge(base, user)
    if overrides:
        ov = parse_overrides(overrides)
        check_keys(ov, cfg, allow_free=("data", "model", "prior", "vae"))
        cfg = OmegaConf.merge(cfg, ov)
    _check_objective(cfg)
    return cfg


def _stage(msg: str) -> None:
    """One line on stderr when a stage starts (so a run shows progress from its first second)."""
    import sys

    print(f"[train-prior] {msg}", file=sys.stderr, flush=True)


def _check_objective(cfg):
    from .errors import InvalidValueError

    if cfg.objective not in ("diffusion", "flow"):
        raise InvalidValueError(f"recipe objective={cfg.objective!r} is not accepted; expected 'diffusion' or 'flow'")
    if cfg.objective == "flow" and cfg.get("vae") is not None:
        raise InvalidValueError("recipe objective='flow' trains pixel priors; a vae: section is not supported")
    if cfg.flow.t_sampling not in ("uniform", "logit-normal"):
        raise InvalidValueError(f"recipe flow.t_sampling={cfg.flow.t_sampling!r} is not accepted; expected "
                                "'uniform' or 'logit-normal'")
    for key, ok in (("shift", cfg.flow.shift > 0), ("logit_std", cfg.flow.logit_std > 0)):
        if not ok:
            raise InvalidValueError(f"recipe flow.{key}={cfg.flow[key]!r} is not accepted; expected a number > 0")


def _lr_lambda(step: int, warmup: int, total: int, min_ratio: float) -> float:
    if step < warmup:
        return (step + 1) / warmup
    prog = min((step - warmup) / max(total - warmup, 1), 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * prog))


def _hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda}), torch {torch.__version__}"
    return (f"CPU {platform.processor() or platform.machine()} ({os.cpu_count()} cores, {torch.get_num_threads()} "
            f"torch threads), torch {torch.__version__}")


def _atomic_save(obj, path: Path):
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _device(tc) -> torch.device:
    device = torch.device(tc.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


def _fit(model, loss_fn, tc, ckpt: Path, name: str, device, progress: bool = True, use_ema: bool = True):
    """Generic resumable training loop: AdamW + warm-up/cosine, optional EMA, bf16 autocast, time budget.

    ``loss_fn(step_generator) -> scalar loss``. Returns ``(ema or None, step, elapsed_seconds)``.
    """
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    amp = tc.mixed_precision
    amp_dtype = torch.bfloat16 if (amp == "bf16" or (amp == "auto" and device.type == "cuda")) else None
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    budget = None if tc.max_minutes is None else float(tc.max_minutes) * 60
    clock = {"elapsed": 0.0}  # with a time budget the cosine decay follows max(step, time) progress

    def lr_at(s: int) -> float:
        total = tc.steps
        if budget is not None and clock["elapsed"] > 0:
            total = min(total, max(int(s * budget / clock["elapsed"]), tc.warmup_steps + 1))
        return _lr_lambda(s, tc.warmup_steps, total, tc.min_lr_ratio)

    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    ema = EMAModel(model.parameters(), decay=tc.ema_decay, use_ema_warmup=True, power=3 / 4) if use_ema else None
    step, elapsed = 0, 0.0
    if ckpt.exists():
        st = torch.load(ckpt, map_location=device, weights_only=False)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        lr_sched.load_state_dict(st["lr_sched"])
        if ema is not None:
            ema.load_state_dict(st["ema"])
            ema.to(device)
        step, elapsed = st["step"], st["elapsed"]
        print(f"resumed {name} from step {step} ({elapsed / 60:.1f} min so far)")
    g = torch.Generator(device=device).manual_seed(int(tc.seed) * 1000003 + step)

    def save():
        _atomic_save({"model": model.state_dict(), "opt": opt.state_dict(), "lr_sched": lr_sched.state_dict(),
                      "ema": ema.state_dict() if ema is not None else None, "step": step, "elapsed": elapsed}, ckpt)

    log = open(ckpt.parent / f"{ckpt.stem}_log.jsonl", "a")
    t0 = time.time()
    bar = tqdm(total=tc.steps, initial=step, disable=not progress, desc=f"train {name}", dynamic_ncols=True,
               mininterval=5)
    loss_acc, n_acc = 0.0, 0
    model.train()
    while step < tc.steps:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = loss_fn(g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if tc.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        clock["elapsed"] = elapsed + time.time() - t0
        lr_sched.step()
        if ema is not None:
            ema.step(model.parameters())
        step += 1
        loss_acc += loss.detach()
        n_acc += 1
        if step % tc.log_every == 0 or step == tc.steps:
            mean_loss = float(loss_acc / n_acc)
            loss_acc, n_acc = 0.0, 0
            log.write(json.dumps({"step": step, "loss": mean_loss, "lr": lr_sched.get_last_lr()[0],
                                  "minutes": (elapsed + time.time() - t0) / 60}) + "\n")
            log.flush()
            bar.set_postfix(loss=f"{mean_loss:.4f}")
        bar.update(1)
        if step % tc.checkpoint_every == 0:
            elapsed += time.time() - t0
            t0 = time.time()
            save()
        if budget is not None and elapsed + time.time() - t0 > budget:
            print(f"{name}: time budget of {tc.max_minutes} min reached at step {step}")
            break
    bar.close()
    elapsed += time.time() - t0
    save()
    log.close()
    model.eval()
    return ema, step, elapsed


def _diffusion_loss(unet, sched, batch_fn):
    ab = sched.alphas_cumprod
    pt = sched.config.prediction_type

    def loss_fn(g):
        x0 = batch_fn(g)
        device = x0.device
        noise = torch.randn(x0.shape, generator=g, device=device)
        t = torch.randint(0, sched.config.num_train_timesteps, (x0.shape[0],), generator=g, device=device)
        a = ab.to(device)[t].reshape(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        target = noise if pt == "epsilon" else x0 if pt == "sample" else a.sqrt() * noise - (1 - a).sqrt() * x0
        pred = unet(xt.contiguous(memory_format=torch.channels_last), t).sample
        return F.mse_loss(pred.float(), target)

    return loss_fn


def train_autoencoder(cfg, src, device, out: Path, progress: bool = True) -> dict:
    """Stage 1 of a latent recipe: train (or load) an ``AutoencoderKL`` on ``src`` (prior space [-1, 1]).

    Loss: L1 + MSE reconstruction + ``kl_weight`` · KL. Returns a dict with the frozen ``vae``, its
    ``scaling_factor`` (1 / std of latents), ``encode(x_prior_space, g)`` for stage 2, latent shape, figures.
    """
    from diffusers import AutoencoderKL

    vc = cfg.vae
    tc = OmegaConf.merge(OmegaConf.create(DEFAULTS["train"]), cfg.train, vc.get("train", {}))
    kw = OmegaConf.to_container(vc.model, resolve=True)
    kw.setdefault("in_channels", src.channels)
    kw.setdefault("out_channels", src.channels)
    kw.setdefault("sample_size", src.image_size[0])
    vae = AutoencoderKL(**kw).to(device)
    kl_w = float(vc.get("kl_weight", 1e-6))

    def loss_fn(g):
        x = src.sample(tc.batch_size, g, device)
        dist = vae.encode(x).latent_dist
        z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=g, device=device)
        rec = vae.decode(z).sample.float()
        return F.l1_loss(rec, x) + F.mse_loss(rec, x) + kl_w * dist.kl().mean() / x[0].numel()

    ema, step, elapsed = _fit(vae, loss_fn, tc, out / "vae_checkpoint.pt", f"{cfg.name}/vae", device, progress)
    ema.copy_to(vae.parameters())
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        g = torch.Generator(device=device).manual_seed(123)
        lat = torch.cat([vae.encode(src.sample(64, g, device)).latent_dist.mean for _ in range(8)])
        scaling = float(1.0 / lat.float().std())

    def encode(x, g):
        with torch.no_grad():
            dist = vae.encode(x).latent_dist
            return (dist.mean + dist.std * torch.randn(dist.mean.shape, generator=g, device=x.device)) * scaling

    return {"vae": vae, "scaling_factor": scaling, "encode": encode, "latent_channels": lat.shape[1],
            "latent_size": lat.shape[-1], "steps": step, "minutes": round(elapsed / 60, 2)}




def flow_times(n: int, g: torch.Generator, device, t_sampling: str = "logit-normal", logit_mean: float = 0.0,
               logit_std: float = 1.0, shift: float = 1.0) -> torch.Tensor:
    """``n`` training times in (0, 1): uniform, or logit-normal ``sigmoid(m + s z)`` (Esser et al. 2024), then
    shifted ``shift t / (1 + (shift - 1) t)`` as ``FlowMatchEulerDiscreteScheduler`` does."""
    if t_sampling == "uniform":
        t = torch.rand(n, generator=g, device=device)
    else:
        t = torch.sigmoid(logit_mean + logit_std * torch.randn(n, generator=g, device=device))
    return shift * t / (1 + (shift - 1) * t)


def _flow_loss(unet, sched, batch_fn, fc):
    """Conditional flow matching (rectified flow): ``x_t = (1 - t) x0 + t eps``, target velocity ``eps - x0``; the
    network sees the timestep ``t * num_train_timesteps`` (the diffusers convention)."""
    n_train = sched.config.num_train_timesteps

    def loss_fn(g):
        x0 = batch_fn(g)
        noise = torch.randn(x0.shape, generator=g, device=x0.device)
        t = flow_times(x0.shape[0], g, x0.device, fc.t_sampling, fc.logit_mean, fc.logit_std, fc.shift)
        tb = t.reshape(-1, 1, 1, 1)
        xt = (1 - tb) * x0 + tb * noise
        pred = unet(xt.contiguous(memory_format=torch.channels_last), t * n_train).sample
        return F.mse_loss(pred.float(), noise - x0)

    return loss_fn


def make_scheduler(cfg):
    """The recipe's scheduler: ``DDPMScheduler`` (``objective: diffusion``) or ``FlowMatchEulerDiscreteScheduler``
    (``objective: flow``: ``scheduler.num_train_timesteps`` and ``flow.shift``)."""
    from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

    if cfg.get("objective", "diffusion") == "flow":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=int(cfg.scheduler.num_train_timesteps),
                                               shift=float(cfg.flow.shift))
    return DDPMScheduler(**OmegaConf.to_container(cfg.scheduler, resolve=True))


def train(cfg, progress: bool = True, overwrite: bool = False) -> Path:
    """Run (or resume) training for a recipe; returns the export directory.

    A recipe with a ``vae:`` section trains a latent prior in two stages (autoencoder, then latent UNet).
    Every check that needs no computation runs first (:func:`invsolve.train_output.check_recipe`, the run
    directory: never inside the package, resumed only for the same recipe, replaced only with ``overwrite``).
    """
    from .train_output import check_recipe, check_run_dir

    check_recipe(cfg)
    out, state = check_run_dir(cfg, overwrite)
    from diffusers import UNet2DModel

    tc = cfg.train
    if tc.threads:
        torch.set_num_threads(int(tc.threads))
    device = _device(tc)
    if state == "restart":
        _stage(f"--overwrite: removing the previous contents of {out}")
        shutil.rmtree(out)
    _stage(f"{'resuming' if state == 'resume' else 'starting'} run {cfg.name!r} in {out} on {device}")
    out.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, out / "recipe.yaml")
    torch.manual_seed(tc.seed)
    t0 = time.time()
    _stage(f"building the training data (data.kind={cfg.data.kind}) ...")
    src = build_train_source(**OmegaConf.to_container(cfg.data, resolve=True), device=device)
    _stage(f"training data ready in {time.time() - t0:.1f} s: {src.description}")
    batch_fn = lambda g: src.sample(tc.batch_size, g, device)  # noqa: E731
    vae_info = None
    if cfg.get("vae") is not None:
        _stage("stage 1 of 2: training the autoencoder")
        vae_info = train_autoencoder(cfg, src, device, out, progress)
        enc = vae_info["encode"]
        batch_fn = lambda g: enc(src.sample(tc.batch_size, g, device), g)  # noqa: E731
        channels, size = vae_info["latent_channels"], vae_info["latent_size"]
    else:
        channels, size = src.channels, src.image_size[0]
    model_kw = OmegaConf.to_container(cfg.model, resolve=True)
    model_kw.setdefault("sample_size", size)
    model_kw.setdefault("in_channels", channels)
    model_kw.setdefault("out_channels", channels)
    unet = UNet2DModel(**model_kw).to(device)
    if tc.init_from:
        unet.load_state_dict(UNet2DModel.from_pretrained(tc.init_from, torch_dtype=torch.float32).state_dict())
    unet = unet.to(memory_format=torch.channels_last)
    sched = make_scheduler(cfg)
    if cfg.get("objective", "diffusion") == "flow":
        if vae_info:
            from .errors import InvalidValueError

            raise InvalidValueError("recipe objective='flow' trains pixel priors; a vae: section is not supported")
        loss = _flow_loss(unet, sched, batch_fn, cfg.flow)
    else:
        loss = _diffusion_loss(unet, sched, batch_fn)
    _stage(f"training the UNet ({sum(p.numel() for p in unet.parameters()) / 1e6:.2f} M parameters, "
           f"{tc.steps} steps at batch {tc.batch_size}, objective {cfg.get('objective', 'diffusion')})")
    ema, step, elapsed = _fit(unet, loss, tc, out / "checkpoint.pt", cfg.name, device, progress)
    return export(cfg, unet, ema, sched, src, step, elapsed, device, vae_info, progress=progress)


def export(cfg, unet, ema, sched, src, step: int, elapsed: float, device, vae_info: Optional[dict] = None,
           progress: bool = True) -> Path:
    """Write EMA weights (safetensors), scheduler config, metadata, sample grid and model card."""
    from diffusers import UNet2DModel

    from .plotting import displayable, save_grid
    from .priors.diffusers_prior import DiffusersPrior
    from .samplers.unconditional import sample_ddim
    from .train_output import export_dir

    ec = cfg.export
    dest = export_dir(cfg)
    _stage(f"exporting to {dest}")
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    ema_unet = UNet2DModel.from_config(unet.config).to(device)
    ema.copy_to(ema_unet.parameters())
    ema_unet.eval()
    dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[ec.dtype]
    # Figures below use the weights as shipped (rounded to the export dtype, computed in float32).
    ema_unet.to(dtype).save_pretrained(tmp / "unet" if vae_info else tmp, safe_serialization=True)
    ema_unet.to(torch.float32)
    sched.save_config(tmp)
    pc = OmegaConf.to_container(cfg.prior, resolve=True)
    n_params = sum(p.numel() for p in ema_unet.parameters())
    if vae_info:
        from .priors.latent import LatentPrior

        vae = vae_info["vae"]
        vae.to(dtype).save_pretrained(tmp / "vae", safe_serialization=True)
        vae.to(torch.float32)
        prior = LatentPrior(ema_unet, vae, dict(sched.config), vae_info["scaling_factor"],
                            data_range=tuple(pc["data_range"]), name=cfg.name).to(device)
        n_params += sum(p.numel() for p in vae.parameters())
    elif cfg.get("objective", "diffusion") == "flow":
        from .priors.flow import flow_prior_from_diffusers

        prior = flow_prior_from_diffusers(ema_unet, dict(sched.config), is_complex=pc["is_complex"],
                                          data_range=tuple(pc["data_range"]), name=cfg.name).to(device)
    else:
        prior = DiffusersPrior(ema_unet, dict(sched.config), is_complex=pc["is_complex"],
                               data_range=tuple(pc["data_range"]), name=cfg.name).to(device)

    # the sample grid of a run trained fewer than sample_steps steps (a trial run) shows noise at any step
    # count, so it uses as many DDIM steps as training steps (at least 10)
    grid_steps = min(int(ec.sample_steps), max(int(step), 10))
    note = "" if grid_steps == int(ec.sample_steps) else f" (trial run of {step} steps: export.sample_steps=" \
                                                           f"{ec.sample_steps} applies from {ec.sample_steps} steps on)"
    _stage(f"sample grid: {ec.n_samples} unconditional samples, {grid_steps} DDIM steps{note}")
    samples = sample_ddim(prior, int(ec.n_samples), steps=grid_steps, seed=0, device=device, progress=progress)
    with torch.no_grad():
        if vae_info:  # decoded images, mapped to [0, 1]
            lo, hi = prior.data_range
            shown = (prior.decode(samples) - lo) / (hi - lo)
        else:
            shown = samples if pc["is_complex"] else (samples + 1) / 2
    save_grid(displayable(shown, pc["is_complex"]),
              tmp / "samples.png", ncols=8, cmap=pc["display_cmap"],
              suptitle=f"{cfg.name}: {ec.n_samples} unconditional DDIM samples ({grid_steps} steps, "
                       f"unclipped), step {step}")
    if ec.heldout_eval and src.heldout is not None:
        _stage("held-out evaluation (Tweedie denoising at t = 50, 200, 500)")
    heldout = _heldout_eval(prior, src, device, vae_info) if ec.heldout_eval else {}
    if vae_info and src.heldout is not None:
        autoencoder_figure(prior, (src.heldout() + 1) / 2, tmp / "reconstructions.png")
    size_mb = sum(f.stat().st_size for f in tmp.rglob("*.safetensors")) / 2**20
    meta = {
        "name": cfg.name, "kind": "latent" if vae_info else "diffusers", "is_complex": pc["is_complex"],
        "data_range": pc["data_range"],
        "summary": pc.get("summary") or f"{src.channels}-channel {src.image_size[0]}x{src.image_size[1]} prior",
        "image_size": list(src.image_size), "channels": src.channels, "display_cmap": pc["display_cmap"],
        "training": {"steps": step, "batch_size": int(cfg.train.batch_size), "wall_minutes": round(elapsed / 60, 2),
                     "hardware": _hardware(device), "parameters": n_params, "weights_mb": round(size_mb, 2),
                     "weights_dtype": ec.dtype, "data": src.description, "data_info": src.info},
        "heldout": heldout,
    }
    meta.update({k: v for k, v in pc.items() if k not in meta})  # e.g. "normalization"
    if vae_info:
        meta["scaling_factor"] = vae_info["scaling_factor"]
        meta["latent_shape"] = [vae_info["latent_channels"], vae_info["latent_size"], vae_info["latent_size"]]
        meta["training"]["autoencoder"] = {"steps": vae_info["steps"], "wall_minutes": vae_info["minutes"],
                                           "parameters": sum(p.numel() for p in vae.parameters()),
                                           "recipe": OmegaConf.to_container(cfg.vae, resolve=True)}
    (tmp / "invsolve_prior.json").write_text(json.dumps(meta, indent=2))
    (tmp / "README.md").write_text(_model_card(cfg, meta))
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    print(f"exported {cfg.name} to {dest} ({size_mb:.1f} MB, {step} steps, {elapsed / 60:.1f} min)")
    return dest


@torch.no_grad()
def _heldout_eval(prior, src, device, vae_info: Optional[dict] = None) -> dict:
    """Tweedie denoising PSNR (prior space, peak-to-peak 2) on held-out vs training images at a few timesteps.

    A prior that generalises denoises held-out images about as well as training images.
    """
    if src.heldout is None:
        return {}
    held = src.heldout().to(device)
    g = torch.Generator(device=device).manual_seed(7)
    train = src.sample(held.shape[0], g, device)
    if vae_info:  # evaluate in latent space; also report the autoencoder's held-out reconstruction PSNR
        vae = vae_info["vae"]
        rec = vae.decode(vae.encode(held).latent_dist.mean).sample
        vae_psnr = (10 * torch.log10(4.0 / ((rec - held) ** 2).mean(dim=(1, 2, 3)))).mean()
        held, train = (vae.encode(v).latent_dist.mean * vae_info["scaling_factor"] for v in (held, train))
    out = {"n_heldout": int(held.shape[0]), "heldout_set": src.info.get("heldout_name", "held-out"),
           "denoise_psnr_db": {}}
    for t in (50, 200, 500):
        row = {}
        for label, x0 in (("heldout", held), ("train", train)):
            gg = torch.Generator(device=device).manual_seed(t)
            noise = torch.randn(x0.shape, generator=gg, device=device)
            ab = prior.alpha_bar(t).float()
            xt = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
            x0_hat, _ = prior.tweedie(xt, t)
            mse = ((x0_hat - x0) ** 2).mean(dim=(1, 2, 3))
            row[label] = round(float((10 * torch.log10(4.0 / mse)).mean()), 2)
        out["denoise_psnr_db"][f"t={t}"] = row
    if vae_info:
        out["autoencoder_recon_psnr_db"] = round(float(vae_psnr), 2)
    return out


@torch.no_grad()
def autoencoder_figure(prior, x: torch.Tensor, path: Path, n: int = 8) -> list:
    """Save ``n`` images (top row) over their reconstructions ``D(E(x))`` (bottom row) to ``path``.

    ``x``: ``(B, C, H, W)`` images scaled to [0, 1] (mapped to the prior's data range before encoding).
    Returns the per-image PSNR (dB, data range [0, 1]) of the reconstructions, shown in the titles.
    """
    from .plotting import displayable, save_grid

    lo, hi = prior.data_range
    dev = next(prior.vae.parameters()).device
    x = x[:n].to(dev, torch.float32)
    rec = ((prior.decode(prior.encode(lo + (hi - lo) * x)) - lo) / (hi - lo)).clamp(0, 1)
    psnr = (10 * torch.log10(1.0 / ((rec - x) ** 2).mean(dim=(1, 2, 3)))).tolist()
    k = x.shape[0]
    save_grid(displayable(torch.cat([x, rec]), False), path, ncols=k, cmap="gray",
              titles=["held-out"] * k + [f"D(E(x)) {p:.1f} dB" for p in psnr],
              suptitle=f"{prior.name}: held-out images (top) and autoencoder reconstructions (bottom), "
                       f"mean {sum(psnr) / k:.2f} dB")
    return psnr


def _model_card(cfg, meta) -> str:
    tr = meta["training"]
    ae = tr.get("autoencoder")
    if ae:
        model = (f"- diffusers `AutoencoderKL` ({ae.get('parameters', 0) / 1e6:.2f} M parameters, "
                 f"{meta['latent_shape'][0]}x{meta['latent_shape'][1]}x{meta['latent_shape'][2]} latents, scaling "
                 f"factor {meta['scaling_factor']:.4f}) + latent `UNet2DModel` "
                 f"({(tr['parameters'] - ae.get('parameters', 0)) / 1e6:.2f} M); together {tr['parameters'] / 1e6:.2f}"
                 f" M parameters, weights in {tr['weights_dtype']} ({tr['weights_mb']} MB, safetensors)")
    else:
        model = (f"- diffusers `UNet2DModel`, {tr['parameters'] / 1e6:.2f} M parameters, weights in "
                 f"{tr['weights_dtype']} ({tr['weights_mb']} MB, safetensors)")
    lines = [
        f"# Model card: `{meta['name']}`", "",
        meta["summary"], "",
        "## Model",
        model,
        f"- input/output: {meta['channels']} channel(s) at {meta['image_size'][0]}x{meta['image_size'][1]}, "
        f"{'complex images as [Re, Im]' if meta['is_complex'] else 'real images'}; operator-domain data range "
        f"{meta['data_range']} ↔ prior space [-1, 1]",
        _objective_line(cfg),
        "",
        "## Training",
        f"- data: {tr['data']}",
        f"- steps: {tr['steps']} at batch {tr['batch_size']}, AdamW lr {cfg.train.lr} "
        f"(warm-up {cfg.train.warmup_steps}, cosine to {cfg.train.min_lr_ratio}×), EMA {cfg.train.ema_decay}",
        f"- wall time: {tr['wall_minutes']} min on {tr['hardware']}",
        f"- recipe: `configs/train/{meta['name']}.yaml` (reproduce with `invsolve train-prior "
        f"configs/train/{meta['name']}.yaml`)",
        "",
    ]
    if ae:
        h = meta.get("heldout", {})
        lines[-1:-1] = [
            f"- autoencoder (stage 1): {ae['steps']} steps at batch {tr['batch_size']}, {ae['wall_minutes']} min, "
            f"loss L1 + MSE + {cfg.vae.get('kl_weight', 1e-6)} x KL; the latent UNet (stage 2) is trained on its "
            "sampled, scaled latents"]
        if "autoencoder_recon_psnr_db" in h:
            lines += ["## Autoencoder reconstructions", "",
                      f"Held-out reconstruction PSNR of D(E(x)) (prior space): {h['autoencoder_recon_psnr_db']} dB "
                      f"on {h['n_heldout']} held-out images. No latent sampler can do better than its autoencoder.",
                      "", "![reconstructions](reconstructions.png)", ""]
    lines += ["## Samples", "", "![samples](samples.png)", ""]
    if meta.get("heldout"):
        h = meta["heldout"]
        lines += ["## Held-out evaluation", "",
                  f"Tweedie denoising PSNR (dB, prior space) on {h['n_heldout']} held-out images "
                  f"({h['heldout_set']}) vs the same number of training draws:", "",
                  "| timestep | held-out | training |", "|---|---|---|"]
        for k, v in h["denoise_psnr_db"].items():
            lines.append(f"| {k} | {v['heldout']} | {v['train']} |")
        lines.append("")
    lines += ["Reconstruction figures for this prior are in `BENCHMARKS.md`.", ""]
    return "\n".join(lines)


def _objective_line(cfg) -> str:
    if cfg.get("objective", "diffusion") == "flow":
        fc = cfg.flow
        times = ("uniform" if fc.t_sampling == "uniform" else
                 f"logit-normal (mean {fc.logit_mean}, std {fc.logit_std})")
        return (f"- flow matching (rectified flow, velocity prediction v = eps - x0 on x_t = (1 - t) x0 + t eps), "
                f"diffusers FlowMatchEulerDiscreteScheduler, {cfg.scheduler.num_train_timesteps} train timesteps, "
                f"shift {fc.shift}; training times t {times}")
    return (f"- DDPM epsilon prediction, {cfg.scheduler.num_train_timesteps} steps, {cfg.scheduler.beta_schedule} "
            f"betas {cfg.scheduler.beta_start}–{cfg.scheduler.beta_end}")


def main(recipe: str, overrides: Optional[Sequence[str]] = None, progress: bool = True, overwrite: bool = False,
         export_embedded: bool = False) -> Path:
    """``invsolve train-prior``: train (or resume) the recipe's run; with ``export_embedded``, instead install the
    run's finished export as the embedded prior ``name`` (:func:`invsolve.train_output.install_embedded`)."""
    cfg = load_recipe(recipe, overrides or ())
    if export_embedded:
        from .train_output import install_embedded

        return install_embedded(cfg, overwrite=overwrite)
    return train(cfg, progress=progress, overwrite=overwrite)


def export_from_checkpoint(recipe: str, overrides: Sequence[str] = ()) -> Path:
    """Export a pixel prior from the latest ``checkpoint.pt`` of a (possibly still running) training."""
    from diffusers import UNet2DModel
    from diffusers.training_utils import EMAModel

    cfg = load_recipe(recipe, overrides)
    device = _device(cfg.train)
    src = build_train_source(**OmegaConf.to_container(cfg.data, resolve=True), device=device)
    model_kw = OmegaConf.to_container(cfg.model, resolve=True)
    model_kw.setdefault("sample_size", src.image_size[0])
    model_kw.setdefault("in_channels", src.channels)
    model_kw.setdefault("out_channels", src.channels)
    unet = UNet2DModel(**model_kw).to(device)
    from .train_output import run_dir

    st = torch.load(run_dir(cfg) / "checkpoint.pt", map_location=device, weights_only=False)
    unet.load_state_dict(st["model"])
    ema = EMAModel(unet.parameters(), decay=cfg.train.ema_decay)
    ema.load_state_dict(st["ema"])
    ema.to(device)
    return export(cfg, unet, ema, make_scheduler(cfg), src, st["step"], st["elapsed"], device)


if __name__ == "__main__":  # python -m invsolve.train RECIPE [key=value ...]
    import sys

    main(sys.argv[1], sys.argv[2:], progress=sys.stderr.isatty())
