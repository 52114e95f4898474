#!/usr/bin/env bash
# Issue #24 on a GPU machine, in one call (at most ~8 minutes: tests 180 s, benchmark 290 s, both capped): install invsolve from this working tree, run the CUDA tests
# (pytest -m gpu) and the real-scale DDS/DPS benchmark; logs and JSON go to $OUT.
#
#   bash benchmarks/gpu_real_scale.sh               # on the GPU machine (OUT=... where results should land)
#   bash benchmarks/gpu_real_scale.sh --cpu-smoke   # here, without a GPU: the same steps, tiny networks on the CPU
#   bash benchmarks/gpu_real_scale.sh --fetch-wheels  # here, before the GPU call (optional, see below)
#   bash benchmarks/gpu_real_scale.sh --tests-only | --bench-only   # one half, e.g. for a second, shorter call
#
# Afterwards, on the development machine:
#   cp OUT/real_scale_gpu.json benchmarks/results/ && python benchmarks/gpu_real_scale.py --report
# (rewrites the <!-- real-scale --> section of BENCHMARKS.md from the CPU and GPU result files).
#
# The GPU image has PyTorch but not every dependency of invsolve. Neither the benchmark nor tests/test_gpu.py needs
# them (random-weight ADM priors, procedural phantoms); the one test that does (DDS on CPU vs GPU with the embedded
# diffusers prior) is skipped. `--fetch-wheels` downloads diffusers, importlib_metadata and omegaconf as wheels into
# .whl/ (git-ignored, 6.6 MB; pass carry=[".whl"] to the device call) so that it runs too -- only while the working
# tree plus .whl stays under the device tool's 64 MiB (the tree was 59 MiB when this was written: it does not fit).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
MODE=gpu
RUN_TESTS=1
RUN_BENCH=1
case "${1:-}" in
  --cpu-smoke) MODE=smoke ;;
  --tests-only) RUN_BENCH=0 ;;
  --bench-only) RUN_TESTS=0 ;;
  --fetch-wheels)
    mkdir -p .whl
    for spec in diffusers==0.42.1 importlib_metadata==8.7.0 omegaconf==2.4.0; do
      "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any -d .whl "$spec" \
        || exit 1
    done
    ls -la .whl; exit 0 ;;
  "") ;;
  *) echo "usage: $0 [--cpu-smoke | --tests-only | --bench-only | --fetch-wheels]" >&2; exit 2 ;;
esac
OUT=${OUT:-/tmp/invsolve_real_scale}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 MPLBACKEND=Agg
T0=$(date +%s)

# 1. install from the working tree (wheels carried in .whl/ first; invsolve itself from the source tree)
if [ "$MODE" = gpu ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" - > "$OUT/env.txt" 2>&1 <<'EOF'
import importlib, platform, torch, invsolve
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
print("invsolve from", invsolve.__file__)
for m in ("diffusers", "omegaconf", "sigpy", "h5py", "nilearn"):
    try:
        importlib.import_module(m); print(m, "ok")
    except Exception as e:
        print(m, "missing:", type(e).__name__)
EOF
cat "$OUT/env.txt"

# 2. CUDA tests (collected and skipped without CUDA)
TEST_RC=0
if [ "$RUN_TESTS" = 1 ]; then
  TESTS="tests/test_gpu.py tests/test_host_sync.py tests/test_blur.py tests/test_ct.py tests/test_sampling_ops.py"
  timeout 180 "$PY" -m pytest -q -p no:cacheprovider -m gpu $TESTS -rs --junitxml="$OUT/gpu_tests.xml" \
    2>&1 | tee "$OUT/gpu_tests.log"
  TEST_RC=${PIPESTATUS[0]}
  echo "gpu tests: exit $TEST_RC after $(( $(date +%s) - T0 )) s"
fi

# 3. benchmark: stops starting new jobs after --budget-s; the JSON is rewritten after every job
if [ "$MODE" = gpu ]; then
  BENCH=(--device cuda --budget-s 220 --out "$OUT/real_scale_gpu.json")
  LIMIT=290
else
  BENCH=(--cpu-smoke --threads 1 --models adm-ffhq256 --variants bf16,compile --out "$OUT/real_scale_smoke.json")
  LIMIT=600
fi
BENCH_RC=0
if [ "$RUN_BENCH" = 1 ]; then
  timeout $LIMIT "$PY" benchmarks/gpu_real_scale.py "${BENCH[@]}" 2>&1 | tee "$OUT/bench.log"
  BENCH_RC=${PIPESTATUS[0]}
fi
echo "benchmark: exit $BENCH_RC; total $(( $(date +%s) - T0 )) s; results in $OUT"
[ "$TEST_RC" -eq 0 ] || [ "$TEST_RC" -eq 5 ] || exit "$TEST_RC"  # 5: no tests collected
exit "$BENCH_RC"
