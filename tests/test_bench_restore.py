"""Benchmark scripts keep earlier measurements: a fresh checkout has no ``runs/`` work directory, and a summary built
from new items only would overwrite the committed results file with fewer rows (nothing computed may be lost)."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))


@pytest.fixture(scope="module")
def bench():
    import bench_enkg_ns

    return bench_enkg_ns


def _committed(bench):
    payload = json.loads((BENCH / "results" / "enkg_ns.json").read_text())
    return payload["results"], payload["settings"].get("prior_revision", bench.LEGACY_REVISION)


def test_restored_items_reproduce_the_committed_summary(bench, tmp_path):
    committed, rev = _committed(bench)
    n = bench.restore_items(tmp_path, "enkg_ns", rev)
    assert n == sum(s["n_fields"] for s in committed.values()) > 0
    for key, s in committed.items():
        tag = key.split(" sigma=")[0]
        items = [json.loads((tmp_path / f"{tag}_field{f}_sigma{s['sigma']:g}{bench._suffix(rev)}.json").read_text())
                 for f in s["fields"]]
        assert all(r["method"] == s["method"] and r["restored_from"].startswith("enkg_ns.json") for r in items)
        assert all(r["prior_revision"] == rev for r in items)
        # per-field values are stored at 4 decimals, so the recomputed mean agrees to that precision
        assert np.mean([r["rel_l2_mean"] for r in items]) == pytest.approx(s["rel_l2_mean"]["mean"], abs=1e-4)
        assert items[0].get("forward_evaluations") == s.get("forward_evaluations")


def test_restore_never_overwrites_an_existing_item(bench, tmp_path):
    _, rev = _committed(bench)
    bench.restore_items(tmp_path, "enkg_ns", rev)
    victim = sorted(tmp_path.glob("*.json"))[0]
    victim.write_text('{"mine": 1}')
    assert bench.restore_items(tmp_path, "enkg_ns", rev) == 0
    assert json.loads(victim.read_text()) == {"mine": 1}
    assert bench.restore_items(tmp_path, "no_such_results_file") == 0


def test_results_of_other_prior_weights_are_not_restored(bench, tmp_path):
    _, rev = _committed(bench)
    assert bench.restore_items(tmp_path, "enkg_ns", "0" * 12 if rev != "0" * 12 else "1" * 12) == 0
    assert not list(tmp_path.glob("*.json"))


def test_prior_revision_names_the_weights(tmp_path):
    from _common import prior_revision

    rev = prior_revision("ns-vorticity")
    assert len(rev) == 12 and int(rev, 16) >= 0
    (tmp_path / "a.safetensors").write_bytes(b"weights")
    other = prior_revision(str(tmp_path))
    assert other != rev and len(other) == 12
    assert prior_revision("grf") == "grf"  # not a file-backed prior


def test_stage2_recipe_continues_the_stage1_architecture():
    """``ns-vorticity-stage2.yaml`` restates stage 1's model and prior sections (it starts from its weights)."""
    from invsolve.train import load_recipe

    root = BENCH.parent / "configs" / "train"
    s1, s2 = load_recipe(root / "ns-vorticity.yaml"), load_recipe(root / "ns-vorticity-stage2.yaml")
    assert s2.model == s1.model and s2.prior == s1.prior and s2.name == s1.name
    from invsolve.train_output import export_dir, run_dir

    assert s2.train.init_from == str(export_dir(s1)) and run_dir(s2) != run_dir(s1)


def test_no_prior_data_fit_reduces_the_misfit(bench):
    """The ``lsq`` reference row (Adam through the differentiable solver, no prior) really fits the data."""
    import torch

    from invsolve.operators import NavierStokes2D

    op = NavierStokes2D(32)
    g = torch.Generator().manual_seed(0)
    k = torch.fft.fftfreq(32, 1 / 32)
    spectrum = 1 / (1 + k[:, None] ** 2 + k[None, :] ** 2) ** 1.5  # smooth random field, about unit size
    x_true = torch.fft.ifft2(spectrum * torch.fft.fft2(torch.randn(32, 32, generator=g))).real
    x_true = (x_true / x_true.std() * 0.5)[None, None]
    with torch.no_grad():
        y = op(x_true)
    x = bench.data_fit(op, y, 8)
    assert x.shape == x_true.shape and not x.requires_grad
    with torch.no_grad():
        start = float((op(torch.zeros_like(x)) - y).norm())  # the fit starts from 0 (G(0) != 0: forcing)
        assert float((op(x) - y).norm()) < 0.9 * start  # a wrong-signed gradient would raise it
