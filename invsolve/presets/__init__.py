"""Tuned settings, one home: per (embedded prior, operator family, sampler, noise) presets.

A sampler's registered defaults are meant for any prior (a user's own checkpoint gets them). Where an embedded prior
has settings chosen on validation images, they live here, in ``invsolve/presets/<prior>.yaml`` (package data;
``classical.yaml`` holds the prior-free baselines), and :func:`invsolve.solve`, ``invsolve reconstruct`` and
``invsolve evaluate`` all read them. Precedence everywhere: registered defaults < preset < the user's explicit
options. ``Result.config["preset"]`` records the preset applied (its id and the options it set) or ``None``.

File format::

    prior: mri-brain
    presets:
      - id: mri-dds-noiseless          # unique within the file
        task: mri                      # operator family: the operator class's ``task_family``
        sampler: dds
        noise: noiseless               # noiseless | noisy | any   (noiseless: sigma_y == 0; noisy: sigma_y > 0)
        knobs: {dc: normal, cg_iters: 100}     # checked against the sampler's declared options when loaded
        validation: "MNI152 guard slices z=94,113 (never trained on, disjoint from the test slab), uniform1d 4x/8x"
        source: "how it was chosen (a command, a results file)"

Lookup (:func:`find`): the presets of ``prior`` for ``family`` and ``sampler`` whose ``noise`` matches; an exact
``noiseless`` / ``noisy`` match wins over ``any``; an unknown noise level (``noisy=None``) matches only ``any``.
Presets are never written at run time: a tuning run writes its choice in this format into its own output directory,
and a separate explicit step merges it into a source checkout.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from ..errors import InputFileError, InvalidValueError, UnknownNameError

PRESET_DIR = Path(__file__).resolve().parent
CLASSICAL = "classical"  # file of the baselines that use no prior
NOISE = ("noiseless", "noisy", "any")
_KEYS = ("id", "task", "sampler", "noise", "knobs", "validation", "source")


@dataclass(frozen=True)
class Preset:
    """One tuned setting (see the module docstring for the fields)."""

    id: str
    prior: Optional[str]
    task: str
    sampler: str
    noise: str
    knobs: Dict[str, Any] = field(default_factory=dict, hash=False)
    validation: str = ""
    source: str = ""
    file: str = ""

    def record(self) -> Dict[str, Any]:
        """What ``Result.config["preset"]`` stores."""
        return {"id": self.id, "prior": self.prior, "task": self.task, "noise": self.noise, "knobs": dict(self.knobs),
                "validation": self.validation, "file": self.file}


def _file_of(prior: Optional[str]) -> Path:
    return PRESET_DIR / f"{CLASSICAL if prior is None else prior}.yaml"


def load_file(path: Union[str, Path]) -> List[Preset]:
    """Read and validate a preset file (package data or a tuning run's ``tuned.yaml``).

    Raises :class:`~invsolve.errors.InputFileError` for a malformed file, :class:`~invsolve.errors.InvalidValueError`
    / :class:`~invsolve.errors.UnknownNameError` for a preset whose sampler or options are not accepted (naming the
    file and the preset id).
    """
    import yaml

    from ..samplers.base import get_sampler, resolve_knobs

    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise InputFileError(f"cannot read preset file {str(p)!r}: {e}") from e
    if not isinstance(raw, dict) or not isinstance(raw.get("presets"), list):
        raise InputFileError(f"preset file {str(p)!r} must be a mapping with 'prior' and a list 'presets'")
    prior = raw.get("prior")
    out, seen = [], set()
    for i, e in enumerate(raw["presets"]):
        where = f"preset file {p.name}, entry {i}"
        if not isinstance(e, dict):
            raise InputFileError(f"{where}: expected a mapping with keys {list(_KEYS)}, got {e!r}")
        missing, extra = [k for k in _KEYS if k not in e], sorted(set(e) - set(_KEYS))
        if missing or extra:
            raise InputFileError(f"{where} (id {e.get('id')!r}): missing keys {missing}, unknown keys {extra}; "
                                 f"expected {list(_KEYS)}")
        pid = e["id"]
        if not isinstance(pid, str) or not pid or pid in seen:
            raise InputFileError(f"{where}: id must be a non-empty string unique in the file, got {pid!r}")
        seen.add(pid)
        if e["noise"] not in NOISE:
            raise InvalidValueError(f"{where} (id {pid!r}): noise={e['noise']!r} is not accepted; expected one of "
                                    f"{', '.join(NOISE)}")
        if not isinstance(e["knobs"], dict):
            raise InputFileError(f"{where} (id {pid!r}): knobs must be a mapping of sampler options")
        try:
            spec = get_sampler(e["sampler"])
            resolve_knobs(spec, e["knobs"])
        except (InvalidValueError, UnknownNameError) as err:
            raise type(err)(f"{where} (id {pid!r}): {err}") from err
        if (prior is None) == spec.needs_prior:
            raise InputFileError(f"{where} (id {pid!r}): sampler {spec.name!r} "
                                 f"{'needs a prior' if spec.needs_prior else 'uses no prior'}; presets of prior-free "
                                 f"baselines go in {CLASSICAL}.yaml (prior: null), the others in <prior>.yaml")
        out.append(Preset(pid, prior, str(e["task"]), spec.name, e["noise"], dict(e["knobs"]), str(e["validation"]),
                          str(e["source"]), p.name))
    return out


@lru_cache(maxsize=None)
def _presets(prior: Optional[str]) -> tuple:
    f = _file_of(prior)
    if not f.is_file():
        return ()
    presets = load_file(f)
    declared = presets[0].prior if presets else prior
    if declared != prior:
        raise InputFileError(f"preset file {f.name} declares prior {declared!r}; expected {prior!r}")
    return tuple(presets)


def presets(prior: Optional[str]) -> List[Preset]:
    """Every preset of ``prior`` (``None``: the prior-free baselines); empty for priors without a file."""
    return list(_presets(prior))


def available() -> Dict[str, List[str]]:
    """File stem (prior name or ``classical``) -> preset ids."""
    return {f.stem: [p.id for p in _presets(None if f.stem == CLASSICAL else f.stem)]
            for f in sorted(PRESET_DIR.glob("*.yaml"))}


def find(prior: Optional[str], family: Optional[str], sampler: str, noisy: Optional[bool]) -> Optional[Preset]:
    """The preset for this prior, operator family, sampler and noise (module docstring), or ``None``."""
    if family is None:
        return None
    cands = [p for p in _presets(prior) if p.task == family and p.sampler == sampler]
    want = None if noisy is None else ("noisy" if noisy else "noiseless")
    for p in cands:
        if want is not None and p.noise == want:
            return p
    for p in cands:
        if p.noise == "any":
            return p
    return None


def needs_noise(prior: Optional[str], family: Optional[str], sampler: str) -> bool:
    """Whether the lookup for this prior, family and sampler depends on the noise level (a ``noiseless`` or ``noisy``
    preset exists), so that an unknown level is worth estimating."""
    return any(p.task == family and p.sampler == sampler and p.noise != "any" for p in _presets(prior))


def get(prior: Optional[str], preset_id: str) -> Preset:
    """The preset ``preset_id`` of ``prior``; :class:`UnknownNameError` listing the ids otherwise."""
    for p in _presets(prior):
        if p.id == preset_id:
            return p
    ids = [p.id for p in _presets(prior)]
    raise UnknownNameError(f"unknown preset {preset_id!r} for prior {prior!r}; its presets: {ids or 'none'}")


def select(preset: Union[None, bool, str], prior: Optional[str], family: Optional[str], sampler: str,
           noisy: Optional[bool]) -> Optional[Preset]:
    """Resolve the ``preset=`` argument: ``None``/``True`` look one up, ``False`` turns presets off, a string
    selects that id (which must be for ``sampler``)."""
    if preset is False:
        return None
    if preset is None or preset is True:
        return find(prior, family, sampler, noisy)
    if not isinstance(preset, str):
        raise InvalidValueError(f"preset={preset!r} is not accepted; expected None (look one up), False (off) or a "
                                f"preset id (see invsolve.presets.available())")
    p = get(prior, preset)
    if p.sampler != sampler:
        raise InvalidValueError(f"preset={preset!r} is for sampler {p.sampler!r}, not {sampler!r}")
    return p
