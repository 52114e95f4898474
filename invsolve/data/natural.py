"""Natural-photo training data and held-out photos, all from images that ship inside installed packages.

Sources (read from the package folders on disk; nothing is ever downloaded): scikit-image's bundled images and
scikit-learn's two sample images. Every photo is converted to RGB float in [0, 1] (grey replicated to 3
channels, alpha dropped).

Fixed split (see :data:`HELDOUT` / :data:`TRAIN`):

* held out, never used for training: ``astronaut``, ``coffee``, ``chelsea`` (scikit-image) and ``flower``
  (scikit-learn) - four colour photographs (person, objects, animal, plant);
* training: the remaining photographs, weighted (colour photographs above greyscale, texture and scientific ones);
* excluded: synthetic or graphic images (colorwheel ``color``, ``logo``, ``horse`` silhouette, chessboards,
  ``phantom``, ``page``, ``text``), the motion-blurred ``clock_motion`` and the tiny ``microaneurysms``.

Training reads a *bank* (``.npz`` written by ``scripts/prepare_natural_bank.py``, or built in memory) of the
training photos downscaled (antialiased) to several shorter-side lengths, and draws random crops on the device.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputFileError, MissingDependencyError, missing_extra
from .base import TrainSource, register_dataset

# name -> (package, file name)
PHOTOS: Dict[str, Tuple[str, str]] = {
    "astronaut": ("skimage", "astronaut.png"),
    "coffee": ("skimage", "coffee.png"),
    "chelsea": ("skimage", "chelsea.png"),
    "flower": ("sklearn", "flower.jpg"),
    "china": ("sklearn", "china.jpg"),
    "rocket": ("skimage", "rocket.jpg"),
    "motorcycle_left": ("skimage", "motorcycle_left.png"),
    "motorcycle_right": ("skimage", "motorcycle_right.png"),
    "camera": ("skimage", "camera.png"),
    "coins": ("skimage", "coins.png"),
    "moon": ("skimage", "moon.png"),
    "brick": ("skimage", "brick.png"),
    "grass": ("skimage", "grass.png"),
    "gravel": ("skimage", "gravel.png"),
    "hubble_deep_field": ("skimage", "hubble_deep_field.jpg"),
    "immunohistochemistry": ("skimage", "ihc.png"),
    "retina": ("skimage", "retina.jpg"),
    "cell": ("skimage", "cell.png"),
}

HELDOUT: Tuple[str, ...] = ("astronaut", "coffee", "chelsea", "flower")

# training photo -> sampling weight: colour photographs first; greyscale, texture and scientific images lower
# (about 30% of crops are greyscale); the stereo pair motorcycle_left/right counts as about one photo.
TRAIN: Dict[str, float] = {
    "china": 1.5,
    "rocket": 1.0,
    "motorcycle_left": 0.7,
    "motorcycle_right": 0.7,
    "immunohistochemistry": 0.7,
    "hubble_deep_field": 0.5,
    "retina": 0.5,
    "camera": 0.5,
    "coins": 0.4,
    "moon": 0.3,
    "brick": 0.3,
    "grass": 0.3,
    "gravel": 0.3,
    "cell": 0.2,
}

SCALES: Tuple[int, ...] = (72, 96, 128, 192, 256)  # shorter side (pixels) of the stored training photos

# bank written by scripts/prepare_natural_bank.py by default; used when the package images are unavailable
DEFAULT_BANK = Path(__file__).with_name("natural_bank.npz")


# ----------------------------------------------------------------------------------------------- reading
def load_image(path) -> torch.Tensor:
    """Read a PNG/JPEG/TIFF image as float32 (1, C, H, W) in [0, 1].

    C is 1 for greyscale and 3 for colour (an alpha channel is dropped). 8- and 16-bit images are scaled by
    their integer range; float images are clipped to [0, 1].
    Raises:
        InputFileError: the file is missing or cannot be decoded as an image.
        MissingDependencyError: neither scikit-image nor Pillow is installed.
    """
    p = Path(path)
    if not p.is_file():
        raise InputFileError(f"load_image: image file {str(p)!r} does not exist")
    try:
        from skimage.io import imread
    except ImportError:
        try:
            from PIL import Image
        except ImportError as e:
            raise missing_extra("scikit-image", "data", "Reading image files") from e

        def imread(f):
            return np.asarray(Image.open(f))

    try:
        arr = np.asarray(imread(str(p)))
    except Exception as e:
        raise InputFileError(f"load_image: cannot read {str(p)!r} as an image: {type(e).__name__}: {e}") from e
    if arr.ndim == 3 and arr.shape[-1] in (2, 4):
        arr = arr[..., :-1]  # drop alpha
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3):
        raise InputFileError(f"load_image: {str(p)!r} has array shape {arr.shape}; expected (H, W[, 1|3|4])")
    if np.issubdtype(arr.dtype, np.integer):
        x = arr.astype(np.float32) / float(np.iinfo(arr.dtype).max)
    elif arr.dtype == bool:
        x = arr.astype(np.float32)
    else:
        x = np.clip(arr.astype(np.float32), 0.0, 1.0)
    return torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)[None]


def _package_dir(package: str) -> Path:
    try:
        if package == "skimage":
            import skimage.data as mod

            return Path(os.path.dirname(mod.__file__))
        import sklearn.datasets as mod

        return Path(os.path.dirname(mod.__file__)) / "images"
    except ImportError as e:
        name = "scikit-image" if package == "skimage" else "scikit-learn"
        raise missing_extra(name, "data", "The bundled natural photos") from e


def load_photo(name: str) -> torch.Tensor:
    """A bundled photo by name (see :data:`PHOTOS`) as RGB float32 (3, H, W) in [0, 1], read from disk."""
    from ..errors import UnknownNameError

    if name not in PHOTOS:
        raise UnknownNameError(f"unknown photo {name!r}; available: {sorted(PHOTOS)}")
    package, fname = PHOTOS[name]
    x = load_image(_package_dir(package) / fname)[0]
    return x.expand(3, -1, -1).contiguous() if x.shape[0] == 1 else x


def _resize_short(x: torch.Tensor, short: int) -> torch.Tensor:
    """(C, H, W) -> antialiased bilinear resize so that min(H, W) == short."""
    h, w = x.shape[-2:]
    f = short / min(h, w)
    hw = (max(short, round(h * f)), max(short, round(w * f)))
    return F.interpolate(x[None], size=hw, mode="bilinear", antialias=True, align_corners=False)[0].clamp(0, 1)


# ----------------------------------------------------------------------------------------------- bank
def make_bank(scales: Sequence[int] = SCALES) -> Dict[str, np.ndarray]:
    """Build the training bank: every TRAIN photo at every shorter-side length in ``scales``.

    Returns a dict for ``np.savez_compressed``: ``img_000``, ``img_001``, ... uint8 arrays (H, W, C) with C = 1
    for greyscale photos (replicated to RGB when loaded) or 3; ``names`` (photo name per array), ``scales``
    (shorter side per array), ``weights`` (photo sampling weight per array) and ``heldout`` (names never stored).
    """
    out, names, sc, weights = {}, [], [], []
    for name, weight in TRAIN.items():
        photo = load_photo(name)
        grey = bool((photo[0] == photo[1]).all() and (photo[1] == photo[2]).all())
        for s in scales:
            im = _resize_short(photo, int(s))
            im = im[:1] if grey else im
            out[f"img_{len(names):03d}"] = (im.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
            names.append(name)
            sc.append(int(s))
            weights.append(float(weight))
    out["names"] = np.array(names)
    out["scales"] = np.array(sc, dtype=np.int64)
    out["weights"] = np.array(weights, dtype=np.float64)
    out["heldout"] = np.array(HELDOUT)
    return out


def load_bank(path) -> Dict[str, np.ndarray]:
    """Read a bank ``.npz`` (see :func:`make_bank`) into a dict; InputFileError if missing or malformed."""
    p = Path(path)
    if not p.is_file():
        raise InputFileError(f"natural-photo bank {str(p)!r} does not exist "
                             "(write one with: python scripts/prepare_natural_bank.py OUT.npz)")
    try:
        with np.load(p, allow_pickle=False) as z:
            bank = {k: z[k] for k in z.files}
    except Exception as e:
        raise InputFileError(f"cannot read natural-photo bank {str(p)!r}: {type(e).__name__}: {e}") from e
    missing = {"names", "scales", "weights"} - set(bank)
    if missing:
        raise InputFileError(f"natural-photo bank {str(p)!r} lacks the keys {sorted(missing)}")
    return bank


class _CropSampler:
    """Random crops from a bank, on one device: photos zero-padded into one uint8 tensor, crops gathered at once."""

    def __init__(self, bank: Dict[str, np.ndarray], size: int):
        self.size = size
        keys = sorted(k for k in bank if k.startswith("img_"))
        arrays = [bank[k] for k in keys]
        keep = [i for i, a in enumerate(arrays) if min(a.shape[:2]) >= size]
        if not keep:
            raise InputFileError(f"natural-photo bank has no photo with both sides >= image_size={size}")
        self.arrays = [arrays[i] for i in keep]
        self.names = [str(bank["names"][i]) for i in keep]
        self.hw = torch.tensor([a.shape[:2] for a in self.arrays], dtype=torch.long)
        w = torch.as_tensor(bank["weights"], dtype=torch.float64)[keep]
        # each photo's weight is shared among its scales
        counts = {n: self.names.count(n) for n in set(self.names)}
        self.p = (w / torch.tensor([counts[n] for n in self.names], dtype=torch.float64)).float()
        self._cache = {}

    def _on(self, device):
        key = str(device)
        if key not in self._cache:
            hmax, wmax = int(self.hw[:, 0].max()), int(self.hw[:, 1].max())
            stack = np.zeros((len(self.arrays), hmax, wmax, 3), dtype=np.uint8)
            for i, a in enumerate(self.arrays):
                stack[i, : a.shape[0], : a.shape[1]] = a  # (H, W, 1) grey broadcasts to RGB
            t = torch.from_numpy(stack)
            self._cache[key] = (t.to(device), self.hw.to(device), self.p.to(device))
        return self._cache[key]

    def __call__(self, batch: int, g: torch.Generator, device) -> torch.Tensor:
        """(B, 3, size, size) float32 in [0, 1]: random photo/scale, crop, flip and colour jitter."""
        stack, hw, p = self._on(device)
        n, hmax, wmax, _ = stack.shape
        s = self.size
        k = torch.multinomial(p, batch, replacement=True, generator=g)
        u = torch.rand(batch, 7, generator=g, device=device)
        top = (u[:, 0] * (hw[k, 0] - s + 1)).long()
        left = (u[:, 1] * (hw[k, 1] - s + 1)).long()
        ar = torch.arange(s, device=device)
        rows = (top[:, None] + ar)[:, :, None]  # (B, s, 1)
        flip = u[:, 2] < 0.5
        cols = torch.where(flip[:, None], left[:, None] + s - 1 - ar, left[:, None] + ar)[:, None, :]
        crop = stack[k[:, None, None], rows, cols]  # (B, s, s, 3) uint8
        x = crop.permute(0, 3, 1, 2).float() / 255.0
        # colour jitter: brightness, contrast, saturation (small)
        bright = (u[:, 3] - 0.5) * 0.1
        contrast = 0.9 + 0.2 * u[:, 4]
        sat = 0.8 + 0.4 * u[:, 5]
        lum = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]
        x = lum + sat.view(-1, 1, 1, 1) * (x - lum)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = mean + contrast.view(-1, 1, 1, 1) * (x - mean) + bright.view(-1, 1, 1, 1)
        return x.clamp(0.0, 1.0)


@register_dataset("natural")
def build(image_size: int = 64, bank: Optional[str] = None, seed: int = 0, **_) -> TrainSource:
    """Training source of random crops of the TRAIN photos (3 channels, prior space ``2x - 1``).

    Args:
        image_size: crop side.
        bank: path of a bank ``.npz`` (``scripts/prepare_natural_bank.py``); None builds it from the installed
            scikit-image / scikit-learn packages in memory, or, where their images are unavailable, reads
            :data:`DEFAULT_BANK` (same photos and scales) if that file exists.
        seed: recorded in ``info`` (the batches depend only on the generator passed to ``sample``).
    """
    size = int(image_size)
    if bank is not None:
        data = load_bank(bank)
    else:
        try:
            data = make_bank()
        except (InputFileError, MissingDependencyError):
            if not DEFAULT_BANK.is_file():
                raise
            data, bank = load_bank(DEFAULT_BANK), DEFAULT_BANK
    heldout_in_bank = sorted(set(map(str, data["names"])) & set(HELDOUT))
    if heldout_in_bank:
        raise InputFileError(f"natural-photo bank contains held-out photos {heldout_in_bank}")
    crops = _CropSampler(data, size)

    def sample(batch_size: int, generator: torch.Generator, device) -> torch.Tensor:
        return crops(batch_size, generator, device) * 2.0 - 1.0

    photos = sorted(set(crops.names))
    scales = sorted({int(v) for v in data["scales"]})
    description = (
        f"Random {size}x{size} crops of {len(photos)} photographs bundled with scikit-image and scikit-learn "
        f"({', '.join(photos)}), each stored downscaled (antialiased) to shorter sides {scales} px; photo chosen "
        "by weight (colour photographs 0.5-1.5, greyscale/texture/scientific images 0.2-0.5, ~30% of crops grey), "
        "then scale and position uniformly; "
        "greyscale photos replicated to RGB. Augmentation: horizontal flip, brightness +-0.05, contrast x0.9-1.1, "
        "saturation x0.8-1.2. Prior space 2x-1 in [-1, 1]. Held out (never in training): "
        f"{', '.join(HELDOUT)}. Excluded as non-photographic: colorwheel, logo, horse, chessboards, phantom, "
        "page, text, clock_motion, microaneurysms."
    )
    info = {"kind": "natural", "seed": int(seed), "photos": photos, "n_photos": len(photos),
            "scales": scales, "heldout": list(HELDOUT), "bank": None if bank is None else str(bank),
            "weights": {n: TRAIN.get(n) for n in photos}}
    info["heldout_name"] = "crops of held-out photos (" + ", ".join(HELDOUT) + ")"

    def heldout() -> torch.Tensor:
        return heldout_photos(size)[0] * 2 - 1

    return TrainSource(sample=sample, channels=3, image_size=(size, size), description=description, info=info,
                       heldout=heldout)


# ----------------------------------------------------------------------------------------------- held out
_ZOOM_CENTRES = ((0.5, 0.5), (0.35, 0.35), (0.65, 0.65), (0.35, 0.65), (0.65, 0.35))


def heldout_photos(size: int = 64, n_crops_per_photo: int = 3) -> Tuple[torch.Tensor, List[str]]:
    """Deterministic test images from the HELDOUT photos only (for benchmarks).

    Per photo: view ``full`` = the centred square of side min(H, W), resized (antialiased) to ``size``; then
    ``n_crops_per_photo - 1`` zoomed views = squares of side min(H, W) / 2 centred at fixed relative positions
    (0.5, 0.5), (0.35, 0.35), (0.65, 0.65), (0.35, 0.65), (0.65, 0.35), resized to ``size``. The default gives
    4 photos x 3 = 12 images.

    Returns:
        (images (n, 3, size, size) float32 in [0, 1], names like ``"astronaut/full"``, ``"astronaut/zoom1"``).
    """
    if not 1 <= n_crops_per_photo <= 1 + len(_ZOOM_CENTRES):
        raise ValueError(f"n_crops_per_photo must be in [1, {1 + len(_ZOOM_CENTRES)}], got {n_crops_per_photo}")
    images, names = [], []
    for name in HELDOUT:
        photo = load_photo(name)
        h, w = photo.shape[-2:]
        views = [(min(h, w), 0.5, 0.5)] + [(min(h, w) // 2, cy, cx) for cy, cx in _ZOOM_CENTRES]
        for j, (side, cy, cx) in enumerate(views[:n_crops_per_photo]):
            top = min(max(round(cy * h - side / 2), 0), h - side)
            left = min(max(round(cx * w - side / 2), 0), w - side)
            crop = photo[:, top: top + side, left: left + side]
            images.append(F.interpolate(crop[None], size=(size, size), mode="bilinear", antialias=True,
                                        align_corners=False)[0].clamp(0, 1))
            names.append(f"{name}/full" if j == 0 else f"{name}/zoom{j}")
    return torch.stack(images), names
