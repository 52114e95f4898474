"""CT phantom and natural-photo data: training sources, held-out sets, loaders (CPU, fast)."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from invsolve.data import ct, natural
from invsolve.data.base import available_datasets, build_train_source
from invsolve.errors import InputFileError

CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parents[1]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def natural_source(tmp_path_factory):
    path = tmp_path_factory.mktemp("bank") / "bank.npz"
    spec = importlib.util.spec_from_file_location("prepare_natural_bank", ROOT / "scripts/prepare_natural_bank.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main([str(path), "--scales", "72", "128"])
    return build_train_source("natural", image_size=32, bank=str(path)), path


# ------------------------------------------------------------------------------------------------ CT
def test_ct_registered_and_source_shape_range_determinism():
    assert {"ct-phantom", "natural"} <= set(available_datasets())
    src = build_train_source("ct-phantom", image_size=48)
    assert src.channels == 1 and src.image_size == (48, 48) and "phantom" in src.description
    a = src.sample(6, _gen(1), CPU)
    assert a.shape == (6, 1, 48, 48) and a.dtype == torch.float32
    assert a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, src.sample(6, _gen(1), CPU))
    assert not torch.equal(a, src.sample(6, _gen(2), CPU))


def test_phantoms_are_diverse_and_all_variants_present():
    x, variants = ct.sample_phantoms(64, 64, _gen(0), return_variants=True)
    assert x.shape == (64, 1, 64, 64) and x.min() >= 0 and x.max() <= 1
    flat = x.flatten(1)
    assert (torch.cdist(flat, flat) + torch.eye(64) * 1e9).min() > 1.0  # every pair differs visibly
    body_frac = (flat > 0.05).float().mean(1)
    assert body_frac.min() > 0.1 and body_frac.max() < 0.95 and body_frac.std() > 0.05  # varied body sizes
    border = torch.cat([x[..., 0, :], x[..., -1, :], x[..., :, 0], x[..., :, -1]], -1)
    assert (border == 0).all()  # the body stays inside the image
    for name, flag in variants.items():
        assert 8 < int(flag.sum()) < 56, name  # each variant on for some phantoms, off for others
    # skull phantoms carry many bone-bright pixels
    bright = (flat > 0.74).float().mean(1)
    assert bright[variants["skull"]].mean() > 3 * bright[~variants["skull"]].mean()
    # texture = small pixel-to-pixel variation inside otherwise flat tissue
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs()
    tex = ((dx > 1e-3) & (dx < 0.03)).flatten(1).float().mean(1)
    assert tex[variants["textured"]].mean() > 2 * tex[~variants["textured"]].mean()


def test_heldout_ct_slices():
    imgs, names = ct.heldout_ct_slices(64)
    assert "CT_small.dcm" in names and len(names) == imgs.shape[0] >= 1
    assert imgs.shape[1:] == (1, 64, 64) and imgs.dtype == torch.float32
    assert imgs.min() >= 0 and imgs.max() <= 1
    assert (imgs.flatten(1).std(1) > 0.05).all()  # real content, not blank
    soft = ((imgs > 0.45) & (imgs < 0.6)).flatten(1).float().mean(1)
    assert (soft > 0.1).all()  # soft tissue sits near 0.5 in the shared HU window


def test_load_dicom_file_and_errors(tmp_path):
    path = ct.pydicom_test_dir() / "CT_small.dcm"
    hu = ct.load_dicom(path)
    assert hu.shape == (1, 1, 128, 128)
    assert -1100 < hu.min() < -500 and 500 < hu.max() < 3000  # Hounsfield units (intercept -1024 applied)
    with pytest.raises(InputFileError, match="does not exist"):
        ct.load_dicom(tmp_path / "missing.dcm")
    (tmp_path / "junk.dcm").write_bytes(b"not a dicom")
    with pytest.raises(InputFileError):
        ct.load_dicom(tmp_path / "junk.dcm")
    with pytest.raises(InputFileError, match="no readable DICOM"):
        ct.load_dicom(tmp_path)


def test_load_dicom_series_sorted(tmp_path):
    import pydicom

    src = ct.pydicom_test_dir() / "CT_small.dcm"
    for i, z in enumerate([30.0, 10.0, 20.0]):
        ds = pydicom.dcmread(src)
        ds.ImagePositionPatient = [0.0, 0.0, z]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.RescaleIntercept = -1000 + z  # tag each slice by its position
        ds.save_as(tmp_path / f"s{i}.dcm")
    vol = ct.load_dicom(tmp_path)
    assert vol.shape == (3, 1, 128, 128)
    offsets = (vol - vol[:1]).flatten(1).mean(1)
    assert torch.allclose(offsets, torch.tensor([0.0, 10.0, 20.0]))


# ------------------------------------------------------------------------------------------------ natural
def test_split_disjoint_and_excludes_graphics():
    assert not set(natural.HELDOUT) & set(natural.TRAIN)
    assert {"flower", "china"} & set(natural.HELDOUT)  # a scikit-learn image is held out
    for graphic in ("color", "logo", "horse", "text", "page"):
        assert graphic not in natural.TRAIN


def test_bank_has_no_heldout_photo(natural_source):
    src, path = natural_source
    with np.load(path) as z:
        names = set(map(str, z["names"]))
        assert names == set(natural.TRAIN)
        assert all(z[k].dtype == np.uint8 for k in z.files if k.startswith("img_"))
        assert sorted(set(z["scales"].tolist())) == [72, 128]
    assert not names & set(natural.HELDOUT)
    assert set(src.info["photos"]) == set(natural.TRAIN)


def test_natural_source_shape_range_determinism(natural_source):
    src, _ = natural_source
    assert src.channels == 3 and src.image_size == (32, 32)
    a = src.sample(16, _gen(0), CPU)
    assert a.shape == (16, 3, 32, 32) and a.dtype == torch.float32
    assert a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, src.sample(16, _gen(0), CPU))
    assert not torch.equal(a, src.sample(16, _gen(1), CPU))
    flat = a.flatten(1)
    assert (torch.cdist(flat, flat) + torch.eye(16) * 1e9).min() > 0  # distinct crops
    colour = (a.max(1).values - a.min(1).values).flatten(1).mean(1)
    assert (colour > 0.02).any()  # colour photos are sampled


def test_bank_refuses_heldout_photo(tmp_path):
    img = np.zeros((40, 40, 3), np.uint8)
    np.savez(tmp_path / "bad.npz", img_000=img, names=np.array(["astronaut"]), scales=np.array([40]),
             weights=np.array([1.0]))
    with pytest.raises(InputFileError, match="held-out"):
        build_train_source("natural", image_size=32, bank=str(tmp_path / "bad.npz"))
    with pytest.raises(InputFileError, match="does not exist"):
        build_train_source("natural", image_size=32, bank=str(tmp_path / "nope.npz"))


def test_heldout_photos():
    imgs, names = natural.heldout_photos(32)
    assert imgs.shape == (len(names), 3, 32, 32) and len(names) >= 8
    assert imgs.min() >= 0 and imgs.max() <= 1
    assert {n.split("/")[0] for n in names} == set(natural.HELDOUT)
    assert torch.equal(imgs, natural.heldout_photos(32)[0])  # deterministic


def test_load_image(tmp_path):
    from PIL import Image

    rgba = np.random.default_rng(0).integers(0, 256, (10, 12, 4), dtype=np.uint8)
    Image.fromarray(rgba).save(tmp_path / "a.png")
    x = natural.load_image(tmp_path / "a.png")
    assert x.shape == (1, 3, 10, 12) and x.dtype == torch.float32
    assert torch.allclose(x[0, :, 2, 3] * 255, torch.tensor(rgba[2, 3, :3], dtype=torch.float32))
    with pytest.raises(InputFileError, match="does not exist"):
        natural.load_image(tmp_path / "missing.png")
    (tmp_path / "bad.png").write_bytes(b"nope")
    with pytest.raises(InputFileError, match="cannot read"):
        natural.load_image(tmp_path / "bad.png")
