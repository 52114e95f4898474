"""Command line: ``invsolve reconstruct | evaluate | train-prior | list``.

Errors are printed as one line and the exit status is non-zero; ``--debug`` shows the traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="invsolve", description="Imaging inverse problems with diffusion priors.")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    r = sub.add_parser("reconstruct", parents=[common], help="run one reconstruction from a YAML config")
    r.add_argument("config", help="config file, e.g. configs/reconstruct/mri_dds.yaml")
    r.add_argument("overrides", nargs="*", help="key=value overrides, e.g. solver.steps=20 problem.acceleration=8")
    r.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    r.add_argument("--no-progress", action="store_true", help="hide progress bars")

    e = sub.add_parser("evaluate", parents=[common], help="run a benchmark suite (tasks x methods x images x seeds)")
    e.add_argument("suite", help="suite file, e.g. configs/bench/smoke.yaml")
    e.add_argument("overrides", nargs="*", help="key=value overrides")
    e.add_argument("--shards", type=int, default=None, help="split the items into N shards")
    e.add_argument("--shard-index", type=int, default=None, help="which shard this process runs (0-based)")
    e.add_argument("--no-progress", action="store_true")
    e.add_argument("--force", action="store_true", help="report from a partial result set into report.md and "
                   "BENCHMARKS.md (default: a partial report goes to OUTPUT_DIR/partial/)")
    e.add_argument("--overwrite", action="store_true", help="action=export-presets: replace existing presets")

    t = sub.add_parser("train-prior", parents=[common], help="train a diffusion prior from a recipe")
    t.add_argument("recipe", help="recipe file, e.g. configs/train/mri-brain.yaml")
    t.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.steps=1000")
    t.add_argument("--no-progress", action="store_true")

    li = sub.add_parser("list", parents=[common], help="list priors, samplers, tasks and operators")
    li.add_argument("what", nargs="?", default="all", choices=["all", "priors", "samplers", "tasks", "operators"])
    li.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def _list(what: str, as_json: bool) -> int:
    from . import operators
    from .priors import available_priors
    from .samplers import available_samplers
    from .tasks import available_tasks

    out = {}
    if what in ("all", "priors"):
        out["priors"] = available_priors()
    if what in ("all", "samplers"):
        out["samplers"] = available_samplers()
    if what in ("all", "tasks"):
        out["tasks"] = available_tasks()
    if what in ("all", "operators"):
        ops = {}
        for n in operators.__all__ + ["BlackBox", "NavierStokes2D"]:
            obj = getattr(operators, n, None)
            if isinstance(obj, type) and issubclass(obj, operators.Operator) and obj not in (
                    operators.Operator, operators.LinearOperator):
                ops[n] = (obj.__doc__ or "").strip().splitlines()[0] if obj.__doc__ else ""
        out["operators"] = ops
    if as_json:
        print(json.dumps(out, indent=2))
        return 0
    for section, items in out.items():
        print(f"{section}:")
        width = max((len(k) for k in items), default=0)
        for k, v in items.items():
            print(f"  {k:<{width}}  {v}")
    return 0


def _run(args) -> int:
    if args.command == "reconstruct":
        from .reconstruct import main as rec_main

        rec = rec_main(args.config, args.overrides, overwrite=args.overwrite, progress=not args.no_progress)
        print(f"wrote {rec['output_dir']}/ (reconstruction.npy, run.json"
              f"{', figure.png' if rec['config']['output']['figure'] else ''})")
        for name, m in rec["metrics"].items():
            if "relative_l2_mean" in m:
                print(f"  {name:<10} relative L2 {m['relative_l2_mean']:.4f}")
            else:
                print(f"  {name:<10} PSNR {m['psnr_mean']:.2f} dB   SSIM {m['ssim_mean']:.4f}")
        c = rec["cost"]
        mem = "n/a" if c["peak_memory_bytes"] is None else f"{c['peak_memory_bytes'] / 2**20:.0f} MiB"
        print(f"  cost: {c['nfe']} NFE, {c['seconds']:.1f} s, peak memory {mem}")
        return 0
    if args.command == "evaluate":
        try:
            from .eval.harness import main as eval_main
        except ModuleNotFoundError as e:
            if e.name != "invsolve.eval.harness":
                raise
            from .errors import InvsolveError

            raise InvsolveError("the evaluation harness is not available in this build") from None
        return eval_main(args.suite, args.overrides, shards=args.shards, shard_index=args.shard_index,
                         progress=not args.no_progress, force=args.force, overwrite=args.overwrite) or 0
    if args.command == "train-prior":
        from .train import main as train_main

        train_main(args.recipe, args.overrides, progress=not args.no_progress)
        return 0
    if args.command == "list":
        return _list(args.what, args.json)
    _parser().print_help()
    return 2


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    debug = args.debug or os.environ.get("INVSOLVE_DEBUG") == "1"
    try:
        return _run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the CLI reports every failure as one line unless --debug
        if debug:
            raise
        print(f"invsolve: error: {e}", file=sys.stderr)
        print("(run with --debug for the full traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
