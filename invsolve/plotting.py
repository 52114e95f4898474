"""Figures: image grids and reconstruction panels (matplotlib, headless)."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import torch


def pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def displayable(x: torch.Tensor, is_complex: bool = False) -> np.ndarray:
    """Batch ``(B, C, H, W)`` -> numpy ``(B, H, W)`` (grey / magnitude) or ``(B, H, W, 3)`` (RGB).

    Complex inputs (or ``is_complex`` 2-channel [Re, Im] tensors) are shown as magnitude.
    """
    x = x.detach().cpu()
    if x.is_complex():
        x = x.abs()
    elif is_complex and x.shape[1] == 2:
        x = torch.complex(x[:, 0], x[:, 1]).abs()[:, None]
    x = x.float()
    if x.shape[1] == 3:
        return x.permute(0, 2, 3, 1).numpy()
    return x[:, 0].numpy()


def save_grid(images: np.ndarray, path, ncols: int = 8, cmap: str = "gray", vmin=None, vmax=None,
              titles: Optional[Sequence[str]] = None, suptitle: Optional[str] = None, cell: float = 1.6):
    """Save a grid of images (``(N, H, W)`` or ``(N, H, W, 3)``) to ``path`` (PNG)."""
    plt = pyplot()
    n = len(images)
    ncols = min(ncols, n)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(cell * ncols, cell * nrows + (0.4 if suptitle else 0)),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            im = images[i]
            if im.ndim == 3:
                ax.imshow(np.clip(im, 0, 1))
            else:
                ax.imshow(im, cmap=cmap, vmin=vmin, vmax=vmax)
            if titles is not None:
                ax.set_title(titles[i], fontsize=7)
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def reconstruction_figure(panels: Dict[str, np.ndarray], path, truth_key: Optional[str] = "truth",
                          titles: Optional[Dict[str, str]] = None, suptitle: Optional[str] = None,
                          cmap: str = "gray", error_of: Optional[str] = None, signed: bool = False):
    """One row per item: each panel (``(N, H, W)`` or ``(N, H, W, 3)``) plus, when ``truth_key`` is present, an
    absolute-error map of panel ``error_of`` (default: the last panel) against the truth.

    ``signed``: grey panels are signed fields (e.g. vorticity), drawn with a diverging map symmetric about 0.

    ``titles`` maps a panel key to its column title and ``"key#row"`` to a per-cell subtitle (e.g. metrics)."""
    plt = pyplot()
    keys = list(panels)
    n = len(panels[keys[0]])
    with_err = truth_key in panels and len(keys) > 1
    err_key = error_of if error_of in panels else keys[-1]
    ncols = len(keys) + int(with_err)
    fig, axes = plt.subplots(n, ncols, figsize=(2.2 * ncols, 2.3 * n + 0.4), squeeze=False)
    if signed:
        vmax = max(float(np.percentile(np.abs(panels[k]), 99.5)) for k in keys) or 1.0
        cmap, vmin = "RdBu_r", -vmax
    else:
        vmax, vmin = max(float(np.percentile(panels[k], 99.5)) for k in keys), 0
    for r in range(n):
        for c, k in enumerate(keys):
            ax = axes[r, c]
            im = panels[k][r]
            ax.imshow(np.clip(im, 0, 1) if im.ndim == 3 else im, cmap=cmap, vmin=vmin if im.ndim == 2 else None,
                      vmax=vmax if im.ndim == 2 else None)
            t = (titles or {}).get(k, k) if r == 0 else ""
            sub = (titles or {}).get(f"{k}#{r}")
            ax.set_title("\n".join(s for s in (t, sub) if s), fontsize=8)
            ax.axis("off")
        if with_err:
            err = np.abs(panels[err_key][r] - panels[truth_key][r])
            err = err.mean(-1) if err.ndim == 3 else err
            ax = axes[r, -1]
            ax.imshow(err, cmap="inferno", vmin=0, vmax=max(float(np.percentile(err, 99.5)), 1e-8))
            ax.set_title(f"|{err_key} - {truth_key}|" if r == 0 else "", fontsize=8)
            ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
