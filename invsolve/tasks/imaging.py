"""Natural-image problems: deblurring (``deblur``), inpainting (``inpaint``), super-resolution (``sr``).

Images are RGB ``(B, 3, H, W)`` in [0, 1], the domain of the embedded ``natural`` prior. Sources
(``problem.source``):

* ``example``: crops of the held-out photos (astronaut, coffee, chelsea, flower; never used to train the prior),
  :func:`invsolve.data.natural.heldout_photos` with 3 views per photo (12 images; ``index`` picks among them,
  ``0, 3, 6, 9`` are the full views).
* ``image``: an image file (PNG/JPEG/TIFF via :func:`invsolve.data.natural.load_image`) or a ``.npy``/``.npz``
  array ``(H, W)``, ``(H, W, C)`` or ``(N, C, H, W)`` (``C`` 1 or 3) in [0, 1]; greyscale is replicated to RGB.
  Its size must equal ``size`` unless ``resize: true`` (centre square crop, antialiased resize).
* ``train-crops``: ``crops`` random crops of the photos the ``natural`` prior was TRAINED on, drawn by its training
  source from ``crop_seed`` (``index`` picks among them): validation images for tuning, never test images (they
  flatter the prior, which has seen these photos).

``noise_sigma`` adds white Gaussian noise of that std (image units) to the measurement.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data import natural
from ..errors import InputFileError, ShapeError
from ..operators.blur import Blur, gaussian_kernel, motion_kernel, uniform_kernel
from ..operators.noise import GaussianNoise
from ..operators.sampling import Inpainting, SuperResolution, box_mask, random_mask
from . import Problem, register_task
from .mri import _load_array

SOURCE = dict(source="example", index=[0, 3, 6, 9], path=None, key=None, size=64, resize=False, noise_seed=0)
CROPS = dict(crops=8, crop_seed=1234)  # source: train-crops
DEBLUR_DEFAULTS = dict(SOURCE, **CROPS, kernel="gaussian", kernel_size=15, kernel_sigma=2.0, motion_intensity=0.5,
                       kernel_seed=0, kernel_file=None, padding="circular", noise_sigma=0.01)
INPAINT_DEFAULTS = dict(SOURCE, **CROPS, mask="random", fraction_missing=0.5, box_size=24, mask_seed=0, mask_file=None,
                        noise_sigma=0.0)
SR_DEFAULTS = dict(SOURCE, **CROPS, factor=4, mode="bicubic", noise_sigma=0.0)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def _square(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    s = min(h, w)
    crop = x[..., (h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    return F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


def _user_images(path, key, size, resize) -> torch.Tensor:
    if path is None:
        raise InputFileError("problem.path is required when problem.source='image'")
    if Path(path).suffix.lower() in IMAGE_SUFFIXES:
        x = natural.load_image(path)
    else:
        a = np.asarray(_load_array(path, key))
        if a.ndim == 2:
            a = a[None, None]
        elif a.ndim == 3 and a.shape[-1] in (1, 3):
            a = np.moveaxis(a, -1, 0)[None]
        if a.ndim != 4 or a.shape[1] not in (1, 3) or np.iscomplexobj(a):
            raise ShapeError(f"image array in {path} must be real (H, W), (H, W, C) or (N, C, H, W) with C = 1 or 3, "
                             f"got shape {a.shape} ({a.dtype})")
        x = torch.from_numpy(a.astype(np.float32))
        if float(x.min()) < -0.5 or float(x.max()) > 1.5:
            raise ValueError(f"image array in {path} has values in [{float(x.min()):.4g}, {float(x.max()):.4g}]; "
                             "expected [0, 1] (divide 8-bit images by 255)")
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1).contiguous()
    if tuple(x.shape[-2:]) != (size, size):
        if not resize:
            raise ShapeError(f"image {path} is {x.shape[-2]}x{x.shape[-1]} but the prior works on {size}x{size} "
                             f"(problem.size); set problem.resize=true to centre-crop and resize it")
        x = _square(x, size)
    return x


def _train_crops(crops: int, crop_seed: int, size: int):
    from ..data.base import build_train_source

    if int(crops) != crops or crops < 1:
        raise ValueError(f"problem.crops must be an integer >= 1, got {crops!r}")
    src = build_train_source("natural", image_size=size)
    x = (src.sample(int(crops), torch.Generator().manual_seed(int(crop_seed)), "cpu") + 1) / 2
    return x.clamp(0, 1), [f"train-crop-seed{crop_seed}-{i}" for i in range(int(crops))]


def _images(source, index, path, key, size, resize, crops=8, crop_seed=1234):
    if source == "train-crops":
        x, names = _train_crops(crops, crop_seed, size)
        idx = [index] if isinstance(index, int) else list(index)
        bad = [i for i in idx if not 0 <= i < x.shape[0]]
        if bad:
            raise ValueError(f"problem.index {bad} out of range: problem.crops={crops} crops were drawn")
        return x[idx], [names[i] for i in idx], "crops of the natural prior's TRAINING photos (validation only)"
    if source == "example":
        x, names = natural.heldout_photos(size)
        idx = [index] if isinstance(index, int) else list(index)
        bad = [i for i in idx if not 0 <= i < x.shape[0]]
        if bad:
            raise ValueError(f"problem.index {bad} out of range: the held-out photos give {x.shape[0]} images")
        return x[idx], [names[i] for i in idx], "held-out photo crops (astronaut, coffee, chelsea, flower)"
    if source == "image":
        x = _user_images(path, key, size, resize)
        return x, [f"{Path(path).stem}[{i}]" for i in range(x.shape[0])], str(path)
    raise ValueError(f"problem.source must be 'example', 'image' or 'train-crops', got {source!r}")


def _problem(op, x, names, origin, noise_sigma, noise_seed, meta, baselines) -> Problem:
    if noise_sigma < 0:
        raise ValueError(f"problem.noise_sigma must be >= 0, got {noise_sigma}")
    y = op(x)
    if noise_sigma > 0:
        y = GaussianNoise(noise_sigma)(y, torch.Generator().manual_seed(noise_seed))
    meta.update({"source": origin, "noise_sigma": noise_sigma, "noise_seed": noise_seed})
    return Problem(op, y, x, names, meta=meta, data_range=1.0, default_baselines=baselines)


def make_kernel(kernel, kernel_size, kernel_sigma, motion_intensity, kernel_seed, kernel_file) -> torch.Tensor:
    """The blur kernel of ``problem.kernel`` (``gaussian``, ``uniform``, ``motion`` or ``file``)."""
    if kernel == "gaussian":
        return gaussian_kernel(kernel_size, kernel_sigma)
    if kernel == "uniform":
        return uniform_kernel(kernel_size)
    if kernel == "motion":
        return motion_kernel(kernel_size, motion_intensity, kernel_seed)
    if kernel == "file":
        if kernel_file is None:
            raise InputFileError("problem.kernel_file is required when problem.kernel='file'")
        return torch.from_numpy(np.asarray(_load_array(kernel_file, None), dtype=np.float64))
    raise ValueError(f"problem.kernel must be 'gaussian', 'uniform', 'motion' or 'file', got {kernel!r}")


@register_task("deblur", DEBLUR_DEFAULTS, summary="deblurring (Gaussian / uniform / motion / your kernel) of "
                                                  "held-out photos or your image")
def build_deblur(source, index, path, key, size, resize, noise_seed, crops, crop_seed, kernel, kernel_size,
                 kernel_sigma, motion_intensity, kernel_seed, kernel_file, padding, noise_sigma) -> Problem:
    x, names, origin = _images(source, index, path, key, size, resize, crops, crop_seed)
    k = make_kernel(kernel, kernel_size, kernel_sigma, motion_intensity, kernel_seed, kernel_file)
    op = Blur(k, padding=padding, image_size=size)
    meta = {"kernel": kernel, "kernel_shape": list(op.kernel.shape), "padding": padding}
    if kernel == "gaussian":
        meta["kernel_sigma"] = kernel_sigma
    elif kernel == "motion":
        meta.update({"motion_intensity": motion_intensity, "kernel_seed": kernel_seed})
    elif kernel == "file":
        meta["kernel_file"] = str(kernel_file)
    return _problem(op, x, names, origin, noise_sigma, noise_seed, meta, ["wiener"])


@register_task("inpaint", INPAINT_DEFAULTS, summary="inpainting (random pixels / box / your mask) of held-out "
                                                    "photos or your image")
def build_inpaint(source, index, path, key, size, resize, noise_seed, crops, crop_seed, mask, fraction_missing,
                  box_size, mask_seed, mask_file, noise_sigma) -> Problem:
    x, names, origin = _images(source, index, path, key, size, resize, crops, crop_seed)
    H, W = x.shape[-2:]
    if mask == "random":
        m = random_mask((H, W), fraction_missing, seed=mask_seed)
    elif mask == "box":
        m = box_mask((H, W), box_size, seed=mask_seed)
    elif mask == "file":
        if mask_file is None:
            raise InputFileError("problem.mask_file is required when problem.mask='file'")
        m = torch.from_numpy(np.asarray(_load_array(mask_file, None), dtype=np.float32))
        if tuple(m.shape[-2:]) != (H, W) or m.dim() not in (2, 3):
            raise ShapeError(f"problem.mask_file {mask_file} holds a mask of shape {tuple(m.shape)}; expected "
                             f"({H}, {W}) or (B, {H}, {W}) to match the images")
    else:
        raise ValueError(f"problem.mask must be 'random', 'box' or 'file', got {mask!r}")
    op = Inpainting(m)
    meta = {"mask_type": mask, "mask_seed": mask_seed, "missing_fraction": float(1 - op.mask.mean())}
    return _problem(op, x, names, origin, noise_sigma, noise_seed, meta, ["adjoint", "wiener"])


@register_task("sr", SR_DEFAULTS, summary="super-resolution (bicubic / average-pool downsampling) of held-out "
                                          "photos or your image")
def build_sr(source, index, path, key, size, resize, noise_seed, crops, crop_seed, factor, mode,
             noise_sigma) -> Problem:
    x, names, origin = _images(source, index, path, key, size, resize, crops, crop_seed)
    op = SuperResolution(factor, mode, image_size=size)
    meta = {"factor": factor, "mode": mode}
    return _problem(op, x, names, origin, noise_sigma, noise_seed, meta, ["pinv", "wiener"])
