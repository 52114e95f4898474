"""Priors and operators from the ecosystem (issue #8): ADM checkpoints, VE/EDM priors, diffusers layouts and
dtypes, resolution/channel adapters. deepinv interop lives in test_prior_deepinv.py.

Every model here is tiny and randomly initialised; "identical" means bit-identical network outputs between the
in-memory model and the one loaded from its saved layout.
"""
import json
import math
import time

import pytest
import torch
from _tiny import tiny_unet
from diffusers import (
    DDIMPipeline,
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    ScoreSdeVePipeline,
    ScoreSdeVeScheduler,
)
from safetensors.torch import save_file

import invsolve as inv
from invsolve.errors import InputFileError, InvsolveError, ShapeError, UnknownNameError
from invsolve.operators import Inpainting, SingleCoilMRI
from invsolve.priors import DiffusersPrior, load_prior
from invsolve.priors.adapters import GrayToRGB, PadPrior, ResizePrior, RGBToGray, noise_gain
from invsolve.priors.adm import PRESETS, ADMPrior, ADMUNet, adm_config, linear_alphas_cumprod, timestep_embedding
from invsolve.priors.ve import DenoiserPrior, EDMPrior, VEPrior, vp_sigma
from invsolve.samplers.base import get_sampler

TINY = dict(model_channels=32, image_size=32, num_head_channels=32)


@pytest.fixture(autouse=True)
def one_thread():
    """These networks are tiny: one thread avoids oversubscription on a busy 2-core machine (restored after)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_adm(preset, seed=0, **changes):
    torch.manual_seed(seed)
    return ADMUNet(adm_config(preset, **TINY, **changes)).eval()


SCHED = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
             prediction_type="epsilon", clip_sample=False)


def run_dds(prior, op, y, steps=6, seed=0, **knobs):
    spec = get_sampler("dds")
    kn = dict(spec.defaults, steps=steps, **knobs)
    gens = [torch.Generator().manual_seed(seed + b) for b in range(y.shape[0])]
    return spec.fn(prior, op, y, generators=gens, **kn)


def inpainting_problem(size, channels=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(size, size, generator=g) > 0.5).float()
    op = Inpainting(mask)
    x = torch.rand(1, channels, size, size, generator=g)
    return op, x, op(x)


# ---------------------------------------------------------------------------------------------- ADM
def test_adm_presets_have_the_checkpoint_key_layout():
    """Full-size presets built on the meta device: key names/shapes of the released checkpoints."""
    def state(preset, **changes):
        with torch.device("meta"):
            return ADMUNet(adm_config(preset, **changes)).state_dict()

    sd = state("adm-aapm256")
    assert sd["input_blocks.0.0.weight"].shape == (256, 1, 3, 3)
    assert sd["out.2.weight"].shape == (2, 256, 3, 3)  # learned sigma: 2 x 1 output channels
    assert sd["time_embed.0.weight"].shape == (1024, 256) and sd["time_embed.2.weight"].shape == (1024, 1024)
    assert sd["input_blocks.9.1.qkv.weight"].shape == (3072, 1024, 1)  # attention at 16x16 (level 4, 1024 ch)
    assert sd["middle_block.1.proj_out.weight"].shape == (1024, 1024, 1)
    assert sd["input_blocks.9.0.emb_layers.1.weight"].shape == (2048, 1024)  # scale-shift: 2 x out channels
    assert sd["output_blocks.3.0.skip_connection.weight"].shape == (1024, 1536, 1, 1)
    assert "input_blocks.2.0.in_layers.2.weight" in sd  # resblock downsampling, no "op"
    assert not any(".op." in k for k in sd)
    assert sum(k.startswith("input_blocks.") and k.endswith(".0.weight") and k.count(".") == 3 for k in sd) == 1

    fm = state("adm-fastmri320-complex")
    assert fm["input_blocks.0.0.weight"].shape == (256, 2, 3, 3) and fm["out.2.weight"].shape == (4, 256, 3, 3)
    # 320 // 16 = 20 is no power of two: attention only in the middle block
    assert [k for k in fm if k.endswith("qkv.weight")] == ["middle_block.1.qkv.weight"]

    ff = state("adm-ffhq256")
    assert ff["out.2.weight"].shape == (6, 128, 3, 3) and ff["input_blocks.9.1.qkv.weight"].shape == (1536, 512, 1)
    # OpenAI 256x256_diffusion_uncond.pt holds 552,814,086 parameters (2,211,256,344 bytes of fp32 weights)
    assert sum(v.numel() for v in state("adm-imagenet256-uncond").values()) == 552_814_086
    conv = state("adm-ffhq256", resblock_updown=False)
    assert conv["input_blocks.2.0.op.weight"].shape == (128, 128, 3, 3)
    assert conv["output_blocks.3.2.conv.weight"].shape == (512, 512, 3, 3)


def test_timestep_embedding_is_cos_then_sin():
    e = timestep_embedding(torch.tensor([0.0, 3.0]), 8)
    assert torch.equal(e[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    w = 10000 ** (-torch.arange(4) / 4)
    assert torch.allclose(e[1], torch.cat([torch.cos(3 * w), torch.sin(3 * w)]), atol=1e-6)


def test_attention_orders_differ_only_by_a_permutation_of_qkv():
    """Legacy (per-head [q,k,v]) and new ([q...][k...][v...]) layouts agree once the qkv rows are permuted."""
    legacy = tiny_adm("adm-ffhq256", channel_mult=(1, 2), attention_resolutions=(16,))
    new = ADMUNet(adm_config(legacy.config, use_new_attention_order=True)).eval()
    sd = legacy.state_dict()
    for k in [k for k in sd if k.endswith(("qkv.weight", "qkv.bias"))]:
        C = sd[k].shape[0] // 3
        heads = C // 32
        # legacy row (h, part, c) -> new row (part, h, c)
        sd[k] = sd[k].reshape(heads, 3, 32, *sd[k].shape[1:]).transpose(0, 1).reshape(sd[k].shape)
    new.load_state_dict(sd)
    unpermuted = ADMUNet(new.config).eval()
    unpermuted.load_state_dict(legacy.state_dict())
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([3.0, 700.0])
    with torch.no_grad():
        assert torch.allclose(legacy(x, t), new(x, t), atol=1e-5)
        assert not torch.allclose(legacy(x, t), unpermuted(x, t), atol=1e-3)


@pytest.mark.parametrize("preset,suffix", [("adm-aapm256", ".pt"), ("adm-fastmri320-complex", ".safetensors")])
def test_adm_checkpoint_loads_identically(tmp_path, preset, suffix):
    net = tiny_adm(preset)
    path = tmp_path / f"model{suffix}"
    if suffix == ".pt":
        torch.save(net.state_dict(), path)
    else:
        save_file(net.state_dict(), str(path))
    prior = load_prior(path, arch=preset, arch_overrides=TINY)
    ref = ADMPrior(net)
    assert isinstance(prior, ADMPrior) and prior.card["arch"] == preset
    C = net.config.in_channels
    assert prior.channels == C and prior.image_size == (32, 32)
    assert prior.is_complex == PRESETS[preset][1].get("is_complex", False)
    x, t = torch.randn(2, C, 32, 32), torch.tensor([0, 980])
    with torch.no_grad():
        assert torch.equal(prior.eps(x, t), ref.eps(x, t))
        assert torch.equal(prior.eps(x, t), net(x, t)[:, :C])  # learned-sigma channels dropped
        assert torch.equal(prior.denoise(x, 0.5), ref.denoise(x, 0.5))
        e, v = prior.eps_and_variance(x, t)
        assert torch.equal(e, prior.eps(x, t)) and v.shape == e.shape
    ab = prior.alphas_cumprod
    assert ab.shape == (1000,) and torch.allclose(ab, linear_alphas_cumprod())
    # a directory with invsolve_prior.json {"kind": "adm", ...} loads the same weights, its options win
    (tmp_path / "dir").mkdir()
    path.rename(tmp_path / "dir" / path.name)
    meta = {"kind": "adm", "arch": preset, "arch_overrides": TINY, "weights": path.name, "data_range": [0, 2]}
    (tmp_path / "dir" / "invsolve_prior.json").write_text(json.dumps(meta))
    from_dir = load_prior(tmp_path / "dir")
    assert from_dir.data_range == (0.0, 2.0) and torch.equal(from_dir.eps(x, t), ref.eps(x, t))
    assert abs(float(ab[0]) - (1 - 1e-4)) < 1e-12 and float(ab[-1]) < 5e-5


def test_adm_checkpoint_that_does_not_fit_lists_the_keys(tmp_path):
    sd = tiny_adm("adm-aapm256").state_dict()
    sd.pop("middle_block.1.qkv.weight")
    sd["bogus.weight"] = torch.zeros(1)
    sd["out.2.weight"] = torch.zeros(4, 32, 3, 3)
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(InputFileError) as e:
        load_prior(tmp_path / "bad.pt", arch="adm-aapm256", arch_overrides=TINY)
    msg = str(e.value)
    assert "1 missing key(s): middle_block.1.qkv.weight" in msg
    assert "1 unexpected key(s): bogus.weight" in msg
    assert "out.2.weight (4, 32, 3, 3) (model: (2, 32, 3, 3))" in msg
    torch.save({"label_emb.weight": torch.zeros(2, 2), **tiny_adm("adm-aapm256").state_dict()}, tmp_path / "c.pt")
    with pytest.raises(InputFileError, match="class-conditional"):
        load_prior(tmp_path / "c.pt", arch="adm-aapm256", arch_overrides=TINY)
    with pytest.raises(UnknownNameError, match="adm-ffhq256"):
        load_prior(tmp_path / "c.pt", arch="adm-ffhq")
    with pytest.raises(InputFileError, match="arch="):  # a .pt without arch is not taken for a diffusers file
        load_prior(tmp_path / "c.pt")


def test_dds_runs_on_an_adm_prior_and_matches_the_in_memory_model(tmp_path):
    net = tiny_adm("adm-aapm256")
    torch.save(net.state_dict(), tmp_path / "ct.pt")
    prior = load_prior(tmp_path / "ct.pt", arch="adm-aapm256", arch_overrides=TINY)
    op, x, y = inpainting_problem(32)
    out = run_dds(prior, op, y, dc="normal")
    ref = run_dds(ADMPrior(net, data_range=(-1.0, 1.0)), op, y, dc="normal")
    assert out.nfe == 6 and torch.isfinite(out.x).all()
    assert torch.equal(out.x, ref.x)
    # normal equations for a 0/1 mask converge in one CG step: the result reproduces y exactly
    assert torch.allclose(op(out.x), y, atol=1e-5 * (1 + out.x.abs().max()))


def test_solve_with_a_complex_adm_prior_on_mri():
    prior = ADMPrior(tiny_adm("adm-fastmri320-complex"), is_complex=True, card={"normalization": "q99"})
    mask = torch.zeros(32, 32)
    mask[:, ::3] = 1
    mask[:, 13:19] = 1
    op = SingleCoilMRI(mask)
    x = torch.randn(1, 1, 32, 32, dtype=torch.complex64)
    res = inv.solve(op(x), op, prior=prior, steps=5, dc="normal")
    assert res.x.shape == (1, 1, 32, 32) and res.x.is_complex() and res.nfe == 5
    assert torch.allclose(op(res.x), op(x), atol=1e-4 * float(res.x.abs().max()))
    assert res.config["data_scale"] is not None  # fastMRI preset card: q99 scaling


# ---------------------------------------------------------------------------------------------- VE / EDM
class GaussianOracle(torch.nn.Module):
    """Exact posterior mean for x0 ~ N(mu, s0^2 I): D(x; s) = mu + s0^2 / (s0^2 + s^2) (x - mu), emitted in the
    parameterisation a prior expects (score / EDM raw network output)."""

    def __init__(self, kind, mu=0.3, s0=0.7, sigma_data=0.5, M=1000):
        super().__init__()
        self.kind, self.mu, self.s0, self.sd, self.M = kind, mu, s0, sigma_data, M
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def D(self, x, s):
        s = s.reshape(-1, 1, 1, 1)
        return self.mu + self.s0**2 / (self.s0**2 + s**2) * (x - self.mu)

    def forward(self, x_in, c):
        c = c.double()
        if self.kind == "score":  # VEPrior: the network is called with sigma itself
            s = c.reshape(-1, 1, 1, 1)
            return ((self.D(x_in.double(), c) - x_in) / s**2).float()
        # EDM Table 1, written out independently of invsolve.priors.ve
        if self.kind == "edm":
            s = torch.exp(4 * c)
            c_in, c_skip, c_out = 1 / (s**2 + self.sd**2).sqrt(), self.sd**2 / (s**2 + self.sd**2), \
                s * self.sd / (s**2 + self.sd**2).sqrt()
        elif self.kind == "ve":
            s = 2 * torch.exp(c)
            c_in, c_skip, c_out = torch.ones_like(s), torch.ones_like(s), s
        else:  # vp: c_noise = (M - 1) t
            s = vp_sigma(c / (self.M - 1))
            c_in, c_skip, c_out = 1 / (s**2 + 1).sqrt(), torch.ones_like(s), -s
        b = lambda v: v.reshape(-1, 1, 1, 1)  # noqa: E731
        x = x_in.double() / b(c_in)
        return ((self.D(x, s) - b(c_skip) * x) / b(c_out)).float()


def denoiser_priors():
    size = dict(image_size=(8, 8), channels=1)
    return {
        "ve-score": VEPrior(GaussianOracle("score"), sigma_min=0.01, sigma_max=50.0, model_range=(-1, 1), **size),
        "edm": EDMPrior(GaussianOracle("edm"), precond="edm", **size),
        "edm-ve": EDMPrior(GaussianOracle("ve"), precond="ve", **size),
        "edm-vp": EDMPrior(GaussianOracle("vp"), precond="vp", **size),
    }


@pytest.mark.parametrize("name", ["ve-score", "edm", "edm-ve", "edm-vp"])
def test_denoiser_priors_give_the_exact_posterior_mean_in_both_views(name):
    prior = denoiser_priors()[name]
    oracle = prior.net
    x = torch.randn(3, 1, 8, 8) * 2
    sigma = torch.tensor([0.05, 1.0, 20.0], dtype=torch.float64)
    assert torch.allclose(prior.denoise(x, sigma), oracle.D(x.double(), sigma).float(), atol=1e-4, rtol=1e-4)
    # VP view: integer timesteps of the table; tweedie(x_t, t) = D(x_t / sqrt(abar_t); sigma_t)
    t = torch.tensor([0, 400, 999])
    ab = prior.alpha_bar(t).reshape(-1, 1, 1, 1)
    s = ((1 - ab) / ab).sqrt()
    x_vp = ab.sqrt().float() * (0.3 + 0.7 * torch.randn(3, 1, 8, 8)) + (1 - ab).sqrt().float() * torch.randn(3, 1, 8, 8)
    x0, e = prior.tweedie(x_vp, t)
    want = oracle.D(x_vp.double() / ab.sqrt(), s.flatten())
    assert torch.allclose(x0.double(), want, atol=2e-3 * float(want.abs().max()), rtol=1e-3)
    assert torch.allclose(e.double(), (x_vp.double() / ab.sqrt() - want) / s, atol=1e-3, rtol=1e-3)
    assert torch.allclose(prior.sigma_at(t.double()), prior.log_sigmas[t].exp())
    d = prior.denoise(x, torch.tensor([0.0, 1.0, 0.0]))  # sigma = 0: nothing to remove (no log(0) in the network)
    assert torch.equal(d[0], x[0]) and torch.equal(d[2], x[2]) and torch.isfinite(d).all()
    assert prior.nfe == 3


def test_edm_tables():
    p = denoiser_priors()
    assert math.isclose(p["edm"].sigma_min, 0.002, rel_tol=1e-9) and math.isclose(p["edm"].sigma_max, 80, rel_tol=1e-9)
    vp = p["edm-vp"]  # VP precond: integer VP timestep t ~ c_noise ~ t (the DDPM timestep behind the network)
    c_noise = vp.coefficients(vp.log_sigmas.exp())[3]
    assert torch.allclose(c_noise, torch.arange(1000, dtype=torch.float64), atol=0.02)
    # EDM's continuous VP SDE approximates DDPM's discrete linear betas: abar within 5% (one step of offset)
    assert torch.allclose(vp.alphas_cumprod[1:], linear_alphas_cumprod()[:-1], rtol=0.05, atol=0)


def ve_pipeline(tmp_path, T=200):
    unet = tiny_unet(cin=3, time_embedding_type="fourier")
    sched = ScoreSdeVeScheduler(num_train_timesteps=T, sigma_min=0.01, sigma_max=50.0)
    ScoreSdeVePipeline(unet=unet, scheduler=sched).save_pretrained(tmp_path / "ve")
    return unet, sched


def test_score_sde_ve_pipeline_loads_as_a_ve_prior(tmp_path):
    unet, sched = ve_pipeline(tmp_path)
    prior = load_prior(tmp_path / "ve")
    assert isinstance(prior, VEPrior) and prior.output == "score" and prior.model_range == (0.0, 1.0)
    x, s = torch.rand(2, 3, 16, 16), torch.tensor([0.02, 7.0])
    with torch.no_grad():
        score = unet(x, s.float()).sample  # diffusers convention: sigma in, score out
    assert torch.equal(prior.denoise(x, s), x + s.float().reshape(-1, 1, 1, 1) ** 2 * score)
    sched.set_sigmas(200)
    assert torch.allclose(prior.log_sigmas.exp(), sched.discrete_sigmas.double(), rtol=1e-5)
    z = torch.rand(1, 3, 16, 16)
    assert torch.equal(prior.to_prior(z), z) and torch.equal(prior.from_prior(z), z)  # data [0, 1] = model range


@pytest.mark.parametrize("kind", ["ve", "edm"])
def test_dds_runs_on_ve_and_edm_priors(tmp_path, kind):
    if kind == "ve":
        ve_pipeline(tmp_path)
        prior = load_prior(tmp_path / "ve")
    else:
        prior = EDMPrior(tiny_unet(cin=3), precond="edm", image_size=(16, 16), channels=3)
    op, x, y = inpainting_problem(16, channels=3)
    out = run_dds(prior, op, y, steps=5, dc="normal")
    assert out.nfe == 5 and torch.isfinite(out.x).all()
    assert torch.allclose(op(out.x), y, atol=1e-5 * (1 + float(out.x.abs().max())))
    again = run_dds(prior, op, y, steps=5, dc="normal")
    assert torch.equal(out.x, again.x)


def test_priors_are_differentiable_in_their_input_for_dps():
    """DPS back-propagates ||y - A x0_hat|| through tweedie: every prior kind must pass gradients to x."""
    priors = [ADMPrior(tiny_adm("adm-aapm256", channel_mult=(1, 2))), DiffusersPrior(tiny_unet(), SCHED),
              VEPrior(tiny_unet(time_embedding_type="fourier"), sigma_min=0.01, sigma_max=50.0, image_size=(16, 16),
                      channels=1),
              EDMPrior(tiny_unet(), image_size=(16, 16), channels=1)]
    for p in priors:
        H = p.image_size[0]
        x = torch.randn(1, p.channels, H, H, requires_grad=True)
        x0, _ = p.tweedie(x, 500)
        (g,) = torch.autograd.grad(x0.square().sum(), x)
        assert torch.isfinite(g).all() and g.abs().sum() > 0, type(p).__name__
        assert not any(q.requires_grad for q in p.parameters())


# ---------------------------------------------------------------------------------------------- diffusers
def test_diffusers_layouts_load_identically(tmp_path):
    unet = tiny_unet(cin=3)
    ref = DiffusersPrior(unet, SCHED)
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(**SCHED)).save_pretrained(tmp_path / "ddpm")
    DDIMPipeline(unet=unet, scheduler=DDIMScheduler(**SCHED)).save_pretrained(tmp_path / "ddim")
    unet.save_pretrained(tmp_path / "flat")
    DDPMScheduler(**SCHED).save_config(tmp_path / "flat")
    (tmp_path / "single").mkdir()
    weights = tmp_path / "single" / "unet_weights.safetensors"
    (tmp_path / "flat" / "diffusion_pytorch_model.safetensors").rename(weights)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([5, 700])
    loaded = {
        "ddpm": load_prior(tmp_path / "ddpm"),
        "ddim": load_prior(tmp_path / "ddim"),
        "single": load_prior(weights, config=tmp_path / "flat" / "config.json",
                             scheduler_config=tmp_path / "flat" / "scheduler_config.json"),
    }
    for name, p in loaded.items():
        assert isinstance(p, DiffusersPrior), name
        assert torch.equal(p.eps(x, t), ref.eps(x, t)), name
        assert torch.allclose(p.alphas_cumprod, ref.alphas_cumprod), name
    with pytest.raises(InputFileError, match="config.json"):
        load_prior(weights)
    wrong = dict(unet.config, block_out_channels=(8, 32))
    with pytest.raises(InputFileError, match="shape mismatch"):
        load_prior(weights, config=wrong)


@pytest.mark.parametrize("ptype,learned", [("epsilon", True), ("sample", False), ("v_prediction", False)])
def test_prediction_types_match_the_diffusers_scheduler(tmp_path, ptype, learned):
    """x0 estimates agree with diffusers' own DDPMScheduler.step (an independent implementation)."""
    cfg = dict(SCHED, prediction_type=ptype, variance_type="learned_range" if learned else "fixed_small")
    unet = tiny_unet(cin=2, cout=4 if learned else 2)
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(**cfg)).save_pretrained(tmp_path / "p")
    prior = load_prior(tmp_path / "p")
    assert prior.prediction_type == ptype and prior.channels == 2
    sched = DDPMScheduler(**cfg)
    sched.set_timesteps(1000)
    x = torch.randn(1, 2, 16, 16)
    for t in (50, 500):
        with torch.no_grad():
            want = sched.step(unet(x, t).sample, t, x).pred_original_sample
        x0, _ = prior.tweedie(x, t)
        assert torch.allclose(x0, want, atol=2e-4), (ptype, t)


def test_dtype_option_casts_the_network_only(tmp_path):
    unet = tiny_unet(cin=2)
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(**SCHED)).save_pretrained(tmp_path / "p")
    p32, p16 = load_prior(tmp_path / "p"), load_prior(tmp_path / "p", dtype="bf16")
    assert p16.unet.dtype == torch.bfloat16
    x = torch.randn(2, 2, 16, 16)
    e32, e16 = p32.eps(x, 300), p16.eps(x, 300)
    assert e16.dtype == torch.float32
    assert (e16 - e32).norm() / e32.norm() < 0.05
    net = tiny_adm("adm-aapm256", channel_mult=(1, 2))
    torch.save(net.state_dict(), tmp_path / "a.pt")
    a16 = load_prior(tmp_path / "a.pt", arch="adm-aapm256", arch_overrides=dict(TINY, channel_mult=(1, 2)),
                     dtype=torch.bfloat16)
    assert a16.net.dtype == torch.bfloat16
    xa = torch.randn(1, 1, 32, 32)
    ea, eb = ADMPrior(net).eps(xa, 300), a16.eps(xa, 300)
    assert eb.dtype == torch.float32 and (ea - eb).norm() / ea.norm() < 0.05
    with pytest.raises(ValueError, match="dtype"):
        load_prior(tmp_path / "p", dtype="int8")


def test_offline_hub_id_fails_within_seconds_and_says_how_to_provide_weights(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.time()
    with pytest.raises(InputFileError) as e:
        load_prior("no-such-org/no-such-ddpm-model")
    assert time.time() - t0 < 10
    msg = str(e.value)
    assert "HF_HUB_OFFLINE=1" in msg and "not in the local Hugging Face cache" in msg
    assert "huggingface-cli download no-such-org/no-such-ddpm-model --local-dir DIR" in msg
    assert "load_prior('DIR')" in msg


# ---------------------------------------------------------------------------------------------- adapters
def test_pad_prior_crops_the_padded_call():
    inner = DiffusersPrior(tiny_unet(), SCHED)
    x = torch.randn(2, 1, 16, 16)
    same = PadPrior(inner, 16)
    assert torch.equal(same.eps(x, 200), inner.eps(x, 200))
    small = PadPrior(inner, (12, 10))
    xs = torch.randn(2, 1, 12, 10)
    want = inner.eps(torch.nn.functional.pad(xs, (3, 3, 2, 2), mode="reflect"), 200)[..., 2:14, 3:13]
    assert small.image_size == (12, 10) and small.operator_shape == (1, 12, 10)
    assert torch.equal(small.eps(xs, 200), want)
    d = small.denoise(xs, 0.3)
    assert d.shape == xs.shape and small.nfe == 2
    with pytest.raises(ShapeError, match="ResizePrior"):
        PadPrior(inner, 20)
    with pytest.raises(ShapeError, match="replicate"):
        PadPrior(inner, 4)  # reflection pads of 6 > 4 pixels
    assert PadPrior(inner, 4, mode="replicate").eps(torch.randn(1, 1, 4, 4), 10).shape == (1, 1, 4, 4)


def test_resize_prior_noise_gain_and_views():
    assert math.isclose(noise_gain((32, 32), (16, 16), "area"), 0.5, rel_tol=1e-9)
    assert noise_gain((16, 16), (16, 16), "bilinear") == 1.0
    g = noise_gain((48, 40), (32, 32), "bilinear")
    n = torch.randn(64, 1, 48, 40, generator=torch.Generator().manual_seed(0))
    measured = torch.nn.functional.interpolate(n, size=(32, 32), mode="bilinear", antialias=True).std()
    assert abs(float(measured) / g - 1) < 0.03
    inner = DiffusersPrior(tiny_unet(), SCHED)
    x = torch.randn(1, 1, 16, 16)
    assert torch.allclose(ResizePrior(inner, 16).denoise(x, 0.7), inner.denoise(x, 0.7), atol=1e-6)
    big = ResizePrior(inner, 32)
    assert big.mode == "area" and math.isclose(big.gain, 0.5)
    xb = torch.randn(1, 1, 32, 32)
    want = torch.nn.functional.interpolate(inner.denoise(torch.nn.functional.avg_pool2d(xb, 2), 0.35),
                                           size=(32, 32), mode="bilinear", antialias=True)
    assert torch.allclose(big.denoise(xb, 0.7), want, atol=1e-6)
    ab = big.alpha_bar(400).float()
    x0, _ = big.tweedie(xb, 400)  # VP view derived from the VE one
    assert torch.allclose(x0, big.denoise(xb / ab.sqrt(), ((1 - ab) / ab).sqrt()), atol=1e-4)
    assert torch.allclose(big.alphas_cumprod, inner.alphas_cumprod, rtol=1e-12)


def test_channel_adapters():
    gray = DiffusersPrior(tiny_unet(cin=1), SCHED, data_range=(0, 1))
    rgb_of_gray = GrayToRGB(gray)
    x = torch.randn(2, 3, 16, 16)
    e = rgb_of_gray.eps(x, 100)
    for c in range(3):
        assert torch.allclose(e[:, c:c + 1], gray.eps(x[:, c:c + 1], 100), atol=1e-6)
    assert rgb_of_gray.operator_shape == (3, 16, 16)
    assert torch.allclose(rgb_of_gray.denoise(x, 0.5)[:, 1:2], gray.denoise(x[:, 1:2], 0.5), atol=1e-6)

    rgb = DiffusersPrior(tiny_unet(cin=3), SCHED, data_range=(0, 1))
    gray_of_rgb = RGBToGray(rgb)
    g = torch.rand(2, 1, 16, 16)
    xp = gray_of_rgb.to_prior(g)
    assert xp.shape == (2, 3, 16, 16) and torch.equal(xp[:, 0], xp[:, 2])
    assert torch.allclose(gray_of_rgb.from_prior(xp), g, atol=1e-6)
    assert gray_of_rgb.operator_shape == (1, 16, 16) and gray_of_rgb.channels == 3
    assert torch.equal(gray_of_rgb.eps(xp, 100), rgb.eps(xp, 100))
    with pytest.raises(InvsolveError, match="1-channel"):
        GrayToRGB(rgb)
    with pytest.raises(InvsolveError, match="summing to 1"):
        RGBToGray(rgb, weights=(1, 1, 1))


def test_solve_uses_adapters_and_rejects_the_bare_prior_at_the_wrong_size():
    prior = DiffusersPrior(tiny_unet(), SCHED)
    op, x, y = inpainting_problem(12)
    with pytest.raises(ShapeError, match="12"):
        inv.solve(y, op, prior=prior, steps=3)
    res = inv.solve(y, op, prior=PadPrior(prior, 12), steps=4, dc="normal")
    assert res.x.shape == (1, 1, 12, 12) and res.nfe == 4
    assert torch.allclose(op(res.x), y, atol=1e-5 * (1 + float(res.x.abs().max())))
    assert isinstance(ResizePrior(prior, 12), DenoiserPrior)
