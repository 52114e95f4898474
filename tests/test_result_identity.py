"""Stored evaluation results stay valid: the configuration hash of every (task, method) of the core suite is the one
recorded before the sampler refactor (issue #25), and every stored result's ``method_hash`` matches it.

A result in ``results/core/items`` is current while its method's configuration hash (sampler, prior, the knobs that
change what it computes, data scale, samples; see :mod:`invsolve.eval.identity`) is unchanged; moving the hash
policy out of the sampler registry must not re-label any of them.
"""
from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).parent / "golden" / "core_method_hashes.json"


def core_hashes():
    from invsolve.eval import datasets, harness

    suite = harness.load_suite(ROOT / "configs" / "bench" / "core.yaml")
    plan = harness.Plan(suite, ROOT / "results" / "core", "cpu")
    harness._prepare_methods(plan, lambda *a: None)
    return {f"{t['id']}/{m['id']}": datasets.options_hash(harness.method_config(plan, t["id"], m["id"]))
            for t in suite["tasks"] for m in suite["methods"]}


def test_core_method_hashes_are_unchanged():
    want = json.loads(GOLDEN.read_text())
    got = core_hashes()
    assert got == want, {k: (got.get(k), want.get(k)) for k in set(got) | set(want) if got.get(k) != want.get(k)}


def test_every_stored_core_result_is_current():
    hashes = core_hashes()
    items = sorted((ROOT / "results" / "core" / "items").glob("*/*/*.json"))
    assert len(items) > 200
    stale = [str(p.relative_to(ROOT)) for p in items
             if json.loads(p.read_text())["method_hash"] != hashes[f"{p.parent.parent.name}/{p.parent.name}"]]
    assert not stale, stale[:10]
