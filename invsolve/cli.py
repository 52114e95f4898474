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

    t = sub.add_parser("train-prior", parents=[common], help="train a diffusion prior from a recipe",
                       description="Train (or resume) a prior into its own run directory (default "
                                   "outputs/train/<name>; never the installed package). Installing a finished run as "
                                   "an embedded prior is the separate step --export-embedded.")
    t.add_argument("recipe", help="recipe file, e.g. configs/train/mri-brain.yaml")
    t.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.steps=1000 output_dir=outputs/x")
    t.add_argument("--no-progress", action="store_true")
    t.add_argument("--export-embedded", action="store_true",
                   help="do not train: install the run's finished export as embedded prior <name> (source checkouts "
                        "only)")
    t.add_argument("--overwrite", action="store_true",
                   help="with --export-embedded: replace an existing embedded prior (its weights are moved to "
                        "outputs/replaced-priors/); otherwise: start the run over, removing what its output_dir holds")

    li = sub.add_parser("list", parents=[common], help="list priors, samplers, tasks and operators",
                        description="List what is available. --sampler NAME / --task NAME print every option with "
                                    "its default, the values it accepts and its meaning; --verbose does so for all.")
    li.add_argument("what", nargs="?", default="all", choices=["all", "priors", "samplers", "tasks", "operators"])
    li.add_argument("--json", action="store_true", help="machine-readable output")
    li.add_argument("--sampler", metavar="NAME",
                    help="every option of sampler NAME (default, accepted values, meaning)")
    li.add_argument("--task", metavar="NAME", help="every problem option of task NAME")
    li.add_argument("-v", "--verbose", action="store_true", help="with samplers / tasks: every option of each")
    return p


def _options_table(title: str, summary: str, options: dict, notes=()) -> str:
    """A sampler's or task's options as aligned text: option, default, accepted values, meaning."""
    rows = [("option", "default", "accepts", "meaning")]
    rows += [(k, repr(v["default"]), v["accepts"], v["doc"]) for k, v in options.items()]
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"{title}: {summary}"] + [f"  {n}" for n in notes]
    lines += ["  " + f"{r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:<{w[2]}}  {r[3]}".rstrip() for r in rows]
    return "\n".join(lines)


def _sampler_card(name: str):
    from .samplers import get_sampler

    spec = get_sampler(name)
    needs = {"linear": "a linear operator with an adjoint", "differentiable": "a differentiable operator (autograd)",
             "forward": "forward evaluations only (black boxes work)"}.get(spec.requires, spec.requires)
    notes = [f"operator: {needs}; prior: {'a diffusion prior' if spec.needs_prior else 'none (classical)'}"
             + ("; latent priors supported" if spec.latent_ok else "")]
    return spec.summary, spec.describe(), notes


def _task_card(name: str):
    from .tasks import get_task

    spec = get_task(name)
    return spec.summary, {f"problem.{k}": v for k, v in spec.describe().items()}, []


def _list_options(kind: str, names, as_json: bool) -> int:
    card = _sampler_card if kind == "sampler" else _task_card
    cards = {n: card(n) for n in names}
    if as_json:
        print(json.dumps({n: {"summary": c[0], "options": c[1], "notes": c[2]} for n, c in cards.items()}, indent=2,
                         default=repr))
        return 0
    print("\n\n".join(_options_table(f"{kind} {n}", *c[:2], notes=c[2]) for n, c in cards.items()))
    return 0


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
        if rec.get("note"):
            print(f"note: {rec['note']}")
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
        if not args.export_embedded:
            print("[train-prior] reading the recipe and loading torch / diffusers ...", file=sys.stderr, flush=True)
        from .train import main as train_main

        train_main(args.recipe, args.overrides, progress=not args.no_progress, overwrite=args.overwrite,
                   export_embedded=args.export_embedded)
        return 0
    if args.command == "list":
        if args.sampler or args.task:
            if args.sampler:
                _list_options("sampler", [args.sampler], args.json)
            if args.task:
                _list_options("task", [args.task], args.json)
            return 0
        if args.verbose and args.what in ("samplers", "tasks"):
            from .samplers import available_samplers
            from .tasks import available_tasks

            names = available_samplers() if args.what == "samplers" else available_tasks()
            return _list_options(args.what[:-1], list(names), args.json)
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
