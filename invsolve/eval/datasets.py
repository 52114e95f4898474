"""Benchmark data: the held-out sets of the embedded priors, loaders for a user's own data, cached problems.

* :data:`HELDOUT` names the held-out test images of every embedded prior (never used in training) and says what
  they are; :func:`heldout` loads them.
* :func:`load_user_data` reads a user's data: an image folder, ``.npy`` / ``.npz``, fastMRI-style ``.h5`` k-space,
  a DICOM file or series directory.
* :func:`cached_problem` builds a task's problem once (measurements simulated with the seeds recorded in its
  options) and caches it, so that every method, process and shard of a benchmark sees identical measurements.
* :func:`write_atomic` writes a file through a temporary name and ``os.replace``: a killed writer never leaves a
  half-written file under the final name, only a ``.NAME.HOST.PID.tmp`` file that :func:`remove_stale_tmp` clears.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch

from ..errors import InputFileError, missing_extra


# ----------------------------------------------------------------------------------------------- held-out sets
@dataclass(frozen=True)
class HeldoutSet:
    """A held-out benchmark set: ``load(size, index) -> (images (n, C, size, size), names)``."""

    name: str
    prior: str
    description: str
    load: Callable[[int, Optional[Sequence[int]]], Tuple[torch.Tensor, List[str]]]


def _subset(x: torch.Tensor, names: List[str], index: Optional[Sequence[int]], set_name: str):
    if index is None:
        return x, names
    bad = [i for i in index if not 0 <= i < x.shape[0]]
    if bad:
        raise ValueError(f"index {bad} out of range: held-out set {set_name!r} has {x.shape[0]} images")
    return x[list(index)], [names[i] for i in index]


def _mri_mni(size, index):
    from ..data import mri

    return _subset(*mri.heldout_slices(size, n=len(mri.HELDOUT_Z)), index, "mri-mni")


def _mri_dipy(size, index):
    from ..data import mri

    return _subset(*mri.dipy_slice(size), index, "mri-dipy")


def _ct_pydicom(size, index):
    from ..data import ct

    return _subset(*ct.heldout_ct_slices(size), index, "ct-pydicom")


def _photos(size, index):
    from ..data import natural

    return _subset(*natural.heldout_photos(size), index, "photos")


def _ns_test(size, index):
    from ..data.ns_bank import heldout_bank

    idx = list(range(16)) if index is None else list(index)
    if any(i < 0 for i in idx):
        raise ValueError(f"index {idx} must be >= 0 for the Navier-Stokes test stream")
    return heldout_bank(max(idx) + 1, size)[idx], [f"ns-test-{i}" for i in idx]  # the `ns` task's truth fields


HELDOUT: Dict[str, HeldoutSet] = {s.name: s for s in (
    HeldoutSet("mri-mni", "mri-brain", "MNI152 2009 T1 template, held-out axial slab z=96..111 (16 slices, never "
               "trained on; same template as training), complex with a smooth synthetic phase, |x|_99% = 1",
               _mri_mni),
    HeldoutSet("mri-dipy", "mri-brain", "dipy's real T1 coronal slice: another subject, scanner and orientation "
               "(out of distribution), complex with a smooth synthetic phase", _mri_dipy),
    HeldoutSet("ct-pydicom", "ct-phantom", "real CT slices shipped with pydicom (CT_small chest/spine, JPEG 2000 "
               "head slices), window [-1000, 1000] HU -> [0, 1]; the prior saw procedural phantoms only",
               _ct_pydicom),
    HeldoutSet("photos", "natural", "crops of the held-out photos astronaut, coffee, chelsea, flower (scikit-image),"
               " RGB in [0, 1] (12 images)", _photos),
    HeldoutSet("ns-test", "ns-vorticity", "Navier-Stokes vorticity fields of the 'test' seed stream (disjoint from "
               "training; the `ns` task's truth), Re=200, t=5, 64x64 solver, raw units (about [-10, 10])",
               _ns_test),
)}


def heldout(name: str, size: int = 64, index: Optional[Sequence[int]] = None) -> Tuple[torch.Tensor, List[str]]:
    """Images of the held-out set ``name`` (see :data:`HELDOUT`) at ``size``; ``index`` selects a subset."""
    from ..errors import UnknownNameError

    if name not in HELDOUT:
        raise UnknownNameError(f"unknown held-out set {name!r}; available: {', '.join(sorted(HELDOUT))}")
    return HELDOUT[name].load(size, index)


def available_heldout() -> Dict[str, str]:
    """Held-out set names -> ``"prior: description"``."""
    return {k: f"{v.prior}: {v.description}" for k, v in sorted(HELDOUT.items())}


# ----------------------------------------------------------------------------------------------- user data
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


@dataclass
class UserData:
    """Data read by :func:`load_user_data`.

    Attributes:
        kind: ``"images"`` (float32 ``(N, C, H, W)`` in [0, 1]), ``"array"`` (the stored array as a tensor),
            ``"kspace"`` (complex64 ``(N, Nc, H, W)``) or ``"hu"`` (DICOM, float32 ``(N, 1, H, W)`` in HU).
        data: the tensor.
        names: one label per item.
        extra: other arrays found next to it (e.g. fastMRI ``reconstruction_rss`` as a reference image).
    """

    kind: str
    data: torch.Tensor
    names: List[str]
    extra: Dict[str, torch.Tensor] = field(default_factory=dict)


def _is_dicom(p: Path) -> bool:
    if p.suffix.lower() == ".dcm":
        return True
    try:
        with open(p, "rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def load_user_data(path, key: Optional[str] = None, slices: Optional[Sequence[int]] = None) -> UserData:
    """Read a user's data set for a benchmark or a reconstruction.

    Args:
        path: a folder of images (PNG/JPEG/TIFF, all the same size; sorted by name), a folder of DICOM slices
            (one series) or one ``.dcm`` file, a ``.npy`` / ``.npz`` file, or a fastMRI-style ``.h5`` file
            (dataset ``kspace`` of shape ``(slices, coils, H, W)``, or ``(slices, H, W)`` single-coil).
        key: the array inside an ``.npz`` / ``.h5`` (default: the only array / ``kspace``).
        slices: ``.h5`` only: which slices to read (default: all).
    Raises:
        InputFileError: missing path, unknown format, images of different sizes, missing key.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise InputFileError(f"load_user_data: {str(p)!r} does not exist")
    if p.is_dir():
        files = sorted(q for q in p.iterdir() if q.is_file())
        images = [q for q in files if q.suffix.lower() in IMAGE_SUFFIXES]
        if images:
            from ..data.natural import load_image

            xs = [load_image(q) for q in images]
            shapes = {tuple(x.shape) for x in xs}
            if len(shapes) > 1:
                raise InputFileError(f"load_user_data: images in {str(p)!r} have different shapes {sorted(shapes)};"
                                     f" resize them to one size first")
            return UserData("images", torch.cat(xs), [q.stem for q in images])
        if any(_is_dicom(q) for q in files):
            from ..data.ct import load_dicom

            hu = load_dicom(p)
            return UserData("hu", hu, [f"{p.name}[{i}]" for i in range(hu.shape[0])])
        raise InputFileError(f"load_user_data: folder {str(p)!r} holds no images ({', '.join(IMAGE_SUFFIXES)}) "
                             f"and no DICOM files")
    suf = p.suffix.lower()
    if suf in IMAGE_SUFFIXES:
        from ..data.natural import load_image

        return UserData("images", load_image(p), [p.stem])
    if _is_dicom(p):
        from ..data.ct import load_dicom

        return UserData("hu", load_dicom(p), [p.stem])
    if suf == ".npy":
        return UserData("array", torch.from_numpy(np.load(p)), [p.stem])
    if suf == ".npz":
        with np.load(p) as z:
            k = key or (next(iter(z.keys())) if len(z.keys()) == 1 else None)
            if k is None or k not in z:
                raise InputFileError(f"{p} holds arrays {list(z.keys())}; choose one with key=")
            return UserData("array", torch.from_numpy(z[k]), [f"{p.stem}:{k}"])
    if suf in (".h5", ".hdf5"):
        return _load_h5(p, key or "kspace", slices)
    raise InputFileError(f"load_user_data: unsupported format {suf!r} for {p}; use an image folder, DICOM, "
                         f".npy, .npz or .h5")


def _load_h5(p: Path, key: str, slices: Optional[Sequence[int]]) -> UserData:
    try:
        import h5py
    except ImportError as e:
        raise missing_extra("h5py", "data", "Reading .h5 k-space") from e
    with h5py.File(p, "r") as f:
        if key not in f:
            raise InputFileError(f"{p} has datasets {list(f.keys())}; choose one with key=")
        d = f[key]
        idx = list(range(d.shape[0])) if slices is None else [int(s) for s in slices]
        k = np.stack([np.asarray(d[i]) for i in idx])
        extra = {}
        if "reconstruction_rss" in f:
            extra["reconstruction_rss"] = torch.from_numpy(np.stack([np.asarray(f["reconstruction_rss"][i])
                                                                     for i in idx]))
    if not np.iscomplexobj(k):
        raise InputFileError(f"{p}:{key} must hold complex k-space, got dtype {k.dtype}")
    if k.ndim == 3:
        k = k[:, None]
    return UserData("kspace", torch.from_numpy(k).to(torch.complex64), [f"{p.stem}[{i}]" for i in idx], extra)


# ----------------------------------------------------------------------------------------------- atomic files
def _host() -> str:
    return socket.gethostname().replace(".", "_")


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{_host()}.{os.getpid()}.tmp")


def write_atomic(path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp_path)`` then ``os.replace`` it onto ``path`` (same directory, so the rename is atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_tmp(root) -> List[Path]:
    """Delete temporary files under ``root`` left by killed writers on this host (their pid is gone)."""
    host, removed = _host(), []
    for tmp in Path(root).rglob(".*.tmp"):
        parts = tmp.name.rsplit(".", 3)  # ".NAME", HOST, PID, "tmp"
        if len(parts) == 4 and parts[1] == host and parts[2].isdigit() and not _alive(int(parts[2])):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


# ----------------------------------------------------------------------------------------------- cached problems
def problem_options(options: Dict[str, Any]) -> Dict[str, Any]:
    """The full option set of a problem (task defaults filled in), which determines its measurements."""
    from ..tasks import get_task

    spec = get_task(options["task"])
    full = dict(spec.defaults)
    full.update({k: v for k, v in options.items() if k != "task"})
    return {"task": options["task"], **full}


def options_hash(options: Dict[str, Any]) -> str:
    """Short stable hash of a JSON-able dict."""
    blob = json.dumps(options, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def problem_hash(problem) -> str:
    """Short content hash of a problem: its measurements, ground truth and item names (what results depend on).

    Results are keyed by it rather than by the options, so a release that adds a task option whose default leaves
    the measurements unchanged keeps finished results, and a code change that alters them invalidates them.
    """
    h = hashlib.sha256()
    for t in (problem.y, problem.x_true):
        if t is None:
            h.update(b"none")
            continue
        a = t.detach().cpu().contiguous()
        h.update(f"{a.dtype}{tuple(a.shape)}".encode())
        h.update(a.numpy().tobytes() if not a.is_complex() else torch.view_as_real(a).numpy().tobytes())
    h.update(json.dumps(list(problem.names)).encode())
    return h.hexdigest()[:16]


class CachedProblem(NamedTuple):
    """A problem, its content hash (:func:`problem_hash`), and ``(options key, content hash)`` of the problem the
    cache file held before this call (``None``: no cache file, or one without a pickled problem)."""

    problem: Any
    hash: str
    previous: Optional[Tuple[str, str]]


def _build(options: Dict[str, Any]):
    """``build_problem`` with one torch thread: multi-threaded FFTs and convolutions round differently, and the
    content hash of the measurements (:func:`problem_hash`) must not depend on the machine's thread count, or a
    fresh clone on another machine would re-run every finished result of the task."""
    from ..tasks import build_problem

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return build_problem(options)
    finally:
        torch.set_num_threads(n)


def cached_problem(options: Dict[str, Any], path) -> CachedProblem:
    """Build the problem ``options`` (as for ``invsolve reconstruct``'s ``problem:``) or load it from ``path``.

    The cache holds the full options' hash; a different hash (options or task defaults changed) rebuilds it.
    The whole :class:`~invsolve.tasks.Problem` is pickled with ``torch.save``; an operator that cannot be pickled
    is rebuilt on load and the cached measurements ``y`` and truth replace the rebuilt ones. The cache file is read
    once; ``previous`` lets callers recognise results computed on unchanged measurements.
    """
    path = Path(path)
    full = problem_options(options)
    key = options_hash(full)
    previous = None
    if path.exists():
        blob = torch.load(path, map_location="cpu", weights_only=False)
        if "problem" in blob and "key" in blob:
            previous = (blob["key"], problem_hash(blob["problem"]))
        if blob.get("key") == key:
            if previous is not None:
                return CachedProblem(blob["problem"], previous[1], previous)
            problem = _build(options)
            problem.y, problem.x_true = blob["y"], blob["x_true"]
            return CachedProblem(problem, problem_hash(problem), None)
    problem = _build(options)
    try:
        write_atomic(path, lambda t: torch.save({"key": key, "options": full, "problem": problem}, t))
    except (pickle.PicklingError, TypeError, AttributeError):  # e.g. a black-box operator wrapping a lambda
        write_atomic(path, lambda t: torch.save({"key": key, "options": full, "y": problem.y,
                                                 "x_true": problem.x_true}, t))
    return CachedProblem(problem, problem_hash(problem), previous)
