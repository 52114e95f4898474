"""Declared sampler options: the accepted values of each knob, stated once next to the sampler.

A sampler's defaults come from its signature; its ``knobs=`` declaration (a :class:`Knob` per option) says what
each option accepts and means. :func:`check_knob` validates a user value before any computation and raises
:class:`~invsolve.errors.InvalidValueError` naming the sampler, the option, the value and what is accepted.

    register_sampler("dds", knobs=dict(
        steps=Int(1, doc="sampling steps"),
        eta=Float(0, 1, doc="fraction of fresh noise when re-noising"),
        dc=Choice("prox", "normal", doc="data-consistency form"),
        clip=Float(0, None, low_open=True, optional=True, doc="clamp x0_hat to [-clip, clip]"),
    ))
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Optional, Tuple

from ..errors import InvalidValueError


@dataclass(frozen=True)
class Knob:
    """What one sampler option accepts.

    Attributes:
        kind: ``"int"``, ``"float"``, ``"bool"``, ``"choice"`` (one of ``choices``), ``"mapping"`` (a dict or
            ``None``), ``"str"`` (a string: a path, a function reference), ``"ints"`` (an integer or a non-empty
            list of integers, each in the bounds; a list of exactly ``length`` when given) or ``"any"`` (validated
            by the sampler itself).
        low, high: inclusive bounds (``None``: unbounded); ``low_open`` / ``high_open`` make them exclusive.
        choices: accepted values of a ``"choice"`` knob; for ``"float"`` knobs, strings also accepted (e.g. ``"auto"``).
        optional: ``None`` is accepted too (meaning "off" or "derive it").
        inf_ok: ``float("inf")`` is accepted (meaning "unbounded"); NaN never is.
        doc: one line: what the option does.
        callable_ok: a callable is accepted too (e.g. a user-supplied step of a ``"choice"`` knob).
    """

    kind: str
    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False
    choices: Tuple[Any, ...] = ()
    optional: bool = False
    doc: str = ""
    inf_ok: bool = False
    callable_ok: bool = False
    length: Optional[int] = None
    empty_ok: bool = False

    def describe(self) -> str:
        """Accepted values in words, e.g. ``"a number in [0, 1]"``, ``"None or an integer >= 1"``."""
        if self.kind == "choice":
            txt = "one of " + ", ".join(repr(c) for c in self.choices)
        elif self.kind == "bool":
            txt = "true or false"
        elif self.kind == "mapping":
            txt = "a mapping of options"
        elif self.kind == "any":
            txt = "any value the sampler documents"
        elif self.kind == "str":
            txt = "a string"
        elif self.kind == "ints":
            each = _range_text(self)
            txt = (f"a list of {self.length} integers" if self.length else "an integer or a list of integers"
                   + (" (possibly empty)" if self.empty_ok else "")) + (
                f", each{each}" if each else "")
        else:
            noun = "an integer" if self.kind == "int" else "a number"
            txt = noun + _range_text(self) + (" (inf: unbounded)" if self.inf_ok else "")
            if self.choices:
                txt = " or ".join(repr(c) for c in self.choices) + " or " + txt
        txt = txt + " or a callable" if self.callable_ok else txt
        return ("None or " + txt) if self.optional else txt

    def check(self, value: Any, where: str) -> Any:
        """``value`` if accepted (ints promoted to float for float knobs), else :class:`InvalidValueError`."""
        if value is None:
            if self.optional or self.kind == "any":
                return None
            raise InvalidValueError(f"{where}=None is not accepted; expected {self.describe()}")
        if self.kind == "any" or (self.callable_ok and callable(value)):
            return value
        if self.kind == "bool":
            if isinstance(value, bool):
                return value
            raise InvalidValueError(f"{where}={value!r} is not accepted; expected {self.describe()}")
        if self.kind == "mapping":
            if isinstance(value, dict):
                return value
            raise InvalidValueError(f"{where}={value!r} is not accepted; expected {self.describe()}")
        if self.kind == "str":
            if isinstance(value, str) and value:
                return value
            raise InvalidValueError(f"{where}={value!r} is not accepted; expected {self.describe()}")
        if self.kind == "ints":
            return self._check_ints(value, where)
        if self.kind == "choice":
            if any(value == c and type(value) is type(c) for c in self.choices):
                return value
            raise InvalidValueError(f"{where}={value!r} is not accepted; expected {self.describe()}")
        if isinstance(value, str) and value in self.choices:
            return value
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise InvalidValueError(f"{where}={value!r} is not accepted; expected {self.describe()}")
        given = value
        if self.kind == "int":
            if not isinstance(value, numbers.Integral):
                if float(value).is_integer():
                    value = int(value)
                else:
                    raise InvalidValueError(f"{where}={value!r} is not accepted; expected {self.describe()}")
            value = int(value)
        else:
            value = float(value)
            if math.isnan(value) or (math.isinf(value) and not (self.inf_ok and value > 0)):
                raise InvalidValueError(f"{where}={given!r} is not accepted; expected {self.describe()}")
        if not _in_range(self, value):
            raise InvalidValueError(f"{where}={given!r} is out of range; expected {self.describe()}")
        return value


    def _check_ints(self, value: Any, where: str):
        scalar = not isinstance(value, (list, tuple))
        items = [value] if scalar else list(value)
        ok = (not scalar or self.length is None) and (len(items) > 0 or self.empty_ok) and (self.length is None
                                                                       or len(items) == self.length)
        if ok and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in items):
            if all(_in_range(self, int(v)) for v in items):
                return int(value) if scalar else [int(v) for v in items]
            raise InvalidValueError(f"{where}={value!r} is out of range; expected {self.describe()}")
        raise InvalidValueError(f"{where}={value!r} is not accepted; expected {self.describe()}")


def _in_range(k: Knob, v: float) -> bool:
    if k.low is not None and (v < k.low or (k.low_open and v == k.low)):
        return False
    if k.high is not None and (v > k.high or (k.high_open and v == k.high)):
        return False
    return True


def _num(v: float) -> str:
    return f"{v:g}"


def _range_text(k: Knob) -> str:
    lo, hi = k.low, k.high
    if lo is None and hi is None:
        return ""
    if lo is not None and hi is not None:
        return f" in {'(' if k.low_open else '['}{_num(lo)}, {_num(hi)}{')' if k.high_open else ']'}"
    if lo is not None:
        return f" {'>' if k.low_open else '>='} {_num(lo)}"
    return f" {'<' if k.high_open else '<='} {_num(hi)}"


def Int(low: Optional[int] = None, high: Optional[int] = None, *, optional: bool = False, doc: str = "") -> Knob:
    """An integer option in ``[low, high]``."""
    return Knob("int", low, high, optional=optional, doc=doc)


def Float(low: Optional[float] = None, high: Optional[float] = None, *, low_open: bool = False,
          high_open: bool = False, optional: bool = False, also: Tuple[str, ...] = (), inf_ok: bool = False,
          doc: str = "") -> Knob:
    """A real option in ``[low, high]`` (``low_open`` / ``high_open``: exclusive); ``also``: accepted strings;
    ``inf_ok``: ``inf`` means unbounded."""
    return Knob("float", low, high, low_open, high_open, tuple(also), optional, doc, inf_ok)


def Choice(*choices: Any, optional: bool = False, callable_ok: bool = False, doc: str = "") -> Knob:
    """One of ``choices`` (compared by value and type); ``callable_ok``: or a callable."""
    return Knob("choice", choices=tuple(choices), optional=optional, doc=doc, callable_ok=callable_ok)


def Str(*, optional: bool = False, doc: str = "") -> Knob:
    """A non-empty string (a path, a ``module:function`` reference)."""
    return Knob("str", optional=optional, doc=doc)


def Ints(low: Optional[int] = None, high: Optional[int] = None, *, length: Optional[int] = None,
         optional: bool = False, empty_ok: bool = False, doc: str = "") -> Knob:
    """An integer or a non-empty list of integers in ``[low, high]``; ``length``: a list of exactly that many;
    ``empty_ok``: the empty list too."""
    return Knob("ints", low, high, optional=optional, doc=doc, length=length, empty_ok=empty_ok)


def Bool(doc: str = "") -> Knob:
    return Knob("bool", doc=doc)


def Mapping(doc: str = "") -> Knob:
    """A dict of options passed on (validated by whoever consumes it), or ``None``."""
    return Knob("mapping", optional=True, doc=doc)


def Any_(doc: str = "", optional: bool = True) -> Knob:
    """Validated by the sampler itself (e.g. a callable)."""
    return Knob("any", optional=optional, doc=doc)


STEPS = Int(1, 10000, doc="sampling steps (network calls of the outer loop)")
