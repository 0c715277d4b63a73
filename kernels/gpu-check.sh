#!/usr/bin/env bash
# The prepared GPU run: on a machine with an NVIDIA GPU (sm_90: H100/H200),
# build difflux with CUDA, run the whole test suite (the CUDA parity tests
# included), sample the shipped models on the GPU, and benchmark fp32, tf32
# and bf16 against PyTorch on the same weights. Everything it prints also
# lands in $OUT (default ./gpu-out): logs, JSON, grids.
#
#   kernels/gpu-check.sh            # everything (about 6 minutes on an H200)
#   QUICK=1 kernels/gpu-check.sh    # build and tests only
#
# A machine without the Debian build dependencies (libstb-dev, libcjson-dev,
# libopenblas-dev, zlib1g-dev, pkg-config) can take them as .deb files in
# ./.deps (kernels/gpu-deps.sh fetches them where apt works): they are
# unpacked under /tmp/deps and found through pkg-config's sysroot (name
# .deps in the device tool's carry).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
export PATH=/usr/local/cuda/bin:$PATH
log() { echo "== $*" | tee -a "$OUT/summary.txt"; }
T0=$(date +%s)
elapsed() { echo $(($(date +%s) - T0)); }

nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || true
log "$(date -u +%FT%TZ) $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null)"
log "nvcc: $(nvcc --version | tail -1)"

if ! pkg-config --exists libcjson stb openblas 2>/dev/null && [ -d .deps ]; then
    D=/tmp/deps
    mkdir -p $D
    for f in .deps/*.deb; do dpkg -x "$f" $D; done
    export PATH=$D/usr/bin:$PATH
    export LD_LIBRARY_PATH=$D/usr/lib/x86_64-linux-gnu:$D/usr/lib/x86_64-linux-gnu/openblas-pthread:${LD_LIBRARY_PATH:-}
    export PKG_CONFIG_SYSROOT_DIR=$D CMAKE_PREFIX_PATH=$D/usr
    export PKG_CONFIG_LIBDIR=$D/usr/lib/x86_64-linux-gnu/pkgconfig:$D/usr/share/pkgconfig:$D/usr/lib/x86_64-linux-gnu/openblas-pthread/pkgconfig
    log "build dependencies unpacked from .deps into $D"
fi

log "configure + build ($(elapsed) s)"
if ! { cmake -S . -B build-gpu -DDIFFLUX_CUDA=ON -DCMAKE_BUILD_TYPE=Release -DDIFFLUX_WERROR=ON &&
       cmake --build build-gpu -j"$(nproc)"; } >"$OUT/build.log" 2>&1; then
    tail -40 "$OUT/build.log"
    log "BUILD FAILED"
    exit 1
fi

log "ctest ($(elapsed) s)"
ctest --test-dir build-gpu --output-on-failure >"$OUT/ctest.log" 2>&1
log "ctest exit $?: $(grep -E 'tests passed|tests failed' "$OUT/ctest.log")"
grep -E "Skipped|Failed|\*\*\*" "$OUT/ctest.log" | tee -a "$OUT/summary.txt"
./build-gpu/tests/test_backend_ops >"$OUT/backend_ops.txt" 2>&1
log "backend_ops exit $?: $(tail -1 "$OUT/backend_ops.txt")"
grep FAIL "$OUT/backend_ops.txt" | head -20 | tee -a "$OUT/summary.txt"
[ -n "${QUICK:-}" ] && exit 0

log "sampling the shipped models on the GPU ($(elapsed) s)"
for m in models/*.safetensors; do
    b=$(basename "$m" .safetensors)
    case $b in *classifier*) continue ;; esac # feature networks: eval below
    ./build-gpu/difflux sample --model "$m" --device cuda --n 64 --out "$OUT/$b-cuda.png" \
        --npy "$OUT/$b-cuda.npy" --quiet 2>&1 | tee -a "$OUT/summary.txt"
    ./build-gpu/difflux sample --model "$m" --device cpu --n 64 --no-png --npy "$OUT/$b-cpu.npy" \
        --quiet >/dev/null 2>&1
    python3 - "$OUT/$b-cuda.npy" "$OUT/$b-cpu.npy" <<'EOF' 2>&1 | tee -a "$OUT/summary.txt"
import sys, numpy as np
a, b = np.load(sys.argv[1]), np.load(sys.argv[2])
print(f"  cuda vs cpu, same seed: max |diff| {np.abs(a - b).max():.3e}, "
      f"normalised {np.linalg.norm(a - b) / np.linalg.norm(b):.3e}")
EOF
    rm -f "$OUT/$b-cuda.npy" "$OUT/$b-cpu.npy"
done

log "difflux eval on cuda and on cpu, same seeds ($(elapsed) s)"
for dev in cuda cpu; do
    ./build-gpu/difflux eval --model models/mnist-flow.safetensors --device $dev --n 256 \
        --steps 10 --json "$OUT/eval-$dev.json" --quiet >"$OUT/eval-$dev.txt" 2>&1
    echo "  $dev: $(cat "$OUT/eval-$dev.json")" | tee -a "$OUT/summary.txt"
done

MODEL=models/mnist-flow.safetensors
[ -f $MODEL ] || MODEL=models/mnist-gmm.safetensors
for p in fp32 tf32 bf16; do
    log "difflux bench $MODEL heun, $p ($(elapsed) s)"
    ./build-gpu/difflux bench --model $MODEL --device cuda --precision $p --sampler heun \
        --steps 10 --batch 1,8,64,256,1024,4096 --json "$OUT/bench-$p.json" 2>&1 |
        tee "$OUT/bench-$p.txt"
done
./build-gpu/difflux bench --model $MODEL --device cuda --sampler heun --steps 10 --batch 1,1024 \
    --profile 2>&1 | tee "$OUT/bench-profile.txt"
log "difflux bench $MODEL heun, fp32, op by op (DIFFLUX_CUDA_GRAPHS=0) ($(elapsed) s)"
DIFFLUX_CUDA_GRAPHS=0 ./build-gpu/difflux bench --model $MODEL --device cuda --sampler heun \
    --steps 10 --batch 1,8,64 --json "$OUT/bench-fp32-eager.json" 2>&1 |
    tee "$OUT/bench-fp32-eager.txt"

log "side by side with PyTorch ($(elapsed) s)"
PYTHONUNBUFFERED=1 timeout 240 python3 -m models.difflux_ref.bench_compare --model $MODEL \
    --device cuda --sampler heun --steps 10 --batch 1,64,1024 --difflux ./build-gpu/difflux \
    --compile 2>&1 | tee "$OUT/bench-compare.txt"
log "done in $(elapsed) s"
