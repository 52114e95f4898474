"""Inference options of a prior's network (invsolve/priors/accel.py) and random-weight ADM presets, on the CPU."""
import pytest
import torch

import invsolve as inv
from invsolve.errors import InvalidValueError, InvsolveError
from invsolve.priors.accel import accelerate
from invsolve.priors.gaussian import GaussianPrior

SMALL = dict(image_size=32, model_channels=32, num_head_channels=32, channel_mult=(1, 2))


def _adm(**kw):
    return inv.load_prior("adm-ffhq256", random_init=True, arch_overrides=SMALL, **kw)


def test_random_preset_is_seeded_and_labelled():
    a, b, c = _adm(), _adm(), inv.load_prior("adm-ffhq256", random_init=True, arch_overrides=SMALL, seed=1)
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(a.eps(x, 100), b.eps(x, 100)) and not torch.equal(a.eps(x, 100), c.eps(x, 100))
    assert a.name == "adm-ffhq256-random" and a.card["weights"].startswith("random (seed 0")
    fm = inv.load_prior("adm-fastmri320-complex", random_init=True, arch_overrides=SMALL)
    assert fm.is_complex and fm.card["normalization"] == "q99"  # solve() rescales the data as for the checkpoint
    with pytest.raises(InvsolveError, match="random_init=True for random weights"):
        inv.load_prior("adm-ffhq256")


COMPILED = pytest.mark.slow  # torch.compile traces the network (tens of seconds even with the eager backend)


@pytest.mark.parametrize("opts", [dict(channels_last=True),
                                  pytest.param(dict(compile=True, compile_backend="eager"), marks=COMPILED),
                                  pytest.param(dict(channels_last=True, compile=True, compile_backend="eager"),
                                               marks=COMPILED)])
def test_inference_options_keep_the_outputs(opts):
    ref, fast = _adm(), _adm(**opts)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        e = fast.eps(x, 300)
    assert torch.allclose(e, ref.eps(x, 300), atol=1e-5) and e.stride()[-1] == 1
    info = fast.card["inference"]
    assert info["channels_last"] == bool(opts.get("channels_last"))
    assert bool(info["compile"]) == bool(opts.get("compile"))
    assert fast.net.config == ref.net.config  # attribute lookups reach the wrapped network


def test_bf16_network_keeps_float32_inputs_and_outputs():
    ref, half = _adm(), _adm(dtype="bf16")
    x = torch.randn(1, 3, 32, 32)
    e = half.eps(x, 300)
    assert half.net.dtype == torch.bfloat16 and e.dtype == torch.float32
    assert float((e - ref.eps(x, 300)).norm() / ref.eps(x, 300).norm()) < 0.05


def test_bad_options_fail_before_any_work():
    with pytest.raises(InvalidValueError, match="compile_mode / compile_backend need compile=True"):
        _adm(compile_mode="max-autotune")
    with pytest.raises(InvalidValueError, match="compile_mode must be one of"):
        _adm(compile=True, compile_mode="fastest")
    g = GaussianPrior(torch.zeros(1, 4, 4), variance=1.0)
    with pytest.raises(InvsolveError, match="has no network attribute"):
        accelerate(g, channels_last=True)
