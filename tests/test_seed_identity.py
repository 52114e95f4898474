"""An image's result depends on the image and the seed, never on its batch-mates: simulated measurements are keyed by
the image's source index, ``invsolve reconstruct`` seeds every image with ``solver.seed``, ``solve(seed=[...])`` gives
item ``b`` the draws of ``seed[b]`` only, and a benchmark item does not depend on the task's selection."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import invsolve as inv
from invsolve.cli import main
from invsolve.tasks import build_problem

ROOT = Path(__file__).resolve().parents[1]
CFG = ROOT / "configs" / "reconstruct"


@pytest.mark.parametrize("config,image,selections", [
    ("deblur_dds.yaml", 6, ([6], [0, 6], [6, 9, 3])),   # noisy measurements (sigma 0.01)
    ("mri_dds.yaml", 5, ([5], [0, 5])),                  # the case of the issue: 36 % apart before
])
def test_cli_image_alone_or_with_others_gives_the_same_reconstruction(config, image, selections, tmp_path):
    recs = []
    for k, sel in enumerate(selections):
        out = tmp_path / f"o{k}"
        assert main(["reconstruct", "--no-progress", str(CFG / config), "solver.steps=2", "baselines=[]",
                     f"problem.index=[{','.join(map(str, sel))}]", f"output.dir={out}"]) == 0
        recs.append(np.load(out / "reconstruction.npy")[sel.index(image)])
        run = json.loads((out / "run.json").read_text())
        assert set(run["seeds"]["per_image"].values()) == {0}
    # equal to float tolerance: the network rounds a batch of 2 differently from a batch of 1 (7e-7 measured) and
    # DDS's data consistency (normal equations solved to 1e-4 by up to 400 CG iterations) amplifies that to ~1e-3
    # relative; the position-seeded CLI this replaces was 36 % apart
    for r in recs[1:]:
        assert np.linalg.norm(r - recs[0]) <= 3e-3 * np.linalg.norm(recs[0])


@pytest.mark.parametrize("opts,image,other", [
    ({"task": "deblur", "noise_sigma": 0.05}, 6, 0),
    ({"task": "mri", "noise_sigma": 0.05}, 5, 0),
    ({"task": "ct", "noise_sigma": 0.5}, 1, 0),
    ({"task": "sr", "noise_sigma": 0.05}, 3, 9),
    # the held-out Navier-Stokes bank is simulated first (minutes on CPU)
    pytest.param({"task": "ns", "noise_sigma": 1.0, "size": 32, "solver_size": 32}, 1, 0, marks=pytest.mark.slow),
])
def test_simulated_noise_is_keyed_by_the_image_not_its_position(opts, image, other):
    alone = build_problem({**opts, "index": [image]})
    mixed = build_problem({**opts, "index": [other, image]})
    # equal up to float rounding (batched FFTs / PDE steps round differently), far below the noise level
    torch.testing.assert_close(mixed.y[1:], alone.y, rtol=0, atol=1e-5 * float(alone.y.abs().max()))
    assert not torch.allclose(alone.y, alone.operator(alone.x_true), atol=1e-6)  # the noise is there
    # a different noise seed gives different noise for the same image
    reseeded = build_problem({**opts, "index": [image], "noise_seed": 1})
    assert not torch.allclose(reseeded.y, alone.y)


def test_solve_list_seed_item_depends_only_on_its_own_seed():
    from invsolve.operators import Blur, gaussian_kernel

    x = torch.rand(2, 3, 64, 64)
    op = Blur(gaussian_kernel(9, 2.0), image_size=64)
    y = op(x) + 0.01 * torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    kw = dict(prior="natural", sampler="dds", steps=2, num_samples=2, gamma=10.0)
    both = inv.solve(y, op, seed=[3, 7], **kw)
    alone = inv.solve(y[1:], op, seed=[7], **kw)
    swapped = inv.solve(y[[1, 0]], op, seed=[7, 3], **kw)
    assert both.config["seeds"] == [3, 4, 7, 8] and alone.config["seeds"] == [7, 8]
    torch.testing.assert_close(both.samples[1], alone.samples[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(both.samples[1], swapped.samples[0], rtol=0, atol=1e-5)
    assert not torch.allclose(both.samples[0, 0], both.samples[0, 1])  # the two samples differ


def test_harness_item_does_not_depend_on_the_selection(tmp_path):
    from invsolve.eval.harness import load_suite, run

    recs = {}
    for label, index in (("alone", [6]), ("mixed", [0, 6])):
        suite = {"name": f"sel-{label}", "output_dir": str(tmp_path / label), "lpips": False, "figures": 0,
                 "tasks": [{"id": "deblur", "task": "deblur", "index": index, "noise_sigma": 0.01}],
                 "methods": [{"id": "dds", "sampler": "dds", "steps": 2, "options": {"gamma": 10.0}}]}
        path = tmp_path / f"{label}.yaml"
        path.write_text(yaml.safe_dump(suite))
        counts = run(load_suite(path), path, progress=False, log=lambda *a: None)
        assert counts["failed"] == 0
        i = index.index(6)
        item = tmp_path / label / "items" / "deblur" / "dds" / f"i{i:03d}_s0"
        recs[label] = (np.load(item.with_suffix(".npy")), json.loads(item.with_suffix(".json").read_text()))
    np.testing.assert_allclose(recs["mixed"][0], recs["alone"][0], rtol=0, atol=2e-5)
    assert recs["mixed"][1]["name"] == recs["alone"][1]["name"]
    assert recs["mixed"][1]["metrics"]["psnr"] == pytest.approx(recs["alone"][1]["metrics"]["psnr"], abs=1e-3)
    assert recs["alone"][1]["solve_config"]["seeds"] == [0]  # the item's seed, as before
