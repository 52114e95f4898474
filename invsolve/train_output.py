"""Where ``invsolve train-prior`` writes, and the explicit step that installs a trained prior into the package.

* A run writes into its own directory, ``output_dir`` (default ``outputs/train/<name>``): ``recipe.yaml``,
  checkpoints, logs and the export ``prior/`` (weights, scheduler, ``invsolve_prior.json``, sample grid, model card).
  Nothing is ever written inside the installed package.
* A directory that already holds a run is *resumed* when its ``recipe.yaml`` equals the new recipe in every key
  except those that do not change what is trained (:data:`RESUMABLE`: the step budget, time budget, threads,
  device, checkpoint/log intervals, export settings); any other difference, or a non-empty directory without
  ``recipe.yaml``, is refused unless ``--overwrite`` starts the run over.
* :func:`install_embedded` (``invsolve train-prior RECIPE --export-embedded [--overwrite]``) copies a finished
  run's export into ``invsolve/priors/weights/<name>/`` of a source checkout. It refuses to replace an existing
  embedded prior without ``overwrite``, and with it moves the previous weights to
  ``outputs/replaced-priors/<name>-<UTC time>/`` first.
"""
from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from omegaconf import OmegaConf

from . import checks
from .errors import InputFileError, OutputError

DEFAULT_ROOT = Path("outputs") / "train"
BACKUP_ROOT = Path("outputs") / "replaced-priors"
# recipe keys that may differ between a run and its resumption (prefixes of dotted keys)
RESUMABLE = ("output_dir", "train.steps", "train.max_minutes", "train.threads", "train.device",
             "train.checkpoint_every", "train.log_every", "export.")
META_FILE = "invsolve_prior.json"


def run_dir(cfg) -> Path:
    """The run's directory: ``output_dir``, or ``outputs/train/<name>``."""
    return Path(cfg.output_dir) if cfg.get("output_dir") else DEFAULT_ROOT / str(cfg.name)


def export_dir(cfg) -> Path:
    """Where the run exports its prior: ``export.dir``, or ``<run dir>/prior``."""
    return Path(cfg.export.dir) if cfg.export.get("dir") else run_dir(cfg) / "prior"


def _flat(d: Any, prefix: str = "") -> Dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix[:-1]: d}
    out: Dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
    return out


def recipe_differences(previous, current) -> List[str]:
    """Dotted keys in which two recipes differ, the :data:`RESUMABLE` ones left out."""
    a = _flat(OmegaConf.to_container(previous, resolve=True))
    b = _flat(OmegaConf.to_container(current, resolve=True))
    keys = sorted(set(a) | set(b))
    return [k for k in keys if a.get(k) != b.get(k) and not any(k == r or k.startswith(r) for r in RESUMABLE)]


def check_run_dir(cfg, overwrite: bool = False) -> Tuple[Path, str]:
    """Before any work: where the run goes and whether it is ``"new"``, ``"resume"`` or ``"restart"`` (an
    existing directory replaced on request). Raises :class:`OutputError` for paths inside the package, unwritable
    ones, and directories that hold something else than a run of this recipe (without ``overwrite``)."""
    out = run_dir(cfg)
    pkg = checks.package_dir()
    for where, path in (("output_dir", out), ("export.dir", export_dir(cfg))):
        if checks.inside(path, pkg):
            raise OutputError(f"{where}={str(path)!r} is inside the installed invsolve package ({pkg}); a run writes "
                              f"to its own directory (default outputs/train/<name>); to replace an embedded prior "
                              f"afterwards use: invsolve train-prior RECIPE --export-embedded")
        checks.writable_dir(path, where)
    if not out.exists() or not any(out.iterdir()):
        return out, "new"
    if overwrite:
        return out, "restart"
    prev = out / "recipe.yaml"
    if not prev.is_file():
        raise OutputError(f"output_dir={str(out)!r} exists and holds no training run (no recipe.yaml); choose "
                          f"another output_dir= or pass --overwrite to replace its contents")
    try:
        diff = recipe_differences(OmegaConf.load(prev), cfg)
    except Exception as e:  # noqa: BLE001 - an unreadable recipe.yaml is not this run's
        diff = [f"(unreadable {prev.name}: {str(e).splitlines()[0]})"]
    if not diff:
        return out, "resume"
    shown = ", ".join(diff[:6]) + (f" and {len(diff) - 6} more" if len(diff) > 6 else "")
    raise OutputError(f"output_dir={str(out)!r} holds a run of a different recipe (differs in {shown}); choose "
                      f"another output_dir= (e.g. output_dir={out}-2) or pass --overwrite to start over")


def _utc_stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")


def source_checkout(package: Optional[Path] = None) -> Optional[Path]:
    """The repository root if ``package`` (default: invsolve's directory) is a source checkout, else ``None``."""
    package = Path(package) if package is not None else checks.package_dir()
    root = package.parent
    py = root / "pyproject.toml"
    if not py.is_file() or "site-packages" in package.parts or "dist-packages" in package.parts:
        return None
    text = py.read_text(errors="replace")
    return root if 'name = "invsolve"' in text else None


def _steps(meta_dir: Path) -> Optional[int]:
    try:
        return json.loads((meta_dir / META_FILE).read_text())["training"]["steps"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def install_embedded(cfg, overwrite: bool = False, *, package: Optional[Path] = None,
                     backup_root: Path = BACKUP_ROOT, log=print) -> Path:
    """Install the run's export (:func:`export_dir`) as embedded prior ``cfg.name`` of a source checkout.

    ``package``: the invsolve package directory to install into (default: this one; tests pass a copy). Refuses
    (:class:`OutputError`) when it is not a source checkout, when the export is missing or not a loadable prior of
    that name, and when the embedded prior exists and ``overwrite`` is false; with ``overwrite`` the previous
    weights are moved to ``backup_root/<name>-<UTC time>/`` and the move is reported in one line.
    Returns the installed directory.
    """
    from .priors import load_prior

    package = Path(package) if package is not None else checks.package_dir()
    name = str(cfg.name)
    src = export_dir(cfg)
    if source_checkout(package) is None:
        raise OutputError(f"invsolve at {package} is an installed package, not a source checkout; embedded priors "
                          f"are replaced in a clone (git clone ...; pip install -e .). Use the run's export "
                          f"directly instead: invsolve.load_prior({str(src)!r})")
    if not (src / META_FILE).is_file():
        raise InputFileError(f"no exported prior at {str(src)!r} (no {META_FILE}); train it first: invsolve "
                             f"train-prior RECIPE (the export is written when training ends)")
    meta = json.loads((src / META_FILE).read_text())
    if meta.get("name") != name:
        raise OutputError(f"the export at {str(src)!r} is prior {meta.get('name')!r}, not {name!r}")
    load_prior(src)  # a truncated or corrupt export is never installed
    weights = package / "priors" / "weights"
    dest = weights / name
    new_steps = _steps(src)
    if dest.exists() and not overwrite:
        raise OutputError(f"embedded prior {name!r} exists ({dest}, {_steps(dest)} training steps); pass --overwrite"
                          f" to replace it with {src} ({new_steps} steps): its current weights are then moved to "
                          f"{backup_root}/{name}-<UTC time>/")
    backup = (Path(backup_root) / f"{name}-{_utc_stamp()}").resolve()
    if dest.exists():
        checks.writable_dir(backup, "backup directory")
    staging = weights.parent / f".{name}.partial"
    old = weights.parent / f".{name}.old"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(src, staging)
    had_old = dest.exists()
    if had_old:
        shutil.rmtree(old, ignore_errors=True)
        dest.rename(old)
    weights.mkdir(parents=True, exist_ok=True)
    staging.rename(dest)
    if had_old:
        backup.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(old), str(backup))
        log(f"installed {src} as embedded prior {name!r} ({new_steps} steps); the previous weights "
            f"({_steps(backup)} steps) are in {backup}")
    else:
        log(f"installed {src} as embedded prior {name!r} ({new_steps} steps) in {dest}")
    return dest


def _recipe_knobs():
    from .samplers.knobs import Bool, Choice, Float, Int, Str

    return {
        "train.steps": Int(1, doc="training steps"), "train.batch_size": Int(1, doc="images per step"),
        "train.lr": Float(0, low_open=True, doc="peak learning rate"),
        "train.min_lr_ratio": Float(0, 1, doc="final / peak learning rate of the cosine decay"),
        "train.warmup_steps": Int(0, doc="linear warm-up steps"),
        "train.weight_decay": Float(0, doc="AdamW weight decay"),
        "train.ema_decay": Float(0, 1, doc="EMA decay of the exported weights"),
        "train.grad_clip": Float(0, doc="gradient-norm clip (0: off)"),
        "train.mixed_precision": Choice("auto", "bf16", "no", doc="bf16 autocast (auto: on CUDA)"),
        "train.checkpoint_every": Int(1, doc="steps between checkpoints"),
        "train.log_every": Int(1, doc="steps between log lines"), "train.seed": Int(0, doc="training seed"),
        "train.max_minutes": Float(0, low_open=True, optional=True, doc="time budget (None: none)"),
        "train.threads": Int(1, optional=True, doc="torch CPU threads (None: leave as is)"),
        "train.init_from": Str(optional=True, doc="start from these UNet weights (a diffusers directory)"),
        "export.dtype": Choice("float16", "bfloat16", "float32", doc="dtype of the exported weights"),
        "export.n_samples": Int(1, doc="images in the sample grid"),
        "export.sample_steps": Int(1, 1000, doc="DDIM steps of the sample grid"),
        "export.heldout_eval": Bool("held-out denoising evaluation in the model card"),
        "export.dir": Str(optional=True, doc="export directory (default: <output_dir>/prior); never the package"),
        "name": Str(doc="prior name (the embedded name it installs as)"),
        "output_dir": Str(optional=True, doc="run directory (default: outputs/train/<name>)"),
    }


def check_recipe(cfg) -> None:
    """Value ranges of the recipe keys that have declarations, the device, the data kind and ``init_from``
    (all before anything is built)."""
    from .data.base import available_datasets
    from .errors import UnknownNameError

    for key, knob in _recipe_knobs().items():
        value = OmegaConf.select(cfg, key)
        knob.check(value, key)
    checks.check_device(cfg.train.device, "train.device")
    kind = cfg.data.get("kind")
    kinds = available_datasets()
    if kind not in kinds:
        raise UnknownNameError(f"data.kind={kind!r} is not a training dataset; available: {', '.join(kinds)}")
    init = cfg.train.init_from
    if init and not Path(init).expanduser().is_dir():
        raise InputFileError(f"train.init_from={init!r} is not a directory of UNet weights (a diffusers "
                             f"save_pretrained directory, e.g. another run's prior/)")
