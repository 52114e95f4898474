"""Shared helpers of the benchmark scripts that measure what ``invsolve evaluate`` cannot (operator speed, Dask
scaling, analytic-prior studies): the machine description and the one BENCHMARKS.md writer come from the harness
(:mod:`invsolve.eval.machine`, :func:`invsolve.eval.report.update_section`); results are JSON under
``benchmarks/results/``."""
from __future__ import annotations

import json
import os
from pathlib import Path

from invsolve.eval.machine import describe
from invsolve.eval.report import update_section

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def machine(device=None) -> dict:
    """:func:`invsolve.eval.machine.describe` (CPU model / GPU, cores, torch threads and version, load average,
    date), with ``load_average`` as the 1-minute value the scripts' tables print."""
    d = describe(device)
    d["load_average_1_5_15"] = d["load_average"]
    d["load_average"] = d["load_average"][0] if d["load_average"] else None
    return d


def write_json(path: Path, payload, indent: int = 1) -> Path:
    """Write ``payload`` to ``path`` atomically (temporary file, then a rename)."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=indent))
    os.replace(tmp, path)
    return path


def write_result(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    return write_json(RESULTS / f"{name}.json", payload, indent=2)


def update_benchmarks_md(section: str, body: str) -> None:
    """Replace (or append) the block between ``<!-- section:begin -->`` and ``<!-- section:end -->`` of
    BENCHMARKS.md (through the harness's single writer, which also keeps the file header)."""
    update_section(ROOT / "BENCHMARKS.md", f"<!-- {section}:begin -->", f"<!-- {section}:end -->", body)
