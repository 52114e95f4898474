"""The sampler contract, checked for every registered sampler (``available_samplers()``, not a fixed list).

On a tiny random 16x16 prior whose network counts its own calls:

* determinism: the same seeds give the same result, bit for bit;
* batch independence: item ``b`` solved alone equals item ``b`` of a batch of 3 (float tolerance: batched
  convolutions round differently), unless the spec declares its batch one problem (``independent_items=False``);
* NFE: the count reported by the prior wrapper equals the network's own call count and the count the sampler
  documents (``nfe=`` of its registration); classical samplers make none;
* knob validation: every option rejects an out-of-range value with an :class:`~invsolve.errors.InvsolveError`
  before any network call.
"""
from __future__ import annotations

import pytest
import torch
from _tiny import tiny_unet

import invsolve as inv
from invsolve.errors import InvalidValueError, InvsolveError
from invsolve.operators import Inpainting, ParallelBeamCT, random_mask, sparse_view_angles
from invsolve.priors import DiffusersPrior
from invsolve.samplers import available_samplers, get_sampler
from invsolve.samplers.base import resolve_knobs

SAMPLERS = sorted(available_samplers())
SCHED = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear",
         "prediction_type": "epsilon"}
# a small budget for the expensive ones; any other sampler with a ``steps`` option runs 3 steps
SMALL = {"enkg": dict(steps=4, ensemble_size=4, max_inner=2), "dps-gsg": dict(steps=3, queries=4),
         "stsl": dict(steps=3, inner=1), "tv": dict(iterations=10), "wiener": dict(reg=0.01, iterations=10),
         "dds-3d": dict(steps=3, power_iterations=3)}


class CountingPrior(DiffusersPrior):
    """A tiny diffusers prior counting its raw network calls (every chunk)."""

    calls = 0

    def _eps_net(self, x, t):
        self.calls += 1
        return super()._eps_net(x, t)


@pytest.fixture(scope="module")
def prior():
    return CountingPrior(tiny_unet(), SCHED, name="tiny")


def problem(spec):
    """``(op, y)`` with 3 items: inpainting, or parallel-beam CT for a sampler that needs its ``fbp``."""
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    op = Inpainting(random_mask((16, 16), 0.3, seed=0))
    if spec.operator_method and not hasattr(op, spec.operator_method):
        op = ParallelBeamCT(image_size=16, angles=sparse_view_angles(8))
    return op, op(x) + 0.01 * torch.randn(op(x).shape, generator=torch.Generator().manual_seed(2))


def knobs_of(spec):
    kn = dict(SMALL.get(spec.name, {}))
    if "steps" in spec.defaults:
        kn.setdefault("steps", 3)
    return kn


def solve(spec, prior, op, y, seeds):
    return inv.solve(y, op, prior=prior if spec.needs_prior else None, sampler=spec.name, seed=list(seeds),
                     device="cpu", **knobs_of(spec))


@pytest.mark.parametrize("name", SAMPLERS)
def test_same_seed_same_result(prior, name):
    spec = get_sampler(name)
    op, y = problem(spec)
    a, b = solve(spec, prior, op, y, [3, 4, 5]), solve(spec, prior, op, y, [3, 4, 5])
    assert torch.equal(a.x, b.x)


@pytest.mark.parametrize("name", SAMPLERS)
def test_an_item_alone_equals_the_item_in_a_batch(prior, name):
    spec = get_sampler(name)
    if not spec.independent_items:
        pytest.skip(f"{name}: the batch is one problem (independent_items=False)")
    op, y = problem(spec)
    batch = solve(spec, prior, op, y, [3, 4, 5]).x
    alone = solve(spec, prior, op, y[1:2], [4]).x
    assert (batch[1:2] - alone).abs().max() <= 1e-4 * alone.abs().max(), name
    if spec.needs_prior:  # the item's own seed matters: another seed gives another sample
        assert not torch.allclose(solve(spec, prior, op, y[1:2], [9]).x, alone, atol=1e-5)


@pytest.mark.parametrize("name", SAMPLERS)
def test_nfe_is_counted_once_and_as_documented(prior, name):
    spec = get_sampler(name)
    op, y = problem(spec)
    prior.calls = 0
    res = solve(spec, prior, op, y[:1], [3])
    if not spec.needs_prior:
        assert res.nfe == 0 and prior.calls == 0
        return
    assert spec.nfe is not None, f"{name} does not document its network evaluations (register_sampler(nfe=...))"
    assert res.nfe == spec.nfe(resolve_knobs(spec, knobs_of(spec)), prior) > 0
    assert prior.calls == res.nfe  # one item: no chunking, so every counted evaluation is one network call


def bad_value(knob):
    """A value outside what ``knob`` accepts."""
    if knob.kind in ("int", "float"):
        if knob.low is not None:
            return knob.low if knob.low_open else knob.low - 1
        return knob.high if knob.high_open else knob.high + 1
    return {"bool": "yes", "choice": "no-such-choice", "mapping": 3}.get(knob.kind, object())


CASES = [(n, k) for n in SAMPLERS for k in get_sampler(n).knobs()]


@pytest.mark.parametrize("name,knob", CASES, ids=[f"{n}-{k}" for n, k in CASES])
def test_every_knob_rejects_a_bad_value_before_any_network_call(prior, name, knob):
    spec = get_sampler(name)
    op, y = problem(spec)
    kn = {**knobs_of(spec), knob: bad_value(spec.knob_specs[knob])}
    if spec.knob_specs[knob].kind != "any":
        with pytest.raises(InvalidValueError, match=f"sampler {name!r}: {knob}="):
            resolve_knobs(spec, kn)
    prior.calls = 0
    gens = [torch.Generator().manual_seed(0)]
    with pytest.raises(InvsolveError):  # the registered function itself validates too
        spec.fn(prior if spec.needs_prior else None, op, y[:1], generators=gens, **kn)
    assert prior.calls == 0
