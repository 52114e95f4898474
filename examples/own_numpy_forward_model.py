"""Your own forward model, in plain numpy, inverted with a diffusion prior by EnKG (no gradients needed).

The only thing invsolve needs from you is a function that maps a batch of images to a batch of measurements::

    def forward(x: np.ndarray) -> np.ndarray:      # (n, C, H, W) float32 -> (n, ...) float
        ...

It may be anything: a legacy simulator, a call into C/Fortran, a subprocess, a remote service. Wrap it with
``invsolve.operators.BlackBox`` and pass it to ``invsolve.solve(..., sampler="enkg")``. EnKG evaluates it on a whole
ensemble of candidate images at a time (one batched call per update; ``executor=`` spreads the batch over threads,
processes or a Dask cluster) and moves the ensemble with an ensemble-Kalman step built from the outputs alone.

Rules the wrapper enforces (errors name the failing items instead of averaging garbage into the result):

* the output must be a numeric array with one row per input item (``output_shape`` checks the rest if given);
* NaN/Inf outputs, exceptions inside ``fn`` and wrong shapes raise ``invsolve.operators.BlackBoxError``.

The model below is a toy camera: 2x2 pixel binning followed by a saturating sensor response ``1 - exp(-3 u)``. It is
nonlinear and has no adjoint, so DDS/CG cannot use it; EnKG (and the zero-order DPS-GSG baseline) can.

Run it (CPU: about a minute with the small settings below on a free core; raise --ensemble-size/--steps on a GPU)::

    python examples/own_numpy_forward_model.py --ensemble-size 16 --steps 20

or through the CLI with the same function: ``invsolve reconstruct configs/reconstruct/blackbox_numpy_example.yaml``.
"""
from __future__ import annotations

import argparse

import numpy as np


def forward(x: np.ndarray) -> np.ndarray:
    """Toy camera, numpy only: ``(n, 3, H, W)`` RGB in [0, 1] -> ``(n, 3, H/2, W/2)`` saturated binned intensities."""
    n, c, h, w = x.shape
    binned = x.reshape(n, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5))
    return 1.0 - np.exp(-3.0 * binned)


def main(argv=None):
    import invsolve as inv
    from invsolve.data.natural import heldout_photos
    from invsolve.eval.metrics import psnr

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ensemble-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--noise", type=float, default=0.01)
    ap.add_argument("--workers", type=int, default=0, help="evaluate the forward model on a thread pool")
    args = ap.parse_args(argv)

    x, names = heldout_photos(64)  # held-out photos: never seen by the `natural` prior
    x = x[:1].numpy()
    rng = np.random.default_rng(0)
    y = forward(x) + args.noise * rng.standard_normal(forward(x).shape)

    executor = None
    if args.workers:
        from concurrent.futures import ThreadPoolExecutor

        executor = ThreadPoolExecutor(args.workers)
    op = inv.operators.BlackBox(forward, input_shape=(3, 64, 64), output_shape=(3, 32, 32), executor=executor)
    res = inv.solve(y.astype(np.float32), op, prior="natural", sampler="enkg", steps=args.steps,
                    ensemble_size=args.ensemble_size, updates=1, max_inner=2, batch=32, seed=0)
    if executor is not None:
        executor.shutdown()
    info = res.info
    print(f"{names[0]}: EnKG ensemble mean PSNR {psnr(res.x, x, 1.0)[0]:.2f} dB; mean per-pixel spread "
          f"{float(info['spread'].mean()):.3f}; {info['forward_evaluations']} forward evaluations in "
          f"{info['forward_calls']} batched calls; {info['network_evaluations']} network evaluations; "
          f"{res.seconds:.1f} s")
    return res


if __name__ == "__main__":
    main()
