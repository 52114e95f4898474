"""Every registered sampler declares what each option accepts; out-of-range values fail before any work."""
import math

import pytest

from invsolve.errors import InvalidValueError, InvsolveError, UnknownNameError
from invsolve.samplers import available_samplers, get_sampler
from invsolve.samplers.base import register_sampler, resolve_knobs, signature_defaults
from invsolve.samplers.knobs import Choice, Float, Int


def _bad_values(knob):
    """Values the declaration must reject."""
    if knob.kind == "choice":
        return ["no-such-choice"]
    if knob.kind == "bool":
        return ["yes", 1]
    if knob.kind in ("int", "float"):
        out = ["abc", float("nan")]
        if not knob.optional:
            out.append(None)
        if knob.low is not None:
            out.append(knob.low - 1)
        if knob.high is not None:
            out.append(knob.high + 1)
        if knob.kind == "int":
            out.append(1.5)
        return out
    return []


CASES = [(s, k) for s in sorted(available_samplers()) for k in get_sampler(s).knobs()]


@pytest.mark.parametrize("sampler,knob", CASES, ids=[f"{s}.{k}" for s, k in CASES])
def test_every_knob_rejects_values_outside_its_declaration(sampler, knob):
    spec = get_sampler(sampler)
    decl = spec.knob_specs[knob]
    assert decl.doc, f"{sampler}.{knob} has no one-line meaning"
    assert resolve_knobs(spec, {knob: spec.defaults[knob]})[knob] == spec.defaults[knob]
    for bad in _bad_values(decl):
        with pytest.raises(InvalidValueError) as e:
            resolve_knobs(spec, {knob: bad})
        msg = str(e.value)
        assert f"{knob}=" in msg and repr(sampler) in msg and "expected" in msg and "\n" not in msg


def test_defaults_come_from_the_signature_and_describe_lists_every_option():
    spec = get_sampler("dds")
    assert spec.defaults == signature_defaults(spec.fn)
    d = spec.describe()
    assert set(d) == set(spec.defaults)
    assert d["gamma"]["accepts"] == "'auto' or a number > 0" and d["eta"]["accepts"] == "a number in [0, 1]"
    assert d["clip"]["accepts"] == "None or a number > 0"
    assert d["dc"]["accepts"] == "one of 'auto', 'prox', 'normal' or a callable"


def test_ints_are_promoted_for_float_knobs_and_integral_floats_for_int_knobs():
    spec = get_sampler("dds")
    kn = resolve_knobs(spec, {"gamma": 10, "cg_iters": 20.0})
    assert kn["gamma"] == 10.0 and isinstance(kn["gamma"], float)
    assert kn["cg_iters"] == 20 and isinstance(kn["cg_iters"], int)
    assert resolve_knobs(get_sampler("stsl"), {"cap": math.inf})["cap"] == math.inf
    assert resolve_knobs(get_sampler("wiener"), {"reg": "auto"})["reg"] == "auto"


def test_unknown_option_lists_the_valid_ones():
    with pytest.raises(UnknownNameError, match="valid options: .*gamma"):
        resolve_knobs(get_sampler("dds"), {"gama": 1.0})


def test_registration_requires_a_declaration_for_exactly_the_signature_options():
    def f(prior, op, y, *, generators, a=1, b=2.0, progress=False):
        return None

    with pytest.raises(TypeError, match="undeclared \\['b'\\]"):
        register_sampler("test-undeclared", knobs=dict(a=Int(0, doc="a")))(f)
    with pytest.raises(TypeError, match="not in the signature \\['c'\\]"):
        register_sampler("test-extra", knobs=dict(a=Int(0, doc="a"), b=Float(doc="b"), c=Float(doc="c")))(f)
    with pytest.raises(InvsolveError):  # a default outside its own range is a registration error
        register_sampler("test-bad-default", knobs=dict(a=Int(2, doc="a"), b=Choice(1.0, doc="b")))(f)
    assert "test-undeclared" not in available_samplers() and "test-bad-default" not in available_samplers()
