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

``noise_sigma`` adds white Gaussian noise of that std (image units) to the measurement; each image's noise is drawn
from ``noise_seed`` and the image's index in its source (:mod:`invsolve.tasks.noise`), so it does not depend on
which other images are selected.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data import natural
from ..errors import InputFileError, InvalidValueError, ShapeError
from ..operators.blur import PADDINGS, Blur, gaussian_kernel, motion_kernel, uniform_kernel
from ..operators.inpainting import Inpainting, box_mask, random_mask
from ..operators.resolution import SuperResolution
from ..samplers.knobs import Bool, Choice, Float, Int, Ints, Str
from .mri import load_array
from .noise import add_noise, source_keys
from .registry import Problem, register_task

SOURCE = dict(source="example", index=[0, 3, 6, 9], path=None, key=None, size=64, resize=False, noise_seed=0)
CROPS = dict(crops=8, crop_seed=1234)  # source: train-crops
DEBLUR_DEFAULTS = dict(SOURCE, **CROPS, kernel="gaussian", kernel_size=15, kernel_sigma=2.0, motion_intensity=0.5,
                       kernel_seed=0, kernel_file=None, padding="circular", noise_sigma=0.01)
INPAINT_DEFAULTS = dict(SOURCE, **CROPS, mask="random", fraction_missing=0.5, box_size=24, mask_seed=0, mask_file=None,
                        noise_sigma=0.0)
SR_DEFAULTS = dict(SOURCE, **CROPS, factor=4, mode="bicubic", noise_sigma=0.0)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
SOURCE_KNOBS = dict(
    source=Choice("example", "image", doc="held-out photo crops, or your image file (path)"),
    index=Ints(0, doc="which held-out crops (source=example; 0, 3, 6, 9 are the full views)"),
    path=Str(optional=True, doc="your image (PNG/JPEG/TIFF or .npy/.npz in [0, 1]) for source=image"),
    key=Str(optional=True, doc="array name inside an .npz file"),
    size=Int(8, doc="image size (pixels); the prior's size"),
    resize=Bool("centre-crop and resize a user image of another size"),
    noise_seed=Int(0, doc="seed of the measurement noise (each image's noise is keyed by its source index)"),
)
CROP_KNOBS = dict(
    source=Choice("example", "image", "train-crops", doc="held-out photo crops, your image file (path), or crops of "
                  "the natural prior's training photos (validation only)"),
    crops=Int(1, doc="crops drawn for source=train-crops"),
    crop_seed=Int(0, doc="seed of the training-photo crops (source=train-crops)"))
NOISE_KNOB = Float(0, doc="std of white Gaussian measurement noise (image units, images in [0, 1])")
DEBLUR_KNOBS = dict(SOURCE_KNOBS, **CROP_KNOBS,
                    kernel=Choice("gaussian", "uniform", "motion", "file", doc="blur kernel"),
                    kernel_size=Int(1, doc="kernel size (pixels)"),
                    kernel_sigma=Float(0, low_open=True, doc="std of the Gaussian kernel (pixels)"),
                    motion_intensity=Float(0, 1, doc="shake intensity of the motion kernel"),
                    kernel_seed=Int(0, doc="seed of the motion kernel"),
                    kernel_file=Str(optional=True, doc="your kernel (.npy) for kernel=file"),
                    padding=Choice(*PADDINGS, doc="boundary handling of the convolution"), noise_sigma=NOISE_KNOB)
INPAINT_KNOBS = dict(SOURCE_KNOBS, **CROP_KNOBS, mask=Choice("random", "box", "file", doc="missing-pixel pattern"),
                     fraction_missing=Float(0, 1, high_open=True, doc="fraction of missing pixels (mask=random)"),
                     box_size=Int(1, doc="side of the missing box (mask=box)"),
                     mask_seed=Int(0, doc="seed of the random mask / box position"),
                     mask_file=Str(optional=True, doc="your mask (.npy, 1 = observed) for mask=file"),
                     noise_sigma=NOISE_KNOB)
SR_KNOBS = dict(SOURCE_KNOBS, **CROP_KNOBS, factor=Int(1, doc="downsampling factor"),
                mode=Choice("bicubic", "avgpool", doc="downsampling: antialiased bicubic or average pooling"),
                noise_sigma=NOISE_KNOB)


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
        a = np.asarray(load_array(path, key))
        if a.ndim == 2:
            a = a[None, None]
        elif a.ndim == 3 and a.shape[-1] in (1, 3):
            a = np.moveaxis(a, -1, 0)[None]
        if a.ndim != 4 or a.shape[1] not in (1, 3) or np.iscomplexobj(a):
            raise ShapeError(f"image array in {path} must be real (H, W), (H, W, C) or (N, C, H, W) with C = 1 or 3, "
                             f"got shape {a.shape} ({a.dtype})")
        x = torch.from_numpy(a.astype(np.float32))
        if float(x.min()) < -0.5 or float(x.max()) > 1.5:
            raise InvalidValueError(f"image array in {path} has values in [{float(x.min()):.4g}, "
                                    f"{float(x.max()):.4g}]; expected [0, 1] (divide 8-bit images by 255)")
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
        raise InvalidValueError(f"problem.crops must be an integer >= 1, got {crops!r}")
    src = build_train_source("natural", image_size=size)
    x = (src.sample(int(crops), torch.Generator().manual_seed(int(crop_seed)), "cpu") + 1) / 2
    return x.clamp(0, 1), [f"train-crop-seed{crop_seed}-{i}" for i in range(int(crops))]


def load_images(source, index, path, key, size, resize, crops=8, crop_seed=1234):
    """``(x (B, C, size, size) in [0, 1], names, origin, noise keys)`` of the selected images."""
    if source == "train-crops":
        x, names = _train_crops(crops, crop_seed, size)
        idx = [index] if isinstance(index, int) else list(index)
        bad = [i for i in idx if not 0 <= i < x.shape[0]]
        if bad:
            raise InvalidValueError(f"problem.index={idx} is out of range: problem.crops={crops} crops were drawn")
        return (x[idx], [names[i] for i in idx], "crops of the natural prior's TRAINING photos (validation only)",
                [10**6 * (1 + int(crop_seed)) + i for i in idx])
    if source == "example":
        x, names = natural.heldout_photos(size)
        idx = [index] if isinstance(index, int) else list(index)
        bad = [i for i in idx if not 0 <= i < x.shape[0]]
        if bad:
            raise InvalidValueError(f"problem.index={idx} is out of range: the held-out photos give {x.shape[0]} "
                                    f"images (0 .. {x.shape[0] - 1})")
        return (x[idx], [names[i] for i in idx], "held-out photo crops (astronaut, coffee, chelsea, flower)",
                source_keys(idx, len(idx), True))
    if source == "image":
        x = _user_images(path, key, size, resize)
        return x, [f"{Path(path).stem}[{i}]" for i in range(x.shape[0])], str(path), source_keys(None, len(x), False)
    raise InvalidValueError(f"problem.source must be 'example', 'image' or 'train-crops', got {source!r}")


def make_problem(op, x, names, origin, noise_sigma, noise_seed, meta, baselines, keys) -> Problem:
    """The problem with ``y = op(x) + noise``, image ``b``'s noise keyed by ``keys[b]`` (its source index)."""
    if noise_sigma < 0:
        raise InvalidValueError(f"problem.noise_sigma must be >= 0, got {noise_sigma}")
    y = add_noise(op(x), noise_sigma, noise_seed, keys)
    meta.update({"source": origin, "noise_sigma": noise_sigma, "noise_seed": noise_seed, "noise_keys": keys})
    return Problem(op, y, x, names, meta=meta, data_range=1.0, default_baselines=baselines, sigma_y=noise_sigma)


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
        return torch.from_numpy(np.asarray(load_array(kernel_file, None), dtype=np.float64))
    raise InvalidValueError(f"problem.kernel must be 'gaussian', 'uniform', 'motion' or 'file', got {kernel!r}")


@register_task("deblur", DEBLUR_DEFAULTS, summary="deblurring (Gaussian / uniform / motion / your kernel) of "
                                                  "held-out photos or your image", knobs=DEBLUR_KNOBS)
def build_deblur(source, index, path, key, size, resize, noise_seed, crops, crop_seed, kernel, kernel_size,
                 kernel_sigma, motion_intensity, kernel_seed, kernel_file, padding, noise_sigma) -> Problem:
    x, names, origin, keys = load_images(source, index, path, key, size, resize, crops, crop_seed)
    k = make_kernel(kernel, kernel_size, kernel_sigma, motion_intensity, kernel_seed, kernel_file)
    op = Blur(k, padding=padding, image_size=size)
    meta = {"kernel": kernel, "kernel_shape": list(op.kernel.shape), "padding": padding}
    if kernel == "gaussian":
        meta["kernel_sigma"] = kernel_sigma
    elif kernel == "motion":
        meta.update({"motion_intensity": motion_intensity, "kernel_seed": kernel_seed})
    elif kernel == "file":
        meta["kernel_file"] = str(kernel_file)
    return make_problem(op, x, names, origin, noise_sigma, noise_seed, meta, ["wiener"], keys)


@register_task("inpaint", INPAINT_DEFAULTS, summary="inpainting (random pixels / box / your mask) of held-out "
                                                    "photos or your image", knobs=INPAINT_KNOBS)
def build_inpaint(source, index, path, key, size, resize, noise_seed, crops, crop_seed, mask, fraction_missing,
                  box_size, mask_seed, mask_file, noise_sigma) -> Problem:
    x, names, origin, keys = load_images(source, index, path, key, size, resize, crops, crop_seed)
    H, W = x.shape[-2:]
    if mask == "random":
        m = random_mask((H, W), fraction_missing, seed=mask_seed)
    elif mask == "box":
        m = box_mask((H, W), box_size, seed=mask_seed)
    elif mask == "file":
        if mask_file is None:
            raise InputFileError("problem.mask_file is required when problem.mask='file'")
        m = torch.from_numpy(np.asarray(load_array(mask_file, None), dtype=np.float32))
        if tuple(m.shape[-2:]) != (H, W) or m.dim() not in (2, 3):
            raise ShapeError(f"problem.mask_file {mask_file} holds a mask of shape {tuple(m.shape)}; expected "
                             f"({H}, {W}) or (B, {H}, {W}) to match the images")
    else:
        raise InvalidValueError(f"problem.mask must be 'random', 'box' or 'file', got {mask!r}")
    observed = m.reshape(-1, H * W).sum(dim=1)
    if bool((observed == 0).any()):
        what = f"problem.mask_file={str(mask_file)!r}" if mask == "file" else f"problem.mask={mask!r}"
        raise InvalidValueError(f"{what} observes no pixel (all zeros) in {int((observed == 0).sum())} of "
                                f"{observed.numel()} mask(s); expected a mask with 1 where pixels are observed")
    op = Inpainting(m)
    meta = {"mask_type": mask, "mask_seed": mask_seed, "missing_fraction": float(1 - op.mask.mean())}
    return make_problem(op, x, names, origin, noise_sigma, noise_seed, meta, ["adjoint", "wiener"], keys)


@register_task("sr", SR_DEFAULTS, summary="super-resolution (bicubic / average-pool downsampling) of held-out "
                                          "photos or your image", knobs=SR_KNOBS)
def build_sr(source, index, path, key, size, resize, noise_seed, crops, crop_seed, factor, mode,
             noise_sigma) -> Problem:
    op = SuperResolution(factor, mode, image_size=size)  # checks that factor divides size before loading images
    x, names, origin, keys = load_images(source, index, path, key, size, resize, crops, crop_seed)
    meta = {"factor": factor, "mode": mode}
    return make_problem(op, x, names, origin, noise_sigma, noise_seed, meta, ["pinv", "wiener"], keys)
