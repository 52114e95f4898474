"""Issue #24: DDS vs DPS wall clock at real size (256x256 FFHQ ADM, 320x320 complex fastMRI ADM), and what the GPU
options buy (bf16/fp16 inference, channels-last, torch.compile, CUDA-graph CG).

Timing does not depend on the weights, so the networks are the real-size ADM presets with random weights
(``load_prior(preset, random_init=True)``). Tasks: 4x uniform-1D multi-coil MRI (15 birdcage coils, 320x320) for
``adm-fastmri320-complex``; Gaussian deblurring (61x61 kernel, sigma 3, circular) for ``adm-ffhq256``.

Per (model, batch, variant): seconds per image and images per second of DDS (50 steps; the paper's setting of 5
proximal CG iterations, and for MRI also the setting behind the 64 px quality figures: normal equations, 100 CG
iterations), DPS (1000 and 100 steps), NFE, peak memory, the network time and the data-consistency (CG) time per
DDS step and CG's share. Variants are measured one option at a time against fp32 eager, then combined.

Extrapolation: a sampler's cost per step does not depend on the step (same network call, same CG), so when a run
is cut short (``--dds-steps-run`` / ``--dps-steps-run``, always on CPU) the per-image time is the measured time per
step times the step count; rows say ``"extrapolated_from_steps"``.

Run:
  GPU (benchmarks/gpu_real_scale.sh does this):  python benchmarks/gpu_real_scale.py --device cuda --out OUT.json
  CPU (batch 1, DPS/DDS steps reduced):          python benchmarks/gpu_real_scale.py --device cpu --threads 1
  plumbing check on CPU (tiny networks, seconds): python benchmarks/gpu_real_scale.py --cpu-smoke --out /tmp/s.json
  BENCHMARKS.md section from the result files:    python benchmarks/gpu_real_scale.py --report
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, update_benchmarks_md, write_json  # noqa: E402

import invsolve as inv  # noqa: E402
from invsolve._syncs import HostSyncCounter  # noqa: E402
from invsolve.linalg import GraphedCG  # noqa: E402
from invsolve.operators import Blur, MultiCoilMRI, coils, gaussian_kernel, masks  # noqa: E402
from invsolve.samplers.consistency import cg_solve as data_consistency  # noqa: E402
from invsolve.samplers.dds import dds  # noqa: E402
from invsolve.samplers.dps import dps  # noqa: E402

MODELS = ("adm-fastmri320-complex", "adm-ffhq256")
SMOKE_ARCH = dict(model_channels=32, num_head_channels=32, channel_mult=(1, 2), image_size=32)
# fixed-iteration float32 CG (no host synchronisation, CUDA-graph capturable); the registered default (normal
# equations to a relative tolerance of 1e-4, at most 400 float64 iterations) checks convergence on the host
FIXED = dict(cg_tol=None, cg_precision="single", sigma_y=0.0)
DDS_PAPER = dict(FIXED, cg_iters=5, gamma=1.0, dc="prox")  # released DDS setting
DDS_QUALITY = dict(FIXED, cg_iters=100, dc="normal")  # what gave the 64 px MRI quality figure (headline.json)
SECTION = "real-scale"


def load() -> float:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn, dev, reps=3, warmup=1):
    """Median wall seconds of ``fn()`` over ``reps`` runs after ``warmup`` runs (device-synchronised)."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        sync(dev)
        t = time.perf_counter()
        fn()
        sync(dev)
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


class Peak:
    """Peak memory of a block: CUDA ``max_memory_allocated`` (total, weights included); CPU resident-set growth."""

    def __init__(self, dev):
        self.dev = dev

    def __enter__(self):
        from invsolve._measure import Measure

        sync(self.dev)
        if self.dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.dev)
            self.m = None
        else:
            self.m = Measure(self.dev).__enter__()
        self.t = time.perf_counter()
        return self

    def __exit__(self, *exc):
        sync(self.dev)
        self.seconds = time.perf_counter() - self.t
        if self.dev.type == "cuda":
            self.bytes = int(torch.cuda.max_memory_allocated(self.dev))
        else:
            self.m.__exit__(*exc)
            self.bytes = self.m.peak_memory
        return False


# ---------------------------------------------------------------------------------------------- problems
def make_prior(model, dev, variant, tiny):
    kw = dict(random_init=True, device=dev, dtype=variant.get("dtype", "fp32"))
    if tiny:
        kw["arch_overrides"] = SMOKE_ARCH
    if variant.get("channels_last"):
        kw["channels_last"] = True
    if variant.get("compile"):
        kw["compile"] = True
        if tiny and dev.type == "cpu":  # plumbing only: trace, no C++ build
            kw["compile_backend"] = "eager"
    return inv.load_prior(model, **kw)


def make_problem(model, prior, batch, dev):
    """Operator and measurement at the prior's size: 15-coil 4x MRI (complex) or Gaussian deblurring (RGB)."""
    H, W = prior.image_size
    g = torch.Generator().manual_seed(0)
    if prior.is_complex:
        op = MultiCoilMRI(coils.birdcage(15, (H, W)), masks.uniform1d((H, W), 4, 0.08, seed=0))
        x = torch.complex(torch.randn(batch, 1, H, W, generator=g), torch.randn(batch, 1, H, W, generator=g))
    else:
        op = Blur(gaussian_kernel(min(61, H - 1 if H % 2 == 0 else H), 3.0), padding="circular")
        x = torch.rand(batch, prior.channels, H, W, generator=g)
    op = op.to(dev)
    x = x.to(dev)
    return op, op(x), x


def gens(batch):
    return [torch.Generator().manual_seed(i) for i in range(batch)]


def flops(model, tiny):
    from torch.utils.flop_counter import FlopCounterMode

    from invsolve.priors.adm import ADMUNet, adm_config

    cfg = adm_config(model, **(SMOKE_ARCH if tiny else {}))
    with torch.device("meta"):
        net = ADMUNet(cfg)
        x = torch.zeros(1, cfg.in_channels, cfg.image_size, cfg.image_size)
        with FlopCounterMode(display=False) as f:
            net(x, torch.zeros(1))
    return {"params": sum(p.numel() for p in net.parameters()), "gflop_forward_per_image": f.get_total_flops() / 1e9}


# ---------------------------------------------------------------------------------------------- measurements
def measure_components(prior, op, y, x, dev, reps, dds_knobs, graph=False, t_net=None):
    """Network (one Tweedie call; reused when ``t_net`` is given) and data consistency (one DDS CG solve incl. Aᴴy)
    per step: medians of ``reps`` runs after a warm-up."""
    xp = torch.randn((y.shape[0], prior.channels) + tuple(prior.image_size), device=dev)
    with torch.no_grad():
        if t_net is None:
            t_net = timed(lambda: prior.tweedie(xp, 500), dev, reps=reps)
        g = GraphedCG(dds_knobs["cg_iters"]) if graph else None
        kn = dict(dds_knobs)
        t_dc = timed(lambda: data_consistency(op, y, x, mode=kn.get("dc", "prox"), gamma=kn.get("gamma", 1.0),
                                              cg_iters=kn["cg_iters"], graph=g), dev, reps=max(reps, 3))
    return t_net, t_dc


def run_dds(prior, op, y, dev, steps_run, knobs, warmup=True):
    """Seconds per step of a DDS run of ``steps_run`` steps, its peak memory, and whether the output is finite."""
    with torch.no_grad():
        if warmup:  # cuDNN autotuning, compilation, graph capture
            dds(prior, op, y, generators=gens(y.shape[0]), steps=2, **knobs)
        with Peak(dev) as p:
            out = dds(prior, op, y, generators=gens(y.shape[0]), steps=steps_run, **knobs)
    finite = bool(torch.isfinite(torch.view_as_real(out.x) if out.x.is_complex() else out.x).all())
    return p.seconds / out.nfe, p.bytes, finite


def run_dps(prior, op, y, dev, steps_run, warmup=True):
    if warmup:
        dps(prior, op, y, generators=gens(y.shape[0]), steps=1)
    with Peak(dev) as p:
        out = dps(prior, op, y, generators=gens(y.shape[0]), steps=steps_run)
    return p.seconds / out.nfe, p.bytes


def row(model, batch, variant, sampler, steps, per_step, mem, steps_run, dev, **extra):
    s_img = per_step * steps / batch
    r = {"model": model, "batch": batch, "variant": variant_name(variant), "options": variant, "sampler": sampler,
         "steps": steps, "nfe": steps, "seconds_per_step": per_step, "seconds_per_image": s_img,
         "images_per_second": 1.0 / s_img, "peak_memory_bytes": mem, "device": dev.type, "load_average": load()}
    if 0 < steps_run < steps:
        r["extrapolated_from_steps"] = steps_run
    r.update(extra)
    return r


def variant_name(v):
    parts = [v.get("dtype", "fp32")]
    parts += [k for k in ("channels_last", "compile", "cg_graph") if v.get(k)]
    return "+".join(parts)


class Bench:
    def __init__(self, a):
        self.a = a
        self.dev = torch.device(a.device)
        self.t0 = time.perf_counter()
        self.out = {"machine": machine(), "mode": a.mode, "argv": sys.argv[1:], "load_average_start": load(),
                    "settings": {}, "flops": {}, "rows": [], "components": [], "host_syncs": {}, "skipped": [],
                    "errors": [], "notes": []}
        if self.dev.type == "cuda":
            torch.backends.cudnn.benchmark = True
            self.out["settings"] = {"cudnn.benchmark": True,
                                    "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
                                    "matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                                    "gpu": torch.cuda.get_device_name(self.dev)}

    def left(self):
        return self.a.budget_s - (time.perf_counter() - self.t0)

    def save(self):
        prefix = "paired_" if self.a.paired else ""  # a --paired run keeps the main run's figures
        self.out[prefix + "load_average_end"] = load()
        self.out[prefix + "elapsed_s"] = round(time.perf_counter() - self.t0, 1)
        write_json(Path(self.a.out), self.out, indent=1)

    def job(self, name, fn, need_s=0):
        if self.left() < need_s:
            self.out["skipped"].append({"job": name, "why": f"time budget ({self.a.budget_s:.0f} s) spent"})
            self.save()
            return
        t = time.perf_counter()
        print(f"[{time.perf_counter() - self.t0:7.1f}s] {name} ...", flush=True)
        try:
            fn()
        except Exception as e:  # one failing configuration (e.g. out of memory) must not lose the others
            self.out["errors"].append({"job": name, "error": f"{type(e).__name__}: {e}",
                                       "trace": traceback.format_exc()[-1500:]})
            print(f"    failed: {type(e).__name__}: {e}", flush=True)
        finally:
            gc.collect()
            if self.dev.type == "cuda":
                torch.cuda.empty_cache()
        print(f"    done in {time.perf_counter() - t:.1f}s", flush=True)
        self.save()

    # -- one configuration: DDS (+ DPS) at a batch size with a set of options
    def config(self, model, batch, variant, dps_too=True, full=True):
        """``full``: run the samplers; else (CPU variants) time the network and the CG solve and report
        DDS-50 as 50 x (network + CG), marked ``derived_from_components``."""
        a, dev = self.a, self.dev
        t_load = time.perf_counter()
        prior = make_prior(model, dev, variant, a.tiny)
        t_load = time.perf_counter() - t_load
        op, y, x = make_problem(model, prior, batch, dev)
        graph = bool(variant.get("cg_graph"))
        quality = dict(DDS_QUALITY, cg_iters=10) if a.tiny else DDS_QUALITY
        settings = [("dds", DDS_PAPER)] + ([("dds-quality", quality)] if prior.is_complex else [])
        t_net = None
        for label, knobs in settings:
            t0 = time.perf_counter()
            t_net_k, t_dc = measure_components(prior, op, y, x, dev, a.reps, knobs, graph, t_net)
            t_net = t_net_k
            extra = {"cg_iters": knobs["cg_iters"], "dc": knobs["dc"], "network_seconds_per_step": t_net,
                     "cg_seconds_per_step": t_dc, "cg_share": t_dc / (t_net + t_dc)}
            if label == "dds":
                extra["setup_seconds"] = round(t_load + time.perf_counter() - t0, 2)  # load + first calls (compile)
            if full:
                run = min(50, a.dds_steps_run if label == "dds" else a.dds_quality_steps_run)
                per_step, mem, finite = run_dds(prior, op, y, dev, run, dict(knobs, cg_graph=graph), a.warmup)
                extra["finite"] = finite
            else:
                per_step, mem, run = t_net + t_dc, None, 0
                extra["derived_from_components"] = True
            self.out["rows"].append(row(model, batch, variant, label, 50, per_step, mem, run, dev, **extra))
            self.save()
        if dps_too:
            per_step, mem = run_dps(prior, op, y, dev, a.dps_steps_run, a.warmup)
            for steps in (100, 1000):
                self.out["rows"].append(row(model, batch, variant, f"dps-{steps}", steps, per_step, mem,
                                            a.dps_steps_run, dev))
        del prior

    def host_syncs(self):
        """Host synchronisations: per fixed-iteration CG solve (the full-size MRI operator), and per DDS run of 3 vs
        6 steps (a small network: the count does not depend on its size) -- neither should grow with iterations."""
        model = MODELS[0]
        full = inv.load_prior(model, random_init=True, device="meta", arch_overrides=SMOKE_ARCH if self.a.tiny else {})
        op, y, x = make_problem(model, full, 1, self.dev)  # the operator at the preset's size (320x320, 15 coils)
        res = {}
        for iters in (5, 100):
            with HostSyncCounter(self.dev) as c, torch.no_grad():
                data_consistency(op, y, x, mode="normal", cg_iters=iters)
            res[f"cg_fixed_{iters}_iterations"] = {"counts": dict(c.counts)}
        prior = inv.load_prior(model, random_init=True, device=self.dev, arch_overrides=SMOKE_ARCH)
        op_s, y_s, _ = make_problem(model, prior, 1, self.dev)
        for n in (3, 6):
            with HostSyncCounter(self.dev) as c, torch.no_grad():
                dds(prior, op_s, y_s, generators=gens(1), steps=n, **DDS_PAPER)  # fixed iterations
            res[f"dds_{n}_steps"] = {"counts": dict(c.counts), "where": c.summary().splitlines()[:6]}
        if self.dev.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
            try:
                with torch.no_grad():
                    data_consistency(op, y, x, mode="normal", cg_iters=20)
                res["cg_under_sync_debug_error_mode"] = "passed"
            except RuntimeError as e:
                res["cg_under_sync_debug_error_mode"] = f"FAILED: {e}"
            finally:
                torch.cuda.set_sync_debug_mode("default")
        self.out["host_syncs"] = res

    def dps_validation(self, model):
        """Run DPS-100 in full once to check the per-step extrapolation."""
        prior = make_prior(model, self.dev, {}, self.a.tiny)
        op, y, _ = make_problem(model, prior, 1, self.dev)
        per_step, mem = run_dps(prior, op, y, self.dev, 100, self.a.warmup)
        self.out["rows"].append(row(model, 1, {}, "dps-100-full-run", 100, per_step, mem, 100, self.dev))

    def paired(self, model, variants, rounds=2):
        """Network forward time of each option set against fp32, measured back to back (fp32, option, fp32,
        option, ...) so that both see the same machine load; the speed-up is the median of the per-pair ratios."""
        dev = self.dev
        ref = make_prior(model, dev, {}, self.a.tiny)
        xp = torch.randn((1, ref.channels) + tuple(ref.image_size), device=dev)
        with torch.no_grad():
            ref.tweedie(xp, 500)  # warm-up
            for v in variants:
                prior = make_prior(model, dev, v, self.a.tiny)
                prior.tweedie(xp, 500)
                pairs = [(timed(lambda: ref.tweedie(xp, 500), dev, reps=1, warmup=0),
                          timed(lambda p=prior: p.tweedie(xp, 500), dev, reps=1, warmup=0)) for _ in range(rounds)]
                self.out.setdefault("paired", []).append({
                    "model": model, "variant": variant_name(v), "pairs_s": pairs, "rounds": rounds,
                    "speedup_median": statistics.median(a / b for a, b in pairs), "load_average": load()})
                del prior
                self.save()

    def fp16_cpu_probe(self):
        """One 3x3 convolution (128 channels, 80x80) per dtype: why fp16 is not run on this CPU."""
        x = torch.randn(1, 128, 80, 80)
        conv = torch.nn.Conv2d(128, 128, 3, padding=1)
        res = {}
        for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
            c, xx = conv.to(dt), x.to(dt)
            with torch.no_grad():
                res[name] = timed(lambda c=c, xx=xx: c(xx), self.dev, reps=1, warmup=1 if name != "fp16" else 0)
        self.out["cpu_conv_probe_seconds"] = res
        self.out["skipped"].append({"job": "fp16 on CPU", "why": f"one 3x3 conv (128 ch, 80x80) takes "
                                    f"{res['fp16']:.1f} s in fp16 vs {res['fp32']:.2f} s fp32 / {res['bf16']:.2f} s "
                                    "bf16 here (no fp16 kernels: a scalar fallback)"})


def plan(b: Bench):
    a = b.a
    cpu = b.dev.type == "cpu" and not a.gpu_plan  # the CPU plan: batch 1, network-only option rows
    models = [m for m in MODELS if m in a.models]
    for m in models:
        b.out["flops"][m] = flops(m, a.tiny)
    # jobs in priority order (the GPU run has a time budget): the fp32 headline at the first batch size, the fastest
    # option set on the first model, each option alone, then the other batch sizes
    jobs = [(0, "host synchronisations", b.host_syncs, 0)]
    for i, batch in enumerate(a.batches):
        for m in models:
            jobs.append((1 if i == 0 else 4, f"{m} batch {batch} fp32",
                         lambda m=m, batch=batch: b.config(m, batch, {}), 20))
    variants = [{"dtype": "bf16"}, {"channels_last": True}]
    if not cpu:  # fp16 only where it has kernels (see fp16_cpu_probe), graphs only on CUDA
        variants += [{"dtype": "fp16"} if b.dev.type == "cuda" else None,
                     {"cg_graph": True} if b.dev.type == "cuda" else None, {"compile": True}]
    elif a.cpu_compile:
        variants.append({"compile": True})
    variants = [v for v in variants if v is not None]
    if a.variants is not None:
        keep = set(a.variants.split(","))
        variants = [v for v in variants if variant_name(v).replace("fp32+", "") in keep]
    best = {"dtype": "bf16", "channels_last": True}
    if not cpu:
        best.update(compile=True)
        if b.dev.type == "cuda":
            best.update(cg_graph=True)
    with_best = a.variants is None or "best" in a.variants.split(",")
    for i, batch in enumerate(a.batches):
        for j, m in enumerate(models):
            for v in ([best] if with_best else []) + variants:
                dps_too = v == {"dtype": "bf16"} and not cpu
                prio = (2 if v is best else 3) if i == 0 and j == 0 else 3.5 if i == 0 else 5
                jobs.append((prio, f"{m} batch {batch} {variant_name(v)}",
                             lambda m=m, batch=batch, v=v, d=dps_too: b.config(m, batch, v, dps_too=d, full=not cpu),
                             90 if v.get("compile") else 20))
    if b.dev.type == "cuda":
        jobs.append((6, "DPS-100 full run (extrapolation check)", lambda: b.dps_validation(models[0]), 40))
    for _, name, fn, need in sorted(jobs, key=lambda j: j[0]):
        b.job(name, fn, need_s=need)
    if cpu:
        b.job("fp16 convolution probe", b.fp16_cpu_probe)
        if not a.cpu_compile:
            b.out["skipped"].append({"job": "torch.compile on CPU", "why": "inductor's C++ build of a full-size ADM "
                                     "takes minutes on this shared 2-core machine; measured on the GPU "
                                     "(--cpu-compile runs it here)"})
        b.out["skipped"].append({"job": "CUDA-graph CG (cg_graph)", "why": "CUDA only"})
        b.out["notes"].append("CPU option rows time the network and the CG solve separately (warm-up + 1 run each) "
                              "and report DDS-50 as 50 x (network + CG); the fp32 rows run the samplers")


# ---------------------------------------------------------------------------------------------- report
def _fmt_s(s):
    return f"{s * 1e3:.0f} ms" if s < 1 else f"{s:.2f} s" if s < 100 else f"{s:.0f} s"


def _mark(r):
    return "†" if r.get("derived_from_components") else "*" if "extrapolated_from_steps" in r else ""


def _mib(b):
    return "n/a" if b is None else f"{b / 2**20:,.0f} MiB"


def _quality_anchor():
    p = RESULTS / "headline.json"
    if not p.exists():
        return None
    runs = json.loads(p.read_text())["runs"]
    try:
        d, q = runs["mri/dds"], runs["mri/dps@1000"]
    except KeyError:
        return None
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    return {"dds_psnr": mean(d["psnr"]), "dps_psnr": mean(q["psnr"]), "n": len(d["psnr"]),
            "dds_knobs": d["spec"]["knobs"]}


def report_section(files) -> str:
    lines = ["## Real scale: DDS vs DPS at 256x256 / 320x320 (issue #24)", "",
             "Networks: the real-size ADM presets `adm-fastmri320-complex` (361 M parameters, 2.41 TFLOP per forward "
             "pass at 320x320) and `adm-ffhq256` (94 M, 0.39 TFLOP at 256x256) with **random weights** "
             "(`load_prior(preset, random_init=True)`): cost does not depend on the weights, quality does, so quality "
             "comes from the 64 px priors below. Tasks: 4x uniform-1D 15-coil MRI at 320x320 (fastMRI ADM); Gaussian "
             "deblurring, 61x61 kernel, sigma 3 (FFHQ ADM). DDS: 50 steps, `dds` = the released setting (5 proximal "
             "CG iterations), `dds-quality` = normal equations with 100 CG iterations (the MRI setting behind the "
             "64 px quality figure). DPS: one network call + one backward pass per step. Written by "
             "`benchmarks/gpu_real_scale.py --report` from `benchmarks/results/real_scale_*.json`.", ""]
    q = _quality_anchor()
    if q:
        knobs = ", ".join(f"{k}={v}" for k, v in q["dds_knobs"].items())
        lines += [f"Quality (64 px `mri-brain`, {q['n']} held-out slices, 4x MRI, `benchmarks/results/headline.json`): "
                  f"DDS-50 ({knobs}) {q['dds_psnr']:.2f} dB vs DPS-1000 {q['dps_psnr']:.2f} dB. DDS is at least as "
                  "good in that setting, so the `dds-quality` rows (the same setting at 320x320) against DPS-1000 "
                  "compare equal-or-better quality.", ""]
    for f in files:
        d = json.loads(Path(f).read_text())
        m = d["machine"]
        rows = d["rows"]
        ran = {}
        for r in rows:
            if "extrapolated_from_steps" in r:
                label = "DPS" if r["sampler"].startswith("dps") else r["sampler"]
                ran.setdefault(label, set()).add(r["extrapolated_from_steps"])
        lines += [f"### {m['device']} — {d['mode']}", "",
                  f"{m['torch_threads']} torch thread(s), torch {m['torch']}, {m['date']}; load average "
                  f"{d['load_average_start']} at the start, {d.get('load_average_end')} at the end (every row records "
                  "its own; other jobs shared the machine, so wall times are upper bounds). Command: "
                  f"`python benchmarks/gpu_real_scale.py {' '.join(d['argv'])}`"
                  + (f", then `... {' '.join(d['paired_argv'])}`" if d.get("paired_argv") else "") + ".", ""]
        if ran:
            lines += ["**Extrapolated** (`*`): " + ", ".join(
                f"{k} ran {'/'.join(map(str, sorted(v)))} step(s)" for k, v in ran.items())
                + " with a warm network, and the per-image time is the measured time per step times the step count "
                "(every step costs the same: one network call, plus the same CG for DDS, plus one backward pass for "
                "DPS).", ""]
        lines += ["| model | batch | options | sampler | NFE | s / image | images / s | peak memory | network / step "
                  "| CG / step | CG share | load |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            net = r.get("network_seconds_per_step")
            lines.append(
                f"| {r['model']} | {r['batch']} | {r['variant']} | {r['sampler']} | {r['nfe']} | "
                f"{_fmt_s(r['seconds_per_image'])}{_mark(r)} | "
                f"{r['images_per_second']:.3g} | {_mib(r['peak_memory_bytes'])} | "
                f"{_fmt_s(net) if net is not None else ''} | "
                f"{_fmt_s(r['cg_seconds_per_step']) if net is not None else ''} | "
                f"{format(r['cg_share'], '.1%') if net is not None else ''} | {r['load_average']} |")
        lines += ["", "`*` extrapolated per step (see above); `†` DDS-50 = 50 x (network + CG), timed separately. "
                  "Peak memory: " + (
            "CUDA `max_memory_allocated` during the run, weights included." if d["machine"]["device"] != "cpu" and
            "CPU" not in m["device"] else "growth of the process's resident set during the run (weights excluded; "
            "a rough figure on CPU).")]
        lines += _ratios(rows, paired={x["model"] for x in d.get("paired", [])})
        for m in MODELS:
            pr = [x for x in d.get("paired", []) if x["model"] == m]
            if pr:
                lines.append(f"- {m}, network forward pass timed back to back with fp32 (median ratio of "
                             f"{pr[0]['rounds']} pairs, the fairer comparison under a varying load): " + ", ".join(
                                 f"{x['variant']} {x['speedup_median']:.2f}x "
                                 f"({_fmt_s(statistics.median(b for _, b in x['pairs_s']))} vs "
                                 f"{_fmt_s(statistics.median(a for a, _ in x['pairs_s']))})" for x in pr) + ".")
        hs = d.get("host_syncs") or {}
        if hs:
            lines += ["", "Host synchronisations counted by `invsolve._syncs.HostSyncCounter` (reads of device values, "
                      "device-to-host and blocking host-to-device copies; on a CPU only the reads, host and device "
                      "being one): " + "; ".join(
                          f"{k.replace('_', ' ')}: {_syncs(v)}" for k, v in hs.items()) + "."]
        if d.get("skipped"):
            lines += ["", "Not measured here: " + "; ".join(f"{s['job']} ({s['why']})" for s in d["skipped"]) + "."]
        if d.get("errors"):
            lines += ["", "Failed: " + "; ".join(f"{e['job']}: {e['error'][:160]}" for e in d["errors"]) + "."]
        lines.append("")
    return "\n".join(lines)


def _derived_s(r):
    """Seconds per image as 50 x (network + CG) per step: the basis on which option rows of the CPU plan compare."""
    return r["steps"] * (r["network_seconds_per_step"] + r["cg_seconds_per_step"]) / r["batch"]


def _speedup(base, r):
    if r.get("derived_from_components"):
        return _derived_s(base) / _derived_s(r)
    return base["seconds_per_image"] / r["seconds_per_image"]


def _syncs(v):
    if isinstance(v, dict) and "counts" in v:
        return ", ".join(f"{n} {k}" for k, n in v["counts"].items()) or "0"
    return str(v)


def _ratios(rows, paired=()):
    """Headline ratios; the per-option speed-up line is left out for models with back-to-back (paired) timings,
    which are the fair comparison where option rows ran at another time (and load) than the fp32 row."""
    out = []
    for m in MODELS:
        for batch in sorted({r["batch"] for r in rows}):
            base = {r["sampler"]: r for r in rows if r["model"] == m and r["batch"] == batch and r["variant"] == "fp32"}
            if "dps-1000" not in base:
                continue
            for label in ("dds", "dds-quality"):
                if label in base:
                    sp = base["dps-1000"]["seconds_per_image"] / base[label]["seconds_per_image"]
                    a, b = base[label]["peak_memory_bytes"], base["dps-1000"]["peak_memory_bytes"]
                    mem = f"{a / b:.2f}" if a and b and base[label]["device"] == "cuda" else "n/a (CPU)"
                    out.append(f"- {m}, batch {batch}, fp32: DPS-1000 / {label} wall clock = **{sp:.0f}x**; "
                               f"{label} / DPS peak memory = {mem}.")
        for label in ("dds", "dds-quality") if m not in paired else ():
            rs = [r for r in rows if r["model"] == m and r["sampler"] == label and r["batch"] == 1]
            b0 = next((r for r in rs if r["variant"] == "fp32"), None)
            if not b0 or len(rs) < 2:
                continue
            gains = {r["variant"]: _speedup(b0, r) for r in rs if r is not b0}
            fastest = max(gains, key=gains.get)
            f = next(r for r in rs if r["variant"] == fastest)
            out.append(f"- {m}, {label}-50, batch 1: speed-up of each option set over fp32 eager: " + ", ".join(
                f"{k} {v:.2f}x" for k, v in gains.items()) + f"; fastest {fastest}: "
                f"{_fmt_s(_derived_s(f) if f.get('derived_from_components') else f['seconds_per_image'])} per image"
                + (" (50 x (network + CG))" if f.get("derived_from_components") else "") + ".")
    return [""] + out if out else []


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--batches", default=None, help="comma-separated batch sizes (GPU: 1,8; CPU: 1)")
    ap.add_argument("--dds-steps-run", type=int, default=None, help="DDS steps actually run (GPU: 50, CPU: 2)")
    ap.add_argument("--dps-steps-run", type=int, default=None, help="DPS steps actually run (GPU: 20, CPU: 1)")
    ap.add_argument("--reps", type=int, default=None, help="repetitions of component timings (GPU 10, CPU 1)")
    ap.add_argument("--budget-s", type=float, default=1e9, help="stop starting new jobs after this many seconds")
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {','.join(MODELS)}")
    ap.add_argument("--variants", default=None,
                    help="comma-separated option sets to measure besides fp32 (bf16, fp16, channels_last, cg_graph, "
                         "compile, best); default: all that the device supports")
    ap.add_argument("--cpu-compile", action="store_true", help="also measure torch.compile on CPU (slow)")
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="the GPU plan on the CPU with tiny networks: checks the plumbing of the GPU run")
    ap.add_argument("--tiny", action="store_true", help="tiny networks (plumbing checks of the device's own plan)")
    ap.add_argument("--out", default=None, help="result JSON (default benchmarks/results/real_scale_<device>.json)")
    ap.add_argument("--report", action="store_true", help="only rewrite the BENCHMARKS.md section from results")
    ap.add_argument("--paired", action="store_true",
                    help="only the back-to-back fp32-vs-option network timings (batch 1), merged into --out")
    ap.add_argument("--no-report", action="store_true", help="do not touch BENCHMARKS.md after measuring")
    a = ap.parse_args()
    bad = sorted(set(a.models.split(",")) - set(MODELS))
    if bad:
        ap.error(f"--models: unknown {bad}; choose from {', '.join(MODELS)}")
    a.models = a.models.split(",")
    if a.report:
        files = [f for f in (RESULTS / "real_scale_cpu.json", RESULTS / "real_scale_gpu.json") if f.exists()]
        update_benchmarks_md(SECTION, report_section(files))
        print(report_section(files))
        return 0
    a.smoke = a.cpu_smoke
    a.tiny = a.tiny or a.smoke
    a.gpu_plan = a.smoke or not a.device.startswith("cpu")
    if a.smoke:
        a.device = "cpu"
    dev = torch.device(a.device)
    cpu = dev.type == "cpu"
    if a.threads:
        torch.set_num_threads(a.threads)
    a.mode = "cpu-smoke" if a.smoke else f"{dev.type}, tiny networks" if a.tiny else dev.type
    default_batches = "2" if a.smoke else "1" if cpu else "1,8"
    a.batches = [int(v) for v in (a.batches or default_batches).split(",")]
    a.dds_steps_run = a.dds_steps_run or (2 if cpu else 50)
    a.dds_quality_steps_run = a.dds_steps_run if a.gpu_plan else 1
    a.dps_steps_run = a.dps_steps_run or (1 if cpu else 20)
    a.reps = a.reps or (1 if cpu else 10)
    a.warmup = a.gpu_plan  # on the CPU plan the component timings already warmed the network up
    a.out = a.out or str(RESULTS / f"real_scale_{'smoke' if a.tiny else dev.type}.json")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    b = Bench(a)
    if a.paired:
        if Path(a.out).exists():  # keep what the main run measured; add (or replace) the paired timings
            b.out = {**json.loads(Path(a.out).read_text()), "paired": [], "paired_argv": sys.argv[1:]}
        variants = [{"dtype": "bf16"}, {"channels_last": True}, {"dtype": "bf16", "channels_last": True}]
        for m in a.models:
            b.job(f"{m} paired fp32 vs options", lambda m=m: b.paired(m, variants))
        b.save()
        print(f"added paired timings to {a.out}")
        return 1 if b.out["errors"] else 0
    b.out["notes"].append("random-weight real-size ADM networks: timing only (quality from the 64 px priors)")
    plan(b)
    b.save()
    print(f"wrote {a.out} ({len(b.out['rows'])} rows, {len(b.out['errors'])} errors, {b.out['elapsed_s']} s)")
    if not a.tiny and not a.no_report and Path(a.out).parent == RESULTS:
        files = [f for f in (RESULTS / "real_scale_cpu.json", RESULTS / "real_scale_gpu.json") if f.exists()]
        update_benchmarks_md(SECTION, report_section(files))
    return 1 if b.out["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
