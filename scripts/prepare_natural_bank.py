"""Write the natural-photo training bank used by the ``natural`` training source.

The bank holds the TRAIN photos of :mod:`invsolve.data.natural` (never the held-out ones), downscaled with
antialiasing to several shorter-side lengths, as uint8 arrays in a compressed ``.npz``. Training machines then
need neither scikit-image's nor scikit-learn's bundled images.

Usage: python scripts/prepare_natural_bank.py [OUT.npz] [--scales 72 96 128 192 256]
(default OUT: invsolve/data/natural_bank.npz, next to the module, which the ``natural`` source falls back to)
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from invsolve.data.natural import DEFAULT_BANK, HELDOUT, SCALES, make_bank


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", default=str(DEFAULT_BANK), help=f"output .npz (default {DEFAULT_BANK})")
    ap.add_argument("--scales", type=int, nargs="+", default=list(SCALES), help="shorter sides in pixels")
    args = ap.parse_args(argv)
    bank = make_bank(args.scales)
    assert not set(map(str, bank["names"])) & set(HELDOUT), "held-out photo in the bank"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **bank)
    photos = sorted(set(map(str, bank["names"])))
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB): {len(photos)} photos x {len(args.scales)} scales "
          f"= {len(bank['names'])} arrays; held out: {', '.join(HELDOUT)}")
    return out


if __name__ == "__main__":
    main()
