#!/usr/bin/env bash
# The prepared check for a GPU machine: every `pytest -m gpu` test, then the benchmark.
#
#     OUT=/path/to/results bash tools/gpu_check.sh      # from anywhere; OUT must be writable
#
# Written for a machine with an NVIDIA GPU and CuPy, NumPy, h5py, Pillow, pytest (PyTorch
# optional, for bench.py's comparisons). GPU time is scarce, so every step is bounded, and
# all of them together stay under 10 minutes (one command's limit on the GPU machines):
#
#   1. env.txt          nvidia-smi, versions, the GPUs, a smoke test, the commit (<= 55 s)
#   2. gpu_tests.log    timeout 220 python -m pytest -q -m gpu               (<= 230 s)
#   3. net.json/.log    timeout 100 python bench.py --only net --tf32 ...    (<= 125 s)
#                       the whole network, FP32 against PyTorch and on TF32 tensor cores,
#                       and each layer's time inside the inference (--layers)
#   4. bench.json/.log  timeout 150 python bench.py --only kernels ...       (<= 175 s)
#   (3 and 4 include up to 15 s to summarise their JSON; 585 s at the very worst)
#   5. summary.txt      each step's exit status, wall time and result line
#
# Whatever happens the script writes summary.txt (again after every step, so even a kill
# leaves it) and exits 0: the exit statuses are in the summary (124 = the step ran out of
# time). Without a GPU (CuPy sees none) steps 2 to 4 are skipped and the summary says
# why; GPU_CHECK_FORCE=1 runs them anyway (to try the script on a CPU-only machine: the
# gpu tests are then skipped and bench.py exits 2).
# Variables: OUT (default /tmp/gpu_check_out), PYTHON (default python),
# TEST_TIMEOUT (220), NET_TIMEOUT (100), BENCH_TIMEOUT (150), NET_ARGS and BENCH_ARGS (the
# bench options below).
set -u

OUT=${OUT:-/tmp/gpu_check_out}
PYTHON=${PYTHON:-python}
TEST_TIMEOUT=${TEST_TIMEOUT:-220}
NET_TIMEOUT=${NET_TIMEOUT:-100}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-150}
# bench.py's defaults are batch 256 and 1 with 20 timed runs; 10 runs after 2 warm-ups
# keep the medians and leave room in the time limits. The network goes first: its
# figures (the step time against PyTorch, TF32 against FP32) matter most. bench.py
# rewrites its JSON after every case ("partial": true until the end), so a run cut off by
# its timeout still leaves the figures it measured; the .log shows a line per case.
NET_ARGS=${NET_ARGS:---only net --tf32 --layers --batch 256 --repeats 10 --warmup 2}
BENCH_ARGS=${BENCH_ARGS:---only kernels --batch 256 1 --repeats 10 --warmup 2}

# CuPy caches compiled kernels under $HOME; where that is not writable every compile fails.
export CUPY_CACHE_DIR=${CUPY_CACHE_DIR:-/tmp/caffenet_cupy_cache}

mkdir -p "$OUT" || { echo "gpu_check: cannot create OUT=$OUT" >&2; exit 0; }
OUT=$(cd "$OUT" && pwd)   # absolute: the script changes directory next
cd "$(dirname "$0")/.." || exit 0
export PYTHONUNBUFFERED=1
SUMMARY="$OUT/summary.txt"
STEPS=()  # one "name rc seconds result" line per step, for the summary

record() {  # record NAME RC SECONDS RESULT...
    local name=$1 rc=$2 secs=$3
    shift 3
    STEPS+=("$(printf '%-10s rc=%-7s %5ss  %s' "$name" "$rc" "$secs" "$*")")
    write_summary   # now, not only at exit: a killed script still leaves its summary
}

write_summary() {
    local tmp="$SUMMARY.tmp.$$"
    {
        echo "gpu_check summary, $(date -u '+%Y-%m-%dT%H:%M:%SZ')"
        echo "gpu: $GPU_NAME"
        echo "commit: $COMMIT"
        printf '%s\n' "${STEPS[@]}"
        echo "(rc 124: ran out of time; rc 'skipped': not run, see the reason)"
    } >"$tmp" && mv -f "$tmp" "$SUMMARY"
}
trap write_summary EXIT

# ---------------------------------------------------------------- 1. environment
start=$SECONDS
GPU_NAME="not probed yet"
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo "unknown (no git)")
{
    echo "== date: $(date -u '+%Y-%m-%dT%H:%M:%SZ')   commit: $COMMIT"
    echo "== nvidia-smi"
    if command -v nvidia-smi >/dev/null 2>&1; then
        timeout -k 5 15 nvidia-smi 2>&1
    else
        echo "nvidia-smi: not found"
    fi
    echo "== installed packages (the ones this project uses)"
    timeout -k 5 20 "$PYTHON" -m pip list 2>/dev/null \
        | grep -i -E '^(cupy|numpy|h5py|pillow|pytest|torch|nvidia-cuda)' || echo "pip list: none"
    echo "== GPUs, versions, smoke test"
    timeout -k 5 30 "$PYTHON" - <<'EOF' 2>&1
import importlib
import platform
import sys


def attempt(what, fn):
    """Print fn()'s line, or why it failed: one broken probe must not hide the others
    (the GPU list below decides whether the tests run at all)."""
    try:
        print(what, fn())
    except Exception as exc:
        print(what, "FAILED:", type(exc).__name__, exc)


print("python", sys.version.split()[0], platform.platform())
try:
    import cupy
    rt = cupy.cuda.runtime
    for i in range(rt.getDeviceCount()):
        p = rt.getDeviceProperties(i)
        name = p["name"].decode() if isinstance(p["name"], bytes) else str(p["name"])
        print(f"gpu {i}: {name}, {p['totalGlobalMem'] / 2**30:.1f} GiB, "
              f"sm_{p['major']}{p['minor']}, {p['multiProcessorCount']} SMs")
except Exception as exc:
    print("cupy/CUDA:", type(exc).__name__, exc)
for name in ("numpy", "h5py", "PIL", "pytest", "torch", "cupy"):
    attempt(name, lambda: importlib.import_module(name).__version__)
if "cupy" in sys.modules:
    attempt("cuda runtime, driver", lambda: (rt.runtimeGetVersion(), rt.driverGetVersion()))
    attempt("nvrtc", lambda: cupy.cuda.nvrtc.getVersion())

    def raw_kernel():
        a = cupy.ones(4, cupy.float32)
        twice = cupy.RawKernel('extern "C" __global__ void twice(float* a) '
                               '{ a[threadIdx.x] *= 2.0f; }', "twice")
        twice((1,), (4,), (a,))
        return a.get().tolist()

    def product():
        a = cupy.ones((64, 64), cupy.float32)
        return float(cupy.matmul(a, a)[0, 0])

    # The smallest uses of what the tests need: an array op, a compiled kernel, a product.
    attempt("smoke: cupy.arange(4).sum() =", lambda: int(cupy.arange(4).sum()))
    attempt("smoke: RawKernel doubling ones =", raw_kernel)
    attempt("smoke: cupy.matmul of 64x64 ones, [0, 0] =", product)
EOF
} 2>&1 | tee "$OUT/env.txt"
GPU_NAME=$(grep -m1 '^gpu 0:' "$OUT/env.txt" | cut -d' ' -f3- || true)
GPU_NAME=${GPU_NAME:-none visible to CuPy}
record env 0 $((SECONDS - start)) "env.txt"

if [ "$GPU_NAME" = "none visible to CuPy" ] && [ "${GPU_CHECK_FORCE:-0}" != 1 ]; then
    record gpu_tests skipped 0 "no GPU visible to CuPy (see env.txt); GPU_CHECK_FORCE=1 runs it anyway"
    record net skipped 0 "no GPU visible to CuPy"
    record bench skipped 0 "no GPU visible to CuPy"
    exit 0
fi

# ---------------------------------------------------------------- 2. GPU tests
start=$SECONDS
# No -x: one failing kernel must not hide the results of the others. CUDA reports a fault
# at some later synchronisation, blamed on whatever runs then, and the fault breaks every
# later test in the process; CUDA_LAUNCH_BLOCKING=1 makes it surface at the faulting launch
# so the first failure names the right kernel (the tests' time is mostly NumPy's anyway).
# SIGINT at the time limit: pytest then still prints the tally of what it ran. A test
# module that fails to import (a package missing on the machine) must not stop the others.
CUDA_LAUNCH_BLOCKING=1 timeout -s INT -k 10 "$TEST_TIMEOUT" "$PYTHON" -m pytest -q -m gpu -rs \
    --continue-on-collection-errors --durations=25 -p no:cacheprovider 2>&1 \
    | tee "$OUT/gpu_tests.log"
rc=${PIPESTATUS[0]}
# pytest's last line is its tally ("70 passed, 3 skipped in 81.2s"); none if cut off.
tally=$(grep -E '(passed|failed|error|skipped|no tests ran)' "$OUT/gpu_tests.log" | tail -n1)
record gpu_tests "$rc" $((SECONDS - start)) "${tally:-no pytest tally, see gpu_tests.log}"

# ---------------------------------------------------------------- 3, 4. benchmark
bench_step() {  # bench_step NAME TIMEOUT ARGS: bench.py into $OUT/NAME.json and NAME.log
    local name=$1 limit=$2 args=$3 start=$SECONDS result rc
    rm -f "$OUT/$name.json"   # an older run's figures must not pass for this run's
    # shellcheck disable=SC2086  # args is a list of options
    timeout -k 10 "$limit" "$PYTHON" bench.py --device cuda $args \
        --json "$OUT/$name.json" 2>&1 | tee "$OUT/$name.log"
    rc=${PIPESTATUS[0]}
    result="bench.py $args"
    if [ -f "$OUT/$name.json" ]; then
        result="$result; $(timeout 15 "$PYTHON" - "$OUT/$name.json" <<'EOF' 2>&1
import json
import sys

report = json.load(open(sys.argv[1]))
rows = report.get("kernels", []) + report.get("network", [])
bad = [r["name"] for r in rows if r.get("status") != "ok"]
bad += [f"{r['name']} v={v['version']}" for r in report.get("kernels", [])
        for v in r.get("versions", []) if v.get("status") != "ok"]
print(f"{len(rows)} cases, {len(bad)} not ok" + (f": {', '.join(bad[:10])}" if bad else "")
      + (" (partial: the run did not finish)" if report.get("partial") else ""))
EOF
)"
    else
        result="$result; no $name.json"
    fi
    record "$name" "$rc" $((SECONDS - start)) "$result"
}

bench_step net "$NET_TIMEOUT" "$NET_ARGS"
bench_step bench "$BENCH_TIMEOUT" "$BENCH_ARGS"
exit 0
