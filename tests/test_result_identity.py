"""Stored evaluation results stay valid: the configuration hash of every (task, method) of the core suite is the
recorded one, and every stored result's ``method_hash`` matches it.

A result in ``results/core/items`` is current while its method's configuration hash (sampler, prior, the knobs that
change what it computes with any preset applied, the noise level the sampler gets, data scale, samples; see
:mod:`invsolve.eval.identity`) is unchanged. The sampler refactor (issue #25) kept every hash recorded before it;
``tests/golden/core_method_hashes.json`` was re-recorded once since, for the changes meant to alter results (issue
#22: DDS's noise-aware data consistency, version 2; presets of the embedded priors; DiffPIR's ``sigma_floor``; the
deblurring noise keyed by image identity, issue #23; DAPS/RED-diff added), and the core suite re-run for them.
Re-record (only with such a change, and say so in the commit): ``python tests/test_result_identity.py --write``.
"""
from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).parent / "golden" / "core_method_hashes.json"


def core_hashes():
    """``task/method -> configuration hash`` of every pair of the core suite that runs (presets applied)."""
    import tempfile

    from invsolve.eval import harness

    suite = harness.load_suite(ROOT / "configs" / "bench" / "core.yaml")
    suite.update(output_dir=tempfile.mkdtemp(), lpips=False)
    plan = harness.prepare(suite, device="cpu", log=lambda *a: None)
    return {k: p["hash"] for k, p in sorted(plan.pairs.items()) if p.get("status") == "run"}


def test_core_method_hashes_are_unchanged():
    want = json.loads(GOLDEN.read_text())
    got = core_hashes()
    assert got == want, {k: (got.get(k), want.get(k)) for k in set(got) | set(want) if got.get(k) != want.get(k)}


def test_every_stored_core_result_is_current():
    hashes = core_hashes()
    items = sorted((ROOT / "results" / "core" / "items").glob("*/*/*.json"))
    assert len(items) > 200
    stale = [str(p.relative_to(ROOT)) for p in items if f"{p.parent.parent.name}/{p.parent.name}" in hashes
             and json.loads(p.read_text())["method_hash"] != hashes[f"{p.parent.parent.name}/{p.parent.name}"]]
    assert not stale, stale[:10]


if __name__ == "__main__":
    import sys

    if "--write" in sys.argv:
        GOLDEN.write_text(json.dumps(core_hashes(), indent=1, sort_keys=True) + "\n")
        print(f"wrote {GOLDEN}")
