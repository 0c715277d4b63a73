#!/usr/bin/env bash
# The prepared GPU run, in two parts with their own time budgets
# (kernels/README.md says what each step does and writes):
#
#   kernels/gpu-check.sh quick   # <= 4 min: tools, build, GPU gate,
#                                # test_backend_ops, the cli test, CUDA
#                                # against CPU on every shipped model, every
#                                # sampler and the commands, ctest -j
#   kernels/gpu-check.sh bench   # <= 5 min: difflux bench fp32/tf32/bf16,
#                                # --profile, eager, against PyTorch
#   kernels/gpu-check.sh all     # quick, then bench (<= 9 min)
#
# QUICK=1 or BENCH=1 in the environment select a part as the argument does.
# Each part writes, under $OUT (default ./gpu-out), as it goes:
#   PART-summary.txt   one line per step (PASS/FAIL/TIMEOUT/SKIP, seconds)
#                      and the step's findings
#   PART-logs.tar.gz   every log, JSON and grid of the part, repacked after
#                      each step, so a run stopped at any point returns what
#                      it did
# Every step runs under `timeout` (its own limit, cut to what the part's
# budget has left); BUDGET=seconds overrides the part's budget. The exit
# status is 0 only when every step passed. A machine without a GPU stops at
# the "gpu" step with a message saying so (exit 1); one whose GPU the CUDA
# backend cannot use (driver too old for CUDA 13: R580+) fails there too,
# loudly, with the driver version and the reason, instead of letting the
# CUDA tests skip.
#
# Build tools and libraries: kernels/gpu-deps.sh (checked here; the carried
# .deps folder stands in for what the machine lacks).
# shellcheck disable=SC2317 # the step functions are called by name (run_step)
set -uo pipefail
SELF=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
# shellcheck source=kernels/gpu-deps.sh
. "$ROOT/kernels/gpu-deps.sh"

BUILD=${DFX_BUILD:-$ROOT/build-gpu}
DFX=$BUILD/difflux
NPROC=$(nproc 2>/dev/null || echo 4)
TOL_FAIL=1e-2 # CUDA against CPU: normalised difference that fails a comparison
TOL_WARN=1e-3 # ... and that is reported as large
# The device the comparisons test against the CPU: cuda. (DFX_CHECK_DEVICE=cpu
# runs the comparison steps on a machine without a GPU, to test this script:
# `DFX_CHECK_DEVICE=cpu kernels/gpu-check.sh _step samplers`.)
DEV=${DFX_CHECK_DEVICE:-cuda}

# ------------------------------------------------------------------ helpers

elapsed() { echo $(($(date +%s) - T0)); }

# One line into the part's summary (and on stdout).
note() { echo "$*" | tee -a "$SUMMARY"; }

# The part's logs, repacked: written beside the old archive, then renamed
# over it, so a run killed while packing still returns the previous one.
pack() {
    cp -f "$SUMMARY" "$WORK/summary.txt" 2>/dev/null
    tar -czf "$OUT/.$PART-logs.tmp" -C "$(dirname "$WORK")" "$(basename "$WORK")" 2>/dev/null &&
        mv -f "$OUT/.$PART-logs.tmp" "$OUT/$PART-logs.tar.gz"
}

# run_step NAME LIMIT: step_NAME under timeout (LIMIT seconds, or what the
# budget has left if less), output in $WORK/NAME.log; its lines that begin
# with ">> " are its findings and go into the summary.
run_step() {
    local name=$1 lim=$2 left t0 rc dt verdict
    left=$((BUDGET - $(elapsed) - 8)) # 8 s kept for the last packing
    if [ "$left" -lt 5 ]; then
        note "$(printf '%-7s %-14s the part'"'"'s budget (%d s) is spent' SKIP "$name" "$BUDGET")"
        FAILED+=" $name"
        return 1
    fi
    [ "$lim" -gt "$left" ] && lim=$left
    t0=$(date +%s)
    timeout -k 5 "$lim" "$SELF" _step "$name" >"$WORK/$name.log" 2>&1
    rc=$?
    dt=$(($(date +%s) - t0))
    case $rc in
    0) verdict=PASS ;;
    124 | 137) verdict=TIMEOUT ;;
    *) verdict=FAIL ;;
    esac
    note "$(printf '%-7s %-14s %4d s (limit %d s, exit %d)' "$verdict" "$name" "$dt" "$lim" "$rc")"
    grep '^>> ' "$WORK/$name.log" | sed 's/^>> /        /' | tee -a "$SUMMARY"
    if [ "$rc" -ne 0 ]; then
        FAILED+=" $name"
        echo "-------- last lines of $name.log" && tail -15 "$WORK/$name.log"
    fi
    pack
    return "$rc"
}

# The end of a part: verdict, archive, exit status.
finish() {
    if [ -z "$FAILED" ]; then
        note "== $PART: all steps passed in $(elapsed) s"
    else
        note "== $PART: FAILED:$FAILED ($(elapsed) s of $BUDGET)"
    fi
    pack
    [ -z "$FAILED" ]
    exit $?
}

# CUDA against CPU on two .npy files: max |diff|, normalised difference,
# non-finite values; exit 1 above TOL_FAIL or on NaN/Inf, "(large)" above
# TOL_WARN. Plain Python (no numpy needed).
npycmp() {
    python3 - "$@" "$TOL_FAIL" "$TOL_WARN" <<'EOF'
import array, ast, math, sys
def load(path):
    with open(path, "rb") as f:
        b = f.read()
    assert b[:6] == b"\x93NUMPY", path
    n = 8 + 2 if b[6] == 1 else 8 + 4
    hl = int.from_bytes(b[8:n], "little")
    h = ast.literal_eval(b[n:n + hl].decode("latin1"))
    assert h["descr"] == "<f4" and not h["fortran_order"], h
    a = array.array("f")
    a.frombytes(b[n + hl:])
    return a, h["shape"]
(got, sg), (ref, sr) = load(sys.argv[1]), load(sys.argv[2])
fail, warn = float(sys.argv[3]), float(sys.argv[4])
if sg != sr:
    print(f"shapes differ: {sg} against {sr}"); sys.exit(1)
bad = sum(1 for v in got if not math.isfinite(v))
d2 = r2 = dmax = 0.0
for g, r in zip(got, ref):
    d = g - r
    d2 += d * d; r2 += r * r
    dmax = max(dmax, abs(d))
nerr = math.sqrt(d2 / r2) if r2 > 0 else math.sqrt(d2)
flag = "FAIL" if bad or not nerr <= fail else ("(large)" if nerr > warn else "")
print(f"shape {list(sg)}: max |diff| {dmax:.3e}, normalised {nerr:.3e}"
      + (f", {bad} non-finite" if bad else "") + (f" {flag}" if flag else ""))
sys.exit(1 if flag == "FAIL" else 0)
EOF
}

# The shipped generative models (classifiers and their reference
# statistics are not sampled).
shipped_models() {
    local m
    for m in "$ROOT"/models/*.safetensors; do
        case $(basename "$m") in *classifier*) continue ;; esac
        echo "$m"
    done
}

# sample_pair TAG DESCRIPTION ARGS...: the same sampling on cuda and on cpu,
# compared; the CUDA grid kept in $WORK/grids.
sample_pair() {
    local tag=$1 line rc=0
    shift
    mkdir -p "$WORK/grids"
    if ! "$DFX" sample "$@" --device "$DEV" --quiet --out "$WORK/grids/$tag.png" \
        --npy "$WORK/$tag-cuda.npy" >"$WORK/$tag-cuda.txt" 2>&1; then
        echo ">> $tag: FAIL on $DEV: $(tail -1 "$WORK/$tag-cuda.txt")"
        return 1
    fi
    if ! "$DFX" sample "$@" --device cpu --quiet --no-png --npy "$WORK/$tag-cpu.npy" \
        >"$WORK/$tag-cpu.txt" 2>&1; then
        echo ">> $tag: FAIL on cpu: $(tail -1 "$WORK/$tag-cpu.txt")"
        return 1
    fi
    line=$(npycmp "$WORK/$tag-cuda.npy" "$WORK/$tag-cpu.npy") || rc=1
    echo ">> $(printf '%-28s' "$tag") $line"
    rm -f "$WORK/$tag-cuda.npy" "$WORK/$tag-cpu.npy"
    return "$rc"
}

# -------------------------------------------------------------- the steps
# Each runs in its own process (run_step), under timeout.

step_tools() {
    date -u +"%FT%TZ"
    uname -a
    echo ">> host: $(uname -n), $NPROC cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)"
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi || true
        echo ">> nvidia-smi: $(nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv,noheader 2>&1 | head -2 | paste -sd';')"
    else
        echo ">> nvidia-smi: not installed"
    fi
    echo ">> nvcc: $(nvcc --version 2>/dev/null | grep -o 'release [0-9.]*, V[0-9.]*' || echo 'not found')"
    echo ">> cmake: $(cmake --version 2>/dev/null | head -1)"
    # the toolkit's libraries: what the binaries' RUNPATH must reach
    find "$(dirname "$(dirname "$(command -v nvcc)")")"/lib*/ -maxdepth 1 -name 'libcublas.so*' \
        2>/dev/null | head -4
    dfx_deps_check >"$WORK/tools-deps.txt"
    sed 's/^/   /' "$WORK/tools-deps.txt"
    [ -z "$DFX_DEPS_MISSING" ] || echo ">> missing:$DFX_DEPS_MISSING"
    return 0 # a report: the deps check before the steps decides
}

# Configure and build; warnings are errors, and where that alone fails the
# build (another compiler may warn where ours does not), the build is redone
# without -Werror so that the GPU steps still run: the step then fails
# (exit 3) with the warnings listed, and the part goes on. build.ok marks a
# usable build.
configure_build() {
    local gen=()
    command -v ninja >/dev/null 2>&1 && [ ! -f "$BUILD/Makefile" ] && gen=(-G Ninja)
    # shellcheck disable=SC2086 # DFX_CMAKE_ARGS: several -D options
    cmake -S "$ROOT" -B "$BUILD" "${gen[@]}" -DDIFFLUX_CUDA=ON -DCMAKE_BUILD_TYPE=Release \
        -DDIFFLUX_WERROR="$1" ${DFX_CMAKE_ARGS:-} && cmake --build "$BUILD" -j"$NPROC"
}

step_build() {
    local rc=0
    rm -f "$WORK/build.ok"
    if ! configure_build ON; then
        echo ">> build with -DDIFFLUX_WERROR=ON FAILED; again without it"
        grep -E 'error:|warning:' "$WORK/build.log" | head -8 | sed 's/^/>> /'
        configure_build OFF || { echo ">> build FAILED"; return 1; }
        rc=3
    fi
    touch "$WORK/build.ok"
    grep -h -- '-- difflux: CUDA' "$WORK/build.log" | sed 's/^-- />> /'
    grep -i 'warning:' "$WORK/build.log" | head -5 | sed 's/^/>> /'
    if command -v readelf >/dev/null 2>&1; then
        echo ">> difflux RUNPATH: $(readelf -d "$DFX" | sed -n 's/.*R[UN]*PATH.*: \[\(.*\)\]/\1/p')"
        echo ">> difflux needs: $(readelf -d "$DFX" | grep -o 'lib[a-z]*\.so[.0-9]*' | grep -E 'cuda|cublas' | paste -sd' ')"
    fi
    if command -v cuobjdump >/dev/null 2>&1; then
        echo ">> machine code: $(cuobjdump --list-elf "$DFX" 2>/dev/null | grep -o 'sm_[0-9a-z]*' | sort -uV | paste -sd' '); PTX: $(cuobjdump --list-ptx "$DFX" 2>/dev/null | grep -o 'sm_[0-9a-z]*' | sort -uV | paste -sd' ')"
    fi
    return "$rc"
}

# Two samples of the exact mixture on the CUDA backend: nothing, or why not.
cuda_probe() {
    "$DFX" sample --device cuda --model "$ROOT/models/mnist-gmm.safetensors" --n 2 --steps 2 \
        --no-png --npy "$WORK/probe.npy" --quiet 2>&1 | head -3
    return "${PIPESTATUS[0]}"
}

# The gate: no GPU, or a GPU the CUDA backend cannot use, stops the part.
step_gpu() {
    local info drv msg
    if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
        echo ">> NO GPU: nvidia-smi $(command -v nvidia-smi >/dev/null 2>&1 && echo 'lists no GPU' || echo 'is not installed') on $(uname -n): the CUDA checks need a machine with an NVIDIA GPU"
        cuda_probe | sed 's/^/>> difflux: /'
        return 1
    fi
    info=$(nvidia-smi --query-gpu=name,driver_version,compute_cap --format=csv,noheader | head -1)
    drv=$(echo "$info" | cut -d, -f2 | tr -d ' ')
    echo ">> GPU: $info"
    if ! msg=$(cuda_probe); then
        echo ">> FAIL: nvidia-smi sees a GPU (driver $drv) but the CUDA backend cannot use it: $msg"
        [ "${drv%%.*}" -lt 580 ] 2>/dev/null &&
            echo ">> driver $drv is older than R580, the oldest that runs CUDA 13 code"
        return 1
    fi
    echo ">> CUDA backend starts: $("$DFX" --version)"
}

step_backend_ops() {
    local rc
    (cd "$BUILD/tests" && ./test_backend_ops)
    rc=$?
    if [ "$rc" -eq 77 ]; then
        echo ">> FAIL: test_backend_ops SKIPPED although nvidia-smi sees a GPU (driver $(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1)): a silent skip is no pass; difflux says: $(cuda_probe)"
        return 1
    fi
    grep -E 'FAIL' "$WORK/backend_ops.log" | grep -v '^>>' | head -20 | sed 's/^/>> /'
    echo ">> $(tail -1 "$WORK/backend_ops.log")"
    return "$rc"
}

step_cli() {
    ctest --test-dir "$BUILD" -R '^cli$' --output-on-failure
}

# Every shipped model, CUDA against CPU, the same seeds: n = 8, 10 steps of
# the model's default sampler (and adls on the dale models).
step_models() {
    local m b rc=0
    for m in $(shipped_models); do
        b=$(basename "$m" .safetensors)
        sample_pair "$b" --model "$m" --n 8 --steps 10 || rc=1
        case $b in *dale*) sample_pair "$b-adls" --model "$m" --sampler adls --n 8 --steps 20 || rc=1 ;; esac
    done
    return "$rc"
}

# Every sampler on the CUDA backend against the CPU (the dale-only ones on
# mnist-dale, the rest on mnist-flow, classifier-free guidance on mnist-cond).
step_samplers() {
    local s rc=0 model
    for s in $("$DFX" samplers | awk 'NR > 1 {print $1}'); do
        model=$ROOT/models/mnist-flow.safetensors
        grep -q "^$s .*dale path only" <("$DFX" samplers) && model=$ROOT/models/mnist-dale.safetensors
        sample_pair "$s" --model "$model" --sampler "$s" --n 4 --steps 8 --rtol 1e-3 --atol 1e-3 || rc=1
    done
    sample_pair "cond-guidance2" --model "$ROOT/models/mnist-cond.safetensors" --class 7 \
        --guidance 2 --n 4 --steps 8 || rc=1
    return "$rc"
}

# The other commands on --device cuda: eval (against the CPU's figures),
# sweep, conservativity (against the CPU's CSV), bench, info.
step_commands() {
    local rc=0 dev flow=$ROOT/models/mnist-flow.safetensors
    for dev in "$DEV" cpu; do
        if "$DFX" eval --model "$flow" --device "$dev" --n 64 --steps 4 --kid-subsets 2 \
            --json "$WORK/eval-$dev.json" --quiet >"$WORK/eval-$dev.txt" 2>&1; then
            echo ">> eval $dev: $(grep -oE '"(fid|kid|confidence|seconds)": *[-+0-9.eE]*' "$WORK/eval-$dev.json" | paste -sd' ')"
        else
            echo ">> eval $dev: FAIL: $(tail -1 "$WORK/eval-$dev.txt")"
            rc=1
        fi
    done
    if "$DFX" sweep --model "$flow" --device "$DEV" --samplers euler,dpmpp_2m --steps 2,4 --n 32 \
        --kid-subsets 2 --csv "$WORK/sweep-cuda.csv" --plot "$WORK/sweep-cuda.png" --quiet \
        >"$WORK/sweep-cuda.txt" 2>&1; then
        echo ">> sweep $DEV: $(wc -l <"$WORK/sweep-cuda.csv") CSV lines"
    else
        echo ">> sweep $DEV: FAIL: $(tail -1 "$WORK/sweep-cuda.txt")"
        rc=1
    fi
    for dev in "$DEV" cpu; do
        if "$DFX" conservativity --model "$flow" --device "$dev" --t 0.3,0.8 --points 2 --steps 4 \
            --probes 4 --patch 2 --loop-nodes 8 --radii 0.1 --csv "$WORK/cons-$dev.csv" --quiet \
            >"$WORK/cons-$dev.txt" 2>&1; then
            echo ">> conservativity $dev: $(sed -n 2p "$WORK/cons-$dev.csv" | cut -c1-150)"
        else
            echo ">> conservativity $dev: FAIL: $(tail -1 "$WORK/cons-$dev.txt")"
            rc=1
        fi
    done
    for dev in "$DEV" cpu; do
        if "$DFX" likelihood --model "$flow" --device "$dev" --n 4 --sampler heun --steps 4 \
            --data "$ROOT/models/data/mnist10k-images-idx3-ubyte.gz" \
            --json "$WORK/lik-$dev.json" --quiet >"$WORK/lik-$dev.txt" 2>&1; then
            echo ">> likelihood $dev: $(grep -E '^(NLL|bits/dim)' "$WORK/lik-$dev.txt" | tr -s ' ' | paste -sd' ')"
        else
            echo ">> likelihood $dev: FAIL: $(tail -1 "$WORK/lik-$dev.txt")"
            rc=1
        fi
    done
    if "$DFX" bench --model "$flow" --device "$DEV" --batch 1,8 --steps 2 --repeat 1 \
        >"$WORK/bench-smoke.txt" 2>&1; then
        echo ">> bench $DEV: $(grep -E '^ +8 ' "$WORK/bench-smoke.txt" | tr -s ' ')"
    else
        echo ">> bench $DEV: FAIL: $(tail -1 "$WORK/bench-smoke.txt")"
        rc=1
    fi
    "$DFX" info --model "$flow" >"$WORK/info.txt" 2>&1 || { echo ">> info: FAIL"; rc=1; }
    return "$rc"
}

# The rest of the test suite (backend_ops and cli ran above), in parallel;
# by default without the long CPU-only statistical tests (moments and the
# sampler moments on every path: minutes of CPU, the same on any machine,
# and CI runs them). DFX_CTEST_EXCLUDE= (empty) runs them too.
step_ctest() {
    local rc ex=${DFX_CTEST_EXCLUDE-moments|samplers|samplers@.*}
    ctest --test-dir "$BUILD" -j"$NPROC" -E "^(backend_ops|cli${ex:+|$ex})\$" \
        --output-on-failure --timeout 150
    rc=$?
    echo ">> $(grep -E 'tests passed|tests failed' "$WORK/ctest.log" | tail -1)"
    grep -E '^\s+[0-9]+ - ' "$WORK/ctest.log" | sed 's/^ */>> /'
    return "$rc"
}

# ----- bench part. MODEL: the shipped flow U-Net; heun, 10 steps.
BENCH_MODEL=$ROOT/models/mnist-flow.safetensors

bench_run() {
    local tag=$1
    shift
    "$DFX" bench --model "$BENCH_MODEL" --device "$DEV" --sampler heun --steps 10 "$@" \
        --json "$WORK/bench-$tag.json"
    local rc=$?
    grep -E '^device|^peak' "$WORK/bench-$tag.log" | sed 's/^/>> /'
    awk '/^ +batch/ {on = 1} on && NF' "$WORK/bench-$tag.log" | sed 's/^/>> /'
    return "$rc"
}

step_bench-fp32() { bench_run fp32 --precision fp32 --batch 1,8,64,256,1024,4096; }
step_bench-tf32() { bench_run tf32 --precision tf32 --batch 1,64,1024,4096; }
step_bench-bf16() { bench_run bf16 --precision bf16 --batch 1,64,1024,4096; }
step_bench-eager() { DIFFLUX_CUDA_GRAPHS=0 bench_run eager --batch 1,8,64; }

step_bench-profile() {
    "$DFX" bench --model "$BENCH_MODEL" --device "$DEV" --sampler heun --steps 10 --batch 1,1024 \
        --repeat 1 --profile
    local rc=$?
    awk '/^profile of/ {on = 1} on && NF' "$WORK/bench-profile.log" | sed 's/^/>> /'
    return "$rc"
}

# PyTorch on the same weights (models/difflux_ref/bench_compare.py): eager
# and CUDA-graph replay; with compile, torch.compile too. The carried
# libraries stay off PyTorch's library path.
torch_compare() {
    command -v python3 >/dev/null 2>&1 || { echo ">> no python3: skipped"; return 1; }
    env -u LD_LIBRARY_PATH PYTHONUNBUFFERED=1 python3 -m models.difflux_ref.bench_compare \
        --model "$BENCH_MODEL" --device cuda --sampler heun --steps 10 --difflux "$DFX" \
        --json "$WORK/$1.json" "${@:2}"
    local rc=$?
    grep -iE 'ratio|difflux|torch' "$WORK/$1.log" | tail -12 | sed 's/^/>> /'
    return "$rc"
}
step_torch() { torch_compare torch --batch 1,64,1024; }
step_torch-compile() { torch_compare torch-compile --batch 64,1024 --compile; }

# ------------------------------------------------------------------- parts

part_setup() {
    local part=$1
    PART=$part
    OUT=${OUT:-$ROOT/gpu-out}
    mkdir -p "$OUT"
    WORK=${DFX_GPU_WORK:-/tmp/dfx-gpu-check}/$PART
    rm -rf "$WORK"
    mkdir -p "$WORK"
    SUMMARY=$OUT/$PART-summary.txt
    : >"$SUMMARY"
    rm -f "$OUT/$PART-logs.tar.gz"
    FAILED=""
    T0=$(date +%s)
    export OUT WORK PART
    note "== difflux gpu-check $PART, budget $BUDGET s, $(date -u +%FT%TZ), $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)$(git -C "$ROOT" status --porcelain 2>/dev/null | grep -q . && echo ' (with local changes)')"
    # tools and libraries, with the carried ones where the machine lacks them
    # (in this shell: the steps inherit the paths)
    dfx_deps_setup >"$WORK/deps.log" 2>&1
    local rc=$?
    sed 's/^/        /' "$WORK/deps.log" >>"$SUMMARY"
    if [ "$rc" -ne 0 ]; then
        note "FAIL    deps           missing:$DFX_DEPS_MISSING (kernels/gpu-deps.sh check)"
        FAILED+=" deps"
        finish
    fi
}

part_quick() {
    BUDGET=${BUDGET:-240}
    part_setup quick
    run_step tools 20
    run_step build 150 || [ -f "$WORK/build.ok" ] || finish
    run_step gpu 20 || finish
    run_step backend_ops 100
    run_step cli 90
    run_step models 60
    run_step samplers 60
    run_step commands 60
    run_step ctest 150
    finish
}

part_bench() {
    BUDGET=${BUDGET:-300}
    part_setup bench
    run_step build 150 || [ -f "$WORK/build.ok" ] || finish # a no-op after the quick part
    run_step gpu 20 || finish
    run_step bench-fp32 60
    run_step bench-tf32 40
    run_step bench-bf16 40
    run_step bench-profile 30
    run_step bench-eager 30
    run_step torch 60
    run_step torch-compile 100
    finish
}

usage() {
    sed -n '2,28p' "$SELF" >&2
    exit 2
}

# ----------------------------------------------------------------- dispatch

if [ "${1:-}" = _step ]; then # one step, in its own process (run_step)
    "step_$2"
    exit $?
fi
ARG=${1:-}
if [ -z "$ARG" ]; then
    if [ -n "${QUICK:-}" ]; then ARG=quick; elif [ -n "${BENCH:-}" ]; then ARG=bench; else ARG=all; fi
fi
case $ARG in
quick) part_quick ;;
bench) part_bench ;;
all)
    "$SELF" quick
    q=$?
    "$SELF" bench
    b=$?
    [ $q -eq 0 ] && [ $b -eq 0 ]
    exit $?
    ;;
-h | --help) usage ;;
*) usage ;;
esac
