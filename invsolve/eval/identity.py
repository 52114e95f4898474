"""What identifies a method's result for the evaluation cache: the configuration hashed into every result file.

A stored result stays current while its method's configuration hash is unchanged. Two policies keep results valid
across versions of a sampler, and both belong to the evaluation, not to the sampler:

* **neutral options**: options whose default leaves the algorithm unchanged ("off"). While they hold that default
  they are left out of the hash, so adding such an option to a sampler keeps its stored results valid.
* **versions**: a sampler's version is bumped when a default or the update rule changes what the same knobs compute;
  from version 2 on it is part of the hash (version 1 is left out, so results stored before versions existed stay
  current), so stored results of the older rule are re-run.

Add a sampler's new "off by default" option to :data:`NEUTRAL` in the same change that adds the option, and bump
:data:`VERSION` in the change that alters what a sampler computes.
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

NEUTRAL: Dict[str, Tuple[str, ...]] = {
    "dds": ("clip", "init", "init_knobs", "t_start", "cg_graph"),
    "dps": ("sigma_y",),
    "enkg": ("sigma_y",),
    "stsl": ("cap", "sigma_y"),
}
VERSION: Dict[str, int] = {
    "stsl": 2,  # the Polyak step rule became the default
    "dds": 2,  # noise-aware data consistency (normal equations to a relative tolerance when noiseless)
}


def identity_knobs(sampler: str, defaults: Dict[str, Any], knobs: Dict[str, Any]) -> Dict[str, Any]:
    """``knobs`` without the neutral options of ``sampler`` that are at their default (``defaults``)."""
    neutral = NEUTRAL.get(sampler, ())
    return {k: v for k, v in knobs.items() if not (k in neutral and v == defaults[k])}


def method_identity(sampler: str, defaults: Dict[str, Any], knobs: Dict[str, Any], prior, data_scale,
                    num_samples: int, sigma_y=None) -> Dict[str, Any]:
    """The hashed configuration of a method: sampler, prior, identity knobs (with any preset applied), data scale,
    samples, the noise level reaching the sampler (``sigma_y``; left out when 0 or unused) and, from version 2 on,
    the sampler's version."""
    cfg = {"sampler": sampler, "prior": prior, "knobs": identity_knobs(sampler, defaults, knobs),
           "data_scale": data_scale, "num_samples": num_samples}
    if sigma_y:
        cfg["sigma_y"] = sigma_y
    if VERSION.get(sampler, 1) > 1:
        cfg["sampler_version"] = VERSION[sampler]
    return cfg
