"""Flow-matching priors (issue #26): the denoiser contract from a velocity network, loading from diffusers-style
directories, agreement with diffusers' own FlowMatchEulerDiscreteScheduler, and the ``objective: flow`` recipe."""
import json

import pytest
import torch
import yaml
from diffusers import FlowMatchEulerDiscreteScheduler, UNet2DModel

import invsolve as inv
from invsolve.cli import main
from invsolve.errors import InvalidValueError, InvsolveError
from invsolve.priors import FlowPrior
from invsolve.priors.flow import flow_prior_from_diffusers
from invsolve.samplers.unconditional import ddim_grid, sample_ddim
from invsolve.train import flow_times, load_recipe

TINY_MODEL = {"block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4,
              "down_block_types": ["DownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "UpBlock2D"]}


def _unet(seed=0, channels=1, size=16):
    torch.manual_seed(seed)
    unet = UNet2DModel(sample_size=size, in_channels=channels, out_channels=channels, **TINY_MODEL)
    with torch.no_grad():  # a random network with O(1) outputs, so that the checks below are not vacuous
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return unet.eval()


@pytest.fixture(scope="module")
def flow():
    return FlowPrior(_unet(), image_size=(16, 16), channels=1, num_train_timesteps=1000, shift=1.0, name="tiny-flow")


def _raw_v(unet, x, t):
    return unet(x, torch.full((x.shape[0],), float(t) * 1000)).sample


def test_denoiser_contract_is_the_flow_tweedie_estimate(flow):
    """VE view: D(x0 + s n, s) = x_t - t v(x_t, t) with t = s / (1 + s), x_t = x / (1 + s), against the raw network."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 16, 16, generator=g) * 3
    with torch.no_grad():
        for s in (0.05, 1.0, 30.0):
            t = s / (1 + s)
            x_t = x / (1 + s)
            want = x_t - t * _raw_v(flow.net, x_t, t)
            assert torch.allclose(flow.denoise(x, s), want, atol=1e-5)
        assert torch.equal(flow.denoise(x, 0.0), x)


def test_vp_view_is_consistent_with_the_flow(flow):
    """VP view at integer timesteps: abar = (1-t)² / ((1-t)² + t²) with t_k = (k + 1) / N; tweedie gives x_t - t v and
    eps_hat = x_t + (1 - t) v in flow coordinates x_t = x_VP sqrt((1-t)² + t²); sqrt(abar) x0 + sqrt(1-abar) eps = x."""
    k = torch.tensor([0, 249, 499, 998])
    t = (k.double() + 1) / 1000
    assert torch.allclose(flow.alpha_bar(k), (1 - t) ** 2 / ((1 - t) ** 2 + t**2), rtol=1e-9)
    assert 0 < float(flow.alpha_bar(999)) < 1e-7  # the top level stands in for t = 1
    x = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        x0, eps = flow.tweedie(x, k)
        norm = ((1 - t) ** 2 + t**2).sqrt().float().reshape(-1, 1, 1, 1)
        x_t = x * norm
        v = torch.cat([_raw_v(flow.net, x_t[i:i + 1], float(t[i])) for i in range(4)])
        tb = t.float().reshape(-1, 1, 1, 1)
        assert torch.allclose(x0, x_t - tb * v, atol=1e-5) and torch.allclose(eps, x_t + (1 - tb) * v, atol=1e-5)
        ab = flow.alpha_bar(k).float().reshape(-1, 1, 1, 1)
        assert torch.allclose(ab.sqrt() * x0 + (1 - ab).sqrt() * eps, x, atol=1e-5)
        assert torch.allclose(flow.eps(x, k), eps, atol=1e-5)


def test_ddim_on_a_flow_prior_is_diffusers_flow_euler(flow):
    """Deterministic DDIM in the VP view draws the same sample as FlowMatchEulerDiscreteScheduler on the same times."""
    steps = 10
    out = sample_ddim(flow, 2, steps=steps, seed=3)
    x = torch.randn((2, 1, 16, 16), generator=torch.Generator().manual_seed(3))  # sample_ddim's start, VP scaling
    grid = ddim_grid(flow, steps)
    times = [float(flow._flow_time(torch.tensor([float(t)]))) for t, _ in grid]
    x = x * ((1 - times[0]) ** 2 + times[0] ** 2) ** 0.5  # the same state in flow coordinates
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000)
    sched.set_timesteps(sigmas=times)
    with torch.no_grad():
        for ts in sched.timesteps:
            x = sched.step(flow.net(x, ts.expand(2)).sample, ts, x).prev_sample
    assert torch.allclose(out, x, atol=1e-4), float((out - x).abs().max())


@pytest.mark.parametrize("layout", ["flat", "pipeline"])
def test_loads_from_a_saved_directory_with_identical_velocity(tmp_path, flow, layout):
    shift = 3.0
    prior = FlowPrior(_unet(seed=1), image_size=(16, 16), channels=1, shift=shift, name="mem")
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    d = tmp_path / layout
    unet_dir, sched_dir = (d, d) if layout == "flat" else (d / "unet", d / "scheduler")
    prior.net.save_pretrained(unet_dir)
    sched.save_config(sched_dir)
    (d / "invsolve_prior.json").write_text(json.dumps({"name": "saved-flow", "data_range": [0.0, 1.0]}))
    loaded = inv.load_prior(d)
    assert isinstance(loaded, FlowPrior) and loaded.shift == shift and loaded.name == "saved-flow"
    x = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([0.03, 0.5, 0.97])
    with torch.no_grad():
        assert torch.equal(loaded.velocity(x, t), prior.velocity(x, t))
        assert torch.equal(loaded.alpha_bar(torch.arange(1000)), prior.alpha_bar(torch.arange(1000)))
    # the shifted time map t' = s t / (1 + (s - 1) t) of the scheduler's training sigmas
    assert float(loaded._flow_time(torch.tensor([499.0]))) == pytest.approx(float(sched.sigmas.flip(0)[499]), 1e-6)


def test_unsupported_scheduler_options_are_rejected():
    with pytest.raises(InvsolveError, match="use_dynamic_shifting"):
        flow_prior_from_diffusers(_unet(), {"_class_name": "FlowMatchEulerDiscreteScheduler",
                                            "use_dynamic_shifting": True})


@pytest.mark.parametrize("sampler,kw", [("dds", dict(steps=4)), ("dps", dict(steps=4)),
                                        ("daps", dict(steps=3, ode_steps=2, langevin_steps=2)),
                                        ("reddiff", dict(steps=4))])
def test_samplers_run_on_a_flow_prior(flow, sampler, kw):
    from invsolve.operators import Inpainting

    op = Inpainting(torch.rand(16, 16, generator=torch.Generator().manual_seed(0)) > 0.5)
    y = op(torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(1)))
    res = inv.solve(y, op, prior=flow, sampler=sampler, seed=0, **kw)
    assert torch.isfinite(res.x).all() and res.nfe > 0


def test_flow_training_times():
    g = torch.Generator().manual_seed(0)
    t = flow_times(20000, g, "cpu", "logit-normal")
    assert 0 < float(t.min()) and float(t.max()) < 1 and abs(float(t.median()) - 0.5) < 0.02
    u = flow_times(20000, g, "cpu", "uniform", shift=3.0)
    # shifted uniform: P(t' <= 0.5) = P(t <= 1/(shift + 1)) = 0.25
    assert abs(float((u <= 0.5).float().mean()) - 0.25) < 0.02


def test_flow_recipe_trains_exports_and_loads(tmp_path):
    r = {"name": "tiny-flow", "output_dir": str(tmp_path / "run"), "objective": "flow",
         "flow": {"t_sampling": "uniform", "shift": 2.0},
         "data": {"kind": "ct-phantom", "image_size": 16},
         "model": TINY_MODEL,
         "train": {"steps": 2, "batch_size": 2, "log_every": 1, "checkpoint_every": 1, "warmup_steps": 1,
                   "threads": 2},
         "prior": {"data_range": [0.0, 1.0], "summary": "tiny flow test"},
         "export": {"dir": str(tmp_path / "prior"), "n_samples": 2, "sample_steps": 2}}
    p = tmp_path / "tiny-flow.yaml"
    p.write_text(yaml.safe_dump(r))
    assert main(["train-prior", str(p), "--no-progress"]) == 0
    d = tmp_path / "prior"
    assert json.loads((d / "scheduler_config.json").read_text())["_class_name"] == "FlowMatchEulerDiscreteScheduler"
    assert "flow matching" in (d / "README.md").read_text()
    prior = inv.load_prior(d)
    assert isinstance(prior, FlowPrior) and prior.shift == 2.0
    assert torch.isfinite(prior.denoise(torch.randn(1, 1, 16, 16), 1.0)).all()
    with pytest.raises(InvalidValueError, match="objective='score'"):
        load_recipe(p, ["objective=score"])
    with pytest.raises(InvalidValueError, match="flow.t_sampling='beta'"):
        load_recipe(p, ["flow.t_sampling=beta"])


def test_embedded_flow_prior_loads_and_reconstructs():
    """The shipped ``ct-phantom-flow`` (a small CPU-trained demo prior) is a FlowPrior with an honest card, and one
    short DDS run on 16-view CT of a phantom gives a finite image of the operator's shape."""
    from invsolve.data.ct import sample_phantoms
    from invsolve.operators import ParallelBeamCT, sparse_view_angles
    from invsolve.priors.registry import prior_dir

    prior = inv.load_prior("ct-phantom-flow")
    assert isinstance(prior, FlowPrior) and prior.image_size == (64, 64) and prior.channels == 1
    steps = prior.card["training"]["steps"]
    assert 0 < steps < 40000 and f"{steps} training steps" in (prior_dir("ct-phantom-flow") / "README.md").read_text()
    op = ParallelBeamCT(image_size=64, angles=sparse_view_angles(16))
    x = sample_phantoms(1, 64, torch.Generator().manual_seed(4321))
    res = inv.solve(op(x), op, prior=prior, sampler="dds", steps=5, seed=0)
    assert res.x.shape == (1, 1, 64, 64) and torch.isfinite(res.x).all() and res.nfe == 5
